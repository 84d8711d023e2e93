"""Pacing of Feishu sends, so that bursts stay inside Feishu's rate limits instead of relying
on 429 retries (issue 12: "the final cards of a long answer go back-to-back").

Feishu allows 5 sends per second per chat (and per user) and 5 PATCHes per second per message;
past that it answers 230020 / 99991400 and the call must wait and be repeated. `Pacer` spaces
calls per key with GCRA (a token bucket kept as one "theoretical arrival time" per key):
reservations are made synchronously, so concurrent callers get slots in the order they asked,
and a caller only sleeps for its own slot. Pure bookkeeping plus an injected clock and sleep,
so it is tested without waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_RATE", "Pacer"]

# A little under Feishu's 5 per second: its window and our clock do not start together, and a
# request's arrival there is not its departure here.
DEFAULT_RATE = 4.5

Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """At most `rate` calls per second per key, after an initial burst of `burst` calls.

    With burst 1 any window of one second holds at most ceil(rate) calls of one key. Keys
    that have been idle long enough to be "full" again are forgotten once more than
    `max_keys` are tracked, so memory stays bounded.
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_keys: int = 4096,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._interval = 0.0 if math.isinf(rate) else 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._max_keys = max_keys
        self._tat: dict[str, float] = {}  # key -> theoretical arrival time of the next call
        self.waited = 0.0  # total seconds callers were held back, for tests and metrics

    @classmethod
    def off(cls) -> Pacer:
        """A pacer that never waits."""
        return cls(math.inf)

    def reserve(self, key: str) -> float:
        """Take the next slot of `key`; returns how many seconds to wait for it (0 = now)."""
        if not self._interval:
            return 0.0
        now = self._clock()
        tat = max(self._tat.get(key, now), now)
        delay = max(0.0, tat - self._tolerance - now)
        self._tat[key] = tat + self._interval
        if len(self._tat) > self._max_keys:
            self._forget_idle(now)
        return delay

    def merge(self, src: str, dst: str) -> None:
        """`src` turned out to be the same budget as `dst` (a message found to be in a chat):
        `dst` keeps the later of the two schedules, so no call of either skips ahead."""
        tat = self._tat.pop(src, None)
        if tat is not None and src != dst:
            self._tat[dst] = max(tat, self._tat.get(dst, tat))

    async def wait(self, key: str) -> float:
        """Wait for the next slot of `key`; returns the seconds waited."""
        delay = self.reserve(key)
        if delay > 0:
            self.waited += delay
            await self._sleep(delay)
        return delay

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
