"""Feishu event envelopes (schema 2.0) and identifiers, built the way the platform sends them.

Field names and nesting follow the SDK models (``lark_oapi/event/context.py`` for the header,
``lark_oapi/api/im/v1/model/p2_im_message_receive_v1.py``, ``event_message.py``,
``event_sender.py``, ``mention_event.py``, ``user_id.py`` for the message event). As on the
wire, timestamps are strings of epoch milliseconds and ``message.content`` is a JSON *string*.

Pure functions only.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

__all__ = [
    "BOT_MENU",
    "MESSAGE_RECEIVE",
    "bot_mention",
    "build_envelope",
    "build_menu_event",
    "build_message_event",
    "new_id",
    "now_ms",
    "user_ids",
]

MESSAGE_RECEIVE = "im.message.receive_v1"
BOT_MENU = "application.bot.menu_v6"


def new_id(prefix: str = "", nbytes: int = 16) -> str:
    """A random id in Feishu's style: ``om_`` + 32 hex for messages, ``oc_`` for chats, ..."""
    return prefix + secrets.token_hex(nbytes)


def now_ms() -> str:
    return str(int(time.time() * 1000))


def user_ids(open_id: str) -> dict[str, str]:
    """The three ids of a user, derived from the open_id so they are stable per user."""
    suffix = open_id[3:] if open_id.startswith("ou_") else open_id
    return {"open_id": open_id, "union_id": f"on_{suffix}", "user_id": f"u_{suffix}"}


def build_envelope(
    event_type: str,
    event: dict[str, Any],
    *,
    app_id: str,
    tenant_key: str,
    token: str,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Wrap `event` in the v2 envelope ``{"schema","header","event"}``."""
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id or new_id(),
            "event_type": event_type,
            "create_time": now_ms(),
            "token": token,
            "app_id": app_id,
            "tenant_key": tenant_key,
        },
        "event": event,
    }


def build_message_event(
    *,
    message_id: str,
    chat_id: str,
    chat_type: str,
    sender_open_id: str,
    msg_type: str,
    content: dict[str, Any],
    tenant_key: str,
    mentions: list[dict[str, Any]] | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    thread_id: str | None = None,
) -> dict[str, Any]:
    """The ``event`` body of im.message.receive_v1 for a message sent by a user.

    Empty optional fields are left out, as Feishu does for messages outside threads.
    """
    created = now_ms()
    message: dict[str, Any] = {"message_id": message_id}
    if root_id:
        message["root_id"] = root_id
    if parent_id:
        message["parent_id"] = parent_id
    message.update(
        {
            "create_time": created,
            "update_time": created,
            "chat_id": chat_id,
        }
    )
    if thread_id:
        message["thread_id"] = thread_id
    message.update(
        {
            "chat_type": chat_type,
            "message_type": msg_type,
            "content": json.dumps(content, ensure_ascii=False),
        }
    )
    if mentions:
        message["mentions"] = mentions
    return {
        "sender": {
            "sender_id": user_ids(sender_open_id),
            "sender_type": "user",
            "tenant_key": tenant_key,
        },
        "message": message,
    }


def bot_mention(key: str, *, bot_open_id: str, bot_name: str, tenant_key: str) -> dict[str, Any]:
    """A ``mentions`` entry for the bot (bots have no user_id)."""
    suffix = bot_open_id[3:] if bot_open_id.startswith("ou_") else bot_open_id
    return {
        "key": key,
        "id": {"open_id": bot_open_id, "union_id": f"on_{suffix}", "user_id": ""},
        "name": bot_name,
        "tenant_key": tenant_key,
        "mentioned_type": "bot",
    }


def build_menu_event(
    *, operator_open_id: str, event_key: str, operator_name: str = ""
) -> dict[str, Any]:
    """The body of ``application.bot.menu_v6`` (a click on the bot's custom menu): the
    operator's ids, the menu item's ``event_key`` and a timestamp (a string of epoch seconds,
    as in Feishu's example) — no chat and no message."""
    operator: dict[str, Any] = {"operator_id": user_ids(operator_open_id)}
    if operator_name:
        operator["operator_name"] = operator_name
    return {"operator": operator, "event_key": event_key, "timestamp": str(int(time.time()))}
