"""Pacing of Feishu sends, so that bursts stay inside Feishu's rate limits instead of relying
on 429 retries (issue 12: "the final cards of a long answer go back-to-back").

Feishu allows 5 sends per second per chat (and per user) and 5 PATCHes per second per message;
past that it answers 230020 / 99991400 and the call must wait and be repeated. `Pacer` lets
the calls of one key leave one at a time, in the order they asked (a FIFO lock per key), each
at least `1 / rate` seconds after the previous one *actually* left: the gap is measured from
the real departure, so a late wake-up (a busy event loop) can never squeeze two calls
together. Keys are independent. Clock and sleep are injected, so it is tested without waiting.
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
    """At most `rate` departures per second per key; any one-second window holds at most
    ceil(rate) departures of a key.

    State for keys idle longer than one interval is dropped once more than `max_keys` are
    tracked, so memory stays bounded.
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_keys: int = 4096,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self._interval = 0.0 if math.isinf(rate) else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._max_keys = max_keys
        self._next: dict[str, float] = {}  # key -> earliest departure of its next call
        self._locks: dict[str, asyncio.Lock] = {}
        self.waited = 0.0  # total seconds callers were held back, for tests and metrics

    @classmethod
    def off(cls) -> Pacer:
        """A pacer that never waits."""
        return cls(math.inf)

    async def wait(self, key: str) -> float:
        """Wait until a call of `key` may leave; returns the seconds waited. Call it right
        before the request goes out."""
        if not self._interval:
            return 0.0
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            delay = max(0.0, self._next.get(key, 0.0) - self._clock())
            if delay > 0:
                self.waited += delay
                await self._sleep(delay)
            self._next[key] = self._clock() + self._interval
        if len(self._next) > self._max_keys:
            self._forget_idle()
        return delay

    def merge(self, src: str, dst: str) -> None:
        """`src` turned out to share `dst`'s budget (a message found to be in a chat): `dst`
        keeps the later of the two schedules, so the next call of `dst` does not skip ahead."""
        if src == dst:
            return
        later = self._next.pop(src, None)
        if later is not None:
            self._next[dst] = max(later, self._next.get(dst, later))

    def _forget_idle(self) -> None:
        now = self._clock()
        for key in [k for k, t in self._next.items() if t <= now]:
            lock = self._locks.get(key)
            if lock is None or not lock.locked():
                del self._next[key]
                self._locks.pop(key, None)
