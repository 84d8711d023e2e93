"""Spending limits end to end: each warm turn's own cost is recorded, and a daily limit refuses
turns before anything reaches the model — on arrival, and again when a turn leaves the queue."""

from __future__ import annotations

import asyncio

import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import RunningBot, StartBot, final_text, shown_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]


async def _cost(bot: RunningBot, message_id: str) -> float:
    turn = await bot.bot.store.turn_of_message(message_id)
    assert turn is not None and turn.status == "done" and turn.cost_usd
    return float(turn.cost_usd)


async def test_two_warm_turns_cost_about_twice_one_and_a_limit_refuses_the_third(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    bot = await start_bot()
    first = await sim.push_message(text="one")
    await final_text(sim, first, contains="echo: one")
    second = await sim.push_message(text="two")
    await final_text(sim, second, contains="echo: two")
    one, two = await _cost(bot, first), await _cost(bot, second)
    # the second turn ran in the same warm process: its own cost, not the running total
    assert bot.bot.launcher.stats().cold_starts == 1
    assert 0.7 * one < two < 1.5 * one
    assert 1.7 * one < one + two < 2.5 * one
    stats = await sim.push_message(text="/stats")
    shown = await final_text(sim, stats, contains="Spent today")
    assert f"you ${one + two:.4f}" in shown
    await bot.stop()

    # A limit of 1.5 turns: a new user's first two turns pass, the third is refused.
    limited = await start_bot(CLAUDE_USER_DAILY_USD=round(1.5 * one, 6))
    chat = {"chat_id": "oc_sim_p2p_b", "sender_open_id": "ou_sim_b"}
    a = await sim.push_message(text="alpha", **chat)
    await final_text(sim, a, contains="echo: alpha")
    b = await sim.push_message(text="beta", **chat)
    await final_text(sim, b, contains="echo: beta")
    before = len(anthropic.message_requests)
    c = await sim.push_message(text="gamma", **chat)
    refused = await final_text(sim, c, contains="Daily spending limit reached")
    assert f"of the ${1.5 * one:.2f} one person may spend per day" in refused
    assert "resets at 00:00" in refused
    assert len(anthropic.message_requests) == before  # nothing reached the model
    assert await limited.bot.store.turn_of_message(c) is None  # refused before the journal
    # someone else is not limited by this user's spend
    d = await sim.push_message(text="delta", chat_id="oc_sim_p2p_c", sender_open_id="ou_sim_c")
    await final_text(sim, d, contains="echo: delta")


async def test_a_turn_that_waited_is_refused_when_it_leaves_the_queue(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    """It was under the limit when it arrived; the turn before it used the rest meanwhile."""
    bot = await start_bot()
    probe = await sim.push_message(text="probe", chat_id="oc_probe", sender_open_id="ou_probe")
    await final_text(sim, probe, contains="echo: probe")
    one = await _cost(bot, probe)
    await bot.stop()

    limited = await start_bot(CLAUDE_USER_DAILY_USD=round(0.5 * one, 6))
    hold = asyncio.Event()
    anthropic.enqueue(Reply(release=hold))
    seen = len(anthropic.message_requests)
    first = await sim.push_message(text="first")
    await anthropic.wait_for_requests(seen + 1)  # the first turn is with the model now
    second = await sim.push_message(text="second")
    await shown_text(sim, second, contains="queued")  # admitted: nothing spent yet today
    before = len(anthropic.message_requests)
    hold.set()
    await final_text(sim, first, contains="first")
    refused = await final_text(sim, second, contains="Daily spending limit reached")
    assert "one person may spend per day" in refused
    assert len(anthropic.message_requests) == before
    turn = await limited.bot.store.turn_of_message(second)
    assert turn is not None and turn.status == "cancelled" and "TurnRefused" in (turn.error or "")
