"""One lark_oapi websocket session (with lark_sdk.py, the only code touching lark_oapi).

A `WsSession` is one ``lark_oapi.ws.Client`` in one daemon thread with its own event loop. It
reports what happens (connected, disconnected, gave up, ended, every frame) to its host, the
`FeishuGateway`, and hands every registered event to the host's `handle_event`, which runs on
the SDK thread and may block: the SDK sends the event's ack only after it returns, with its
return value as the ack's ``data`` (lark_oapi/ws/client.py ``_handle_data_frame``), or with code
500 when it raises.

How an event's return value reaches the ack (lark_oapi 1.7.5, event/dispatcher_handler.py
``_do_without_validation``): a *callback* processor's return value is returned and serialised
(``JSON.marshal``: dicts as they are, typed responses without their None fields); an *event*
processor's return value is dropped. So message events are registered as customized events
(their body stays a plain dict) and ``card.action.trigger`` through
``register_p2_card_action_trigger``, so that a card callback's answer (a toast, a card) rides
on its ack. The typed card-action object is turned back into a plain dict here, so the host
only ever sees Feishu v2 envelopes ``{"schema", "header", "event"}``.

Sessions never overlap: the SDK schedules its tasks on a module global loop, which each session
points at its own thread's loop (the gateway guarantees that the previous thread has ended).

The SDK itself is loaded lean (`feishu.lark_sdk.load_sdk`): only its websocket client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from loguru import logger

from feishu_bot.feishu.lark_sdk import EventDispatcher, LeanSdk, load_sdk

__all__ = [
    "CARD_ACTION_TRIGGER",
    "DISCOVERY_TIMEOUT_S",
    "SessionConfig",
    "SessionHost",
    "WsSession",
    "is_fatal",
    "redact",
]

CARD_ACTION_TRIGGER = "card.action.trigger"
DISCOVERY_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What one SDK client is built with. `event_types` are registered as customized events;
    `card_actions` registers ``card.action.trigger`` as a callback (its answer rides on the
    ack)."""

    app_id: str
    app_secret: str = field(repr=False)
    domain: str
    log_level: int | str = logging.INFO
    event_types: tuple[str, ...] = ()
    card_actions: bool = True


