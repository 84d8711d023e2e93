"""The Feishu long connection: runs lark_oapi's websocket client and hands events to the app.

Ownership and invariants:

* `FeishuGateway` owns one *session* at a time: a daemon thread with its own event loop, in
  which one ``lark_oapi.ws.Client`` connects, pings and reads frames. Raw lark_oapi objects
  never leave this module; the app receives plain dicts in the Feishu v2 schema
  (``{"schema": "2.0", "header": {...}, "event": {...}}``).
* The SDK calls its event handler synchronously and only acks (``{"code": 200}``) after the
  handler returns; Feishu re-pushes events not acked within ~3 s. So the handler here only
  converts the event to a dict and schedules ``on_event(envelope)`` on the app loop with
  ``call_soon_threadsafe``: the ack leaves in about a millisecond whatever the app is doing.
  ``on_event`` must be a plain function that returns quickly (e.g. ``queue.put_nowait``);
  deduplication of re-pushed events is the consumer's job (same event_id / message_id).
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
import inspect
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from loguru import logger

from feishu_bot.errors import GatewayError

__all__ = ["ACKED_EVENT_TYPES", "MESSAGE_RECEIVE", "FeishuGateway", "GatewayError"]

MESSAGE_RECEIVE = "im.message.receive_v1"

# Events a chat bot is sent. All are registered so the SDK acks them with 200: an unregistered
# type is acked with 500 and Feishu keeps re-pushing it.
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

DISCOVERY_TIMEOUT_S = 15.0
_CHECK_EVERY_MAX_S = 1.0
_MAX_REBUILD_BACKOFF_S = 60.0


class FeishuGateway:
    """Receive Feishu events over the websocket long connection.

    ``await start()`` returns once connected; ``await stop()`` disconnects for good. Public
    state, read on the app loop: `connected`, `reconnects` (successful connections after the
    first, by the SDK or by a rebuild), `last_frame_at` (epoch seconds of the last frame of any
    kind), `events_received`, `rebuilds`, `ping_interval`.
    """

    def __init__(
        self,
        *,
        app_id: str,
        app_secret: str,
        domain: str,
        on_event: Callable[[dict[str, Any]], None],
        loop: asyncio.AbstractEventLoop | None = None,
        log_level: int | str = logging.INFO,
        forward_event_types: Iterable[str] = (MESSAGE_RECEIVE,),
        stall_after: float | None = None,
    ) -> None:
        """`forward_event_types`: the event types passed to `on_event` (others are acked and
        logged at DEBUG). `stall_after`: seconds without any frame before a connection counts
        as stuck; default 3 x the ping interval Feishu announces (120 s -> 6 min)."""
        if inspect.iscoroutinefunction(on_event):
            raise TypeError("on_event must be a plain function (it runs on the app loop)")
        self._app_id = app_id
        self._app_secret = app_secret
        self._domain = domain.rstrip("/")
        self._on_event = on_event
        self._loop = loop
        self._log_level = log_level
        self._forward = frozenset(forward_event_types)
        self._registered = tuple(dict.fromkeys((*ACKED_EVENT_TYPES, *self._forward)))
        self._stall_after = stall_after

        self.connected = False
        self.reconnects = 0
        self.rebuilds = 0
        self.events_received = 0
        self._connections = 0
        self._last_frame_mono: float | None = None
        self._last_frame_wall: float | None = None

        self._session: _Session | None = None
        self._generation = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._first_connect: asyncio.Future[None] | None = None
        self._started = False
        self._stopping = False

    # -- public state -----------------------------------------------------------------------

    @property
    def last_frame_at(self) -> float | None:
        """Epoch seconds when the last frame (event, pong, ...) arrived; None before any."""
        return self._last_frame_wall

    @property
    def ping_interval(self) -> float | None:
        """The ping interval the SDK currently uses (set by Feishu's ClientConfig)."""
        client = self._session.client if self._session else None
        return getattr(client, "_ping_interval", None)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, timeout: float = 60) -> None:
        """Start the SDK thread and wait for the first connection.

        Raises GatewayError when Feishu refuses the credentials (fatal discovery code), when
        the SDK thread dies, or when no connection is made within `timeout` seconds (the first
        start in a process includes importing lark_oapi, ~5 s on a small machine). The gateway
        is stopped again before the error propagates.
        """
        if self._started:
            raise RuntimeError("FeishuGateway.start() called twice")
        running = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not running:
            raise RuntimeError("FeishuGateway.start() must run on the loop given as `loop`")
        self._started = True
        self._loop = running
        self._wake = asyncio.Event()
        self._first_connect = self._loop.create_future()
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

    async def stop(self, timeout: float = 10) -> None:
        """Disconnect for good: no reconnect afterwards, the socket closed, the thread joined.

        Waits at most `timeout` seconds for the SDK thread; a thread stuck inside the SDK is
        left behind (it is a daemon) with a warning.
        """
        if self._stopping:
            return
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await self._retire(session, timeout)
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
        self._generation += 1
        session = _Session(self, self._generation)
        self._session = session
        session.start()

    async def _retire(self, session: _Session, timeout: float) -> None:
        session.request_stop()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(session.ended)
        except TimeoutError:
            logger.warning(
                "feishu gateway: SDK thread {} did not stop within {}s; left behind",
                session.thread.name,
                timeout,
            )
            return
        session.thread.join(1.0)  # it has posted "ended" as its very last step

    def _post(self, session: _Session, kind: str, detail: Any = None) -> None:
        """From the SDK thread: report a session event to the app loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_session_event, session, kind, detail)
        except RuntimeError:
            pass  # the app loop is closed: nobody is left to tell

    def _on_session_event(self, session: _Session, kind: str, detail: Any) -> None:
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
            text = _redact(detail)
            logger.error("feishu gateway: the SDK gave up connecting: {}", text)
            if _is_fatal(detail):
                error = GatewayError(
                    f"Feishu refused the long connection ({text})",
                    code=int(getattr(detail, "code", 0) or 0),
                )
            else:
                error = GatewayError(f"the Feishu SDK gave up connecting ({text})")
            self._settle_start(error)
        elif kind == "ended":
            self.connected = False
            text = f": {_redact(repr(detail))}" if detail is not None else ""
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

    def _frame_seen(self) -> None:
        """From the SDK thread, for every frame received (plain stores are atomic)."""
        self._last_frame_mono = time.monotonic()
        self._last_frame_wall = time.time()

    def _deliver(self, envelope: dict[str, Any]) -> None:
        """On the app loop: one event for the app."""
        self.events_received += 1
        try:
            self._on_event(envelope)
        except Exception:
            logger.exception("feishu gateway: on_event raised")

    # -- supervision ------------------------------------------------------------------------

    def _stall_threshold(self) -> float:
        if self._stall_after is not None:
            return self._stall_after
        return 3.0 * float(self.ping_interval or 120)

    def _diagnose(self, session: _Session) -> tuple[str | None, float]:
        """(reason to rebuild or None, seconds until the next check)."""
        if session.gave_up is not None:
            return f"the SDK gave up reconnecting ({_redact(session.gave_up)})", 0
        if session.ended.done():
            return "the SDK thread ended", 0
        threshold = self._stall_threshold()
        idle = time.monotonic() - max(session.last_activity, self._last_frame_mono or 0.0)
        if session.reconnecting:
            # The SDK is retrying by itself: let it, as long as attempts keep coming (each
            # attempt counts as activity; a reconnect stuck on the SDK's own lock does not).
            interval = float(getattr(session.client, "_reconnect_interval", 0) or 0)
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
            await self._retire(session, 10)
            if failures:
                await asyncio.sleep(min(2.0 ** (failures - 1), _MAX_REBUILD_BACKOFF_S))
            self.rebuilds += 1
            connections_at_rebuild = self._connections
            self._start_session()


def _is_fatal(exc: BaseException | None) -> bool:
    """A ClientException: the SDK's "do not retry" class (bad credentials, forbidden, ...)."""
    module = sys.modules.get("lark_oapi.ws.exception")
    return module is not None and isinstance(exc, module.ClientException)


