"""migrations.py: versioning with PRAGMA user_version, all-or-nothing upgrades, newer files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from database import SCHEMA_VERSION, SchemaTooNewError, SessionStore
from database.connection import connect
from database.migrations import STEPS, current_version, migrate


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    return version


def schema_objects(path: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
    db.close()
    return set(rows)


async def _vnext_add_label(conn: aiosqlite.Connection) -> None:
    """A test-only next version: what a real next migration would look like."""
    await conn.execute("ALTER TABLE conversations ADD COLUMN label TEXT NOT NULL DEFAULT ''")
    await conn.execute("UPDATE conversations SET label = 'migrated:' || key")


async def test_empty_file_is_migrated_to_the_current_version(db_path: Path):
    async with await SessionStore.open(db_path):
        pass
    assert db_path.parent.is_dir()
    assert user_version(db_path) == SCHEMA_VERSION == len(STEPS) == 5
    assert schema_objects(db_path) >= {
        ("table", "conversations"),
        ("table", "processed_messages"),
        ("table", "turns"),
        ("index", "conversations_session_activity"),
        ("index", "processed_messages_seen_at"),
        ("index", "turns_status"),
        ("index", "turns_created"),
        ("table", "permission_grants"),
        ("table", "grant_notices"),
        ("table", "kept_attachments"),
        ("table", "sessions"),
        ("index", "sessions_conversation"),
        ("table", "cron_jobs"),
        ("index", "cron_jobs_conversation"),
        ("table", "conversation_modes"),
        ("index", "turns_sender_created"),
    }


async def test_reopening_is_idempotent_and_keeps_data(db_path: Path):
    async with await SessionStore.open(db_path) as store:
        await store.ensure_conversation(
            "p2p:oc_1", chat_id="oc_1", chat_type="p2p", thread_root=None, workdir="/w"
        )
        turn_id = await store.accept_message(
            "om_1", conversation_key="p2p:oc_1", chat_id="oc_1", prompt="hi", reply_in_thread=False
        )
    objects = schema_objects(db_path)
    for _ in range(2):
        async with await SessionStore.open(db_path) as store:
            assert (await store.get_conversation("p2p:oc_1")) is not None
            assert (await store.get_turn(turn_id)).prompt == "hi"
    assert user_version(db_path) == SCHEMA_VERSION
    assert schema_objects(db_path) == objects


async def test_a_step_runs_once_even_when_migrate_is_called_again(tmp_path: Path):
    calls: list[str] = []

    async def step(conn: aiosqlite.Connection) -> None:
        calls.append("v1")
        await conn.execute("CREATE TABLE t (x)")

    conn = await connect(tmp_path / "x.db")
    try:
        assert await migrate(conn, steps=[step]) == 1
        assert await migrate(conn, steps=[step]) == 1
    finally:
        await conn.close()
    assert calls == ["v1"]


async def test_two_connections_migrating_one_new_file_run_each_step_once(tmp_path: Path):
    calls: list[str] = []

    async def step(conn: aiosqlite.Connection) -> None:
        calls.append("v1")
        await conn.execute("CREATE TABLE t (x)")  # would fail ("already exists") if run twice

    first, second = await connect(tmp_path / "x.db"), await connect(tmp_path / "x.db")
    try:
        assert await asyncio.gather(migrate(first, [step]), migrate(second, [step])) == [1, 1]
    finally:
        await first.close()
        await second.close()
    assert calls == ["v1"]


async def test_upgrade_from_the_previous_version_keeps_data(db_path: Path):
    db_path.parent.mkdir(parents=True)
    conn = await connect(db_path)
    try:
        assert await migrate(conn, steps=STEPS[:1]) == 1  # a file a v1 bot wrote, with data
        now = 1_700_000_000.0
        for n in range(3):
            await conn.execute(
                "INSERT INTO conversations (key, chat_id, chat_type, workdir, session_id,"
                " created_at, last_activity) VALUES (?, ?, 'p2p', '/w', ?, ?, ?)",
                (f"p2p:oc_{n}", f"oc_{n}", f"sid-{n}", now, now),
            )
        await conn.execute(
            "INSERT INTO turns (message_id, conversation_key, chat_id, prompt, reply_in_thread,"
            " status, created_at, updated_at) VALUES ('om_1', 'p2p:oc_0', 'oc_0', 'hi', 1,"
            " 'queued', ?, ?)",
            (now, now),
        )
    finally:
        await conn.close()
    assert user_version(db_path) == 1

    async with await SessionStore.open(db_path) as store:  # the real later steps
        [turn] = await store.pending_turns()
        assert (turn.message_id, turn.prompt, turn.reply_in_thread) == ("om_1", "hi", True)
        assert (turn.sender_open_id, turn.attachments) == ("", ())
        assert (turn.reaction_id, turn.card_message_id) == (None, None)
        assert (await store.get_conversation("p2p:oc_2")).session_id == "sid-2"
    assert user_version(db_path) == SCHEMA_VERSION

    conn = await connect(db_path)
    try:
        assert await migrate(conn, steps=(*STEPS, _vnext_add_label)) == SCHEMA_VERSION + 1
        assert await current_version(conn) == SCHEMA_VERSION + 1
    finally:
        await conn.close()

    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT key, session_id, label FROM conversations ORDER BY key"
        ).fetchall()
        turns = db.execute("SELECT message_id, prompt, reply_in_thread FROM turns").fetchall()
    db.close()
    assert rows == [(f"p2p:oc_{n}", f"sid-{n}", f"migrated:p2p:oc_{n}") for n in range(3)]
    assert turns == [("om_1", "hi", 1)]
    assert user_version(db_path) == SCHEMA_VERSION + 1


async def test_a_failing_step_leaves_the_file_at_its_old_version_untouched(db_path: Path):
    async with await SessionStore.open(db_path) as store:
        await store.mark_processed("om_1")
    before = schema_objects(db_path)

    async def broken_next(conn: aiosqlite.Connection) -> None:
        await conn.execute("CREATE TABLE half_done (x)")
        await conn.execute("DELETE FROM processed_messages")
        raise RuntimeError("step failed half-way")

    conn = await connect(db_path)
    try:
        with pytest.raises(RuntimeError, match="half-way"):
            await migrate(conn, steps=(*STEPS, broken_next))
        assert not conn.in_transaction
    finally:
        await conn.close()
    assert user_version(db_path) == SCHEMA_VERSION
    assert schema_objects(db_path) == before
    async with await SessionStore.open(db_path) as store:
        assert await store.mark_processed("om_1") is False  # the row survived the rollback


async def test_a_file_newer_than_the_code_is_refused_and_left_alone(db_path: Path):
    async with await SessionStore.open(db_path) as store:
        await store.mark_processed("om_1")
    conn = await connect(db_path)
    try:
        await migrate(conn, steps=(*STEPS, _vnext_add_label))
    finally:
        await conn.close()

    newer = SCHEMA_VERSION + 1
    with pytest.raises(SchemaTooNewError, match=f"version {newer} is newer") as caught:
        await SessionStore.open(db_path)
    assert (caught.value.found, caught.value.supported) == (newer, SCHEMA_VERSION)
    assert user_version(db_path) == newer
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM processed_messages").fetchone() == (1,)
    db.close()


async def test_v3_drops_unscoped_grants_and_leaves_one_notice_per_conversation(db_path: Path):
    """Safe controls #4: a v2 grant named a bare tool ("Bash": every command, for good). The
    migration drops those; /permissions reads the notice once."""
    db_path.parent.mkdir(parents=True)
    conn = await connect(db_path)
    try:
        assert await migrate(conn, steps=STEPS[:2]) == 2
        for key, tool in (("p2p:a", "Bash"), ("p2p:a", "Edit"), ("group:b", "Bash")):
            await conn.execute(
                "INSERT INTO tool_grants VALUES (?, ?, 'ou_x', 1700000000.0)", (key, tool)
            )
        await conn.commit()
    finally:
        await conn.close()
    async with await SessionStore.open(db_path) as store:
        assert await store.list_grants("p2p:a") == []
        assert await store.take_grant_notice("p2p:a") == "Bash, Edit"
        assert await store.take_grant_notice("p2p:a") is None  # once
        assert await store.take_grant_notice("group:b") == "Bash"
        await store.add_grant("p2p:a", "tool", "Bash(npm test:*)", "ou_y")
        await store.add_grant("p2p:a", "host", "example.com", "ou_y")
        grants = await store.list_grants("p2p:a")
        assert [(g.kind, g.rule, g.granted_by) for g in grants] == [
            ("tool", "Bash(npm test:*)", "ou_y"),
            ("host", "example.com", "ou_y"),
        ]
        assert not await store.remove_grant("group:b", grants[0].grant_id)  # not its grant
        assert await store.remove_grant("p2p:a", grants[0].grant_id)
        assert [g.rule for g in await store.list_grants("p2p:a")] == ["example.com"]
        assert await store.clear_grants("p2p:a") == 1


async def test_v4_moves_kept_attachments_out_of_the_journal(db_path: Path):
    """Issue 17: kept attachments were fake 'done' turns marked in `error`. Waiting and
    claimed ones move to kept_attachments; dropped ones go; real turns stay."""
    db_path.parent.mkdir(parents=True)
    conn = await connect(db_path)
    try:
        assert await migrate(conn, steps=STEPS[:3]) == 3
        rows = [
            ("om_wait", "kept", "ou_a"),
            ("om_took", "kept>om_q", "ou_a"),
            ("om_gone", "kept-dropped", "ou_a"),
            ("om_q", None, "ou_a"),
        ]
        for n, (mid, error, who) in enumerate(rows):
            await conn.execute(
                "INSERT INTO turns (message_id, conversation_key, chat_id, prompt,"
                " reply_in_thread, status, error, attachments, sender_open_id, created_at,"
                " updated_at) VALUES (?, 'p2p:oc_1', 'oc_1', '', 0, 'done', ?, ?, ?, ?, ?)",
                (mid, error, f'[{{"kind": "image", "key": "img_{n}"}}]', who, 100.0 + n, 100.0),
            )
        await conn.commit()
    finally:
        await conn.close()
    async with await SessionStore.open(db_path) as store:
        assert await store.drop_kept("p2p:oc_other") == 0
    assert raw_rows(db_path, "SELECT message_id FROM turns") == [("om_q",)]
    assert raw_rows(
        db_path, "SELECT message_id, claimed_by, sender_open_id FROM kept_attachments"
        " ORDER BY message_id"
    ) == [("om_took", "om_q", "ou_a"), ("om_wait", None, "ou_a")]
    async with await SessionStore.open(db_path) as store:
        # the waiting one, kept before om_q was journaled, goes with it too, in kept order
        claimed = await store.claim_kept("p2p:oc_1", "om_q", since=0)
        assert [mid for mid, _ in claimed] == ["om_wait", "om_took"]
        assert await store.drop_kept("p2p:oc_1") == 0  # nothing waits any more


def raw_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(sql).fetchall()
    db.close()
    return rows
