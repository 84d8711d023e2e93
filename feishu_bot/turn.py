"""One journaled turn, from its place in the queue to its last word: the only writer of its
journal row and of its reply's end.

`Conversations` makes a `Turn` for every admitted message and ends it exactly once, whichever
way it goes:
- `running()` when the CLI prints its first line (before that it has neither called the API
  nor run a tool, so a turn killed earlier is safe to run again after a crash); a journal
  write that fails raises JournalError, and the turn must then stop rather than risk running
  twice after a crash;
- `record_cost(usd)` when the result event arrives, while the turn still holds its slot (the
  next turn let in counts it against the spending limits); `succeed` sets the same value;
- `succeed(result)`: journal `done` and the conversation's bookkeeping first (so whatever the
  user does after reading the answer already sees it), then deliver the answer;
- `fail(exc)`, `cancel()`: journal the final state (shielded: a second /stop or a shutdown
  cannot skip it), then tell the user.

What it does not do: run Claude (the runner handed to `Conversations` does), or decide who
may stop it (conversations).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from database.models import TurnStatus
from feishu_bot import wording
from feishu_bot.errors import ClaudeError, JournalError, QueueFull, TurnRefused, TurnTimeout

if TYPE_CHECKING:
    from database.store import SessionStore
    from feishu_bot.events import InboundMessage, TurnResult
    from feishu_bot.feishu.reply_sink import ReplySink
    from feishu_bot.metrics import BotMetrics
    from feishu_bot.turns import TurnHandle

__all__ = ["Turn", "turn_note"]


def turn_note(result: TurnResult) -> str:
    """The note under an answer: time (the CLI's start-up included), turns, cost, attempts."""
    parts = [f"{result.wall_ms / 1000:.1f}s"]
    if result.num_turns:
        parts.append(f"{result.num_turns} turn{'s' if result.num_turns != 1 else ''}")
    if result.cost_usd:
        parts.append(f"${result.cost_usd:.4f}")
    if result.attempts > 1:
        parts.append(f"{result.attempts} attempts")
    note = " · ".join(parts)
    if result.stale_session_reset:
        note = f"{wording.STALE_NOTICE}\n{note}"
    return note


@dataclass(eq=False)
class Turn:
    """See the module docstring. `stream` is the turn's reply (card) from start to end."""

    turn_id: int
    msg: InboundMessage
    handle: TurnHandle
    stream: ReplySink
    store: SessionStore
    metrics: BotMetrics
    timeout_s: float
    accepted_at: float = field(default_factory=time.monotonic)
    _started: bool = False

    @property
    def key(self) -> str:
        return self.msg.conversation_key

    async def running(self) -> None:
        """The CLI produced its first output: journal RUNNING (once). JournalError if not."""
        if self._started:
            return
        self._started = True
        self.handle.running = True
        self.metrics.turn_started(time.monotonic() - self.accepted_at)
        try:
            await self.store.update_turn(self.turn_id, status=TurnStatus.RUNNING)
        except Exception as exc:
            logger.error("turn {}: could not journal 'running' ({!r})", self.turn_id, exc)
            raise JournalError(str(exc)) from exc

    async def record_cost(self, cost_usd: float) -> None:
        """The turn's own cost, from its result event: journaled while the turn still holds its
        slot, so the next turn the launcher lets in already counts it against the spending
        limits. `succeed` writes the same value again (a set, never added twice)."""
        try:
            await self.store.update_turn(self.turn_id, cost_usd=cost_usd)
        except Exception:
            logger.warning("turn {}: could not journal its cost", self.turn_id)

    async def succeed(self, result: TurnResult, *, resumed_from: str | None) -> None:
        """Journal DONE and the conversation's totals and session, then deliver the answer.
        A bookkeeping failure is logged, not raised: it must not turn a good answer into an
        error message."""
        try:
            await self.store.record_turn(self.key, cost_usd=result.cost_usd)
            await self.store.update_turn(
                self.turn_id,
                status=TurnStatus.DONE,
                attempts=result.attempts,
                exit_code=result.exit_code,
                duration_ms=result.wall_ms,
                cost_usd=result.cost_usd,
            )
            if result.session_id:
                forked_from = resumed_from if not result.stale_session_reset else None
                await self.store.touch_session(
                    self.key,
                    result.session_id,
                    self.msg.text or "",
                    replaces=forked_from if forked_from != result.session_id else None,
                )
        except Exception:
            logger.exception("turn {} could not be journaled", self.turn_id)
        if result.first_text_s is not None:
            self.metrics.first_text(result.first_text_s)
        final_text = result.text or "(Claude finished without any text.)"
        await self.stream.finish(final_text, note=turn_note(result))
        self.metrics.turn_finished(
            "ok", time.monotonic() - self.accepted_at, cost_usd=result.cost_usd
        )

    async def fail(self, exc: Exception) -> None:
        """The turn ended with an error: journal it and tell the user in one sentence."""
        text, status = wording.describe_error(exc, timeout_s=self.timeout_s)
        if isinstance(exc, ClaudeError | QueueFull | JournalError | TurnRefused):
            logger.warning("turn {} failed: {!r}", self.turn_id, exc)
        else:
            logger.exception("turn {} failed unexpectedly", self.turn_id)
        await self._end(text, TurnStatus(status), repr(exc)[:500], exc=exc)

    async def cancel(self) -> None:
        """The turn's task was cancelled: by a stop (cancelled), or by a shutdown (interrupted
        if Claude had started on it, else kept queued for the next start)."""
        reason = self.handle.cancel_reason or "shutdown"
        if reason == "stop":
            text, status = wording.STOPPED, TurnStatus.CANCELLED
        elif reason == "recalled":
            text, status = wording.RECALLED, TurnStatus.CANCELLED
        elif self.handle.running:
            text, status = wording.INTERRUPTED, TurnStatus.INTERRUPTED
        else:
            text, status = wording.DEFERRED, TurnStatus.QUEUED  # Claude never started on it
        logger.info("turn {} {} ({})", self.turn_id, status, reason)
        await self._end(text, status, reason)

    async def defer(self) -> None:
        """It arrived during a shutdown: kept queued for the next start, and the user told."""
        logger.info("turn {} arrived during shutdown: kept queued", self.turn_id)
        await self._end(wording.DEFERRED, TurnStatus.QUEUED, "shutdown")

    async def _end(
        self, text: str, status: TurnStatus, error: str, *, exc: BaseException | None = None
    ) -> None:
        outcome = "deferred" if status is TurnStatus.QUEUED else str(status)
        if isinstance(exc, TurnTimeout):
            outcome = "timeout"
        elif isinstance(exc, TurnRefused):
            outcome = "refused"
        self.metrics.turn_finished(outcome, error=exc)
        fields: dict[str, Any] = {"status": status, "error": error}
        if isinstance(exc, ClaudeError):
            fields.update(attempts=exc.attempts, exit_code=exc.exit_code)
        await _finish_shielded(
            self.store.update_turn(self.turn_id, **fields), f"could not journal turn {self.turn_id}"
        )
        partial = exc.partial_text if isinstance(exc, ClaudeError) else None
        await _finish_shielded(
            self.stream.fail(text, partial_text=partial or None),
            "could not tell the user about the failure",
        )


async def _finish_shielded(aw: Any, problem: str) -> None:
    """Run `aw` to its end even when the caller is cancelled meanwhile (a second /stop, a
    shutdown); log its failure."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.gather(task, return_exceptions=True)
    except Exception:
        logger.exception(problem)
