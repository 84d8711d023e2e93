"""Failure classes: stale sessions, transient retries with backoff, timeouts that kill trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feishu_bot.errors import TransientCliError, TurnTimeout
from tests.claude.support import MemoryBinding, alive_pids, request
from tests.fakes.fake_claude_log import FakeClaudeLog


class RecordingSleep:
    """Injected instead of asyncio.sleep: records the backoff delays, does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def session_prompts(home: Path, session_id: str) -> list[str]:
    """User prompts stored in a fake CLI session file."""
    files = list((home / ".claude" / "projects").rglob(f"{session_id}.jsonl"))
    assert len(files) == 1, files
    recs = [json.loads(line) for line in files[0].read_text().splitlines()]
    return [r["text"] for r in recs if r["role"] == "user"]


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
    assert result.attempts == 2
    assert binding.calls == [("clear", "p2p:c1"), ("set", "p2p:c1", result.session_id)]
    assert binding.sessions["p2p:c1"] == result.session_id
    first, second = (s["argv"] for s in fake_log.starts())
    assert first[first.index("--resume") + 1] == "6b0e1c1e-0000-4000-8000-00000000dead"
    assert "--resume" not in second
    stats = launcher.stats()
    assert (stats.stale_cleared, stats.retried, stats.ok) == (1, 0, 1)


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


async def test_stale_then_transient_failure_retries_fresh(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    sleep = RecordingSleep()
    # run 0: the unknown --resume is stale; run 1: api error; run 2: fine
    launcher = make_launcher(mode="echo,api_error,echo", sleep=sleep, max_retries=2)
    result = await launcher.run(request(workdir, "x", session_id="no-such-session"))
    assert result.stale_session_reset is True
    assert result.attempts == 3
    assert len(sleep.delays) == 1
    argvs = [s["argv"] for s in fake_log.starts()]
    assert ["--resume" in a for a in argvs] == [True, False, False]


# ---------------------------------------------------------------- transient retries
async def test_transient_failures_retry_with_exponential_backoff_then_give_up(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    sleep = RecordingSleep()
    launcher = make_launcher(mode="api_error", sleep=sleep, max_retries=2, retry_delay=0.5)
    with pytest.raises(TransientCliError) as info:
        await launcher.run(request(workdir))
    assert info.value.attempts == 3
    assert info.value.exit_code == 1
    assert "529" in str(info.value)
    assert len(fake_log.starts()) == 3
    assert len(sleep.delays) == 2
    # retry k waits retry_delay * 2**k plus a jitter of at most retry_delay
    assert 0.5 <= sleep.delays[0] <= 1.0
    assert 1.0 <= sleep.delays[1] <= 1.5
    stats = launcher.stats()
    assert (stats.retried, stats.failed, stats.ok) == (2, 1, 0)


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


async def test_retry_succeeds_and_does_not_resume_the_failed_new_session(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog
) -> None:
    sleep = RecordingSleep()
    launcher = make_launcher(mode="api_error,echo", sleep=sleep)
    result = await launcher.run(request(workdir, "hello"))
    assert result.text == "echo: hello"
    assert result.attempts == 2
    failed_sid = binding.calls[0][2]
    assert failed_sid != result.session_id
    assert binding.calls == [("set", "p2p:c1", failed_sid), ("set", "p2p:c1", result.session_id)]
    assert all("--resume" not in s["argv"] for s in fake_log.starts())


async def test_retry_of_a_resumed_turn_does_not_repeat_the_prompt(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_env: dict[str, str]
) -> None:
    sleep = RecordingSleep()
    # run 0: first turn; run 1: the resumed turn fails after init; run 2: its retry
    launcher = make_launcher(mode="history,api_error,history", sleep=sleep)
    first = await launcher.run(request(workdir, "one"))
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.attempts == 2
    assert second.text == "history: one | two"  # "two" once, not twice
    home = Path(fake_env["HOME"])
    # the retry resumed the untouched base, so its fork holds "two" once; the base itself,
    # now superseded by that fork, was removed from disk
    assert session_prompts(home, second.session_id) == ["one", "two"]
    assert list((home / ".claude").rglob(f"{first.session_id}.jsonl")) == []
    assert binding.sessions["p2p:c1"] == second.session_id


async def test_without_fork_a_resumed_turn_that_failed_after_init_is_not_retried(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, fake_env: dict[str, str]
) -> None:
    sleep = RecordingSleep()
    launcher = make_launcher(mode="history,api_error,history", sleep=sleep, fork_session=False)
    first = await launcher.run(request(workdir, "one"))
    with pytest.raises(TransientCliError) as info:
        await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert info.value.attempts == 1
    assert sleep.delays == []
    assert len(fake_log.starts()) == 2
    assert session_prompts(Path(fake_env["HOME"]), first.session_id) == ["one", "two"]


@pytest.mark.parametrize(("mode", "reason"), [("crash", "exit code 1"), ("sigkill", "signal 9")])
async def test_crashes_and_signals_are_transient(
    make_launcher, workdir: Path, mode: str, reason: str
) -> None:
    launcher = make_launcher(mode=mode, max_retries=1, sleep=RecordingSleep())
    with pytest.raises(TransientCliError) as info:
        await launcher.run(request(workdir))
    assert reason in str(info.value)
    assert info.value.attempts == 2
    if mode == "crash":
        assert "TypeError" in info.value.stderr_tail
        assert info.value.partial_text == "partial answer"


# ---------------------------------------------------------------- timeouts
async def test_timeout_kills_the_whole_tree(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="spawn_child", timeout=1.5, kill_grace=1.0, max_retries=2)
    with pytest.raises(TurnTimeout) as info:
        await launcher.run(request(workdir))
    assert info.value.attempts == 1  # a timeout is not retried
    assert info.value.partial_text == "working"
    child = fake_log.records("child")[0]
    cli = fake_log.starts()[0]["pid"]
    pids = [cli, child["child_pid"], child["grandchild_pid"]]
    assert alive_pids(pids) == []
    assert fake_log.records("exit")[0]["signal"] == "SIGTERM"
    stats = launcher.stats()
    assert (stats.timeouts, stats.failed, stats.active, stats.retried) == (1, 1, 0, 0)


async def test_timeout_escalates_to_sigkill_after_the_grace(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="hang_ignore_term", timeout=0.5, kill_grace=0.3)
    with pytest.raises(TurnTimeout) as info:
        await launcher.run(request(workdir))
    assert info.value.exit_code == -9
    assert alive_pids([fake_log.starts()[0]["pid"]]) == []
    assert fake_log.records("exit") == []  # it never got to exit by itself
