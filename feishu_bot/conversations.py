"""The one owner of a conversation at run time.

It admits a message as a turn (a place in the launcher's queue, fixed synchronously, then a
journal row, durably, before the event is acked), runs it, and writes every journal
transition: queued → running → done | failed | cancelled | interrupted (or back to queued when
a shutdown catches it waiting). It stops a conversation's turns (``/stop``, the Stop button),
replays what a crash left in the journal (checking access again), and owns each turn's reply
stream from creation to its last word.

Invariants:
- A turn's final journal state is written whatever is cancelled around it: the write is
  shielded and a second cancel does not skip it.
- A message is acked only after its journal row exists (or it was found to be a duplicate).

What it does not do: parse Feishu events or filter them (dispatch does), or run processes
(the launcher does).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from feishu_bot import wording
from feishu_bot.errors import ClaudeError, QueueFull, TurnRefused, TurnTimeout
from feishu_bot.events import Attachment, InboundMessage

if TYPE_CHECKING:
    from database.models import Turn
    from feishu_bot.claude.scheduler import Ticket
    from feishu_bot.context import BotContext
    from feishu_bot.feishu.access import AccessPolicy
    from feishu_bot.spend import SpendPolicy
    from feishu_bot.turns import TurnHandle

__all__ = ["Conversations", "default_workdir", "split_key"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def default_workdir(root: Path, key: str, *, shared: bool) -> Path:
    """Where a new conversation works: its own directory under CLAUDE_WORKDIR, or the shared
    root itself when the operator chose CLAUDE_SHARED_WORKDIR."""
    if shared:
        return root
    return root / _UNSAFE.sub("_", key.replace(":", "-"))[:120]


def split_key(key: str) -> tuple[str, str | None]:
    kind, _, rest = key.partition(":")
    if kind == "thread":
        _, _, root = rest.partition(":")
        return "group", root or None
    return ("p2p" if kind == "p2p" else "group"), None


@dataclass
class _Stopping:
    reason: str


class Conversations:
    """Admits, runs, stops and recovers turns; see the module docstring."""

    def __init__(
        self, *, access: AccessPolicy, stream_factory: Any, spend: SpendPolicy | None = None
    ) -> None:
        self._ctx: BotContext | None = None
        self._access = access
        self._stream_factory = stream_factory
        self._spend = spend  # daily limits, checked on arrival (the launcher checks again)
        self._accepting = True

    def bind(self, ctx: BotContext) -> None:
        """Called once by the composition root after the context is built."""
        self._ctx = ctx

    @property
    def ctx(self) -> BotContext:
        assert self._ctx is not None, "Conversations used before bind()"
        return self._ctx

    def stop_accepting(self) -> None:
        """Shutdown: a turn that still arrives is journaled as queued and not run."""
        self._accepting = False

    # ------------------------------------------------------------------ admission
    async def admit(self, msg: InboundMessage) -> str:
        """Take a message as a turn: fix its place, journal it, start it. Returns once the
        journal row exists (the caller acks after that): "accepted", "duplicate", "busy" or
        "refused" (over a spending limit; the user is told), or "feedback" (the text of a plan
        card's requester while it waits: Keep planning with it, no turn)."""
        ctx = self.ctx
        if self._plan_feedback(msg):
            await ctx.store.mark_processed(msg.message_id)
            return "feedback"
        refusal = await self._spend.refusal(msg.sender_open_id) if self._spend else None
        if refusal is not None:
            if not await ctx.store.mark_processed(msg.message_id):
                return "duplicate"
            ctx.metrics.turn_finished("refused")
            ctx.turns.spawn(self._reply(msg, refusal), name=f"refused:{msg.message_id}")
            return "refused"
        try:
            ticket = ctx.launcher.reserve(
                msg.conversation_key, msg.sender_open_id, count_rejection=False
            )
        except QueueFull as exc:
            if await ctx.store.mark_processed(msg.message_id):  # not a redelivery
                ctx.launcher.note_rejected()
                ctx.metrics.turn_finished("busy")
                text, _ = wording.describe_error(exc)
                ctx.turns.spawn(self._reply(msg, text), name=f"busy:{msg.message_id}")
                return "busy"
            return "duplicate"
        try:
            turn_id = await ctx.store.accept_message(
                msg.message_id,
                conversation_key=msg.conversation_key,
                chat_id=msg.chat_id,
                prompt=msg.text or "",
                reply_in_thread=msg.in_thread,
                sender_open_id=msg.sender_open_id,
                attachments=msg.attachments,
                quoted_message_id=msg.parent_id,
            )
        except BaseException:
            ctx.launcher.cancel_reservation(ticket)
            raise
        if turn_id is None:
            ctx.launcher.cancel_reservation(ticket)
            logger.info("dispatch: duplicate delivery dropped")
            return "duplicate"
        self._start(msg, turn_id, ticket)
        return "accepted"

    def _start(
        self, msg: InboundMessage, turn_id: int, ticket: Ticket, card: str | None = None
    ) -> None:
        handle = self.ctx.turns.admit(msg.conversation_key, msg.message_id, turn_id)
        self.ctx.turns.start(handle, self._turn(msg, handle, turn_id, ticket, card))

    def _plan_feedback(self, msg: InboundMessage) -> bool:
        """A text message of a plan's requester while its card waits becomes Keep planning
        with that text (never a scheduled run's prompt)."""
        broker = self.ctx.approvals
        if broker is None or not msg.text or msg.attachments or msg.message_id.startswith("cron:"):
            return False
        return bool(broker.plan_feedback(msg.conversation_key, msg.sender_open_id, msg.text))

    def _replier(self, message_id: str, key: str, prompt: str = "") -> Any:
        """The bot's replier; for a scheduled run (it answers no message) one that posts into
        the conversation's chat under a "scheduled" header."""
        from feishu_bot.scheduled_reply import scheduled_replier

        return scheduled_replier(
            self.ctx.replier, message_id, key, prompt, self.ctx.settings.CRON_TZ
        )

    async def _reply(self, msg: InboundMessage, text: str) -> None:
        try:
            replier = self._replier(msg.message_id, msg.conversation_key, msg.text or "")
            await replier.reply_text(msg.message_id, text, in_thread=msg.in_thread)
        except Exception:
            logger.exception("could not send a reply")

    # ------------------------------------------------------------------ stopping
    def stop(self, key: str) -> int:
        """Stop the running turn (interrupt) and cancel the queued ones of a conversation.
        A waiting approval is settled first ("stopped": deny and interrupt), so the card
        records it."""
        broker = self.ctx.approvals
        if broker is not None:
            broker.stop_conversation(key)
        return self.ctx.turns.cancel_conversation(key, "stop")

    def stop_turn(self, key: str, turn_id: int) -> bool:
        """Stop one turn (the Stop button of its card): a queued one leaves the queue, the
        running one is interrupted (its waiting approval settled first); the conversation's
        other turns go on. False when that turn is not waiting or running any more."""
        handle = self.ctx.turns.handle_of(key, turn_id)
        if handle is None:
            return False
        broker = self.ctx.approvals
        if broker is not None:
            broker.stop_turn(key, turn_id)
        return self.ctx.turns.cancel_turn(handle, "stop")

    def withdraw(self, key: str, turn_id: int) -> bool:
        """Drop a turn whose message was recalled, if Claude has not started on it (no output
        yet); its card says it was withdrawn. A running turn goes on: False."""
        handle = self.ctx.turns.handle_of(key, turn_id)
        if handle is None or handle.running:
            return False
        return self.ctx.turns.cancel_turn(handle, "recalled")

    # ------------------------------------------------------------------ one turn
    def _new_stream(
        self, message_id: str, in_thread: bool, key: str, turn_id: int, prompt: str = ""
    ) -> Any:
        factory = self._stream_factory
        replier = self._replier(message_id, key, prompt)
        if isinstance(factory, type):  # a plain ReplyStream class (tests, PATCH-only)
            return factory(replier, message_id, in_thread=in_thread)
        return factory(
            replier, message_id, in_thread=in_thread, conversation_key=key, turn_id=turn_id
        )

    def _watch_ui(self, stream: Any, turn_id: int, card: str | None) -> None:
        """Journal the turn's reaction and card as they appear; reuse a card a crashed run of
        the same turn left behind."""
        if card and hasattr(stream, "adopt"):
            stream.adopt(card)
        if not hasattr(stream, "on_ui"):
            return
        store, turns = self.ctx.store, self.ctx.turns

        def on_ui(kind: str, value: str) -> None:
            field = "reaction_id" if kind == "reaction" else "card_message_id"
            turns.spawn(_set_ui(store, turn_id, field, value), name=f"ui:{turn_id}")

        stream.on_ui = on_ui

    async def _turn(
        self,
        msg: InboundMessage,
        handle: TurnHandle,
        turn_id: int,
        ticket: Ticket,
        card: str | None = None,
    ) -> None:
        from feishu_bot.handlers.chat import run_chat_turn

        ctx = self.ctx
        stream = None
        with logger.contextualize(conversation=msg.conversation_key, message_id=msg.message_id):
            try:
                stream = self._new_stream(
                    msg.message_id, msg.in_thread, msg.conversation_key, turn_id, msg.text or ""
                )
                self._watch_ui(stream, turn_id, card)
                if not self._accepting:
                    logger.info("turn {} arrived during shutdown: kept queued", turn_id)
                    ctx.launcher.cancel_reservation(ticket)
                    await self._finish(stream, turn_id, wording.DEFERRED, "queued", "shutdown")
                    return
                logger.info("turn {} accepted", turn_id)
                await run_chat_turn(
                    ctx, msg, stream, turn_id=turn_id, ticket=ticket,
                    on_first_event=lambda _e: setattr(handle, "running", True),
                )
                logger.info("turn {} done", turn_id)
            except asyncio.CancelledError:
                ctx.launcher.cancel_reservation(ticket)
                await self._on_cancelled(handle, stream, turn_id)
            except Exception as exc:
                ctx.launcher.cancel_reservation(ticket)
                await self._on_failed(exc, stream, turn_id)
            finally:
                await ctx.turns.finish(handle)

    async def _on_cancelled(self, handle: TurnHandle, stream: Any, turn_id: int) -> None:
        reason = handle.cancel_reason or "shutdown"
        if reason == "stop":
            text, status = wording.STOPPED, "cancelled"
        elif reason == "recalled":
            text, status = wording.RECALLED, "cancelled"
        elif handle.running:
            text, status = wording.INTERRUPTED, "interrupted"
        else:
            text, status = wording.DEFERRED, "queued"  # Claude never started on it
        logger.info("turn {} {} ({})", turn_id, status, reason)
        await self._finish(stream, turn_id, text, status, reason)

    async def _on_failed(self, exc: Exception, stream: Any, turn_id: int) -> None:
        text, status = wording.describe_error(exc, timeout_s=self.ctx.settings.CLAUDE_TIMEOUT)
        if isinstance(exc, ClaudeError | QueueFull):
            logger.warning("turn {} failed: {!r}", turn_id, exc)
        else:
            logger.exception("turn {} failed unexpectedly", turn_id)
        await self._finish(stream, turn_id, text, status, repr(exc)[:500], exc=exc)

    async def _finish(
        self,
        stream: Any,
        turn_id: int,
        text: str,
        status: str,
        error: str,
        *,
        exc: BaseException | None = None,
    ) -> None:
        """Journal the final state first (shielded: a second /stop or a shutdown cannot skip
        it), then tell the user."""
        outcome = "deferred" if status == "queued" else status
        if isinstance(exc, TurnTimeout):
            outcome = "timeout"
        elif isinstance(exc, TurnRefused):
            outcome = "refused"
        self.ctx.metrics.turn_finished(outcome, error=exc)
        fields: dict[str, Any] = {"status": status, "error": error}
        if isinstance(exc, ClaudeError):
            fields.update(attempts=exc.attempts, exit_code=exc.exit_code)
        write = asyncio.ensure_future(self.ctx.store.update_turn(turn_id, **fields))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.gather(write, return_exceptions=True)
        except Exception:
            logger.exception("could not journal turn {}", turn_id)
        if stream is None:
            return
        partial = exc.partial_text if isinstance(exc, ClaudeError) else None
        tell = asyncio.ensure_future(stream.fail(text, partial_text=partial or None))
        try:
            await asyncio.shield(tell)
        except asyncio.CancelledError:
            await asyncio.gather(tell, return_exceptions=True)
        except Exception:
            logger.exception("could not tell the user about the failure")

    # ------------------------------------------------------------------ recovery
    async def recover(self) -> None:
        """Finish what a crash left in the journal: re-run queued turns (access checked
        again), tell the users of running ones, clean up stale reactions and cards."""
        ctx = self.ctx
        pending = await ctx.store.pending_turns()
        if not pending:
            return
        running = sum(1 for turn in pending if turn.status == "running")
        logger.warning(
            "recovery: {} turns were running when the bot stopped (not re-run, users told), "
            "{} queued turns run again in order",
            running,
            len(pending) - running,
        )
        for turn in pending:
            await self._cleanup_ui(turn)
            if turn.status == "running":
                # Not re-run: it may have called tools and changed files already.
                await ctx.store.update_turn(turn.id, status="interrupted", error="bot restarted")
                await self._tell_retrying(turn, wording.INTERRUPTED)
                continue
            card = turn.card_message_id
            msg = _message_of(turn)
            if not self._access.allows(msg.sender_open_id, msg.chat_id):
                logger.warning("recovery: turn {} refused (sender no longer allowed)", turn.id)
                await ctx.store.update_turn(turn.id, status="failed", error="access revoked")
                await self._tell_retrying(turn, wording.REPLAY_REFUSED)
                continue
            try:
                ticket = ctx.launcher.reserve(msg.conversation_key, msg.sender_open_id)
            except QueueFull as exc:
                await ctx.store.update_turn(turn.id, status="failed", error="busy at recovery")
                await self._tell_retrying(turn, wording.describe_error(exc)[0])
                continue
            self._start(msg, turn.id, ticket, card)

    async def _cleanup_ui(self, turn: Turn) -> None:
        replier = self.ctx.replier
        reaction = getattr(turn, "reaction_id", None)
        if reaction:
            try:
                await replier.remove_reaction(turn.message_id, reaction)
            except Exception:
                logger.warning("recovery: could not remove the reaction of turn {}", turn.id)

    async def _tell_retrying(self, turn: Turn, text: str, attempts: int = 3) -> None:
        """An interrupted/refused notice is retried, not dropped, when Feishu hiccups; it goes
        into the turn's card when the crashed run left one, so no card stays stuck."""
        for attempt in range(attempts):
            try:
                if turn.card_message_id and self._stream_factory is not None:
                    stream = self._new_stream(
                        turn.message_id, bool(turn.reply_in_thread), turn.conversation_key,
                        turn.id, turn.prompt,
                    )
                    if hasattr(stream, "adopt"):
                        stream.adopt(turn.card_message_id)
                        await stream.fail(text)
                        return
                replier = self._replier(turn.message_id, turn.conversation_key, turn.prompt)
                await replier.reply_text(
                    turn.message_id, text, in_thread=bool(turn.reply_in_thread)
                )
                return
            except Exception:
                logger.warning("recovery: notice for turn {} failed (try {})", turn.id, attempt + 1)
                await asyncio.sleep(0.5 * 2**attempt)
        logger.error("recovery: could not tell the user of turn {}", turn.id)


async def _set_ui(store: Any, turn_id: int, field: str, value: str) -> None:
    try:
        await store.set_turn_ui(turn_id, **{field: value})
    except Exception:
        logger.warning("could not journal the {} of turn {}", field, turn_id)


def _message_of(turn: Turn) -> InboundMessage:
    chat_type, thread_root = split_key(turn.conversation_key)
    raw = getattr(turn, "attachments", ()) or ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = []
    attachments = tuple(
        a if isinstance(a, Attachment) else Attachment(
            kind=str(a.get("kind", "")), key=str(a.get("key", "")),
            name=str(a.get("name", "")), size=a.get("size"),
        )
        for a in raw
        if isinstance(a, Attachment | dict)
    )
    return InboundMessage(
        message_id=turn.message_id,
        chat_id=turn.chat_id,
        chat_type=chat_type,
        sender_open_id=getattr(turn, "sender_open_id", "") or "",
        msg_type="text",
        text=turn.prompt,
        mentioned_bot=True,
        thread_root=thread_root,
        attachments=attachments,
        parent_id=getattr(turn, "quoted_message_id", None),
    )
