"""ChatRunner built directly: a real launcher on the fake CLI, a real SQLite store, a Turn with
a reply sink that records what the user sees.

It streams the text into the turn's reply, ends the turn through `turn.succeed` (journal DONE,
the conversation's totals and session), and starts a new process with the conversation's
grants (`--allowedTools`), so the CLI itself matches them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from database.models import TurnStatus
from database.store import SessionStore
from feishu_bot.claude.launcher import Launcher, LauncherConfig
from feishu_bot.events import InboundMessage
from feishu_bot.handlers.chat import ChatRunner
from feishu_bot.metrics import BotMetrics
from feishu_bot.turn import Turn
from feishu_bot.turns import TurnRegistry
from tests.fakes.claude_env import FAKE_CLAUDE_BIN
from tests.fakes.fake_claude_log import FakeClaudeLog

pytestmark = pytest.mark.timeout(60)

KEY = "p2p:oc_1"


class Sink:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.finished: tuple[str, str | None] | None = None

    async def started(self) -> None: ...

    async def queued(self, position: int) -> None: ...

    async def update(self, text: Any) -> None:
        self.texts.append(text() if callable(text) else text)

    async def finish(self, text: str, *, note: str | None = None) -> None:
        self.finished = (text, note)

    async def fail(self, message: str, *, partial_text: str | None = None) -> None:
        raise AssertionError(f"unexpected failure: {message}")

    async def show_block(self, block: Any) -> None: ...

    async def resolve_block(self, block_id: str, text: str) -> None: ...


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Any]:
    log = FakeClaudeLog(tmp_path / "fake.log")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "FAKE_CLAUDE_LOG": str(log.path),
        "FAKE_CLAUDE_STATE": str(tmp_path / "fake.state"),
        "FAKE_CLAUDE_DELAY": "0.01",
        "FAKE_CLAUDE_MODE": "echo",
    }
    async with await SessionStore.open(tmp_path / "bot.db") as store:
        launcher = Launcher(
            LauncherConfig(bin=str(FAKE_CLAUDE_BIN), timeout=30, extra_env=tuple(env.items())),
            store,
        )
        settings = SimpleSettings()
        runner = ChatRunner(settings, store, None, launcher, None, tmp_path / "ws")  # type: ignore[arg-type]
        yield runner, store, log
        await launcher.aclose()


class SimpleSettings:
    CLAUDE_SHARED_WORKDIR = False
    CLAUDE_MODEL = ""
    FEISHU_MAX_DOWNLOAD_MB = 20
    FEISHU_APP_SECRET = SecretStr("s")


async def test_a_turn_streams_succeeds_and_passes_the_grants(world: Any) -> None:
    runner, store, log = world
    await store.add_grant(KEY, "tool", "Bash(npm test:*)", "ou_boss")
    msg = InboundMessage("om_1", "oc_1", "p2p", "ou_1", "text", "hello runner")
    turn_id = await store.accept_message(
        "om_1", conversation_key=KEY, chat_id="oc_1", prompt="hello runner",
        reply_in_thread=False, sender_open_id="ou_1",
    )
    assert turn_id is not None
    registry = TurnRegistry()
    sink = Sink()
    turn = Turn(turn_id, msg, registry.admit(KEY, "om_1", turn_id), sink, store, BotMetrics(), 30)
    result = await runner(turn, None)
    assert result.text == "echo: hello runner"
    assert sink.texts and sink.texts[-1] == "echo: hello runner"
    assert sink.finished is not None and sink.finished[0] == "echo: hello runner"
    row = await store.get_turn(turn_id)
    assert row is not None and row.status is TurnStatus.DONE
    conv = await store.get_conversation(KEY)
    assert conv is not None and conv.session_id == result.session_id and conv.turn_count == 1
    (start,) = log.records("start")
    argv = start["argv"]
    allowed = argv[argv.index("--allowedTools") + 1]
    assert "Bash(npm test:*)" in allowed.split(",")
