"""The schema, as an ordered list of migration steps versioned by `PRAGMA user_version`.

`STEPS[n - 1]` upgrades a database from version n-1 to version n; version 0 is an empty file.
To add version 2, write one `async def _v2_...(conn)` and append it to `STEPS`; never edit a
step that has shipped, because files in the field already ran it.

Invariants:
- All pending steps run in ONE `BEGIN IMMEDIATE` transaction together with the
  `user_version` bumps, so a failed or interrupted upgrade leaves the file at its old version
  with none of the new step's changes (SQLite DDL is transactional).
- The version is re-read under the write lock, so two processes opening the same old file at
  once do not both run a step.
- A file whose version is newer than the code knows is never touched: `SchemaTooNewError`.

A step receives the connection inside that transaction. It must not COMMIT, must not use
`executescript` (the sqlite3 module COMMITs before a script) and cannot change
`PRAGMA foreign_keys` (a no-op inside a transaction); a step that rebuilds a table must keep
the data consistent by itself.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import aiosqlite

__all__ = [
    "SCHEMA_VERSION",
    "STEPS",
    "SchemaTooNewError",
    "Step",
    "current_version",
    "migrate",
]

Step = Callable[[aiosqlite.Connection], Awaitable[None]]


class SchemaTooNewError(RuntimeError):
    """The file was written by a newer version of the bot; this code must not touch it."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this code supports ({supported}); "
            "run a newer bot or restore a backup"
        )
        self.found = found
        self.supported = supported


