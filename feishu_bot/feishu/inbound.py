"""Turn a raw `im.message.receive_v1` event envelope into an `InboundMessage` (pure).

The envelope is the Feishu v2 event JSON as a dict (what the gateway hands to `on_event`).
This module does no I/O and raises exactly one exception type, `MalformedEvent`, for input it
cannot make sense of; unsupported message kinds (image, file, sticker, …) are *not* errors:
they come back with `text=None` so the caller can answer "I only read text".

It does not decide whether to answer (groups need an @mention; that is the caller's rule using
`mentioned_bot`), and it does not dedupe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from feishu_bot.events import Attachment, InboundMessage

__all__ = [
    "MEDIA_TYPES",
    "SUPPORTED_TYPES",
    "MalformedEvent",
    "event_message_id",
    "event_type",
    "parse_message_event",
]

SUPPORTED_TYPES = frozenset({"text", "post"})
# Messages that are one resource and no text: parsed into `attachments` (text stays None).
MEDIA_TYPES = frozenset({"image", "file", "audio", "media", "sticker"})

# Preferred locale order when a post carries several translations.
_LOCALES = ("zh_cn", "en_us", "ja_jp")
_REASON_MAX = 300
# Valid JSON may escape a lone surrogate ("\ud800"); no UTF-8 encoder (SQLite, the CLI's
# stdin, Feishu requests) accepts one. Ids with one are malformed; text gets U+FFFD.
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = 2**63


class MalformedEvent(ValueError):
    """The envelope is not a well-formed message event; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        # The reason is logged: input of any size must not make it large.
        if len(reason) > _REASON_MAX:
            reason = reason[: _REASON_MAX - 1] + "…"
        super().__init__(reason)
        self.reason = reason


def event_type(envelope: object) -> str | None:
    """The event type ("im.message.receive_v1", …) of a v2 (or v1) envelope; None if absent."""
    if not isinstance(envelope, Mapping):
        return None
    header = envelope.get("header")
    if isinstance(header, Mapping) and isinstance(header.get("event_type"), str):
        return header["event_type"]
    event = envelope.get("event")  # schema 1.0 puts the type inside the event
    if isinstance(event, Mapping) and isinstance(event.get("type"), str):
        return event["type"]
    return None


def event_message_id(envelope: object) -> str | None:
    """`event.message.message_id` when present and a non-empty string; never raises."""
    if not isinstance(envelope, Mapping):
        return None
    event = envelope.get("event")
    message = event.get("message") if isinstance(event, Mapping) else None
    mid = message.get("message_id") if isinstance(message, Mapping) else None
    return mid if isinstance(mid, str) and mid else None


def parse_message_event(envelope: dict[str, Any], bot_open_id: str) -> InboundMessage:
    """Parse one message event.

    - text: the text with `@_user_N` placeholders replaced by "@Name"; the bot's own mention
      is removed and reported as `mentioned_bot=True`; stripped.
    - post: title first, then one line per paragraph; links kept as "text (href)"; code blocks
      as fenced blocks; images as "[image]".
    - image, file, audio, media (video), sticker: `text=None`, the resource in `attachments`
      (none when the content lacks its key); a post's `img`/`media` elements are also listed
      in `attachments`, in reading order, while its text keeps an "[image]" placeholder.
    - anything else: `text=None`, `msg_type` set; its content is not inspected.
    - `thread_root` is set only for messages in a thread/topic (`thread_id` present): the
      `root_id`, or the message's own id when it is the topic's first message.
    - `parent_id` is the message this one replies to (quotes), except a topic's own root.

    Raises MalformedEvent (and nothing else) for missing fields, wrong types or content that is
    not a JSON object.
    """
    try:
        return _parse(envelope, bot_open_id)
    except MalformedEvent:
        raise
    except Exception as exc:  # defensive: promise a single exception type to the gateway
        raise MalformedEvent(f"unexpected {type(exc).__name__}: {exc}") from exc


