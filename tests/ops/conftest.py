"""The bot as an operator runs it: `feishu-bot run` in a subprocess, configured only by
environment variables, against a `FeishuSimulator` served by the test's own event loop and the
fake `claude` script (``[[fake:MODE]]`` in a prompt picks its behaviour).

`BotProcess` captures the bot's stderr (the log) line by line so a test waits for log lines
instead of sleeping. Every process started here is reaped in teardown: the bot (SIGKILL if still
alive) and every fake CLI process and child the fake log names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.fakes.claude_env import FAKE_CLAUDE_BIN, REPO_ROOT, claude_env_overrides
from tests.fakes.fake_claude_log import FakeClaudeLog

FEISHU_BOT = REPO_ROOT / ".venv" / "bin" / "feishu-bot"
# Variables of the developer's shell that would change the bot or the fake CLI.
_SCRUB_PREFIXES = (
    "FEISHU_",
    "CLAUDE_",
    "HEALTH_",
    "SHUTDOWN_",
    "LOG_",
    "DATABASE_",
    "SESSION_",
    "FAKE_CLAUDE_",
    "ANTHROPIC_",
    "PM2_",
    "ALERT_",
)
_SCRUB = ("IS_SANDBOX", "CLAUDECODE")


def free_port() -> int:
    """A port nobody listens on right now (bound once on port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BotProcess:
    """One `feishu-bot run` subprocess and its captured log lines."""

    proc: asyncio.subprocess.Process
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def text(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str, start: int = 0) -> int | None:
        """Index of the first line from `start` matching the regex `pattern`, or None."""
        rx = re.compile(pattern)
        for index in range(start, len(self.lines)):
            if rx.search(self.lines[index]):
                return index
        return None

    async def wait_line(self, pattern: str, *, start: int = 0, timeout: float = 60) -> int:
        """Wait for a log line matching `pattern` (regex); returns its index."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                while (index := self.find(pattern, start)) is None:
                    if self.reader is not None and self.reader.done():
                        raise AssertionError("the bot's log ended")
                    await self.changed.wait()
                return index
        except (TimeoutError, AssertionError):
            tail = "\n".join(self.lines[-60:])
            raise AssertionError(f"no log line /{pattern}/ within {timeout}s:\n{tail}") from None

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30) -> int:
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            tail = "\n".join(self.lines[-60:])
            raise AssertionError(f"bot still running after {timeout}s:\n{tail}") from None
        if self.reader is not None:
            await asyncio.wait({self.reader}, timeout=5)
        return code

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            async with self.changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.changed.notify_all()
        async with self.changed:
            self.changed.notify_all()


def bot_env(sim: FeishuSimulator, tmp_path: Path, **overrides: Any) -> dict[str, str]:
    """The complete environment of a bot process: only variables, no .env file."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB
    }
    # The fake CLI never calls the API; the overrides give it a throwaway HOME and temp dir.
    env.update(claude_env_overrides("http://127.0.0.1:9", tmp_path / "home"))
    env.update(
        {
            "FEISHU_APP_ID": sim.options.app_id,
            "FEISHU_APP_SECRET": sim.options.app_secret,
            "FEISHU_DOMAIN": sim.base_url,
            "FEISHU_ALLOW_ALL": "true",
            "CLAUDE_BIN": str(FAKE_CLAUDE_BIN),
            "CLAUDE_RETRY_DELAY": "0.05",
            "CLAUDE_TIMEOUT": "60",
            "CLAUDE_WORKDIR": str(tmp_path / "workspace"),
            "DATABASE_PATH": str(tmp_path / "data" / "bot.db"),
            "LOG_DIR": "",
            "LOG_LEVEL": "DEBUG",
            "HEALTH_INTERVAL": "30",
            "SHUTDOWN_GRACE": "5",
            "FAKE_CLAUDE_LOG": str(tmp_path / "fake_claude.log"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def journal(db_path: Path) -> dict[str, str]:
    """message_id → status of every journaled turn (read-only, while the bot may run)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT message_id, status FROM turns ORDER BY id").fetchall())
    finally:
        conn.close()


@pytest.fixture
def fake_log(tmp_path: Path) -> FakeClaudeLog:
    return FakeClaudeLog(tmp_path / "fake_claude.log")


StartBot = Callable[..., Awaitable[BotProcess]]


@pytest.fixture
async def start_bot(
    sim: FeishuSimulator, tmp_path: Path, fake_log: FakeClaudeLog
) -> AsyncIterator[StartBot]:
    """`await start_bot(**env)`: start `feishu-bot run` and wait for its ready line.

    Several bots may be started one after the other (a restart shares DATABASE_PATH).
    """
    started: list[BotProcess] = []
    cwd = tmp_path / "cwd"  # no .env there: the environment is the only configuration
    cwd.mkdir()

    async def start(*, wait_ready: bool = True, **overrides: Any) -> BotProcess:
        env = bot_env(sim, tmp_path, **overrides)
        proc = await asyncio.create_subprocess_exec(
            str(FEISHU_BOT),
            "run",
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        bot = BotProcess(proc, env)
        bot.reader = asyncio.create_task(bot._read())
        started.append(bot)
        if wait_ready:
            await bot.wait_line(r"feishu-bot ready", timeout=120)
        return bot

    yield start
    for bot in started:
        if bot.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                bot.proc.kill()
            await bot.proc.wait()
        if bot.reader is not None:
            bot.reader.cancel()
            await asyncio.gather(bot.reader, return_exceptions=True)
    fake_log.kill_all()


async def replies_text(
    sim: FeishuSimulator,
    message_id: str,
    *,
    contains: str,
    finished: bool = False,
    timeout: float = 60,
) -> str:
    """Wait until the replies to `message_id` (their current content) show `contains`.

    With `finished`, also wait until the "working" reaction is gone: a streamed card shows the
    whole answer before the turn is over; the reaction goes only after the final update.
    """

    def done() -> str | None:
        joined = "\n".join(sim.message_text(m) for m in sim.replies_to(message_id))
        if contains not in joined or (finished and sim.live_reactions(message_id)):
            return None
        return joined

    try:
        return await sim.wait_for(done, timeout)
    except TimeoutError:
        shown = [sim.message_text(m) for m in sim.replies_to(message_id)]
        raise AssertionError(f"no reply to {message_id} with {contains!r}; got {shown}") from None
