"""A running playground in offline mode: simulator, real bot, real CLI, demo model, page.

Real parts: the `lark_oapi` long connection, the REST replier, the launcher with the pinned
Claude CLI from node_modules (talking to the playground's own offline demo API), SQLite in
tmp_path, and the page's aiohttp server.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from loguru import logger

from feishu_bot.log import configure_logging
from feishu_bot.playground import Playground, PlaygroundConfig
from tests.fakes.claude_env import REAL_CLAUDE_BIN


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.playground_failed = report.failed  # type: ignore[attr-defined]
    return report


StartPlayground = Callable[..., Awaitable[Playground]]


@pytest.fixture
async def start_playground(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StartPlayground]:
    """`await start_playground(**settings)`: an offline playground, stopped after the test."""
    assert REAL_CLAUDE_BIN.is_file(), "run ./scripts/bootstrap.sh: the pinned Claude CLI is missing"
    logs = io.StringIO()
    started: list[Playground] = []

    async def start(**overrides: Any) -> Playground:
        pg = Playground(
            PlaygroundConfig(
                data_dir=tmp_path / "playground-data",
                port=0,
                offline=True,
                env_file=None,
                overrides={
                    "CLAUDE_BIN": str(REAL_CLAUDE_BIN),
                    "LOG_DIR": "",
                    "CLAUDE_TIMEOUT": 90,
                    **overrides,
                },
            )
        )
        configure_logging(
            level="DEBUG", log_dir=None, secrets=[pg.app_secret, pg.page_token], stderr=logs
        )
        started.append(pg)
        await pg.start()
        return pg

    try:
        yield start
    finally:
        for pg in started:
            await pg.stop()
        logger.remove()
        if started and getattr(request.node, "playground_failed", True):
            print("--- the bot's log (tail) ---\n" + logs.getvalue()[-6000:])


@pytest.fixture
async def playground(start_playground: StartPlayground) -> Playground:
    return await start_playground()


@asynccontextmanager
async def open_page(pg: Playground) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that opened the printed address, as a browser does: it holds the
    page's token cookie, so the API (under `pg.base_url`) and the feed let it in."""
    # aiohttp's jar refuses cookies of IP-address hosts unless told otherwise.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(pg.url) as resp:
            assert resp.status == 200, await resp.text()
        yield session


class Feed:
    """The page's websocket feed, read the way the page reads it (upsert by id)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.items: dict[str, dict[str, Any]] = {}
        self.hello: dict[str, Any] = {}
        self.health: dict[str, Any] = {}

    async def until(self, predicate: Callable[[Feed], Any], timeout: float = 60) -> Any:
        """Read feed messages until `predicate(self)` is truthy; return its value."""
        import asyncio

        async with asyncio.timeout(timeout):
            while not (value := predicate(self)):
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"feed closed: {msg.type}")
                self._apply(json.loads(msg.data))
        return value

    def _apply(self, data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind == "hello":
            self.hello = data["info"]
        elif kind == "snapshot":
            self.items = {item["id"]: item for item in data["items"]}
        elif kind == "items":
            self.items.update({item["id"]: item for item in data["items"]})
        elif kind == "health":
            self.health = data

    def bot_replies(self, message_id: str) -> list[dict[str, Any]]:
        return [i for i in self.items.values() if i.get("reply_to") == message_id]

    def finished_text(self, message_id: str) -> str | None:
        """All reply text once the user's message has no live reaction left, else None."""
        user = self.items.get(message_id)
        replies = self.bot_replies(message_id)
        if user is None or not replies or any(r["live"] for r in user["reactions"]):
            return None
        return "\n".join(r["text"] for r in replies)