_SECRET_QUERY = re.compile(r"(access_key|ticket)=[^&\s'\"]+")


def _redact(text: object) -> str:
    """Exception text from the SDK or websockets may quote the websocket URL."""
    return _SECRET_QUERY.sub(r"\1=***", str(text))


class _Session:
    """One SDK client in one daemon thread with its own event loop.

    Attributes written by the SDK thread (connected, reconnecting, last_activity, gave_up)
    are plain stores read by the supervisor; everything the app sees goes through
    `FeishuGateway._post`.
    """

    def __init__(self, gateway: FeishuGateway, generation: int) -> None:
        assert gateway._loop is not None
        self.gw = gateway
        self.thread = threading.Thread(
            target=self._main, name=f"feishu-gateway-{generation}", daemon=True
        )
        self.ended: asyncio.Future[None] = gateway._loop.create_future()
        self.client: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected = False
        self.reconnecting = False
        self.last_activity = time.monotonic()
        self.gave_up: BaseException | None = None
        self._halt = asyncio.Event()  # set on the session loop only
        self._stop_requested = False
        self._lock = threading.Lock()
        self._seen_conn: Any = None

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        """From any thread: make the session loop wind down (no reconnect after this)."""
        with self._lock:
            self._stop_requested = True
            loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._halt_now)
            except RuntimeError:
                pass  # its loop is already closed

    def _halt_now(self) -> None:
        if self.client is not None:
            self.client._auto_reconnect = False
        self._halt.set()

    # -- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        # Before anything imports lark_oapi.ws.client: its import-time get_event_loop() and
        # ExpiringCache's loop.create_task() in Client.__init__ must find this loop.
        asyncio.set_event_loop(loop)
        with self._lock:
            self.loop = loop
            stop_early = self._stop_requested
        crash: BaseException | None = None
        try:
            if not stop_early:
                loop.run_until_complete(self._run())
        except BaseException as exc:
            crash = exc
        finally:
            self._cleanup(loop)
            self.gw._post(self, "ended", crash)

    async def _run(self) -> None:
        import lark_oapi as lark
        import lark_oapi.ws.client as ws_client

        # The SDK schedules its tasks on this module global (client.py: loop.create_task(...)
        # in _connect and _receive_message_loop). Sessions never overlap (the previous thread
        # has ended before a new one starts), so pointing it at this thread's loop is safe.
        ws_client.loop = asyncio.get_running_loop()
        _bound_discovery_timeout(ws_client)
        if self._stop_requested:
            return
        builder = lark.EventDispatcherHandler.builder("", "")
        for event_type in self.gw._registered:
            builder.register_p2_customized_event(event_type, self._on_sdk_event)
        self.client = _client_class()(
            self.gw._app_id,
            self.gw._app_secret,
            log_level=_lark_level(lark, self.gw._log_level),
            event_handler=builder.build(),
            domain=self.gw._domain,
        )
        self.client._session = self
        if self._stop_requested:
            return
        work = asyncio.create_task(self._connect_and_ping())
        await self._halt.wait()
        work.cancel()

    async def _connect_and_ping(self) -> None:
        """What ``Client.start()`` does (lark_oapi/ws/client.py:184-199), minus the blocking
        ``run_until_complete`` so the session can be stopped from outside."""
        client = self.client
        try:
            await client._connect()
        except Exception as exc:
            if _is_fatal(exc):
                self.on_gave_up(exc)
                return
            logger.warning("feishu gateway: first connect failed: {}", _redact(exc))
            await client._disconnect()
            await client._reconnect()
            if self.gave_up is not None:
                return
        await client._ping_loop()

    def _cleanup(self, loop: asyncio.AbstractEventLoop) -> None:
        client = self.client
        if client is not None:
            client._auto_reconnect = False
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            conn = getattr(client, "_conn", None)
            if conn is not None:
                # Close directly, not via Client._disconnect: its lock may be held forever
                # (Client._connect returns without releasing it when already connected).
                loop.run_until_complete(_close_quietly(conn))
                client._conn = None
                self.connected = False
                self.gw._post(self, "disconnected", getattr(client, "_conn_id", ""))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception as exc:  # pragma: no cover - best effort teardown
            logger.warning("feishu gateway: SDK teardown failed: {}", _redact(repr(exc)))
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    # -- callbacks from the SDK (SDK thread) ------------------------------------------------

    def _on_sdk_event(self, data: Any) -> None:
        """The SDK's event handler: convert and hand over; the ack is sent when this returns.

        A RuntimeError (app loop closed) propagates on purpose: the SDK then acks 500 and
        Feishu delivers the event again later.
        """
        header = getattr(data, "header", None)
        envelope: dict[str, Any] = {
            "schema": getattr(data, "schema", None) or "2.0",
            "header": {k: v for k, v in vars(header).items() if v is not None} if header else {},
            "event": getattr(data, "event", None) or {},
        }
        event_type = envelope["header"].get("event_type")
        if event_type in self.gw._forward:
            loop = self.gw._loop
            assert loop is not None
            loop.call_soon_threadsafe(self.gw._deliver, envelope)
        else:
            logger.debug(
                "feishu gateway: acked {} (event_id={})",
                event_type,
                envelope["header"].get("event_id"),
            )

    def on_frame(self) -> None:
        self.last_activity = time.monotonic()
        self.gw._frame_seen()

    def on_attempt(self) -> None:
        self.last_activity = time.monotonic()

    def on_connected(self, conn: Any, conn_id: str) -> None:
        if conn is self._seen_conn:
            return
        self._seen_conn = conn
        self.connected = True
        self.last_activity = time.monotonic()
        self.gw._post(self, "connected", conn_id)

    def on_disconnected(self, conn_id: str) -> None:
        self.connected = False
        self.last_activity = time.monotonic()
        self.gw._post(self, "disconnected", conn_id)

    def on_gave_up(self, exc: BaseException) -> None:
        self.gave_up = exc
        self.connected = False
        self.gw._post(self, "gave_up", exc)
        self._halt.set()


