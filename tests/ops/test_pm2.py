"""The bot under real pm2, started from the repository's `ecosystem.config.json`.

pm2 7.0.4 facts this pins (read from its source and measured): `treekill: false` makes pm2
signal only the bot's pid; `kill_timeout` is honoured; `kill_signal` in an ecosystem file is
ignored — the daemon always sends SIGINT (or $PM2_KILL_SIGNAL from its own environment), which
the bot treats exactly like SIGTERM. The app gets the environment of the `pm2 start` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.fakes.claude_env import REPO_ROOT
from tests.ops.conftest import FakeClaudeLog, bot_env, journal, replies_text

PM2 = REPO_ROOT / "node_modules" / ".bin" / "pm2"
ECOSYSTEM = REPO_ROOT / "ecosystem.config.json"
APP = "feishu-claude-bot"
GRACE = 3

# Subprocess bots start in ~2 s on an idle box and far slower on a loaded one.
pytestmark = pytest.mark.timeout(300)


class Pm2:
    """Runs the pm2 CLI without blocking the event loop (the simulator is served on it)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.home = Path(env["PM2_HOME"])
        self.app_pids: list[int] = []  # every bot pid seen, checked in teardown

    async def __call__(self, *args: str, timeout: float = 60) -> str:
        proc = await asyncio.create_subprocess_exec(
            str(PM2),
            *args,
            cwd=REPO_ROOT,  # as the README says: run pm2 from the repository
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"pm2 {' '.join(args)} took more than {timeout}s") from None
        text = out.decode("utf-8", "replace")
        assert proc.returncode == 0, f"pm2 {' '.join(args)} exited {proc.returncode}:\n{text}"
        return text

    async def app(self) -> dict[str, Any]:
        apps = json.loads(_json_part(await self("jlist")))
        found = [a for a in apps if a["name"] == APP]
        assert len(found) == 1, apps
        return found[0]

    def error_log(self) -> str:
        path = self.home / "logs" / f"{APP}-error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def daemon_log(self) -> str:
        path = self.home / "pm2.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_log(self, pattern: str, *, count: int = 1, timeout: float = 60) -> None:
        """Poll the app's log file (written by pm2, nothing to await) for `count` matches."""
        rx = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout):
                while len(rx.findall(self.error_log())) < count:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"/{pattern}/ x{count} not in the pm2 log:\n{self.error_log()[-3000:]}"
            ) from None


def _json_part(text: str) -> str:
    start = text.find("[")
    return text[start:] if start >= 0 else text


@pytest.fixture
async def pm2(sim: FeishuSimulator, tmp_path: Path, fake_log: FakeClaudeLog) -> AsyncIterator[Pm2]:
    # A missing pm2 is a failure, not a skip: operators rely on this configuration.
    assert PM2.exists(), f"{PM2} is missing: run scripts/bootstrap.sh (npm ci)"
    env = bot_env(
        sim,
        tmp_path,
        PM2_HOME=tmp_path / "pm2",
        HEALTH_INTERVAL=1,
        SHUTDOWN_GRACE=GRACE,
        LOG_LEVEL="INFO",
    )
    runner = Pm2(env)
    try:
        yield runner
    finally:
        try:
            await runner("kill", timeout=60)
        finally:
            pids = list(runner.app_pids)
            pids += _leftover_daemon(runner.home)
            for pid in pids:
                try:
                    if pid > 0 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        os.kill(pid, signal.SIGKILL)
                except (psutil.Error, OSError):
                    pass
            fake_log.kill_all()


def _leftover_daemon(home: Path) -> list[int]:
    """The pm2 daemon of this PM2_HOME if `pm2 kill` failed to end it."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "God Daemon" in " ".join(proc.info["cmdline"] or ()) and str(home) in " ".join(
            proc.info["cmdline"] or ()
        ):
            found.append(proc.pid)
    return found


async def _online_pid(pm2: Pm2) -> int:
    app = await pm2.app()
    assert app["pm2_env"]["status"] == "online", app["pm2_env"]["status"]
    pid = int(app["pid"])
    assert pid > 0
    pm2.app_pids.append(pid)
    return pid


async def test_pm2_start_logs_restart_and_graceful_stop(
    sim: FeishuSimulator, pm2: Pm2, fake_log: FakeClaudeLog
) -> None:
    await pm2("start", str(ECOSYSTEM))
    pid = await _online_pid(pm2)
    app = (await pm2.app())["pm2_env"]
    assert app["treekill"] is False and app["kill_timeout"] == 30000
    # The bot itself is pm2's child (serve.sh execs it), configured by the start's environment.
    assert psutil.Process(pid).cmdline()[1:] == [str(REPO_ROOT / ".venv/bin/feishu-bot"), "run"]
    assert app["FEISHU_DOMAIN"] == sim.base_url

    await sim.wait_connected(timeout=60)
    mid = await sim.push_message(text="hello pm2")
    await replies_text(sim, mid, contains="echo: hello pm2")
    await pm2.wait_log(r"health: active 0/5", count=2)
    logs = await pm2("logs", APP, "--nostream", "--lines", "100")
    assert re.search(r"health: active 0/5 .* ws up", logs), logs[-2000:]

    t0 = time.monotonic()
    await pm2("restart", APP)
    restart_s = time.monotonic() - t0
    new_pid = await _online_pid(pm2)
    assert new_pid != pid and not psutil.pid_exists(pid)
    await pm2.wait_log(r"feishu-bot stopped", count=1)  # the old one drained and said so
    await sim.wait_for(lambda: sim.total_connections >= 2 and sim.connections == 1, timeout=60)
    again = await sim.push_message(text="after restart")
    await replies_text(sim, again, contains="echo: after restart")

    # A turn that outlives SHUTDOWN_GRACE: pm2 stop waits for the bot, the bot kills the CLI.
    hung = await sim.push_message(text="[[fake:hang]] in flight")
    await replies_text(sim, hung, contains="working")
    t1 = time.monotonic()
    await pm2("stop", APP)
    stop_s = time.monotonic() - t1
    assert (await pm2.app())["pm2_env"]["status"] == "stopped"
    assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == "zombie"
    assert GRACE <= stop_s < 30, f"pm2 stop took {stop_s:.1f}s"
    await replies_text(sim, hung, contains="interrupted")
    await pm2.wait_log(r"feishu-bot stopped", count=2)
    log = pm2.error_log()
    assert "stop requested: finishing running turns" in log
    assert "shutdown: interrupting 1 turns still running" in log
    assert fake_log.alive() == []
    # pm2 signalled the bot only (treekill false: no SIGINT reached the CLI); the bot
    # interrupted the turn and closed the CLI (stdin EOF), no signal and no SIGKILL needed.
    exits = [r for r in fake_log.records("exit") if "in flight" in r["prompt_head"]]
    assert [r.get("signal") for r in exits] == [None]
    daemon = pm2.daemon_log()
    assert "still alive after" not in daemon
    assert daemon.count(f"App [{APP}:0] exited with code [0]") == 2, daemon[-2000:]
    assert journal(Path(pm2.env["DATABASE_PATH"]))[hung] == "interrupted"
    print(f"\npm2 restart (idle): {restart_s:.2f}s; pm2 stop with a hung turn: {stop_s:.2f}s")
