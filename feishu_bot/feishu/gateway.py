"""The Feishu long connection: supervises lark_oapi websocket sessions and hands events over.

Ownership and invariants:

* `FeishuGateway` owns one *session* (`ws_session.WsSession`: a daemon thread with its own
  event loop running one ``lark_oapi.ws.Client``) at a time, and never two: when an old
  session's thread does not stop within `RETIRE_TIMEOUT_S`, no new one is started (both would
  share the SDK's module-level loop); the gateway then reports a failure (`wait_failed`) so
  the process can exit and be restarted cleanly. Raw lark_oapi objects never leave
  `ws_session`; the app receives plain dicts in the Feishu v2 schema
  (``{"schema": "2.0", "header": {...}, "event": {...}}``).
* The SDK acks an event only after its handler returns; Feishu re-pushes events not acked
  within ~3 s. ``async def on_event(envelope) -> dict | None`` is the answer-on-ack contract:
  it runs on the app loop while the SDK thread waits up to `ack_deadline` (2.5 s); its return
  value is the ack's data (how a ``card.action.trigger`` callback answers), and an exception
  or a missed deadline makes the ack 500 so Feishu delivers again. So an event is acked only
  once the app has made it durable. A plain function is the older fire-and-forget contract
  (acked at once). Details in `feishu.handover`.
* The SDK reconnects on its own after a dropped socket. The gateway supervises it and builds a
  fresh session only when the SDK cannot recover: it gave up reconnecting (retry count spent or
  a fatal code), its thread ended, or no frame at all arrived for 3 x the ping interval while
  it was not busy reconnecting (a silently stuck connection). No periodic restarts.
* It never logs the websocket URL (it carries ``access_key`` and ``ticket``); the SDK's own
  "Lark" logger does, and is routed and redacted by the app's logging setup.

Not done here: dedupe, parsing messages (``feishu.inbound``), REST calls (``feishu.replier``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from loguru import logger

from feishu_bot.errors import GatewayError
from feishu_bot.feishu.handover import AckDeadlineMissed, EventHandler, EventHandover
from feishu_bot.feishu.ws_session import (
    CARD_ACTION_TRIGGER,
    SessionConfig,
    WsSession,
    is_fatal,
    redact,
)

__all__ = [
    "ACKED_EVENT_TYPES",
    "ACK_DEADLINE_S",
    "CARD_ACTION_TRIGGER",
    "MESSAGE_RECEIVE",
    "RETIRE_TIMEOUT_S",
    "AckDeadlineMissed",
    "EventHandler",
    "FeishuGateway",
    "GatewayError",
]

MESSAGE_RECEIVE = "im.message.receive_v1"

# Events a chat bot is sent. All are registered so the SDK acks them with 200: an unregistered
# type is acked with 500 and Feishu keeps re-pushing it. (card.action.trigger is registered
# separately, as a callback, so that its answer rides on the ack.)
ACKED_EVENT_TYPES: tuple[str, ...] = (
    MESSAGE_RECEIVE,
    "im.message.message_read_v1",
    "im.message.recalled_v1",
    "im.message.reaction.created_v1",
    "im.message.reaction.deleted_v1",
    "im.chat.member.bot.added_v1",
    "im.chat.member.bot.deleted_v1",
    "im.chat.access_event.bot_p2p_chat_entered_v1",
)

# Feishu waits ~3 s for an ack (and a card callback's answer); keep a margin for the frame's
# way back.
ACK_DEADLINE_S = 2.5
# How long an old SDK thread may take to stop before the gateway gives up on it.
RETIRE_TIMEOUT_S = 10.0
_CHECK_EVERY_MAX_S = 1.0
_MAX_REBUILD_BACKOFF_S = 60.0


class FeishuGateway:
    """Receive Feishu events over the websocket long connection.

    ``await start()`` returns once connected; ``await stop()`` disconnects for good;
    ``await wait_failed()`` returns the error when the gateway can no longer work (an old SDK
    thread would not stop). Public state, read on the app loop: `connected`, `reconnects`
    (successful connections after the first, by the SDK or by a rebuild), `last_frame_at`
    (epoch seconds of the last frame of any kind), `events_received`, `rebuilds`,
    `ping_interval`, `failure`.
    """

    def __init__(
        self,
        *,
        app_id: str,
        app_secret: str,
        domain: str,
        on_event: EventHandler,
        loop: asyncio.AbstractEventLoop | None = None,
        log_level: int | str = logging.INFO,
        forward_event_types: Iterable[str] = (MESSAGE_RECEIVE, CARD_ACTION_TRIGGER),
        stall_after: float | None = None,
        ack_deadline: float = ACK_DEADLINE_S,
    ) -> None:
        """`on_event`: see the module docstring (async: answer-on-ack; plain: fire and
        forget). `forward_event_types`: the event types passed to `on_event` (others are acked
        200 and logged at DEBUG). `stall_after`: seconds without any frame before a connection
        counts as stuck; default 3 x the ping interval Feishu announces (120 s -> 6 min).
        `ack_deadline`: seconds an async `on_event` has before the event is acked 500."""
        self._handover = EventHandover(
            on_event, forward=forward_event_types, ack_deadline=ack_deadline
        )
        self._loop = loop
        registered = dict.fromkeys((*ACKED_EVENT_TYPES, *self._handover.forward))
        registered.pop(CARD_ACTION_TRIGGER, None)  # a callback, registered on its own
        self._config = SessionConfig(
            app_id=app_id,
            app_secret=app_secret,
            domain=domain.rstrip("/"),
            log_level=log_level,
            event_types=tuple(registered),
            card_actions=True,
        )
        self._stall_after = stall_after

        self.connected = False
        self.reconnects = 0
        self.rebuilds = 0
        self._connections = 0
        self._last_frame_mono: float | None = None
        self._last_frame_wall: float | None = None

        self._session: WsSession | None = None
        self._generation = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._first_connect: asyncio.Future[None] | None = None
        self._failed: asyncio.Future[GatewayError] | None = None
        self.failure: GatewayError | None = None
        self._started = False
        self._stopping = False

    # -- public state -----------------------------------------------------------------------

    @property
    def events_received(self) -> int:
        """Events handed to `on_event` so far."""
        return self._handover.received

    @property
    def last_frame_at(self) -> float | None:
        """Epoch seconds when the last frame (event, pong, ...) arrived; None before any."""
        return self._last_frame_wall

    @property
    def ping_interval(self) -> float | None:
        """The ping interval the SDK currently uses (set by Feishu's ClientConfig)."""
        return self._session.ping_interval if self._session else None

    async def wait_failed(self) -> GatewayError:
        """Wait until the gateway has failed for good; returns why. Only after `start()`.

        Today the one cause: an old SDK thread that would not stop, so no new session could
        be started without two running at once. The owner should stop and exit non-zero.
        """
        if self._failed is None:
            raise RuntimeError("FeishuGateway.wait_failed() before start()")
        return await asyncio.shield(self._failed)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, timeout: float = 60) -> None:
        """Start the SDK thread and wait for the first connection.

        Raises GatewayError when Feishu refuses the credentials (fatal discovery code), when
        the SDK thread dies, or when no connection is made within `timeout` seconds (the first
        start in a process includes loading lark_oapi, ~0.3-0.5 s on a small machine). The gateway
        is stopped again before the error propagates.
        """
        if self._started:
            raise RuntimeError("FeishuGateway.start() called twice")
        running = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not running:
            raise RuntimeError("FeishuGateway.start() must run on the loop given as `loop`")
        self._started = True
        self._loop = running
        self._handover.loop = running
        self._wake = asyncio.Event()
        self._first_connect = self._loop.create_future()
        self._failed = self._loop.create_future()
        self._start_session()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._first_connect)
        except TimeoutError:
            await self.stop()
            raise GatewayError(f"no Feishu long connection within {timeout:g}s") from None
        except BaseException:
            await self.stop()
            raise
        self._supervisor = self._loop.create_task(self._supervise(), name="feishu-gateway-sup")

    async def stop(self, timeout: float | None = None) -> None:
        """Disconnect for good: no reconnect afterwards, the socket closed, the thread joined.

        Waits at most `timeout` seconds (default `RETIRE_TIMEOUT_S`) for the SDK thread; a
        thread stuck inside the SDK is left behind (it is a daemon) with a warning.
        """
        if self._stopping:
            return
        self._stopping = True
        timeout = RETIRE_TIMEOUT_S if timeout is None else timeout
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None and not await self._retire(session, timeout):
            logger.warning(
                "feishu gateway: SDK thread {} did not stop within {:g}s; left behind",
                session.thread.name,
                timeout,
            )
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.cancel()
        was_connected, self.connected = self.connected, False
        if was_connected or session is not None:
            logger.info("feishu gateway stopped")

    async def __aenter__(self) -> FeishuGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- sessions ---------------------------------------------------------------------------

    def _start_session(self) -> None:
        assert self._loop is not None
        self._generation += 1
        session = WsSession(self, self._generation, app_loop=self._loop, config=self._config)
        self._session = session
        session.start()

    async def _retire(self, session: WsSession, timeout: float) -> bool:
        """Ask the session to stop and wait for its thread; False if it did not end in time."""
        session.request_stop()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(session.ended)
        except TimeoutError:
            return False
        session.thread.join(1.0)  # it has posted "ended" as its very last step
        return True

    def _fail(self, error: GatewayError) -> None:
        """On the app loop: the gateway cannot go on; tell whoever waits in `wait_failed`."""
        logger.error("feishu gateway: {}", error)
        self.connected = False
        self.failure = error
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(error)

    # -- SessionHost: called on the SDK thread ----------------------------------------------

    def session_event(self, session: WsSession, kind: str, detail: Any = None) -> None:
        """From the SDK thread: report a session event to the app loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_session_event, session, kind, detail)
        except RuntimeError:
            pass  # the app loop is closed: nobody is left to tell

    def frame_seen(self) -> None:
        """From the SDK thread, for every frame received (plain stores are atomic)."""
        self._last_frame_mono = time.monotonic()
        self._last_frame_wall = time.time()

    def handle_event(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        """From the SDK thread: one event; see `feishu.handover`."""
        return self._handover.handle(envelope)

    # -- on the app loop ---------------------------------------------------------------------

    def _on_session_event(self, session: WsSession, kind: str, detail: Any) -> None:
        """On the app loop: update public state, log, wake the supervisor, settle start()."""
        if kind == "ended" and not session.ended.done():
            session.ended.set_result(None)
        if session is not self._session:
            return  # a retired session: its late news is irrelevant
        if kind == "connected":
            self.connected = True
            self._connections += 1
            if self._connections == 1:
                logger.info("feishu gateway connected (conn_id={})", detail)
            else:
                self.reconnects += 1
                logger.info(
                    "feishu gateway reconnected (conn_id={}, reconnects={})",
                    detail,
                    self.reconnects,
                )
            self._settle_start(None)
        elif kind == "disconnected":
            if self.connected:
                logger.info("feishu gateway disconnected (conn_id={})", detail)
            self.connected = False
        elif kind == "gave_up":
            self.connected = False
            text = redact(detail)
            logger.error("feishu gateway: the SDK gave up connecting: {}", text)
            if is_fatal(detail):
                error = GatewayError(
                    f"Feishu refused the long connection ({text})",
                    code=int(getattr(detail, "code", 0) or 0),
                )
            else:
                error = GatewayError(f"the Feishu SDK gave up connecting ({text})")
            self._settle_start(error)
        elif kind == "ended":
            self.connected = False
            text = f": {redact(repr(detail))}" if detail is not None else ""
            if detail is not None:
                logger.error("feishu gateway: SDK thread crashed{}", text)
            self._settle_start(GatewayError(f"the Feishu SDK thread ended{text}"))
        if self._wake is not None:
            self._wake.set()

    def _settle_start(self, error: BaseException | None) -> None:
        fut = self._first_connect
        if fut is None or fut.done():
            return
        if error is None:
            if self.connected:
                fut.set_result(None)
        else:
            fut.set_exception(error)

    # -- supervision ------------------------------------------------------------------------

    def _stall_threshold(self) -> float:
        if self._stall_after is not None:
            return self._stall_after
        return 3.0 * float(self.ping_interval or 120)

    def _diagnose(self, session: WsSession) -> tuple[str | None, float]:
        """(reason to rebuild or None, seconds until the next check)."""
        if session.gave_up is not None:
            return f"the SDK gave up reconnecting ({redact(session.gave_up)})", 0
        if session.ended.done():
            return "the SDK thread ended", 0
        threshold = self._stall_threshold()
        idle = time.monotonic() - max(session.last_activity, self._last_frame_mono or 0.0)
        if session.reconnecting:
            # The SDK is retrying by itself: let it, as long as attempts keep coming (each
            # attempt counts as activity; a reconnect stuck on the SDK's own lock does not).
            interval = session.reconnect_interval
            if idle > threshold + interval:
                return f"no reconnect attempt for {idle:.1f}s", 0
            return None, _CHECK_EVERY_MAX_S
        if idle > threshold:
            state = "connected" if session.connected else "disconnected, not reconnecting"
            return f"no frame for {idle:.1f}s ({state}; limit {threshold:g}s)", 0
        return None, min(max(threshold - idle, 0.05), _CHECK_EVERY_MAX_S)

    async def _supervise(self) -> None:
        assert self._wake is not None
        failures = 0  # rebuilds in a row after which no connection was made
        connections_at_rebuild: int | None = None
        while not self._stopping:
            session = self._session
            if session is None:
                return
            reason, delay = self._diagnose(session)
            if reason is None:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
                # coincides with the inner wait finishing, and stop() would wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            if connections_at_rebuild is not None and self._connections == connections_at_rebuild:
                failures += 1
            else:
                failures = 0
            logger.warning("feishu gateway: {}; rebuilding the connection", reason)
            self.connected = False
            if not await self._retire(session, RETIRE_TIMEOUT_S):
                # Starting another session now would run two SDK clients on the SDK's one
                # module-level loop. Leave the stuck thread alone and let the process restart.
                self._session = None  # stop() need not wait for it a second time
                self._fail(
                    GatewayError(
                        f"the old Feishu SDK thread {session.thread.name} did not stop within "
                        f"{RETIRE_TIMEOUT_S:g}s; not starting a second session next to it"
                    )
                )
                return
            if failures:
                await asyncio.sleep(min(2.0 ** (failures - 1), _MAX_REBUILD_BACKOFF_S))
            self.rebuilds += 1
            connections_at_rebuild = self._connections
            self._start_session()
