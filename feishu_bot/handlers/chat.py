"""The chat handler: one user message becomes one Claude turn with a streamed reply.

It owns the success path only. Exceptions propagate to `dispatch`, the single place that turns
them into words for the user and into a journal status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from feishu_bot.events import ClaudeEvent, InboundMessage, TurnRequest, TurnResult

if TYPE_CHECKING:
    from feishu_bot.context import BotContext
    from feishu_bot.feishu.progress import ReplyStream

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
    stream: ReplyStream,
    *,
    turn_id: int,
    on_first_event: Callable[[ClaudeEvent], None] | None = None,
) -> TurnResult:
    """Run the turn, stream progress, deliver the final answer, record the outcome.

    The journal says 'running' only once the CLI has printed something: before that it has
    neither called the API nor run a tool, so a turn killed earlier is safe to run again.
    """
    assert msg.text is not None
    conv = await ctx.store.ensure_conversation(
        msg.conversation_key,
        chat_id=msg.chat_id,
        chat_type=msg.chat_type,
        thread_root=msg.thread_root,
        workdir=str(ctx.workdir_root),
    )
    workdir = Path(conv.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    request = TurnRequest(
        conversation_key=msg.conversation_key,
        prompt=msg.text,
        workdir=workdir,
        session_id=conv.session_id,
        model=conv.model or ctx.settings.CLAUDE_MODEL or None,
    )

    seen_output = False
    accepted_at = time.monotonic()

    async def on_event(event: ClaudeEvent) -> None:
        nonlocal seen_output
        if not seen_output:
            seen_output = True
            ctx.metrics.turn_started(time.monotonic() - accepted_at)
            if on_first_event is not None:
                on_first_event(event)
            await ctx.store.update_turn(turn_id, status="running")
        if event.kind == "text" and event.text:
            await stream.update(event.text)

    await stream.started()
    result = await ctx.launcher.run(request, on_event=on_event, on_queued=stream.queued)
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
            duration_ms=result.duration_ms,
            cost_usd=result.cost_usd,
        )
    except Exception:
        logger.exception("turn {} could not be journaled", turn_id)
    final_text = result.text or "(Claude finished without any text.)"
    await stream.finish(final_text, note=turn_note(result))
    ctx.metrics.turn_finished("ok", time.monotonic() - accepted_at)
    return result