class SessionHost(Protocol):
    """What a session needs from its owner. Methods are called on the SDK thread."""

    def session_event(self, session: WsSession, kind: str, detail: Any) -> None:
        """connected / disconnected / gave_up / ended; must not block."""

    def frame_seen(self) -> None:
        """Any frame arrived; must not block."""

    def handle_event(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        """One event; may block until its ack may leave. Raise to have it acked 500."""


def is_fatal(exc: BaseException | None) -> bool:
    """A ClientException: the SDK's "do not retry" class (bad credentials, forbidden, ...)."""
    module = sys.modules.get("lark_oapi.ws.exception")
    return module is not None and isinstance(exc, module.ClientException)


_SECRET_QUERY = re.compile(r"(access_key|ticket)=[^&\s'\"]+")


def redact(text: object) -> str:
    """Exception text from the SDK or websockets may quote the websocket URL."""
    return _SECRET_QUERY.sub(r"\1=***", str(text))


class WsSession:
    """One SDK client in one daemon thread with its own event loop.

    Attributes written by the SDK thread (connected, reconnecting, last_activity, gave_up)
    are plain stores read by the supervisor; everything else reaches the host through
    `SessionHost.session_event`. `ended` is a future of the app loop, resolved by the host
    when the thread has posted "ended" as its very last step.
    """

    def __init__(
        self,
        host: SessionHost,
        generation: int,
        *,
        app_loop: asyncio.AbstractEventLoop,
        config: SessionConfig,
    ) -> None:
        self.host = host
        self.config = config
        self.thread = threading.Thread(
            target=self._main, name=f"feishu-gateway-{generation}", daemon=True
        )
        self.ended: asyncio.Future[None] = app_loop.create_future()
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

    @property
    def ping_interval(self) -> float | None:
        return getattr(self.client, "_ping_interval", None)

    @property
    def reconnect_interval(self) -> float:
        return float(getattr(self.client, "_reconnect_interval", 0) or 0)

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
            self.host.session_event(self, "ended", crash)

    async def _run(self) -> None:
        # Loaded here, on this thread with its loop running: lark_oapi.ws.client looks up the
        # current event loop when it is first imported.
        sdk = load_sdk()
        ws_client = sdk.ws_client
        # The SDK schedules its tasks on this module global (client.py: loop.create_task(...)
        # in _connect and _receive_message_loop). Sessions never overlap (the previous thread
        # has ended before a new one starts), so pointing it at this thread's loop is safe.
        ws_client.loop = asyncio.get_running_loop()
        _bound_discovery_timeout(ws_client)
        if self._stop_requested:
            return
        config = self.config
        callbacks: dict[str, tuple[type, Callable[[Any], Any]]] = {}
        if config.card_actions:
            callbacks[f"p2.{CARD_ACTION_TRIGGER}"] = (
                sdk.card_action_trigger,
                self._on_card_action,
            )
        dispatcher = EventDispatcher(
            sdk,
            events={f"p2.{event_type}": self._on_sdk_event for event_type in config.event_types},
            callbacks=callbacks,
        )
        self.client = _client_class(sdk)(
            config.app_id,
            config.app_secret,
            log_level=_lark_level(sdk.log_level, config.log_level),
            event_handler=dispatcher,
            domain=config.domain,
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
            if is_fatal(exc):
                self.on_gave_up(exc)
                return
            logger.warning("feishu gateway: first connect failed: {}", redact(exc))
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
                self.host.session_event(self, "disconnected", getattr(client, "_conn_id", ""))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception as exc:  # pragma: no cover - best effort teardown
            logger.warning("feishu gateway: SDK teardown failed: {}", redact(repr(exc)))
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    # -- callbacks from the SDK (SDK thread) ------------------------------------------------

    def _on_sdk_event(self, data: Any) -> None:
        """A customized event (its return value would be dropped by the SDK anyway)."""
        self.host.handle_event(_envelope(data))

    def _on_card_action(self, data: Any) -> dict[str, Any] | None:
        """A card callback: the host's answer is serialised into the ack's data."""
        return self.host.handle_event(_envelope(data))

    def on_frame(self) -> None:
        self.last_activity = time.monotonic()
        self.host.frame_seen()

    def on_attempt(self) -> None:
        self.last_activity = time.monotonic()

    def on_connected(self, conn: Any, conn_id: str) -> None:
        if conn is self._seen_conn:
            return
        self._seen_conn = conn
        self.connected = True
        self.last_activity = time.monotonic()
        self.host.session_event(self, "connected", conn_id)

    def on_disconnected(self, conn_id: str) -> None:
        self.connected = False
        self.last_activity = time.monotonic()
        self.host.session_event(self, "disconnected", conn_id)

    def on_gave_up(self, exc: BaseException) -> None:
        self.gave_up = exc
        self.connected = False
        self.host.session_event(self, "gave_up", exc)
        self._halt.set()


def _plain(value: Any) -> Any:
    """A typed lark_oapi object (e.g. P2CardActionTriggerData) as plain JSON data."""
    if value is None or isinstance(value, dict | list | str | int | float | bool):
        return value
    # The SDK's own encoder: it drops None fields, as the envelopes always did.
    return json.loads(load_sdk().json.marshal(value) or "null")


def _envelope(data: Any) -> dict[str, Any]:
    header = getattr(data, "header", None)
    event = _plain(getattr(data, "event", None))
    return {
        "schema": getattr(data, "schema", None) or "2.0",
        "header": {k: v for k, v in vars(header).items() if v is not None} if header else {},
        "event": event if event is not None else {},
    }


async def _close_quietly(conn: Any) -> None:
    try:
        async with asyncio.timeout(3):
            await conn.close()
    except Exception:
        pass


_CLIENT_CLASS: type | None = None


def _client_class(sdk: LeanSdk) -> type:
    """``lark_oapi.ws.Client`` with supervision hooks, built on first use.

    Each override calls the SDK's own method and only observes: connections made and lost,
    frames received, and a reconnect loop that ended in an exception (retry count spent, or a
    fatal discovery code). The SDK would let that exception kill its receive task silently and
    keep a dead client around (a zombie); here it is reported so the gateway can rebuild.
    """
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:

        class _SupervisedClient(sdk.client_class):  # type: ignore[misc]  # a base known at run time
            _session: WsSession

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
                    logger.debug("feishu gateway: receive loop ended: {}", redact(exc))

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


def _lark_level(log_level: type[Enum], level: int | str) -> Enum:
    """The SDK's LogLevel member for a stdlib level (the next one up when between two)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    for member in log_level:
        if member.value >= level:
            return member
    return log_level["CRITICAL"]
