"""The launcher with the real pinned Claude CLI against FakeAnthropic (offline).

These fail, never skip, when the binary is missing: the pinned CLI is part of the project.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest

from feishu_bot.claude.launcher import Launcher, LauncherConfig
from feishu_bot.errors import TurnTimeout
from tests.claude.support import EventRecorder, MemoryBinding, alive_pids, poll_until, request
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env_overrides
from tests.fakes.fake_anthropic import ApiError, FakeAnthropic, Hang, ToolUse

pytestmark = pytest.mark.real_cli


@pytest.fixture
def real_bin() -> str:
    assert REAL_CLAUDE_BIN.exists(), f"pinned CLI missing: {REAL_CLAUDE_BIN} (run npm ci)"
    assert os.access(REAL_CLAUDE_BIN, os.X_OK)
    return str(REAL_CLAUDE_BIN)


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
async def real_launcher(
    real_bin: str,
    api: FakeAnthropic,
    home: Path,
    binding: MemoryBinding,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., Launcher]]:
    # As root the CLI refuses bypass permissions unless IS_SANDBOX is set; keep the real rule.
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    made: list[Launcher] = []

    def factory(**config: object) -> Launcher:
        env = claude_env_overrides(api.base_url, home)
        values: dict[str, object] = {
            "bin": real_bin,
            "timeout": 60.0,
            "retry_delay": 0.01,
            "kill_grace": 3.0,
            "extra_env": tuple(env.items()),
        }
        values.update(config)
        launcher = Launcher(LauncherConfig(**values), binding)  # type: ignore[arg-type]
        made.append(launcher)
        return launcher

    yield factory
    for launcher in made:
        await launcher.aclose()


def processes_under(marker: str) -> list[psutil.Process]:
    """Live processes whose environment or command line mentions ``marker``.

    ``proc.info["cmdline"]`` holds the command line read during the scan.
    """
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = proc.info["cmdline"] or []
        environ = proc.info["environ"] or {}
        if marker in " ".join(cmdline) + " " + " ".join(environ.values()):
            found.append(proc)
    return found


async def test_real_turn(
    real_launcher, api: FakeAnthropic, workdir: Path, binding: MemoryBinding
) -> None:
    launcher = real_launcher()
    recorder = EventRecorder()
    result = await launcher.run(request(workdir, "hello real cli"), on_event=recorder)
    assert result.text == "echo: hello real cli"
    assert result.is_error is False and result.exit_code == 0
    assert result.session_id and binding.sessions["p2p:c1"] == result.session_id
    kinds = recorder.kinds()
    assert kinds[0] == "init" and kinds[-1] == "result"
    texts = [e.text for e in recorder.events if e.kind == "text"]
    assert len(texts) >= 2 and texts[-1] == "echo: hello real cli"  # token streaming
    (req,) = api.message_requests
    assert req.query.get("beta") == "true"
    assert req.body["stream"] is True
    assert req.last_user_text == "hello real cli"


async def test_real_resumed_turn_carries_the_earlier_exchange(
    real_launcher, api: FakeAnthropic, workdir: Path, binding: MemoryBinding
) -> None:
    launcher = real_launcher()
    first = await launcher.run(request(workdir, "first question"))
    second = await launcher.run(request(workdir, "second question", session_id=first.session_id))
    assert second.text == "echo: second question"
    body = api.message_requests[-1]
    assert body.user_texts == ["first question", "second question"]
    assert "echo: first question" in body.assistant_texts
    assert binding.sessions["p2p:c1"] == second.session_id


async def test_real_stale_resume_is_recovered(
    real_launcher, api: FakeAnthropic, workdir: Path, binding: MemoryBinding
) -> None:
    stale_id = str(uuid.uuid4())
    binding.sessions["p2p:c1"] = stale_id
    launcher = real_launcher(max_retries=0)
    result = await launcher.run(request(workdir, "are you there", session_id=stale_id))
    assert result.text == "echo: are you there"
    assert result.stale_session_reset is True
    assert result.attempts == 2
    assert binding.calls == [("clear", "p2p:c1"), ("set", "p2p:c1", result.session_id)]
    assert result.session_id != stale_id
    assert len(api.message_requests) == 1  # the stale attempt never reached the API


async def test_real_api_error_retry_does_not_repeat_the_prompt(
    real_launcher, api: FakeAnthropic, workdir: Path
) -> None:
    launcher = real_launcher()
    first = await launcher.run(request(workdir, "one"))
    api.enqueue(ApiError(529))  # CLAUDE_CODE_MAX_RETRIES=0: the CLI gives up at once
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.attempts == 2
    assert second.text == "echo: two"
    assert api.message_requests[-1].user_texts == ["one", "two"]


async def test_real_hung_api_is_killed_at_the_timeout(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    api.default = Hang()
    launcher = real_launcher(timeout=5.0, max_retries=2)
    task = asyncio.create_task(launcher.run(request(workdir, "hang please")))
    await api.wait_for_requests(1)
    tree = [p.pid for p in processes_under(str(home))]
    assert tree, "the CLI should be running"
    with pytest.raises(TurnTimeout) as info:
        await task
    assert info.value.attempts == 1
    assert alive_pids(tree) == []
    assert processes_under(str(home)) == []
    assert launcher.stats().active == 0


async def test_real_bash_tool_children_die_with_the_turn(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    marker = f"sleep-marker-{uuid.uuid4().hex[:8]}"
    command = f'python3 -c "import time; time.sleep(300)" {marker}'
    api.enqueue(ToolUse("Bash", {"command": command, "description": "wait"}))
    launcher = real_launcher(allowed_tools=("Bash",))
    task = asyncio.create_task(launcher.run(request(workdir, "run the tool")))

    def sleepers() -> list[psutil.Process]:
        return [
            p
            for p in processes_under(marker)
            if Path(p.info["cmdline"][0]).name.startswith("python")
        ]

    await poll_until(lambda: bool(sleepers()), timeout=30)
    tool_procs = processes_under(marker)  # the tool's shell and the sleeper
    cli = [
        p
        for p in processes_under(str(home))
        if p.info["cmdline"] and Path(p.info["cmdline"][0]).name in ("claude", "claude.exe")
    ]
    assert len(cli) == 1
    # the tool runs in a session of its own: killing the CLI's group alone would miss it
    assert os.getsid(sleepers()[0].pid) != os.getsid(cli[0].pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert alive_pids([p.pid for p in tool_procs + cli]) == []
    assert processes_under(marker) == []


def _transcripts(home: Path) -> set[str]:
    return {p.stem for p in home.glob(".claude/projects/*/*.jsonl")}


async def test_superseded_transcripts_are_removed_and_history_survives(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    launcher = real_launcher()
    first = await launcher.run(request(workdir, "one"))
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    third = await launcher.run(request(workdir, "three", session_id=second.session_id))
    # one transcript per conversation, not one per turn
    assert _transcripts(home) == {third.session_id}
    assert api.message_requests[-1].user_texts == ["one", "two", "three"]
