"""Conversations: creation, session/workdir/model changes, totals, the stale-session sweep."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from database import Conversation, SessionStore

if TYPE_CHECKING:
    from conftest import FakeClock

KEY = "thread:oc_1:om_root"
HOUR = 3600.0


async def make(store: SessionStore, key: str = KEY, workdir: str = "/srv/a") -> Conversation:
    return await store.ensure_conversation(
        key, chat_id="oc_1", chat_type="group", thread_root="om_root", workdir=workdir
    )


async def test_get_conversation_of_an_unknown_key_is_none(store: SessionStore):
    assert await store.get_conversation(KEY) is None


async def test_ensure_creates_then_returns_the_existing_row_unchanged(
    store: SessionStore, clock: FakeClock
):
    created_at = clock.now
    created = await make(store)
    assert created == Conversation(
        key=KEY,
        chat_id="oc_1",
        chat_type="group",
        thread_root="om_root",
        session_id=None,
        workdir="/srv/a",
        model=None,
        created_at=created_at,
        last_activity=created_at,
        turn_count=0,
        total_cost_usd=0.0,
    )
    await store.set_session(KEY, "sid-1")
    clock.advance(60)
    again = await make(store, workdir=Path("/srv/other"))
    assert again == await store.get_conversation(KEY)
    assert (again.workdir, again.session_id) == ("/srv/a", "sid-1")
    assert (again.created_at, again.last_activity) == (created_at, created_at)


async def test_set_session_touches_last_activity_and_clear_session_does_not(
    store: SessionStore, clock: FakeClock
):
    await make(store)
    clock.advance(90)
    await store.set_session(KEY, "sid-1")
    conv = await store.get_conversation(KEY)
    assert (conv.session_id, conv.last_activity) == ("sid-1", clock.now)
    clock.advance(90)
    await store.clear_session(KEY)
    conv = await store.get_conversation(KEY)
    assert (conv.session_id, conv.last_activity) == (None, clock.now - 90)


async def test_set_workdir_clears_the_session(store: SessionStore):
    await make(store)
    await store.set_session(KEY, "sid-1")
    await store.set_workdir(KEY, Path("/srv/b"))
    conv = await store.get_conversation(KEY)
    assert (conv.workdir, conv.session_id) == ("/srv/b", None)


async def test_set_model_and_back_to_default(store: SessionStore):
    await make(store)
    await store.set_session(KEY, "sid-1")
    await store.set_model(KEY, "claude-opus-4")
    conv = await store.get_conversation(KEY)
    assert (conv.model, conv.session_id) == ("claude-opus-4", "sid-1")
    await store.set_model(KEY, None)
    assert (await store.get_conversation(KEY)).model is None


async def test_record_turn_counts_and_sums_cost(store: SessionStore, clock: FakeClock):
    await make(store)
    for cost in (0.25, 0.5, 0.0):
        clock.advance(10)
        await store.record_turn(KEY, cost_usd=cost)
    conv = await store.get_conversation(KEY)
    assert (conv.turn_count, conv.total_cost_usd, conv.last_activity) == (3, 0.75, clock.now)


async def test_mutators_on_an_unknown_key_do_not_create_it(store: SessionStore):
    await store.set_session("nope", "sid")
    await store.clear_session("nope")
    await store.set_workdir("nope", "/x")
    await store.set_model("nope", "m")
    await store.record_turn("nope", cost_usd=1.0)
    assert await store.get_conversation("nope") is None


# -- the stale-session sweep ---------------------------------------------------------------


async def seed(store: SessionStore, clock: FakeClock, key: str, *, at: float, sid: str | None):
    clock.now = at
    await make(store, key)
    if sid is not None:
        await store.set_session(key, sid)


async def test_wipe_stale_sessions_boundary(store: SessionStore, clock: FakeClock):
    now = 1_800_000_000.0
    cutoff = now - 24 * HOUR
    await seed(store, clock, "just-over", at=cutoff - 0.5, sid="s1")  # older than the cutoff
    await seed(store, clock, "way-over", at=cutoff - 30 * 24 * HOUR, sid="s2")
    await seed(store, clock, "at-cutoff", at=cutoff, sid="s3")  # not older: kept
    await seed(store, clock, "just-under", at=cutoff + 0.5, sid="s4")
    await seed(store, clock, "no-session", at=cutoff - 48 * HOUR, sid=None)  # not counted

    assert await store.wipe_stale_sessions(24, now=now) == 2

    sessions = {
        k: (await store.get_conversation(k)).session_id
        for k in ("just-over", "way-over", "at-cutoff", "just-under", "no-session")
    }
    assert sessions == {
        "just-over": None,
        "way-over": None,
        "at-cutoff": "s3",
        "just-under": "s4",
        "no-session": None,
    }
    # Only the session is forgotten; the activity time is history and stays.
    assert (await store.get_conversation("just-over")).last_activity == cutoff - 0.5
    assert await store.wipe_stale_sessions(24, now=now) == 0


async def test_wipe_stale_sessions_defaults_to_the_store_clock(
    store: SessionStore, clock: FakeClock
):
    await seed(store, clock, "k", at=1_000_000.0, sid="s")
    clock.now = 1_000_000.0 + 2 * HOUR - 1
    assert await store.wipe_stale_sessions(2) == 0
    clock.advance(2)
    assert await store.wipe_stale_sessions(2) == 1
    assert await store.wipe_stale_sessions(0.5, now=clock.now) == 0


async def test_wipe_stale_sessions_uses_the_partial_index(store: SessionStore, db_path: Path):
    # The 100 000-row timing lives in benchmarks/store_bench.py; here only the plan is pinned.
    with sqlite3.connect(db_path) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN UPDATE conversations SET session_id = NULL"
            " WHERE session_id IS NOT NULL AND last_activity < ?",
            (0.0,),
        ).fetchall()
    db.close()
    assert any("USING INDEX conversations_session_activity" in row[-1] for row in plan), plan


@pytest.mark.parametrize("hours", [0, 1.5, 720])
async def test_wipe_with_nothing_stored_returns_zero(store: SessionStore, hours: float):
    assert await store.wipe_stale_sessions(hours) == 0
