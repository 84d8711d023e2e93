"""Reading messages back (`GET /open-apis/im/v1/messages/{message_id}`) and recalling them.

As Feishu documents it: the answer is ``data.items[0]`` with ``msg_type``, ``body.content``
(the JSON string, as in events), ``sender``, ``chat_id``, ``deleted`` and, for a reply, its
``parent_id``/``root_id``. A CardKit card comes back as its current card JSON only with
``card_msg_content_type=user_card_content``; without it Feishu sends the text asking the reader
to upgrade their client. A user's group message that does not @mention the bot can only be read
with the sensitive scope ``im:message.group_msg``: `group_msg_scope = False` takes it away
(then 230027 "Lack of necessary permissions"). A recalled message reads as deleted.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .envelopes import now_ms
from .options import SimOptions
from .records import Records, SentMessage, UserMessage
from .rest import error_response, ok

__all__ = ["MESSAGE_RECALLED", "UPGRADE_TEXT", "MessageReads", "build_recall_event"]

MESSAGE_RECALLED = "im.message.recalled_v1"
UPGRADE_TEXT = "请升级至最新版本客户端，以查看内容"
_RECALLED_TEXT = "This message was recalled"


def build_recall_event(message_id: str, chat_id: str) -> dict[str, Any]:
    """The body of ``im.message.recalled_v1`` (the message's owner recalled it)."""
    return {
        "message_id": message_id,
        "chat_id": chat_id,
        "recall_time": now_ms(),
        "recall_type": "message_owner",
    }


class MessageReads:
    """The GET route and the scope switch; reads the shared records only."""

    def __init__(self, opts: SimOptions, records: Records) -> None:
        self.opts = opts
        self.records = records
        self.group_msg_scope = True  # the app holds im:message.group_msg

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/open-apis/im/v1/messages/{message_id}", self.get_message)]

    async def get_message(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        user_card = request.query.get("card_msg_content_type") == "user_card_content"
        sent = self.records.find_message(message_id)
        if sent is not None:
            return ok({"items": [self._sent_item(sent, user_card)]})
        user = self.records.user_messages.get(message_id)
        if user is None:
            return error_response(
                400, 230001, "Your request contains an invalid request parameter, ext=message "
                "not found"
            )
        if user.chat_type != "p2p" and not self.group_msg_scope and not self._mentions_bot(user):
            return error_response(400, 230027, "Lack of necessary permissions.")
        return ok({"items": [self._user_item(user)]})

    def _mentions_bot(self, user: UserMessage) -> bool:
        return any(
            isinstance(m, dict)
            and isinstance(m.get("id"), dict)
            and m["id"].get("open_id") == self.opts.bot_open_id
            for m in user.mentions
        )

    def _common(self, msg: SentMessage | UserMessage, created: float) -> dict[str, Any]:
        item: dict[str, Any] = {"message_id": msg.message_id}
        parent = msg.reply_to if isinstance(msg, SentMessage) else msg.parent_id
        for key, value in (("root_id", msg.root_id), ("parent_id", parent),
                           ("thread_id", msg.thread_id)):
            if value:
                item[key] = value
        stamp = str(int(created * 1000))
        item.update(
            {"create_time": stamp, "update_time": stamp, "deleted": msg.deleted,
             "chat_id": msg.chat_id}
        )
        return item

    def _sent_item(self, msg: SentMessage, user_card: bool) -> dict[str, Any]:
        item = self._common(msg, msg.created_at)
        content: dict[str, Any] = msg.content
        if msg.deleted:
            content = {"text": _RECALLED_TEXT}
        elif msg.card_entity is not None:
            content = msg.rendered if user_card else {
                "title": "", "elements": [[{"tag": "text", "text": UPGRADE_TEXT}]]
            }
        item.update(
            {
                "msg_type": "text" if msg.deleted else msg.msg_type,
                "updated": msg.updated,
                "sender": {
                    "id": self.opts.app_id,
                    "id_type": "app_id",
                    "sender_type": "app",
                    "tenant_key": self.opts.tenant_key,
                },
                "body": {"content": json.dumps(content, ensure_ascii=False)},
            }
        )
        return item

    def _user_item(self, msg: UserMessage) -> dict[str, Any]:
        item = self._common(msg, msg.created_at)
        content = {"text": _RECALLED_TEXT} if msg.deleted else msg.content
        item.update(
            {
                "msg_type": "text" if msg.deleted else msg.msg_type,
                "updated": False,
                "sender": {
                    "id": msg.sender_open_id,
                    "id_type": "open_id",
                    "sender_type": "user",
                    "tenant_key": self.opts.tenant_key,
                },
                "body": {"content": json.dumps(content, ensure_ascii=False)},
                "mentions": [
                    {
                        "key": m.get("key"),
                        "id": (m.get("id") or {}).get("open_id", ""),
                        "id_type": "open_id",
                        "name": m.get("name", ""),
                        "tenant_key": self.opts.tenant_key,
                    }
                    for m in msg.mentions
                    if isinstance(m, dict)
                ],
            }
        )
        return item
