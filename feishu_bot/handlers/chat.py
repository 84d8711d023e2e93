"""The chat handler: one user message becomes one Claude turn with a streamed reply.

It owns the success path only. Exceptions propagate to `conversations`, which journals them
and tells the user.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from feishu_bot.conversations import default_workdir
from feishu_bot.errors import JournalError
from feishu_bot.events import (
    ClaudeEvent,
    InboundMessage,
    TurnRequest,
    TurnResult,
)
from feishu_bot.handlers.attachments import prepare_turn_input, turn_mcp
from feishu_bot.quoted import with_quote

if TYPE_CHECKING:
    from feishu_bot.claude.scheduler import Ticket
    from feishu_bot.context import BotContext

__all__ = ["run_chat_turn", "turn_note"]

STALE_NOTICE = "The earlier Claude session had expired, so this answer starts a fresh context."


def turn_note(result: TurnResult) -> str:
    # the wall time includes the CLI's start-up, which its own duration_ms leaves out
    wall_ms = result.extra.get("wall_ms", result.duration_ms)
    parts = [f"{float(wall_ms) / 1000:.1f}s"]  # type: ignore[arg-type]
    if result.num_turns:
        parts.append(f"{result.num_turns} turn{'s' if result.num_turns != 1 else ''}")
    if result.cost_usd:
        parts.append(f"${result.cost_usd:.4f}")
    if result.attempts > 1:
        parts.append(f"{result.attempts} attempts")
    note = " · ".join(parts)
    if result.stale_session_reset:
        note = f"{STALE_NOTICE}\n{note}"
    return note


async def run_chat_turn(
    ctx: BotContext,
    msg: InboundMessage,
    stream: Any,
    *,
    turn_id: int,
    ticket: Ticket | None = None,
    on_first_event: Callable[[ClaudeEvent], None] | None = None,
) -> TurnResult:
    """Run the turn, stream progress, deliver the final answer, record the outcome.

    The journal says 'running' only once the CLI has printed something: before that it has
    neither called the API nor run a tool, so a turn killed earlier is safe to run again.
    """
    conv = await ctx.store.ensure_conversation(
        msg.conversation_key,
        chat_id=msg.chat_id,
        chat_type=msg.chat_type,
        thread_root=msg.thread_root,
        workdir=str(
            default_workdir(
                ctx.workdir_root, msg.conversation_key, shared=ctx.settings.CLAUDE_SHARED_WORKDIR
            )
        ),
    )
    workdir = Path(conv.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prompt, content, cleanup = await _turn_input(ctx, msg, workdir)
    grants = await ctx.store.list_grants(msg.conversation_key)
    request = TurnRequest(
        conversation_key=msg.conversation_key,
        prompt=prompt,
        workdir=workdir,
        session_id=conv.session_id,
        model=conv.model or ctx.settings.CLAUDE_MODEL or None,
        content=content,
        user_id=msg.sender_open_id,
        allowed_rules=tuple(g.rule for g in grants if g.kind == "tool"),
        allowed_hosts=tuple(g.rule for g in grants if g.kind == "host"),
        permission_mode=await ctx.store.permission_mode(msg.conversation_key),
    )

    seen_output = False
    accepted_at = time.monotonic()
    journal_error: list[Exception] = []
    run: asyncio.Future[TurnResult] | None = None

    async def on_event(event: ClaudeEvent) -> None:
        nonlocal seen_output
        if not seen_output:
            seen_output = True
            ctx.metrics.turn_started(time.monotonic() - accepted_at)
            if on_first_event is not None:
                on_first_event(event)
            try:
                await ctx.store.update_turn(turn_id, status="running")
            except Exception as exc:
                # Unjournaled, a crash now would run this turn again after the restart (its
                # tools twice): stop it instead.
                logger.error("turn {}: could not journal 'running' ({!r}); stopped", turn_id, exc)
                journal_error.append(exc)
                if run is not None:
                    run.cancel()
                return
        if event.kind == "text":
            # lazily: reading the whole text on every delta would make streaming quadratic
            await stream.update(lambda event=event: event.text)
        elif event.kind == "result" and event.cost_usd:
            # Journaled while the turn still holds its slot: the next turn the launcher lets
            # in already counts it against the spending limits.
            await ctx.store.update_turn(turn_id, cost_usd=event.cost_usd)

    await stream.started()
    try:
        run = asyncio.ensure_future(
            ctx.launcher.run(
                request,
                on_event=on_event,
                on_queued=stream.queued,
                ask_permission=_permission_for(ctx, msg, turn_id, stream),
                mcp=_mcp_for(ctx, msg, workdir),
                ticket=ticket,
            )
        )
        try:
            result = await run
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if journal_error and not (task is not None and task.cancelling()):
                raise JournalError(str(journal_error[0])) from journal_error[0]
            raise
    finally:
        if cleanup is not None:
            ok = run is not None and run.done() and not (run.cancelled() or run.exception())
            session_id = (
                run.result().session_id if ok and run is not None
                else ctx.launcher.live_session_id(msg.conversation_key)
            )
            done = cleanup(session_id)
            if inspect.isawaitable(done):
                await done
    # Journal before delivering, so that whatever the user does after reading the answer
    # (/status, a restart) already sees this turn as done. A bookkeeping failure is logged
    # rather than raised: it must not turn a good answer into an error message.
    try:
        await ctx.store.record_turn(msg.conversation_key, cost_usd=result.cost_usd)
        await ctx.store.update_turn(
            turn_id,
            status="done",
            attempts=result.attempts,
            exit_code=result.exit_code,
            duration_ms=int(result.extra.get("wall_ms", result.duration_ms) or 0),  # type: ignore[call-overload]
            cost_usd=result.cost_usd,
        )
        if result.session_id:
            forked_from = conv.session_id if not result.stale_session_reset else None
            await ctx.store.touch_session(
                msg.conversation_key,
                result.session_id,
                msg.text or "",
                replaces=forked_from if forked_from != result.session_id else None,
            )
    except Exception:
        logger.exception("turn {} could not be journaled", turn_id)
    first = result.extra.get("first_text_s")
    if isinstance(first, float):
        ctx.metrics.first_text(first)
    final_text = result.text or "(Claude finished without any text.)"
    await stream.finish(final_text, note=turn_note(result))
    ctx.metrics.turn_finished("ok", time.monotonic() - accepted_at, cost_usd=result.cost_usd)
    return result


async def _turn_input(
    ctx: BotContext, msg: InboundMessage, workdir: Path
) -> tuple[str, tuple[dict[str, Any], ...], Any]:
    """The prompt and extra content blocks (images, files) of this turn."""
    prepared = await prepare_turn_input(ctx, msg, workdir=workdir)
    prompt = await with_quote(ctx, msg, prepared.prompt)  # the message it replies to, if any
    return prompt, tuple(prepared.content), getattr(prepared, "cleanup", None)


def _permission_for(ctx: BotContext, msg: InboundMessage, turn_id: int, stream: Any) -> Any:
    # Without a broker the session denies every request with a reason (the rules alone).
    if ctx.approvals is None:
        return None
    return ctx.approvals.for_turn(msg.conversation_key, turn_id, msg.sender_open_id, stream)


def _mcp_for(ctx: BotContext, msg: InboundMessage, workdir: Path) -> Any:
    return turn_mcp(ctx, msg, workdir=workdir)
