"""CardKit card entities and card callbacks (``card.action.trigger``), as Feishu answers them.

REST (scope ``cardkit:card:write``, Card JSON 2.0 only; paths and codes from the cardkit-v1
docs): ``POST /open-apis/cardkit/v1/cards`` creates an entity; a message with content
``{"type": "card", "data": {"card_id": ...}}`` shows it (once); ``PUT
.../cards/{id}/elements/{element_id}/content`` streams a markdown element's full text while
``streaming_mode`` is on; ``PATCH .../cards/{id}/settings`` changes the config; ``PUT
.../cards/{id}`` replaces the card. Every operation on one card carries a ``sequence`` that
must increase strictly (300317); a repeated ``uuid`` on one card is answered as done without
applying it again. Streaming mode closes by itself `stream_ttl` seconds (Feishu: 10 minutes)
after it was opened: later text updates get 200850. Operations on a streaming card fail with
200810 while a user's click on it waits for the bot's answer. Limits: 10 operations/s per
card, 50/s and 1000/min per app (HTTP 429, 99991400); `refuse()` makes every CardKit call
answer 400 / 99991672 naming the missing scope, as for an app without it.

Callbacks: `push_card_action` sends a schema-2.0 ``card.action.trigger`` event over the long
connection and reads the bot's answer from the ack (``data``, base64 JSON). Feishu waits 3 s
for it; a later answer, a failed ack or an answer Feishu would reject (a toast type it does
not know, a card while the card streams) is recorded in `CardAction.error`.

Where the docs name no code (sending an entity twice or an unknown one) the simulator answers
230099 (card content failure).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .envelopes import build_envelope, new_id, user_ids
from .options import SimOptions
from .records import Records
from .rest import ApiError

__all__ = ["CARD_ACTION", "CardAction", "CardEntity", "CardKitApi", "find_button"]

CARD_ACTION = "card.action.trigger"
CARD_LIMIT = 30 * 1024
CALLBACK_DEADLINE_S = 3.0
TOAST_TYPES = ("info", "success", "warning", "error")
MISSING_SCOPE = 99991672
_ELEMENT_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,19}$")


@dataclass(slots=True)
class CardEntity:
    """One card entity. `card` is the current JSON; `versions` every state it had, in order."""

    card_id: str
    card: dict[str, Any]
    streaming: bool = False
    streaming_opened_at: float | None = None  # CardKitApi.clock()
    timed_out: bool = False  # streaming closed by the TTL, not by the bot
    sequence: int = 0
    message_id: str | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)
    ops: list[tuple[str, int, int]] = field(default_factory=list)  # (op, sequence, code)
    uuids: set[str] = field(default_factory=set)
    interacting: int = 0  # clicks waiting for the bot's answer
    rate_limited: int = 0


@dataclass(slots=True)
class CardAction:
    """One pushed card callback and the bot's answer (`answer` is the decoded ack data)."""

    event_id: str
    message_id: str
    operator_open_id: str
    value: Any
    answer: Any = None
    code: int | None = None
    latency_s: float | None = None
    error: str | None = None

    @property
    def toast(self) -> dict[str, Any] | None:
        toast = self.answer.get("toast") if isinstance(self.answer, dict) else None
        return toast if isinstance(toast, dict) else None