async def _close_quietly(conn: Any) -> None:
    try:
        async with asyncio.timeout(3):
            await conn.close()
    except Exception:
        pass


_CLIENT_CLASS: type | None = None


def _client_class() -> type:
    """``lark_oapi.ws.Client`` with supervision hooks, built on first use (lazy import).

    Each override calls the SDK's own method and only observes: connections made and lost,
    frames received, and a reconnect loop that ended in an exception (retry count spent, or a
    fatal discovery code). The SDK would let that exception kill its receive task silently and
    keep a dead client around (a zombie); here it is reported so the gateway can rebuild.
    """
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:
        from lark_oapi.ws.client import Client

        class _SupervisedClient(Client):
            _session: _Session

            async def _connect(self) -> None:
                await super()._connect()
                if self._conn is not None:
                    self._session.on_connected(self._conn, self._conn_id)

            async def _disconnect(self) -> None:
                conn_id = self._conn_id if self._conn is not None else None
                try:
                    await super()._disconnect()
                finally:
                    if conn_id is not None:
                        self._session.on_disconnected(conn_id)

            async def _reconnect(self) -> None:
                self._session.reconnecting = True
                try:
                    await super()._reconnect()
                except Exception as exc:
                    if self._auto_reconnect:  # not a shutdown in progress
                        self._session.on_gave_up(exc)
                finally:
                    self._session.reconnecting = False

            async def _try_connect(self, cnt: int) -> bool:
                self._session.on_attempt()
                return await super()._try_connect(cnt)

            async def _receive_message_loop(self) -> None:
                try:
                    await super()._receive_message_loop()
                except Exception as exc:
                    # The SDK re-raises only when auto-reconnect is off, i.e. while the
                    # session is being stopped: an expected end, not a task error to log.
                    logger.debug("feishu gateway: receive loop ended: {}", _redact(exc))

            async def _handle_message(self, msg: bytes) -> None:
                self._session.on_frame()
                await super()._handle_message(msg)

        _CLIENT_CLASS = _SupervisedClient
    return _CLIENT_CLASS


class _RequestsWithTimeout:
    """Stands in for the ``requests`` module inside ``lark_oapi.ws.client`` only.

    Endpoint discovery calls ``requests.post(url, headers=..., json=...)`` with no timeout
    (client.py:281) from inside the SDK's event loop: a discovery server that accepts and never
    answers would freeze the session thread for good. This adds a default timeout.
    """

    def __init__(self, requests_module: Any, timeout: float) -> None:
        self._requests = requests_module
        self._timeout = timeout

    def post(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return self._requests.post(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._requests, name)


def _bound_discovery_timeout(ws_client: Any) -> None:
    if not isinstance(ws_client.requests, _RequestsWithTimeout):
        ws_client.requests = _RequestsWithTimeout(ws_client.requests, DISCOVERY_TIMEOUT_S)


def _lark_level(lark: Any, level: int | str) -> Any:
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    for member in lark.LogLevel:
        if member.value >= level:
            return member
    return lark.LogLevel.CRITICAL
