"""The context of a reply: the message a user's message quotes, given to Claude before it.

When a message replies to another one (its `parent_id`; in a topic, a reply to anything but the
topic's root), the turn fetches that message (`GET /open-apis/im/v1/messages/{id}` with
``card_msg_content_type=user_card_content``, so the bot's own CardKit cards come back as their
content) and puts its text, at most `QUOTE_CHARS` characters and marked as the quoted message,
before the user's words. A file is named by its name, an image or a video by its kind.

Reading other people's messages in a group needs the sensitive scope ``im:message.group_msg``.
Without it (Feishu answers 230027) or on any other failure, the user is told in one line that
the quoted message could not be read, and the turn goes on without it. It never fails a turn.

The text extraction (`quoted_text`) is pure; `with_quote` does the one request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, Protocol

from loguru import logger

from feishu_bot.errors import FeishuApiError

if TYPE_CHECKING:
    from feishu_bot.events import InboundMessage
    from feishu_bot.feishu.replier import FeishuReplier

__all__ = [
    "MISSING_SCOPE",
    "QUOTE_CHARS",
    "QuoteServices",
    "compose",
    "quoted_text",
    "unreadable",
    "with_quote",
]


class QuoteServices(Protocol):
    """What `with_quote` uses (the chat runner has it)."""

    @property
    def replier(self) -> FeishuReplier: ...

QUOTE_CHARS: Final = 3000
MISSING_SCOPE: Final = 230027  # "Lack of necessary permissions"
_KIND_WORDS: Final = {
    "image": "an image",
    "audio": "a voice message",
    "sticker": "a sticker",
    "merge_forward": "forwarded messages",
    "share_chat": "a shared chat",
    "share_user": "a shared contact",
    "location": "a location",
}
_SKIP_TAGS: Final = frozenset({"button", "select_static", "overflow", "date_picker", "input"})


def quoted_text(item: dict[str, Any], limit: int = QUOTE_CHARS) -> str:
    """The readable text of one message of a GET message answer (``data.items[0]``)."""
    if item.get("deleted"):
        return "(the quoted message was recalled)"
    msg_type = str(item.get("msg_type") or "")
    body = item.get("body") if isinstance(item.get("body"), dict) else {}
    try:
        content = json.loads(body.get("content") or "{}")
    except (TypeError, ValueError):
        content = {}
    if not isinstance(content, dict):
        content = {}
    if msg_type == "text":
        text = _mentions(str(content.get("text") or ""), item.get("mentions"))
    elif msg_type == "post":
        text = _mentions(_post(content), item.get("mentions"))
    elif msg_type == "interactive":
        lines: list[str] = []
        _card(content, lines)
        text = "\n".join(line for line in lines if line.strip()) or "(a card without text)"
    elif msg_type in ("file", "media"):
        name = str(content.get("file_name") or "")
        kind = "file" if msg_type == "file" else "video"
        text = f"[a {kind}{f' named “{name}”' if name else ''}]"
    else:
        kind = _KIND_WORDS.get(msg_type) or (f"a {msg_type} message" if msg_type else "a message")
        text = f"[{kind}]"
    text = text.strip()
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters not shown)"
    return text


def compose(quote: str, who: str, prompt: str) -> str:
    """The turn's prompt: the quoted message, marked as such, then the user's own words."""
    quoted = "\n".join(f"> {line}" for line in quote.splitlines() or [""])
    head = f"[Quoted message — the user is replying to this message from {who}:]"
    return f"{head}\n{quoted}\n\n{prompt}"


def unreadable(exc: BaseException) -> str:
    """The one line the user reads when the quoted message could not be fetched."""
    if isinstance(exc, FeishuApiError) and exc.code == MISSING_SCOPE:
        why = "the app lacks the Feishu scope im:message.group_msg"
    elif isinstance(exc, FeishuApiError) and exc.code:
        why = f"Feishu answered code {exc.code}"
    else:
        why = "Feishu could not be asked"
    return f"I could not read the message you replied to ({why}), so Claude answers without it."


async def with_quote(ctx: QuoteServices, msg: InboundMessage, prompt: str) -> str:
    """`prompt` with the quoted message before it, when `msg` quotes one (see the module)."""
    if not msg.parent_id:
        return prompt
    try:
        item = await ctx.replier.get_message(msg.parent_id)
    except Exception as exc:
        logger.warning("could not read the quoted message {}: {!r}", msg.parent_id, exc)
        try:
            await ctx.replier.reply_text(msg.message_id, unreadable(exc), in_thread=msg.in_thread)
        except Exception:
            logger.exception("could not say that the quoted message is unreadable")
        note = "[The user replied to an earlier message that the bot could not read.]"
        return f"{note}\n\n{prompt}"
    return compose(quoted_text(item), _who(item, msg.sender_open_id), prompt)


def _who(item: dict[str, Any], sender_open_id: str) -> str:
    sender = item.get("sender") if isinstance(item.get("sender"), dict) else {}
    if sender.get("sender_type") == "app":
        return "the bot (an earlier answer)"
    if sender_open_id and sender.get("id") == sender_open_id:
        return "the user themselves"
    return "another member of the chat"


def _mentions(text: str, mentions: Any) -> str:
    for mention in mentions if isinstance(mentions, list) else []:
        if isinstance(mention, dict) and isinstance(mention.get("key"), str):
            text = text.replace(mention["key"], f"@{mention.get('name') or 'someone'}")
    return text


def _post(content: dict[str, Any]) -> str:
    body: Any = content.get("post", content)
    if isinstance(body, dict) and "content" not in body:  # keyed by locale
        body = next((v for v in body.values() if isinstance(v, dict)), {})
    lines = [str(body.get("title"))] if isinstance(body, dict) and body.get("title") else []
    paragraphs = body.get("content") if isinstance(body, dict) else None
    for paragraph in paragraphs if isinstance(paragraphs, list) else []:
        parts = []
        for el in paragraph if isinstance(paragraph, list) else []:
            if not isinstance(el, dict):
                continue
            tag = el.get("tag")
            if tag in ("text", "a", "md", "code_block"):
                parts.append(str(el.get("text") or el.get("href") or ""))
            elif tag == "at":
                parts.append("@" + str(el.get("user_name") or el.get("user_id") or ""))
            elif tag in ("img", "media"):
                parts.append("[image]" if tag == "img" else "[video]")
        lines.append("".join(parts))
    return "\n".join(lines)


def _card(node: Any, lines: list[str]) -> None:
    """Texts of a card in reading order (Card JSON 1.0 and 2.0, or the simplified form Feishu
    returns for cards), leaving out what buttons and inputs say."""
    if isinstance(node, list):
        for child in node:
            _card(child, lines)
        return
    if not isinstance(node, dict) or node.get("tag") in _SKIP_TAGS:
        return
    tag = node.get("tag")
    if tag in ("markdown", "lark_md", "plain_text") and isinstance(node.get("content"), str):
        lines.append(node["content"])
        return
    if tag in ("text", "a", "md") and isinstance(node.get("text"), str):
        lines.append(node["text"])
        return
    if isinstance(node.get("json_card"), str):  # a card delivered as a JSON string
        try:
            _card(json.loads(node["json_card"]), lines)
        except ValueError:
            pass
        return
    for key, value in node.items():
        if key not in ("behaviors", "value", "config") and isinstance(value, dict | list):
            _card(value, lines)
