"""Failure classes: stale sessions, transient retries with backoff, timeouts.

A 529 is retried in a new process resumed from just before the failed turn (measured: the
failed turn stays in the CLI's history, even in the same process); a stale ``--resume`` is
cleared and the turn starts fresh once; a timeout interrupts the turn and keeps the process,
and the tree is killed only when the interrupt is ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from feishu_bot.errors import TransientCliError, TurnTimeout
from tests.claude.support import MemoryBinding, alive_pids, request, turn_pids, wait_exit
from tests.fakes.fake_claude_log import FakeClaudeLog


def arg(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


class RecordingSleep:
    """Injected instead of asyncio.sleep: records the backoff delays, does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


# ---------------------------------------------------------------- stale sessions
async def test_stale_session_is_cleared_and_retried_fresh_once(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog
) -> None:
    binding.sessions["p2p:c1"] = "6b0e1c1e-0000-4000-8000-00000000dead"
    launcher = make_launcher(max_retries=0)
    result = await launcher.run(
        request(workdir, "hi", session_id="6b0e1c1e-0000-4000-8000-00000000dead")
    )
    assert result.text == "echo: hi"
    assert result.stale_session_reset is True
    assert result.attempts == 2  # CLI runs; the stale one does not use up a retry
    assert binding.calls == [("clear", "p2p:c1"), ("set", "p2p:c1", result.session_id)]
    assert binding.sessions["p2p:c1"] == result.session_id
    first, second = (s["argv"] for s in fake_log.starts())
    assert first[first.index("--resume") + 1] == "6b0e1c1e-0000-4000-8000-00000000dead"
    assert "--resume" not in second
    stats = launcher.stats()
    assert (stats.stale_cleared, stats.retried, stats.ok) == (1, 0, 1)
    # the fresh process is the conversation's warm one now
    assert launcher.is_warm("p2p:c1")
    assert turn_pids(fake_log) == [fake_log.starts()[1]["pid"]]


