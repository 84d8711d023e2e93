"""Regression tests for the outside review's defects in the conversation flow (issue 12).

Each is named after its defect and goes through the real lark_oapi client and the simulator.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import StartBot, eventually, final_text
from tests.fakes.fake_anthropic import FakeAnthropic


def journal(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM turns ORDER BY id")]


async def test_malformed_event_answered_before_mention_and_access_checks(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    """#8: a stranger's malformed message in a group, not mentioning the bot, gets nothing."""
    running = await start_bot(FEISHU_ALLOW_ALL=False, FEISHU_ALLOWED_USERS="ou_friend")
    stranger = await sim.push_message(
        chat_type="group", msg_type="text", content={"text": 42}, sender_open_id="ou_stranger"
    )
    await sim.wait_ack(stranger)
    # addressed to the bot (p2p) by an allowed user: that one is answered
    friend = await sim.push_message(
        msg_type="text", content={"text": 42}, sender_open_id="ou_friend"
    )
    await final_text(sim, friend, contains="could not read")
    assert sim.replies_to(stranger) == []
    assert running.bot.dispatcher.counters.malformed == 2
    db = Path(running.settings.DATABASE_PATH)
    with sqlite3.connect(db) as conn:
        seen = {r[0] for r in conn.execute("SELECT message_id FROM processed_messages")}
    assert stranger not in seen and friend in seen


async def test_acked_message_is_journaled_before_the_ack(
    sim: FeishuSimulator,
    anthropic: FakeAnthropic,
    start_bot: StartBot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """#9: the ack waits for the journal row (a SIGKILL before it loses nothing acked)."""
    running = await start_bot(fake_cli=True)
    store = running.bot.store
    real = store.accept_message
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "accept_message", slow)
    mid = await sim.push_message(text="journal me first")
    await asyncio.wait_for(entered.wait(), 10)
    event_id = sim.user_messages[mid].event_id
    assert not any(d.acked for d in sim.deliveries if d.event_id == event_id)
    release.set()
    ack = await sim.wait_ack(mid)
    assert ack.code == 200
    rows = journal(Path(running.settings.DATABASE_PATH))
    assert [r["message_id"] for r in rows] == [mid]
    assert rows[0]["sender_open_id"] == "ou_sim_user"


async def test_acked_message_is_lost_when_the_journal_fails(
    sim: FeishuSimulator,
    anthropic: FakeAnthropic,
    start_bot: StartBot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """#9: if the journal write fails, the ack says 500 so Feishu delivers the event again."""
    running = await start_bot(fake_cli=True)
    store = running.bot.store
    real = store.accept_message
    calls = {"n": 0}

    async def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk I/O error")
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "accept_message", flaky)
    mid = await sim.push_message(text="keep me")
    first = await sim.wait_ack(mid)
    assert first.code == 500
    event_id = sim.user_messages[mid].event_id
    await sim.redeliver(event_id)
    await final_text(sim, mid, contains="echo: keep me")
    assert len(sim.replies_to(mid)) == 1


async def test_two_stops_leave_a_stopped_turn_queued(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    """#4: after two /stops every stopped turn is 'cancelled' and nothing runs after a restart."""
    running = await start_bot(fake_cli=True)
    busy = await sim.push_message(text="[[fake:hang]] forever")
    waiting = await sim.push_message(text="[[fake:hang]] me too")
    await eventually(lambda: running.bot.launcher.stats().queued == 1)
    await sim.push_message(text="/stop")
    await sim.push_message(text="/stop")
    await final_text(sim, busy, contains="Stopped by /stop")
    await final_text(sim, waiting, contains="Stopped by /stop")
    await running.stop()
    statuses = {r["message_id"]: r["status"] for r in journal(Path(running.settings.DATABASE_PATH))}
    assert statuses == {busy: "cancelled", waiting: "cancelled"}
    again = await start_bot(fake_cli=True, DATABASE_PATH=running.settings.DATABASE_PATH)
    probe = await sim.push_message(text="after restart")
    await final_text(sim, probe, contains="echo: after restart")
    assert again.bot.launcher.stats().ok == 1  # only the probe ran


async def test_replayed_turns_skip_the_access_check(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    """#5: a kept turn of a user removed from FEISHU_ALLOWED_USERS is refused at recovery."""
    first = await start_bot(
        fake_cli=True, FEISHU_ALLOW_ALL=False, FEISHU_ALLOWED_USERS="ou_a,ou_b",
        CLAUDE_MAX_CONCURRENT=1, SHUTDOWN_GRACE=0,
    )
    await sim.push_message(text="[[fake:hang]] hold the slot", sender_open_id="ou_a")
    kept_a = await sim.push_message(text="kept for a", sender_open_id="ou_a", chat_id="oc_a")
    kept_b = await sim.push_message(text="kept for b", sender_open_id="ou_b", chat_id="oc_b")
    await eventually(lambda: first.bot.launcher.stats().queued == 2)
    await first.stop()
    db = Path(first.settings.DATABASE_PATH)
    assert {r["message_id"]: r["status"] for r in journal(db)}[kept_b] == "queued"
    await start_bot(
        fake_cli=True, FEISHU_ALLOW_ALL=False, FEISHU_ALLOWED_USERS="ou_a", DATABASE_PATH=db
    )
    await final_text(sim, kept_a, contains="echo: kept for a")
    await final_text(sim, kept_b, contains="no longer allowed")
    statuses = {r["message_id"]: (r["status"], r["error"]) for r in journal(db)}
    assert statuses[kept_a][0] == "done"
    assert statuses[kept_b] == ("failed", "access revoked")


async def test_conversations_share_one_working_directory(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    """#6: by default each conversation works in a directory of its own."""
    running = await start_bot()
    one = await sim.push_message(text="hello from one", chat_id="oc_one")
    two = await sim.push_message(text="hello from two", chat_id="oc_two")
    await final_text(sim, one, contains="echo: hello from one")
    await final_text(sim, two, contains="echo: hello from two")
    root = Path(running.settings.CLAUDE_WORKDIR).resolve()
    bodies = [json.dumps(r.body) for r in anthropic.message_requests]
    dir_one, dir_two = root / "p2p-oc_one", root / "p2p-oc_two"
    assert dir_one.is_dir() and dir_two.is_dir()
    assert any(str(dir_one) in b and "hello from one" in b for b in bodies)
    assert any(str(dir_two) in b and "hello from two" in b for b in bodies)


async def test_shared_working_directory_when_the_operator_chooses_it(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot(CLAUDE_SHARED_WORKDIR=True)
    one = await sim.push_message(text="shared please", chat_id="oc_one")
    await final_text(sim, one, contains="echo: shared please")
    root = Path(running.settings.CLAUDE_WORKDIR).resolve()
    assert not (root / "p2p-oc_one").exists()
    assert f'Primary working directory: {root}\\n' in json.dumps(
        anthropic.message_requests[-1].body
    )
