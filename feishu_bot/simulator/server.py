"""`FeishuSimulator`: the Feishu Open Platform on 127.0.0.1, for tests and a local playground.

The real ``lark_oapi.ws.Client`` connects to it with ``domain=sim.base_url``, and the bot's
REST client calls it with the same base URL. Everything runs on the event loop that called
`start()`; records are plain objects read directly by tests (`messages`, `acks`, ...), and
`wait_for` waits for a predicate over them without polling.

The simulator never imports the bot's own modules nor lark_oapi.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import envelopes
from .cardkit import CardAction, CardKitApi, find_button
from .envelopes import (
    BOT_MENU,
    MESSAGE_RECEIVE,
    bot_mention,
    build_envelope,
    build_menu_event,
    build_message_event,
)
from .faults import FaultRule, Faults
from .media import SimMedia
from .messages import MESSAGE_RECALLED, MessageReads, build_recall_event
from .options import SimOptions
from .records import (
    AckRecord,
    ConnectionRecord,
    Delivery,
    Reaction,
    Records,
    SentMessage,
    UserMessage,
    message_text,
)
from .request_log import MAX_LOG_BYTES, MAX_LOG_COUNT, RequestLog
from .rest import TOKEN_PATH, RestApi, error_response
from .ws import WS_PATH, WsHub

__all__ = ["FeishuSimulator"]


class FeishuSimulator:
    """An aiohttp server speaking Feishu's long-connection protocol and IM REST API.

    Lifecycle: `await start()` binds (port 0 = ephemeral) and serves; `await stop()` closes
    every websocket and the listener. `async with FeishuSimulator() as sim:` does both.
    A connected client should be stopped before the simulator, or it will keep retrying.
    """

    def __init__(
        self,
        *,
        app_id: str = "cli_sim_app",
        app_secret: str = "sim_secret_0123456789",
        bot_open_id: str = "ou_sim_bot",
        bot_name: str = "ClaudeBot",
        tenant_key: str = "sim_tenant",
        ping_interval: float = 120,
        reconnect_interval: float = 1,
        reconnect_nonce: float = 0,
        reconnect_count: int = -1,
        token_ttl: int = 7200,
        rate_limits: bool = False,
        cardkit_stream_ttl: float = 600.0,
        request_log_max: int = MAX_LOG_COUNT,
        request_log_bytes: int = MAX_LOG_BYTES,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.options = SimOptions(
            app_id=app_id,
            app_secret=app_secret,
            bot_open_id=bot_open_id,
            bot_name=bot_name,
            tenant_key=tenant_key,
            ping_interval=ping_interval,
            reconnect_interval=reconnect_interval,
            reconnect_nonce=reconnect_nonce,
            reconnect_count=reconnect_count,
            token_ttl=token_ttl,
            rate_limits=rate_limits,
        )
        self._host = host
        self._port = port
        # `requests` keeps the newest `request_log_max` records and at most
        # `request_log_bytes` of their bodies (see RequestLog).
        self.records = Records(RequestLog(request_log_max, request_log_bytes))
        self.faults = Faults()
        self.rest = RestApi(self.options, self.records)
        self.hub = WsHub(self.options, self.records)
        # CardKit entities and card callbacks; `cardkit.refuse()` / `cardkit.stream_ttl`.
        self.cardkit = CardKitApi(self.options, self.records, stream_ttl=cardkit_stream_ttl)
        self.rest.cardkit = self.cardkit
        # Message resources and uploads (images, files): `media.push_image(...)`, `media.uploads`.
        self.media = SimMedia(self.options, self.records, self.push_message)
        self.rest.media = self.media
        # GET of a message; `reads.group_msg_scope = False` takes im:message.group_msg away.
        self.reads = MessageReads(self.options, self.records)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the `domain` for lark_oapi and the REST base URL."""
        if self.port is None:
            raise RuntimeError("simulator not started")
        return f"http://{self._host}:{self.port}"

    async def start(self) -> FeishuSimulator:
        if self._runner is not None:
            return self
        # 40 MB: file uploads may be 30 MB (the limit is checked by the handler, with its code).
        app = web.Application(middlewares=[self._middleware], client_max_size=40 * 1024 * 1024)
        app.add_routes(
            self.hub.routes()
            + self.rest.routes()
            + self.cardkit.routes()
            + self.media.routes()
            + self.reads.routes()
        )
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.hub.base_ws_url = f"ws://{self._host}:{self.port}"
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self.hub.close_all()
        await runner.cleanup()

    async def __aenter__(self) -> FeishuSimulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- records ----------------------------------------------------------------------------

    @property
    def messages(self) -> list[SentMessage]:
        """Messages the bot sent (create and reply), oldest first."""
        return self.records.messages

    @property
    def user_messages(self) -> dict[str, UserMessage]:
        """Messages pushed as users, by message_id."""
        return self.records.user_messages

    @property
    def reactions(self) -> list[Reaction]:
        """Every reaction added, live and removed (`Reaction.live`)."""
        return self.records.reactions

    @property
    def requests(self) -> RequestLog:
        """HTTP requests, oldest first; bounded (see `RequestLog`)."""
        return self.records.requests

    @property
    def acks(self) -> list[AckRecord]:
        return self.records.acks

    @property
    def deliveries(self) -> list[Delivery]:
        return self.records.deliveries

    @property
    def connection_log(self) -> list[ConnectionRecord]:
        """Every websocket connection ever opened, live or closed."""
        return self.records.connections

    @property
    def connections(self) -> int:
        """The number of live websocket connections."""
        return len(self.hub.live)

    @property
    def total_connections(self) -> int:
        return len(self.records.connections)

    @property
    def pings(self) -> int:
        """Client pings received on all connections (answered or not)."""
        return self.records.pings

    @property
    def revision(self) -> int:
        """Bumped on every record change."""
        return self.records.revision

    @staticmethod
    def message_text(msg: SentMessage | UserMessage) -> str:
        """Plain text of a text/post/interactive message (cards: markdown/div/plain_text)."""
        return message_text(msg)

    def message(self, message_id: str) -> SentMessage:
        found = self.records.find_message(message_id)
        if found is None:
            raise KeyError(message_id)
        return found

    def replies_to(self, message_id: str) -> list[SentMessage]:
        """The bot's replies to `message_id`, oldest first."""
        return [m for m in self.records.messages if m.reply_to == message_id]

    def live_reactions(self, message_id: str | None = None) -> list[Reaction]:
        return [
            r
            for r in self.records.reactions
            if r.live and (message_id is None or r.message_id == message_id)
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every record change)."""
        return await self.records.wait_for(predicate, timeout)

    # -- events -----------------------------------------------------------------------------

    async def push_message(
        self,
        *,
        chat_id: str | None = None,
        text: str | None = None,
        chat_type: str = "p2p",
        sender_open_id: str = "ou_sim_user",
        msg_type: str = "text",
        content: dict[str, Any] | None = None,
        mention_bot: bool = False,
        mentions: list[dict[str, Any]] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        thread_id: str | None = None,
        message_id: str | None = None,
        fragments: int = 1,
    ) -> str:
        """Push an im.message.receive_v1 event as if `sender_open_id` wrote in the chat.

        `chat_id` defaults to "oc_sim_p2p" (p2p) or "oc_sim_group" (group). For text and post,
        `text` builds the content; with `mention_bot` the text gets a leading "@_user_1 "
        placeholder and a mentions entry for the bot (key "@_user_1"); `mentions` are
        appended after it as given. `content` (a dict) replaces the built content. A message
        in a thread passes `root_id` (and `thread_id`); `parent_id` defaults to `root_id`.
        Returns the message_id; the event_id is ``user_messages[message_id].event_id``.
        """
        opts = self.options
        chat_id = chat_id or ("oc_sim_p2p" if chat_type == "p2p" else "oc_sim_group")
        message_id = message_id or envelopes.new_id("om_")
        all_mentions: list[dict[str, Any]] = []
        if mention_bot:
            all_mentions.append(
                bot_mention(
                    "@_user_1",
                    bot_open_id=opts.bot_open_id,
                    bot_name=opts.bot_name,
                    tenant_key=opts.tenant_key,
                )
            )
        all_mentions.extend(mentions or [])
        if content is None:
            content = _build_content(msg_type, text or "", mention_bot, opts.bot_name)
        parent_id = parent_id or root_id
        event = build_message_event(
            message_id=message_id,
            chat_id=chat_id,
            chat_type=chat_type,
            sender_open_id=sender_open_id,
            msg_type=msg_type,
            content=content,
            tenant_key=opts.tenant_key,
            mentions=all_mentions,
            root_id=root_id,
            parent_id=parent_id,
            thread_id=thread_id,
        )
        envelope = self._envelope(MESSAGE_RECEIVE, event)
        if chat_type == "p2p":
            self.records.p2p_chats.setdefault(sender_open_id, chat_id)
        self.records.user_messages[message_id] = UserMessage(
            message_id=message_id,
            event_id=envelope["header"]["event_id"],
            chat_id=chat_id,
            chat_type=chat_type,
            sender_open_id=sender_open_id,
            msg_type=msg_type,
            content=content,
            root_id=root_id,
            parent_id=parent_id,
            thread_id=thread_id,
            mentions=all_mentions,
        )
        await self.hub.push(envelope, fragments)
        return message_id

    async def recall(self, message_id: str) -> str:
        """The sender recalls a message pushed with `push_message`: it reads as deleted from
        now on, its reactions are gone, and an ``im.message.recalled_v1`` event is pushed.
        Returns the event_id."""
        msg = self.records.user_messages[message_id]
        msg.deleted = True
        for reaction in self.live_reactions(message_id):  # they go with the message
            reaction.removed_at = time.time()
        await self.records.changed()
        return await self.push_event(MESSAGE_RECALLED, build_recall_event(message_id, msg.chat_id))

    async def push_event(
        self,
        event_type: str,
        event: dict[str, Any],
        *,
        fragments: int = 1,
        event_id: str | None = None,
    ) -> str:
        """Push any v2 event (`event` is the body under "event"); returns the event_id.

        E.g. im.message.message_read_v1, im.message.reaction.created_v1 / deleted_v1,
        im.chat.member.bot.added_v1 / deleted_v1, im.chat.access_event.bot_p2p_chat_entered_v1.
        """
        envelope = self._envelope(event_type, event, event_id)
        await self.hub.push(envelope, fragments)
        return envelope["header"]["event_id"]

    async def push_menu(
        self, event_key: str, *, operator_open_id: str = "ou_sim_user", event_id: str | None = None
    ) -> str:
        """Push an ``application.bot.menu_v6`` event: `operator_open_id` clicked the bot's
        custom menu item `event_key`. Returns the event_id (`redeliver` pushes it again)."""
        event = build_menu_event(operator_open_id=operator_open_id, event_key=event_key)
        return await self.push_event(BOT_MENU, event, event_id=event_id)

    async def redeliver(self, event_id: str, *, fragments: int | None = None) -> Delivery:
        """Push the identical envelope again (same event_id and message_id), as Feishu does
        for an event that was not acked in time. The frame gets a new frame message id."""
        last = self._last_delivery(event_id)
        return await self.hub.push(last.envelope, fragments or last.fragments)

    async def wait_ack(self, event_id: str, timeout: float = 10) -> AckRecord:
        """The ack of the latest delivery of `event_id` (a message_id is accepted too)."""
        user_msg = self.records.user_messages.get(event_id)
        if user_msg is not None:
            event_id = user_msg.event_id
        delivery = self._last_delivery(event_id)
        return await self.wait_for(
            lambda: next(
                (a for a in self.records.acks if a.frame_message_id == delivery.frame_message_id),
                None,
            ),
            timeout,
        )

    async def wait_connected(self, n: int = 1, timeout: float = 10) -> None:
        """Wait until at least `n` websocket connections are live."""
        await self.wait_for(lambda: self.connections >= n, timeout)

    async def drop_connections(self) -> int:
        """Cut every live connection abruptly (TCP abort); returns how many were cut."""
        return await self.hub.drop_connections()

    async def stall_connections(self) -> int:
        """Stop answering pings (and pushing events) on every live connection, keep it open."""
        return await self.hub.stall_connections()

    def configure_client(
        self,
        *,
        ping_interval: float | None = None,
        reconnect_interval: float | None = None,
        reconnect_nonce: float | None = None,
        reconnect_count: int | None = None,
    ) -> None:
        """Change the ClientConfig sent in later discovery answers and pongs."""
        cfg = self.hub.client_config
        for key, value in (
            ("PingInterval", ping_interval),
            ("ReconnectInterval", reconnect_interval),
            ("ReconnectNonce", reconnect_nonce),
            ("ReconnectCount", reconnect_count),
        ):
            if value is not None:
                cfg[key] = value

    # -- cards (CardKit entities and callbacks) ---------------------------------------------

    def rendered_card(self, message_id: str) -> dict[str, Any]:
        """The card a message shows now (a CardKit entity's current JSON, or its content)."""
        return self.message(message_id).rendered

    async def push_card_action(
        self,
        message_id: str,
        value: Any,
        *,
        operator_open_id: str = "ou_sim_user",
        tag: str = "button",
        timeout: float = 10,
    ) -> CardAction:
        """Push a card.action.trigger for `message_id` carrying `value` (forged or not) and
        wait for the bot's answer on the ack; `CardAction.error` says what Feishu would show."""
        msg = self.records.find_message(message_id)
        chat_id = msg.chat_id if msg is not None else "oc_unknown"
        return await self.cardkit.push_card_action(
            self.hub,
            message_id=message_id,
            value=value,
            operator_open_id=operator_open_id,
            chat_id=chat_id,
            tag=tag,
            timeout=timeout,
        )

    async def click(
        self,
        message_id: str,
        button: str,
        *,
        operator_open_id: str = "ou_sim_user",
        timeout: float = 10,
    ) -> CardAction:
        """Click the button labelled `button` on the card `message_id` shows now."""
        value = find_button(self.rendered_card(message_id), button)
        if value is None:
            raise KeyError(f"no button {button!r} on message {message_id}")
        return await self.push_card_action(
            message_id, value, operator_open_id=operator_open_id, timeout=timeout
        )

    @property
    def card_actions(self) -> list[CardAction]:
        return self.records.card_actions

    # -- REST faults ------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 500,
        code: int | None = None,
        count: int = 1,
        headers: dict[str, str] | None = None,
        body: str | bytes | None = None,
    ) -> FaultRule:
        """Answer the next `count` matching HTTP requests with a failure (see `FaultRule`).

        E.g. ``fail_next("POST", r"/reply$", status=429, headers={"x-ogw-ratelimit-reset":
        "1"})`` or ``fail_next("PATCH", "/messages/", status=500, body="upstream error")``.
        """
        return self.faults.add(
            FaultRule(
                method=method,
                path_regex=path_regex,
                status=status,
                code=code,
                remaining=count,
                headers=dict(headers or {}),
                body=body,
            )
        )

    def expire_tokens(self) -> None:
        """Every issued tenant token becomes invalid (99991663) until a new one is fetched."""
        self.rest.expire_tokens()

    # -- internals --------------------------------------------------------------------------

    def _envelope(
        self, event_type: str, event: dict[str, Any], event_id: str | None = None
    ) -> dict[str, Any]:
        opts = self.options
        return build_envelope(
            event_type,
            event,
            app_id=opts.app_id,
            tenant_key=opts.tenant_key,
            token=opts.verification_token,
            event_id=event_id,
        )

    def _last_delivery(self, event_id: str) -> Delivery:
        for delivery in reversed(self.records.deliveries):
            if delivery.event_id == event_id:
                return delivery
        raise KeyError(f"no event {event_id!r} was pushed")

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path == WS_PATH:
            return await handler(request)
        raw = b""
        rule = self.faults.take(request.method, request.path)
        if rule is not None:
            raw = await request.read() if request.can_read_body else b""
            status, payload, content_type, headers = rule.render()
            response: web.StreamResponse = web.Response(
                status=status, body=payload, content_type=content_type, headers=headers
            )
        else:
            denied = None
            if request.path.startswith("/open-apis/") and request.path != TOKEN_PATH:
                denied = self.rest.auth_error(request)
            # A call without a valid token is answered unread: whoever has no token cannot
            # make the simulator read, parse or keep up to client_max_size of anything.
            if denied is None and request.can_read_body:
                raw = await request.read()
            try:
                response = denied or await handler(request)
            except web.HTTPException as exc:
                response = error_response(exc.status, exc.status, exc.reason)
        code = None
        if isinstance(response, web.Response) and response.content_type == "application/json":
            try:
                code = json.loads(response.body or b"null").get("code")
            except (ValueError, AttributeError, TypeError):
                code = None
        self.records.requests.add(
            request.method, request.path, dict(request.query), response.status, code, raw
        )
        await self.records.changed()
        return response


def _build_content(msg_type: str, text: str, mention_bot: bool, bot_name: str) -> dict[str, Any]:
    if msg_type == "text":
        return {"text": f"@_user_1 {text}" if mention_bot else text}
    if msg_type == "post":
        paragraph: list[dict[str, Any]] = []
        if mention_bot:
            paragraph.append({"tag": "at", "user_id": "@_user_1", "user_name": bot_name})
        paragraph.append({"tag": "text", "text": text})
        return {"title": "", "content": [paragraph]}
    if msg_type == "image":
        return {"image_key": envelopes.new_id("img_v3_", 12)}
    if msg_type in ("file", "audio", "media", "sticker"):
        return {"file_key": envelopes.new_id("file_v3_", 12)}
    return {}
