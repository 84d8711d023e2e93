"""Recalled messages (`im.message.recalled_v1`): what was not started yet is dropped.

- A message the bot has not handled yet (the recall overtook it) is marked processed, so it is
  dropped when it arrives.
- A message whose turn still waits (queued, or holding a slot with no output from Claude yet):
  the turn is withdrawn and its card says so (`Conversations.withdraw`).
- An image or file kept for the next question and not taken yet: it is dropped.
- A turn Claude is already working on is not stopped (the README says so): it may have run
  tools, and stopping it is /stop's job.

Runs on the ack's path: a few journal reads and writes, nothing waits on Feishu.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from database.models import TurnStatus

if TYPE_CHECKING:
    from feishu_bot.context import BotContext

__all__ = ["RECALL_EVENT", "handle_recall", "recalled_message_id"]

RECALL_EVENT: Final = "im.message.recalled_v1"


def recalled_message_id(envelope: Any) -> str | None:
    """`event.message_id` of a recall event, or None when it has none."""
    event = envelope.get("event") if isinstance(envelope, Mapping) else None
    message_id = event.get("message_id") if isinstance(event, Mapping) else None
    return message_id if isinstance(message_id, str) and message_id else None


async def handle_recall(ctx: BotContext, envelope: dict[str, Any]) -> str:
    """Apply one recall; returns what happened ("unseen", "kept-dropped", "withdrawn",
    "running", "finished", "ignored") for logs and tests."""
    message_id = recalled_message_id(envelope)
    if message_id is None:
        logger.warning("recall event without a message id")
        return "ignored"
    with logger.contextualize(message_id=message_id):
        if await ctx.store.mark_processed(message_id):
            logger.info("recalled before it was handled: it will not run")
            return "unseen"
        if await ctx.store.drop_kept_message(message_id):
            logger.info("recalled: its kept attachments are dropped")
            return "kept-dropped"
        turn = await ctx.store.turn_of_message(message_id)
        if turn is None or turn.status not in (TurnStatus.QUEUED, TurnStatus.RUNNING):
            return "finished"
        conversations = ctx.conversations
        if conversations is not None and conversations.withdraw(turn.conversation_key, turn.id):
            logger.info("recalled: waiting turn {} withdrawn", turn.id)
            return "withdrawn"
        logger.info("recalled while Claude works on turn {}: it goes on", turn.id)
        return "running"
