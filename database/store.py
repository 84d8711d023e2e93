"""`SessionStore`: the bot's only SQL, over one aiosqlite connection.

Ownership: the composition root opens one store per process (`await SessionStore.open(path)`)
and closes it on shutdown; everything else receives the store and never touches SQLite itself.

What it holds:
- conversations: per conversation key, the Claude session id, working directory, model and
  running totals;
- processed Feishu message ids, so a message redelivered after a reconnect or a restart is
  handled at most once;
- the turn journal: one row per accepted message, with the prompt, so turns that were queued
  or running when the process died can be found (`pending_turns`) and run or closed;
- through `database.history.HistoryMixin`: a turn's reaction/card ids, the sessions a
  conversation used, turn statistics, and the retention policy (`prune`);
- through `database.grants.GrantsMixin`: standing permissions ("Always allow") per
  conversation;
- through `database.kept.KeptMixin`: attachments sent without text, waiting for their
  sender's next question;
- through `database.cron.CronMixin`: scheduled prompts and their runs;
- through `database.modes.ModesMixin`: each conversation's permission mode (/mode);
- through `database.spend.SpendMixin`: what turns cost since a time (spending limits).

Invariants:
- One logical operation at a time: an `asyncio.Lock` serialises operations on the
  connection, because a transaction spans several awaits and aiosqlite would otherwise
  interleave another coroutine's statements into it.
- Every write is one explicit `BEGIN IMMEDIATE ... COMMIT`: the write lock is taken up front,
  so two processes sharing the file cannot both pass the "seen before?" check. A busy/locked
  error rolls back and retries the whole transaction (tenacity, a few short attempts).
- A write that has started finishes (commit or rollback) even if its caller is cancelled: the
  caller gets CancelledError and does not learn the outcome, but the connection is never left
  inside a half-done transaction.
- Timestamps are UTC epoch seconds from the injected `clock` (default `time.time`).

What it does not do: no business rules (who may use the bot, when a turn is retried, what a
status transition means); `update_turn` records whatever status it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import aiosqlite

from database.connection import BUSY_TIMEOUT_MS, busy_retrying, connect
from database.cron import CronMixin
from database.grants import GrantsMixin
from database.history import HistoryMixin
from database.kept import KeptMixin
from database.migrations import migrate
from database.models import PENDING_STATUSES, Conversation, Turn, TurnStatus
from database.modes import ModesMixin
from database.spend import SpendMixin

__all__ = ["SessionStore", "StoreClosedError"]

T = TypeVar("T")
Clock = Callable[[], float]

_CONVERSATION_COLUMNS: Final = (
    "key, chat_id, chat_type, thread_root, session_id, workdir, model, created_at, "
    "last_activity, turn_count, total_cost_usd"
)
_TURN_COLUMNS: Final = (
    "id, message_id, conversation_key, chat_id, prompt, reply_in_thread, status, attempts, "
    "exit_code, duration_ms, cost_usd, error, created_at, updated_at, sender_open_id, "
    "attachments, reaction_id, card_message_id, quoted_message_id"
)
_STATUS_VALUES: Final = frozenset(status.value for status in TurnStatus)


class StoreClosedError(RuntimeError):
    """The store was used after `close()`."""


def _attachment_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return {k: item.get(k) for k in ("kind", "key", "name", "size")}
    return {k: getattr(item, k, None) for k in ("kind", "key", "name", "size")}


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        key=row["key"],
        chat_id=row["chat_id"],
        chat_type=row["chat_type"],
        thread_root=row["thread_root"],
        session_id=row["session_id"],
        workdir=row["workdir"],
        model=row["model"],
        created_at=row["created_at"],
        last_activity=row["last_activity"],
        turn_count=row["turn_count"],
        total_cost_usd=row["total_cost_usd"],
    )


def _turn(row: sqlite3.Row) -> Turn:
    return Turn(
        id=row["id"],
        message_id=row["message_id"],
        conversation_key=row["conversation_key"],
        chat_id=row["chat_id"],
        prompt=row["prompt"],
        reply_in_thread=bool(row["reply_in_thread"]),
        status=TurnStatus(row["status"]),
        attempts=row["attempts"],
        exit_code=row["exit_code"],
        duration_ms=row["duration_ms"],
        cost_usd=row["cost_usd"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sender_open_id=row["sender_open_id"],
        attachments=tuple(json.loads(row["attachments"] or "[]")),
        reaction_id=row["reaction_id"],
        card_message_id=row["card_message_id"],
        quoted_message_id=row["quoted_message_id"],
    )


async def _rowcount(conn: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> int:
    cursor = await conn.execute(sql, tuple(params))
    try:
        return cursor.rowcount
    finally:
        await cursor.close()


class SessionStore(HistoryMixin, GrantsMixin, KeptMixin, CronMixin, ModesMixin, SpendMixin):
    """Conversations, processed message ids and the turn journal in one SQLite file.

    Build it with `await SessionStore.open(path)`; use it as an async context manager or call
    `close()`. Conversation mutators on an unknown key are no-ops (they never create a row:
    only `ensure_conversation` does).
    """

    def __init__(self, conn: aiosqlite.Connection, *, path: Path, clock: Clock) -> None:
        """Wrap an open, migrated connection. Prefer `open`, which does both."""
        self._conn: aiosqlite.Connection | None = conn
        self._path = path
        self._clock = clock
        self._lock = asyncio.Lock()

    # -- lifetime -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Clock = time.time,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> SessionStore:
        """Create the parent directory, open the file and migrate it to the current schema.

        Raises `SchemaTooNewError` (and closes the connection) if the file was written by a
        newer version of the bot.
        """
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = await connect(path, busy_timeout_ms=busy_timeout_ms)
        try:
            async for attempt in busy_retrying():
                with attempt:
                    await migrate(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path=path, clock=clock)

    async def close(self) -> None:
        """Wait for the running operation, then close the connection. Idempotent."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                # Cheap statistics refresh SQLite recommends before closing a connection.
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("PRAGMA optimize")
            finally:
                await conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        return self._path

    # -- plumbing -------------------------------------------------------------------------

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreClosedError("SessionStore is closed")
        return self._conn

    async def _write(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        # Shielded so a cancelled caller cannot stop a transaction between BEGIN and COMMIT.
        return await asyncio.shield(self._write_retrying(body))

    async def _write_retrying(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async for attempt in busy_retrying():
            with attempt:
                # The lock is taken per attempt so reads can run during the backoff sleep.
                async with self._lock:
                    return await self._transaction(self._connection(), body)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    @staticmethod
    async def _transaction(
        conn: aiosqlite.Connection, body: Callable[[aiosqlite.Connection], Awaitable[T]]
    ) -> T:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            result = await body(conn)
            await conn.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT (SQLITE_BUSY leaves the transaction open).
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
        return result

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async for attempt in busy_retrying():
            with attempt:
                async with self._lock:
                    rows = await self._connection().execute_fetchall(sql, tuple(params))
                    return list(rows)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _update_conversation(self, key: str, assignments: str, params: tuple) -> None:
        sql = f"UPDATE conversations SET {assignments} WHERE key = ?"

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute(sql, (*params, key))

        await self._write(body)

    # -- conversations --------------------------------------------------------------------

    async def get_conversation(self, key: str) -> Conversation | None:
        rows = await self._fetchall(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE key = ?", (key,)
        )
        return _conversation(rows[0]) if rows else None

    async def ensure_conversation(
        self,
        key: str,
        *,
        chat_id: str,
        chat_type: str,
        thread_root: str | None,
        workdir: str | Path,
    ) -> Conversation:
        """Create the conversation if it is missing; an existing one is returned unchanged
        (its workdir, session and last_activity are not touched)."""
        now = self._clock()

        async def body(conn: aiosqlite.Connection) -> Conversation:
            await conn.execute(
                "INSERT INTO conversations (key, chat_id, chat_type, thread_root, workdir,"
                " created_at, last_activity) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (key, chat_id, chat_type, thread_root, str(workdir), now, now),
            )
            rows = await conn.execute_fetchall(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE key = ?", (key,)
            )
            return _conversation(next(iter(rows)))

        return await self._write(body)

    async def set_session(self, key: str, session_id: str) -> None:
        """Bind the Claude session id to `key` and touch last_activity."""
        await self._update_conversation(
            key, "session_id = ?, last_activity = ?", (session_id, self._clock())
        )

    async def clear_session(self, key: str) -> None:
        """Forget the session: the next turn starts a new one. last_activity is unchanged."""
        await self._update_conversation(key, "session_id = NULL", ())

    async def set_workdir(self, key: str, workdir: str | Path) -> None:
        """Change the working directory and clear the session (a session is tied to its cwd)."""
        await self._update_conversation(key, "workdir = ?, session_id = NULL", (str(workdir),))

    async def set_model(self, key: str, model: str | None) -> None:
        """Set the model for `key`; None means the bot's default."""
        await self._update_conversation(key, "model = ?", (model,))

    async def record_turn(self, key: str, *, cost_usd: float) -> None:
        """Count one finished turn: turn_count + 1, total_cost_usd + cost, last_activity = now."""
        await self._update_conversation(
            key,
            "turn_count = turn_count + 1, total_cost_usd = total_cost_usd + ?, last_activity = ?",
            (float(cost_usd), self._clock()),
        )

    async def wipe_stale_sessions(
        self, older_than_hours: float, *, now: float | None = None
    ) -> int:
        """Clear session_id where last_activity < now - older_than_hours; return how many.

        Conversations without a session are neither touched nor counted; a conversation
        exactly at the cutoff is kept. Other columns, last_activity included, are unchanged.
        """
        cutoff = (self._clock() if now is None else now) - older_than_hours * 3600

        async def body(conn: aiosqlite.Connection) -> int:
            # The `session_id IS NOT NULL` term makes the partial index usable.
            return await _rowcount(
                conn,
                "UPDATE conversations SET session_id = NULL"
                " WHERE session_id IS NOT NULL AND last_activity < ?",
                (cutoff,),
            )

        return await self._write(body)

    # -- processed ids and the journal ----------------------------------------------------

    async def accept_message(
        self,
        message_id: str,
        *,
        conversation_key: str,
        chat_id: str,
        prompt: str,
        reply_in_thread: bool,
        sender_open_id: str = "",
        attachments: Iterable[Any] = (),
        quoted_message_id: str | None = None,
    ) -> int | None:
        """Record the message as processed and journal it as a 'queued' turn, atomically.

        `attachments` (Attachment-like objects or dicts with kind/key/name/size) are stored as
        JSON keys, never bytes, so a replayed turn can download them again.

        Returns the new turn id on first delivery, None if `message_id` was seen before
        (also when its processed row was pruned but its journal row remains).
        """
        now = self._clock()
        attached = json.dumps([_attachment_dict(a) for a in attachments], ensure_ascii=False)

        async def body(conn: aiosqlite.Connection) -> int | None:
            first = await conn.execute_fetchall(
                "INSERT INTO processed_messages (message_id, seen_at) VALUES (?, ?)"
                " ON CONFLICT (message_id) DO NOTHING RETURNING 1",
                (message_id, now),
            )
            if not first:
                return None
            rows = await conn.execute_fetchall(
                "INSERT INTO turns (message_id, conversation_key, chat_id, prompt,"
                " reply_in_thread, status, created_at, updated_at, sender_open_id, attachments,"
                " quoted_message_id) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)"
                " ON CONFLICT (message_id) DO NOTHING RETURNING id",
                (
                    message_id, conversation_key, chat_id, prompt, int(reply_in_thread),
                    now, now, sender_open_id, attached, quoted_message_id,
                ),
            )
            return next((int(row[0]) for row in rows), None)

        return await self._write(body)

    async def mark_processed(self, message_id: str) -> bool:
        """Record a message that is not a turn (a command, an ignored message). True the
        first time `message_id` is seen, False afterwards. No journal row is written."""
        now = self._clock()

        async def body(conn: aiosqlite.Connection) -> bool:
            rows = await conn.execute_fetchall(
                "INSERT INTO processed_messages (message_id, seen_at) VALUES (?, ?)"
                " ON CONFLICT (message_id) DO NOTHING RETURNING 1",
                (message_id, now),
            )
            return bool(rows)

        return await self._write(body)

    async def prune_processed(self, days: float = 7, *, now: float | None = None) -> int:
        """Delete processed ids seen before now - days; return how many.

        Feishu stops redelivering long before 7 days. Journal rows are kept (and still
        deduplicate `accept_message`); this does not prune the journal.
        """
        cutoff = (self._clock() if now is None else now) - days * 86400

        async def body(conn: aiosqlite.Connection) -> int:
            return await _rowcount(
                conn, "DELETE FROM processed_messages WHERE seen_at < ?", (cutoff,)
            )

        return await self._write(body)

    async def update_turn(
        self,
        turn_id: int,
        *,
        status: TurnStatus | str | None = None,
        attempts: int | None = None,
        exit_code: int | None = None,
        duration_ms: int | None = None,
        cost_usd: float | None = None,
        error: str | None = None,
    ) -> bool:
        """Set the given fields (None = leave unchanged) and updated_at; True if the turn exists.

        Raises ValueError for an unknown status. Any transition is accepted.
        """
        fields: dict[str, Any] = {}
        if status is not None:
            if status not in _STATUS_VALUES:
                raise ValueError(f"unknown turn status: {status!r}")
            fields["status"] = str(status)
        if attempts is not None:
            fields["attempts"] = attempts
        if exit_code is not None:
            fields["exit_code"] = exit_code
        if duration_ms is not None:
            fields["duration_ms"] = duration_ms
        if cost_usd is not None:
            fields["cost_usd"] = float(cost_usd)
        if error is not None:
            fields["error"] = error
        fields["updated_at"] = self._clock()
        # Column names come from the fixed set above, never from the caller.
        assignments = ", ".join(f"{column} = ?" for column in fields)

        async def body(conn: aiosqlite.Connection) -> bool:
            changed = await _rowcount(
                conn,
                f"UPDATE turns SET {assignments} WHERE id = ?",
                (*fields.values(), turn_id),
            )
            return changed > 0

        return await self._write(body)

    async def get_turn(self, turn_id: int) -> Turn | None:
        rows = await self._fetchall(f"SELECT {_TURN_COLUMNS} FROM turns WHERE id = ?", (turn_id,))
        return _turn(rows[0]) if rows else None

    async def turn_of_message(self, message_id: str) -> Turn | None:
        """The journal row of a message's turn, or None."""
        rows = await self._fetchall(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE message_id = ?", (message_id,)
        )
        return _turn(rows[0]) if rows else None

    async def pending_turns(self) -> list[Turn]:
        """Turns still queued or running, in the order they were accepted (oldest first)."""
        placeholders = ", ".join("?" for _ in PENDING_STATUSES)
        rows = await self._fetchall(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE status IN ({placeholders}) ORDER BY id",
            [str(status) for status in PENDING_STATUSES],
        )
        return [_turn(row) for row in rows]

    async def turn_counts(self) -> dict[str, int]:
        """Number of journalled turns per status; every status is present (0 if none)."""
        counts = {status.value: 0 for status in TurnStatus}
        rows = await self._fetchall("SELECT status, COUNT(*) FROM turns GROUP BY status")
        for row in rows:
            counts[row[0]] = int(row[1])
        return counts

    # -- health ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True if the connection answers `SELECT 1`; False if it is closed or failing."""
        try:
            rows = await self._fetchall("SELECT 1")
        except (StoreClosedError, sqlite3.Error, ValueError):
            # aiosqlite raises ValueError once its connection is closed underneath us.
            return False
        return bool(rows) and rows[0][0] == 1

    async def quick_check(self) -> list[str]:
        """`PRAGMA quick_check`: like `integrity_check` without the index cross-checks (about
        ten times faster); run once at start-up so a corrupt file is reported, not met later."""
        rows = await self._fetchall("PRAGMA quick_check")
        problems = [str(row[0]) for row in rows]
        return [] if problems == ["ok"] else problems

    async def integrity_check(self) -> list[str]:
        """Run `PRAGMA integrity_check`; return the problems found (empty when the file is ok).

        Reads every page: seconds on a large file. Meant for startup or tooling, not hot paths.
        """
        rows = await self._fetchall("PRAGMA integrity_check")
        problems = [str(row[0]) for row in rows]
        return [] if problems == ["ok"] else problems
