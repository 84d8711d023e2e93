"""What the simulator saw and did, as plain dataclasses, plus the change notification.

Records are appended/mutated only on the simulator's event loop. Every change goes through
`Records.changed()`, which bumps `revision` and wakes everything waiting in `wait_for`, so
tests wait on state instead of sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .request_log import RequestLog, RequestRecord

__all__ = [
    "AckRecord",
    "ConnectionRecord",
    "Delivery",
    "Reaction",
    "Records",
    "RequestRecord",
    "SentMessage",
    "UserMessage",
    "card_text",
    "content_text",
    "message_text",
    "post_text",
]


@dataclass(slots=True)
class SentMessage:
    """A message the bot created through REST (create or reply).

    `content` is the latest version; `versions[0]` is the content as sent and every successful
    PATCH appends one more (with its time in `version_times`). `reply_to` is the parent message
    id for replies, None for messages created with POST /messages.
    """

    message_id: str
    chat_id: str
    msg_type: str
    content: dict[str, Any]
    reply_to: str | None = None
    reply_in_thread: bool = False
    root_id: str | None = None
    thread_id: str | None = None
    uuid: str | None = None
    created_at: float = field(default_factory=time.time)
    versions: list[dict[str, Any]] = field(default_factory=list)
    version_times: list[float] = field(default_factory=list)
    deleted: bool = False
    card_entity: Any = None  # the CardKit entity a {"type": "card"} content shows

    @property
    def text(self) -> str:
        return message_text(self)

    @property
    def rendered(self) -> dict[str, Any]:
        """The content as the user sees it now (a CardKit entity's current card JSON)."""
        return self.card_entity.card if self.card_entity is not None else self.content

    @property
    def updated(self) -> bool:
        return len(self.versions) > 1


@dataclass(slots=True)
class UserMessage:
    """A message pushed to the bot as an im.message.receive_v1 event (a user's message)."""

    message_id: str
    event_id: str
    chat_id: str
    chat_type: str
    sender_open_id: str
    msg_type: str
    content: dict[str, Any]
    root_id: str | None = None
    parent_id: str | None = None
    thread_id: str | None = None
    created_at: float = field(default_factory=time.time)
    deleted: bool = False  # recalled (`FeishuSimulator.recall`)
    mentions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Reaction:
    """An emoji reaction added through REST; `removed_at` is set once it is deleted."""

    reaction_id: str
    message_id: str
    emoji_type: str
    operator_id: str
    operator_type: str = "app"
    created_at: float = field(default_factory=time.time)
    removed_at: float | None = None

    @property
    def live(self) -> bool:
        return self.removed_at is None


@dataclass(slots=True)
class Delivery:
    """One push of one event envelope over one connection (a redelivery is a new Delivery)."""

    event_id: str
    frame_message_id: str
    envelope: dict[str, Any]
    fragments: int
    conn_id: str | None = None
    sent_at: float | None = None  # time.monotonic() of the last fragment written
    acked: bool = False


@dataclass(slots=True)
class AckRecord:
    """The client's answer to one Delivery: the data frame it sent back.

    `code` is the ``code`` of the ack payload (200 when the SDK handler returned, 500 when it
    raised or the event type had no handler); `latency_s` runs from the last fragment written
    to the ack read; `biz_rt_ms` is the handler time the SDK reported in its ``biz_rt`` header.
    """

    event_id: str
    code: int | None
    latency_s: float
    frame_message_id: str
    conn_id: str
    biz_rt_ms: int | None = None
    payload: Any = None
    at: float = field(default_factory=time.time)

    @property
    def data(self) -> Any:
        """The ack's ``data`` decoded (base64 of JSON: a card callback's answer), else None."""
        raw = self.payload.get("data") if isinstance(self.payload, dict) else None
        if not raw:
            return None
        try:
            return json.loads(base64.b64decode(raw))
        except ValueError:
            return raw


@dataclass(slots=True)
class ConnectionRecord:
    """One websocket connection; `closed_at` is set when it ends (either side)."""

    conn_id: str
    service_id: int
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    pings: int = 0
    pongs: int = 0
    stalled: bool = False
    dropped: bool = False

    @property
    def live(self) -> bool:
        return self.closed_at is None


class Records:
    """All records plus one asyncio.Condition notified on every change."""

    def __init__(self, requests: RequestLog | None = None) -> None:
        self.messages: list[SentMessage] = []
        self.user_messages: dict[str, UserMessage] = {}
        self.p2p_chats: dict[str, str] = {}  # user open_id -> the bot's p2p chat with them
        self.bot_chats: set[str] = set()  # groups the bot was added to (is_in_chat)
        self.reactions: list[Reaction] = []
        self.requests = requests if requests is not None else RequestLog()
        self.deliveries: list[Delivery] = []
        self.acks: list[AckRecord] = []
        self.connections: list[ConnectionRecord] = []
        # CardKit (simulator/cardkit.py): entities by card_id, and pushed card callbacks.
        self.cards: dict[str, Any] = {}
        self.card_actions: list[Any] = []
        self.pings = 0
        self.revision = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def changed(self) -> None:
        """Call after every mutation: bumps `revision` and wakes the waiters."""
        self.revision += 1
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:
        """Wait until `predicate()` is truthy and return its value; TimeoutError otherwise.

        The predicate is re-evaluated after each change, never on a timer.
        """
        cond = self._condition()
        result: Any = None

        def check() -> bool:
            nonlocal result
            result = predicate()
            return bool(result)

        async with cond:
            try:
                # asyncio.timeout rather than wait_for: 3.11's wait_for can swallow a
                # cancellation that races with the condition being met.
                async with asyncio.timeout(timeout):
                    await cond.wait_for(check)
            except TimeoutError:
                raise TimeoutError(
                    f"simulator: condition not met within {timeout}s (revision {self.revision})"
                ) from None
        return result

    def find_message(self, message_id: str) -> SentMessage | None:
        for msg in self.messages:
            if msg.message_id == message_id:
                return msg
        return None


# -- plain text of message contents (pure) --------------------------------------------------


def message_text(msg: SentMessage | UserMessage) -> str:
    """The plain text of a message's latest content (see `content_text`)."""
    if isinstance(msg, SentMessage):
        return content_text(msg.msg_type, msg.rendered)
    return content_text(msg.msg_type, msg.content)


def content_text(msg_type: str, content: dict[str, Any] | str) -> str:
    """Plain text of a text / post / interactive content; "" for other types.

    Cards: the text of markdown, div (text and fields), plain_text/lark_md and note elements,
    recursively through columns and panels, one element per line. The card header is left
    out. Both Card JSON 1.0 (`elements`) and 2.0 (`body.elements`) are read.
    """
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except ValueError:
            return content
    if not isinstance(content, dict):
        return ""
    if msg_type == "text":
        return str(content.get("text", ""))
    if msg_type == "post":
        return post_text(content)
    if msg_type == "interactive":
        return card_text(content)
    return ""


def post_text(content: dict[str, Any]) -> str:
    """Plain text of a post: the first locale found, title first, one paragraph per line."""
    body: Any = content
    if "post" in body and isinstance(body["post"], dict):
        body = body["post"]
    if "content" not in body:
        # Sent posts are keyed by locale ({"zh_cn": {...}}); received ones are not.
        body = next((v for v in body.values() if isinstance(v, dict) and "content" in v), {})
    lines: list[str] = []
    if body.get("title"):
        lines.append(str(body["title"]))
    for paragraph in body.get("content") or []:
        parts: list[str] = []
        for el in paragraph or []:
            if not isinstance(el, dict):
                continue
            tag = el.get("tag")
            if tag in ("text", "a", "md", "code_block"):
                parts.append(str(el.get("text", "")))
            elif tag == "at":
                parts.append("@" + str(el.get("user_name") or el.get("user_id") or ""))
        lines.append("".join(parts))
    return "\n".join(lines)


def card_text(card: dict[str, Any]) -> str:
    """Plain text of a card's body (see `content_text`)."""
    if card.get("type") == "template":
        return ""
    elements = card.get("elements")
    if elements is None and isinstance(card.get("body"), dict):
        elements = card["body"].get("elements")
    if elements is None and isinstance(card.get("i18n_elements"), dict):
        elements = next(iter(card["i18n_elements"].values()), [])
    lines: list[str] = []
    _collect_card_text(elements or [], lines)
    return "\n".join(lines)


def _text_of(obj: Any) -> str | None:
    if isinstance(obj, dict) and obj.get("tag") in ("plain_text", "lark_md"):
        return str(obj.get("content", ""))
    return None


def _collect_card_text(elements: list[Any], lines: list[str]) -> None:
    for el in elements:
        if not isinstance(el, dict):
            continue
        tag = el.get("tag")
        if tag in ("markdown", "plain_text", "lark_md"):
            lines.append(str(el.get("content", "")))
        elif tag == "div":
            text = _text_of(el.get("text"))
            if text is not None:
                lines.append(text)
            for f in el.get("fields") or []:
                text = _text_of(f.get("text") if isinstance(f, dict) else None)
                if text is not None:
                    lines.append(text)
        elif tag == "note":
            _collect_card_text(el.get("elements") or [], lines)
        elif tag == "column_set":
            for col in el.get("columns") or []:
                if isinstance(col, dict):
                    _collect_card_text(col.get("elements") or [], lines)
        elif tag in ("collapsible_panel", "form", "interactive_container", "column"):
            _collect_card_text(el.get("elements") or [], lines)
