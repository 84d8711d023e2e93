"""The one owner of a conversation at run time.

It admits a message as a turn (a place in the launcher's queue, fixed synchronously, then a
journal row, durably, before the event is acked), runs it through the runner it was handed,
and ends it through its `Turn` (turn.py), the only writer of the turn's journal row:
queued → running → done | failed | cancelled | interrupted (or back to queued when a shutdown
catches it waiting). It stops turns (``/stop`` a whole conversation, a card's Stop one turn,
settling a waiting approval first), answers where a conversation stands (`status`), replays
what a crash left in the journal (checking access again), and owns each turn's reply from
creation to its last word. The registry of turn tasks is its own.

Issue 18's hooks at admission: a plan requester's text while the plan card waits is Keep
planning with it (no turn); a sender or the bot over a daily spending limit is refused in one
sentence (the launcher's gate checks again when the turn leaves the queue); a scheduled run
(`cron_runner`, message id ``cron:<job>:<due>``) is admitted like a message and answered
through `scheduled_replier` under its header; a recalled message's waiting turn is withdrawn
(`withdraw`), a running one goes on.

Invariants:
- A turn's final journal state is written whatever is cancelled around it: the write is
  shielded and a second cancel does not skip it.
- A message is acked only after its journal row exists (or it was found to be a duplicate).

What it does not do: parse Feishu events or filter them (dispatch does), prepare a turn's
input or run Claude (the runner does), or run processes (the launcher does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from loguru import logger

from database.models import TurnStatus
from feishu_bot import wording
from feishu_bot.errors import QueueFull
from feishu_bot.events import InboundMessage
from feishu_bot.keys import ConversationKey
from feishu_bot.scheduled_reply import scheduled_replier
from feishu_bot.turn import Turn
from feishu_bot.turn_input import attachments_from_items

if TYPE_CHECKING:
    from database.models import Turn as JournalRow
    from database.store import SessionStore
    from feishu_bot.approvals import ApprovalBroker
    from feishu_bot.claude.launcher import Launcher
    from feishu_bot.claude.scheduler import Ticket
    from feishu_bot.events import TurnResult
    from feishu_bot.feishu.access import AccessPolicy
    from feishu_bot.feishu.replier import FeishuReplier
    from feishu_bot.feishu.reply_sink import ReplySink, ReplySinkFactory
    from feishu_bot.metrics import BotMetrics
    from feishu_bot.spend import SpendPolicy
    from feishu_bot.turns import TurnHandle, TurnRegistry

__all__ = ["Admission", "ConversationStatus", "Conversations", "Runner"]

Runner = Callable[[Turn, "Ticket | None"], Awaitable["TurnResult"]]


class Admission(StrEnum):
    """What `admit` did with a message."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    BUSY = "busy"  # refused by the queue limits; the user was told
    REFUSED = "refused"  # over a spending limit; the user was told
    FEEDBACK = "feedback"  # a plan requester's text while the plan card waits: no turn


@dataclass(frozen=True, slots=True)
class ConversationStatus:
    """Where a conversation's turns stand: the running one, and how many wait."""

    running: bool
    waiting: int


