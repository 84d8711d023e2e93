"""What all CardKit streams share, and the "working" reaction a stream keeps on the message.

`CardKitState` is one per app: whether CardKit may be used now (FEISHU_CARDKIT, and a refusal
remembered with a single WARNING that names the missing scope, re-checked by one stream per
period) and the app-wide CardKit limiter (50 operations/s, 1000/min).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from feishu_bot.errors import FeishuApiError

__all__ = ["SCOPE", "CardKitState", "Reaction"]

SCOPE = "cardkit:card:write"


class CardKitState:
    """Whether streams may use CardKit now, and the app-wide CardKit rate limiter. One per app."""

    def __init__(
        self,
        mode: str = "auto",
        *,
        recheck_after: float = 600.0,
        per_second: int = 50,
        per_minute: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.mode = mode
        self._recheck_after = recheck_after
        self._limits = ((1.0, per_second), (60.0, per_minute))
        self._clock = clock
        self._sleep = sleep
        self._refused_at: float | None = None
        self._next_try = 0.0
        self._warned = False
        self._ops: deque[float] = deque()

    @property
    def refused(self) -> bool:
        return self._refused_at is not None

    def should_try(self) -> bool:
        """True when a new stream should use CardKit (after a refusal: one probe per period)."""
        if self.mode == "off":
            return False
        if self._refused_at is None:
            return True
        now = self._clock()
        if now < self._next_try:
            return False
        self._next_try = now + min(60.0, self._recheck_after)  # one prober at a time
        return True

    def refuse(self, exc: FeishuApiError) -> None:
        """CardKit said no: use PATCH cards until the next re-check."""
        self._refused_at = self._clock()
        self._next_try = self._refused_at + self._recheck_after
        log = logger.debug if self._warned else logger.warning
        self._warned = True
        log(
            "CardKit refused ({}): give the app the scope {} for streaming cards with buttons; "
            "using PATCH cards, re-checking every {:g}s",
            exc,
            SCOPE,
            self._recheck_after,
        )

    def works(self) -> None:
        if self._refused_at is not None:
            logger.info("CardKit works again: streaming cards are back")
        self._refused_at = None
        self._warned = False

    async def acquire(self) -> None:
        """Wait for a slot under the app-wide CardKit limits."""
        while True:
            now = self._clock()
            while self._ops and now - self._ops[0] >= 60.0:
                self._ops.popleft()
            waits = []
            for span, limit in self._limits:
                recent = [t for t in self._ops if now - t < span]
                if len(recent) >= limit:
                    waits.append(recent[-limit] + span - now)
            if not waits:
                self._ops.append(now)
                return
            await self._sleep(max(max(waits), 0.01))


class Reaction:
    """The "working" emoji on the user's message, added in the background, removed at the end."""

    def __init__(
        self,
        replier: Any,
        message_id: str,
        emoji: str | None,
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        self._replier, self._message_id, self._emoji = replier, message_id, emoji
        self._notify = notify or (lambda kind, value: None)  # ("reaction", id or "" once gone)
        self._task: asyncio.Task[str | None] | None = None

    def add(self) -> None:
        if self._emoji and self._task is None:
            self._task = asyncio.create_task(self._add(), name=f"reaction:{self._message_id}")

    async def _add(self) -> str | None:
        try:
            reaction_id = await self._replier.add_reaction(self._message_id, self._emoji)
        except Exception as exc:  # cosmetic
            logger.warning("adding reaction {} failed: {}", self._emoji, exc)
            return None
        self._notify("reaction", reaction_id)
        return reaction_id

    async def remove(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        try:
            reaction_id = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves
            return  # only the reaction task was cancelled
        if reaction_id is not None:
            try:
                await self._replier.remove_reaction(self._message_id, reaction_id)
                self._notify("reaction", "")
            except Exception as exc:  # cosmetic
                logger.warning("removing reaction failed: {}", exc)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
