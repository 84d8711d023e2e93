"""Opening SQLite connections with the PRAGMAs the store relies on, and the busy-retry policy.

Every connection the bot opens goes through `connect`, so every connection agrees on:
- `journal_mode=WAL`: readers never block the writer and a killed process cannot corrupt the
  file (the WAL is replayed or discarded on the next open).
- `busy_timeout=5000`: a writer waits up to 5 s for another connection's write lock before
  SQLite reports SQLITE_BUSY ("database is locked").
- `synchronous=NORMAL`: in WAL mode a commit survives a process crash; only an OS crash or
  power loss can lose the last few commits, never corrupt the file.
- `foreign_keys=ON`: SQLite leaves it off by default and it is per connection.

The connection is in autocommit mode (`isolation_level=None`): the Python `sqlite3` module
opens no implicit transactions, so every transaction is an explicit `BEGIN IMMEDIATE ...
COMMIT` written by the store or by `migrations.migrate`.

This module does not create parent directories or run migrations; `SessionStore.open` does.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

import aiosqlite
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

__all__ = [
    "BUSY_RETRY_ATTEMPTS",
    "BUSY_TIMEOUT_MS",
    "busy_retrying",
    "connect",
    "is_busy",
]

BUSY_TIMEOUT_MS: Final = 5000
# SQLite's own busy handler already waits BUSY_TIMEOUT_MS; these retries cover the SQLITE_BUSY
# cases that bypass the handler (a stale WAL snapshot, WAL recovery after a crash, a
# read-to-write upgrade refused to avoid deadlock) and a second process holding the lock longer.
BUSY_RETRY_ATTEMPTS: Final = 4

_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6


def is_busy(exc: BaseException) -> bool:
    """True when `exc` is SQLITE_BUSY/SQLITE_LOCKED, i.e. safe to retry the whole transaction."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        # Extended codes (SQLITE_BUSY_SNAPSHOT = 517, ...) keep the primary code in the low byte.
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc).lower()
    return "database is locked" in message or "database is busy" in message


def busy_retrying(attempts: int = BUSY_RETRY_ATTEMPTS) -> AsyncRetrying:
    """A tenacity policy that retries only busy/locked errors, with short jittered backoff.

    Use it around a *whole* transaction (BEGIN ... COMMIT), never around one statement of an
    open transaction: after SQLITE_BUSY the transaction must be rolled back and started again.
    """
    return AsyncRetrying(
        retry=retry_if_exception(is_busy),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.01, min=0.01, max=0.25) + wait_random(0, 0.01),
        reraise=True,
    )


async def connect(
    path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> aiosqlite.Connection:
    """Open `path` with the PRAGMAs above and `sqlite3.Row` rows; the caller owns closing it.

    `busy_timeout_ms` exists for tests that need SQLITE_BUSY to surface at once.
    An in-memory database (":memory:") keeps journal_mode "memory"; everything else is WAL.
    """
    conn = await aiosqlite.connect(str(path), isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        conn.row_factory = sqlite3.Row
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        async for attempt in busy_retrying():
            with attempt:
                await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn
