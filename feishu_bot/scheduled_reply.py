"""Where a scheduled run's answer goes: a new message in its chat, marked as scheduled.

A run of a /cron job is a turn whose message id is ``cron:<job>:<due>`` (`database.cron`): there
is no user message to reply to. `scheduled_replier` gives such a turn a replier that sends what
the turn's stream would reply to that id into the chat instead: the first reply is preceded by
a header message ("⏰ Scheduled prompt …", posted as a new message in the chat, or in the
topic's thread for a topic conversation) and every reply then answers the header. The header is
sent with a uuid derived from the run, so a retried send, or the same run picked up again after
a restart within Feishu's one-hour window, posts it once. The "working" reaction of a run does
nothing (there is no user message to put it on). Every other call goes to the bot's replier.

`post_to_conversation` sends a one-line notice (a job paused, say) the same way.
"""

from __future__ import annotations

import asyncio
import uuid as uuid_mod
from typing import Any

from feishu_bot.cron_schedule import format_time, zone
from feishu_bot.feishu.render import text_content
from feishu_bot.feishu.reply_shortcuts import ReplyShortcuts
from feishu_bot.keys import ConversationKey

__all__ = ["ScheduledReplier", "header_text", "post_to_conversation", "scheduled_replier"]

_PROMPT_SHOWN = 200


def _chat_and_root(conversation_key: str) -> tuple[str, str | None]:
    """(chat_id, topic root or None) of a conversation."""
    key = ConversationKey.parse(conversation_key)
    return key.chat_id, key.thread_root


def header_text(job_id: int, due: float, prompt: str, tz_name: str = "") -> str:
    """The header of a run: which job, when it was due, and what it asks."""
    shown = " ".join(prompt.split())
    if len(shown) > _PROMPT_SHOWN:
        shown = shown[: _PROMPT_SHOWN - 1] + "…"
    when = format_time(due, zone(tz_name))
    return f"⏰ Scheduled prompt (/cron job {job_id}, due {when}): {shown}"


async def post_to_conversation(replier: Any, conversation_key: str, text: str) -> str:
    """A new text message in the conversation's chat (in its thread for a topic)."""
    chat_id, root = _chat_and_root(conversation_key)
    if root:
        return str(await replier.reply(root, "text", text_content(text), in_thread=True))
    return str(await replier.send(chat_id, "text", text_content(text)))


class ScheduledReplier(ReplyShortcuts):
    """The bot's replier, with replies to one run's message id redirected (see the module)."""

    def __init__(self, replier: Any, run_id: str, conversation_key: str, header: str) -> None:
        self._replier = replier
        self._run_id = run_id
        self._chat_id, self._root = _chat_and_root(conversation_key)
        self._header = header
        self._header_id: str | None = None
        self._lock = asyncio.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._replier, name)

    async def _anchor(self) -> str:
        async with self._lock:
            if self._header_id is None:
                content = text_content(self._header)
                uuid = uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"feishu-bot:{self._run_id}").hex
                if self._root:
                    sent = await self._replier.reply(
                        self._root, "text", content, in_thread=True, uuid=uuid
                    )
                else:
                    sent = await self._replier.send(self._chat_id, "text", content, uuid=uuid)
                self._header_id = str(sent)
            return self._header_id

    async def reply(
        self,
        message_id: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        in_thread: bool = False,
        uuid: str | None = None,
    ) -> str:
        if message_id == self._run_id:
            message_id = await self._anchor()
            in_thread = in_thread or self._root is not None
        return str(
            await self._replier.reply(message_id, msg_type, content, in_thread=in_thread, uuid=uuid)
        )

    async def add_reaction(self, message_id: str, emoji_type: str) -> str:
        if message_id == self._run_id:
            return ""  # no user message to react to
        return str(await self._replier.add_reaction(message_id, emoji_type))

    async def remove_reaction(self, message_id: str, reaction_id: str) -> None:
        if message_id == self._run_id or not reaction_id:
            return
        await self._replier.remove_reaction(message_id, reaction_id)


def scheduled_replier(
    replier: Any, message_id: str, conversation_key: str, prompt: str = "", tz_name: str = ""
) -> Any:
    """The replier a turn of `message_id` uses: `replier` itself, or for a scheduled run a
    `ScheduledReplier` posting into the conversation's chat."""
    from database.cron import parse_run_message_id

    run = parse_run_message_id(message_id)
    if run is None:
        return replier
    job_id, due = run
    return ScheduledReplier(
        replier, message_id, conversation_key, header_text(job_id, due, prompt, tz_name)
    )
