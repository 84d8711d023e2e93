"""The filter chain every update passes: event kind, @mention, access, then routing.

`Dispatcher.handle` runs on the application loop for each event the gateway receives and
returns what the event's ack should carry (a card callback's toast) or None. It returns only
once the message is durably journaled or deduplicated, so an acked message can't be lost. It
answers nothing to a message it must ignore: a group message without an @mention, or a
stranger's message, gets no "could not read" and leaves no row, even when it is malformed.

It does not run turns (conversations own them) and it holds the only error boundary for
commands and one-off replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from feishu_bot import wording
from feishu_bot.conversations import Admission
from feishu_bot.events import InboundMessage
from feishu_bot.feishu.inbound import MalformedEvent, parse_message_event
from feishu_bot.handlers.cards import handle_card_action, toast
from feishu_bot.handlers.commands import parse_command, run_command
from feishu_bot.handlers.menu import MENU_EVENT, MenuClick, P2pChats, parse_menu_event, run_menu
from feishu_bot.handlers.recall import RECALL_EVENT, handle_recall
from feishu_bot.turn_input import keep_attachments, needs_question

if TYPE_CHECKING:
    from feishu_bot.context import BotContext
    from feishu_bot.feishu.access import AccessPolicy, RefusalLimiter

__all__ = [
    "CARD_ACTION_EVENT",
    "MENU_EVENT",
    "MESSAGE_EVENT",
    "RECALL_EVENT",
    "DispatchCounters",
    "Dispatcher",
]

MESSAGE_EVENT = "im.message.receive_v1"
CARD_ACTION_EVENT = "card.action.trigger"
MAX_PROMPT_CHARS = 100_000


@dataclass
class DispatchCounters:
    """Cumulative counts for health and metrics."""

    events: int = 0
    duplicates_dropped: int = 0
    malformed: int = 0
    refused: int = 0
    unsupported: int = 0
    commands: int = 0
    turns_accepted: int = 0
    card_actions: int = 0
    menu_clicks: int = 0


class Dispatcher:
    """Routes updates; see the module docstring."""

    def __init__(
        self,
        ctx: BotContext,
        *,
        bot_open_id: str,
        access: AccessPolicy,
        refusals: RefusalLimiter,
    ) -> None:
        self._ctx = ctx
        self._bot_open_id = bot_open_id
        self._access = access
        self._refusals = refusals
        self._p2p = P2pChats()  # who is in which private chat, for menu clicks
        self.counters = DispatchCounters()

    async def handle(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        """Handle one event; see the module docstring. Raises only when the message could not
        be journaled, so that the ack says 500 and Feishu delivers it again."""
        header = envelope.get("header") if isinstance(envelope, dict) else None
        event_type = header.get("event_type") if isinstance(header, dict) else None
        if event_type == CARD_ACTION_EVENT:
            self.counters.card_actions += 1
            return await self._card_action(envelope)
        if event_type == MENU_EVENT:
            self.counters.menu_clicks += 1
            await self._menu(envelope)
            return None
        if event_type == RECALL_EVENT:
            # Idempotent: if the journal fails, the ack says 500 and Feishu delivers it again.
            await handle_recall(self._ctx, envelope)
            return None
        if event_type != MESSAGE_EVENT:
            logger.debug("dispatch: ignoring event type {}", event_type)
            return None
        self.counters.events += 1
        try:
            msg = parse_message_event(envelope, self._bot_open_id)
        except MalformedEvent as exc:
            self.counters.malformed += 1
            await self._on_malformed(envelope, str(exc))
            return None
        if msg.chat_type == "p2p":
            self._p2p.note(msg.sender_open_id, msg.chat_id)
        elif not msg.mentioned_bot:
            return None
        self._ctx.replier.note_chat(msg.message_id, msg.chat_id)  # pace its replies per chat
        with logger.contextualize(conversation=msg.conversation_key, message_id=msg.message_id):
            await self._route(msg)
        return None

    async def _route(self, msg: InboundMessage) -> None:
        ctx = self._ctx
        if not self._access.allows(msg.sender_open_id, msg.chat_id):
            self.counters.refused += 1
            logger.info("dispatch: refused sender {} in chat {}", msg.sender_open_id, msg.chat_id)
            if self._refusals.should_reply(msg.sender_open_id):
                from feishu_bot.feishu.access import refusal_text

                text = refusal_text(msg.sender_open_id, msg.chat_id)
                await self._reply_once(msg, text, name="refusal", dedupe=False)
            return
        if needs_question(msg):
            # a screenshot first, the question second: keep it for the next text message
            reply = await keep_attachments(ctx, msg)
            if reply:
                ctx.turns.spawn(self._send(msg, reply, "kept"), name=f"kept:{msg.message_id}")
            return
        if msg.text is None and not msg.attachments:
            self.counters.unsupported += 1
            logger.info("dispatch: unsupported message type {}", msg.msg_type)
            await self._reply_once(msg, wording.UNSUPPORTED.format(kind=msg.msg_type), name="unsup")
            return
        text = msg.text or ""
        if not text.strip() and not msg.attachments:
            await self._reply_once(msg, wording.EMPTY, name="empty")
            return
        if len(text) > MAX_PROMPT_CHARS:
            too_long = wording.TOO_LONG.format(size=len(text), limit=MAX_PROMPT_CHARS)
            await self._reply_once(msg, too_long, name="too-long")
            return
        command = parse_command(text)
        if command is not None:
            if not await ctx.store.mark_processed(msg.message_id):
                self.counters.duplicates_dropped += 1
                return
            self.counters.commands += 1
            ctx.turns.spawn(self._command(msg, *command), name=f"cmd:{msg.message_id}")
            return
        outcome = await ctx.conversations.admit(msg)
        if outcome is Admission.ACCEPTED:
            self.counters.turns_accepted += 1
        elif outcome is Admission.DUPLICATE:
            self.counters.duplicates_dropped += 1

    # -- card callbacks ----------------------------------------------------------------------
    async def _card_action(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await handle_card_action(
                self._ctx, envelope, access=self._access, answers=self._ctx.card_answers
            )
        except Exception:
            logger.exception("dispatch: card action failed")
            return toast("error", wording.CLICK_FAILED)

    # -- the bot menu --------------------------------------------------------------------------
    async def _menu(self, envelope: dict[str, Any]) -> None:
        """Dedupe by event id, check access, then run the command off the ack's path."""
        click = parse_menu_event(envelope)
        if click is None:
            self.counters.malformed += 1
            logger.warning("dispatch: skipping a menu event without an operator")
            return
        store = self._ctx.store
        if not await store.mark_processed(f"menu:{click.event_id}"):
            self.counters.duplicates_dropped += 1
            return
        chat_id = self._p2p.get(click.open_id) or await store.p2p_chat_of(click.open_id)
        if not self._access.allows(click.open_id, chat_id or ""):
            self.counters.refused += 1
            logger.info("dispatch: refused menu click by {}", click.open_id)
            if self._refusals.should_reply(click.open_id):
                from feishu_bot.feishu.access import refusal_text

                text = refusal_text(click.open_id, chat_id or "?")
                self._ctx.turns.spawn(self._to_user(click.open_id, text), name="menu-refusal")
            return
        self.counters.commands += 1
        self._ctx.turns.spawn(self._menu_command(click, chat_id), name=f"menu:{click.event_id}")

    async def _menu_command(self, click: MenuClick, chat_id: str | None) -> None:
        key = f"p2p:{chat_id}" if chat_id else f"user:{click.open_id}"
        with logger.contextualize(conversation=key, message_id=f"menu:{click.event_id}"):
            try:
                logger.info("menu {!r}", click.key)
                text = await run_menu(self._ctx, click, chat_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("menu {!r} failed", click.key)
                text, _ = wording.describe_error(exc, timeout_s=self._ctx.settings.CLAUDE_TIMEOUT)
            await self._to_user(click.open_id, text)

    async def _to_user(self, open_id: str, text: str) -> None:
        """A new message to the user's private chat with the bot (nothing to reply to)."""
        from feishu_bot.feishu.render import text_content

        try:
            await self._ctx.replier.send(
                open_id, "text", text_content(text), receive_id_type="open_id"
            )
        except Exception:
            logger.exception("dispatch: could not send the menu's answer")

    # -- replies that are not turns ----------------------------------------------------------
    async def _on_malformed(self, envelope: dict[str, Any], reason: str) -> None:
        peek = _peek(envelope, self._bot_open_id)
        message_id = peek.get("message_id")
        logger.warning("dispatch: skipping malformed message {}: {}", message_id, reason)
        if not message_id or not peek.get("addressed"):
            return
        if not self._access.allows(peek.get("sender", ""), peek.get("chat_id", "")):
            return
        stub = InboundMessage(message_id, peek.get("chat_id", ""), "p2p", "", "unknown", None)
        await self._reply_once(stub, wording.MALFORMED, name="malformed")

    async def _reply_once(
        self, msg: InboundMessage, text: str, *, name: str, dedupe: bool = True
    ) -> None:
        if dedupe and not await self._ctx.store.mark_processed(msg.message_id):
            self.counters.duplicates_dropped += 1
            return

        self._ctx.turns.spawn(self._send(msg, text, name), name=f"{name}:{msg.message_id}")

    async def _send(self, msg: InboundMessage, text: str, name: str) -> None:
        try:
            await self._ctx.replier.reply_text(msg.message_id, text, in_thread=msg.in_thread)
        except Exception:
            logger.exception("dispatch: could not send the {} reply", name)

    async def _command(self, msg: InboundMessage, name: str, args: str) -> None:
        with logger.contextualize(conversation=msg.conversation_key, message_id=msg.message_id):
            try:
                logger.info("command /{}", name)
                text = await run_command(self._ctx, msg, name, args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("command /{} failed", name)
                text, _ = wording.describe_error(exc, timeout_s=self._ctx.settings.CLAUDE_TIMEOUT)
            try:
                await self._ctx.replier.reply_text(msg.message_id, text, in_thread=msg.in_thread)
            except Exception:
                logger.exception("command /{}: could not send the reply", name)


def _peek(envelope: Any, bot_open_id: str) -> dict[str, Any]:
    """Best-effort facts from an envelope that did not parse: who, where, and whether it was
    addressed to the bot (p2p, or a mention of the bot). Never raises."""
    out: dict[str, Any] = {}
    event = envelope.get("event") if isinstance(envelope, Mapping) else None
    if not isinstance(event, Mapping):
        return out
    message = event.get("message")
    sender = event.get("sender")
    if isinstance(message, Mapping):
        for field, key in (("message_id", "message_id"), ("chat_id", "chat_id")):
            if isinstance(message.get(key), str):
                out[field] = message[key]
        mentions = message.get("mentions")
        mentioned = isinstance(mentions, list) and any(
            isinstance(m, Mapping)
            and isinstance(m.get("id"), Mapping)
            and m["id"].get("open_id") == bot_open_id
            for m in mentions
        )
        out["addressed"] = message.get("chat_type") == "p2p" or (bool(bot_open_id) and mentioned)
    if isinstance(sender, Mapping) and isinstance(sender.get("sender_id"), Mapping):
        open_id = sender["sender_id"].get("open_id")
        if isinstance(open_id, str):
            out["sender"] = open_id
    return out
