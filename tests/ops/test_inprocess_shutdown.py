"""Shutdown paths that need the bot's insides: an in-process bot (tests/e2e fixtures)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import StartBot, anthropic, final_text, start_bot  # noqa: F401


async def test_message_acked_after_stop_accepting_is_journaled_and_runs_after_restart(
    sim: FeishuSimulator,
    start_bot: StartBot,  # noqa: F811 - the in-process bot of tests/e2e
) -> None:
    running = await start_bot(fake_cli=True)
    # The gateway is still connected, as when its thread delivers one last event while the
    # bot stops: the SDK acks it, so it must not be dropped.
    running.bot._ctx.conversations.stop_accepting()
    mid = await sim.push_message(text="one last message")
    assert (await sim.wait_ack(mid)).code == 200
    await final_text(sim, mid, contains="kept and will run when it is back")
    assert await running.stop() == 0
    db = running.settings.DATABASE_PATH
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT status FROM turns").fetchall() == [("queued",)]

    again = await start_bot(fake_cli=True)
    await final_text(sim, mid, contains="echo: one last message")
    assert await again.stop() == 0
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT status FROM turns").fetchall() == [("done",)]
