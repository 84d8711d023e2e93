"""The Feishu Open Platform REST endpoints the bot uses, with the platform's answers and errors.

Paths, bodies and error codes follow the Feishu server docs (im/v1 message create, reply,
patch, delete; message reactions; auth/v3 tenant_access_token/internal; bot/v3/info). Every
answer is the JSON envelope ``{"code": 0, "msg": "success", "data": {...}}``; failures carry a
non-zero ``code`` and the HTTP status Feishu uses (400 for nearly every business error).

Where the docs do not pin a detail, the choice is noted next to the code.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from typing import Any

from aiohttp import web

from .envelopes import new_id, now_ms
from .options import SimOptions
from .records import Reaction, Records, SentMessage, UserMessage

__all__ = ["TOKEN_PATH", "ApiError", "RestApi", "error_response"]

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"

TEXT_LIMIT = 150 * 1024  # "文本消息请求体最大不能超过150KB"
CARD_LIMIT = 30 * 1024  # "卡片及富文本消息请求体最大不能超过30KB" (cards and posts)
UUID_WINDOW_S = 3600  # the same uuid within 1 h sends one message only
TOKEN_REUSE_MIN_S = 1800  # a token with > 30 min left is handed out again
RECEIVE_ID_TYPES = ("open_id", "union_id", "user_id", "email", "chat_id")
MSG_TYPES = (
    "text",
    "post",
    "image",
    "file",
    "audio",
    "media",
    "sticker",
    "interactive",
    "share_chat",
    "share_user",
    "system",
)

_INVALID_PARAM = "Your request contains an invalid request parameter"


class ApiError(Exception):
    """A Feishu business error; becomes the JSON error answer."""

    def __init__(self, status: int, code: int, msg: str, extra: dict | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.extra = extra or {}


def error_response(status: int, code: int, msg: str, **extra: Any) -> web.Response:
    log_id = new_id(nbytes=12).upper()
    body = {"code": code, "msg": msg, "error": {"log_id": log_id, **extra}}
    return web.json_response(body, status=status, headers={"X-Tt-Logid": log_id})


def ok(data: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({"code": 0, "msg": "success", "data": data or {}})


def _invalid(detail: str) -> ApiError:
    return ApiError(400, 230001, f"{_INVALID_PARAM}, ext={detail}")


class RestApi:
    """Route handlers plus the REST-side state: tokens, uuid dedupe, chats, rate windows."""

    def __init__(self, opts: SimOptions, records: Records) -> None:
        self.opts = opts
        self.records = records
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._current_token: str | None = None
        self._uuids: dict[str, tuple[str, float]] = {}  # uuid -> (message_id, monotonic)
        self._rate: dict[str, deque[float]] = defaultdict(deque)
        self.cardkit: Any = None  # CardKitApi: resolves {"type": "card"} contents to entities
        self.media: Any = None  # SimMedia: image/file messages must carry an uploaded key

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(TOKEN_PATH, self.tenant_token),
            web.get("/open-apis/bot/v3/info", self.bot_info),
            web.get("/open-apis/im/v1/chats/{chat_id}/members/is_in_chat", self.is_in_chat),
            web.post("/open-apis/im/v1/messages", self.create_message),
            web.post("/open-apis/im/v1/messages/{message_id}/reply", self.reply_message),
            web.patch("/open-apis/im/v1/messages/{message_id}", self.patch_message),
            web.delete("/open-apis/im/v1/messages/{message_id}", self.delete_message),
            web.post("/open-apis/im/v1/messages/{message_id}/reactions", self.add_reaction),
            web.delete(
                "/open-apis/im/v1/messages/{message_id}/reactions/{reaction_id}",
                self.delete_reaction,
            ),
        ]

    # -- tokens -----------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Invalidate every issued token; calls answer 99991663 until a new one is fetched."""
        self._tokens.clear()
        self._current_token = None

    def token_valid(self, token: str) -> bool:
        expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def auth_error(self, request: web.Request) -> web.Response | None:
        """The answer to a call without a valid tenant token, or None when it may proceed.

        Feishu answers HTTP 400 with 99991661 (no token) or 99991663 (invalid or expired).
        """
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(
                400,
                99991661,
                "Missing access token for authorization. "
                "Please make a request with token attached.",
            )
        if not self.token_valid(token.strip()):
            return error_response(
                400,
                99991663,
                "Invalid access token for authorization. "
                "Please make a request with token attached.",
            )
        return None

    async def tenant_token(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or body.get("app_id") != self.opts.app_id:
            return web.json_response({"code": 10003, "msg": "invalid param"}, status=400)
        if body.get("app_secret") != self.opts.app_secret:
            return web.json_response({"code": 10014, "msg": "app secret invalid"}, status=400)
        now = time.monotonic()
        token = self._current_token
        if token is None or self._tokens.get(token, 0) - now < TOKEN_REUSE_MIN_S:
            token = new_id("t-", 16)
            self._tokens[token] = now + self.opts.token_ttl
            self._current_token = token
        expire = int(self._tokens[token] - now)
        return web.json_response(
            {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire}
        )

    async def bot_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "code": 0,
                "msg": "ok",
                "bot": {
                    "activate_status": 2,
                    "app_name": self.opts.bot_name,
                    "avatar_url": "https://simulator.invalid/avatar.png",
                    "ip_white_list": [],
                    "open_id": self.opts.bot_open_id,
                },
            }
        )

    async def is_in_chat(self, request: web.Request) -> web.Response:
        """Whether the bot is in a chat: one it was added to (`records.bot_chats`), or one
        where a user's message was pushed, or a private chat it has."""
        chat_id = request.match_info["chat_id"]
        if not chat_id.startswith("oc_"):
            return error_response(400, 99992402, "field validation failed")
        records = self.records
        known = (
            chat_id in records.bot_chats
            or chat_id in records.p2p_chats.values()
            or any(m.chat_id == chat_id for m in records.user_messages.values())
        )
        return ok({"is_in_chat": known})

    # -- messages ---------------------------------------------------------------------------

    async def create_message(self, request: web.Request) -> web.Response:
        try:
            receive_id_type = request.query.get("receive_id_type", "")
            if receive_id_type not in RECEIVE_ID_TYPES:
                raise ApiError(
                    400,
                    99992402,
                    "field validation failed",
                    {"field_violations": [{"field": "receive_id_type"}]},
                )
            body = await _json_object(request)
            receive_id = body.get("receive_id")
            if not isinstance(receive_id, str) or not receive_id:
                raise ApiError(400, 99992402, "field validation failed")
            if existing := self._uuid_hit(body):
                return ok(self._message_data(existing))
            msg_type, content = _validate_content(body, await request.read())
            self._check_media_key(msg_type, content)
            chat_id = self._resolve_chat(receive_id_type, receive_id)
            self._check_rate(f"chat:{chat_id}")
            msg = SentMessage(
                message_id=new_id("om_"),
                chat_id=chat_id,
                msg_type=msg_type,
                content=content,
                uuid=body.get("uuid") or None,
            )
            await self._store(msg)
            return ok(self._message_data(msg))
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.msg, **exc.extra)

    async def reply_message(self, request: web.Request) -> web.Response:
        try:
            parent = self._find_any(request.match_info["message_id"])
            if parent.deleted:
                raise ApiError(400, 230011, "The message is recalled.")
            body = await _json_object(request)
            if existing := self._uuid_hit(body):
                return ok(self._message_data(existing))
            msg_type, content = _validate_content(body, await request.read())
            self._check_media_key(msg_type, content)
            self._check_rate(f"chat:{parent.chat_id}")
            in_thread = bool(body.get("reply_in_thread"))
            root_id = parent.root_id or parent.message_id
            thread_id = parent.thread_id
            if in_thread and thread_id is None:
                thread_id = new_id("omt_", 8)
                root = self._find_optional(root_id)
                if root is not None and root.thread_id is None:
                    root.thread_id = thread_id
            msg = SentMessage(
                message_id=new_id("om_"),
                chat_id=parent.chat_id,
                msg_type=msg_type,
                content=content,
                reply_to=parent.message_id,
                reply_in_thread=in_thread,
                root_id=root_id,
                thread_id=thread_id,
                uuid=body.get("uuid") or None,
            )
            await self._store(msg)
            return ok(self._message_data(msg))
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.msg, **exc.extra)

    async def patch_message(self, request: web.Request) -> web.Response:
        """Update a card. Only interactive messages the bot sent; 5 QPS per message.

        The docs require ``config.update_multi: true`` before and after the update for cards
        in JSON 1.0 (2.0 cards are always shared); the docs name no code for a violation, so
        the simulator answers 230099 (card content failure).
        """
        try:
            message_id = request.match_info["message_id"]
            msg = self.records.find_message(message_id)
            if msg is None:
                if message_id in self.records.user_messages:
                    raise ApiError(400, 230012, "Bot is NOT the sender of the message.")
                raise _invalid("message not found")
            body = await _json_object(request)
            if msg.deleted:
                raise ApiError(400, 230011, "The message is recalled.")
            if msg.msg_type != "interactive":
                raise _invalid("only interactive (card) messages can be updated")
            _, content = _validate_content(
                {"msg_type": "interactive", "content": body.get("content")}, await request.read()
            )
            if not (_is_shared_card(msg.content) and _is_shared_card(content)):
                raise ApiError(
                    400,
                    230099,
                    "Failed to create card content, ext=only shared cards can be updated: "
                    'set "update_multi": true in the card config',
                )
            self._check_rate(f"patch:{message_id}")
            msg.content = content
            msg.versions.append(content)
            msg.version_times.append(time.time())
            await self.records.changed()
            return ok()
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.msg, **exc.extra)

    async def delete_message(self, request: web.Request) -> web.Response:
        """Recall a message the bot sent."""
        try:
            message_id = request.match_info["message_id"]
            msg = self.records.find_message(message_id)
            if msg is None:
                if message_id in self.records.user_messages:
                    raise ApiError(400, 230012, "Bot is NOT the sender of the message.")
                raise _invalid("message not found")
            if msg.deleted:
                raise ApiError(400, 230011, "The message is recalled.")
            msg.deleted = True
            await self.records.changed()
            return ok()
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.msg, **exc.extra)

    # -- reactions --------------------------------------------------------------------------

    async def add_reaction(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        target = self._find_optional(message_id)
        if target is None or target.deleted:
            return _reaction_not_found()
        try:
            body = await _json_object(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.msg)
        reaction_type = body.get("reaction_type")
        emoji = reaction_type.get("emoji_type") if isinstance(reaction_type, dict) else None
        if not isinstance(emoji, str) or not emoji.strip() or not emoji.replace("_", "").isalnum():
            return error_response(400, 231001, "reaction type is invalid.")
        reaction = Reaction(
            reaction_id=new_id("ZCaC", 24),
            message_id=message_id,
            emoji_type=emoji,
            operator_id=self.opts.app_id,
        )
        self.records.reactions.append(reaction)
        await self.records.changed()
        return ok(self._reaction_data(reaction))

    async def delete_reaction(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        reaction_id = request.match_info["reaction_id"]
        target = self._find_optional(message_id)
        if target is None or target.deleted:
            return _reaction_not_found()
        reaction = next((r for r in self.records.reactions if r.reaction_id == reaction_id), None)
        if reaction is None or not reaction.live:
            return error_response(400, 231011, "The request has an invalid reaction_id.")
        if reaction.message_id != message_id:
            return error_response(400, 231010, "The reaction does not belong to the message.")
        reaction.removed_at = time.time()
        await self.records.changed()
        return ok(self._reaction_data(reaction))

    # -- helpers ----------------------------------------------------------------------------

    def _check_media_key(self, msg_type: str, content: dict[str, Any]) -> None:
        problem = self.media.check_message_key(msg_type, content) if self.media else None
        if problem is not None:
            raise _invalid(problem[1])

    def _uuid_hit(self, body: dict[str, Any]) -> SentMessage | None:
        uuid = body.get("uuid")
        if not uuid:
            return None
        hit = self._uuids.get(uuid)
        if hit is None or time.monotonic() - hit[1] > UUID_WINDOW_S:
            return None
        return self.records.find_message(hit[0])

    async def _store(self, msg: SentMessage) -> None:
        if msg.msg_type == "interactive" and self.cardkit is not None:
            msg.card_entity = self.cardkit.attach(msg.content, msg.message_id)
        msg.versions.append(msg.rendered)  # a card entity: its card as the user sees it
        msg.version_times.append(msg.created_at)
        if msg.uuid:
            self._uuids[msg.uuid] = (msg.message_id, time.monotonic())
        self.records.messages.append(msg)
        await self.records.changed()

    def _check_rate(self, key: str) -> None:
        """5 per second per chat (sends) and per message (PATCH), when `rate_limits` is on."""
        if not self.opts.rate_limits:
            return
        window = self._rate[key]
        now = time.monotonic()
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= 5:
            raise ApiError(400, 230020, "This operation triggers the frequency limit.")
        window.append(now)

    def _resolve_chat(self, receive_id_type: str, receive_id: str) -> str:
        if receive_id_type == "chat_id":
            if not receive_id.startswith("oc_"):
                raise _invalid("invalid receive_id")
            return receive_id
        # A message to a user goes to the bot's p2p chat with that user.
        chats = self.records.p2p_chats
        if receive_id not in chats:
            chats[receive_id] = new_id("oc_")
        return chats[receive_id]

    def _find_optional(self, message_id: str) -> SentMessage | UserMessage | None:
        return self.records.find_message(message_id) or self.records.user_messages.get(message_id)

    def _find_any(self, message_id: str) -> SentMessage | UserMessage:
        found = self._find_optional(message_id)
        if found is None:
            raise _invalid("message not found")  # the docs give 230001 for a bad message_id
        return found

    def _message_data(self, msg: SentMessage) -> dict[str, Any]:
        created = str(int(msg.created_at * 1000))
        data: dict[str, Any] = {"message_id": msg.message_id}
        if msg.root_id:
            data["root_id"] = msg.root_id
        if msg.reply_to:
            data["parent_id"] = msg.reply_to
        if msg.thread_id:
            data["thread_id"] = msg.thread_id
        data.update(
            {
                "msg_type": msg.msg_type,
                "create_time": created,
                "update_time": created,
                "deleted": msg.deleted,
                "updated": msg.updated,
                "chat_id": msg.chat_id,
                "sender": {
                    "id": self.opts.app_id,
                    "id_type": "app_id",
                    "sender_type": "app",
                    "tenant_key": self.opts.tenant_key,
                },
                "body": {"content": json.dumps(msg.versions[0], ensure_ascii=False)},
            }
        )
        return data

    def _reaction_data(self, reaction: Reaction) -> dict[str, Any]:
        return {
            "reaction_id": reaction.reaction_id,
            "operator": {"operator_id": reaction.operator_id, "operator_type": "app"},
            "action_time": now_ms(),
            "reaction_type": {"emoji_type": reaction.emoji_type},
        }


def _reaction_not_found() -> web.Response:
    return error_response(400, 231003, "The message is not found, maybe not exist or deleted.")


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except ValueError:
        return None


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, 9499, "Bad Request")  # what the gateway answers to a non-JSON body
    return body


def _validate_content(body: dict[str, Any], raw: bytes) -> tuple[str, dict[str, Any]]:
    """Check msg_type, content (a JSON string of an object of that type) and the size limit."""
    msg_type = body.get("msg_type")
    if msg_type not in MSG_TYPES:
        raise _invalid("invalid msg_type")
    raw_content = body.get("content")
    if not isinstance(raw_content, str):
        raise _invalid("invalid message content")
    try:
        content = json.loads(raw_content)
    except ValueError:
        raise _invalid("invalid message content") from None
    if not isinstance(content, dict):
        raise _invalid("invalid message content")
    limit = TEXT_LIMIT if msg_type == "text" else CARD_LIMIT
    if msg_type in ("text", "post", "interactive") and len(raw) > limit:
        raise ApiError(400, 230025, "The length of the message content reaches its limit.")
    if msg_type == "text" and not isinstance(content.get("text"), str):
        raise _invalid("invalid message content")
    if msg_type == "post" and not _valid_post(content):
        raise _invalid("invalid message content")
    if msg_type == "interactive" and not _valid_card(content):
        raise ApiError(400, 230099, "Failed to create card content, ext=invalid card structure")
    key = {"image": "image_key", "file": "file_key", "audio": "file_key", "media": "file_key"}
    if msg_type in key and not isinstance(content.get(key[msg_type]), str):
        raise _invalid("invalid message content")
    return msg_type, content


def _valid_post(content: dict[str, Any]) -> bool:
    body = content.get("post", content)
    if not isinstance(body, dict) or not body:
        return False
    for locale in body.values():
        if not isinstance(locale, dict) or not isinstance(locale.get("content"), list):
            return False
        if not all(isinstance(p, list) for p in locale["content"]):
            return False
    return True


def _valid_card(card: dict[str, Any]) -> bool:
    if card.get("type") == "template":
        return isinstance(card.get("data"), dict)
    if card.get("type") == "card":  # a CardKit entity by id (simulator/cardkit.py)
        data = card.get("data")
        return isinstance(data, dict) and isinstance(data.get("card_id"), str)
    if card.get("schema") == "2.0":
        body = card.get("body")
        return isinstance(body, dict) and isinstance(body.get("elements", []), list)
    if "elements" in card:
        return isinstance(card["elements"], list)
    if "i18n_elements" in card:
        return isinstance(card["i18n_elements"], dict)
    return "header" in card  # a header-only card is valid


def _is_shared_card(card: dict[str, Any]) -> bool:
    if card.get("schema") == "2.0" or card.get("type") == "template":
        return True
    config = card.get("config")
    return isinstance(config, dict) and config.get("update_multi") is True
