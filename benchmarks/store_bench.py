"""Benchmark of `SessionStore` hot spots; prints a table, asserts nothing.

    .venv/bin/python benchmarks/store_bench.py [--conversations 100000] [--checks 5000]

1. `wipe_stale_sessions` over N conversations that all hold a session, half of them stale,
   timed as the first call on a freshly opened store (the SQLite page cache is cold; the OS
   file cache is not). Repeated, with the sessions restored between rounds.
2. The same call again on the same store, when nothing is stale (the steady state).
3. `mark_processed` throughput: new ids one await at a time, already-seen ids, and new ids
   issued concurrently with asyncio.gather; `accept_message` one at a time.

Seeding writes rows with the stdlib `sqlite3` module in one transaction, because 100 000
`ensure_conversation` + `set_session` calls would time the seeding, not the sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from database import SessionStore

STALE_HOURS = 24.0


def seed_conversations(path: Path, count: int, now: float) -> None:
    stale_at = now - 48 * 3600
    fresh_at = now - 1 * 3600
    rows = [
        (
            f"p2p:oc_{i:06d}",
            f"oc_{i:06d}",
            "p2p",
            None,
            f"session-{i:06d}",
            f"/srv/work/{i % 50}",
            None,
            stale_at if i % 2 == 0 else fresh_at,
            stale_at if i % 2 == 0 else fresh_at,
            i % 7,
            0.01 * (i % 13),
        )
        for i in range(count)
    ]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO conversations (key, chat_id, chat_type, thread_root, session_id,"
            " workdir, model, created_at, last_activity, turn_count, total_cost_usd)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    db.close()


def restore_sessions(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE conversations SET session_id = 'session-' || chat_id")
    db.close()


async def time_wipe(path: Path, *, now: float, expected: int, rounds: int) -> tuple[list, list]:
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(rounds):
        restore_sessions(path)
        async with await SessionStore.open(path) as store:
            started = time.perf_counter()
            wiped = await store.wipe_stale_sessions(STALE_HOURS, now=now)
            cold.append(time.perf_counter() - started)
            if wiped != expected:
                raise SystemExit(f"wiped {wiped}, expected {expected}")
            started = time.perf_counter()
            again = await store.wipe_stale_sessions(STALE_HOURS, now=now)
            warm.append(time.perf_counter() - started)
            if again != 0:
                raise SystemExit(f"second sweep wiped {again}")
    return cold, warm


async def time_checks(path: Path, checks: int) -> list[tuple[str, int, float]]:
    results: list[tuple[str, int, float]] = []
    async with await SessionStore.open(path) as store:
        started = time.perf_counter()
        for i in range(checks):
            assert await store.mark_processed(f"om_new_{i}")
        results.append(
            ("mark_processed, new id, sequential", checks, time.perf_counter() - started)
        )

        started = time.perf_counter()
        for i in range(checks):
            assert not await store.mark_processed(f"om_new_{i}")
        results.append(
            ("mark_processed, seen id, sequential", checks, time.perf_counter() - started)
        )

        started = time.perf_counter()
        firsts = await asyncio.gather(*(store.mark_processed(f"om_par_{i}") for i in range(checks)))
        assert all(firsts)
        results.append(("mark_processed, new id, gather", checks, time.perf_counter() - started))

        started = time.perf_counter()
        for i in range(checks):
            turn_id = await store.accept_message(
                f"om_turn_{i}",
                conversation_key="p2p:oc_000001",
                chat_id="oc_000001",
                prompt="please summarise the last build log " * 4,
                reply_in_thread=False,
            )
            assert turn_id is not None
        results.append(
            ("accept_message, new id, sequential", checks, time.perf_counter() - started)
        )
    return results


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--checks", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="store_bench_") as tmp:
        path = Path(tmp) / "bench.db"
        async with await SessionStore.open(path):
            pass  # create the schema
        now = time.time()
        started = time.perf_counter()
        seed_conversations(path, args.conversations, now)
        seeded = time.perf_counter() - started
        expected = (args.conversations + 1) // 2

        cold, warm = await time_wipe(path, now=now, expected=expected, rounds=args.rounds)
        checks = await time_checks(path, args.checks)
        size_mb = path.stat().st_size / 1e6

    print(f"conversations: {args.conversations}  stale: {expected}  file: {size_mb:.1f} MB")
    print(f"seeded in {seeded:.2f} s (stdlib sqlite3, one transaction)")
    print()
    print(f"{'measurement':44} {'median':>11} {'min':>11} {'max':>11}")
    for label, samples in (
        (f"wipe_stale_sessions, fresh open ({expected} wiped)", cold),
        ("wipe_stale_sessions, nothing stale", warm),
    ):
        print(
            f"{label:44} {ms(statistics.median(samples)):>11}"
            f" {ms(min(samples)):>11} {ms(max(samples)):>11}"
        )
    print()
    print(f"{'operation':44} {'count':>7} {'total':>11} {'per second':>11}")
    for label, count, seconds in checks:
        print(f"{label:44} {count:>7} {ms(seconds):>11} {count / seconds:>11.0f}")


if __name__ == "__main__":
    asyncio.run(main())
