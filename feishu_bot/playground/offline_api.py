"""The offline demo model: a small Anthropic Messages API on 127.0.0.1 for the real Claude CLI.

`feishu-bot playground --offline` points the pinned CLI at it (``ANTHROPIC_BASE_URL`` and a
dummy key), so the whole path — long connection, launcher, CLI, stream-json, cards — runs for
real and only the model is pretend. Every answer starts with `OFFLINE_LABEL`, so no card can be
mistaken for Claude's.

What the demo model does with the user's last message:

- default: echoes it, streamed word by word (server-sent events as the real API sends them);
- ``run: <command>``: asks for the ``Bash`` tool with that command (so an approval or a denial
  can be seen), then reports the tool's result in a second answer;
- ``send: <path>``: asks for the bot's ``send_file`` tool (``mcp__feishu__send_file``), so a
  file made in the working directory comes back into the chat;
- contains ``slow``: streams a long answer slowly (about a minute), so Stop can be tried.

Adapted from the test fake (tests/fakes/fake_anthropic.py); the package never imports tests.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["OFFLINE_LABEL", "DemoAnswer", "OfflineApi", "plan_answer", "text_blocks"]

OFFLINE_LABEL = "offline demo — replies are not from Claude"
SYSTEM_REMINDER = "<system-reminder>"
WORD_DELAY_S = 0.04  # visible streaming without making the demo tedious
SLOW_WORD_DELAY_S = 0.5
SLOW_WORDS = 120  # ~60 s: long enough to press Stop
SEND_FILE_TOOL = "mcp__feishu__send_file"  # the bot's MCP tool that posts a file to the chat


@dataclass(frozen=True)
class DemoAnswer:
    """What the demo model answers to one request: text, then optionally one tool call."""

    text: str
    word_delay: float = WORD_DELAY_S
    bash_command: str | None = None
    tool: str | None = None  # another tool than Bash, called with `tool_input`
    tool_input: dict[str, Any] | None = None

    @property
    def tool_call(self) -> tuple[str, dict[str, Any]] | None:
        if self.bash_command is not None:
            return "Bash", {
                "command": self.bash_command,
                "description": "Run the command from the playground",
            }
        if self.tool is not None:
            return self.tool, dict(self.tool_input or {})
        return None


def text_blocks(content: Any) -> list[str]:
    """The text blocks of a Messages API `content` (a string is one block)."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                out.append(str(block.get("text", "")))
    return out


def _typed(text: str) -> bool:
    # Left out: the CLI's reminders and the "[Image: source: …]" note it adds after an image.
    stripped = text.lstrip()
    return not stripped.startswith((SYSTEM_REMINDER, "[Image: source:", "[Image #"))


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    texts = [
        text
        for msg in messages
        if msg.get("role") == "user"
        for text in text_blocks(msg.get("content"))
        if _typed(text)
    ]
    return texts[-1].strip() if texts else ""


def _images(messages: list[dict[str, Any]]) -> list[str]:
    """Media types of the image blocks in the last user message."""
    content = _last_user(messages).get("content")
    blocks = content if isinstance(content, list) else []
    return [
        str((b.get("source") or {}).get("media_type") or "image")
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "image"
    ]


def _last_user(messages: list[dict[str, Any]]) -> dict[str, Any]:
    # The CLI may put a "system" entry after the user's turn: look for the last user entry.
    return next((m for m in reversed(messages) if m.get("role") == "user"), {})


def _tool_result(messages: list[dict[str, Any]]) -> tuple[str, bool] | None:
    """(text, is_error) of a tool_result in the last user message, if it carries one."""
    content = _last_user(messages).get("content")
    if not isinstance(content, list):
        return None
    for block in reversed(content):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            text = inner if isinstance(inner, str) else "\n".join(text_blocks(inner))
            return text, bool(block.get("is_error"))
    return None


