"""Issue 12 #13 at the level of the process: an SDK thread that will not stop makes the bot
stop cleanly with exit 1 (pm2/systemd restart it) instead of running two SDK sessions."""

from __future__ import annotations

import asyncio
import threading

import pytest

import feishu_bot.feishu.gateway as gateway_module
from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import StartBot, anthropic, start_bot  # noqa: F401

pytestmark = pytest.mark.timeout(120)


async def test_two_sdk_sessions_at_once_exit_cleanly(
    sim: FeishuSimulator,
    start_bot: StartBot,  # noqa: F811 - the in-process bot of tests/e2e
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway_module, "RETIRE_TIMEOUT_S", 0.5, raising=False)
    sim.configure_client(ping_interval=0.3)  # a stall is noticed after ~1 s
    running = await start_bot(fake_cli=True)
    session = running.bot.gateway._session
    wedge = threading.Event()
    try:
        session.loop.call_soon_threadsafe(wedge.wait, 60)
        code = await asyncio.wait_for(asyncio.shield(running.task), 60)
    finally:
        wedge.set()
    assert code == 1
    log = running.log_text()
    assert "did not stop" in log and "not starting a second session" in log
    assert sim.total_connections == 1
