"""The cap with warm processes, eviction, per-user fairness and queue limits (issues 8, 12.3).

Live processes are counted from the fake CLI's own start/exit records; whether a process was
closed while busy from its ``stdin_eof`` record (``turn_active``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feishu_bot.errors import QueueFull
from tests.claude.support import MemoryBinding, open_gate, request, turn_pids
from tests.fakes.fake_claude_log import FakeClaudeLog


async def test_cap_counts_idle_processes_while_30_conversations_come_and_go(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, binding: MemoryBinding
) -> None:
    """Idle processes are evicted (least recently used first) to make room, busy ones never;
    live processes (busy + idle + being closed) never exceed the cap."""
    cap = 5
    launcher = make_launcher(mode="history", max_concurrent=cap, queue_max=60)
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            s = launcher.stats()
            peak = max(peak, s.active + s.warm_idle + s.closing)
            await asyncio.sleep(0)

    async def conversation(i: int) -> list[str]:
        key = f"group:{i}"
        first = await launcher.run(request(workdir, f"[[fake:slow]] c{i} one", key=key))
        second = await launcher.run(
            request(workdir, f"c{i} two", key=key, session_id=binding.sessions.get(key))
        )
        return [first.text, second.text]

    sampler = asyncio.create_task(sample())
    try:
        texts = await asyncio.gather(*(conversation(i) for i in range(30)))
    finally:
        sampler.cancel()
    for i, (first, second) in enumerate(texts):
        assert first == f"echo: [[fake:slow]] c{i} one"
        # evicted or not, the second turn saw the first (resumed in a new process if evicted)
        assert second == f"history: [[fake:slow]] c{i} one | c{i} two"
    stats = launcher.stats()
    assert stats.evictions > 0
    assert stats.cold_starts == len(fake_log.starts()) > 30  # some resumed after eviction
    # every process ever started was either evicted or is one of the idle ones left
    assert len(fake_log.starts()) == stats.evictions + stats.warm_idle
    assert stats.warm_idle == cap
    assert peak <= cap
    await launcher.aclose()
    assert fake_log.max_overlap() == cap  # from the processes' own start/exit records
    assert fake_log.max_busy() <= cap
    # no busy process was closed: stdin closed only between turns, every turn completed
    eofs = fake_log.records("stdin_eof")
    assert len(eofs) == len(fake_log.starts())
    assert not [r for r in eofs if r["turn_active"]]
    ends = fake_log.turn_ends()
    assert len(ends) == 60
    assert {e["terminal_reason"] for e in ends} == {"completed"}
    assert {(r["code"], r.get("reason")) for r in fake_log.records("exit")} == {(0, "stdin EOF")}


async def test_a_busy_process_is_never_evicted(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    """All slots busy: a new conversation waits in the queue instead of evicting."""
    launcher = make_launcher(max_concurrent=2)
    busy = [
        asyncio.create_task(launcher.run(request(workdir, f"[[fake:gate]] b{i}", key=f"b{i}")))
        for i in range(2)
    ]
    await fake_log.wait_for(lambda r: sum(x["event"] == "turn_start" for x in r) == 2)
    positions: list[int] = []
    queued = asyncio.Event()

    async def on_queued(position: int) -> None:
        positions.append(position)
        queued.set()

    waiting = asyncio.create_task(launcher.run(request(workdir, "w", key="w"), on_queued=on_queued))
    await queued.wait()
    assert positions == [1]
    stats = launcher.stats()
    assert (stats.active, stats.queued, stats.evictions, stats.closing) == (2, 1, 0, 0)
    assert fake_log.records("stdin_eof") == []
    open_gate(fake_env)
    await asyncio.gather(*busy)
    assert (await waiting).text == "echo: w"
    assert launcher.stats().evictions == 1  # an idle one made room once the turns were done
    assert [r["turn_active"] for r in fake_log.records("stdin_eof")] == [False]


async def test_per_user_limit_lets_other_users_go_first(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(max_concurrent=5, max_per_user=1)
    a1 = asyncio.create_task(
        launcher.run(request(workdir, "[[fake:gate]] a1", key="p2p:a1", user_id="ou_a"))
    )
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    a2 = asyncio.create_task(launcher.run(request(workdir, "a2", key="group:a2", user_id="ou_a")))
    b1 = await launcher.run(request(workdir, "b1", key="p2p:b1", user_id="ou_b"))
    assert b1.text == "echo: b1"  # B ran while A's first turn was still running
    assert not a1.done() and not a2.done()
    assert launcher.queue_position("group:a2") == 1  # with free slots, A's second turn waits
    assert launcher.stats().active == 1
    open_gate(fake_env)
    assert (await a2).text == "echo: a2"
    await a1
    await fake_log.wait_for(lambda r: sum(x["event"] == "turn_end" for x in r) == 3)
    recs = fake_log.records()
    starts = {r["prompt_head"]: r["mono"] for r in recs if r["event"] == "turn_start"}
    ends = {r["prompt_head"]: r["mono"] for r in recs if r["event"] == "turn_end"}
    assert starts["b1"] < ends["[[fake:gate]] a1"] <= starts["a2"]


async def test_one_chat_can_queue_unlimited_work(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    """Regression (hardening #3): 15 messages in one chat all queued while other chats were
    refused. One conversation holds at most conversation_queue_max waiting turns."""
    launcher = make_launcher(max_concurrent=5, queue_max=20, conversation_queue_max=5)
    tasks = [
        asyncio.create_task(launcher.run(request(workdir, f"[[fake:gate]] m{i}", key="p2p:x")))
        for i in range(15)
    ]
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    refused = [t for t in tasks if t.done()]
    assert len(refused) == 9
    assert all(isinstance(t.exception(), QueueFull) for t in refused)
    stats = launcher.stats()
    assert (stats.active, stats.queued, stats.rejected) == (1, 5, 9)
    # other chats are not refused: they have free slots
    other = asyncio.create_task(launcher.run(request(workdir, "[[fake:gate]] y", key="p2p:y")))
    open_gate(fake_env)
    assert (await other).text == "echo: [[fake:gate]] y"
    done = await asyncio.gather(*(t for t in tasks if t not in refused))
    assert [r.text for r in done] == [f"echo: [[fake:gate]] m{i}" for i in range(6)]
    assert len(set(turn_pids(fake_log, "] m"))) == 1  # one warm process served the chat


async def test_every_waiting_turn_counts_against_queue_max(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    """Turns waiting behind their own conversation use up the global queue like turns waiting
    for a slot: a full queue refuses the next waiting turn of any conversation."""
    launcher = make_launcher(max_concurrent=2, queue_max=3, conversation_queue_max=5)
    running = asyncio.create_task(launcher.run(request(workdir, "[[fake:gate]] x1", key="x")))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    waiting = [
        asyncio.create_task(launcher.run(request(workdir, f"x{i}", key="x"))) for i in (2, 3, 4)
    ]
    y1 = asyncio.create_task(launcher.run(request(workdir, "[[fake:gate]] y1", key="y")))
    await fake_log.wait_for(lambda r: sum(x["event"] == "turn_start" for x in r) == 2)
    assert launcher.stats().queued == 3
    with pytest.raises(QueueFull):
        await launcher.run(request(workdir, "x5", key="x"))  # under its own limit of 5
    with pytest.raises(QueueFull):
        await launcher.run(request(workdir, "y2", key="y"))  # would wait behind y1
    assert launcher.stats().rejected == 2
    open_gate(fake_env)
    await asyncio.gather(running, y1, *waiting)


async def test_queue_max_of_one_with_one_chat(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    """The exact report: 15 messages in one chat with CLAUDE_QUEUE_MAX=1 → one runs, one
    waits, 13 get a busy answer at once."""
    launcher = make_launcher(max_concurrent=5, queue_max=1)
    tasks = [
        asyncio.create_task(launcher.run(request(workdir, f"[[fake:gate]] m{i}", key="p2p:x")))
        for i in range(15)
    ]
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    assert sum(t.done() for t in tasks) == 13
    open_gate(fake_env)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(o, QueueFull) for o in outcomes) == 13
    assert [o.text for o in outcomes if not isinstance(o, BaseException)] == [
        "echo: [[fake:gate]] m0",
        "echo: [[fake:gate]] m1",
    ]
