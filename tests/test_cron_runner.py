"""CronRunner with a real SQLite store, the real TurnRegistry and AccessPolicy, a clock the test
moves, and a stand-in for Conversations that journals runs the way admission does (so the
exactly-once key is the real journal's). Each tick is driven by the test: no real waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from database.cron import run_message_id
from database.store import SessionStore
from feishu_bot.cron_runner import FAILURES_TO_PAUSE, MAX_SLEEP_S, CronRunner
from feishu_bot.events import InboundMessage
from feishu_bot.feishu.access import AccessPolicy
from feishu_bot.turns import TurnRegistry

pytestmark = pytest.mark.timeout(30)

UTC = ZoneInfo("UTC")
START = 1_800_000_000.0  # a whole minute (divisible by 60)
KEY = "p2p:oc_1"


class Clock:
    def __init__(self) -> None:
        self.now = START + 10

    def __call__(self) -> float:
        return self.now


class Admission:
    """Journals each run like `Conversations.admit` and starts a turn task that ends with the
    status the test chose (`outcome`, or `finish` to hold it)."""

    def __init__(self, store: SessionStore, turns: TurnRegistry) -> None:
        self.store, self.turns = store, turns
        self.admitted: list[InboundMessage] = []
        self.seen = asyncio.Event()  # set by every admission
        self.answer = "accepted"
        self.status = "done"

    async def admit(self, msg: InboundMessage) -> str:
        if self.answer != "accepted":
            await self.store.mark_processed(msg.message_id)
            return self.answer
        turn_id = await self.store.accept_message(
            msg.message_id, conversation_key=msg.conversation_key, chat_id=msg.chat_id,
            prompt=msg.text or "", reply_in_thread=msg.in_thread,
            sender_open_id=msg.sender_open_id,
        )
        if turn_id is None:
            return "duplicate"
        self.admitted.append(msg)
        handle = self.turns.admit(msg.conversation_key, msg.message_id, turn_id)
        status = self.status

        async def turn() -> None:
            await self.store.update_turn(turn_id, status=status, error="boom")
            await self.turns.finish(handle)

        self.turns.start(handle, turn())
        self.seen.set()
        return "accepted"


class Poster:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, chat_id: str, msg_type: str, content: dict[str, Any], **_: Any) -> str:
        self.sent.append((chat_id, content["text"]))
        return f"om_{len(self.sent)}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    async with await SessionStore.open(tmp_path / "bot.db", clock=lambda: START) as s:
        yield s


@pytest.fixture
async def parts(store: SessionStore):
    turns, clock, poster = TurnRegistry(), Clock(), Poster()
    admission = Admission(store, turns)
    access = AccessPolicy(["ou_a"], [], False)
    runner = CronRunner(
        store=store, conversations=admission, turns=turns, access=access,  # type: ignore[arg-type]
        replier=poster, tz=UTC, clock=clock,
    )
    yield runner, admission, clock, poster, access
    await runner.aclose()
    await turns.aclose()


async def job(store: SessionStore, schedule: str = "* * * * *", creator: str = "ou_a"):
    made = await store.add_cron_job(
        KEY, chat_id="oc_1", creator_open_id=creator, schedule=schedule, prompt="tick",
        max_per_conversation=10, now=START + 5,
    )
    assert made is not None
    return made


async def settle(runner: CronRunner) -> None:
    """Let the watchers of finished runs record their outcome."""
    for task in list(runner._watchers):
        await task


async def test_a_due_job_runs_once_as_its_creator_and_the_next_tick_waits(store, parts) -> None:
    runner, admission, clock, _, _ = parts
    made = await job(store)
    assert await runner.tick() == pytest.approx(50)  # until START + 60
    assert admission.admitted == []
    clock.now = START + 60
    await runner.tick()
    [msg] = admission.admitted
    assert msg.message_id == run_message_id(made.job_id, START + 60)
    assert (msg.sender_open_id, msg.chat_id, msg.text, msg.chat_type) == (
        "ou_a", "oc_1", "tick", "p2p"
    )
    await runner.tick()  # the same due time is handled: nothing more
    assert len(admission.admitted) == 1
    await settle(runner)
    after = await store.get_cron_job(made.job_id)
    assert after.handled_until == START + 60 and after.last_outcome.startswith("ok ")


async def test_a_due_time_journaled_before_a_crash_is_not_run_again(store, parts) -> None:
    runner, admission, clock, _, _ = parts
    made = await job(store)
    # a crash after the run was journaled but before handled_until was written
    await store.accept_message(
        run_message_id(made.job_id, START + 60), conversation_key=KEY, chat_id="oc_1",
        prompt="tick", reply_in_thread=False,
    )
    clock.now = START + 70
    await runner.tick()
    assert admission.admitted == []
    assert (await store.get_cron_job(made.job_id)).last_outcome.startswith("already run")


async def test_after_downtime_only_the_latest_missed_run_is_made_up(store, parts) -> None:
    runner, admission, clock, _, _ = parts
    made = await job(store)
    clock.now = START + 2 * 3600 + 30 * 60 + 5  # back after 2½ hours: 150 missed due times
    await runner.tick()
    await runner.tick()
    assert [m.message_id for m in admission.admitted] == [
        run_message_id(made.job_id, START + 9000)  # one run, the latest: no burst
    ]


async def test_a_run_missed_by_over_an_hour_is_skipped_and_noted(store, parts) -> None:
    runner, admission, clock, _, _ = parts
    daily = await job(store, "0 8 * * *")  # START is 08:00 UTC: the next is a day later
    clock.now = START + 86400 + 3601
    await runner.tick()
    assert admission.admitted == []
    skipped = await store.get_cron_job(daily.job_id)
    assert skipped.handled_until == START + 86400
    assert skipped.last_outcome.startswith("missed ") and "(the bot was down)" in (
        skipped.last_outcome
    )


async def test_a_creator_without_access_pauses_the_job_and_the_chat_is_told(store, parts) -> None:
    runner, admission, clock, poster, _ = parts
    made = await job(store, creator="ou_gone")
    clock.now = START + 60
    await runner.tick()
    assert admission.admitted == []
    paused = await store.get_cron_job(made.job_id)
    assert paused.paused == "its creator is no longer allowed to use the bot"
    assert poster.sent == [("oc_1", (
        f"⏸ /cron job {made.job_id} is paused: its creator is no longer allowed to use the bot. "
        f"/cron resume {made.job_id} starts it again, /cron rm {made.job_id} deletes it."
    ))]
    clock.now = START + 120
    await runner.tick()  # paused: never run
    assert admission.admitted == []


async def test_busy_and_spend_refusals_are_reported_not_failures(store, parts) -> None:
    runner, admission, clock, _, _ = parts
    made = await job(store)
    for n, answer in enumerate(["busy", "refused", "busy", "refused"], start=1):
        admission.answer = answer
        clock.now = START + 60 * n
        await runner.tick()
    current = await store.get_cron_job(made.job_id)
    assert current.paused is None and current.handled_until == START + 240
    assert current.last_outcome.startswith("skipped: spending limit reached")
    admission.answer = "accepted"
    clock.now = START + 300
    await runner.tick()
    assert len(admission.admitted) == 1  # the next due time is tried as usual


async def test_three_failed_runs_in_a_row_pause_the_job(store, parts) -> None:
    runner, admission, clock, poster, _ = parts
    made = await job(store)
    admission.status = "failed"
    for n in range(1, FAILURES_TO_PAUSE + 1):
        clock.now = START + 60 * n
        await runner.tick()
        await settle(runner)
        paused = (await store.get_cron_job(made.job_id)).paused
        assert (paused is not None) == (n == FAILURES_TO_PAUSE)
    assert "its last 3 runs failed" in paused
    assert "is paused: its last 3 runs failed" in poster.sent[-1][1]
    # resumed: the old failures no longer count
    clock.now = START + 600
    assert await store.resume_cron_job(made.job_id, now=clock.now)
    clock.now = START + 660
    await runner.tick()
    await settle(runner)
    assert (await store.get_cron_job(made.job_id)).paused is None


async def test_a_successful_run_breaks_the_streak(store, parts) -> None:
    runner, admission, clock, _, _ = parts
    made = await job(store)
    for n, status in enumerate(["failed", "failed", "done", "failed", "failed"], start=1):
        admission.status = status
        clock.now = START + 60 * n
        await runner.tick()
        await settle(runner)
    assert (await store.get_cron_job(made.job_id)).paused is None


async def test_run_sleeps_until_woken_and_is_cancelled_cleanly(store, parts) -> None:
    runner, admission, clock, _, _ = parts
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)  # its first pass: no jobs, it sleeps MAX_SLEEP_S
    assert MAX_SLEEP_S >= 60
    await job(store)
    clock.now = START + 60
    runner.wake()
    await asyncio.wait_for(admission.seen.wait(), 5)
    assert len(admission.admitted) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
