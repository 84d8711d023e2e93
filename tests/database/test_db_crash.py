"""Crash safety: a writer killed with SIGKILL mid-write leaves a file that opens, passes
`PRAGMA integrity_check`, and holds every transaction that was reported committed."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from database import SessionStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

# Prints the number of messages committed so far after every commit.
_STORE_WRITER = """
import asyncio, sys
from database import SessionStore

async def main(path):
    store = await SessionStore.open(path)
    n = 0
    while True:
        turn_id = await store.accept_message(
            f"om_{n}", conversation_key="k", chat_id="c", prompt="x" * 8000,
            reply_in_thread=False,
        )
        assert turn_id is not None
        n += 1
        print(n, flush=True)

asyncio.run(main(sys.argv[1]))
"""

# Big multi-row transactions on a connection set up like ours, so the kill almost always lands
# inside one: a torn transaction must vanish completely.
_BATCH = 50
_SQLITE_WRITER = f"""
import sqlite3, sys

db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = NORMAL")
n = 0
while True:
    db.execute("BEGIN IMMEDIATE")
    for _ in range({_BATCH}):
        db.execute(
            "INSERT INTO processed_messages (message_id, seen_at) VALUES (?, ?)",
            ("om_%08d_" % n + "y" * 3000, float(n)),
        )
        n += 1
    db.execute("COMMIT")
    print(n, flush=True)
"""


async def run_and_kill(python: str, code: str, db_path: Path, env: dict, at_least: int) -> int:
    """Start the writer, read its commit reports until `at_least`, SIGKILL it; return the
    last count it reported (it may have committed more before the signal landed)."""
    proc = await asyncio.create_subprocess_exec(
        python,
        "-c",
        code,
        str(db_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    committed = 0
    try:
        async with asyncio.timeout(60):
            while committed < at_least:
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError((await proc.stderr.read()).decode())
                committed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return committed


def raw_integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


async def test_store_writer_killed_mid_write(db_path: Path, python: str, child_env: dict):
    committed = await run_and_kill(python, _STORE_WRITER, db_path, child_env, at_least=200)
    assert Path(f"{db_path}-wal").exists()  # killed, so the WAL was never checkpointed away

    async with await SessionStore.open(db_path) as store:
        assert await store.integrity_check() == []
        pending = await store.pending_turns()
        accepted = {t.message_id for t in pending}
        assert {f"om_{n}" for n in range(committed)} <= accepted
        # Every journal row has its processed id and vice versa: no half transaction.
        for n in range(len(pending) + 1):
            assert await store.mark_processed(f"om_{n}") is (f"om_{n}" not in accepted)
    assert raw_integrity(db_path) == "ok"


async def test_batch_writer_killed_mid_transaction(db_path: Path, python: str, child_env: dict):
    async with await SessionStore.open(db_path):
        pass  # the schema
    committed = await run_and_kill(python, _SQLITE_WRITER, db_path, child_env, at_least=20 * _BATCH)

    async with await SessionStore.open(db_path) as store:
        assert await store.integrity_check() == []
        assert await store.ping()
    db = sqlite3.connect(db_path)
    try:
        (rows,) = db.execute("SELECT COUNT(*) FROM processed_messages").fetchone()
        (top,) = db.execute("SELECT MAX(seen_at) FROM processed_messages").fetchone()
    finally:
        db.close()
    assert rows >= committed
    assert rows % _BATCH == 0  # whole transactions only
    assert top == rows - 1  # and no gaps: the surviving ones are a prefix
    assert raw_integrity(db_path) == "ok"