def _parse(envelope: Any, bot_open_id: str) -> InboundMessage:
    if not isinstance(envelope, Mapping):
        raise MalformedEvent(f"envelope is {type(envelope).__name__}, not an object")
    event = _obj(envelope, "event", "envelope")
    message = _obj(event, "message", "event")
    sender = _obj(event, "sender", "event")
    sender_id = _obj(sender, "sender_id", "event.sender")
    sender_open_id = _str(sender_id, "open_id", "event.sender.sender_id")

    message_id = _str(message, "message_id", "event.message")
    chat_id = _str(message, "chat_id", "event.message")
    chat_type = _str(message, "chat_type", "event.message")
    msg_type = _str(message, "message_type", "event.message")
    content_raw = message.get("content")
    if not isinstance(content_raw, str):
        raise MalformedEvent("event.message.content is missing or not a string")

    create_time_ms = _create_time(message.get("create_time"))
    thread_id = _opt_str(message, "thread_id")
    root_id = _opt_str(message, "root_id")
    thread_root = (root_id or message_id) if thread_id else None
    # A reply quotes its parent; in a topic the parent is often just the topic's root, which
    # is the start of this conversation rather than a quote.
    parent_id = _opt_str(message, "parent_id")
    if parent_id == message_id or (thread_id and parent_id == thread_root):
        parent_id = None

    mentions = _mentions(message.get("mentions"))
    mentioned_bot = bool(bot_open_id) and any(m[1] == bot_open_id for m in mentions)

    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    if msg_type in SUPPORTED_TYPES:
        content = _content(content_raw)
        raw = _text_of(content) if msg_type == "text" else _post_text(content)
        text = _clean(_replace_mentions(raw, mentions, bot_open_id).strip())
        if msg_type == "post":
            attachments = _post_attachments(content)
    elif msg_type in MEDIA_TYPES:
        attachments = _media_attachments(msg_type, content_raw)

    return InboundMessage(
        message_id=message_id,
        chat_id=chat_id,
        chat_type=chat_type,
        sender_open_id=sender_open_id,
        msg_type=msg_type,
        text=text,
        mentioned_bot=mentioned_bot,
        thread_root=thread_root,
        create_time_ms=create_time_ms,
        attachments=attachments,
        parent_id=parent_id,
    )


# -- field helpers ---------------------------------------------------------------------------


def _obj(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, Mapping):
        state = "missing" if value is None else f"a {type(value).__name__}"
        raise MalformedEvent(f"{where}.{key} is {state}, not an object")
    return value


def _str(parent: Mapping[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        state = "missing" if value is None else "empty" if value == "" else _kind(value)
        raise MalformedEvent(f"{where}.{key} is {state}, not a non-empty string")
    if _SURROGATE.search(value):
        raise MalformedEvent(f"{where}.{key} is not valid Unicode (a lone surrogate)")
    return value


def _opt_str(parent: Mapping[str, Any], key: str) -> str | None:
    value = parent.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"event.message.{key} is a {type(value).__name__}, not a string")
    if _SURROGATE.search(value):
        raise MalformedEvent(f"event.message.{key} is not valid Unicode (a lone surrogate)")
    return value


def _create_time(value: object) -> int:
    # Events carry milliseconds as a string; the SDK model says int. Accept both.
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise MalformedEvent("event.message.create_time is a bool")
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip()) if len(value.strip()) <= 19 else _INT64
    if isinstance(value, int):
        if 0 <= value < _INT64:  # SQLite's INTEGER; a time before 1970 is no real message
            return value
        raise MalformedEvent("event.message.create_time is out of range")
    raise MalformedEvent(f"event.message.create_time {_kind(value)} is not an integer")