async def test_stale_mode_with_an_existing_session(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher()
    first = await launcher.run(request(workdir, "one"))
    stale = make_launcher(mode="stale")
    result = await stale.run(request(workdir, "two", session_id=first.session_id))
    assert result.stale_session_reset is True
    assert binding.calls[-2:] == [("clear", "p2p:c1"), ("set", "p2p:c1", result.session_id)]
    assert len(fake_log.starts()) == 3


async def test_stale_happens_once_per_turn(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog
) -> None:
    """After the reset the turn runs fresh; a stale warm process is never reused for it."""
    launcher = make_launcher(mode="stale", max_retries=3)
    result = await launcher.run(request(workdir, "hi", session_id="no-such-session"))
    assert (result.text, result.stale_session_reset) == ("echo: hi", True)
    assert launcher.stats().stale_cleared == 1
    assert ["--resume" in s["argv"] for s in fake_log.starts()] == [True, False]


async def test_stale_then_transient_failure_retries_fresh(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    sleep = RecordingSleep()
    # the unknown --resume is refused at start (uses no mode); then turn 1: api error in the
    # fresh process; its retry (a new fresh process: nothing to go back to) is fine
    launcher = make_launcher(mode="api_error,echo", sleep=sleep, max_retries=1)
    result = await launcher.run(request(workdir, "x", session_id="no-such-session"))
    assert result.stale_session_reset is True
    assert result.text == "echo: x"
    assert result.attempts == 3
    assert len(sleep.delays) == 1
    argvs = [s["argv"] for s in fake_log.starts()]
    assert ["--resume" in a for a in argvs] == [True, False, False]


# ---------------------------------------------------------------- transient retries
async def test_529_is_retried_in_a_new_process_cut_before_the_failed_turn(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """Measured on 2.1.329: a turn that failed with 529 stays in the CLI's history, so it is
    never resent in the same process; each retry resumes before it (--resume-session-at)."""
    sleep = RecordingSleep()
    launcher = make_launcher(mode="echo,api_error", sleep=sleep, max_retries=2, retry_delay=0.5)
    first = await launcher.run(request(workdir, "one"))
    with pytest.raises(TransientCliError) as info:
        await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert info.value.attempts == 3
    assert info.value.exit_code is None  # a failed result, not a crash
    assert "529" in str(info.value)
    assert info.value.side_effects == ()
    starts = fake_log.starts()
    assert len(starts) == 3
    cuts = {(arg(s["argv"], "--resume"), arg(s["argv"], "--resume-session-at")) for s in starts[1:]}
    ((resumed, cut),) = cuts  # both retries go back to the same point
    assert resumed == first.session_id and cut is not None
    assert all("--fork-session" in s["argv"] for s in starts[1:])
    assert len(sleep.delays) == 2
    # retry k waits retry_delay * 2**k plus a jitter of at most retry_delay
    assert 0.5 <= sleep.delays[0] <= 1.0
    assert 1.0 <= sleep.delays[1] <= 1.5
    stats = launcher.stats()
    assert (stats.retried, stats.failed, stats.ok, stats.cold_starts) == (2, 1, 1, 3)
    # the last process holds the failed turn in its history: retired, not kept warm
    assert not launcher.is_warm("p2p:c1")


async def test_backoff_really_sleeps_between_attempts(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="crash", max_retries=1, retry_delay=0.2)
    with pytest.raises(TransientCliError):
        await launcher.run(request(workdir))
    recs = fake_log.records()
    first_exit = next(r["mono"] for r in recs if r["event"] == "exit")
    second_start = [r["mono"] for r in recs if r["event"] == "start"][1]
    assert second_start - first_exit >= 0.2


@pytest.mark.parametrize("warm", [True, False])
async def test_retry_after_529_does_not_repeat_the_prompt(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog, warm: bool
) -> None:
    sleep = RecordingSleep()
    launcher = make_launcher(mode="history,api_error,history", sleep=sleep, warm=warm)
    first = await launcher.run(request(workdir, "one"))
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.attempts == 2
    assert second.text == "history: one | two"  # "two" once, not twice
    assert binding.sessions["p2p:c1"] == second.session_id
    pids = turn_pids(fake_log)
    assert pids[1] != pids[2]  # never resent where the failed turn is in the history
    assert (pids[0] == pids[1]) is warm


async def test_without_fork_a_resumed_turn_that_failed_is_not_retried(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """Resumed in place, the stored session now holds the failed turn: a retry from it would
    show the message twice, and there is no known point to cut at."""
    sleep = RecordingSleep()
    launcher = make_launcher(
        mode="history,api_error,history", sleep=sleep, fork_session=False, warm=False
    )
    first = await launcher.run(request(workdir, "one"))
    with pytest.raises(TransientCliError) as info:
        await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert info.value.attempts == 1
    assert sleep.delays == []
    assert len(fake_log.starts()) == 2


@pytest.mark.parametrize(("mode", "reason"), [("crash", "exit code 1"), ("sigkill", "signal 9")])
async def test_crashes_and_signals_are_transient(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, mode: str, reason: str
) -> None:
    launcher = make_launcher(mode=mode, max_retries=1, sleep=RecordingSleep())
    with pytest.raises(TransientCliError) as info:
        await launcher.run(request(workdir))
    assert reason in str(info.value)
    assert info.value.attempts == 2
    assert len(fake_log.starts()) == 2  # a dead process is retried in a new one
    if mode == "crash":
        assert "TypeError" in info.value.stderr_tail
        assert info.value.partial_text == "partial answer"
    assert launcher.stats().warm_idle == 0 and not launcher.is_warm("p2p:c1")


# ---------------------------------------------------------------- timeouts
@pytest.mark.parametrize("warm", [True, False])
async def test_timeout_interrupts_and_kills_the_tools_children(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, warm: bool
) -> None:
    # generous: a cold fake must start and print before it (the clock runs from the write)
    launcher = make_launcher(mode="spawn_child", timeout=3.0, max_retries=2, warm=warm)
    with pytest.raises(TurnTimeout) as info:
        await launcher.run(request(workdir))
    assert info.value.attempts == 1  # a timeout is not retried
    assert info.value.partial_text == "working"
    child = fake_log.records("child")[0]
    cli = fake_log.starts()[0]["pid"]
    assert alive_pids([child["child_pid"], child["grandchild_pid"]]) == []
    assert fake_log.controls("interrupt")  # (repeated if the first came too early)
    if warm:
        assert alive_pids([cli]) == [cli]  # interrupted, still warm
        assert launcher.is_warm("p2p:c1")
    else:
        assert alive_pids([cli]) == []
        assert (await wait_exit(fake_log, cli))["reason"] == "stdin EOF"
    stats = launcher.stats()
    assert (stats.timeouts, stats.failed, stats.active, stats.retried) == (1, 1, 0, 0)


async def test_timeout_escalates_to_sigkill_after_the_grace(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """Interrupt ignored, then SIGTERM ignored: SIGKILL after both graces."""
    launcher = make_launcher(timeout=1.0, interrupt_grace=0.3, kill_grace=0.3)
    await launcher.run(request(workdir, "warm up"))  # the deaf turn starts at once
    with pytest.raises(TurnTimeout) as info:
        await launcher.run(request(workdir, "[[fake:hang_deaf_ignore_term]] x"))
    assert info.value.exit_code == -9
    pid = fake_log.starts()[0]["pid"]
    assert alive_pids([pid]) == []
    assert fake_log.records("exit") == []  # it never got to exit by itself
    assert not launcher.is_warm("p2p:c1") and launcher.stats().warm_idle == 0


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_given_up_turn_lingers_in_the_next_turn(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog, warm: bool
) -> None:
    """The CLI keeps a failed turn in its history: after the bot gave up on "two", the next
    turn must not carry it (the process is retired and the session resumed from before it)."""
    launcher = make_launcher(
        mode="history,api_error,history", sleep=RecordingSleep(), max_retries=0, warm=warm
    )
    first = await launcher.run(request(workdir, "one"))
    with pytest.raises(TransientCliError):
        await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert not launcher.is_warm("p2p:c1")
    third = await launcher.run(request(workdir, "three", session_id=binding.sessions["p2p:c1"]))
    assert third.text == "history: one | three"
