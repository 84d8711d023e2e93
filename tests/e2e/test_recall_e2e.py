"""Recalled messages, end to end: a recall event for a message whose turn still waits drops the
turn (its card says it was withdrawn, Claude never sees it); a running turn goes on; a recall
that overtakes its message keeps the message from running."""

from __future__ import annotations

import asyncio

import pytest

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.messages import MESSAGE_RECALLED, build_recall_event
from tests.e2e.conftest import StartBot, final_text, shown_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]


async def test_a_recalled_queued_message_never_runs_and_a_running_one_goes_on(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    bot = await start_bot(CLAUDE_MAX_CONCURRENT=1)
    hold = asyncio.Event()
    anthropic.enqueue(Reply("first done", release=hold))
    first = await sim.push_message(text="first")
    await anthropic.wait_for_requests(1)
    queued = await sim.push_message(
        chat_type="group", mention_bot=True, text="never run this", sender_open_id="ou_other"
    )
    await shown_text(sim, queued, contains="queued")
    turn = await bot.bot.store.turn_of_message(queued)
    assert turn is not None and turn.status == "queued"

    await sim.recall(first)  # running: not stopped by a recall
    await sim.recall(queued)
    withdrawn = await final_text(sim, queued, contains="Withdrawn")
    assert "recalled before Claude started on it" in withdrawn
    hold.set()
    # Its answer: in its card if that was shown before the recall, else a new message in the
    # chat (Feishu refuses replies to a recalled message).
    await sim.wait_for(
        lambda: any(
            "first done" in sim.message_text(m) and " turn" in sim.message_text(m)  # finished
            for m in sim.messages
            if m.reply_to == first or (m.chat_id == "oc_sim_p2p" and m.reply_to is None)
        ),
        timeout=60,
    )
    assert all("never run this" not in r.last_user_text for r in anthropic.message_requests)
    turn = await bot.bot.store.turn_of_message(queued)
    assert turn is not None and turn.status == "cancelled" and turn.error == "recalled"
    assert (await bot.bot.store.turn_of_message(first)).status == "done"


async def test_a_recall_that_overtakes_its_message_keeps_it_from_running(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    bot = await start_bot()
    # Feishu delivers events in no guaranteed order: the recall may come first.
    recall = build_recall_event("om_recalled_early", "oc_sim_p2p")
    event_id = await sim.push_event(MESSAGE_RECALLED, recall)
    await sim.wait_ack(event_id)
    late = await sim.push_message(text="too late", message_id="om_recalled_early")
    await sim.wait_ack(late)
    after = await sim.push_message(text="next one")
    await final_text(sim, after, contains="echo: next one")
    assert sim.replies_to(late) == []
    assert await bot.bot.store.turn_of_message(late) is None
    assert all("too late" not in r.last_user_text for r in anthropic.message_requests)