def _kind(value: object) -> str:
    """A short description of a bad value for a reason (never the repr of something huge)."""
    if isinstance(value, str):
        return repr(value[:40] + "…") if len(value) > 40 else repr(value)
    if isinstance(value, int | float) and abs(value) < 1e18:
        return str(value)
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _clean(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def _mentions(value: object) -> list[tuple[str, str, str]]:
    """(key, open_id, name) for each mention; open_id may be "" (e.g. @all)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedEvent("event.message.mentions is not a list")
    out: list[tuple[str, str, str]] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise MalformedEvent(f"event.message.mentions[{i}] is not an object")
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise MalformedEvent(f"event.message.mentions[{i}].key is missing")
        ident = item.get("id")
        open_id = ident.get("open_id") if isinstance(ident, Mapping) else None
        name = item.get("name")
        out.append(
            (
                key,
                open_id if isinstance(open_id, str) else "",
                name if isinstance(name, str) else "",
            )
        )
    return out


def _content(raw: str) -> Mapping[str, Any]:
    try:
        content = json.loads(raw)
    except ValueError as exc:
        raise MalformedEvent(f"event.message.content is not JSON: {exc}") from None
    if not isinstance(content, Mapping):
        raise MalformedEvent(
            f"event.message.content is a JSON {type(content).__name__}, not an object"
        )
    return content


def _text_of(content: Mapping[str, Any]) -> str:
    text = content.get("text")
    if not isinstance(text, str):
        raise MalformedEvent("text content has no string 'text' field")
    return text


# -- post (rich text) ------------------------------------------------------------------------


def _post_body(content: Mapping[str, Any]) -> Mapping[str, Any]:
    if "content" in content or "title" in content:
        return content
    for locale in _LOCALES:
        body = content.get(locale)
        if isinstance(body, Mapping):
            return body
    for body in content.values():
        if isinstance(body, Mapping):
            return body
    raise MalformedEvent("post content has neither 'content' nor a locale object")


def _post_text(content: Mapping[str, Any]) -> str:
    body = _post_body(content)
    title = body.get("title") or ""
    paragraphs = body.get("content") or []
    if not isinstance(title, str):
        raise MalformedEvent("post title is not a string")
    if not isinstance(paragraphs, list):
        raise MalformedEvent("post content is not a list of paragraphs")
    lines: list[str] = []
    if title.strip():
        lines.append(title.strip())
    for p, paragraph in enumerate(paragraphs):
        if not isinstance(paragraph, list):
            raise MalformedEvent(f"post paragraph {p} is not a list")
        parts = []
        for e, element in enumerate(paragraph):
            if not isinstance(element, Mapping):
                raise MalformedEvent(f"post paragraph {p} element {e} is not an object")
            parts.append(_post_element(element))
        lines.append("".join(parts))
    return "\n".join(lines)


def _s(element: Mapping[str, Any], key: str) -> str:
    value = element.get(key)
    return _clean(value) if isinstance(value, str) else ""


def _post_element(element: Mapping[str, Any]) -> str:
    tag = element.get("tag")
    if tag in ("text", "md"):
        return _s(element, "text")
    if tag == "a":
        text, href = _s(element, "text"), _s(element, "href")
        if not href:
            return text
        if not text or text == href:
            return href
        return f"{text} ({href})"
    if tag == "at":
        user_id = _s(element, "user_id")
        if user_id.startswith("@_"):
            return user_id  # a placeholder, resolved with the mentions list
        name = _s(element, "user_name") or user_id
        return f"@{name}" if name else ""
    if tag == "code_block":
        lang = _s(element, "language").lower()
        code = _s(element, "text")
        if not code.endswith("\n"):
            code += "\n"
        return f"\n```{lang}\n{code}```\n"
    if tag == "img":
        return "[image]"
    if tag == "media":
        return "[video]"
    if tag == "emotion":
        emoji = _s(element, "emoji_type")
        return f":{emoji}:" if emoji else ""
    if tag == "hr":
        return "\n---\n"
    return _s(element, "text")


# -- resources (images, files, audio, video, stickers) ---------------------------------------


def _media_attachments(msg_type: str, content_raw: str) -> tuple[Attachment, ...]:
    """image: {"image_key"}; file: {"file_key","file_name"}; audio: {"file_key","duration"};
    media (video): {"file_key","image_key","file_name","duration"}; sticker: {"file_key"}.

    Content without its key gives no attachment (the caller then treats the message as
    unsupported) rather than MalformedEvent: the envelope itself is fine.
    """
    try:
        content = json.loads(content_raw)
    except ValueError:
        return ()
    if not isinstance(content, Mapping):
        return ()
    key = _s(content, "image_key" if msg_type == "image" else "file_key")
    if not key:
        return ()
    size = content.get("file_size", content.get("size"))
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        size = None
    return (Attachment(msg_type, key, name=_s(content, "file_name"), size=size),)


def _post_attachments(content: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The post's images (and videos) in reading order; elements without a key are skipped."""
    found: list[Attachment] = []
    for paragraph in _post_body(content).get("content") or []:
        for element in paragraph if isinstance(paragraph, list) else []:
            if not isinstance(element, Mapping):
                continue
            tag = element.get("tag")
            if tag == "img" and _s(element, "image_key"):
                found.append(Attachment("image", _s(element, "image_key")))
            elif tag == "media" and _s(element, "file_key"):
                found.append(Attachment("media", _s(element, "file_key")))
    return tuple(found)


def _replace_mentions(text: str, mentions: list[tuple[str, str, str]], bot_open_id: str) -> str:
    if not mentions and "@_all" not in text:
        return text
    table: dict[str, str] = {"@_all": "@all"}
    for key, open_id, name in mentions:
        if bot_open_id and open_id == bot_open_id:
            table[key] = ""
        else:
            table[key] = f"@{name}" if name else ("@all" if key == "@_all" else key)
    # Longest keys first so "@_user_1" never eats the front of "@_user_10"; the bot's own
    # mention also takes one following space with it (and nothing else: indentation in code
    # the user pasted must survive).
    keys = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    pattern = re.compile(f"({keys})(?![0-9])( ?)")

    def sub(match: re.Match[str]) -> str:
        replacement = table[match.group(1)]
        return replacement + match.group(2) if replacement else ""

    return pattern.sub(sub, text)
