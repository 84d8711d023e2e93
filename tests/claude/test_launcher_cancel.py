"""Cancellation at every stage frees the slot and the queue place, and leaves no process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feishu_bot.errors import TurnCancelled
from tests.claude.support import EventRecorder, alive_pids, fake_cli_processes, request
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
    await fake_log.wait_for(lambda r: any(x["event"] == "start" for x in r))
    queued = asyncio.Event()

    async def on_queued(position: int) -> None:
        queued.set()

    waiting = asyncio.create_task(launcher.run(request(workdir, "w", key="w"), on_queued=on_queued))
    await queued.wait()
    assert launcher.stats().queued == 1
    await cancel_and_wait(waiting)
    assert launcher.stats().queued == 0
    assert launcher.queue_position("w") is None
    (Path(fake_env["HOME"]) / "gate").touch()
    await holder
    assert [s["prompt_head"] for s in fake_log.starts()] == ["[[fake:gate]] h"]
    assert_idle(launcher)


async def test_cancel_while_the_process_starts(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """The CLI runs but has printed nothing yet."""
    launcher = make_launcher(mode="hang_before_init")
    task = asyncio.create_task(launcher.run(request(workdir)))
    recs = await fake_log.wait_for(lambda r: [x for x in r if x["event"] == "start"])
    pid = recs[0]["pid"]
    await cancel_and_wait(task)
    assert alive_pids([pid]) == []
    assert_idle(launcher)
    assert launcher.stats().cancelled == 1


@pytest.mark.parametrize("ticks", [0, 1, 2, 3, 5, 8, 13, 21, 34])
async def test_cancel_at_any_early_moment_leaves_nothing_behind(
    make_launcher, workdir: Path, tmp_path: Path, ticks: int
) -> None:
    """Cancel after a few loop iterations: inside create_subprocess_exec, the stdin write, ..."""
    launcher = make_launcher(mode="hang")
    task = asyncio.create_task(launcher.run(request(workdir)))
    for _ in range(ticks):
        await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert_idle(launcher)
    assert fake_cli_processes(str(tmp_path)) == []
    # the slot is really free: the next turn runs
    ok = make_launcher()
    assert (await ok.run(request(workdir, "after"))).text == "echo: after"


async def test_cancel_while_streaming(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="spawn_child", max_concurrent=1)
    recorder = EventRecorder()
    task = asyncio.create_task(launcher.run(request(workdir), on_event=recorder))
    event = await recorder.wait_kind("text")
    assert event.text == "working"
    await fake_log.wait_for(lambda r: any(x["event"] == "child" for x in r))
    child = fake_log.records("child")[0]
    pids = [fake_log.starts()[0]["pid"], child["child_pid"], child["grandchild_pid"]]
    await cancel_and_wait(task)
    assert alive_pids(pids) == []
    assert_idle(launcher)
    # the slot was released: a new turn runs at once
    result = await launcher.run(request(workdir, "[[fake:echo]] next"))
    assert result.text == "echo: [[fake:echo]] next"


async def test_cancel_while_sleeping_between_retries(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, tmp_path: Path
) -> None:
    sleeping = asyncio.Event()

    async def sleep(delay: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()  # forever

    launcher = make_launcher(mode="api_error", sleep=sleep, max_concurrent=1)
    task = asyncio.create_task(launcher.run(request(workdir)))
    await sleeping.wait()
    stats = launcher.stats()
    assert stats.active == 1  # the slot is held through the backoff
    assert stats.running[0].elapsed_s == 0.0  # but no attempt is running
    await cancel_and_wait(task)
    assert_idle(launcher)
    assert fake_cli_processes(str(tmp_path)) == []
    assert len(fake_log.starts()) == 1


async def test_second_cancel_during_the_kill_still_waits_for_the_tree(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="hang_ignore_term", kill_grace=0.5)
    task = asyncio.create_task(launcher.run(request(workdir)))
    recs = await fake_log.wait_for(lambda r: [x for x in r if x["event"] == "start"])
    pid = recs[0]["pid"]
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.1)  # now inside the grace period
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert alive_pids([pid]) == []
    assert_idle(launcher)


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
    with pytest.raises(TurnCancelled):
        await launcher.run(request(workdir))
