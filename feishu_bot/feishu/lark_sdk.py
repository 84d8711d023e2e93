"""The lean load of lark_oapi: only the parts the bot uses (with ws_session.py, the only code
touching lark_oapi).

A lean load (`load_sdk`): ``import lark_oapi`` runs the package ``__init__``, which imports every
generated API model (~10 000 modules, +143 MB, ~4 s), and ``lark_oapi/ws/client.py`` imports
``event.dispatcher_handler``, which imports every API's event processors. The bot needs neither:
its REST calls are its own. So the package ``lark_oapi`` is registered without running its
``__init__`` (a module made from its spec, ``__path__`` pointing at the real directory) and
``lark_oapi.ws.client`` is imported while a stand-in ``event.dispatcher_handler`` is in place
(the client names ``EventDispatcherHandler`` only in a signature). What is loaded for real: the
websocket client and its ``core``/``ws`` helpers, the frame protobuf, and the event models the
envelopes are built from (``event.context``, ``event.custom``, the card-action model). The one
method the client calls on its event handler, ``_do_without_validation``, is ours
(`_EventDispatcher`), written after the SDK's. tests/feishu/test_sdk_layout.py pins the installed
SDK's layout this relies on.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from types import ModuleType
from typing import Any

from loguru import logger

__all__ = [
    "CLIENT_METHODS",
    "DISPATCHER_MODULE",
    "SDK_MODULES",
    "SDK_VERSION",
    "EventDispatcher",
    "LeanSdk",
    "SdkLayoutError",
    "load_sdk",
]

SDK_VERSION = "1.7.5"
"""The lark-oapi release whose layout the lean load was written against (pyproject pins it)."""

# What the loader and the session take from the SDK, module by module. The layout test
# (tests/feishu/test_sdk_layout.py) checks the installed SDK against these lists.
SDK_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lark_oapi.ws.client", ("Client", "loop", "requests")),
    ("lark_oapi.ws.exception", ("ClientException",)),
    ("lark_oapi.core.const", ("VERSION",)),
    ("lark_oapi.core.enum", ("LogLevel",)),
    ("lark_oapi.core.json", ("JSON",)),
    ("lark_oapi.event.context", ("EventContext",)),
    ("lark_oapi.event.custom", ("CustomizedEvent",)),
    ("lark_oapi.event.callback.model.p2_card_action_trigger", ("P2CardActionTrigger",)),
)
# Methods of lark_oapi.ws.Client that `_SupervisedClient` overrides or `WsSession` calls.
CLIENT_METHODS: tuple[str, ...] = (
    "_connect",
    "_disconnect",
    "_reconnect",
    "_try_connect",
    "_receive_message_loop",
    "_handle_message",
    "_handle_data_frame",
    "_ping_loop",
)
# The module lark_oapi/ws/client.py imports its handler's type from. The real one imports every
# API's event processors; during the client's import a stand-in holds its place.
DISPATCHER_MODULE = "lark_oapi.event.dispatcher_handler"


class SdkLayoutError(ImportError):
    """The installed lark_oapi lacks something the lean load relies on; the message names it."""


@dataclass(frozen=True, slots=True)
class LeanSdk:
    """The parts of lark_oapi the bot uses. Module objects are shared process-wide: `ws_client`
    is ``lark_oapi.ws.client`` itself (its globals ``loop`` and ``requests`` are set by the
    session)."""

    ws_client: ModuleType
    client_class: type
    log_level: type[Enum]
    json: Any
    event_context: type
    customized_event: type
    card_action_trigger: type
    version: str


_sdk: LeanSdk | None = None
_sdk_lock = threading.Lock()


def load_sdk() -> LeanSdk:
    """The parts of lark_oapi the bot uses, loaded on first call without the package
    ``__init__``; later calls return the same object. Raises `SdkLayoutError` naming what
    moved when the installed SDK lacks a module or attribute listed in `SDK_MODULES` or
    `CLIENT_METHODS`.

    The first call imports ``lark_oapi.ws.client``, which looks up the current event loop at
    import time (creating and setting one when the thread has none): call it on the thread and
    loop the client will run on. When the whole package was imported before, its modules are
    used as they are.
    """
    global _sdk
    with _sdk_lock:
        if _sdk is None:
            started = time.perf_counter()
            _sdk = _load_sdk()
            # Once per process: the version in use, and what the load cost the start-up.
            logger.info(
                "lark_oapi {} loaded in {:.2f}s ({} of its modules)",
                _sdk.version,
                time.perf_counter() - started,
                sum(1 for name in sys.modules if name.partition(".")[0] == "lark_oapi"),
            )
        return _sdk


def _load_sdk() -> LeanSdk:
    if "lark_oapi.ws.client" not in sys.modules:
        if "lark_oapi" not in sys.modules:
            sys.modules["lark_oapi"] = _package_without_init("lark_oapi")
        _import("lark_oapi.event")  # an empty __init__: the stand-in's parent
        with _standing_in(DISPATCHER_MODULE, EventDispatcherHandler=EventDispatcher):
            _import("lark_oapi.ws.client")
    modules = {name: _import(name) for name, _ in SDK_MODULES}
    missing = [
        f"{name}.{attr}"
        for name, attrs in SDK_MODULES
        for attr in attrs
        if not hasattr(modules[name], attr)
    ]
    client_class = getattr(modules["lark_oapi.ws.client"], "Client", None)
    missing += [
        f"lark_oapi.ws.client.Client.{method}"
        for method in CLIENT_METHODS
        if not callable(getattr(client_class, method, None))
    ]
    if missing:
        raise SdkLayoutError(_layout_message(f"missing {', '.join(missing)}"))
    version = str(modules["lark_oapi.core.const"].VERSION)
    if version != SDK_VERSION:
        # Not fatal: the listed parts are all there. What changed inside them is not known.
        logger.warning(
            "lark_oapi {} installed; the lean load was written for {} (see {})",
            version,
            SDK_VERSION,
            __name__,
        )
    return LeanSdk(
        ws_client=modules["lark_oapi.ws.client"],
        client_class=modules["lark_oapi.ws.client"].Client,
        log_level=modules["lark_oapi.core.enum"].LogLevel,
        json=modules["lark_oapi.core.json"].JSON,
        event_context=modules["lark_oapi.event.context"].EventContext,
        customized_event=modules["lark_oapi.event.custom"].CustomizedEvent,
        card_action_trigger=modules[
            "lark_oapi.event.callback.model.p2_card_action_trigger"
        ].P2CardActionTrigger,
        version=version,
    )


def _layout_message(what: str) -> str:
    try:
        from importlib.metadata import version

        installed = version("lark-oapi")
    except Exception:  # only for the message
        installed = "unknown"
    return (
        f"lark-oapi {installed} is not laid out as the lean load in {__name__} expects "
        f"(written for {SDK_VERSION}): {what}. Pin lark-oapi=={SDK_VERSION} or update "
        "SDK_MODULES/CLIENT_METHODS and run tests/feishu/test_sdk_layout.py."
    )


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except SdkLayoutError:
        raise
    except ImportError as exc:
        raise SdkLayoutError(_layout_message(f"importing {name} failed: {exc}")) from exc


def _package_without_init(name: str) -> ModuleType:
    """The package module as the import system would make it (``__spec__``, ``__path__``,
    ``__file__``), its ``__init__`` not executed: submodules import from the real directory."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise SdkLayoutError(_layout_message(f"{name} is not an installed package"))
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str) -> Any:  # PEP 562: only for names the package does not have
        # Without this, code expecting the full package would read a bare "has no attribute".
        raise AttributeError(
            f"module {name!r} has no attribute {attr!r}: it was loaded without its __init__ "
            f"by {__name__}.load_sdk; import {name} before that for the whole package"
        )

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


