"""Daily spending limits: CLAUDE_USER_DAILY_USD per person, CLAUDE_DAILY_USD for the bot.

`SpendPolicy` answers one question — may a turn of this user start now? — from the turn costs
recorded in the journal (each turn's own cost; a scheduled run counts against its creator), so
the limits survive a restart. A day is a calendar day in CRON_TZ (the server's zone when
empty). 0 means no limit. It is asked twice per turn: when the message arrives
(`Conversations.admit`) and again when the turn leaves the queue (the launcher's gate, before
anything is written to Claude), since turns that finished meanwhile may have used up the
limit. A turn already running is never stopped: it may finish and go over the limit.

What it does not do: count costs (the turn's runner records them) or tell anyone (its
sentences are returned or raised as `TurnRefused`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Protocol

from feishu_bot.cron_schedule import zone
from feishu_bot.errors import TurnRefused

if TYPE_CHECKING:
    from feishu_bot.config import Settings
    from feishu_bot.events import TurnRequest

__all__ = ["SpendPolicy", "SpendStore"]


class SpendStore(Protocol):
    """Where recorded turn costs are summed (the SessionStore satisfies it)."""

    async def spent_since(self, since: float, sender_open_id: str | None = None) -> float: ...


class SpendPolicy:
    """See the module docstring. Stateless apart from its settings: cheap to build anywhere."""

    def __init__(
        self,
        store: SpendStore,
        *,
        user_limit: float = 0.0,
        bot_limit: float = 0.0,
        tz: tzinfo | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.user_limit = max(0.0, float(user_limit))
        self.bot_limit = max(0.0, float(bot_limit))
        self._tz = tz if tz is not None else zone("")
        self._clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, store: SpendStore, *, clock: Callable[[], float] = time.time
    ) -> SpendPolicy:
        return cls(
            store,
            user_limit=settings.CLAUDE_USER_DAILY_USD,
            bot_limit=settings.CLAUDE_DAILY_USD,
            tz=zone(settings.CRON_TZ),
            clock=clock,
        )

    @property
    def limited(self) -> bool:
        return bool(self.user_limit or self.bot_limit)

    def day_bounds(self, now: float | None = None) -> tuple[float, float]:
        """(start of today, start of tomorrow) in the policy's zone, as epoch seconds."""
        moment = datetime.fromtimestamp(self._clock() if now is None else now, self._tz)
        start = datetime.combine(moment.date(), datetime.min.time(), tzinfo=self._tz)
        tomorrow = datetime.combine(
            moment.date() + timedelta(days=1), datetime.min.time(), tzinfo=self._tz
        )
        return start.timestamp(), tomorrow.timestamp()

    async def refusal(self, user: str) -> str | None:
        """The sentence refusing a turn of `user` now, or None when it may start."""
        if not self.limited:
            return None
        now = self._clock()
        start, reset = self.day_bounds(now)
        if self.user_limit:
            mine = await self._store.spent_since(start, user)
            if mine >= self.user_limit:
                return (
                    f"Daily spending limit reached: ${mine:.2f} spent today of the "
                    f"${self.user_limit:.2f} one person may spend per day, so this was not sent "
                    f"to Claude. The limit resets at {self._when(reset, now)}."
                )
        if self.bot_limit:
            everyone = await self._store.spent_since(start)
            if everyone >= self.bot_limit:
                return (
                    f"The bot's daily spending limit is reached: ${everyone:.2f} spent today of "
                    f"${self.bot_limit:.2f}, so this was not sent to Claude. The limit resets "
                    f"at {self._when(reset, now)}."
                )
        return None

    async def gate(self, request: TurnRequest) -> None:
        """The launcher's check when a turn leaves the queue: TurnRefused over a limit."""
        sentence = await self.refusal(request.user_id)
        if sentence is not None:
            raise TurnRefused(sentence)

    async def summary(self, user: str) -> str:
        """Today's spend against the limits, for /status and /stats (one line)."""
        start, reset = self.day_bounds()
        mine = await self._store.spent_since(start, user)
        everyone = await self._store.spent_since(start)
        parts = [
            f"you ${mine:.4f}" + (f" of ${self.user_limit:.2f}" if self.user_limit else ""),
            f"the bot ${everyone:.4f}" + (f" of ${self.bot_limit:.2f}" if self.bot_limit else ""),
        ]
        tail = f"; resets at {self._when(reset, self._clock())}" if self.limited else " (no limit)"
        return f"Spent today: {', '.join(parts)}{tail}"

    def _when(self, reset: float, now: float) -> str:
        left = max(0, int(reset - now))
        hours, minutes = divmod(left // 60, 60)
        name = getattr(self._tz, "key", None) or datetime.fromtimestamp(reset, self._tz).strftime(
            "%Z"
        )
        return f"{datetime.fromtimestamp(reset, self._tz):%H:%M} {name} (in {hours}h{minutes:02d}m)"
