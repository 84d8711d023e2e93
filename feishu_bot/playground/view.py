"""The page's model: the simulator's records turned into chat items, plus the turn timings.

Everything the page shows about messages comes from what the bot really did to the simulated
Feishu (messages created, replies, PATCHes, CardKit updates, reactions), never from inside the
bot. One item per message, user's or bot's; the page upserts items by id, so a card that is
updated is simply sent again. `ChatView.changed()` returns only the items whose rendering
changed since the last call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from feishu_bot.simulator import FeishuSimulator, SentMessage, UserMessage, content_text

from . import features

__all__ = ["CHATS", "PLAYGROUND_USER", "ChatView", "message_item", "turn_timings"]

PLAYGROUND_USER = "ou_playground_user"


@dataclass(frozen=True)
class Chat:
    key: str
    chat_id: str
    chat_type: str
    title: str


CHATS: dict[str, Chat] = {
    "p2p": Chat("p2p", "oc_playground_p2p", "p2p", "Private chat"),
    "group": Chat("group", "oc_playground_group", "group", "Group chat"),
}
_CHAT_KEYS = {chat.chat_id: chat.key for chat in CHATS.values()}


def _chat_key(chat_id: str) -> str:
    # A message to the user by open_id lands in the p2p chat the simulator knows for them.
    return _CHAT_KEYS.get(chat_id, "p2p")


def turn_timings(sim: FeishuSimulator, msg: UserMessage) -> dict[str, float | int | None]:
    """Milliseconds from the user's message to what Feishu saw of the bot's answer.

    ``ack`` the long connection's ack, ``reaction`` the "working" reaction, ``first_reply`` the
    first reply (text or card), ``last_update`` the last change to any reply (a PATCH or a
    CardKit update), ``done`` the reaction removed (the bot's end of the turn); ``updates``
    counts the replies' changes. None = not (yet) seen.
    """
    start = msg.created_at

    def ms(at: float | None) -> float | None:
        return None if at is None else round((at - start) * 1000, 1)

    ack = next((a for a in reversed(sim.acks) if a.event_id == msg.event_id), None)
    reactions = [r for r in sim.reactions if r.message_id == msg.message_id]
    replies = sim.replies_to(msg.message_id)
    updates = [t for m in replies for t in m.version_times[1:]]
    removed = [r.removed_at for r in reactions if r.removed_at is not None]
    done = max(removed) if removed and all(not r.live for r in reactions) else None
    return {
        "ack": None if ack is None else round(ack.latency_s * 1000, 1),
        "reaction": ms(min((r.created_at for r in reactions), default=None)),
        "first_reply": ms(min((m.created_at for m in replies), default=None)),
        "last_update": ms(max(updates, default=None)),
        "done": ms(done),
        "updates": len(updates),
    }


def message_item(sim: FeishuSimulator, msg: SentMessage | UserMessage) -> dict[str, Any]:
    """One chat item as the page renders it (see static/app.js `renderItem`)."""
    from_user = isinstance(msg, UserMessage)
    content: dict[str, Any] = msg.content if isinstance(msg.content, dict) else {}
    card_version = 0
    if msg.msg_type == "interactive" and isinstance(msg, SentMessage):
        content, card_version = features.rendered_card(sim, msg)
    text = content_text(msg.msg_type, content)
    if from_user:
        text = text.replace("@_user_1", "@" + sim.options.bot_name)
    item: dict[str, Any] = {
        "id": msg.message_id,
        "chat": _chat_key(msg.chat_id),
        "from": "user" if from_user else "bot",
        "msg_type": msg.msg_type,
        "content": content,
        "text": text,
        "created_at": msg.created_at,
        "deleted": msg.deleted,
        "thread_id": msg.thread_id,
        "reactions": [
            {"emoji": r.emoji_type, "live": r.live}
            for r in sim.reactions
            if r.message_id == msg.message_id
        ],
    }
    if isinstance(msg, SentMessage):
        item["reply_to"] = msg.reply_to
        # Every PATCH, and every CardKit update of the card it shows, adds a version.
        item["version"] = max(len(msg.versions), card_version)
    else:
        item["timings"] = turn_timings(sim, msg)
    return item


class ChatView:
    """Renders the records as items; remembers what was sent, to send only what changed."""

    def __init__(self, sim: FeishuSimulator) -> None:
        self.sim = sim
        self._sent: dict[str, str] = {}

    def items(self) -> list[dict[str, Any]]:
        """Every message, oldest first."""
        msgs: list[SentMessage | UserMessage] = [
            *self.sim.user_messages.values(),
            *self.sim.messages,
        ]
        msgs.sort(key=lambda m: m.created_at)
        return [message_item(self.sim, m) for m in msgs]

    def changed(self) -> list[dict[str, Any]]:
        out = []
        for item in self.items():
            key = json.dumps(item, sort_keys=True, default=str)
            if self._sent.get(item["id"]) != key:
                self._sent[item["id"]] = key
                out.append(item)
        return out
