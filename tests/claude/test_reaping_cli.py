"""Without the sandbox, nothing a CLI started outlives it: the real pinned CLI runs
``setsid nohup … &`` (a new session, re-parented to init: outside the CLI's tree and session),
and the process is gone within seconds of /new, the idle close, an eviction, a crash or
shutdown. /stop ends what the stopped turn started and keeps the CLI warm.

Found by the tag every CLI carries in its environment (``TAG_VAR``), inherited by every
descendant.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from feishu_bot.claude.launcher import Launcher, LauncherConfig
from feishu_bot.claude.process import TAG_VAR
from tests.claude.support import MemoryBinding, poll_until, request
from tests.claude.test_real_cli import cli_pids, processes_under
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env_overrides
from tests.fakes.fake_anthropic import FakeAnthropic, ToolUse

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]

GONE_WITHIN_S = 5.0


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def unsandboxed(
    api: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Launcher]]:
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    env = claude_env_overrides(api.base_url, tmp_path / "home")
    made: list[Launcher] = []

    def factory(**config: Any) -> Launcher:
        values: dict[str, Any] = {
            "bin": str(REAL_CLAUDE_BIN),
            "timeout": 60.0,
            "allowed_tools": ("Bash",),
            "extra_env": tuple(env.items()),
        }
        values.update(config)
        launcher = Launcher(LauncherConfig(**values), MemoryBinding())
        made.append(launcher)
        return launcher

    yield factory
    for launcher in made:
        await launcher.aclose()
    # Only cleanup, after the assertions: a failing test must not leak its daemons.
    for proc in processes_under(str(tmp_path)):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def workdir_of(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def daemon(marker: str) -> str:
    """A command that leaves a process behind, in a session of its own, adopted by init."""
    return (f"setsid nohup python3 -c 'import time; time.sleep(300)' {marker} "
            "> /dev/null 2>&1 < /dev/null & echo started")


def orphans(marker: str) -> list[psutil.Process]:
    return [p for p in processes_under(marker) if "python" in Path(p.info["cmdline"][0]).name]


async def leave_daemon(
    launcher: Launcher, api: FakeAnthropic, workdir: Path, key: str = "p2p:c1"
) -> tuple[str, psutil.Process]:
    marker = f"orphan-{uuid.uuid4().hex[:10]}"
    api.enqueue(ToolUse("Bash", {"command": daemon(marker), "description": "daemon"}))
    result = await launcher.run(request(workdir, "start it", key=key))
    assert result.text == "echo: started"
    await poll_until(lambda: bool(orphans(marker)), timeout=10)
    (proc,) = orphans(marker)
    assert os.getsid(proc.pid) == proc.pid  # its own session: the CLI's group kill misses it
    assert TAG_VAR in proc.environ()
    return marker, proc


async def gone(marker: str) -> None:
    await poll_until(lambda: not orphans(marker), timeout=GONE_WITHIN_S)


async def test_a_daemon_is_gone_after_new(
    unsandboxed: Callable[..., Launcher], api: FakeAnthropic, tmp_path: Path
) -> None:
    launcher = unsandboxed()
    marker, _ = await leave_daemon(launcher, api, workdir_of(tmp_path, "w"))
    await asyncio.sleep(0.5)
    assert orphans(marker), "still running while the session is warm"
    assert await launcher.close_session("p2p:c1")  # /new, /cd, /model, /resume
    await gone(marker)


async def test_a_daemon_is_gone_after_the_idle_timeout(
    unsandboxed: Callable[..., Launcher], api: FakeAnthropic, tmp_path: Path
) -> None:
    launcher = unsandboxed(idle_timeout=1.0)
    marker, _ = await leave_daemon(launcher, api, workdir_of(tmp_path, "w"))
    await poll_until(lambda: not launcher.is_warm("p2p:c1"), timeout=10)
    await gone(marker)


async def test_a_daemon_is_gone_after_eviction(
    unsandboxed: Callable[..., Launcher], api: FakeAnthropic, tmp_path: Path
) -> None:
    launcher = unsandboxed(max_concurrent=1)
    marker, _ = await leave_daemon(launcher, api, workdir_of(tmp_path, "a"), key="p2p:a")
    result = await launcher.run(request(workdir_of(tmp_path, "b"), "hello", key="p2p:b"))
    assert result.text == "echo: hello" and launcher.stats().evictions == 1
    await gone(marker)


async def test_a_daemon_is_gone_after_shutdown(
    unsandboxed: Callable[..., Launcher], api: FakeAnthropic, tmp_path: Path
) -> None:
    launcher = unsandboxed()
    marker, _ = await leave_daemon(launcher, api, workdir_of(tmp_path, "w"))
    await launcher.aclose()
    await gone(marker)


async def test_a_daemon_is_gone_after_the_cli_crashed(
    unsandboxed: Callable[..., Launcher], api: FakeAnthropic, tmp_path: Path
) -> None:
    launcher = unsandboxed()
    marker, _ = await leave_daemon(launcher, api, workdir_of(tmp_path, "w"))
    (cli,) = cli_pids(tmp_path / "home")
    os.kill(cli, signal.SIGKILL)
    await gone(marker)
    await poll_until(lambda: not launcher.is_warm("p2p:c1"), timeout=10)


async def test_stop_ends_what_the_stopped_turn_started_and_keeps_the_cli(
    unsandboxed: Callable[..., Launcher], api: FakeAnthropic, tmp_path: Path
) -> None:
    launcher = unsandboxed()
    work = workdir_of(tmp_path, "w")
    earlier, _ = await leave_daemon(launcher, api, work)  # e.g. a dev server started on purpose
    (cli,) = cli_pids(tmp_path / "home")
    marker = f"orphan-{uuid.uuid4().hex[:10]}"
    command = daemon(marker).replace("& echo started", "& sleep 120")
    api.enqueue(ToolUse("Bash", {"command": command, "description": "daemon, then wait"}))
    task = asyncio.create_task(launcher.run(request(work, "start and wait")))
    await poll_until(lambda: bool(orphans(marker)), timeout=20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await gone(marker)
    assert orphans(earlier), "a process of an earlier turn is not the stopped turn's"
    assert cli_pids(tmp_path / "home") == [cli] and launcher.is_warm("p2p:c1")
    await launcher.close_session("p2p:c1")
    await gone(earlier)
