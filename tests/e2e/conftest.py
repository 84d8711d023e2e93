"""The whole bot, in-process, against the Feishu simulator and a fake Anthropic API.

Real parts: the `lark_oapi` websocket client (through the gateway), the REST replier, SQLite,
the launcher, and by default the real pinned Claude CLI talking to `FakeAnthropic`. Tests that
need a behaviour the real CLI cannot be made to show use the fake `claude` script instead.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from feishu_bot.app import Bot
from feishu_bot.config import Settings
from feishu_bot.log import configure_logging
from feishu_bot.simulator import FeishuSimulator
from tests.fakes.claude_env import FAKE_CLAUDE_BIN, REAL_CLAUDE_BIN, claude_env_overrides
from tests.fakes.fake_anthropic import FakeAnthropic


@dataclass
class RunningBot:
    bot: Bot
    task: asyncio.Task[int]
    settings: Settings
    logs: io.StringIO

    async def stop(self, timeout: float = 60) -> int:
        if self.task.done():
            return self.task.result()
        self.bot.request_stop()
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)

    def log_text(self) -> str:
        return self.logs.getvalue()


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as api:
        yield api


StartBot = Callable[..., Awaitable[RunningBot]]


@pytest.fixture
async def start_bot(
    sim: FeishuSimulator,
    anthropic: FakeAnthropic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[StartBot]:
    """`await start_bot(**settings)` runs a bot until the test ends (then stops it cleanly)."""
    # The claude child inherits the bot's environment, as in production.
    for name, value in claude_env_overrides(anthropic.base_url, tmp_path / "home").items():
        monkeypatch.setenv(name, value)
    running: list[RunningBot] = []

    async def start(
        *, fake_cli: bool = False, clock: Callable[[], float] | None = None, **overrides: Any
    ) -> RunningBot:
        values: dict[str, Any] = {
            "FEISHU_APP_ID": sim.options.app_id,
            "FEISHU_APP_SECRET": sim.options.app_secret,
            "FEISHU_DOMAIN": sim.base_url,
            "FEISHU_ALLOW_ALL": True,
            "CLAUDE_BIN": str(FAKE_CLAUDE_BIN if fake_cli else REAL_CLAUDE_BIN),
            "CLAUDE_RETRY_DELAY": 0.05,
            "CLAUDE_TIMEOUT": 60,
            "CLAUDE_WORKDIR": tmp_path / "workspace",
            "DATABASE_PATH": tmp_path / "data" / "bot.db",
            "LOG_DIR": "",
            "LOG_LEVEL": "DEBUG",
            "HEALTH_INTERVAL": 30,
            "SHUTDOWN_GRACE": 5,
        }
        values.update(overrides)
        settings = Settings(_env_file=None, **values)
        logs = io.StringIO()
        configure_logging(
            level=settings.LOG_LEVEL,
            log_dir=None,
            secrets=[settings.FEISHU_APP_SECRET.get_secret_value()],
            stderr=logs,
        )
        bot = Bot(settings) if clock is None else Bot(settings, clock=clock)
        task = asyncio.create_task(bot.run(), name="bot")
        ready = asyncio.create_task(bot.ready.wait())
        await asyncio.wait({task, ready}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
        if not bot.ready.is_set():
            ready.cancel()
            if task.done():
                raise AssertionError(f"bot exited {task.result()}:\n{logs.getvalue()[-3000:]}")
            raise AssertionError(f"bot not ready:\n{logs.getvalue()[-3000:]}")
        handle = RunningBot(bot, task, settings, logs)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        try:
            await handle.stop()
        finally:
            pass
    logger.remove()


async def final_text(
    sim: FeishuSimulator, message_id: str, *, contains: str, timeout: float = 60
) -> str:
    """Wait until a reply to `message_id` shows `contains` in a finished state; return all text.

    Finished means the "working" reaction is gone too: a streamed card can already show the
    whole answer before the turn is over, and the reaction is removed only after the final
    update.
    """

    def done() -> str | None:
        texts = [sim.message_text(m) for m in sim.replies_to(message_id)]
        joined = "\n".join(texts)
        if contains not in joined or sim.live_reactions(message_id):
            return None
        return joined

    return await sim.wait_for(done, timeout)


async def shown_text(
    sim: FeishuSimulator, message_id: str, *, contains: str, timeout: float = 30
) -> str:
    """Wait until a reply to `message_id` shows `contains`, finished or not (progress states)."""

    def shown() -> str | None:
        joined = "\n".join(sim.message_text(m) for m in sim.replies_to(message_id))
        return joined if contains in joined else None

    return await sim.wait_for(shown, timeout)


async def eventually(predicate: Callable[[], Any], timeout: float = 30, step: float = 0.02) -> Any:
    """Wait for state that announces no event of its own (launcher numbers, files)."""
    async with asyncio.timeout(timeout):
        while not (value := predicate()):  # noqa: ASYNC110 - nothing to await on
            await asyncio.sleep(step)
    return value
