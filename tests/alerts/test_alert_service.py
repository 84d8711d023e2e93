"""The alert service: samples, logs, sends the cards in order, and ends with its task."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from feishu_bot.alerts import AlertEngine, AlertService, Sample, Thresholds, disk_free
from feishu_bot.errors import PermanentCliError

MB = 1024 * 1024


class Chat:
    """A fake admin chat: collects cards, can refuse the next one."""

    def __init__(self) -> None:
        self.cards: list[dict[str, Any]] = []
        self.refuse = 0
        self.changed = asyncio.Condition()

    async def send(self, card: dict[str, Any]) -> None:
        async with self.changed:
            self.changed.notify_all()
            if self.refuse:
                self.refuse -= 1
                raise RuntimeError("Feishu said no")
            self.cards.append(card)
            self.changed.notify_all()

    async def wait(self, n: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(10), self.changed:
            await self.changed.wait_for(lambda: len(self.cards) >= n)
        return self.cards

    @staticmethod
    def body(card: dict[str, Any]) -> str:
        return str(card["elements"][0]["content"])


@pytest.fixture
def logs() -> Any:
    out = io.StringIO()
    sink = logger.add(out, level="INFO", format="{level} {message}")
    yield out
    logger.remove(sink)


async def _run(service: AlertService) -> asyncio.Task[None]:
    return asyncio.create_task(service.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_turn_outcomes_become_cards_in_order_and_log_lines(logs: io.StringIO) -> None:
    chat = Chat()
    service = AlertService(AlertEngine(Thresholds()), sample=lambda: Sample(0.0), send=chat.send,
                           interval=3600)
    task = await _run(service)
    try:
        auth = PermanentCliError("the Claude CLI is not logged in: set ANTHROPIC_API_KEY")
        for _ in range(4):
            service.turn_finished("failed", auth)
        assert [a["condition"] for a in service.active()] == ["claude_auth"]
        assert service.gauges() == {
            "ws_down": 0, "claude_auth": 1, "turn_failures": 0, "degraded": 0,
            "queue_full": 0, "disk_low": 0, "sandbox_off": 0,
        }
        service.turn_finished("ok")
        cards = await chat.wait(2)
        assert "**claude_auth** since" in Chat.body(cards[0])
        assert "not logged in" in Chat.body(cards[0])
        assert "**claude_auth** cleared" in Chat.body(cards[1])
        assert service.active() == []
    finally:
        await _stop(task)
    text = logs.getvalue()
    assert "WARNING alert claude_auth started: a turn failed: the Claude CLI is not logged" in text
    assert "INFO alert claude_auth cleared: a turn succeeded again; 4 turns had failed" in text


async def test_a_card_feishu_refuses_is_logged_and_the_next_one_still_goes() -> None:
    chat = Chat()
    chat.refuse = 1
    service = AlertService(AlertEngine(Thresholds()), sample=lambda: Sample(0.0), send=chat.send,
                           interval=3600)
    task = await _run(service)
    try:
        service.turn_finished("failed", PermanentCliError("api error 401"))
        service.turn_finished("ok")
        cards = await chat.wait(1)
        assert "cleared" in Chat.body(cards[0])
    finally:
        await _stop(task)


async def test_without_an_admin_chat_alerts_are_still_tracked() -> None:
    service = AlertService(AlertEngine(Thresholds()), sample=lambda: Sample(0.0), send=None)
    service.turn_finished("failed", PermanentCliError("api error 401"))
    assert [a["condition"] for a in service.active()] == ["claude_auth"]
    assert service.active()[0]["since"].endswith("Z")


async def test_samples_are_taken_and_the_disk_is_measured(tmp_path: Path) -> None:
    chat = Chat()
    samples = 0
    clock = [1000.0]

    def sample() -> Sample:
        nonlocal samples
        samples += 1
        return Sample(clock[0], ws_connected=True)

    huge = Thresholds(disk_min_bytes=2**62)  # no disk has that much free: disk_low starts
    service = AlertService(
        AlertEngine(huge), sample=sample, send=chat.send,
        disk_paths={"CLAUDE_WORKDIR": tmp_path / "not" / "yet"}, interval=0.01,
    )
    task = await _run(service)
    try:
        (card,) = await chat.wait(1)
    finally:
        await _stop(task)
    assert samples >= 1
    body = Chat.body(card)
    assert body.startswith("**disk_low** since")
    assert f"free on {tmp_path / 'not' / 'yet'} (CLAUDE_WORKDIR)" in body
    assert service.disk_free()["CLAUDE_WORKDIR"] > 0


def test_disk_free_measures_the_nearest_existing_directory(tmp_path: Path) -> None:
    found = disk_free({"a": tmp_path, "b": tmp_path / "missing" / "deeper"})
    assert found["a"][0] == str(tmp_path) and found["a"][1] > 0
    assert found["b"][1] == found["a"][1]  # the same filesystem
