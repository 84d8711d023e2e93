"""Replies of one kind (text, a card, a CardKit card entity), written once on top of a
`reply(message_id, msg_type, content, *, in_thread, uuid)` that the class provides (the
replier itself, and the scheduled runs' replier that redirects replies into the chat).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from feishu_bot.feishu.render import text_content

__all__ = ["ReplyShortcuts"]


class ReplyShortcuts:
    """`reply_text`, `reply_card`, `reply_card_entity` over the class's `reply`."""

    reply: Callable[..., Awaitable[str]]

    async def reply_text(
        self, message_id: str, text: str, *, in_thread: bool = False, uuid: str | None = None
    ) -> str:
        return await self.reply(
            message_id, "text", text_content(text), in_thread=in_thread, uuid=uuid
        )

    async def reply_card(
        self,
        message_id: str,
        card: dict[str, Any],
        *,
        in_thread: bool = False,
        uuid: str | None = None,
    ) -> str:
        return await self.reply(message_id, "interactive", card, in_thread=in_thread, uuid=uuid)

    async def reply_card_entity(
        self, message_id: str, card_id: str, *, in_thread: bool = False, uuid: str | None = None
    ) -> str:
        """Reply with a CardKit card entity (it can be sent once); returns the message id."""
        content = {"type": "card", "data": {"card_id": card_id}}
        return await self.reply(message_id, "interactive", content, in_thread=in_thread, uuid=uuid)
