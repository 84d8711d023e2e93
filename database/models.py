"""Frozen snapshots of stored rows, returned by `SessionStore`.

They are values, not live records: changing the database does not change an instance you
already hold, and nothing here does I/O. Timestamps are UTC epoch seconds (float).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "PENDING_STATUSES",
    "Conversation",
    "CronJob",
    "CronRun",
    "Grant",
    "PruneResult",
    "SessionInfo",
    "Turn",
    "TurnStats",
    "TurnStatus",
]


class TurnStatus(StrEnum):
    """Where a journalled turn is. Members compare equal to their plain strings ("done")."""

    QUEUED = "queued"  # accepted, not started; re-run after a crash
    RUNNING = "running"  # a CLI process was started; after a crash, decide: re-run or interrupted
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped by /stop
    INTERRUPTED = "interrupted"  # stopped by shutdown or found running after a crash


# The statuses `pending_turns` returns: the work a restarted process still owes.
PENDING_STATUSES: Final = (TurnStatus.QUEUED, TurnStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class Conversation:
    """One conversation key's Claude session, working directory, model and running totals.

    `session_id` is None when the next turn must start a new Claude session.
    `model` is None when the bot's default model applies.
    """

    key: str
    chat_id: str
    chat_type: str
    thread_root: str | None
    session_id: str | None
    workdir: str
    model: str | None
    created_at: float
    last_activity: float
    turn_count: int
    total_cost_usd: float


@dataclass(frozen=True, slots=True)
class Turn:
    """One accepted Feishu message in the journal, with enough data to run it again.

    `attempts` counts CLI runs made for the turn; exit_code, duration_ms, cost_usd and error
    are None until the turn's runner records them.
    """

    id: int
    message_id: str
    conversation_key: str
    chat_id: str
    prompt: str
    reply_in_thread: bool
    status: TurnStatus
    attempts: int
    exit_code: int | None
    duration_ms: int | None
    cost_usd: float | None
    error: str | None
    created_at: float
    updated_at: float
    sender_open_id: str = ""
    attachments: tuple[dict[str, object], ...] = ()  # kind/key/name/size, never bytes
    reaction_id: str | None = None
    card_message_id: str | None = None
    quoted_message_id: str | None = None  # the message this one replied to, if any


# -- sessions, statistics and retention (issue 12 hardening) -----------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One Claude session a conversation has used (the `sessions` table, for /sessions).

    `turns` counts `touch_session` calls; `first_prompt` is the start of the prompt that
    opened it (at most 200 characters).
    """

    session_id: str
    conversation_key: str
    created_at: float
    last_used_at: float
    turns: int
    first_prompt: str


@dataclass(frozen=True, slots=True)
class TurnStats:
    """Journalled turns of a conversation (or all) since a time: how many, how many ended
    'done', the median `duration_ms` of those that recorded one (None if none did), and the
    summed cost."""

    count: int
    ok: int
    median_duration_ms: float | None
    total_cost_usd: float


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one `prune` removed. `sessions` are the dropped session ids, so the caller can
    delete their transcripts (the store never touches files outside its database)."""

    turns: int = 0
    processed: int = 0
    sessions: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.turns + self.processed + len(self.sessions)


@dataclass(frozen=True, slots=True)
class Grant:
    """A standing permission of one conversation ("Always allow"). `kind` is "tool" (`rule`
    is a Claude Code permission rule, e.g. ``Bash(npm test:*)`` or ``Edit``) or "host" (`rule`
    is a host name the sandbox may connect to)."""

    grant_id: int
    conversation_key: str
    kind: str
    rule: str
    granted_by: str
    granted_at: float


@dataclass(frozen=True, slots=True)
class CronJob:
    """A scheduled prompt of one conversation (/cron). `schedule` is a five-field cron
    expression, read in CRON_TZ by the bot (nothing here interprets it). `handled_until` is the
    latest due time already run or skipped; `paused` says why the job is paused (None: it
    runs); `last_outcome` is a one-line note of its latest run or skip, for /cron list."""

    job_id: int
    conversation_key: str
    chat_id: str
    creator_open_id: str
    schedule: str
    prompt: str
    created_at: float
    handled_until: float
    counted_since: float
    paused: str | None
    last_outcome: str
    last_outcome_at: float | None


@dataclass(frozen=True, slots=True)
class CronRun:
    """One run of a job as the turn journal has it (newest first from `cron_runs`)."""

    due: float
    status: TurnStatus
    error: str | None
    created_at: float
