"""Who may use the bot (pure), and how often a refused user hears about it (tiny state).

Deny by default: a sender is allowed when `allow_all` is set, or their open_id is in
FEISHU_ALLOWED_USERS, or the chat is in FEISHU_ALLOWED_CHATS. This module does not send the
refusal itself; the caller asks `RefusalLimiter.should_reply` and replies with `refusal_text`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["AccessPolicy", "RefusalLimiter", "refusal_text"]


class AccessPolicy:
    """An immutable allowlist of users and chats."""

    __slots__ = ("_allow_all", "_chats", "_users")

    def __init__(
        self, allowed_users: Iterable[str], allowed_chats: Iterable[str], allow_all: bool
    ) -> None:
        self._users = frozenset(u.strip() for u in allowed_users if u and u.strip())
        self._chats = frozenset(c.strip() for c in allowed_chats if c and c.strip())
        self._allow_all = bool(allow_all)

    @property
    def allow_all(self) -> bool:
        return self._allow_all

    @property
    def is_open_to_nobody(self) -> bool:
        """True when nothing is allowed at all (worth a warning at startup)."""
        return not (self._allow_all or self._users or self._chats)

    def allows(self, sender_open_id: str, chat_id: str) -> bool:
        if self._allow_all:
            return True
        if sender_open_id and sender_open_id in self._users:
            return True
        return bool(chat_id) and chat_id in self._chats

    def __repr__(self) -> str:
        return (
            f"AccessPolicy(users={len(self._users)}, chats={len(self._chats)}, "
            f"allow_all={self._allow_all})"
        )


class RefusalLimiter:
    """At most one refusal reply per user per `per_seconds`; remembers at most `max_users`.

    Entries older than the window are dropped as new ones arrive, and the oldest entry is
    evicted beyond `max_users`, so memory stays bounded whatever the traffic.
    """

    def __init__(
        self,
        per_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_users: int = 10_000,
    ) -> None:
        if per_seconds < 0 or max_users < 1:
            raise ValueError("per_seconds must be >= 0 and max_users >= 1")
        self._per = per_seconds
        self._clock = clock
        self._max = max_users
        self._last: OrderedDict[str, float] = OrderedDict()  # oldest first

    def should_reply(self, open_id: str) -> bool:
        now = self._clock()
        while self._last:
            oldest_id, oldest_at = next(iter(self._last.items()))
            if now - oldest_at < self._per:
                break
            del self._last[oldest_id]
        if open_id in self._last:
            return False
        self._last[open_id] = now
        while len(self._last) > self._max:
            self._last.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._last)


def refusal_text(open_id: str, chat_id: str) -> str:
    """What a refused user reads: their ids, and how an operator lets them in."""
    return (
        "Sorry, you are not allowed to use this bot yet.\n"
        f"Your open_id: {open_id or '(unknown)'}\n"
        f"This chat_id: {chat_id or '(unknown)'}\n"
        "To allow you, an operator adds your open_id to FEISHU_ALLOWED_USERS (or this chat_id "
        "to FEISHU_ALLOWED_CHATS), comma-separated, and restarts the bot."
    )
