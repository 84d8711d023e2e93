"""A gateway `on_event` callback for tests: collects envelopes, lets a test await them."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["EventSink"]


class EventSink:
    """`on_event` for the gateway: collects envelopes; `wait(n)` waits for the n-th."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, envelope: dict[str, Any]) -> None:
        self.events.append(envelope)
        self._changed.set()

    async def wait(self, n: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.events) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.events
