"""Images in and files out through the real pinned CLI, the simulator and the fake Anthropic
API, driven by a minimal stream-json + control-protocol client written here.

These test the attachments pieces end to end before (and independently of) the bot's own
session client: the image block the simulator served reaches the model byte for byte, and the
`feishu` SDK MCP server's `send_file` posts files into the chat or refuses escapes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from database import SessionStore
from feishu_bot.claude.mcp_feishu import SEND_FILE_TOOL, FeishuMcp, mcp_config_arg
from feishu_bot.config import Settings
from feishu_bot.events import InboundMessage
from feishu_bot.feishu.inbound import parse_message_event
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.media import sample_jpeg, sample_png, sample_webp
from feishu_bot.turn_input import prepare_turn_input, turn_mcp
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, ToolUse


@dataclass
class Ctx:
    settings: Settings
    store: SessionStore
    replier: FeishuReplier


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as api:
        yield api


@pytest.fixture
async def ctx(sim: FeishuSimulator, tmp_path: Path) -> AsyncIterator[Ctx]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        FEISHU_APP_ID=sim.options.app_id,
        FEISHU_APP_SECRET=sim.options.app_secret,
        FEISHU_DOMAIN=sim.base_url,
    )
    async with await SessionStore.open(tmp_path / "bot.db") as store:
        async with FeishuReplier(
            app_id=sim.options.app_id, app_secret=sim.options.app_secret, domain=sim.base_url
        ) as replier:
            yield Ctx(settings, store, replier)


class Cli:
    """One warm CLI process: write a user message, answer control requests, collect lines."""

    def __init__(self, proc: asyncio.subprocess.Process, mcp: FeishuMcp | None) -> None:
        self.proc = proc
        self.mcp = mcp
        self.lines: list[dict[str, Any]] = []

    async def write(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        # Images wait on disk (ImageFile) until written; the bot's session streams them.
        line = json.dumps(obj, default=lambda o: base64.b64encode(o.path.read_bytes()).decode())
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()

    async def turn(self, content: list[dict[str, Any]], timeout: float = 60) -> dict[str, Any]:
        await self.write(
            {
                "type": "user",
                "message": {"role": "user", "content": content},
                "parent_tool_use_id": None,
                "session_id": "default",
            }
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                assert raw, "CLI exited"
                line = json.loads(raw)
                self.lines.append(line)
                if line.get("type") == "result":
                    return line
                if line.get("type") == "control_request":
                    await self._control(line)

    async def _control(self, line: dict[str, Any]) -> None:
        request = line["request"]
        response: dict[str, Any]
        if request.get("subtype") == "mcp_message" and self.mcp is not None:
            answer = await self.mcp(request["server_name"], request["message"])
            # A notification is acknowledged too (the CLI waits 30 s otherwise).
            response = {"mcp_response": answer or {"jsonrpc": "2.0", "result": {}}}
        elif request.get("subtype") == "can_use_tool":
            response = {"behavior": "deny", "message": "not in this test"}
        else:
            await self.write(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "error",
                        "request_id": line["request_id"],
                        "error": "unsupported",
                    },
                }
            )
            return
        await self.write(
            {
                "type": "control_response",
                "response": {
                    "subtype": "success",
                    "request_id": line["request_id"],
                    "response": response,
                },
            }
        )

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def start_cli(
    api: FakeAnthropic, tmp_path: Path, workdir: Path, mcp: FeishuMcp | None = None
) -> Cli:
    argv = [
        str(REAL_CLAUDE_BIN),
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-prompt-tool",
        "stdio",
    ]
    if mcp is not None:
        argv += ["--mcp-config", mcp_config_arg(), "--allowedTools", SEND_FILE_TOOL]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        env=claude_env(api.base_url, tmp_path / "home"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=64 * 1024 * 1024,
    )
    return Cli(proc, mcp)


async def inbound(sim: FeishuSimulator, message_id: str) -> InboundMessage:
    """The pushed message as the bot parses it (the envelope the simulator delivered)."""
    delivery = next(
        d for d in sim.deliveries if d.envelope["event"]["message"]["message_id"] == message_id
    )
    return parse_message_event(delivery.envelope, sim.options.bot_open_id)


def api_images(api: FakeAnthropic) -> list[tuple[str, bytes]]:
    last = api.message_requests[-1].messages
    out = []
    for msg in last:
        if msg.get("role") == "user" and isinstance(msg.get("content"), list):
            for block in msg["content"]:
                if block.get("type") == "image":
                    src = block["source"]
                    out.append((src["media_type"], base64.b64decode(src["data"])))
    return out


async def test_post_images_reach_the_model_byte_identical(
    sim: FeishuSimulator,
    ctx: Ctx,
    anthropic: FakeAnthropic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLAUDE_CODE_TMPDIR", str(tmp_path / "home" / "tmp"))
    work = tmp_path / "work"
    work.mkdir()
    shots = [sample_png(24, 16, seed=9), sample_jpeg(), sample_webp()]
    mid = await sim.media.push_post(["what differs?", *shots])
    msg = await inbound(sim, mid)
    turn = await prepare_turn_input(ctx, msg, workdir=work)  # type: ignore[arg-type]
    cli = await start_cli(anthropic, tmp_path, work)
    try:
        result = await cli.turn([{"type": "text", "text": turn.prompt}, *turn.content])
    finally:
        await cli.close()
    assert result["subtype"] == "success"
    assert api_images(anthropic) == [
        ("image/png", shots[0]),
        ("image/jpeg", shots[1]),
        ("image/webp", shots[2]),
    ]
    texts = anthropic.message_requests[-1].user_texts
    assert any(t.startswith("what differs?") for t in texts)
    copies = list((tmp_path / "home" / "tmp").glob("claude-*/*/*/images/*"))
    assert len(copies) == 3  # the CLI saved its copies ...
    turn.cleanup(result["session_id"])  # (of this turn's session only)
    assert not list((tmp_path / "home" / "tmp").glob("claude-*/*/*/images/*"))  # ... now gone


async def test_send_file_posts_png_and_text_into_the_chat(
    sim: FeishuSimulator, ctx: Ctx, anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    png = sample_png(40, 30, seed=4)
    (work / "plot.png").write_bytes(png)
    (work / "notes.txt").write_text("all good\n")
    mid = await sim.push_message(text="send me the plot and the notes")
    mcp = turn_mcp(ctx, await inbound(sim, mid), workdir=work)  # type: ignore[arg-type]
    anthropic.enqueue(
        ToolUse(SEND_FILE_TOOL, {"path": "plot.png", "caption": "the plot"}),
        ToolUse(SEND_FILE_TOOL, {"path": "notes.txt"}),
        Reply("sent both"),
    )
    cli = await start_cli(anthropic, tmp_path, work, mcp)
    try:
        result = await cli.turn([{"type": "text", "text": "send me the plot and the notes"}])
    finally:
        await cli.close()
    assert result["subtype"] == "success" and result["result"] == "sent both"
    [(image_msg, image_upload)] = sim.media.sent_media("image")
    [(file_msg, file_upload)] = sim.media.sent_media("file")
    assert image_msg.reply_to == mid and image_upload.data == png
    assert file_msg.reply_to == mid and file_upload.data == b"all good\n"
    assert file_upload.file_name == "notes.txt"
    captions = [m.text for m in sim.replies_to(mid) if m.msg_type == "text"]
    assert captions == ["the plot"]
    order = [m.msg_type for m in sim.replies_to(mid)]
    assert order == ["image", "text", "file"]
    tool_results = [r.messages[-1]["content"][0] for r in anthropic.message_requests[1:3]]
    assert "Sent plot.png" in json.dumps(tool_results[0])
    assert "Sent notes.txt" in json.dumps(tool_results[1])


async def test_send_file_refuses_escapes(
    sim: FeishuSimulator, ctx: Ctx, anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    (work / "sneaky.txt").symlink_to(tmp_path / "outside.txt")
    mid = await sim.push_message(text="send it")
    mcp = turn_mcp(ctx, await inbound(sim, mid), workdir=work)  # type: ignore[arg-type]
    anthropic.enqueue(
        ToolUse(SEND_FILE_TOOL, {"path": "../outside.txt"}),
        ToolUse(SEND_FILE_TOOL, {"path": "sneaky.txt"}),
        Reply("could not"),
    )
    started = time.monotonic()
    cli = await start_cli(anthropic, tmp_path, work, mcp)
    try:
        result = await cli.turn([{"type": "text", "text": "send it"}])
    finally:
        await cli.close()
    assert result["result"] == "could not"
    assert time.monotonic() - started < 30  # no 30 s MCP handshake stall
    for request in anthropic.message_requests[1:3]:
        block = request.messages[-1]["content"][0]
        assert block["type"] == "tool_result" and block.get("is_error") is True
        assert "only files inside the conversation's working directory" in json.dumps(block)
    assert sim.media.uploads == [] and sim.replies_to(mid) == []