class Conversations:
    """Admits, runs, stops and recovers turns; see the module docstring."""

    def __init__(
        self,
        *,
        store: SessionStore,
        replier: FeishuReplier,
        launcher: Launcher,
        turns: TurnRegistry,
        metrics: BotMetrics,
        access: AccessPolicy,
        sinks: ReplySinkFactory,
        runner: Runner,
        approvals: ApprovalBroker | None,
        timeout_s: float,
        spend: SpendPolicy | None = None,
        cron_tz: str = "",
    ) -> None:
        self._store = store
        self._replier = replier
        self._launcher = launcher
        self._turns = turns
        self._metrics = metrics
        self._access = access
        self._sinks = sinks
        self._runner = runner
        self._approvals = approvals
        self._timeout_s = timeout_s
        self._spend = spend  # daily limits, checked on arrival (the launcher checks again)
        self._cron_tz = cron_tz  # the zone a scheduled run's header names its due time in
        self._accepting = True

    def stop_accepting(self) -> None:
        """Shutdown: a turn that still arrives is journaled as queued and not run."""
        self._accepting = False

    # ------------------------------------------------------------------ admission
    async def admit(self, msg: InboundMessage) -> Admission:
        """Take a message as a turn: fix its place, journal it, start it. Returns once the
        journal row exists (the caller acks after that). A plan requester's text while the
        plan card waits is Keep planning with it (FEEDBACK, no turn); a sender or bot over a
        spending limit is refused with one sentence (REFUSED)."""
        if self._plan_feedback(msg):
            await self._store.mark_processed(msg.message_id)
            return Admission.FEEDBACK
        refusal = await self._spend.refusal(msg.sender_open_id) if self._spend else None
        if refusal is not None:
            if not await self._store.mark_processed(msg.message_id):
                return Admission.DUPLICATE
            self._metrics.turn_finished("refused")
            self._turns.spawn(self._reply(msg, refusal), name=f"refused:{msg.message_id}")
            return Admission.REFUSED
        try:
            ticket = self._launcher.reserve(
                msg.conversation_key, msg.sender_open_id, count_rejection=False
            )
        except QueueFull as exc:
            if await self._store.mark_processed(msg.message_id):  # not a redelivery
                self._launcher.note_rejected()
                self._metrics.turn_finished("busy")
                text, _ = wording.describe_error(exc)
                self._turns.spawn(self._reply(msg, text), name=f"busy:{msg.message_id}")
                return Admission.BUSY
            return Admission.DUPLICATE
        try:
            turn_id = await self._store.accept_message(
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
            self._launcher.cancel_reservation(ticket)
            raise
        if turn_id is None:
            self._launcher.cancel_reservation(ticket)
            logger.info("dispatch: duplicate delivery dropped")
            return Admission.DUPLICATE
        self._start(msg, turn_id, ticket)
        return Admission.ACCEPTED

    def _start(
        self, msg: InboundMessage, turn_id: int, ticket: Ticket, card: str | None = None
    ) -> None:
        handle = self._turns.admit(msg.conversation_key, msg.message_id, turn_id)
        self._turns.start(handle, self._run(msg, handle, turn_id, ticket, card))

    def _plan_feedback(self, msg: InboundMessage) -> bool:
        """A text message of a plan's requester while its card waits becomes Keep planning
        with that text (never a scheduled run's prompt)."""
        broker = self._approvals
        if broker is None or not msg.text or msg.attachments or msg.message_id.startswith("cron:"):
            return False
        return broker.plan_feedback(msg.conversation_key, msg.sender_open_id, msg.text)

    def _replier_for(self, message_id: str, key: str, prompt: str = "") -> FeishuReplier:
        """The bot's replier; for a scheduled run (it answers no message) one that posts into
        the conversation's chat under a "scheduled" header."""
        return scheduled_replier(self._replier, message_id, key, prompt, self._cron_tz)

    async def _reply(self, msg: InboundMessage, text: str) -> None:
        try:
            replier = self._replier_for(msg.message_id, msg.conversation_key, msg.text or "")
            await replier.reply_text(msg.message_id, text, in_thread=msg.in_thread)
        except Exception:
            logger.exception("could not send a reply")

    # ------------------------------------------------------------------ stopping, status
    def stop(self, key: str) -> int:
        """Stop the running turn (interrupt) and cancel the queued ones of a conversation.
        A waiting approval is settled first ("stopped": deny and interrupt), so the card
        records it."""
        if self._approvals is not None:
            self._approvals.stop_conversation(key)
        return self._turns.cancel_conversation(key, "stop")

    def stop_turn(self, key: str, turn_id: int) -> bool:
        """Stop one turn (the Stop button of its card): a queued one leaves the queue, the
        running one is interrupted (its waiting approval settled first); the conversation's
        other turns go on. False when that turn is not waiting or running any more."""
        handle = self._turns.handle_of(key, turn_id)
        if handle is None:
            return False
        if self._approvals is not None:
            self._approvals.stop_turn(key, turn_id)
        return self._turns.cancel_turn(handle, "stop")

    def withdraw(self, key: str, turn_id: int) -> bool:
        """Drop a turn whose message was recalled, if Claude has not started on it (no output
        yet); its card says it was withdrawn. A running turn goes on: False."""
        handle = self._turns.handle_of(key, turn_id)
        if handle is None or handle.running:
            return False
        return self._turns.cancel_turn(handle, "recalled")

    def status(self, key: str) -> ConversationStatus:
        handles = self._turns.handles(key)
        running = any(h.running for h in handles)
        return ConversationStatus(running, len(handles) - (1 if running else 0))

    # ------------------------------------------------------------------ one turn
    def _new_sink(
        self, message_id: str, in_thread: bool, key: str, turn_id: int, prompt: str = ""
    ) -> ReplySink:
        return self._sinks(
            self._replier_for(message_id, key, prompt),
            message_id,
            in_thread=in_thread,
            conversation_key=key,
            turn_id=turn_id,
        )

    def _watch_ui(self, stream: ReplySink, turn_id: int, card: str | None) -> None:
        """Journal the turn's reaction and card as they appear; reuse a card a crashed run of
        the same turn left behind."""
        if card:
            stream.adopt(card)
        store, turns = self._store, self._turns

        def on_ui(kind: str, value: str) -> None:
            field = "reaction_id" if kind == "reaction" else "card_message_id"
            turns.spawn(_set_ui(store, turn_id, field, value), name=f"ui:{turn_id}")

        stream.on_ui = on_ui

    async def _run(
        self,
        msg: InboundMessage,
        handle: TurnHandle,
        turn_id: int,
        ticket: Ticket,
        card: str | None = None,
    ) -> None:
        turn: Turn | None = None
        with logger.contextualize(conversation=msg.conversation_key, message_id=msg.message_id):
            try:
                stream = self._new_sink(
                    msg.message_id, msg.in_thread, msg.conversation_key, turn_id, msg.text or ""
                )
                turn = Turn(
                    turn_id, msg, handle, stream, self._store, self._metrics, self._timeout_s
                )
                self._watch_ui(stream, turn_id, card)
                if not self._accepting:
                    self._launcher.cancel_reservation(ticket)
                    await turn.defer()
                    return
                logger.info("turn {} accepted", turn_id)
                await self._runner(turn, ticket)
                logger.info("turn {} done", turn_id)
            except asyncio.CancelledError:
                self._launcher.cancel_reservation(ticket)
                if turn is not None:
                    await turn.cancel()
            except Exception as exc:
                self._launcher.cancel_reservation(ticket)
                if turn is not None:
                    await turn.fail(exc)
                else:
                    logger.exception("turn {} could not start", turn_id)
            finally:
                await self._turns.finish(handle)

    # ------------------------------------------------------------------ recovery
    async def recover(self) -> None:
        """Finish what a crash left in the journal: re-run queued turns (access checked
        again), tell the users of running ones, clean up stale reactions."""
        pending = await self._store.pending_turns()
        if not pending:
            return
        running = sum(1 for row in pending if row.status == TurnStatus.RUNNING)
        logger.warning(
            "recovery: {} turns were running when the bot stopped (not re-run, users told), "
            "{} queued turns run again in order",
            running,
            len(pending) - running,
        )
        for row in pending:
            await self._cleanup_ui(row)
            if row.status == TurnStatus.RUNNING:
                # Not re-run: it may have called tools and changed files already.
                await self._store.update_turn(
                    row.id, status=TurnStatus.INTERRUPTED, error="bot restarted"
                )
                await self._tell_retrying(row, wording.INTERRUPTED)
                continue
            msg = _message_of(row)
            if not self._access.allows(msg.sender_open_id, msg.chat_id):
                logger.warning("recovery: turn {} refused (sender no longer allowed)", row.id)
                await self._store.update_turn(
                    row.id, status=TurnStatus.FAILED, error="access revoked"
                )
                await self._tell_retrying(row, wording.REPLAY_REFUSED)
                continue
            try:
                ticket = self._launcher.reserve(msg.conversation_key, msg.sender_open_id)
            except QueueFull as exc:
                await self._store.update_turn(
                    row.id, status=TurnStatus.FAILED, error="busy at recovery"
                )
                await self._tell_retrying(row, wording.describe_error(exc)[0])
                continue
            self._start(msg, row.id, ticket, row.card_message_id)

    async def _cleanup_ui(self, row: JournalRow) -> None:
        if row.reaction_id:
            try:
                await self._replier.remove_reaction(row.message_id, row.reaction_id)
            except Exception:
                logger.warning("recovery: could not remove the reaction of turn {}", row.id)

    async def _tell_retrying(self, row: JournalRow, text: str, attempts: int = 3) -> None:
        """An interrupted/refused notice is retried, not dropped, when Feishu hiccups; it goes
        into the turn's card when the crashed run left one, so no card stays stuck."""
        for attempt in range(attempts):
            try:
                if row.card_message_id:
                    stream = self._new_sink(
                        row.message_id, bool(row.reply_in_thread), row.conversation_key, row.id,
                        row.prompt,
                    )
                    stream.adopt(row.card_message_id)
                    await stream.fail(text)
                    return
                replier = self._replier_for(row.message_id, row.conversation_key, row.prompt)
                await replier.reply_text(
                    row.message_id, text, in_thread=bool(row.reply_in_thread)
                )
                return
            except Exception:
                logger.warning("recovery: notice for turn {} failed (try {})", row.id, attempt + 1)
                await asyncio.sleep(0.5 * 2**attempt)
        logger.error("recovery: could not tell the user of turn {}", row.id)


async def _set_ui(store: SessionStore, turn_id: int, field: str, value: str) -> None:
    try:
        await store.set_turn_ui(turn_id, **{field: value})
    except Exception:
        logger.warning("could not journal the {} of turn {}", field, turn_id)


def _message_of(row: JournalRow) -> InboundMessage:
    """The message a journaled turn was made from, for running it again."""
    key = ConversationKey.parse(row.conversation_key)
    attachments = attachments_from_items(row.attachments)
    return InboundMessage(
        message_id=row.message_id,
        chat_id=row.chat_id,
        chat_type=key.chat_type,
        sender_open_id=row.sender_open_id or "",
        msg_type="text",
        text=row.prompt,
        mentioned_bot=True,
        thread_root=key.thread_root,
        attachments=attachments,
        parent_id=row.quoted_message_id,
    )