class CardKitApi:
    """The CardKit routes plus callback pushes; entities live in `records.cards`."""

    def __init__(self, opts: SimOptions, records: Records, *, stream_ttl: float = 600.0) -> None:
        self.opts = opts
        self.records = records
        self.stream_ttl = stream_ttl
        self.clock = time.monotonic  # streaming TTL clock; tests may move it forward
        self.limits = True
        self.refuse_code: int | None = None
        self._app_window: deque[float] = deque()
        self._card_windows: dict[str, deque[float]] = {}

    def routes(self) -> list[web.RouteDef]:
        base = "/open-apis/cardkit/v1/cards"
        return [
            web.post(base, self.create),
            web.put(base + "/{card_id}", self.update),
            web.patch(base + "/{card_id}/settings", self.settings),
            web.put(base + "/{card_id}/elements/{element_id}/content", self.content),
        ]

    def refuse(self, code: int = MISSING_SCOPE) -> None:
        """Answer every CardKit call with 400 / `code` (default: scope not granted)."""
        self.refuse_code = code

    def allow(self) -> None:
        self.refuse_code = None

    # -- REST -------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        try:
            self._gate()
            body = await _object(request)
            if body.get("type") != "card_json":
                raise _Err(10002, "only type card_json is supported here")
            card = _card_json(body.get("data"), await request.read())
            config = card.get("config") or {}
            entity = CardEntity(
                card_id=str(7_000_000_000_000_000_000 + len(self.records.cards)), card=card
            )
            if config.get("streaming_mode") is True:
                entity.streaming, entity.streaming_opened_at = True, self.clock()
            entity.versions.append(card)
            self.records.cards[entity.card_id] = entity
            await self.records.changed()
            return _ok({"card_id": entity.card_id})
        except _Err as exc:
            return exc.response()

    async def content(self, request: web.Request) -> web.Response:
        try:
            entity, body = await self._op(request, "content")
            if body is None:
                return _ok()
            text = body.get("content")
            if not isinstance(text, str) or not text:
                raise _Err(10002, "content must be a non-empty string")
            self._check_ttl(entity)
            if not entity.streaming:
                if entity.timed_out:
                    raise _Err(200850, "Card streaming timeout")
                raise _Err(300309, "Card streaming closed")
            element = _find_element(entity.card, request.match_info["element_id"])
            if element is None:
                raise _Err(10002, "element not found")
            if element.get("tag") not in ("markdown", "plain_text"):
                raise _Err(300310, "Only update text")
            card = json.loads(json.dumps(entity.card))
            _find_element(card, request.match_info["element_id"])["content"] = text  # type: ignore[index]
            if _size(card) > CARD_LIMIT:
                raise _Err(200860, "Card content exceeds limit.")
            await self._apply(entity, card, "content", body)
            return _ok()
        except _Err as exc:
            return exc.response()

    async def settings(self, request: web.Request) -> web.Response:
        try:
            entity, body = await self._op(request, "settings")
            if body is None:
                return _ok()
            try:
                settings = json.loads(body.get("settings") or "")
            except (TypeError, ValueError):
                raise _Err(10002, "settings must be a JSON string") from None
            config = settings.get("config") if isinstance(settings, dict) else None
            if not isinstance(config, dict):
                raise _Err(300122, "Failed to update card configuration")
            card = json.loads(json.dumps(entity.card))
            card.setdefault("config", {}).update(config)
            self._set_streaming(entity, config.get("streaming_mode"))
            await self._apply(entity, card, "settings", body)
            return _ok()
        except _Err as exc:
            return exc.response()

    async def update(self, request: web.Request) -> web.Response:
        try:
            entity, body = await self._op(request, "update")
            if body is None:
                return _ok()
            wrapper = body.get("card")
            if not isinstance(wrapper, dict) or wrapper.get("type") != "card_json":
                raise _Err(10002, "card.type must be card_json")
            card = _card_json(wrapper.get("data"), await request.read())
            self._set_streaming(entity, (card.get("config") or {}).get("streaming_mode", False))
            await self._apply(entity, card, "update", body)
            return _ok()
        except _Err as exc:
            return exc.response()

    # -- messages showing an entity (called by the IM routes) -------------------------------

    def attach(self, content: dict[str, Any], message_id: str) -> CardEntity | None:
        """The entity a ``{"type": "card"}`` content shows (sent once), else None."""
        if content.get("type") != "card":
            return None
        data = content.get("data")
        card_id = data.get("card_id") if isinstance(data, dict) else None
        entity = self.records.cards.get(card_id) if isinstance(card_id, str) else None
        if entity is None or entity.message_id is not None:
            raise ApiError(
                400, 230099, "Failed to create card content, ext=unknown or already sent card_id"
            )
        entity.message_id = message_id
        return entity

    # -- callbacks --------------------------------------------------------------------------

    async def push_card_action(
        self,
        hub: Any,
        *,
        message_id: str,
        value: Any,
        operator_open_id: str,
        chat_id: str,
        tag: str = "button",
        timeout: float = 10.0,
    ) -> CardAction:
        """Push a click and wait for the bot's answer on the ack (see the module docstring)."""
        event = {
            "operator": {"tenant_key": self.opts.tenant_key, **user_ids(operator_open_id)},
            "token": new_id("c-", 16),
            "action": {"value": value, "tag": tag},
            "host": "im_message",
            "context": {"open_message_id": message_id, "open_chat_id": chat_id},
        }
        envelope = build_envelope(
            CARD_ACTION,
            event,
            app_id=self.opts.app_id,
            tenant_key=self.opts.tenant_key,
            token=self.opts.verification_token,
        )
        record = CardAction(envelope["header"]["event_id"], message_id, operator_open_id, value)
        self.records.card_actions.append(record)
        entity = self._entity_of(message_id)
        if entity is not None:
            entity.interacting += 1
        try:
            delivery = await hub.push(envelope)
            ack = await self.records.wait_for(
                lambda: next(
                    (
                        a
                        for a in self.records.acks
                        if a.frame_message_id == delivery.frame_message_id
                    ),
                    None,
                ),
                timeout,
            )
        except TimeoutError:
            record.error = f"no answer within {timeout:g}s"
            return record
        finally:
            if entity is not None:
                entity.interacting -= 1
            await self.records.changed()
        record.code, record.latency_s = ack.code, ack.latency_s
        record.answer = _ack_data(ack.payload)
        record.error = self._judge(record, entity)
        await self.records.changed()
        return record

    def _judge(self, record: CardAction, entity: CardEntity | None) -> str | None:
        if record.code != 200:
            return f"the ack says code {record.code}: the user sees an error"
        if record.latency_s is not None and record.latency_s > CALLBACK_DEADLINE_S:
            return f"answered after {record.latency_s:.2f}s (> 3 s): the user sees an error"
        answer = record.answer
        if answer in (None, {}):
            return None
        if not isinstance(answer, dict):
            return f"the answer is not a JSON object: {answer!r}"
        toast = answer.get("toast")
        if toast is not None and (
            not isinstance(toast, dict)
            or toast.get("type") not in TOAST_TYPES
            or not isinstance(toast.get("content"), str)
        ):
            return f"invalid toast {toast!r}"
        if "card" in answer and entity is not None and entity.streaming:
            return "a card in the answer while the card streams (Feishu rejects it)"
        return None

    # -- internals --------------------------------------------------------------------------

    def _entity_of(self, message_id: str) -> CardEntity | None:
        return next((e for e in self.records.cards.values() if e.message_id == message_id), None)

    def _gate(self, card_id: str | None = None) -> None:
        if self.refuse_code is not None:
            raise _Err(
                self.refuse_code,
                "Access denied. One of the following scopes is required: [cardkit:card:write].",
                status=400,
            )
        if not self.limits:
            return
        now = time.monotonic()
        windows = [(self._app_window, 1.0, 50), (self._app_window, 60.0, 1000)]
        if card_id is not None:
            windows.append((self._card_windows.setdefault(card_id, deque()), 1.0, 10))
        for window, span, limit in windows:
            if sum(1 for t in window if now - t < span) >= limit:
                entity = self.records.cards.get(card_id or "")
                if entity is not None:
                    entity.rate_limited += 1
                raise _Err(99991400, "request trigger frequency limit", status=429)
        while self._app_window and now - self._app_window[0] >= 60.0:
            self._app_window.popleft()
        self._app_window.append(now)
        if card_id is not None:
            self._card_windows[card_id].append(now)

    async def _op(self, request: web.Request, op: str) -> tuple[CardEntity, dict[str, Any] | None]:
        """Common checks; body None means a repeated uuid (answered as done, not applied)."""
        card_id = request.match_info["card_id"]
        self._gate(card_id)
        entity = self.records.cards.get(card_id)
        if entity is None:
            raise _Err(200740, "The card entity does not exist")
        body = await _object(request)
        uuid = body.get("uuid")
        if isinstance(uuid, str) and uuid in entity.uuids:
            return entity, None
        sequence = body.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
            raise _Err(10002, "sequence must be a positive int32")
        if sequence <= entity.sequence:
            entity.ops.append((op, sequence, 300317))
            raise _Err(
                300317,
                "The sequence number for operating on the card did not increment consecutively",
            )
        self._check_ttl(entity)
        if entity.streaming and entity.interacting:
            raise _Err(200810, "The card is in an ongoing interaction and cannot be updated")
        return entity, body

    async def _apply(
        self, entity: CardEntity, card: dict[str, Any], op: str, body: dict[str, Any]
    ) -> None:
        entity.card = card
        entity.sequence = body["sequence"]
        if isinstance(body.get("uuid"), str):
            entity.uuids.add(body["uuid"])
        entity.ops.append((op, body["sequence"], 0))
        entity.versions.append(card)
        shown = self.records.find_message(entity.message_id) if entity.message_id else None
        if shown is not None:  # the message's versions are what its user saw, in order
            shown.versions.append(card)
            shown.version_times.append(time.time())
        await self.records.changed()

    def _check_ttl(self, entity: CardEntity) -> None:
        opened = entity.streaming_opened_at
        if entity.streaming and opened is not None and self.clock() - opened >= self.stream_ttl:
            entity.streaming, entity.timed_out = False, True

    def _set_streaming(self, entity: CardEntity, on: Any) -> None:
        if on is True and not entity.streaming:
            entity.streaming, entity.timed_out = True, False
            entity.streaming_opened_at = self.clock()
        elif on is False:
            entity.streaming = False


