"""What to do after a turn's attempt failed: retry where, start over, or give up.

Rules (each measured on CLI 2.1.329, see FACTS):
- A stale ``--resume`` (``No conversation found``) → forget the session and run once more
  without ``--resume``; the user is told the earlier context was lost. Only once per turn.
- Permanent failures (bad argument, not logged in, max turns, 4xx API errors) → give up.
- A transient failure after a tool with side effects ran (an edit, a command) → give up and say
  what ran: running the request again would do it twice.
- Otherwise retry up to ``max_retries`` times with exponential backoff and jitter, always in
  a new process that resumes the session where the failed turn began: the session the process
  was started from if the failure was in its first turn (``--fork-session`` left that one
  untouched), else the process's own session cut at the last assistant message of the previous
  turn (``--resume-session-at``), forked, so the failed turn is never shown to the model.
  Never in the same process, even when it survived: measured on 2.1.329, a turn that failed
  with a 529 stays in the history (its prompt is merged into the next user message, in the
  same process and after a plain ``--resume``), so resending it there shows it twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from feishu_bot.claude.protocol import Outcome, Verdict

__all__ = ["Action", "Decision", "ResumePoint", "backoff", "decide"]


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a new process starts: a session to fork (or none) and where to cut it."""

    session_id: str | None = None
    at_uuid: str | None = None


class Action(StrEnum):
    RETRY_NEW = "retry_new"  # new process from a resume point
    START_FRESH = "start_fresh"  # stale session: new process without --resume
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    resume: ResumePoint | None = None
    reason: str = ""


def decide(
    verdict: Verdict,
    *,
    attempts: int,
    max_retries: int,
    process_alive: bool,
    side_effects: tuple[str, ...],
    stale_reset_done: bool,
    spawned_from: ResumePoint,
    first_turn_of_process: bool,
    session_before: str | None,
    uuid_before: str | None,
    forked: bool = True,
) -> Decision:
    """The next step after attempt number ``attempts`` (1-based) failed with ``verdict``.

    ``forked``: processes resume with ``--fork-session`` (their base stays untouched)."""
    if verdict.outcome is Outcome.STALE:
        if spawned_from.session_id and not stale_reset_done:
            return Decision(Action.START_FRESH, ResumePoint(), "stale session")
        return Decision(Action.GIVE_UP, reason=verdict.reason)
    if verdict.outcome is not Outcome.TRANSIENT:
        return Decision(Action.GIVE_UP, reason=verdict.reason)
    if side_effects:
        return Decision(Action.GIVE_UP, reason="side effects")
    if attempts > max_retries:
        return Decision(Action.GIVE_UP, reason="retries exhausted")
    if first_turn_of_process or not session_before:
        if spawned_from.session_id and not forked:
            # Resumed without --fork-session: the base now holds the failed turn, and there
            # is no cut point in it we know of.
            return Decision(Action.GIVE_UP, reason="session changed in place")
        return Decision(Action.RETRY_NEW, spawned_from)
    if uuid_before is None:
        # Nothing to cut at: resuming would show the model the crashed half of this turn.
        return Decision(Action.RETRY_NEW, spawned_from)
    return Decision(Action.RETRY_NEW, ResumePoint(session_before, uuid_before))


def backoff(retry_delay: float, retry_number: int) -> float:
    """Delay before retry k (1-based): retry_delay * 2**(k-1) plus up to retry_delay."""
    return retry_delay * 2 ** (retry_number - 1) + random.uniform(0, retry_delay)
