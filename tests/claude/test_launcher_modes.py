"""The launcher's part in issue 18, with the fake CLI: a conversation's permission mode on the
command line and on a warm process, the scheduling tools disallowed and the system prompt, and
the gate a turn passes when it leaves the queue (a spending limit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feishu_bot.claude.launcher import Launcher
from feishu_bot.claude.launcher_config import SCHEDULING_TOOLS, LauncherConfig
from feishu_bot.claude.session import CliSession
from feishu_bot.errors import TurnRefused
from feishu_bot.events import TurnRequest
from tests.claude.support import MemoryBinding, request
from tests.fakes.claude_env import FAKE_CLAUDE_BIN
from tests.fakes.fake_claude_log import FakeClaudeLog


async def test_mode_disallowed_tools_and_system_prompt_on_the_command_line(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(permission_mode="acceptEdits", system_prompt="Use /cron to schedule.")
    await launcher.run(request(workdir, permission_mode="plan"))
    argv = fake_log.starts()[0]["argv"]
    assert argv[argv.index("--permission-mode") + 1] == "plan"  # the conversation's, not ours
    assert argv[argv.index("--disallowedTools") + 1] == ",".join(SCHEDULING_TOOLS)
    assert argv[argv.index("--append-system-prompt") + 1] == "Use /cron to schedule."
    assert SCHEDULING_TOOLS == ("CronCreate", "CronDelete", "CronList", "ScheduleWakeup")


async def test_a_warm_process_is_switched_to_the_conversations_mode(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(permission_mode="acceptEdits")
    await launcher.run(request(workdir, "one"))
    await launcher.run(request(workdir, "two"))  # same mode: nothing to change
    assert fake_log.controls("set_permission_mode") == []
    await launcher.run(request(workdir, "three", permission_mode="plan"))
    await launcher.run(request(workdir, "four", permission_mode="plan"))
    assert len(fake_log.controls("set_permission_mode")) == 1  # once: it stays in plan mode
    assert len(fake_log.starts()) == 1  # all four turns in the same warm process


async def test_a_process_that_cannot_be_switched_is_replaced(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = make_launcher(permission_mode="acceptEdits")
    await launcher.run(request(workdir, "one"))

    async def refuse(self: CliSession, mode: str | None) -> bool:
        return mode == self.permission_mode

    monkeypatch.setattr(CliSession, "set_permission_mode", refuse)
    await launcher.run(request(workdir, "two", permission_mode="plan"))
    first, second = fake_log.starts()
    assert second["argv"][second["argv"].index("--permission-mode") + 1] == "plan"
    assert first["pid"] not in fake_log.live_now()
    assert launcher.stats().active == 0 and launcher.stats().warm_idle == 1


async def test_set_permission_mode_is_false_when_the_cli_refuses_or_is_silent(
    workdir: Path,
) -> None:
    class Scripted(CliSession):
        answer: object = None

        async def _control(self, request: dict, *, wait: bool) -> dict | None:
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer  # type: ignore[return-value]

    session = Scripted("k", ["claude"], cwd=workdir, env={}, interrupt_grace=0.1)
    session.permission_mode = "acceptEdits"
    assert await session.set_permission_mode("acceptEdits")  # already: nothing asked
    session.answer = {"subtype": "error", "error": "Unsupported control request subtype"}
    assert not await session.set_permission_mode("plan")
    session.answer = ConnectionResetError("claude exited")
    assert not await session.set_permission_mode("plan")
    session.answer = {"subtype": "success", "response": {"mode": "plan"}}
    assert await session.set_permission_mode("plan") and session.permission_mode == "plan"


async def test_the_gate_refuses_a_turn_before_anything_runs(
    fake_env: dict[str, str], binding: MemoryBinding, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    refused: list[str] = []

    async def gate(req: TurnRequest) -> None:
        if req.user_id == "ou_over":
            refused.append(req.prompt)
            raise TurnRefused("Daily spending limit reached")

    config = LauncherConfig(
        bin=str(FAKE_CLAUDE_BIN), max_concurrent=1, timeout=30.0, kill_grace=1.0,
        extra_env=tuple({**fake_env, "FAKE_CLAUDE_MODE": "echo"}.items()),
    )
    launcher = Launcher(config, binding, gate=gate)
    try:
        await _gated(launcher, workdir, fake_log, refused)
    finally:
        await launcher.aclose()


async def _gated(
    launcher: Launcher, workdir: Path, fake_log: FakeClaudeLog, refused: list[str]
) -> None:
    await launcher.run(request(workdir, "fine", user_id="ou_ok"))
    with pytest.raises(TurnRefused):
        await launcher.run(request(workdir, "too much", key="p2p:c2", user_id="ou_over"))
    assert refused == ["too much"]
    assert len(fake_log.starts()) == 1  # nothing was started for it
    stats = launcher.stats()
    assert (stats.active, stats.failed, stats.ok) == (0, 0, 1)  # a refusal is not a failure
    # its slot is free again: the next turn runs (evicting the idle warm process)
    await asyncio.wait_for(launcher.run(request(workdir, "next", key="p2p:c3")), 30)
    # refused in a conversation with a warm process: the process stays, warm and counted
    warm = fake_log.starts()[-1]["pid"]
    with pytest.raises(TurnRefused):
        await launcher.run(request(workdir, "over", key="p2p:c3", user_id="ou_over"))
    assert launcher.stats().warm_idle == 1 and fake_log.live_now() == [warm]
    await asyncio.wait_for(launcher.run(request(workdir, "again", key="p2p:c3")), 30)
    assert fake_log.starts()[-1]["pid"] == warm and len(fake_log.starts()) == 2


def test_the_system_prompt_and_the_memory_share_one_append_flag(tmp_path: Path) -> None:
    """The CLI keeps only the last --append-system-prompt (measured), so the /cron hint and a
    sandboxed conversation's CLAUDE.md memory go in one."""
    from feishu_bot.claude.outcome import cli_argv
    from feishu_bot.claude.policy import ResumePoint
    from feishu_bot.claude.sandbox import SandboxPolicy, SandboxStatus
    from tests.claude.test_sandbox import settings

    policy = SandboxPolicy.from_settings(
        settings(tmp_path), SandboxStatus(True), home=str(tmp_path / "h")
    )
    cfg = LauncherConfig(bin="claude", system_prompt="Use /cron.", sandbox=policy)
    argv = cli_argv(cfg, ResumePoint(None), None, memory="the memory")
    assert argv.count("--append-system-prompt") == 1
    assert argv[argv.index("--append-system-prompt") + 1] == "Use /cron.\n\nthe memory"
    unboxed = LauncherConfig(bin="claude", system_prompt="Use /cron.")
    plain = cli_argv(unboxed, ResumePoint(None), None)
    assert plain.count("--append-system-prompt") == 1
    assert plain[plain.index("--append-system-prompt") + 1] == "Use /cron."
