"""Crash recovery: after SIGKILL the next start finishes what the turn journal still owes."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.ops.conftest import FakeClaudeLog, StartBot, journal, replies_text

# Subprocess bots start in ~2 s on an idle box and far slower on a loaded one.
pytestmark = pytest.mark.timeout(300)


async def test_after_sigkill_queued_turns_run_once_in_order_and_the_running_one_is_reported(
    sim: FeishuSimulator, start_bot: StartBot, fake_log: FakeClaudeLog
) -> None:
    bot = await start_bot(CLAUDE_MAX_CONCURRENT=1)
    db = Path(bot.env["DATABASE_PATH"])
    hung = await sim.push_message(chat_id="oc_ops_a", text="[[fake:hang]] first")
    await replies_text(sim, hung, contains="working")
    second = await sim.push_message(chat_id="oc_ops_a", text="second")
    third = await sim.push_message(chat_id="oc_ops_a", text="third")
    other = await sim.push_message(chat_id="oc_ops_b", text="other chat")
    for mid in (second, third, other):  # shown as queued: accepted and journaled
        await replies_text(sim, mid, contains="queued")
    assert journal(db) == {hung: "running", second: "queued", third: "queued", other: "queued"}

    def ui_journaled() -> bool:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT message_id, card_message_id, reaction_id FROM turns")
            seen = {mid: (card, reaction) for mid, card, reaction in rows}
        return all(seen[m][0] for m in (hung, second, third, other)) and bool(seen[hung][1])

    async with asyncio.timeout(30):
        while not ui_journaled():  # noqa: ASYNC110 - the journal is a file
            await asyncio.sleep(0.02)
    bot.proc.kill()
    assert await bot.wait_exit(10) == -signal.SIGKILL
    # The CLI runs in a session of its own; PR_SET_PDEATHSIG still ends it with the bot.
    exits = await fake_log.wait_for(
        lambda recs: [r for r in recs if r["event"] == "exit" and "first" in r["prompt_head"]]
    )
    assert [r.get("signal") for r in exits] == ["SIGTERM"]
    await fake_log.wait_for(lambda _: not fake_log.alive())  # "exit" is logged just before it

    again = await start_bot(CLAUDE_MAX_CONCURRENT=1)
    assert again.find(r"recovery: 1 turns were running .* 3 queued turns run again") is not None, (
        again.text()[-3000:]
    )
    text = await replies_text(sim, hung, contains="interrupted", finished=True)
    assert "send it again" in text
    await replies_text(sim, second, contains="echo: second", finished=True)
    await replies_text(sim, third, contains="echo: third", finished=True)
    # The reaction and the "queued" card the killed bot left are journaled: the reaction is
    # removed and the card continues with the answer (no second card, none stuck).
    await replies_text(sim, other, contains="echo: other chat", finished=True)
    for mid in (hung, second, third, other):
        shown = [sim.message_text(m) for m in sim.replies_to(mid)]
        assert len(shown) == 1, (mid, shown)
    expected = {hung: "interrupted", second: "done", third: "done", other: "done"}
    async with asyncio.timeout(30):
        while journal(db) != expected:  # noqa: ASYNC110 - the journal is a file
            await asyncio.sleep(0.02)

    # Nothing ran twice, and the conversation kept its order.
    for marker in ("first", "second", "third", "other chat"):
        assert len(fake_log.turns(marker)) == 1, marker
    assert fake_log.turns("second")[0]["mono"] < fake_log.turns("third")[0]["mono"]
    interrupted = [m for m in sim.replies_to(hung) if "interrupted" in sim.message_text(m)]
    assert len(interrupted) == 1

    again.send(signal.SIGTERM)
    assert await again.wait_exit(30) == 0
    assert fake_log.alive() == []
