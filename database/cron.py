"""Store methods for scheduled prompts (/cron): the jobs, and their runs as the journal has them.

`CronMixin` is a base class of `SessionStore` and uses its plumbing (`_write`, `_fetchall`,
`_clock`). A run of a job is an ordinary journaled turn whose message id is
``cron:<job_id>:<due epoch seconds>`` (`run_message_id`): the journal's unique message id
makes each (job, due time) run at most once, whatever crashes or catch-ups happen, and the
run's outcome is the turn's status. Nothing here reads a schedule or decides when a job is due
(the cron runner does); `/new` does not touch jobs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiosqlite

from database.models import CronJob, CronRun, TurnStatus

__all__ = ["RUN_PREFIX", "CronMixin", "parse_run_message_id", "run_message_id"]

RUN_PREFIX: Final = "cron:"
_COLUMNS: Final = (
    "job_id, conversation_key, chat_id, creator_open_id, schedule, prompt, created_at, "
    "handled_until, counted_since, paused, last_outcome, last_outcome_at"
)


def run_message_id(job_id: int, due: float) -> str:
    """The journal's message id of one run: the exactly-once key (job, due time)."""
    return f"{RUN_PREFIX}{int(job_id)}:{int(due)}"


def parse_run_message_id(message_id: str) -> tuple[int, float] | None:
    """(job_id, due) of a run's message id, None for any other message id."""
    if not message_id.startswith(RUN_PREFIX):
        return None
    job, _, due = message_id[len(RUN_PREFIX) :].partition(":")
    if not (job.isdigit() and due.isdigit()):
        return None
    return int(job), float(due)


def _job(row: sqlite3.Row) -> CronJob:
    return CronJob(
        job_id=int(row["job_id"]),
        conversation_key=row["conversation_key"],
        chat_id=row["chat_id"],
        creator_open_id=row["creator_open_id"],
        schedule=row["schedule"],
        prompt=row["prompt"],
        created_at=float(row["created_at"]),
        handled_until=float(row["handled_until"]),
        counted_since=float(row["counted_since"]),
        paused=row["paused"],
        last_outcome=row["last_outcome"],
        last_outcome_at=row["last_outcome_at"],
    )


class CronMixin:
    """Jobs per conversation and their runs; see the module docstring."""

    # Provided by SessionStore.
    _clock: Callable[[], float]
    _write: Callable[..., Awaitable[Any]]
    _fetchall: Callable[..., Awaitable[list[sqlite3.Row]]]

    async def add_cron_job(
        self,
        conversation_key: str,
        *,
        chat_id: str,
        creator_open_id: str,
        schedule: str,
        prompt: str,
        max_per_conversation: int,
        now: float | None = None,
    ) -> CronJob | None:
        """Create an active job whose runs are the due times after `now` (default: the
        store's clock; the scheduler passes its own); None when the conversation already has
        `max_per_conversation` jobs (checked in the same transaction)."""
        now = self._clock() if now is None else now

        async def body(conn: aiosqlite.Connection) -> CronJob | None:
            [(count,)] = await conn.execute_fetchall(
                "SELECT COUNT(*) FROM cron_jobs WHERE conversation_key = ?", (conversation_key,)
            )
            if int(count) >= max_per_conversation:
                return None
            rows = await conn.execute_fetchall(
                "INSERT INTO cron_jobs (conversation_key, chat_id, creator_open_id, schedule,"
                " prompt, created_at, handled_until, counted_since)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
                (conversation_key, chat_id, creator_open_id, schedule, prompt, now, now, now),
            )
            return _job(next(iter(rows)))

        return await self._write(body)

    async def get_cron_job(self, job_id: int) -> CronJob | None:
        rows = await self._fetchall(f"SELECT {_COLUMNS} FROM cron_jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    async def list_cron_jobs(
        self, conversation_key: str | None = None, *, active_only: bool = False
    ) -> list[CronJob]:
        """One conversation's jobs (None: every conversation's), oldest first."""
        where, params = [], []
        if conversation_key is not None:
            where.append("conversation_key = ?")
            params.append(conversation_key)
        if active_only:
            where.append("paused IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetchall(
            f"SELECT {_COLUMNS} FROM cron_jobs{clause} ORDER BY job_id", params
        )
        return [_job(row) for row in rows]

    async def remove_cron_job(self, job_id: int) -> bool:
        """Delete a job (its journaled runs stay, as every turn does); False if unknown."""

        async def body(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute("DELETE FROM cron_jobs WHERE job_id = ?", (job_id,))
            try:
                return cursor.rowcount > 0
            finally:
                await cursor.close()

        return bool(await self._write(body))

    async def pause_cron_job(self, job_id: int, reason: str) -> bool:
        """Pause an active job, saying why; False if it is unknown or already paused."""

        async def body(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE cron_jobs SET paused = ? WHERE job_id = ? AND paused IS NULL",
                (reason, job_id),
            )
            try:
                return cursor.rowcount > 0
            finally:
                await cursor.close()

        return bool(await self._write(body))

    async def resume_cron_job(self, job_id: int, *, now: float | None = None) -> bool:
        """Make a paused job active again from `now` on: due times of the pause are not made
        up, and earlier failures no longer count. False if it is unknown or not paused."""
        now = self._clock() if now is None else now

        async def body(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE cron_jobs SET paused = NULL, handled_until = MAX(handled_until, ?),"
                " counted_since = ? WHERE job_id = ? AND paused IS NOT NULL",
                (now, now, job_id),
            )
            try:
                return cursor.rowcount > 0
            finally:
                await cursor.close()

        return bool(await self._write(body))

    async def handle_cron_due(self, job_id: int, due: float, outcome: str) -> None:
        """Record that due time `due` was run or skipped (`outcome` says which, for
        /cron list). `handled_until` never moves backwards."""
        now = self._clock()

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE cron_jobs SET handled_until = MAX(handled_until, ?), last_outcome = ?,"
                " last_outcome_at = ? WHERE job_id = ?",
                (due, outcome, now, job_id),
            )

        await self._write(body)

    async def note_cron_outcome(self, job_id: int, outcome: str) -> None:
        """Replace the job's last outcome (a run it started has ended)."""
        now = self._clock()

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE cron_jobs SET last_outcome = ?, last_outcome_at = ? WHERE job_id = ?",
                (outcome, now, job_id),
            )

        await self._write(body)

    async def cron_runs(self, job_id: int, *, since: float = 0.0, limit: int = 3) -> list[CronRun]:
        """The job's latest `limit` runs, newest first, of those due at or after `since` (a
        range over the unique message-id index: ids ``cron:<job>:…`` sort between
        ``cron:<job>:`` and ``cron:<job>;``; runs are journaled in due order)."""
        low = f"{RUN_PREFIX}{int(job_id)}:"
        high = f"{RUN_PREFIX}{int(job_id)};"
        rows = await self._fetchall(
            "SELECT message_id, status, error, created_at FROM turns WHERE message_id >= ?"
            " AND message_id < ? ORDER BY id DESC LIMIT ?",
            (low, high, max(0, int(limit))),
        )
        runs = []
        for row in rows:
            parsed = parse_run_message_id(str(row["message_id"]))
            if parsed is None or parsed[1] < since:
                continue
            runs.append(
                CronRun(
                    due=parsed[1],
                    status=TurnStatus(row["status"]),
                    error=row["error"],
                    created_at=float(row["created_at"]),
                )
            )
        return runs
