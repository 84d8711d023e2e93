"""How one event crosses from the SDK thread to the app loop, and its answer back to the ack.

The SDK calls its handler synchronously on its own thread and sends the ack when the handler
returns (its return value as the ack's data; code 500 if it raised). `EventHandover.handle`
is that handler's body, for either contract of ``on_event`` (see `feishu.gateway`):

- async: ``run_coroutine_threadsafe`` on the app loop, then wait up to `ack_deadline`; the
  result is the ack's data. An exception or a missed deadline raises here, so the ack says
  500 and Feishu delivers again; a late coroutine is left to finish (it may be journaling).
- plain: ``call_soon_threadsafe`` and return None at once (acked 200).

Events come one at a time (the SDK thread waits), so they reach the app in arrival order.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from loguru import logger

from feishu_bot.errors import GatewayError

__all__ = ["AckDeadlineMissed", "EventHandler", "EventHandover", "is_async_callable"]

EventHandler = (
    Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]] | Callable[[dict[str, Any]], None]
)


class AckDeadlineMissed(GatewayError):
    """Raised on the SDK thread when ``on_event`` did not answer in time (the ack says 500)."""


def is_async_callable(func: object) -> bool:
    """True for an ``async def`` function or method, or an object with ``async __call__``."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - the method itself, not callable()
    )


class EventHandover:
    """Forwards the event types in `forward` to `on_event` on `loop` (set before the first
    event); every other type is acked 200 without data. `received` counts forwarded events."""

    def __init__(
        self, on_event: EventHandler, *, forward: Iterable[str], ack_deadline: float
    ) -> None:
        self.on_event = on_event
        self.forward = frozenset(forward)
        self.ack_deadline = ack_deadline
        self.is_async = is_async_callable(on_event)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.received = 0

    def handle(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        """On the SDK thread: the ack's data, or raise for a 500 ack.

        A RuntimeError from a closed app loop propagates on purpose: Feishu delivers the event
        again later.
        """
        header = envelope.get("header") or {}
        event_type = header.get("event_type")
        if event_type not in self.forward:
            logger.debug(
                "feishu gateway: acked {} (event_id={})", event_type, header.get("event_id")
            )
            return None
        loop = self.loop
        assert loop is not None
        if not self.is_async:
            loop.call_soon_threadsafe(self._deliver, envelope)
            return None
        future = asyncio.run_coroutine_threadsafe(self._answer(envelope), loop)
        try:
            return future.result(timeout=self.ack_deadline)
        except TimeoutError:
            if future.done():
                raise  # on_event itself raised TimeoutError (already logged)
            logger.warning(
                "feishu gateway: {} (event_id={}) not handled within {:g}s; acked 500 so "
                "Feishu delivers it again",
                event_type,
                header.get("event_id"),
                self.ack_deadline,
            )
            raise AckDeadlineMissed(
                f"on_event missed the {self.ack_deadline:g}s ack deadline"
            ) from None

    async def _answer(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        """On the app loop, the async contract: the event's answer, or an exception."""
        self.received += 1
        try:
            result = await self.on_event(envelope)  # type: ignore[misc]
        except Exception:
            logger.exception(
                "feishu gateway: on_event raised; acked 500 so Feishu delivers it again"
            )
            raise
        if result is not None and not isinstance(result, dict):
            logger.warning(
                "feishu gateway: on_event returned {} (not a dict); acked without data",
                type(result).__name__,
            )
            return None
        return result

    def _deliver(self, envelope: dict[str, Any]) -> None:
        """On the app loop, the plain contract: fire and forget."""
        self.received += 1
        try:
            self.on_event(envelope)
        except Exception:
            logger.exception("feishu gateway: on_event raised")