def plan_answer(messages: list[dict[str, Any]]) -> DemoAnswer:
    """Decide the demo answer for a Messages API ``messages`` list (pure)."""
    label = f"*{OFFLINE_LABEL}*\n\n"
    result = _tool_result(messages)
    if result is not None:
        text, is_error = result
        head = "The tool call was refused or failed:" if is_error else "The command printed:"
        return DemoAnswer(f"{label}{head}\n\n```\n{text.strip() or '(no output)'}\n```")
    said = _last_user_text(messages)
    if said.lower().startswith("run:"):
        command = said[4:].strip() or "echo hello from the playground"
        return DemoAnswer(f"{label}I would like to run `{command}`.", bash_command=command)
    if said.lower().startswith("send:"):
        path = said[5:].strip() or "hello.txt"
        return DemoAnswer(
            f"{label}Sending `{path}` to the chat.",
            tool=SEND_FILE_TOOL,
            tool_input={"path": path, "caption": f"{path}, sent by the offline demo"},
        )
    if "slow" in said.lower():
        words = " ".join(f"word{i}" for i in range(1, SLOW_WORDS + 1))
        return DemoAnswer(
            f"{label}A slow answer, so you can press Stop: {words}", word_delay=SLOW_WORD_DELAY_S
        )
    images = _images(messages)
    seen = f"I received {len(images)} image(s) ({', '.join(images)}). " if images else ""
    return DemoAnswer(
        f"{label}{seen}You said: {said or '(no text)'}\n\n"
        "Try `run: curl -sI https://example.com` for a command that needs approval (it leaves "
        "the sandbox; with CLAUDE_SANDBOX=off any command asks, e.g. "
        '`run: python3 -c "print(6*7)"`), or a message with *slow* in it to try Stop.'
    )


def _words(text: str) -> list[str]:
    """Split keeping every character (the pieces join back to `text`)."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        current += ch
        if ch in " \n":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


class OfflineApi:
    """The demo API server; ``async with OfflineApi() as api`` listens on 127.0.0.1:<free>."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def __aenter__(self) -> OfflineApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if request.method == "POST" and path == "/v1/messages/count_tokens":
            return web.json_response({"input_tokens": max(1, len(raw) // 4)})
        if request.method == "POST" and path == "/v1/messages":
            self.requests += 1
            messages = body.get("messages") if isinstance(body.get("messages"), list) else []
            answer = plan_answer(messages)
            model = str(body.get("model") or "offline-demo")
            if body.get("stream"):
                return await self._stream(request, answer, model)
            return web.json_response(_message(answer, model))
        if request.method in ("GET", "HEAD") and path == "":
            return web.Response(text="offline demo API")
        return web.json_response(
            {"type": "error", "error": {"type": "not_found_error", "message": path}}, status=404
        )

    async def _stream(
        self, request: web.Request, answer: DemoAnswer, model: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        start = _message(answer, model)
        start.update(content=[], stop_reason=None)
        await send("message_start", {"type": "message_start", "message": start})
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        # A client that goes away (Stop) ends the write with an error: the stream just ends.
        try:
            for piece in _words(answer.text):
                await asyncio.sleep(answer.word_delay)
                delta = {"type": "text_delta", "text": piece}
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})
            if answer.tool_call is not None:
                tool = _tool_block(*answer.tool_call)
                await send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 1,
                        "content_block": {**tool, "input": {}},
                    },
                )
                delta = {"type": "input_json_delta", "partial_json": json.dumps(tool["input"])}
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 1, "delta": delta},
                )
                await send("content_block_stop", {"type": "content_block_stop", "index": 1})
            await send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(answer), "stop_sequence": None},
                    "usage": {"output_tokens": max(1, len(answer.text) // 4)},
                },
            )
            await send("message_stop", {"type": "message_stop"})
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return resp


def _stop_reason(answer: DemoAnswer) -> str:
    return "tool_use" if answer.tool_call is not None else "end_turn"


def _tool_block(name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": f"toolu_demo_{uuid.uuid4().hex[:20]}",
        "name": name,
        "input": tool_input,
    }


def _message(answer: DemoAnswer, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": answer.text}]
    if answer.tool_call is not None:
        content.append(_tool_block(*answer.tool_call))
    return {
        "id": f"msg_demo_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(answer),
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1,
            "output_tokens": max(1, len(answer.text) // 4),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
