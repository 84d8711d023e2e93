"""The shared fakes behave as documented (other suites build on them)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.claude_env import FAKE_CLAUDE_BIN, QUIET_ENV, claude_env
from tests.fakes.fake_anthropic import ApiError, FakeAnthropic, Hang, Reply, ToolUse


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
