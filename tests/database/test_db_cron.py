"""Schema v4 in a real SQLite file: cron jobs and their runs in the journal (the exactly-once
key), permission modes, spend sums, the quoted message of a turn, recalled kept attachments,
and the upgrade of a v3 file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from database import SessionStore
from database.connection import connect
from database.cron import parse_run_message_id, run_message_id
from database.migrations import STEPS, migrate
from tests.database.conftest import FakeClock

KEY = "p2p:oc_1"


async def add(store: SessionStore, key: str = KEY, *, limit: int = 10, **kw):
    values = {"chat_id": "oc_1", "creator_open_id": "ou_a", "schedule": "* * * * *",
              "prompt": "tick", "max_per_conversation": limit}
    values.update(kw)
    return await store.add_cron_job(key, **values)


async def run(store: SessionStore, job_id: int, due: float, status: str = "done") -> int | None:
    turn = await store.accept_message(
        run_message_id(job_id, due), conversation_key=KEY, chat_id="oc_1", prompt="tick",
        reply_in_thread=False, sender_open_id="ou_a",
    )
    if turn is not None:
        await store.update_turn(turn, status=status, error="boom" if status == "failed" else None)
    return turn


def test_run_message_ids_round_trip() -> None:
    assert run_message_id(3, 1_700_000_060.0) == "cron:3:1700000060"
    assert parse_run_message_id("cron:3:1700000060") == (3, 1_700_000_060.0)
    assert parse_run_message_id("om_123") is None
    assert parse_run_message_id("cron:x:1") is None


async def test_jobs_are_added_up_to_the_limit_and_listed_per_conversation(
    store: SessionStore, clock: FakeClock
) -> None:
    first = await add(store, limit=2)
    assert first is not None and first.handled_until == first.created_at == clock.now
    assert first.paused is None and first.last_outcome == ""
    assert await add(store, limit=2, now=clock.now + 5) is not None
    assert await add(store, limit=2) is None  # the third is over the limit
    assert await add(store, "group:oc_2", limit=2, chat_id="oc_2") is not None
    assert [j.job_id for j in await store.list_cron_jobs(KEY)] == [1, 2]
    assert len(await store.list_cron_jobs()) == 3
    assert (await store.get_cron_job(2)).handled_until == clock.now + 5  # the caller's clock


async def test_pause_resume_and_remove(store: SessionStore, clock: FakeClock) -> None:
    job = await add(store)
    assert await store.pause_cron_job(job.job_id, "paused with /cron pause")
    assert not await store.pause_cron_job(job.job_id, "again")  # already paused
    assert await store.list_cron_jobs(active_only=True) == []
    clock.advance(3600)
    assert await store.resume_cron_job(job.job_id)
    resumed = await store.get_cron_job(job.job_id)
    # runs due while it was paused are not made up; earlier failures no longer count
    assert resumed.paused is None and resumed.handled_until == resumed.counted_since == clock.now
    assert not await store.resume_cron_job(job.job_id)
    assert await store.remove_cron_job(job.job_id)
    assert not await store.remove_cron_job(job.job_id)
    assert await store.get_cron_job(job.job_id) is None


async def test_handled_due_times_never_move_backwards(store: SessionStore) -> None:
    job = await add(store)
    later = job.handled_until + 120
    await store.handle_cron_due(job.job_id, later, "started")
    await store.handle_cron_due(job.job_id, later - 60, "late news")
    again = await store.get_cron_job(job.job_id)
    assert again.handled_until == later and again.last_outcome == "late news"
    await store.note_cron_outcome(job.job_id, "ok")
    assert (await store.get_cron_job(job.job_id)).last_outcome == "ok"


async def test_a_due_time_is_journaled_once_and_runs_are_listed_per_job(
    store: SessionStore, clock: FakeClock
) -> None:
    t = clock.now
    assert await run(store, 1, t) is not None
    assert await run(store, 1, t) is None  # the same (job, due time) again: refused
    await run(store, 1, t + 60, "failed")
    await run(store, 10, t + 60)  # job 10's ids sort right after job 1's: not mixed in
    await run(store, 2, t + 60)
    runs = await store.cron_runs(1, limit=5)
    assert [(r.due, r.status) for r in runs] == [(t + 60, "failed"), (t, "done")]
    assert runs[0].error == "boom"
    assert [r.due for r in await store.cron_runs(10)] == [t + 60]
    await run(store, 1, t + 120)
    assert [r.due for r in await store.cron_runs(1, since=t + 60)] == [t + 120, t + 60]


async def test_permission_modes(store: SessionStore) -> None:
    assert await store.permission_mode(KEY) is None
    await store.set_permission_mode(KEY, "plan")
    await store.set_permission_mode(KEY, "default")
    assert await store.permission_mode(KEY) == "default"
    await store.set_permission_mode(KEY, None)
    assert await store.permission_mode(KEY) is None


async def test_spent_since_sums_recorded_costs_per_sender(
    store: SessionStore, clock: FakeClock
) -> None:
    for i, (who, cost) in enumerate([("ou_a", 0.5), ("ou_a", 0.25), ("ou_b", 1.0)]):
        turn = await store.accept_message(
            f"om_{i}", conversation_key=KEY, chat_id="oc_1", prompt="x",
            reply_in_thread=False, sender_open_id=who,
        )
        await store.update_turn(turn, status="done", cost_usd=cost)
        clock.advance(100)
    assert await store.spent_since(0) == 1.75
    assert await store.spent_since(0, "ou_a") == 0.75
    assert await store.spent_since(clock.now - 150, "ou_a") == 0.0  # the later one was ou_b's
    assert await store.spent_since(clock.now - 150) == 1.0
    assert await store.spent_since(0, "ou_nobody") == 0.0


async def test_a_turns_quoted_message_is_journaled(store: SessionStore) -> None:
    turn_id = await store.accept_message(
        "om_q", conversation_key=KEY, chat_id="oc_1", prompt="why?", reply_in_thread=False,
        quoted_message_id="om_parent",
    )
    turn = await store.turn_of_message("om_q")
    assert turn is not None and turn.id == turn_id and turn.quoted_message_id == "om_parent"
    assert (await store.get_turn(turn_id)).quoted_message_id == "om_parent"
    assert await store.turn_of_message("om_unknown") is None


async def test_a_recalled_kept_attachment_is_dropped_once(store: SessionStore) -> None:
    assert await store.keep_message(
        "om_img", conversation_key=KEY, chat_id="oc_1", reply_in_thread=False,
        attachments_json='[{"kind": "image", "key": "img_1", "name": "", "size": null}]',
    )
    assert await store.drop_kept_message("om_img")
    assert not await store.drop_kept_message("om_img")
    assert await store.claim_kept(KEY, "om_text", since=0) == []  # nothing left to take


async def test_a_v4_file_is_upgraded_keeping_its_turns(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    conn = await connect(path)
    try:
        await migrate(conn, steps=STEPS[:4])
        await conn.execute(
            "INSERT INTO turns (message_id, conversation_key, chat_id, prompt, reply_in_thread,"
            " created_at, updated_at) VALUES ('om_old', 'p2p:oc_1', 'oc_1', 'old', 0, 1, 1)"
        )
    finally:
        await conn.close()
    async with await SessionStore.open(path) as store:
        old = await store.turn_of_message("om_old")
        assert old is not None and old.prompt == "old" and old.quoted_message_id is None
        assert await store.list_cron_jobs() == []
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
    db.close()
