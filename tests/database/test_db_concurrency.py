"""Exactly-once acceptance under concurrency: one store, two connections, two processes;
and the busy/locked retry around whole transactions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from database import SessionStore
from database.connection import BUSY_RETRY_ATTEMPTS


def accept_kwargs(n: int) -> dict:
    return {
        "conversation_key": "group:oc_1",
        "chat_id": "oc_1",
        "prompt": f"attempt {n}",
        "reply_in_thread": False,
    }


async def test_100_concurrent_accepts_of_one_id_on_one_store(store: SessionStore):
    results = await asyncio.gather(
        *(store.accept_message("om_dup", **accept_kwargs(n)) for n in range(100))
    )
    firsts = [r for r in results if r is not None]
    assert len(firsts) == 1 and isinstance(firsts[0], int)
    assert results.count(None) == 99
    assert [t.id for t in await store.pending_turns()] == firsts


async def test_100_concurrent_mark_processed_of_one_id(store: SessionStore):
    results = await asyncio.gather(*(store.mark_processed("om_dup") for _ in range(100)))
    assert results.count(True) == 1 and results.count(False) == 99


async def test_100_concurrent_accepts_across_two_connections(db_path: Path):
    async with await SessionStore.open(db_path) as one, await SessionStore.open(db_path) as two:
        results = await asyncio.gather(
            *(
                (one if n % 2 else two).accept_message("om_dup", **accept_kwargs(n))
                for n in range(100)
            )
        )
        assert sum(r is not None for r in results) == 1
        assert len(await one.pending_turns()) == len(await two.pending_turns()) == 1


_ACCEPTOR = """
import asyncio, json, sys
from database import SessionStore

async def main(path, count):
    async with await SessionStore.open(path) as store:
        print("ready", flush=True)
        sys.stdin.readline()  # wait for "go", so both processes race
        won = []
        for n in range(count):
            turn_id = await store.accept_message(
                f"om_{n}", conversation_key="k", chat_id="c", prompt="p", reply_in_thread=False
            )
            if turn_id is not None:
                won.append(n)
        print(json.dumps(won), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_two_processes_accept_each_message_exactly_once(
    db_path: Path, python: str, child_env: dict[str, str]
):
    count = 300
    async with await SessionStore.open(db_path):
        pass  # migrate first so both children only race on messages
    procs = [
        await asyncio.create_subprocess_exec(
            python,
            "-c",
            _ACCEPTOR,
            str(db_path),
            str(count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=child_env,
        )
        for _ in range(2)
    ]
    try:
        async with asyncio.timeout(60):
            for proc in procs:
                assert await proc.stdout.readline() == b"ready\n"
            for proc in procs:
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            outputs = [await proc.stdout.readline() for proc in procs]
            codes = [await proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert codes == [0, 0]
    won = [set(json.loads(line)) for line in outputs]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(range(count))
    async with await SessionStore.open(db_path) as store:
        assert (await store.turn_counts())["queued"] == count


# -- SQLITE_BUSY retry ---------------------------------------------------------------------


def hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


async def count_begins(store: SessionStore, on_begin=None) -> list[str]:
    begins: list[str] = []

    def trace(statement: str) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            begins.append(statement)
            if on_begin is not None:
                on_begin(len(begins))

    # White-box: the trace hook is the only deterministic way to act between two attempts.
    await store._conn.set_trace_callback(trace)
    return begins


async def test_a_busy_write_is_retried_as_a_whole_transaction(db_path: Path):
    async with await SessionStore.open(db_path, busy_timeout_ms=0) as store:
        holder = hold_write_lock(db_path)

        def release_on_second_attempt(attempt: int) -> None:
            if attempt == 2:
                holder.execute("ROLLBACK")

        begins = await count_begins(store, release_on_second_attempt)
        assert await store.accept_message("om_1", **accept_kwargs(1)) is not None
        assert len(begins) == 2  # attempt 1: SQLITE_BUSY; attempt 2: the lock was free
        assert len(await store.pending_turns()) == 1
        holder.close()


async def test_busy_retries_give_up_and_leave_the_store_usable(db_path: Path):
    async with await SessionStore.open(db_path, busy_timeout_ms=0) as store:
        holder = hold_write_lock(db_path)
        begins = await count_begins(store)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.mark_processed("om_1")
        assert len(begins) == BUSY_RETRY_ATTEMPTS
        assert await store.ping()  # reads still work while another connection writes
        holder.execute("ROLLBACK")
        holder.close()
        assert await store.mark_processed("om_1") is True


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locking semantics")
async def test_a_reader_never_blocks_a_writer_in_wal_mode(db_path: Path):
    async with await SessionStore.open(db_path, busy_timeout_ms=0) as store:
        reader = sqlite3.connect(db_path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM processed_messages").fetchone()  # holds a snapshot
        try:
            assert await store.mark_processed("om_1") is True
        finally:
            reader.execute("ROLLBACK")
            reader.close()
