"""From a raw Feishu event to a handled message: filter, dedupe, order, and one error boundary.

`Dispatcher.submit` runs on the application loop (the gateway hands events over with
`call_soon_threadsafe`) and never awaits: it parses, decides, fixes the message's place in its
conversation's order, and starts a tracked task. This module is the only place where exceptions
become user-facing text (`describe_error`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from feishu_bot.errors import (
    ClaudeError,
    CliNotFound,
    FeishuApiError,
    PermanentCliError,
    QueueFull,
    StaleSession,
    TransientCliError,
    TurnCancelled,
    TurnTimeout,
)
from feishu_bot.events import ClaudeEvent, InboundMessage
from feishu_bot.feishu.inbound import MalformedEvent, parse_message_event
from feishu_bot.handlers.chat import run_chat_turn
from feishu_bot.handlers.commands import parse_command, run_command

if TYPE_CHECKING:
    from feishu_bot.context import BotContext
    from feishu_bot.feishu.access import AccessPolicy, RefusalLimiter
    from feishu_bot.feishu.progress import ReplyStream
    from feishu_bot.turns import TurnHandle

__all__ = ["MESSAGE_EVENT", "DispatchCounters", "Dispatcher", "describe_error"]

MESSAGE_EVENT = "im.message.receive_v1"
MAX_PROMPT_CHARS = 100_000

STOPPED_TEXT = "Stopped by /stop."
INTERRUPTED_TEXT = (
    "The bot restarted while Claude was working on this, so the request was interrupted. "
    "Please send it again."
)
DEFERRED_TEXT = "The bot is restarting; this request is kept and will run when it is back."
UNSUPPORTED_TEXT = (
    "Sorry, I can only read text and rich-text (post) messages for now; "
    "{kind} messages are not supported yet."
)
EMPTY_TEXT = "Your message was empty. Send me some text (or /help)."
MALFORMED_TEXT = "Sorry, I could not read that message. Please send it again as plain text."
TOO_LONG_TEXT = (
    "Your message is too long ({size} characters; the limit is {limit}). Please shorten it."
)


def describe_error(exc: BaseException, *, timeout_s: float = 0) -> tuple[str, str]:
    """(one short sentence for the user, journal status) for a failed turn."""
    if isinstance(exc, QueueFull):
        return (
            f"The bot is busy ({exc.active}/{exc.max_active} running, {exc.queued} queued). "
            "Please try again in a minute.",
            "failed",
        )
    if isinstance(exc, TurnTimeout):
        return (
            f"Claude took longer than {timeout_s:g}s and was stopped. Try a smaller request, "
            "or ask the operator to raise CLAUDE_TIMEOUT.",
            "failed",
        )
    if isinstance(exc, CliNotFound):
        return (
            "The Claude CLI is not available on the server. Ask the operator to check CLAUDE_BIN.",
            "failed",
        )
    if isinstance(exc, TurnCancelled):
        return STOPPED_TEXT, "cancelled"
    if isinstance(exc, PermanentCliError):
        return f"Claude could not run this request: {_detail(exc)}", "failed"
    if isinstance(exc, StaleSession):
        return "The earlier Claude session could not be resumed. Send /new and try again.", "failed"
    if isinstance(exc, TransientCliError):
        return (
            f"Claude failed after {exc.attempts} attempt{'s' if exc.attempts != 1 else ''}"
            f" ({_detail(exc)}). Please try again.",
            "failed",
        )
    if isinstance(exc, ClaudeError):
        return f"Claude failed: {_detail(exc)}", "failed"
    if isinstance(exc, FeishuApiError):
        return f"Feishu rejected the reply (code {exc.code}).", "failed"
    return (
        f"Something went wrong inside the bot ({type(exc).__name__}). "
        "The operator can find details in the logs.",
        "failed",
    )


def _detail(exc: ClaudeError) -> str:
    for candidate in (*exc.result_errors, *exc.stderr_tail.strip().splitlines()[-1:], str(exc)):
        if candidate and candidate.strip():
            text = candidate.strip()
            return text if len(text) <= 300 else text[:297] + "..."
    return type(exc).__name__


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


class Dispatcher:
    """Owns the path of one event from hand-off to a started turn or an immediate reply.

    Does not run Claude itself (the chat handler does, through the launcher) and does not own
    task lifetimes (the TurnRegistry does).
    """

    def __init__(
        self,
        ctx: BotContext,
        *,
        bot_open_id: str,
        access: AccessPolicy,
        refusals: RefusalLimiter,
        stream_factory: Any,
    ) -> None:
        self._ctx = ctx
        self._bot_open_id = bot_open_id
        self._access = access
        self._refusals = refusals
        self._stream_factory = stream_factory
        self.counters = DispatchCounters()
        self._accepting = True

    def stop_accepting(self) -> None:
        """Shutdown: a message turn that still arrives is journaled as queued and not run.

        The SDK has acked such an event already, so dropping it would lose it; the next start
        runs it from the journal (`Bot._recover`). Commands still run (they are quick).
        """
        self._accepting = False

    # -- hand-off ---------------------------------------------------------------------------
    def submit(self, envelope: dict[str, Any]) -> None:
        """Called on the app loop for every event; never blocks, never raises."""
        try:
            self._submit(envelope)
        except Exception:
            logger.exception("dispatch: unexpected error while routing an event")

    def _submit(self, envelope: dict[str, Any]) -> None:
        header = envelope.get("header") if isinstance(envelope, dict) else None
        event_type = header.get("event_type") if isinstance(header, dict) else None
        if event_type != MESSAGE_EVENT:
            logger.debug("dispatch: ignoring event type {}", event_type)
            return
        self.counters.events += 1
        try:
            msg = parse_message_event(envelope, self._bot_open_id)
        except MalformedEvent as exc:
            self.counters.malformed += 1
            self._on_malformed(envelope, str(exc))
            return
        if msg.chat_type != "p2p" and not msg.mentioned_bot:
            return
        with logger.contextualize(conversation=msg.conversation_key, message_id=msg.message_id):
            if not self._access.allows(msg.sender_open_id, msg.chat_id):
                self.counters.refused += 1
                logger.info(
                    "dispatch: refused sender {} in chat {}", msg.sender_open_id, msg.chat_id
                )
                if self._refusals.should_reply(msg.sender_open_id):
                    from feishu_bot.feishu.access import refusal_text

                    text = refusal_text(msg.sender_open_id, msg.chat_id)
                    self._reply_once(msg, text, name="refusal", dedupe=False)
                return
            if msg.text is None:
                self.counters.unsupported += 1
                logger.info("dispatch: unsupported message type {}", msg.msg_type)
                self._reply_once(
                    msg, UNSUPPORTED_TEXT.format(kind=msg.msg_type), name="unsupported"
                )
                return
            if not msg.text.strip():
                self._reply_once(msg, EMPTY_TEXT, name="empty")
                return
            if len(msg.text) > MAX_PROMPT_CHARS:
                text = TOO_LONG_TEXT.format(size=len(msg.text), limit=MAX_PROMPT_CHARS)
                self._reply_once(msg, text, name="too-long")
                return
            command = parse_command(msg.text)
            if command is not None:
                self.counters.commands += 1
                self._ctx.turns.spawn(self._command(msg, *command), name=f"cmd:{msg.message_id}")
                return
            handle = self._ctx.turns.admit(msg.conversation_key, msg.message_id)
            self._ctx.turns.start(handle, self._turn(msg, handle))

    def resume_turn(self, msg: InboundMessage, turn_id: int) -> None:
        """Re-run a journaled turn (crash recovery); keeps arrival order within its conversation."""
        handle = self._ctx.turns.admit(msg.conversation_key, msg.message_id)
        self._ctx.turns.start(handle, self._turn(msg, handle, turn_id=turn_id))

    # -- replies that are not turns ----------------------------------------------------------
    def _on_malformed(self, envelope: dict[str, Any], reason: str) -> None:
        message = (envelope.get("event") or {}).get("message") or {}
        message_id = message.get("message_id") if isinstance(message, dict) else None
        logger.warning("dispatch: skipping malformed message {}: {}", message_id, reason)
        if isinstance(message_id, str) and message_id:
            stub = InboundMessage(message_id, "", "p2p", "", "unknown", None)
            self._reply_once(stub, MALFORMED_TEXT, name="malformed")

    def _reply_once(
        self, msg: InboundMessage, text: str, *, name: str, dedupe: bool = True
    ) -> None:
        async def send() -> None:
            try:
                if dedupe and not await self._ctx.store.mark_processed(msg.message_id):
                    self.counters.duplicates_dropped += 1
                    return
                await self._ctx.replier.reply_text(msg.message_id, text, in_thread=msg.in_thread)
            except Exception:
                logger.exception("dispatch: could not send the {} reply", name)

        self._ctx.turns.spawn(send(), name=f"{name}:{msg.message_id}")

    async def _command(self, msg: InboundMessage, name: str, args: str) -> None:
        with logger.contextualize(conversation=msg.conversation_key, message_id=msg.message_id):
            try:
                if not await self._ctx.store.mark_processed(msg.message_id):
                    self.counters.duplicates_dropped += 1
                    return
                logger.info("command /{}", name)
                text = await run_command(self._ctx, msg, name, args)
            except Exception as exc:
                logger.exception("command /{} failed", name)
                text, _ = describe_error(exc, timeout_s=self._ctx.settings.CLAUDE_TIMEOUT)
            try:
                await self._ctx.replier.reply_text(msg.message_id, text, in_thread=msg.in_thread)
            except Exception:
                logger.exception("command /{}: could not send the reply", name)

    # -- turns -------------------------------------------------------------------------------
    async def _turn(
        self, msg: InboundMessage, handle: TurnHandle, turn_id: int | None = None
    ) -> None:
        ctx = self._ctx
        stream: ReplyStream | None = None
        with logger.contextualize(conversation=msg.conversation_key, message_id=msg.message_id):
            try:
                if turn_id is None:
                    turn_id = await ctx.store.accept_message(
                        msg.message_id,
                        conversation_key=msg.conversation_key,
                        chat_id=msg.chat_id,
                        prompt=msg.text or "",
                        reply_in_thread=msg.in_thread,
                    )
                    if turn_id is None:
                        self.counters.duplicates_dropped += 1
                        logger.info("dispatch: duplicate delivery dropped")
                        return
                self.counters.turns_accepted += 1
                stream = self._stream_factory(ctx.replier, msg.message_id, in_thread=msg.in_thread)
                if not self._accepting:
                    logger.info("turn {} arrived during shutdown: kept queued", turn_id)
                    await self._record_failure(
                        stream, turn_id, DEFERRED_TEXT, "queued", error="shutdown"
                    )
                    return
                ahead = ctx.turns.position(handle)
                if ahead:
                    await stream.queued(ahead)
                await ctx.turns.wait_turn(handle)
                logger.info("turn {} started", turn_id)
                await run_chat_turn(
                    ctx, msg, stream, turn_id=turn_id, on_first_event=self._mark_running(handle)
                )
                logger.info("turn {} done", turn_id)
            except asyncio.CancelledError:
                await self._on_cancelled(handle, stream, turn_id)
            except Exception as exc:
                await self._on_failed(exc, stream, turn_id)
            finally:
                await ctx.turns.finish(handle)

    @staticmethod
    def _mark_running(handle: TurnHandle) -> Any:
        def mark(_: ClaudeEvent) -> None:
            handle.running = True

        return mark

    async def _on_cancelled(
        self, handle: TurnHandle, stream: ReplyStream | None, turn_id: int | None
    ) -> None:
        reason = handle.cancel_reason or "shutdown"
        if reason == "stop":
            text, status = STOPPED_TEXT, "cancelled"
        elif handle.running:
            text, status = INTERRUPTED_TEXT, "interrupted"
        else:
            # Claude never started on it: keep it queued so the next start runs it.
            text, status = DEFERRED_TEXT, "queued"
        logger.info("turn {} {} ({})", turn_id, status, reason)
        await self._record_failure(stream, turn_id, text, status, error=reason)

    async def _on_failed(
        self, exc: Exception, stream: ReplyStream | None, turn_id: int | None
    ) -> None:
        text, status = describe_error(exc, timeout_s=self._ctx.settings.CLAUDE_TIMEOUT)
        if isinstance(exc, ClaudeError | QueueFull):
            logger.warning("turn {} failed: {!r}", turn_id, exc)
        else:
            logger.exception("turn {} failed unexpectedly", turn_id)
        await self._record_failure(stream, turn_id, text, status, error=repr(exc)[:500], exc=exc)

    async def _record_failure(
        self,
        stream: ReplyStream | None,
        turn_id: int | None,
        text: str,
        status: str,
        *,
        error: str,
        exc: BaseException | None = None,
    ) -> None:
        partial = exc.partial_text if isinstance(exc, ClaudeError) else None
        outcome = "deferred" if status == "queued" else status
        if isinstance(exc, QueueFull):
            outcome = "busy"
        elif isinstance(exc, TurnTimeout):
            outcome = "timeout"
        self._ctx.metrics.turn_finished(outcome)
        try:
            if stream is not None:
                await stream.fail(text, partial_text=partial or None)
        except Exception:
            logger.exception("could not tell the user about the failure")
        if turn_id is None:
            return
        try:
            fields: dict[str, Any] = {"status": status, "error": error}
            if isinstance(exc, ClaudeError):
                fields.update(attempts=exc.attempts, exit_code=exc.exit_code)
            await self._ctx.store.update_turn(turn_id, **fields)
        except Exception:
            logger.exception("could not journal turn {}", turn_id)
