"""Cancellation (``/stop``, shutdown) at every stage frees the slot and the queue place.

A warm process (the default) is interrupted and stays for the conversation's next turn; with
``warm=False`` (one process per turn) nothing is left behind. Either way the tool's children die
with the turn.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feishu_bot.errors import TurnCancelled
from tests.claude.support import (
    EventRecorder,
    alive_pids,
    fake_cli_processes,
    open_gate,
    request,
    turn_pids,
    wait_exit,
)
from tests.fakes.fake_claude_log import FakeClaudeLog


def assert_idle(launcher) -> None:
    stats = launcher.stats()
    assert (stats.active, stats.queued, stats.running) == (0, 0, ())


async def cancel_and_wait(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_while_queued(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    launcher = make_launcher(max_concurrent=1)
    holder = asyncio.create_task(launcher.run(request(workdir, "[[fake:gate]] h", key="h")))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    queued = asyncio.Event()

    async def on_queued(position: int) -> None:
        queued.set()

    waiting = asyncio.create_task(launcher.run(request(workdir, "w", key="w"), on_queued=on_queued))
    await queued.wait()
    assert launcher.stats().queued == 1
    await cancel_and_wait(waiting)
    assert launcher.stats().queued == 0
    assert launcher.queue_position("w") is None
    open_gate(fake_env)
    await holder
    assert [s["prompt_head"] for s in fake_log.starts()] == ["[[fake:gate]] h"]
    assert [t["prompt_head"] for t in fake_log.turns()] == ["[[fake:gate]] h"]
    assert_idle(launcher)


@pytest.mark.parametrize("warm", [True, False])
async def test_cancel_before_the_first_output(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, warm: bool
) -> None:
    """The CLI runs the turn but has printed nothing yet: the interrupt still ends it."""
    launcher = make_launcher(mode="hang_before_init", warm=warm)
    task = asyncio.create_task(launcher.run(request(workdir)))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    pid = fake_log.starts()[0]["pid"]
    await cancel_and_wait(task)
    assert fake_log.controls("interrupt")  # (repeated if the first came too early)
    assert_idle(launcher)
    assert launcher.stats().cancelled == 1
    if warm:
        assert alive_pids([pid]) == [pid]
        assert launcher.is_warm("p2p:c1") and launcher.stats().warm_idle == 1
    else:
        assert alive_pids([pid]) == []
        assert not launcher.is_warm("p2p:c1") and launcher.stats().warm_idle == 0
    result = await launcher.run(request(workdir, "[[fake:echo]] next"))
    assert result.text == "echo: [[fake:echo]] next"
    assert (turn_pids(fake_log)[1] == pid) is warm


@pytest.mark.parametrize("warm", [True, False])
@pytest.mark.parametrize("ticks", [0, 1, 2, 3, 5, 8, 13, 21, 34])
async def test_cancel_at_any_early_moment_leaves_nothing_behind(
    make_launcher, workdir: Path, tmp_path: Path, fake_log: FakeClaudeLog, ticks: int, warm: bool
) -> None:
    """Cancel after a few loop iterations: inside create_subprocess_exec, the stdin write, ...

    Nothing runs on unattended: the process is gone, or idle and answering the next turn with
    that turn's own result (not the cancelled one's)."""
    launcher = make_launcher(mode="hang", warm=warm)
    task = asyncio.create_task(launcher.run(request(workdir)))
    for _ in range(ticks):
        await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert_idle(launcher)
    live = fake_cli_processes(str(tmp_path))
    if warm:
        assert len(live) <= 1
        assert launcher.stats().warm_idle == len(live)
    else:
        assert live == []
    # the slot is really free and the process (if any) is idle: the next turn gets its own answer
    result = await asyncio.wait_for(launcher.run(request(workdir, "[[fake:echo]] after")), 30)
    assert result.text == "echo: [[fake:echo]] after"


@pytest.mark.parametrize("warm", [True, False])
async def test_cancel_while_streaming(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, warm: bool
) -> None:
    launcher = make_launcher(mode="spawn_child", max_concurrent=1, warm=warm)
    recorder = EventRecorder()
    task = asyncio.create_task(launcher.run(request(workdir), on_event=recorder))
    event = await recorder.wait_kind("text")
    assert event.text == "working"
    await fake_log.wait_for(lambda r: any(x["event"] == "child" for x in r))
    child = fake_log.records("child")[0]
    cli = fake_log.starts()[0]["pid"]
    await cancel_and_wait(task)
    # the tool's processes die with the turn, the CLI only without warm sessions
    assert alive_pids([child["child_pid"], child["grandchild_pid"]]) == []
    assert alive_pids([cli]) == ([cli] if warm else [])
    (end,) = await fake_log.wait_for(lambda r: [x for x in r if x["event"] == "turn_end"])
    assert end["terminal_reason"] == "aborted_streaming"
    assert_idle(launcher)
    # the slot was released: a new turn runs at once
    result = await launcher.run(request(workdir, "[[fake:echo]] next"))
    assert result.text == "echo: [[fake:echo]] next"
    assert (turn_pids(fake_log)[1] == cli) is warm


@pytest.mark.parametrize("warm", [True, False])
async def test_cancel_while_sleeping_between_retries(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, tmp_path: Path, warm: bool
) -> None:
    """The failed process is closed before the backoff: its history holds the failed turn,
    so it must not stay warm for the next turn when the retry is stopped."""
    sleeping = asyncio.Event()

    async def sleep(delay: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()  # forever

    launcher = make_launcher(mode="api_error", sleep=sleep, max_concurrent=1, warm=warm)
    task = asyncio.create_task(launcher.run(request(workdir)))
    await sleeping.wait()
    stats = launcher.stats()
    assert stats.active == 1  # the slot is held through the backoff
    assert stats.running[0].elapsed_s == 0.0  # but no attempt is running
    await cancel_and_wait(task)
    assert_idle(launcher)
    assert fake_cli_processes(str(tmp_path)) == []
    assert len(fake_log.starts()) == 1
    assert not launcher.is_warm("p2p:c1") and launcher.stats().warm_idle == 0


async def test_second_cancel_during_the_stop_still_waits_for_the_tree(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """A CLI deaf to the interrupt is killed after the grace, even if /stop comes twice."""
    launcher = make_launcher(mode="hang_deaf", interrupt_grace=0.5, kill_grace=0.5)
    task = asyncio.create_task(launcher.run(request(workdir)))
    await fake_log.wait_for(lambda r: any(x["event"] == "turn_start" for x in r))
    pid = fake_log.starts()[0]["pid"]
    task.cancel()
    await fake_log.wait_for(lambda r: any(x.get("subtype") == "interrupt" for x in r))
    task.cancel()  # now inside the interrupt grace
    with pytest.raises(asyncio.CancelledError):
        await task
    assert alive_pids([pid]) == []
    assert (await wait_exit(fake_log, pid))["signal"] == "SIGTERM"
    assert_idle(launcher)
    assert launcher.stats().warm_idle == 0 and not launcher.is_warm("p2p:c1")


async def test_aclose_cancels_running_and_queued_turns(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, tmp_path: Path
) -> None:
    launcher = make_launcher(mode="spawn_child", max_concurrent=2)
    tasks = [
        asyncio.create_task(launcher.run(request(workdir, f"t{i}", key=f"k{i}"))) for i in range(3)
    ]
    await fake_log.wait_for(lambda r: len([x for x in r if x["event"] == "child"]) == 2)
    assert launcher.stats().queued == 1
    await launcher.aclose()
    for task in tasks:
        assert task.done()
        with pytest.raises(asyncio.CancelledError):
            task.result()
    children = fake_log.records("child")
    pids = [s["pid"] for s in fake_log.starts()]
    pids += [c["child_pid"] for c in children] + [c["grandchild_pid"] for c in children]
    assert alive_pids(pids) == []
    assert fake_cli_processes(str(tmp_path)) == []
    assert_idle(launcher)
    assert launcher.stats().warm_idle == 0
    with pytest.raises(TurnCancelled):
        await launcher.run(request(workdir))


async def test_stop_while_a_big_message_is_still_being_written(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """Regression: a stop during the stdin write of a big prompt returned without interrupting,
    the warm CLI went on with a turn nobody waited for, and the next turn got its result."""
    launcher = make_launcher(mode="hang")
    task = asyncio.create_task(launcher.run(request(workdir, "x" * 16_000_000)))
    await fake_log.wait_for(lambda r: any(x["event"] == "start" for x in r))
    await cancel_and_wait(task)
    assert_idle(launcher)
    result = await asyncio.wait_for(launcher.run(request(workdir, "[[fake:echo]] after")), 30)
    assert result.text == "echo: [[fake:echo]] after"
