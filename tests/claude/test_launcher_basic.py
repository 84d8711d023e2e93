"""One turn through the launcher with the fake CLI: arguments, events, results, errors.

Turns run in warm processes by default (the process stays after its turn); tests about a
process per turn say ``warm=False``.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from feishu_bot.claude.launcher import LauncherConfig
from feishu_bot.errors import CliNotFound, PermanentCliError
from tests.claude.support import EventRecorder, MemoryBinding, request
from tests.fakes.fake_claude_log import FakeClaudeLog


async def test_echo_turn_streams_events_and_saves_the_session(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher()
    seen_binding_at_init: list[dict[str, str]] = []
    recorder = EventRecorder()

    async def on_event(event) -> None:
        if event.kind == "init":
            seen_binding_at_init.append(dict(binding.sessions))
        await recorder(event)

    result = await launcher.run(request(workdir, "hello world"), on_event=on_event)

    assert result.text == "echo: hello world"
    assert result.is_error is False
    assert result.attempts == 1
    assert result.exit_code is None  # the process did not exit: it stays warm
    assert result.stale_session_reset is False
    assert result.num_turns == 1
    assert result.cost_usd > 0
    kinds = recorder.kinds()
    assert kinds[0] == "init" and kinds[-1] == "result"
    texts = [e.text for e in recorder.events if e.kind == "text"]
    assert texts[-1] == "echo: hello world"
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert len(texts) >= 3  # token-level deltas arrived one by one
    # the new session id was saved before the init event was handed on
    assert seen_binding_at_init == [{"p2p:c1": result.session_id}]
    assert binding.calls == [("set", "p2p:c1", result.session_id)]
    start = fake_log.starts()[0]
    assert start["argv"][:8] == [
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-prompt-tool",
        "stdio",
        "--include-partial-messages",
    ]
    assert "-p" not in start["argv"]
    assert "--resume" not in start["argv"]
    assert start["argv"][start["argv"].index("--permission-mode") + 1] == "acceptEdits"
    stats = launcher.stats()
    assert (stats.ok, stats.failed, stats.active, stats.queued) == (1, 0, 0, 0)
    assert (stats.warm_idle, stats.cold_starts) == (1, 1)
    assert launcher.is_warm("p2p:c1")
    assert fake_log.live_now() == [start["pid"]]


async def test_arguments_from_config_and_request(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(
        allowed_tools=("Bash(git *)", "Edit"),
        permission_mode="plan",
        model="cfg-model",
        include_partial=False,
    )
    await launcher.run(request(workdir, session_id=None, model="req-model"))
    argv = fake_log.starts()[0]["argv"]
    assert "--include-partial-messages" not in argv
    assert argv[argv.index("--allowedTools") + 1] == "Bash(git *),Edit"
    assert argv[argv.index("--permission-mode") + 1] == "plan"
    assert argv[argv.index("--model") + 1] == "req-model"


async def test_resume_forks_and_keeps_context(
    make_launcher, workdir: Path, binding: MemoryBinding, fake_log: FakeClaudeLog
) -> None:
    """One process per turn: the second turn resumes the stored session in a fork."""
    launcher = make_launcher(mode="history", warm=False)
    first = await launcher.run(request(workdir, "one"))
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.text == "history: one | two"
    argv = fake_log.starts()[1]["argv"]
    assert argv[argv.index("--resume") + 1] == first.session_id
    assert "--fork-session" in argv
    assert second.session_id != first.session_id
    assert binding.sessions["p2p:c1"] == second.session_id


async def test_resume_without_fork_keeps_the_id(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, binding: MemoryBinding
) -> None:
    launcher = make_launcher(mode="history", fork_session=False, warm=False)
    first = await launcher.run(request(workdir, "one"))
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.session_id == first.session_id
    assert second.text == "history: one | two"
    assert "--fork-session" not in fake_log.starts()[1]["argv"]
    # the same id is not saved again
    assert binding.calls == [("set", "p2p:c1", first.session_id)]


async def test_prompt_of_200_kb_goes_through_stdin(make_launcher, workdir: Path) -> None:
    launcher = make_launcher()
    prompt = ("0123456789abcdef" * 64 + "\n") * 200  # ~200 KB, newlines kept
    assert len(prompt.encode()) > 200_000
    result = await launcher.run(request(workdir, prompt))
    assert result.text == "echo: " + prompt


async def test_one_megabyte_line_is_parsed(make_launcher, workdir: Path) -> None:
    launcher = make_launcher(mode="big_line")
    result = await launcher.run(request(workdir, "big"))
    assert result.text == "echo: big"


async def test_line_over_the_limit_is_dropped_not_fatal(make_launcher, workdir: Path) -> None:
    launcher = make_launcher(mode="big_line", max_line_bytes=100_000)
    result = await launcher.run(request(workdir, "big"))
    assert result.text == "echo: big"


async def test_tool_events_carry_name_and_detail(make_launcher, workdir: Path) -> None:
    launcher = make_launcher(mode="tool")
    recorder = EventRecorder()
    result = await launcher.run(request(workdir, "run"), on_event=recorder)
    tools = [e for e in recorder.events if e.kind == "tool"]
    assert [(t.text, t.detail) for t in tools] == [("Bash", "echo hi")]
    assert result.extra["tools"] == ("Bash",)
    assert result.extra["streamed_text"] == "I'll run it.\n\necho: run"


async def test_cli_not_found(make_launcher, workdir: Path, tmp_path: Path) -> None:
    launcher = make_launcher(bin=str(tmp_path / "no-such-claude"))
    with pytest.raises(CliNotFound):
        await launcher.run(request(workdir))
    stats = launcher.stats()
    assert (stats.active, stats.failed) == (0, 1)


async def test_cli_not_executable(make_launcher, workdir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "claude"
    plain.write_text("#!/bin/sh\n")
    launcher = make_launcher(bin=str(plain))
    with pytest.raises(CliNotFound):
        await launcher.run(request(workdir))


async def test_missing_workdir_is_permanent(make_launcher, tmp_path: Path) -> None:
    launcher = make_launcher()
    with pytest.raises(PermanentCliError):
        await launcher.run(request(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("max_turns", "error_max_turns"),
        ("root_bypass", "root"),
        ("bad_arg", "unknown option"),
    ],
)
async def test_permanent_failures_are_not_retried(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog, mode: str, reason: str
) -> None:
    launcher = make_launcher(mode=mode, max_retries=3)
    with pytest.raises(PermanentCliError) as info:
        await launcher.run(request(workdir))
    assert reason in str(info.value)
    assert info.value.attempts == 1
    # max_turns is a result of a live process; the other two refuse to start at all
    assert info.value.exit_code == (None if mode == "max_turns" else 1)
    assert len(fake_log.starts()) == 1
    assert launcher.stats().retried == 0


async def test_bypass_permissions_as_root_is_refused_by_the_cli(
    make_launcher, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root is refused")
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    launcher = make_launcher(permission_mode="bypassPermissions")
    with pytest.raises(PermanentCliError) as info:
        await launcher.run(request(workdir))
    assert "root/sudo" in info.value.stderr_tail


async def test_callback_errors_do_not_break_the_turn(make_launcher, workdir: Path) -> None:
    launcher = make_launcher()
    calls = 0

    async def broken(event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("card update failed")

    result = await launcher.run(request(workdir, "x"), on_event=broken)
    assert result.text == "echo: x"
    assert calls >= 3


async def test_extra_env_reaches_the_child(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(env={"FAKE_CLAUDE_SESSION_ID": "fixed-session-id"})
    result = await launcher.run(request(workdir))
    assert result.session_id == "fixed-session-id"


def test_config_from_settings() -> None:
    from feishu_bot.config import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        FEISHU_APP_ID="a",
        FEISHU_APP_SECRET="s",
        CLAUDE_BIN="/x/claude",
        CLAUDE_MAX_CONCURRENT=3,
        CLAUDE_QUEUE_MAX=7,
        CLAUDE_TIMEOUT=12.5,
        CLAUDE_MAX_RETRIES=1,
        CLAUDE_RETRY_DELAY=0.5,
        CLAUDE_PERMISSION_MODE="plan",
        CLAUDE_ALLOWED_TOOLS="Bash, Edit",
        CLAUDE_MODEL="",
    )
    cfg = LauncherConfig.from_settings(settings)
    assert cfg == LauncherConfig(
        bin="/x/claude",
        max_concurrent=3,
        queue_max=7,
        timeout=12.5,
        max_retries=1,
        retry_delay=0.5,
        permission_mode="plan",
        allowed_tools=("Bash", "Edit"),
        model=None,
        user_queue_max=5,  # CLAUDE_USER_QUEUE_MAX's default
        env_drop=tuple(Settings.model_fields),
    )
    # the bot's own settings and secrets are kept from the child (hardening #7)
    assert {"FEISHU_APP_SECRET", "FEISHU_APP_ID", "CLAUDE_BIN"} <= set(cfg.env_drop)
    assert LauncherConfig.from_settings(settings, kill_grace=1.0).kill_grace == 1.0
    with pytest.raises(ValueError):
        LauncherConfig(bin="x", max_concurrent=0)


def test_log_records_are_json(fake_log: FakeClaudeLog) -> None:
    # the helper tolerates a missing file
    assert fake_log.records() == []
    record = {"event": "start", "pid": 1, "mono": 0.0, "prompt_head": ""}
    fake_log.path.write_text(json.dumps(record) + "\n")
    assert fake_log.starts()[0]["pid"] == 1