def find_button(card: dict[str, Any], text: str) -> dict[str, Any] | None:
    """The callback value of the first button labelled `text` (Card 2.0 or 1.0), else None."""
    stack: list[Any] = [card]
    while stack:
        node = stack.pop(0)
        if isinstance(node, list):
            stack[:0] = node
        elif isinstance(node, dict):
            if node.get("tag") == "button" and (node.get("text") or {}).get("content") == text:
                for behavior in node.get("behaviors") or []:
                    if isinstance(behavior, dict) and behavior.get("type") == "callback":
                        return behavior.get("value")
                return node.get("value")
            stack[:0] = [
                v
                for k, v in node.items()
                if k in ("body", "elements", "columns", "actions", "i18n_elements")
            ]
    return None


class _Err(Exception):
    def __init__(self, code: int, msg: str, *, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status

    def response(self) -> web.Response:
        log_id = new_id(nbytes=12).upper()
        body = {"code": self.code, "msg": self.msg, "error": {"log_id": log_id}}
        return web.json_response(body, status=self.status, headers={"X-Tt-Logid": log_id})


def _ack_data(payload: Any) -> Any:
    """The answer inside an ack payload: ``data`` is base64 of the handler's JSON result."""
    raw = payload.get("data") if isinstance(payload, dict) else None
    if not raw:
        return None
    try:
        return json.loads(base64.b64decode(raw))
    except ValueError:
        return raw


def _ok(data: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({"code": 0, "msg": "success", "data": data or {}})


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _Err(9499, "Bad Request")
    return body


def _size(card: dict[str, Any]) -> int:
    return len(json.dumps(json.dumps(card, ensure_ascii=False), ensure_ascii=False).encode())


def _card_json(data: Any, raw: bytes) -> dict[str, Any]:
    """Validate a Card JSON 2.0 string the way CardKit does (codes from the docs)."""
    if not isinstance(data, str) or not data.strip():
        raise _Err(300307, "The card DSL is empty")
    try:
        card = json.loads(data)
    except ValueError:
        raise _Err(200220, "Failed to generate card content") from None
    if not isinstance(card, dict):
        raise _Err(200220, "Failed to generate card content")
    if card.get("schema") != "2.0":
        raise _Err(300303, "Only schema 2.0 is supported")
    body = card.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("elements", []), list):
        raise _Err(200220, "Failed to generate card content")
    if (card.get("config") or {}).get("update_multi") is False:
        raise _Err(300302, "update_multi property is false")
    if len(raw) > CARD_LIMIT + 2048 or _size(card) > CARD_LIMIT:
        raise _Err(200860, "Card content exceeds limit.")
    ids: list[str] = []
    count = _walk(body["elements"], ids)
    if count > 200:
        raise _Err(300305, "The number of card components exceeds 200")
    if len(ids) != len(set(ids)):
        raise _Err(300301, "Duplicate element_id in card component.")
    if any(not _ELEMENT_ID.match(i) for i in ids):
        raise _Err(200220, "Failed to generate card content, ext=invalid element_id")
    return card


def _walk(elements: list[Any], ids: list[str]) -> int:
    count = 0
    for el in elements:
        if not isinstance(el, dict) or not isinstance(el.get("tag"), str):
            raise _Err(200220, "Failed to generate card content, ext=element without tag")
        count += 1
        if "element_id" in el:
            ids.append(str(el["element_id"]))
        if el["tag"] == "markdown" and not el.get("content"):
            raise _Err(200220, "Failed to generate card content, ext=empty markdown")
        for col in el.get("columns") or []:
            if isinstance(col, dict):
                count += 1 + _walk(col.get("elements") or [], ids)
        count += _walk(el.get("elements") or [], ids) if el["tag"] != "column_set" else 0
    return count


def _find_element(card: dict[str, Any], element_id: str) -> dict[str, Any] | None:
    stack: list[Any] = list((card.get("body") or {}).get("elements") or [])
    while stack:
        el = stack.pop()
        if not isinstance(el, dict):
            continue
        if el.get("element_id") == element_id:
            return el
        stack.extend(el.get("elements") or [])
        stack.extend(el.get("columns") or [])
    return None
