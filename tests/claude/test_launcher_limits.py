"""The global cap, the FIFO queue, per-conversation order and queue overflow.

Concurrency is measured from the fake CLI's own start/exit records, not from the launcher's
counters: the [start, exit] interval of a fake run lies inside the launcher's [spawn, reap].
Warm processes stay after their turn, so the cap counts them too: a turn of a new conversation
evicts the least recently used idle one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feishu_bot.errors import QueueFull
from tests.claude.support import EventRecorder, open_gate, request
from tests.fakes.fake_claude_log import FakeClaudeLog


async def test_cap_holds_with_30_concurrent_turns(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(mode="gate", max_concurrent=5, queue_max=30)
    tasks = [
        asyncio.create_task(launcher.run(request(workdir, f"turn {i}", key=f"group:{i}")))
        for i in range(30)
    ]
    # The first five block on the gate; nobody else may start meanwhile.
    await fake_log.wait_for(lambda r: len([x for x in r if x["event"] == "turn_start"]) == 5)
    stats = launcher.stats()
    assert (stats.active, stats.queued) == (5, 25)
    open_gate(fake_env)
    results = await asyncio.gather(*tasks)
    assert [r.text for r in results] == [f"echo: turn {i}" for i in range(30)]
    assert len(fake_log.starts()) == 30
    stats = launcher.stats()
    assert (stats.ok, stats.active, stats.queued, stats.warm_idle) == (30, 0, 0, 5)
    assert stats.evictions == 25
    assert fake_log.max_overlap(require_exit=False) == 5
    await launcher.aclose()
    assert fake_log.max_overlap() == 5  # every process logged its exit by now


async def test_cap_holds_under_churn(make_launcher, workdir: Path, fake_log: FakeClaudeLog) -> None:
    launcher = make_launcher(mode="slow", max_concurrent=3, queue_max=30)
    peak_active = 0

    async def sample() -> None:
        nonlocal peak_active
        while True:
            peak_active = max(peak_active, launcher.stats().active)
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(
            *(launcher.run(request(workdir, f"turn {i}", key=f"group:{i}")) for i in range(30))
        )
    finally:
        sampler.cancel()
    await launcher.aclose()
    assert fake_log.max_overlap() <= 3
    assert peak_active == 3


async def test_cap_counts_processes_being_killed(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """A slot is free only after wait(): a CLI that ignores the interrupt and SIGTERM keeps its
    slot for both graces."""
    launcher = make_launcher(
        mode="hang_deaf_ignore_term", max_concurrent=1, interrupt_grace=0.3, kill_grace=0.5
    )
    recorder = EventRecorder()
    first = asyncio.create_task(launcher.run(request(workdir, "a", key="p2p:a"), on_event=recorder))
    await recorder.wait_kind("text")  # printed once SIGTERM is ignored
    second = asyncio.create_task(launcher.run(request(workdir, "[[fake:echo]] b", key="p2p:b")))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    result = await second
    assert result.text == "echo: [[fake:echo]] b"
    starts = {r["prompt_head"]: r for r in fake_log.starts()}
    # The first run never logs an exit (SIGKILL); the second started after both graces.
    assert starts["[[fake:echo]] b"]["mono"] - starts["a"]["mono"] >= 0.8


async def test_global_fifo_order(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(max_concurrent=1, queue_max=10)
    holder = asyncio.create_task(launcher.run(request(workdir, "[[fake:gate]] hold", key="k0")))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    tasks = []
    for i in range(1, 6):
        queued = asyncio.Event()

        async def on_queued(position: int, ev: asyncio.Event = queued) -> None:
            ev.set()

        tasks.append(
            asyncio.create_task(
                launcher.run(request(workdir, f"t{i}", key=f"k{i}"), on_queued=on_queued)
            )
        )
        await queued.wait()
    assert launcher.stats().queued == 5
    open_gate(fake_env)
    await asyncio.gather(holder, *tasks)
    order = [r["prompt_head"] for r in fake_log.starts()]
    assert order == ["[[fake:gate]] hold", "t1", "t2", "t3", "t4", "t5"]


async def test_one_turn_at_a_time_per_conversation_in_order(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(max_concurrent=5, queue_max=10)
    first = asyncio.create_task(launcher.run(request(workdir, "[[fake:gate]] a1", key="p2p:a")))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    later = [
        asyncio.create_task(launcher.run(request(workdir, f"a{i}", key="p2p:a"))) for i in (2, 3, 4)
    ]
    other = await launcher.run(request(workdir, "b1", key="p2p:b"))  # runs while a1 waits
    assert other.text == "echo: b1"
    assert launcher.queue_position("p2p:a") == 1
    assert launcher.stats().active == 1
    open_gate(fake_env)
    results = await asyncio.gather(first, *later)
    assert [r.text for r in results] == [
        f"echo: {'[[fake:gate]] ' if i == 1 else ''}a{i}" for i in (1, 2, 3, 4)
    ]
    await fake_log.wait_for(lambda r: sum(x["event"] == "turn_end" for x in r) == 5)
    recs = fake_log.records()
    starts = {r["prompt_head"]: r["mono"] for r in recs if r["event"] == "turn_start"}
    ends = {r["prompt_head"]: r["mono"] for r in recs if r["event"] == "turn_end"}
    assert starts["b1"] < ends["[[fake:gate]] a1"]
    assert starts["a2"] >= ends["[[fake:gate]] a1"]
    assert starts["a3"] >= ends["a2"]
    assert starts["a4"] >= ends["a3"]
    # all of a's turns ran in its one warm process
    assert len({r["pid"] for r in fake_log.turns("a")}) == 1


async def test_queue_overflow_is_refused_at_once(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(max_concurrent=5, queue_max=20)
    running = [
        asyncio.create_task(launcher.run(request(workdir, f"[[fake:gate]] r{i}", key=f"r{i}")))
        for i in range(5)
    ]
    queued = [
        asyncio.create_task(launcher.run(request(workdir, f"q{i}", key=f"q{i}"))) for i in range(20)
    ]
    await fake_log.wait_for(lambda r: len([x for x in r if x["event"] == "turn_start"]) == 5)
    await asyncio.sleep(0)
    stats = launcher.stats()
    assert (stats.active, stats.queued) == (5, 20)
    with pytest.raises(QueueFull) as info:
        await launcher.run(request(workdir, "one too many", key="late"))
    assert str(info.value) == "busy: 5/5 running, 20 queued"
    assert (info.value.active, info.value.max_active, info.value.queued) == (5, 5, 20)
    assert launcher.stats().rejected == 1
    assert launcher.stats().oldest_wait_s >= 0.0
    open_gate(fake_env)
    await asyncio.gather(*running, *queued)
    assert launcher.stats().ok == 25
    await launcher.aclose()
    assert fake_log.max_overlap() <= 5


async def test_queue_positions_are_reported_and_move_up(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(max_concurrent=1, queue_max=5)
    holder = asyncio.create_task(launcher.run(request(workdir, "[[fake:gate]] h", key="h")))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    positions: dict[str, list[int]] = {"b": [], "c": [], "d": []}
    tasks = {}
    for name in ("b", "c", "d"):

        async def on_queued(position: int, name: str = name) -> None:
            positions[name].append(position)

        tasks[name] = asyncio.create_task(
            launcher.run(request(workdir, name, key=name), on_queued=on_queued)
        )
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert positions == {"b": [1], "c": [2], "d": [3]}
    assert [launcher.queue_position(k) for k in ("b", "c", "d", "h")] == [1, 2, 3, None]
    tasks["b"].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks["b"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert positions["c"] == [2, 1]
    assert positions["d"] == [3, 2]
    assert launcher.stats().queued == 2
    open_gate(fake_env)
    await asyncio.gather(holder, tasks["c"], tasks["d"])
    assert launcher.stats().cancelled == 1
