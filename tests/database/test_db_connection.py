"""connection.py: the PRAGMAs every connection gets, busy classification, import hygiene."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from database.connection import BUSY_TIMEOUT_MS, connect, is_busy


async def test_connect_sets_wal_busy_timeout_synchronous_and_foreign_keys(tmp_path: Path):
    conn = await connect(tmp_path / "x.db")
    try:

        async def pragma(name: str):
            rows = await conn.execute_fetchall(f"PRAGMA {name}")
            return next(iter(rows))[0]

        assert await pragma("journal_mode") == "wal"
        assert await pragma("busy_timeout") == BUSY_TIMEOUT_MS == 5000
        assert await pragma("synchronous") == 1  # NORMAL
        assert await pragma("foreign_keys") == 1
        assert conn.isolation_level is None  # autocommit: only explicit transactions
    finally:
        await conn.close()


def test_is_busy_recognises_a_real_locked_error(tmp_path: Path):
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            other.execute("BEGIN IMMEDIATE")
        assert is_busy(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("no such table: t"),
        sqlite3.IntegrityError("UNIQUE constraint failed"),
        ValueError("database is locked"),  # right words, wrong type
    ],
)
def test_is_busy_rejects_other_errors(exc: BaseException):
    assert not is_busy(exc)


def test_database_imports_alone_without_feishu_bot_or_side_effects(python: str, child_env):
    code = (
        "import sys, threading\n"
        "import database, database.connection, database.migrations, database.models,"
        " database.store\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'feishu_bot'], 'feishu_bot'\n"
        "assert threading.active_count() == 1, 'a thread was started at import'\n"
    )
    result = subprocess.run(
        [python, "-c", code], env=child_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
