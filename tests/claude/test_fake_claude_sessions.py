"""The fake ``claude`` in stream-json mode: sessions, retries, images, MCP, edge cases, log.

What the fake does here was measured on the real CLI 2.1.329 (see the fake's docstring and
FACTS "Warm sessions and the control protocol"); other suites rely on it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from tests.fakes.claude_env import FAKE_CLAUDE_BIN, REAL_CLAUDE_BIN, claude_env
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, ToolUse
from tests.fakes.fake_claude_log import FakeClaudeLog
from tests.fakes.stream_cli import FakeWorld, StreamCli

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e5270ade0000000049454e44ae426082"
)
MCP_CONFIG = json.dumps({"mcpServers": {"feishu": {"type": "sdk", "name": "feishu"}}})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[FakeWorld]:
    made = FakeWorld(tmp_path)
    yield made
    await made.aclose()


def last_assistant_uuid(cli: StreamCli) -> str:
    return [o for o in cli.lines if o["type"] == "assistant"][-1]["uuid"]


async def test_retry_after_a_crash_shows_the_prompt_once_only_when_cut(world: FakeWorld) -> None:
    modes = "history,history,crash_mid_turn,history"  # turn by turn, across processes
    first = await world.start(MODE=modes)
    sid = (await first.turn("one"))["session_id"]
    await first.turn("two")
    cut = last_assistant_uuid(first)
    await first.user("three")
    assert all(o["type"] != "result" for o in await first.rest())
    assert await first.close() == 1
    # A plain resume keeps the crashed prompt: the model would see it twice.
    plain = await world.start("--resume", sid, "--fork-session", MODE=modes)
    assert (await plain.turn("three"))["result"] == "history: one | two | three | three"
    await plain.close()
    new_id = str(uuid.uuid4())
    cli = await world.start(
        "--resume",
        sid,
        "--resume-session-at",
        cut,
        "--fork-session",
        "--session-id",
        new_id,
        MODE=modes,
    )
    retried = await cli.turn("three")
    assert (retried["result"], retried["session_id"]) == ("history: one | two | three", new_id)
    later = await cli.turn("four")
    assert later["result"] == "history: one | two | three | four"
    assert later["session_id"] == new_id  # forked once, at start
    assert await cli.close() == 0


async def test_failed_turn_stays_in_the_history_like_the_real_cli(world: FakeWorld) -> None:
    """Re-measured on 2.1.329: a turn that failed with 529 is in what the model sees next."""
    edited = world.root / "edited.txt"
    cli = await world.start(
        MODE="history,api_error,history,edit_then_529,history", EDIT_FILE=str(edited)
    )
    assert (await cli.turn("one"))["result"] == "history: one"
    failed = await cli.turn("two")
    assert failed["is_error"] is True and failed["api_error_status"] == 529
    assert failed["subtype"] == "success" and failed["terminal_reason"] == "api_error"
    assert (await cli.turn("three"))["result"] == "history: one | two | three"
    edit = await cli.turn("four")
    assert edit["is_error"] is True and edit["api_error_status"] == 529
    assert len(edited.read_text().splitlines()) == 1
    tool_use = [o for o in cli.lines if o["type"] == "assistant"][-2]["message"]["content"][0]
    assert tool_use["name"] == "Edit" and tool_use["input"]["file_path"] == str(edited)
    assert (await cli.turn("five"))["result"] == "history: one | two | three | four | five"
    assert await cli.close() == 0
    assert [r["event"] for r in world.log.records() if r["event"] == "edit"] == ["edit"]


async def test_start_up_refusals_like_the_real_cli(world: FakeWorld) -> None:
    new_id = str(uuid.uuid4())
    cli = await world.start("--session-id", new_id)
    assert (await cli.turn("hi"))["session_id"] == new_id
    await cli.close()

    async def refused(*args: str, **fake: str) -> tuple[int, list[dict], str]:
        cli = await world.start(*args, **fake)
        lines = await cli.rest()  # printed without any input
        return await cli.close(), lines, await cli.stderr()

    code, lines, err = await refused("--session-id", new_id)
    assert (code, lines, err) == (1, [], f"Error: Session ID {new_id} is already in use.\n")
    code, lines, err = await refused("--resume", new_id, "--session-id", str(uuid.uuid4()))
    assert code == 1 and "also needs --fork-session" in err and lines == []
    code, lines, err = await refused("--session-id", "not-a-uuid")
    assert code == 1 and err == "Error: Invalid session ID. Must be a valid UUID.\n"
    code, lines, err = await refused("--resume", "nope")
    assert code == 1 and err == "No conversation found with session ID: nope\n"
    assert lines[0]["subtype"] == "error_during_execution" and lines[0]["is_error"] is True
    code, lines, err = await refused("--resume", new_id, MODE="stale")
    assert code == 1 and lines[0]["errors"] == [f"No conversation found with session ID: {new_id}"]
    bogus = str(uuid.uuid4())
    code, lines, err = await refused("--resume", new_id, "--resume-session-at", bogus)
    assert code == 1 and lines[0]["errors"] == [f"No message found with message.uuid of: {bogus}"]


async def test_images_are_counted_hashed_and_saved(world: FakeWorld) -> None:
    cli = await world.start()
    image = {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(PNG).decode(),
        },
    }
    result = await cli.turn([{"type": "text", "text": "look"}, image, image])
    assert result["result"] == "echo: look"
    (turn,) = world.log.turns()
    assert turn["images"] == 2 and turn["image_sha1"] == [hashlib.sha1(PNG).hexdigest()] * 2
    saved = sorted(world.tmp.glob(f"claude-{os.getuid()}/*/{result['session_id']}/images/*"))
    assert [p.name for p in saved] == ["1.png", "2.png"] and saved[0].read_bytes() == PNG
    await cli.close()


async def test_messages_written_during_a_turn_wait_for_the_next(world: FakeWorld) -> None:
    gate = world.root / "gate"
    cli = await world.start(MODE="gate,echo", GATE=str(gate))
    await cli.user("first")
    await cli.until(lambda o: o.get("subtype") == "init")
    await cli.user("second")
    gate.touch()
    results = [await cli.result(), await cli.result()]
    assert [r["result"] for r in results] == ["echo: first", "echo: second"]
    assert world.log.max_busy() == 1
    await cli.close()


async def answer_handshake(cli: StreamCli, tools: list[str]) -> list[dict]:
    """Answer initialize, notifications/initialized and tools/list like an SDK server."""
    seen = []
    for _ in range(3):
        req = await cli.until(lambda o: o["type"] == "control_request")
        message = req["request"]["message"]
        seen.append(message)
        result = {
            "initialize": {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}},
            "tools/list": {"tools": [{"name": n, "inputSchema": {}} for n in tools]},
        }.get(message["method"], {})
        rpc = {"jsonrpc": "2.0", "id": message.get("id"), "result": result}
        await cli.respond(req, {"mcp_response": rpc})
    return seen


async def test_mcp_handshake_and_tool_call(world: FakeWorld) -> None:
    cli = await world.start("--mcp-config", MCP_CONFIG, MCP_ARGS='{"path": "a.txt"}')
    # Measured: the handshake starts before any input.
    seen = await answer_handshake(cli, ["send_file"])
    assert [m["method"] for m in seen] == ["initialize", "notifications/initialized", "tools/list"]
    assert [m.get("id") for m in seen] == [0, None, 1]
    await cli.user("[[fake:mcp]] send it")
    init = await cli.until(lambda o: o.get("subtype") == "init")
    assert "mcp__feishu__send_file" in init["tools"]
    assert init["mcp_servers"] == [{"name": "feishu", "status": "connected", "source": "sdk"}]
    ask = await cli.until(lambda o: o["type"] == "control_request")
    assert ask["request"]["subtype"] == "can_use_tool"
    assert ask["request"]["tool_name"] == "mcp__feishu__send_file"
    assert ask["request"]["mcp_server"] == {"name": "feishu", "source": "sdk"}
    await cli.respond(ask, {"behavior": "allow", "updatedInput": ask["request"]["input"]})
    call = await cli.until(lambda o: o["type"] == "control_request")
    message = call["request"]["message"]
    assert call["request"]["server_name"] == "feishu" and message["method"] == "tools/call"
    assert message["params"]["name"] == "send_file"
    assert message["params"]["arguments"] == {"path": "a.txt"}
    assert message["params"]["_meta"]["claudecode/toolUseId"] == ask["request"]["tool_use_id"]
    content = [{"type": "text", "text": "sent a.txt"}]
    rpc = {"jsonrpc": "2.0", "id": message["id"], "result": {"content": content}}
    await cli.respond(call, {"mcp_response": rpc})
    assert (await cli.result())["result"] == "mcp: sent a.txt"
    await cli.close()


async def test_mcp_allowed_tool_and_failed_handshake(world: FakeWorld) -> None:
    allowed = await world.start(
        "--mcp-config", MCP_CONFIG, "--allowedTools", "Read,mcp__feishu__send_file"
    )
    await answer_handshake(allowed, ["send_file"])
    await allowed.user("[[fake:mcp]] go")
    call = await allowed.until(lambda o: o["type"] == "control_request")
    assert call["request"]["message"]["method"] == "tools/call"  # no can_use_tool first
    await allowed.respond(
        call, {"mcp_response": {"jsonrpc": "2.0", "error": {"code": -1, "message": "no"}}}
    )
    assert (await allowed.result())["result"] == "mcp error: MCP error -1: no"
    await allowed.close()
    failing = await world.start("--mcp-config", MCP_CONFIG)
    for _ in range(2):  # initialize, retried once
        req = await failing.until(lambda o: o["type"] == "control_request")
        await failing.respond(req, {}, error="no MCP here")
    init = (await failing.turn("hi"), [o for o in failing.lines if o.get("subtype") == "init"])[1]
    assert init[0]["mcp_servers"][0]["status"] == "failed"
    await failing.close()


async def test_permission_rules_and_one_shot_denial(world: FakeWorld) -> None:
    cli = await world.start("--allowedTools", "Bash(touch:*)", MODE="perm")
    assert (await cli.turn("go"))["result"] == "done after tool"
    assert (world.cwd / "made_by_tool.txt").exists()
    assert all(o["type"] != "control_request" for o in cli.lines)
    await cli.close()
    (world.cwd / "made_by_tool.txt").unlink()
    proc = await asyncio.create_subprocess_exec(
        str(FAKE_CLAUDE_BIN),
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=world.cwd,
        env=world.env(MODE="perm"),
    )
    out, _ = await proc.communicate(b"go")
    result = json.loads(out.splitlines()[-1])
    assert result["result"].startswith("tool denied: Claude requested permissions to use Bash")
    assert not (world.cwd / "made_by_tool.txt").exists()


def test_log_helpers_count_processes_and_turns(tmp_path: Path) -> None:
    rows = [
        ("start", "a", 1.0, ""),
        ("turn_start", "a", 1.1, "alpha"),
        ("start", "b", 1.5, "beta oneshot"),
        ("turn_start", "b", 1.6, "beta oneshot"),
        ("turn_end", "a", 2.0, "alpha"),
        ("turn_end", "b", 2.5, "beta oneshot"),
        ("exit", "b", 2.6, "beta oneshot"),
        ("turn_start", "a", 3.0, "gamma"),
        ("turn_end", "a", 3.5, "gamma"),
        ("exit", "a", 4.0, "gamma"),
        ("start", "c", 4.0, ""),
    ]
    path = tmp_path / "log"
    path.write_text(
        "".join(
            json.dumps(
                {"event": e, "run": r, "pid": ord(r), "mono": t, "time": t, "prompt_head": h}
            )
            + "\n"
            for e, r, t, h in rows
        )
    )
    log = FakeClaudeLog(path)
    assert log.max_overlap(require_exit=False) == 2  # a and b; c starts as a exits
    with pytest.raises(AssertionError):
        log.max_overlap()  # c has not exited
    assert [log.live_at(t) for t in (0.5, 1.2, 1.7, 3.0, 4.0)] == [0, 1, 2, 1, 1]
    assert log.max_busy() == 2
    assert log.turns_per_process() == {ord("a"): 2, ord("b"): 1}
    assert [r["run"] for r in log.starts("gamma")] == ["a"]
    assert log.starts("gamma")[0]["prompt_head"] == "alpha"
    assert log.live_now() == [ord("c")]


async def test_interrupt_kills_the_children_of_the_turn(world: FakeWorld) -> None:
    cli = await world.start(MODE="spawn_child")
    await cli.user("start a job")
    (child,) = await world.log.wait_for(lambda recs: [r for r in recs if r["event"] == "child"])
    pids = [child["child_pid"], child["grandchild_pid"]]
    assert all(psutil.pid_exists(pid) for pid in pids)
    await cli.control("interrupt")
    result = await cli.result()
    assert result["terminal_reason"] == "aborted_streaming"
    assert not any(psutil.pid_exists(pid) for pid in pids)  # killed and reaped by the fake
    assert (await cli.turn("[[fake:echo]] after"))["result"] == "echo: [[fake:echo]] after"
    await cli.close()


async def test_stdin_closed_while_permission_pending(world: FakeWorld) -> None:
    cli = await world.start(MODE="perm")
    await cli.user("go")
    await cli.until(lambda o: o["type"] == "control_request")
    assert cli.proc.stdin is not None
    cli.proc.stdin.close()
    result = await cli.result()
    # Measured: the turn goes on with a failed permission and the process exits 0.
    assert result["result"] == (
        "tool denied: Tool permission request failed: AbortError: "
        "Tool permission stream closed before response received"
    )
    assert await cli.close() == 0
    assert not (world.cwd / "made_by_tool.txt").exists()


async def parity_run(cli: StreamCli, cwd: Path) -> dict[str, object]:
    """One scenario, the same for the real CLI and the fake; returns what must match."""
    seen: dict[str, object] = {}
    init_id = await cli.control("initialize")
    ack = await cli.until(lambda o: o["type"] == "control_response")
    seen["initialize"] = (ack["response"]["subtype"], ack["response"]["request_id"] == init_id)
    first = await cli.turn("hello")
    seen["first"] = (first["subtype"], first["is_error"], first["result"])
    await cli.user("[[fake:perm]] make it")
    req = await cli.until(lambda o: o["type"] == "control_request")
    body = req["request"]
    seen["can_use_tool"] = (
        sorted(body),
        body["input"],
        body["blocked_path"] == str(cwd / "made_by_tool.txt"),
    )
    await cli.respond(req, {"behavior": "deny", "message": "The chat user denied this."})
    denied = await cli.result()
    seen["denied"] = (
        denied["subtype"],
        "The chat user denied this." in denied["result"],
        [d["tool_name"] for d in denied["permission_denials"]],
        (cwd / "made_by_tool.txt").exists(),
    )
    await cli.user("[[fake:slow]] go slowly")
    await cli.until(lambda o: o.get("event", {}).get("type") == "content_block_delta")
    await cli.control("interrupt")
    ack = await cli.until(lambda o: o["type"] == "control_response")
    stopped = await cli.result()
    seen["interrupt"] = (
        ack["response"]["response"],
        stopped["subtype"],
        stopped["is_error"],
        stopped["terminal_reason"],
        "result" in stopped,
    )
    after = await cli.turn("[[fake:echo]] after")
    seen["after"] = after["result"]
    seen["sessions"] = len({o["session_id"] for o in cli.lines if "session_id" in o})
    seen["inits"] = sum(o.get("subtype") == "init" for o in cli.lines)
    seen["uuids"] = all(o.get("uuid") for o in cli.lines if o["type"] == "assistant")
    seen["exit"] = await cli.close()
    return seen


async def test_fake_matches_the_real_cli(world: FakeWorld, tmp_path: Path) -> None:
    """Drift check: one scenario against the pinned CLI (on the fake API) and the fake."""
    real_cwd = tmp_path / "real_cwd"
    real_cwd.mkdir()
    async with FakeAnthropic() as api:
        api.enqueue(
            Reply(),
            ToolUse("Bash", {"command": "touch made_by_tool.txt", "description": "Create a file"}),
            Reply(),
            Reply(" ".join(f"w{i}" for i in range(20)), chunks=20, chunk_delay=0.2),
        )
        real = await StreamCli.start(
            REAL_CLAUDE_BIN,
            cwd=real_cwd,
            env=claude_env(api.base_url, tmp_path / "real_home"),
            partial=True,
        )
        try:
            expected = await parity_run(real, real_cwd)
        finally:
            real.kill()
    fake = await world.start(partial=True, DELAY="0.2")
    assert await parity_run(fake, world.cwd) == expected
