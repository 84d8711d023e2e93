"""Scheduled prompts end to end: /cron through the real lark_oapi client and the simulator, runs
through the real CLI against the fake API, with the bot's clock moved instead of waiting real
minutes (the schedule is still parsed and iterated by croniter)."""

from __future__ import annotations

import json
import math
import time

import pytest

from database.cron import run_message_id
from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import StartBot, final_text
from tests.fakes.fake_anthropic import FakeAnthropic

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]


class MovableClock:
    """Real time plus an offset the test sets: the bot's scheduling clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def just_before_next_minute(self, lead: float = 1.0) -> float:
        """Move the clock to `lead` seconds before the next whole minute; returns that minute."""
        now = self()
        boundary = math.ceil((now + lead + 0.5) / 60) * 60
        self.offset += boundary - lead - now
        return float(boundary)


def _headers(sim: FeishuSimulator) -> list:
    return [m for m in sim.messages if "Scheduled prompt (/cron job" in sim.message_text(m)]


async def _answer_to(sim: FeishuSimulator, header_id: str, contains: str) -> str:
    """The finished answer to a run's header: a run has no reaction to wait for, so wait for
    the note the finished card carries (time · turns · cost)."""

    def done() -> str | None:
        text = "\n".join(sim.message_text(m) for m in sim.replies_to(header_id))
        return text if contains in text and " turn" in text else None

    return await sim.wait_for(done, timeout=60)


async def test_an_every_minute_job_answers_within_its_minute_and_is_listed_after_a_restart(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    clock = MovableClock()
    bot = await start_bot(clock=clock)
    due = clock.just_before_next_minute(2.0)
    added = await sim.push_message(text="/cron add * * * * * say tick")
    reply = await final_text(sim, added, contains="Scheduled job 1")
    assert "Every minute" in reply

    header = await sim.wait_for(lambda: next(iter(_headers(sim)), None), timeout=30)
    assert header.chat_id == "oc_sim_p2p" and header.reply_to is None  # a new message
    assert sim.message_text(header).startswith("⏰ Scheduled prompt (/cron job 1, due ")
    assert sim.message_text(header).endswith("): say tick")
    answer = await _answer_to(sim, header.message_id, "echo: say tick")
    assert "echo: say tick" in answer
    assert clock() < due + 60  # answered within the minute it was due
    request = anthropic.message_requests[-1]
    assert request.last_user_text == "say tick"
    # Claude is told that scheduling goes through /cron, and its own scheduling tools are gone
    system = json.dumps(request.body["system"])
    assert "/cron add <minute hour day month weekday> <prompt>" in system
    tools = {tool.get("name") for tool in request.body.get("tools", [])}
    assert tools and not tools & {"CronCreate", "CronDelete", "CronList", "ScheduleWakeup"}
    turn = await bot.bot.store.turn_of_message(run_message_id(1, due))
    assert turn is not None and turn.status == "done" and turn.sender_open_id == "ou_sim_user"
    await bot.stop()

    # Restarted ten minutes later (by its clock): the job is still there, and of the ten due
    # times it missed it makes up only the latest, once.
    clock.offset += 600
    missed_latest = math.floor(clock() / 60) * 60
    clock.offset += 10 - (clock() - missed_latest)  # 10 s after it: the next is 50 s away
    again = await start_bot(clock=clock)
    catch_up = await sim.wait_for(lambda: _headers(sim)[1:2], timeout=30)
    await _answer_to(sim, catch_up[0].message_id, "echo: say tick")
    job = await again.bot.store.get_cron_job(1)
    assert job is not None and job.handled_until == missed_latest
    runs = await again.bot.store.cron_runs(1, limit=20)
    assert [r.due for r in runs] == [missed_latest, due]

    listed = await sim.push_message(text="/cron list")
    text = await final_text(sim, listed, contains="Scheduled prompts here")
    assert "`* * * * *`" in text and "Every minute" in text and "say tick" in text
    assert "last: ok" in text


async def test_a_job_whose_creator_lost_access_pauses_and_says_so(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    clock = MovableClock()
    first = await start_bot(clock=clock, FEISHU_ALLOW_ALL=False, FEISHU_ALLOWED_USERS="ou_sim_user")
    added = await sim.push_message(text="/cron add */5 * * * * weekly report")
    await final_text(sim, added, contains="Scheduled job 1")
    await first.stop()

    before = len(anthropic.message_requests)
    restarted = await start_bot(
        clock=clock, FEISHU_ALLOW_ALL=False, FEISHU_ALLOWED_USERS="ou_someone_else"
    )
    # the next */5 due time, one second away by the bot's clock
    now = clock()
    due = math.ceil((now + 2) / 300) * 300
    clock.offset += due - 1 - now
    restarted.bot.cron.wake()
    notice = await sim.wait_for(
        lambda: next((m for m in sim.messages if "is paused" in sim.message_text(m)), None),
        timeout=30,
    )
    text = sim.message_text(notice)
    assert "/cron job 1 is paused: its creator is no longer allowed to use the bot" in text
    assert notice.chat_id == "oc_sim_p2p"
    job = await restarted.bot.store.get_cron_job(1)
    assert job is not None and job.paused and "no longer allowed" in job.paused
    assert await restarted.bot.store.turn_of_message(run_message_id(1, due)) is None
    assert len(anthropic.message_requests) == before  # nothing reached the model
