"""The shared fakes behave as documented (other suites build on them)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.fakes.claude_env import FAKE_CLAUDE_BIN, QUIET_ENV, claude_env
from tests.fakes.fake_anthropic import ApiError, FakeAnthropic, Hang, Reply, ToolUse
from tests.fakes.stream_cli import FakeWorld, StreamCli


def sse_events(raw: str) -> list[tuple[str, dict]]:
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def body(text: str, **extra: object) -> dict:
    return {
        "model": "claude-test",
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\nignore me"},
                    {"type": "text", "text": text},
                ],
            }
        ],
        **extra,
    }


async def test_default_reply_echoes_as_sse() -> None:
    async with FakeAnthropic() as api, aiohttp.ClientSession() as http:
        url = f"{api.base_url}/v1/messages?beta=true"
        async with http.post(url, json=body("hi there")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = sse_events(await resp.text())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 3
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "echo: hi there"
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] >= 1
    (rec,) = api.message_requests
    assert rec.query == {"beta": "true"}
    assert rec.user_texts == ["hi there"]


async def test_scripted_replies_errors_and_other_endpoints() -> None:
    async with FakeAnthropic() as api, aiohttp.ClientSession() as http:
        api.enqueue(Reply("scripted", chunks=2), ApiError(529), ApiError(500, "api_error", "x"))
        url = f"{api.base_url}/v1/messages"
        async with http.post(url, json=body("a")) as resp:
            events = sse_events(await resp.text())
            deltas = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
            assert deltas == ["scri", "pted"]
        async with http.post(url, json=body("b")) as resp:
            assert resp.status == 529
            assert (await resp.json())["error"]["type"] == "overloaded_error"
        async with http.post(url, json=body("c")) as resp:
            assert resp.status == 500
        async with http.post(url, json=body("d", stream=False)) as resp:
            message = await resp.json()
            assert message["content"] == [{"type": "text", "text": "echo: d"}]
        async with http.post(f"{url}/count_tokens", json=body("e")) as resp:
            assert (await resp.json())["input_tokens"] > 0
        async with http.get(f"{api.base_url}/v1/unknown") as resp:
            assert resp.status == 404
        assert len(api.message_requests) == 4
        assert len(api.requests) == 6


async def test_tool_use_and_responder() -> None:
    def responder(rec):
        return ToolUse("Bash", {"command": "ls"}) if "tool" in rec.last_user_text else None

    async with FakeAnthropic(responder=responder) as api, aiohttp.ClientSession() as http:
        async with http.post(f"{api.base_url}/v1/messages", json=body("use a tool")) as resp:
            events = sse_events(await resp.text())
        start = next(d for n, d in events if n == "content_block_start")
        assert start["content_block"]["name"] == "Bash"
        partial = "".join(
            d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"
        )
        assert json.loads(partial) == {"command": "ls"}
        stop = next(d for n, d in events if n == "message_delta")
        assert stop["delta"]["stop_reason"] == "tool_use"


async def test_hang_is_released_on_close() -> None:
    api = FakeAnthropic(default=Hang())
    await api.start()
    async with aiohttp.ClientSession() as http:
        request = asyncio.create_task(http.post(f"{api.base_url}/v1/messages", json=body("x")))
        await api.wait_for_requests(1)
        await asyncio.sleep(0.05)
        assert api.hanging == 1
        async with asyncio.timeout(5):
            await api.close()
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    assert api.hanging == 0


def test_claude_env_is_offline_and_scrubbed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IS_SANDBOX", "1")
    env = claude_env("http://127.0.0.1:9", tmp_path / "home")
    assert "IS_SANDBOX" not in env
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert env["ANTHROPIC_API_KEY"] == "sk-test"
    assert env["HOME"] == str(tmp_path / "home")
    assert Path(env["CLAUDE_CODE_TMPDIR"]).is_dir()
    assert "127.0.0.1" in env["NO_PROXY"]
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0"
    for key, value in QUIET_ENV.items():
        assert env[key] == value
    assert env["PATH"] == os.environ["PATH"]


def test_fake_claude_is_an_executable_script(tmp_path: Path) -> None:
    assert os.access(FAKE_CLAUDE_BIN, os.X_OK)
    assert FAKE_CLAUDE_BIN.read_text().startswith("#!/usr/bin/env python3\n")
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(FAKE_CLAUDE_BIN), "-p", "--output-format", "stream-json", "--verbose"],
        input="ping",
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["type"] == "system" and lines[0]["subtype"] == "init"
    assert lines[-1]["type"] == "result" and lines[-1]["result"] == "echo: ping"
    stale = subprocess.run(
        [str(FAKE_CLAUDE_BIN), "-p", "--resume", "nope"],
        input="x",
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert stale.returncode == 1
    assert "No conversation found with session ID: nope" in stale.stderr
    bad = subprocess.run(
        [str(FAKE_CLAUDE_BIN), "-p", "--nope"],
        input="x",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert (bad.returncode, bad.stderr) == (1, "error: unknown option '--nope'\n")


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 0)])
def test_fake_claude_signals_like_the_real_cli(tmp_path: Path, sig: str, code: int) -> None:
    import signal as signals

    env = {**os.environ, "HOME": str(tmp_path), "FAKE_CLAUDE_MODE": "hang"}
    proc = subprocess.Popen(
        [str(FAKE_CLAUDE_BIN), "-p", "--output-format", "stream-json", "--verbose"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("x")
    proc.stdin.close()
    assert json.loads(proc.stdout.readline())["subtype"] == "init"
    proc.stdout.readline()  # "working"
    proc.send_signal(getattr(signals, sig))
    rest = proc.stdout.read()
    assert proc.wait(timeout=10) == code
    if sig == "SIGINT":
        result = json.loads(rest.splitlines()[-1])
        assert result["type"] == "result" and result["is_error"] is True
    else:
        assert rest == ""


# --------------------------------------------------------------------------- stream-json input
@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[FakeWorld]:
    made = FakeWorld(tmp_path)
    yield made
    await made.aclose()


async def test_stream_turns_share_one_process(world: FakeWorld) -> None:
    cli = await world.start(MODE="history")
    # Nothing is printed before the first stdin line: the first line is this answer.
    init_id = await cli.control("initialize")
    first = await cli.until(lambda o: True)
    assert first["type"] == "control_response"
    assert first["response"]["subtype"] == "success"
    assert first["response"]["request_id"] == init_id
    bogus_id = await cli.control("no_such_thing")
    bogus = await cli.until(lambda o: o["type"] == "control_response")
    assert bogus["response"] == {
        "subtype": "error",
        "request_id": bogus_id,
        "error": "Unsupported control request subtype: no_such_thing",
        "error_code": "unsupported_request",
    }
    one = await cli.turn("one")
    two = await cli.turn([{"type": "text", "text": "two"}, {"type": "text", "text": "lines"}])
    assert (one["result"], two["result"]) == ("history: one", "history: one | two\nlines")
    assert one["session_id"] == two["session_id"]
    inits = [o for o in cli.lines if o.get("subtype") == "init"]
    assert len(inits) == 2 and all(o["session_id"] == one["session_id"] for o in inits)
    assert all(o.get("uuid") for o in cli.lines if o["type"] == "assistant")
    assert await cli.close() == 0
    log = world.log
    assert log.turns_per_process() == {cli.pid: 2}
    assert [r["turn"] for r in log.turn_ends()] == [1, 2]
    assert [r["subtype"] for r in log.controls()] == ["initialize", "no_such_thing"]
    assert log.max_overlap() == 1 and log.live_now() == []
    assert log.starts("two")[0]["prompt_head"] == "one"


async def test_interrupt_mid_stream_then_next_turn(world: FakeWorld) -> None:
    cli = await world.start(partial=True, MODE="slow", DELAY="0.5")
    await cli.user("a slow answer that streams in five parts")
    await cli.until(lambda o: o.get("event", {}).get("type") == "content_block_delta")
    request_id = await cli.control("interrupt")
    ack = await cli.until(lambda o: o["type"] == "control_response")
    assert ack["response"] == {
        "subtype": "success",
        "request_id": request_id,
        "response": {"still_queued": []},
    }
    result = await cli.result()
    assert result["subtype"] == "error_during_execution" and result["is_error"] is True
    assert result["terminal_reason"] == "aborted_streaming" and "result" not in result
    partial = [o for o in cli.lines if o["type"] == "assistant"][-1]
    assert (
        partial["message"]["content"][0]["text"] != "echo: a slow answer that streams in five parts"
    )
    notes = [o for o in cli.lines if o["type"] == "user"]
    assert notes[-1]["message"]["content"] == [
        {"type": "text", "text": "[Request interrupted by user]"}
    ]
    after = await cli.turn("[[fake:echo]] next")
    assert after["result"] == "echo: [[fake:echo]] next"
    assert await cli.close() == 0
    assert world.log.turns_per_process() == {cli.pid: 2}


async def perm_request(cli: StreamCli) -> dict:
    return await cli.until(
        lambda o: o["type"] == "control_request" and o["request"]["subtype"] == "can_use_tool"
    )


async def test_perm_allow_runs_the_command(world: FakeWorld) -> None:
    cli = await world.start(MODE="perm")
    await cli.user("make the file")
    req = await perm_request(cli)
    tool_use = [o for o in cli.lines if o["type"] == "assistant"][-1]["message"]["content"][0]
    body = req["request"]
    assert uuid.UUID(req["request_id"])
    assert body["tool_name"] == "Bash" and body["display_name"] == "Bash"
    assert body["input"] == {"command": "touch made_by_tool.txt", "description": "Create a file"}
    assert body["blocked_path"] == str(world.cwd / "made_by_tool.txt")
    assert body["tool_use_id"] == tool_use["id"] and tool_use["name"] == "Bash"
    assert [s["type"] for s in body["permission_suggestions"]] == [
        "addRules",
        "addDirectories",
        "setMode",
    ]
    assert not (world.cwd / "made_by_tool.txt").exists()
    await cli.respond(req, {"behavior": "allow", "updatedInput": body["input"]})
    result = await cli.result()
    assert result["result"] == "done after tool" and result["is_error"] is False
    tool_result = [o for o in cli.lines if o["type"] == "user"][-1]["message"]["content"][0]
    assert tool_result["tool_use_id"] == tool_use["id"] and tool_result["is_error"] is False
    assert (world.cwd / "made_by_tool.txt").exists()
    assert await cli.close() == 0
    assert [r["behavior"] for r in world.log.controls()] == ["allow"]


async def test_perm_deny_and_deny_with_interrupt(world: FakeWorld) -> None:
    cli = await world.start(MODE="perm")
    await cli.user("make the file")
    req = await perm_request(cli)
    await cli.respond(req, {"behavior": "deny", "message": "The chat user denied this."})
    result = await cli.result()
    assert result["subtype"] == "success"
    assert "The chat user denied this." in result["result"]
    assert [d["tool_name"] for d in result["permission_denials"]] == ["Bash"]
    await cli.user("again")
    req = await perm_request(cli)
    await cli.respond(req, {"behavior": "deny", "message": "stop", "interrupt": True})
    result = await cli.result()
    assert (result["subtype"], result["terminal_reason"]) == (
        "error_during_execution",
        "aborted_tools",
    )
    assert not (world.cwd / "made_by_tool.txt").exists()
    assert (await cli.turn("[[fake:echo]] still here"))[
        "result"
    ] == "echo: [[fake:echo]] still here"
    await cli.close()


async def test_interrupt_while_permission_is_pending(world: FakeWorld) -> None:
    cli = await world.start(MODE="perm")
    await cli.user("make the file")
    req = await perm_request(cli)
    request_id = await cli.control("interrupt")
    cancel = await cli.until(lambda o: o["type"] != "stream_event")
    assert cancel == {"type": "control_cancel_request", "request_id": req["request_id"]}
    ack = await cli.until(lambda o: True)
    assert ack["type"] == "control_response" and ack["response"]["request_id"] == request_id
    result = await cli.result()
    assert result["terminal_reason"] == "aborted_tools" and result["is_error"] is True
    # A late answer to the cancelled request is ignored; the process takes the next turn.
    await cli.respond(req, {"behavior": "allow", "updatedInput": req["request"]["input"]})
    assert (await cli.turn("[[fake:echo]] next"))["result"] == "echo: [[fake:echo]] next"
    assert not (world.cwd / "made_by_tool.txt").exists()
    await cli.close()


async def test_interrupt_while_the_allowed_command_runs(world: FakeWorld) -> None:
    cli = await world.start(MODE="perm", PERM_COMMAND="touch started.txt; sleep 30; touch done.txt")
    await cli.user("long job")
    req = await perm_request(cli)
    await cli.respond(req, {"behavior": "allow", "updatedInput": req["request"]["input"]})
    log = world.log
    tool = await log.wait_for(lambda recs: [r for r in recs if r["event"] == "tool"])
    await cli.control("interrupt")
    result = await cli.result()
    assert result["terminal_reason"] == "aborted_tools"
    rejected = [o for o in cli.lines if o["type"] == "user"][-2]["message"]["content"][0]
    assert "stopped while running" in rejected["content"]
    assert (world.cwd / "started.txt").exists() and not (world.cwd / "done.txt").exists()
    assert not psutil.pid_exists(tool[0]["tool_pid"]) or (
        psutil.Process(tool[0]["tool_pid"]).status() == psutil.STATUS_ZOMBIE
    )
    await cli.close()


async def test_ask_user_question(world: FakeWorld) -> None:
    cli = await world.start(MODE="ask")
    await cli.user("which colour?")
    req = await perm_request(cli)
    body = req["request"]
    assert body["tool_name"] == "AskUserQuestion" and body["requires_user_interaction"] is True
    question = body["input"]["questions"][0]
    assert question["question"] == "Pick a colour"
    assert [o["label"] for o in question["options"]] == ["Red", "Blue"]
    answers = {"Pick a colour": "Blue"}
    await cli.respond(
        req, {"behavior": "allow", "updatedInput": {**body["input"], "answers": answers}}
    )
    assert (await cli.result())["result"] == "answered: Blue"
    await cli.close()


async def test_crash_mid_turn_and_die_between_turns(world: FakeWorld) -> None:
    crash = await world.start(MODE="crash_mid_turn")
    await crash.user("boom")
    lines = await crash.rest()
    assert lines[0]["subtype"] == "init" and all(o["type"] != "result" for o in lines)
    assert await crash.close() == 1
    dies = await world.start(MODE="die_between_turns")
    assert (await dies.turn("fine"))["result"] == "echo: fine"
    async with asyncio.timeout(10):
        assert await dies.proc.wait() == 1  # by itself, stdin still open
    log = world.log
    exits = {r["pid"]: r for r in log.records("exit")}
    assert exits[crash.pid]["code"] == 1 and exits[dies.pid]["reason"] == "died between turns"
    assert [r["pid"] for r in log.turn_ends()] == [dies.pid]


async def test_non_json_line_exits_1_and_eof_exits_0(world: FakeWorld) -> None:
    bad = await world.start()
    await bad.send("this is not json")
    assert await bad.close() == 1
    assert "Error parsing streaming input line" in await bad.stderr()
    idle = await world.start()
    assert await idle.close(timeout=5) == 0
    errored = await world.start(MODE="api_error")
    result = await errored.turn("x")
    assert result["is_error"] is True and result["api_error_status"] == 529
    assert await errored.close() == 1  # measured: EOF after an error result exits 1
    log = world.log
    assert log.max_overlap() >= 1 and log.live_now() == []
    assert {r["pid"]: r["code"] for r in log.records("exit")} == {
        bad.pid: 1,
        idle.pid: 0,
        errored.pid: 1,
    }
