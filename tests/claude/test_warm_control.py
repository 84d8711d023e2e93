"""The control protocol through the launcher: permission requests, questions, MCP messages,
unknown requests; what a failed turn that already changed things does; what the child sees of
the bot's environment.

Answers are checked from the fake CLI's log (the control responses it received) and from what
its tools did on disk.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from feishu_bot.errors import TransientCliError, TurnTimeout
from feishu_bot.events import PermissionDecision, PermissionRequest
from tests.claude.support import request, turn_pids
from tests.fakes.fake_claude_log import FakeClaudeLog

MCP_CONFIG = json.dumps({"mcpServers": {"feishu": {"type": "sdk", "name": "feishu"}}})


def responses(log: FakeClaudeLog) -> list[dict[str, Any]]:
    """The control responses the fake received, in order."""
    return [c for c in log.controls() if c["type"] == "control_response"]


class Asker:
    """An ask_permission callable: records requests, answers with ``decide(request)``."""

    def __init__(self, decide: Any, delay: float = 0.0) -> None:
        self.decide = decide
        self.delay = delay
        self.asked: list[PermissionRequest] = []

    async def __call__(self, req: PermissionRequest) -> PermissionDecision:
        self.asked.append(req)
        if self.delay:
            await asyncio.sleep(self.delay)  # a person taking their time
        return self.decide(req)


# ---------------------------------------------------------------- permissions
async def test_allowed_permission_runs_the_command(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    ask = Asker(lambda r: PermissionDecision(True))
    launcher = make_launcher(mode="perm")
    result = await launcher.run(request(workdir, "make a file"), ask_permission=ask)
    assert result.text == "done after tool"
    assert (workdir / "made_by_tool.txt").exists()
    (asked,) = ask.asked
    assert (asked.tool_name, asked.input["command"]) == ("Bash", "touch made_by_tool.txt")
    assert asked.tool_use_id and asked.suggestions
    assert [(r["subtype"], r["behavior"]) for r in responses(fake_log)] == [("success", "allow")]
    assert result.extra["tools"] == ("Bash",)


async def test_denied_permission_does_not_run_the_command(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    ask = Asker(lambda r: PermissionDecision(False, "not in this chat"))
    launcher = make_launcher(mode="perm")
    result = await launcher.run(request(workdir, "make a file"), ask_permission=ask)
    assert result.text == "tool denied: not in this chat"
    assert not (workdir / "made_by_tool.txt").exists()
    assert fake_log.records("tool") == []
    assert [(r["subtype"], r["behavior"]) for r in responses(fake_log)] == [("success", "deny")]


async def test_permission_request_without_an_asker_is_denied(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="perm")
    result = await launcher.run(request(workdir, "make a file"))
    assert result.text == "tool denied: Bash is not allowed by the bot's permission rules."
    assert not (workdir / "made_by_tool.txt").exists()
    assert [(r["subtype"], r["behavior"]) for r in responses(fake_log)] == [("success", "deny")]


async def test_question_answers_travel_as_updated_input(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    def answer(req: PermissionRequest) -> PermissionDecision:
        question = req.input["questions"][0]["question"]
        return PermissionDecision(True, updated_input={**req.input, "answers": {question: "Blue"}})

    ask = Asker(answer)
    launcher = make_launcher(mode="ask")
    result = await launcher.run(request(workdir, "ask me"), ask_permission=ask)
    assert result.text == "answered: Blue"
    assert ask.asked[0].tool_name == "AskUserQuestion"


async def test_unknown_control_request_gets_an_error_response(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="unknown_control")
    result = await launcher.run(request(workdir, "hooks"))
    assert result.text == "control: error unsupported control request: hook_callback"
    assert [r["subtype"] for r in responses(fake_log)] == ["error"]


async def test_mcp_messages_reach_the_turns_handler(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """The CLI's start-up handshake (it comes while the first turn is being written) and the
    tool call go to the turn's MCP server; notifications are acknowledged (else the CLI waits
    30 s and drops the server)."""
    seen: list[tuple[str, str]] = []

    async def server(name: str, message: dict[str, Any]) -> dict[str, Any] | None:
        method = message["method"]
        seen.append((name, method))
        if method == "initialize":
            return {"jsonrpc": "2.0", "id": message["id"], "result": {"capabilities": {}}}
        if method == "tools/list":
            tools = [{"name": "send_file", "inputSchema": {"type": "object"}}]
            return {"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}}
        if method == "tools/call":
            assert message["params"]["arguments"] == {"path": "out.txt"}
            content = [{"type": "text", "text": "sent out.txt"}]
            return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": content}}
        return None  # a notification

    launcher = make_launcher(
        mode="mcp", mcp_config=MCP_CONFIG, allowed_tools=("mcp__feishu__send_file",)
    )
    result = await launcher.run(request(workdir, "send it"), mcp=server)
    assert result.text == "mcp: sent out.txt"
    assert seen == [
        ("feishu", "initialize"),
        ("feishu", "notifications/initialized"),
        ("feishu", "tools/list"),
        ("feishu", "tools/call"),
    ]
    assert [r["connected"] for r in fake_log.records("mcp_connect")] == [True]
    assert fake_log.records("control_timeout") == []


# ---------------------------------------------------------------- the timeout clock
async def test_the_timeout_clock_stops_while_a_person_decides(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    launcher = make_launcher(mode="echo", timeout=2.0)
    await launcher.run(request(workdir, "warm up"))  # process start-up is not under test
    ask = Asker(lambda r: PermissionDecision(True), delay=3.0)
    result = await launcher.run(request(workdir, "[[fake:perm]] slow"), ask_permission=ask)
    assert result.text == "done after tool"
    assert len(ask.asked) == 1
    assert launcher.stats().timeouts == 0
    # the same clock without a pending question does run out
    with pytest.raises(TurnTimeout):
        await launcher.run(request(workdir, "[[fake:hang]] stuck"))
    assert len(set(turn_pids(fake_log))) == 1


# ---------------------------------------------------------------- side effects (#12.2)
async def test_failed_turn_retried_after_tools_ran(
    make_launcher, workdir: Path, fake_log: FakeClaudeLog
) -> None:
    """Regression (hardening #2): a turn that edited a file and then failed with 529 was
    retried, so the edit happened three times. It must run once and say what ran."""
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    launcher = make_launcher(mode="edit_then_529", max_retries=2, sleep=sleep)
    with pytest.raises(TransientCliError) as info:
        await launcher.run(request(workdir, "edit it"))
    (effect,) = info.value.side_effects  # the tool and what it touched, for the user
    assert effect.startswith("Edit (") and effect.endswith("edited.txt)")
    assert info.value.attempts == 1
    assert delays == []
    assert (workdir / "edited.txt").read_text().count("\n") == 1
    assert len(fake_log.records("edit")) == 1
    assert len(fake_log.turns()) == 1
    assert launcher.stats().retried == 0


# ---------------------------------------------------------------- the child's environment
async def test_app_secret_reaches_claude(
    make_launcher, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (hardening #7): the CLI inherited the whole .env, so any chat user with Bash
    could print FEISHU_APP_SECRET. The child gets no FEISHU_* and nothing named in env_drop."""
    monkeypatch.setenv("FEISHU_APP_SECRET", "app-secret-value-123")
    monkeypatch.setenv("FEISHU_ENCRYPT_KEY", "encrypt-key-value-456")
    monkeypatch.setenv("BOT_DATABASE_PASSWORD", "db-password-789")
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    launcher = make_launcher(
        mode="perm",
        env={"FAKE_CLAUDE_PERM_COMMAND": "env > child_env.txt"},
        env_drop=("BOT_DATABASE_PASSWORD",),
    )
    ask = Asker(lambda r: PermissionDecision(True))
    result = await launcher.run(request(workdir, "print env"), ask_permission=ask)
    assert result.text == "done after tool"
    seen = (workdir / "child_env.txt").read_text()
    names = {line.split("=", 1)[0] for line in seen.splitlines() if "=" in line}
    assert not {n for n in names if n.startswith("FEISHU_")}
    assert "BOT_DATABASE_PASSWORD" not in names
    for secret in ("app-secret-value-123", "encrypt-key-value-456", "db-password-789"):
        assert secret not in seen
    assert "HARMLESS_SETTING=kept" in seen.splitlines()
