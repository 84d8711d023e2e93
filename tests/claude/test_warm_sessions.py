"""Warm sessions (issue 8) with the fake CLI: one live process per conversation across turns.

What each test checks is read from the fake CLI's own log (which pid ran which turn, what it
was started with, when it exited and why), not from the launcher's counters alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from loguru import logger

from feishu_bot.errors import TransientCliError, TurnTimeout
from tests.claude.support import (
    EventRecorder,
    MemoryBinding,
    alive_pids,
    open_gate,
    poll_until,
    request,
    turn_pids,
    wait_exit,
)
from tests.fakes.fake_claude_log import FakeClaudeLog

KEY = "p2p:c1"


def arg(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


async def test_second_turn_runs_in_the_same_process(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, binding: MemoryBinding
) -> None:
    launcher = make_launcher(mode="history")
    first = await launcher.run(request(workdir, "one"))
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.text == "history: one | two"
    assert len(fake_log.starts()) == 1
    assert len(set(turn_pids(fake_log))) == 1
    assert second.session_id == first.session_id  # no fork inside one process
    assert (first.extra["warm"], second.extra["warm"]) == (False, True)
    assert binding.calls == [("set", KEY, first.session_id)]
    stats = launcher.stats()
    assert (stats.cold_starts, stats.warm_idle, stats.ok) == (1, 1, 2)


async def test_idle_timeout_closes_the_process_and_the_next_turn_resumes(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, binding: MemoryBinding
) -> None:
    launcher = make_launcher(mode="history", idle_timeout=0.3)
    first = await launcher.run(request(workdir, "one"))
    pid = turn_pids(fake_log)[0]
    ended = await wait_exit(fake_log, pid)
    assert (ended["code"], ended["reason"]) == (0, "stdin EOF")  # closed, not killed
    await poll_until(lambda: launcher.stats().closing == 0)
    assert not launcher.is_warm(KEY)
    assert launcher.stats().warm_idle == 0
    second = await launcher.run(request(workdir, "two", session_id=binding.sessions[KEY]))
    assert second.text == "history: one | two"
    new_pid = turn_pids(fake_log)[1]
    assert new_pid != pid
    argv = fake_log.starts()[1]["argv"]
    assert arg(argv, "--resume") == first.session_id and "--fork-session" in argv
    assert launcher.stats().cold_starts == 2


async def test_interrupt_keeps_the_process(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="hang")
    recorder = EventRecorder()
    task = asyncio.create_task(launcher.run(request(workdir, "stop me"), on_event=recorder))
    await recorder.wait_kind("text")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (end,) = await fake_log.wait_for(lambda r: [x for x in r if x["event"] == "turn_end"])
    assert end["terminal_reason"] == "aborted_streaming"
    assert fake_log.controls("interrupt")  # (repeated if the first came too early)
    result = await launcher.run(request(workdir, "[[fake:echo]] go on"))
    assert result.text == "echo: [[fake:echo]] go on"
    pids = turn_pids(fake_log)
    assert pids[0] == pids[1]  # the same process answered the next turn
    assert fake_log.records("exit") == []
    stats = launcher.stats()
    assert (stats.cancelled, stats.cold_starts, stats.failed) == (1, 1, 0)


async def test_timeout_interrupts_and_keeps_the_process_warm(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="hang", timeout=0.5)
    await launcher.run(request(workdir, "[[fake:echo]] warm up"))  # start-up is not timed here
    with pytest.raises(TurnTimeout) as info:
        await launcher.run(request(workdir, "too slow"))
    assert info.value.partial_text == "working"
    assert fake_log.controls("interrupt")  # (repeated if the first came too early)
    assert launcher.is_warm(KEY)
    result = await launcher.run(request(workdir, "[[fake:echo]] next"))
    assert result.text == "echo: [[fake:echo]] next"
    assert len(set(turn_pids(fake_log))) == 1
    assert launcher.stats().timeouts == 1


async def test_process_deaf_to_the_interrupt_is_killed_after_the_grace(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    # The timeout also bounds the fresh process's turn at the end (a cold start of the fake
    # CLI): long enough for a loaded 2-core machine.
    launcher = make_launcher(mode="hang_deaf", timeout=3.0, interrupt_grace=0.5)
    with pytest.raises(TurnTimeout):
        await launcher.run(request(workdir, "deaf"))
    pid = turn_pids(fake_log)[0]
    assert alive_pids([pid]) == []
    ended = await wait_exit(fake_log, pid)
    assert ended["signal"] == "SIGTERM"
    interrupt = fake_log.controls("interrupt")[0]
    assert ended["mono"] - interrupt["mono"] >= 0.5  # the grace was given first
    assert not launcher.is_warm(KEY) and launcher.stats().warm_idle == 0
    result = await launcher.run(request(workdir, "[[fake:echo]] again"))
    assert result.text == "echo: [[fake:echo]] again"
    assert turn_pids(fake_log)[1] != pid


async def test_process_that_dies_between_turns_frees_its_slot_at_once(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, binding: MemoryBinding
) -> None:
    launcher = make_launcher(mode="history", max_concurrent=1)
    await launcher.run(request(workdir, "[[fake:die_between_turns]] one", key="p2p:a"))
    pid = turn_pids(fake_log)[0]
    ended = await wait_exit(fake_log, pid)
    assert (ended["code"], ended["reason"]) == (1, "died between turns")
    await poll_until(lambda: launcher.stats().died_idle == 1)
    stats = launcher.stats()
    assert (stats.warm_idle, stats.closing) == (0, 0)
    assert not launcher.is_warm("p2p:a")
    # the slot is free: another conversation starts without evicting anything
    other = await launcher.run(request(workdir, "b", key="p2p:b"))
    assert other.text == "history: b"
    assert launcher.stats().evictions == 0
    # the conversation's next turn resumes its session in a new process (evicting b's)
    again = await launcher.run(
        request(workdir, "two", key="p2p:a", session_id=binding.sessions["p2p:a"])
    )
    assert again.text == "history: [[fake:die_between_turns]] one | two"
    assert again.attempts == 1
    assert turn_pids(fake_log, "two")[0] not in (pid, turn_pids(fake_log, "b")[0])
    assert launcher.stats().evictions == 1


async def test_crash_mid_turn_is_retried_in_a_new_process_without_repeating_the_message(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    # turn 1 fine, turn 2 crashes half-way (its prompt is already in the transcript),
    # the retry answers with what the model sees
    launcher = make_launcher(mode="history,crash_mid_turn,history")
    first = await launcher.run(request(workdir, "one"))
    events = EventRecorder()
    second = await launcher.run(
        request(workdir, "two", session_id=first.session_id), on_event=events
    )
    assert second.text == "history: one | two"  # "two" once
    assert second.attempts == 2
    pids = turn_pids(fake_log)
    assert pids[0] == pids[1] != pids[2]
    argv = fake_log.starts()[1]["argv"]
    assert arg(argv, "--resume") == first.session_id
    assert arg(argv, "--resume-session-at") is not None  # cut before the crashed turn
    assert "--fork-session" in argv
    assert events.kinds().count("init") == 2  # the retry started over
    assert launcher.stats().retried == 1
    assert launcher.is_warm(KEY)


async def test_crash_in_the_first_turn_of_a_resumed_process_resumes_the_untouched_base(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    first = await make_launcher(mode="history").run(request(workdir, "one"))
    # a restarted bot (the mode sequence counts turns from here: one's launcher uses none)
    launcher = make_launcher(mode="crash_mid_turn,history")
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.text == "history: one | two"
    starts = fake_log.starts()
    assert len(starts) == 3
    for start in starts[1:]:
        assert arg(start["argv"], "--resume") == first.session_id
        assert "--resume-session-at" not in start["argv"]


async def test_crash_after_an_interrupted_first_turn_does_not_repeat_the_message(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """A process whose only earlier turn was stopped has no completed turn to cut at; the
    retry of a crash must still not show the model the crashed message twice."""
    first = await make_launcher(mode="history").run(request(workdir, "one"))
    launcher = make_launcher(mode="hang,crash_mid_turn,history")
    recorder = EventRecorder()
    task = asyncio.create_task(
        launcher.run(request(workdir, "two", session_id=first.session_id), on_event=recorder)
    )
    await recorder.wait_kind("text")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    third = await launcher.run(request(workdir, "three", session_id=first.session_id))
    assert third.attempts == 2
    seen = third.text.removeprefix("history: ").split(" | ")
    assert seen.count("three") == 1
    assert seen[0] == "one" and seen[-1] == "three"


async def test_degrades_to_one_process_per_turn_after_repeated_crashes_and_recovers(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        launcher = make_launcher(max_retries=0)
        for n in range(3):
            with pytest.raises(TransientCliError):
                await launcher.run(request(workdir, f"[[fake:crash_mid_turn]] {n}"))
        assert launcher.stats().degraded is True
        # degraded: every turn gets a process of its own, closed after the turn
        for n in range(2):
            assert (await launcher.run(request(workdir, f"cold {n}"))).text == f"echo: cold {n}"
            assert not launcher.is_warm(KEY)
            pid = turn_pids(fake_log, f"cold {n}")[0]
            assert (await wait_exit(fake_log, pid))["reason"] == "stdin EOF"
        assert launcher.stats().degraded is True
        # the third clean turn in a row ends it: that process stays warm again
        await launcher.run(request(workdir, "cold 2"))
        assert launcher.stats().degraded is False
        assert launcher.is_warm(KEY)
        await launcher.run(request(workdir, "warm again"))
        assert turn_pids(fake_log, "warm again") == turn_pids(fake_log, "cold 2")
    finally:
        logger.remove(sink)
    assert sum("one process per turn" in w for w in warnings) == 1  # said once


async def test_close_session_of_an_idle_process(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher()
    assert await launcher.close_session(KEY) is False  # nothing to close
    await launcher.run(request(workdir, "one"))
    pid = turn_pids(fake_log)[0]
    assert await launcher.close_session(KEY) is True
    assert (await wait_exit(fake_log, pid))["reason"] == "stdin EOF"
    assert alive_pids([pid]) == []  # reaped when close_session returned
    assert not launcher.is_warm(KEY)
    stats = launcher.stats()
    assert (stats.warm_idle, stats.closing, stats.evictions) == (0, 0, 0)
    assert await launcher.close_session(KEY) is False
    await launcher.run(request(workdir, "two"))
    assert turn_pids(fake_log)[1] != pid


async def test_close_session_of_a_busy_process_waits_for_its_turn(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(mode="gate")
    task = asyncio.create_task(launcher.run(request(workdir, "busy")))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    pid = turn_pids(fake_log)[0]
    assert await launcher.close_session(KEY) is True
    assert fake_log.records("stdin_eof") == []  # the running turn is not cut
    open_gate(fake_env)
    result = await task
    assert result.text == "echo: busy"
    ended = await wait_exit(fake_log, pid)
    assert ended["reason"] == "stdin EOF"
    assert [r["turn_active"] for r in fake_log.records("stdin_eof")] == [False]
    assert not launcher.is_warm(KEY)
    assert launcher.stats().warm_idle == 0


async def test_stop_right_after_the_message_still_interrupts(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """Regression: a warm CLI answers and ignores an interrupt it reads before it has begun
    the turn just written (measured on 2.1.329; the fake does the same), so a quick /stop ran
    on until the interrupt grace and cost the process. The interrupt is repeated until the
    turn ends."""
    launcher = make_launcher(mode="hang", interrupt_grace=20.0)
    await launcher.run(request(workdir, "[[fake:echo]] warm up"))
    for ticks in range(12):
        task = asyncio.create_task(launcher.run(request(workdir, f"stop {ticks}")))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)  # well inside the grace: no kill needed
        assert launcher.is_warm(KEY)
    assert len(fake_log.starts()) == 1
    assert fake_log.records("exit") == []
    result = await launcher.run(request(workdir, "[[fake:echo]] still here"))
    assert result.text == "echo: [[fake:echo]] still here"
