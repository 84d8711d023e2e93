"""Store methods over the schema-v2 additions: a turn's UI ids, the sessions a conversation
used (/sessions, /resume), turn statistics (/status, /stats) and scheduled retention.

`HistoryMixin` is a base class of `SessionStore` and uses its plumbing (`_write`, `_fetchall`,
`_clock`): same lock, same BEGIN IMMEDIATE transactions, same busy retries. It lives in its own
module only to keep `store.py` readable.

Retention (`prune`), the defaults documented in the README:
- journal rows older than `JOURNAL_RETENTION_DAYS` (30), except turns still queued or running
  (a restart owes them);
- processed message ids older than `PROCESSED_RETENTION_DAYS` (7; Feishu stops redelivering
  after hours, and a journal row still deduplicates its message while it is kept);
- `sessions` rows beyond the newest `SESSIONS_KEPT_PER_CONVERSATION` (20) of each conversation,
  never the session a conversation currently uses. Their ids are returned so the caller can
  delete the transcripts (this package never touches files other than its database).
Deletes run in batches of `PRUNE_BATCH` rows, one short transaction each, so journaling a new
message (which must finish within the ack deadline) never waits behind a long delete.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import aiosqlite

from database.models import PruneResult, SessionInfo, TurnStats

__all__ = [
    "FIRST_PROMPT_MAX",
    "JOURNAL_RETENTION_DAYS",
    "PROCESSED_RETENTION_DAYS",
    "PRUNE_BATCH",
    "SESSIONS_KEPT_PER_CONVERSATION",
    "HistoryMixin",
]

JOURNAL_RETENTION_DAYS: Final = 30.0
PROCESSED_RETENTION_DAYS: Final = 7.0
SESSIONS_KEPT_PER_CONVERSATION: Final = 20
PRUNE_BATCH: Final = 500
FIRST_PROMPT_MAX: Final = 200

T = TypeVar("T")

_SESSION_COLUMNS: Final = (
    "session_id, conversation_key, created_at, last_used_at, turns, first_prompt"
)


def _session(row: sqlite3.Row) -> SessionInfo:
    return SessionInfo(
        session_id=row["session_id"],
        conversation_key=row["conversation_key"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        turns=row["turns"],
        first_prompt=row["first_prompt"],
    )


class HistoryMixin:
    """Sessions, turn UI ids, statistics and retention; see the module docstring."""

    # Provided by SessionStore.
    _clock: Callable[[], float]
    _write: Callable[..., Awaitable[Any]]
    _fetchall: Callable[..., Awaitable[list[sqlite3.Row]]]

    # -- a turn's reaction and card ------------------------------------------------------

    async def latest_finished_turn(self, conversation_key: str) -> int | None:
        """The id of the conversation's newest turn that has ended (whatever its outcome),
        or None: the card whose New session button still counts."""
        rows = await self._fetchall(
            "SELECT MAX(id) FROM turns WHERE conversation_key = ? AND status IN"
            " ('done', 'failed', 'cancelled', 'interrupted')",
            (conversation_key,),
        )
        value = rows[0][0] if rows else None
        return int(value) if value is not None else None

    async def set_turn_ui(
        self,
        turn_id: int,
        *,
        reaction_id: str | None = None,
        card_message_id: str | None = None,
    ) -> bool:
        """Record the "working" reaction and/or the card a turn shows, so recovery after a
        crash can remove them. None leaves a field as it is, "" clears it. True if the turn
        exists."""
        fields: dict[str, str | None] = {}
        if reaction_id is not None:
            fields["reaction_id"] = reaction_id or None
        if card_message_id is not None:
            fields["card_message_id"] = card_message_id or None
        if not fields:
            rows = await self._fetchall("SELECT 1 FROM turns WHERE id = ?", (turn_id,))
            return bool(rows)
        # Column names come from the fixed set above, never from the caller.
        assignments = ", ".join(f"{column} = ?" for column in fields)

        async def body(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                f"UPDATE turns SET {assignments}, updated_at = ? WHERE id = ?",
                (*fields.values(), self._clock(), turn_id),
            )
            try:
                return cursor.rowcount > 0
            finally:
                await cursor.close()

        return bool(await self._write(body))

    # -- sessions ------------------------------------------------------------------------

    async def touch_session(
        self,
        conversation_key: str,
        session_id: str,
        first_prompt: str = "",
        *,
        replaces: str | None = None,
    ) -> None:
        """Count one turn of `session_id`: insert it (created now, 1 turn, `first_prompt` cut
        to 200 characters) or bump `last_used_at` and `turns`.

        `replaces`: the session this one was forked from (`--fork-session` gives every resumed
        turn a new id). Its row, if any, is carried over to `session_id` with its
        `created_at`, `first_prompt` and turn count, so /sessions shows one conversation
        thread, not one row per turn.
        """
        now = self._clock()
        prompt = first_prompt[:FIRST_PROMPT_MAX]

        async def body(conn: aiosqlite.Connection) -> None:
            if replaces and replaces != session_id:
                rows = list(
                    await conn.execute_fetchall(
                        "DELETE FROM sessions WHERE session_id = ? AND conversation_key = ?"
                        " RETURNING created_at, turns, first_prompt",
                        (replaces, conversation_key),
                    )
                )
                if rows:
                    created_at, turns, old_prompt = rows[0]
                    await conn.execute(
                        f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (session_id) DO UPDATE SET last_used_at = excluded"
                        ".last_used_at, turns = sessions.turns + excluded.turns",
                        (session_id, conversation_key, created_at, now, turns + 1, old_prompt),
                    )
                    return
            await conn.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, 1, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET last_used_at = excluded.last_used_at,"
                " turns = sessions.turns + 1, first_prompt = CASE WHEN sessions.first_prompt"
                " = '' THEN excluded.first_prompt ELSE sessions.first_prompt END",
                (session_id, conversation_key, now, now, prompt),
            )

        await self._write(body)

    async def list_sessions(self, conversation_key: str, limit: int = 10) -> list[SessionInfo]:
        """The conversation's sessions, most recently used first."""
        rows = await self._fetchall(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE conversation_key = ?"
            " ORDER BY last_used_at DESC, created_at DESC LIMIT ?",
            (conversation_key, max(0, int(limit))),
        )
        return [_session(row) for row in rows]

    async def get_session_info(self, session_id: str) -> SessionInfo | None:
        rows = await self._fetchall(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
        )
        return _session(rows[0]) if rows else None

    # -- statistics ----------------------------------------------------------------------

    async def p2p_chat_of(self, open_id: str) -> str | None:
        """The chat_id of the bot's private chat with ``open_id``, from the newest journaled
        turn of that user there; None when the journal knows of none (the bot menu's events
        name the user only)."""
        rows = await self._fetchall(
            "SELECT chat_id FROM turns WHERE sender_open_id = ? "
            "AND conversation_key = 'p2p:' || chat_id ORDER BY id DESC LIMIT 1",
            (open_id,),
        )
        return str(rows[0]["chat_id"]) if rows else None

    async def turn_stats(
        self, conversation_key: str | None = None, since: float | None = None
    ) -> TurnStats:
        """Turns journalled at or after `since` (None: all kept), of one conversation or all
        (None)."""
        where = ["1"]
        params: list[Any] = []
        if conversation_key is not None:
            where.append("conversation_key = ?")
            params.append(conversation_key)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        clause = " AND ".join(where)
        [row] = await self._fetchall(
            "SELECT COUNT(*), COALESCE(SUM(status = 'done'), 0), COALESCE(SUM(cost_usd), 0),"
            f" COUNT(duration_ms) FROM turns WHERE {clause}",
            params,
        )
        count, ok, cost, timed = int(row[0]), int(row[1]), float(row[2]), int(row[3])
        median: float | None = None
        if timed:
            # The middle one or two values, found by SQLite rather than loaded into Python.
            middle = await self._fetchall(
                f"SELECT duration_ms FROM turns WHERE {clause} AND duration_ms IS NOT NULL"
                " ORDER BY duration_ms LIMIT ? OFFSET ?",
                (*params, 2 - timed % 2, (timed - 1) // 2),
            )
            values = [float(r[0]) for r in middle]
            median = sum(values) / len(values)
        return TurnStats(count=count, ok=ok, median_duration_ms=median, total_cost_usd=cost)

    # -- retention -----------------------------------------------------------------------

    async def prune(
        self,
        now: float | None = None,
        *,
        journal_days: float = JOURNAL_RETENTION_DAYS,
        processed_days: float = PROCESSED_RETENTION_DAYS,
        sessions_kept: int = SESSIONS_KEPT_PER_CONVERSATION,
        batch: int = PRUNE_BATCH,
    ) -> PruneResult:
        """Apply the retention policy once (see the module docstring); returns what went."""
        now = self._clock() if now is None else now
        turns = await self._delete_batched(
            "DELETE FROM turns WHERE id IN (SELECT id FROM turns WHERE created_at < ?"
            " AND status NOT IN ('queued', 'running') LIMIT ?)",
            (now - journal_days * 86400,),
            batch,
        )
        processed = await self._delete_batched(
            "DELETE FROM processed_messages WHERE message_id IN (SELECT message_id FROM"
            " processed_messages WHERE seen_at < ? LIMIT ?)",
            (now - processed_days * 86400,),
            batch,
        )
        # Kept attachments are useful for minutes (their question comes soon); a claimed one
        # only for a replay of its turn, which the journal keeps as long.
        turns += await self._delete_batched(
            "DELETE FROM kept_attachments WHERE message_id IN (SELECT message_id FROM"
            " kept_attachments WHERE kept_at < ? LIMIT ?)",
            (now - journal_days * 86400,),
            batch,
        )
        sessions = await self._prune_sessions(max(0, int(sessions_kept)), batch)
        return PruneResult(turns=turns, processed=processed, sessions=sessions)

    async def _delete_batched(self, sql: str, params: Iterable[Any], batch: int) -> int:
        params = tuple(params)
        total = 0
        while True:

            async def body(conn: aiosqlite.Connection) -> int:
                cursor = await conn.execute(sql, (*params, batch))
                try:
                    return cursor.rowcount
                finally:
                    await cursor.close()

            removed = int(await self._write(body))
            total += removed
            if removed < batch:
                return total

    async def _prune_sessions(self, kept: int, batch: int) -> tuple[str, ...]:
        dropped: list[str] = []
        while True:

            async def body(conn: aiosqlite.Connection) -> list[str]:
                rows = await conn.execute_fetchall(
                    "SELECT session_id FROM (SELECT session_id, ROW_NUMBER() OVER (PARTITION BY"
                    " conversation_key ORDER BY last_used_at DESC, created_at DESC) AS rank"
                    " FROM sessions) WHERE rank > ? AND session_id NOT IN (SELECT session_id"
                    " FROM conversations WHERE session_id IS NOT NULL) LIMIT ?",
                    (kept, batch),
                )
                ids = [str(row[0]) for row in rows]
                await conn.executemany(
                    "DELETE FROM sessions WHERE session_id = ?", [(sid,) for sid in ids]
                )
                return ids

            ids = list(await self._write(body))
            dropped.extend(ids)
            if len(ids) < batch:
                return tuple(dropped)