_V1_STATEMENTS: Final = (
    # One row per conversation key (a p2p chat, a group, or one topic of a group).
    # Timestamps are UTC epoch seconds (REAL) everywhere in this schema.
    """
    CREATE TABLE conversations (
        key            TEXT PRIMARY KEY,
        chat_id        TEXT NOT NULL,
        chat_type      TEXT NOT NULL,
        thread_root    TEXT,
        session_id     TEXT,
        workdir        TEXT NOT NULL,
        model          TEXT,
        created_at     REAL NOT NULL,
        last_activity  REAL NOT NULL,
        turn_count     INTEGER NOT NULL DEFAULT 0,
        total_cost_usd REAL NOT NULL DEFAULT 0
    )
    """,
    # Partial index: wipe_stale_sessions only visits conversations that still hold a session,
    # so old conversations whose session was already wiped cost nothing on later sweeps.
    """
    CREATE INDEX conversations_session_activity
        ON conversations (last_activity) WHERE session_id IS NOT NULL
    """,
    # Feishu message ids already handled, for exactly-once handling across restarts.
    """
    CREATE TABLE processed_messages (
        message_id TEXT PRIMARY KEY,
        seen_at    REAL NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX processed_messages_seen_at ON processed_messages (seen_at)",
    # The turn journal: one row per accepted message, kept after the processed id is pruned.
    # AUTOINCREMENT so a turn id is never reused, even after rows are deleted.
    """
    CREATE TABLE turns (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id       TEXT NOT NULL UNIQUE,
        conversation_key TEXT NOT NULL,
        chat_id          TEXT NOT NULL,
        prompt           TEXT NOT NULL,
        reply_in_thread  INTEGER NOT NULL CHECK (reply_in_thread IN (0, 1)),
        status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN
                             ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        exit_code        INTEGER,
        duration_ms      INTEGER,
        cost_usd         REAL,
        error            TEXT,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL
    )
    """,
    # Serves turn_counts (GROUP BY status, covering) and pending_turns (status IN ...).
    "CREATE INDEX turns_status ON turns (status, id)",
)


async def _execute_all(conn: aiosqlite.Connection, statements: tuple[str, ...]) -> None:
    for statement in statements:
        await conn.execute(statement)


async def _v1_initial_schema(conn: aiosqlite.Connection) -> None:
    await _execute_all(conn, _V1_STATEMENTS)


_V2_STATEMENTS: Final = (
    # Who sent a journaled turn (access is checked again before a replayed turn runs), its
    # attachments as JSON [{"kind","key","name","size"}] (keys, never bytes), and the ids of the
    # reaction and "queued" card it showed, so recovery can clean them up.
    "ALTER TABLE turns ADD COLUMN sender_open_id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE turns ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE turns ADD COLUMN reaction_id TEXT",
    "ALTER TABLE turns ADD COLUMN card_message_id TEXT",
    "CREATE INDEX turns_created ON turns (created_at)",
    # Tools a person allowed for good in one conversation ("Always allow"); /new clears them.
    """
    CREATE TABLE tool_grants (
        conversation_key TEXT NOT NULL,
        tool             TEXT NOT NULL,
        granted_by       TEXT NOT NULL,
        granted_at       REAL NOT NULL,
        PRIMARY KEY (conversation_key, tool)
    ) WITHOUT ROWID
    """,
    # The Claude sessions a conversation has used, for /sessions and /resume.
    """
    CREATE TABLE sessions (
        session_id       TEXT PRIMARY KEY,
        conversation_key TEXT NOT NULL,
        created_at       REAL NOT NULL,
        last_used_at     REAL NOT NULL,
        turns            INTEGER NOT NULL DEFAULT 0,
        first_prompt     TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID
    """,
    "CREATE INDEX sessions_conversation ON sessions (conversation_key, last_used_at)",
)


async def _v2_warm_cards_files(conn: aiosqlite.Connection) -> None:
    await _execute_all(conn, _V2_STATEMENTS)


_V3_STATEMENTS: Final = (
    # Scoped grants (safe controls): a Claude Code permission rule ("Bash(npm test:*)",
    # "Edit") or a host, which the CLI matches itself. The v2 rows named a bare tool, which
    # allowed every use of it: they are dropped, and each conversation that had some gets a
    # notice that /permissions shows once.
    """
    CREATE TABLE permission_grants (
        grant_id         INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_key TEXT NOT NULL,
        kind             TEXT NOT NULL,
        rule             TEXT NOT NULL,
        granted_by       TEXT NOT NULL,
        granted_at       REAL NOT NULL,
        UNIQUE (conversation_key, kind, rule)
    )
    """,
    """
    CREATE TABLE grant_notices (
        conversation_key TEXT PRIMARY KEY,
        notice           TEXT NOT NULL
    ) WITHOUT ROWID
    """,
    """
    INSERT INTO grant_notices (conversation_key, notice)
    SELECT conversation_key, group_concat(tool, ', ') FROM tool_grants GROUP BY conversation_key
    """,
    "DROP TABLE tool_grants",
)


async def _v3_scoped_grants(conn: aiosqlite.Connection) -> None:
    await _execute_all(conn, _V3_STATEMENTS)


_V4_STATEMENTS: Final = (
    # Kept attachments get a table of their own (they were 'done' journal rows marked in
    # `error`, which every history query had to leave out). Waiting and claimed ones move;
    # dropped ones ('kept-dropped') are gone.
    """
    CREATE TABLE kept_attachments (
        message_id       TEXT PRIMARY KEY,
        conversation_key TEXT NOT NULL,
        chat_id          TEXT NOT NULL,
        sender_open_id   TEXT NOT NULL DEFAULT '',
        attachments      TEXT NOT NULL,
        reply_in_thread  INTEGER NOT NULL,
        kept_at          REAL NOT NULL,
        claimed_by       TEXT
    ) WITHOUT ROWID
    """,
    "CREATE INDEX kept_waiting ON kept_attachments (conversation_key, claimed_by, kept_at)",
    """
    INSERT INTO kept_attachments (message_id, conversation_key, chat_id, sender_open_id,
        attachments, reply_in_thread, kept_at, claimed_by)
    SELECT message_id, conversation_key, chat_id, sender_open_id, attachments, reply_in_thread,
        created_at, CASE WHEN error = 'kept' THEN NULL ELSE substr(error, 6) END
    FROM turns WHERE error = 'kept' OR error LIKE 'kept>%'
    """,
    "DELETE FROM turns WHERE error LIKE 'kept%'",
)


async def _v4_kept_attachments(conn: aiosqlite.Connection) -> None:
    await _execute_all(conn, _V4_STATEMENTS)


_V5_STATEMENTS: Final = (
    # Scheduled prompts (/cron). `handled_until` is the latest due time already run or skipped
    # (epoch seconds), so a restart resumes after it; each run is also journaled as a turn with
    # the message id 'cron:<job_id>:<due epoch>', which makes it exactly-once. `paused` holds
    # why a job is paused (NULL = active). Failures in a row are counted among the job's runs
    # due at or after `counted_since` (set again by /cron resume).
    """
    CREATE TABLE cron_jobs (
        job_id           INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_key TEXT NOT NULL,
        chat_id          TEXT NOT NULL,
        creator_open_id  TEXT NOT NULL,
        schedule         TEXT NOT NULL,
        prompt           TEXT NOT NULL,
        created_at       REAL NOT NULL,
        handled_until    REAL NOT NULL,
        counted_since    REAL NOT NULL,
        paused           TEXT,
        last_outcome     TEXT NOT NULL DEFAULT '',
        last_outcome_at  REAL
    )
    """,
    "CREATE INDEX cron_jobs_conversation ON cron_jobs (conversation_key, job_id)",
    # A conversation's permission mode chosen with /mode (no row: CLAUDE_PERMISSION_MODE).
    """
    CREATE TABLE conversation_modes (
        conversation_key TEXT PRIMARY KEY,
        mode             TEXT NOT NULL
    ) WITHOUT ROWID
    """,
    # The message a turn's message replied to (quoted), so a replayed turn fetches it again.
    "ALTER TABLE turns ADD COLUMN quoted_message_id TEXT",
    # Today's spend of one user (CLAUDE_USER_DAILY_USD) without scanning other users' turns.
    "CREATE INDEX turns_sender_created ON turns (sender_open_id, created_at)",
)


async def _v5_cron_modes_quotes(conn: aiosqlite.Connection) -> None:
    await _execute_all(conn, _V5_STATEMENTS)


STEPS: Final[tuple[Step, ...]] = (
    _v1_initial_schema,
    _v2_warm_cards_files,
    _v3_scoped_grants,
    _v4_kept_attachments,
    _v5_cron_modes_quotes,
)
SCHEMA_VERSION: Final = len(STEPS)


async def current_version(conn: aiosqlite.Connection) -> int:
    """The file's `PRAGMA user_version` (0 for a new, empty file)."""
    rows = await conn.execute_fetchall("PRAGMA user_version")
    return int(next(iter(rows))[0])


async def migrate(conn: aiosqlite.Connection, steps: Sequence[Step] = STEPS) -> int:
    """Bring the file up to `len(steps)` and return that version.

    `steps` is a parameter so tests can run a longer, test-only list. Does not retry on
    SQLITE_BUSY by itself; the caller wraps it (see `connection.busy_retrying`). The
    connection must be in autocommit mode with no open transaction.
    """
    target = len(steps)
    found = await current_version(conn)
    if found > target:
        raise SchemaTooNewError(found, target)
    if found == target:
        return found  # the common case: no write lock taken at all
    await conn.execute("BEGIN IMMEDIATE")
    try:
        found = await current_version(conn)
        if found > target:
            raise SchemaTooNewError(found, target)
        for version in range(found + 1, target + 1):
            await steps[version - 1](conn)
            # PRAGMA takes no bound parameters; `version` is an int we computed.
            await conn.execute(f"PRAGMA user_version = {version:d}")
        await conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")
        raise
    return target
