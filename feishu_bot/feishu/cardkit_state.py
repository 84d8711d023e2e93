"""What all CardKit streams share.

`CardKitState` is one per app: whether CardKit may be used now (FEISHU_CARDKIT, and a refusal
remembered with a single WARNING that names the missing scope, re-checked by one stream per
period) and the app-wide CardKit limiter (50 operations/s, 1000/min). `ReplySwitch` asks
it which stream a new turn starts with; `CardKitStream` takes a slot for every operation and
reports a refused create.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from loguru import logger

from feishu_bot.errors import FeishuApiError

__all__ = ["SCOPE", "CardKitState"]

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