@contextmanager
def _standing_in(name: str, **attrs: Any) -> Iterator[None]:
    """A module `name` with `attrs` in ``sys.modules`` while the body runs, unless the real
    one is loaded already. Removed afterwards, so that a later import of `name` gets the
    real module rather than the stand-in. Another thread importing `name` meanwhile would get
    the stand-in: the bot imports lark_oapi nowhere else."""
    if name in sys.modules:
        yield
        return
    stand_in = ModuleType(name, "A stand-in used while lark_oapi.ws.client is imported.")
    stand_in.__dict__.update(attrs)
    sys.modules[name] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if getattr(sys.modules.get(parent), child, None) is stand_in:
            delattr(sys.modules[parent], child)


class EventDispatcher:
    """Stands in for lark_oapi's ``EventDispatcherHandler`` on the ws client, which calls only
    ``_do_without_validation(payload)`` (client.py ``_handle_data_frame``), sends its return
    value in the ack's ``data`` and acks 500 when it raises.

    Written after the SDK's (event/dispatcher_handler.py ``_do_without_validation``, 1.7.5):
    the key is ``p2.<header.event_type>`` for a v2 payload and ``p1.<event.type>`` for a v1
    one; callbacks are looked up first and their return value is returned, an event handler's
    is dropped; an unregistered key raises. Payloads are parsed into the same SDK models as
    before, so the host's envelopes are unchanged. It does no decryption and no token check:
    the long connection never carried either.
    """

    def __init__(
        self,
        sdk: LeanSdk,
        *,
        events: Mapping[str, Callable[[Any], None]],
        callbacks: Mapping[str, tuple[type, Callable[[Any], Any]]],
    ) -> None:
        self._sdk = sdk
        self._events = dict(events)
        self._callbacks = dict(callbacks)

    def _do_without_validation(self, payload: bytes) -> Any:
        text = payload.decode("utf-8")
        json_ = self._sdk.json
        context = json_.unmarshal(text, self._sdk.event_context)
        if context.schema:
            event_type = context.header.event_type
            key = f"p2.{event_type}"
        elif context.uuid:
            event_type = context.event.get("type")
            key = f"p1.{event_type}"
        else:
            event_type = context.type
            key = f"{context.schema}.{event_type}"
        callback = self._callbacks.get(key)
        if callback is not None:
            model, fn = callback
            return fn(json_.unmarshal(text, model))
        handler = self._events.get(key)
        if handler is None:
            raise LookupError(f"processor not found, type: {event_type}")
        handler(json_.unmarshal(text, self._sdk.customized_event))
        return None
