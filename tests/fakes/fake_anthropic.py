"""A fake Anthropic Messages API on 127.0.0.1, good enough for the real Claude Code CLI.

The pinned CLI (2.1.329) pointed at it with ``ANTHROPIC_BASE_URL`` sends ``POST
/v1/messages?beta=true`` with ``stream: true`` and reads the answer as server-sent events
(message_start, content_block_start, content_block_delta/text_delta, content_block_stop,
message_delta, message_stop). This server answers that, plus ``/v1/messages/count_tokens`` and
non-streaming ``/v1/messages`` in case a CLI version asks for them.

Usage::

    async with FakeAnthropic() as api:          # default reply: "echo: <last user text>"
        env = claude_env(api.base_url, tmp_path)
        api.enqueue(Reply("hi"), ApiError(529), Hang())   # consumed in order, then default
        ...
        body = api.message_requests[-1].body         # every request is recorded

Behaviours (one per ``POST /v1/messages``):

- ``Reply(text=None, chunks=3, delay=0, chunk_delay=0, release=None)``: a normal answer,
  streamed in ``chunks`` text deltas (after ``release`` is set, when given); ``text=None``
  echoes the last user text as ``"echo: <text>"``.
- ``ToolUse(name, input, text=None)``: the model calls a tool (``stop_reason: tool_use``); the
  CLI then runs the tool and sends another request with the ``tool_result``.
- ``ApiError(status=529, ...)``: an HTTP error with an Anthropic-shaped JSON body.
- ``Hang(after_start=False)``: never answer (optionally after ``message_start``); released when
  the server closes.

Choose behaviours by queue (``enqueue``), by a fixed ``default``, or per request with a
``responder(request) -> behaviour | None`` callable (None falls through to queue/default).
Nothing here is global: each instance is its own server on its own port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from feishu_bot.playground.offline_api import text_blocks

__all__ = [
    "ApiError",
    "Behaviour",
    "FakeAnthropic",
    "Hang",
    "RecordedRequest",
    "Reply",
    "ToolUse",
    "user_texts",
]

SYSTEM_REMINDER = "<system-reminder>"


@dataclass(frozen=True)
class Reply:
    """A normal streamed answer. ``text=None`` means ``"echo: <last user text>"``."""

    text: str | None = None
    chunks: int = 3
    delay: float = 0.0
    chunk_delay: float = 0.0
    # Answer only once this is set: a test holds a turn running for exactly as long as it needs.
    release: asyncio.Event | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ToolUse:
    """The model asks for one tool call, optionally after some text."""

    name: str
    input: dict[str, Any]
    text: str | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class ApiError:
    """An HTTP error answer (529 overloaded, 500 api_error, 429 rate limit, ...)."""

    status: int = 529
    type: str = "overloaded_error"
    message: str = "Overloaded"
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Accept the request and never finish it (until the server closes)."""

    after_start: bool = False


Behaviour = Reply | ToolUse | ApiError | Hang


@dataclass
class RecordedRequest:
    """One HTTP request as the fake saw it; ``body`` is the parsed JSON (or None)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    time: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict[str, Any]]:
        if isinstance(self.body, dict) and isinstance(self.body.get("messages"), list):
            return self.body["messages"]
        return []

    @property
    def user_texts(self) -> list[str]:
        """Every user-typed text in the request, oldest first (system reminders left out)."""
        return user_texts(self.messages)

    @property
    def last_user_text(self) -> str:
        texts = self.user_texts
        return texts[-1] if texts else ""

    @property
    def assistant_texts(self) -> list[str]:
        out: list[str] = []
        for msg in self.messages:
            if msg.get("role") == "assistant":
                out.extend(text_blocks(msg.get("content")))
        return out


def user_texts(messages: list[dict[str, Any]]) -> list[str]:
    """User text blocks of a Messages API ``messages`` list, minus ``<system-reminder>`` ones."""
    out: list[str] = []
    for msg in messages:
        if msg.get("role") != "user":
            continue
        for text in text_blocks(msg.get("content")):
            if not text.lstrip().startswith(SYSTEM_REMINDER):
                out.append(text)
    return out


def _last_tool_result(messages: list[dict[str, Any]]) -> str | None:
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return None
    for block in reversed(content):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, str):
                return inner
            return "\n".join(text_blocks(inner))
    return None


def _split(text: str, parts: int) -> list[str]:
    parts = max(1, min(parts, len(text) or 1))
    size = -(-len(text) // parts) if text else 0
    if not size:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeAnthropic:
    """The fake API server. ``async with`` starts it on 127.0.0.1:<free port>.

    Thread-unsafe by design: use it from the event loop that started it. ``requests`` holds
    every request (any path); ``message_requests`` only the ``POST /v1/messages`` ones.
    """

    def __init__(
        self,
        *,
        default: Behaviour | None = None,
        responder: Callable[[RecordedRequest], Behaviour | None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.default: Behaviour = default or Reply()
        self.responder = responder
        self.host = host
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Behaviour] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._closing = asyncio.Event()
        self._changed = asyncio.Condition()
        self.hanging = 0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}"

    # ------------------------------------------------------------------ scripting
    def enqueue(self, *behaviours: Behaviour) -> None:
        """Answer the next ``POST /v1/messages`` requests with these, in order."""
        self._queue.extend(behaviours)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [
            r for r in self.requests if r.method == "POST" and r.path.rstrip("/") == "/v1/messages"
        ]

    async def wait_for_requests(self, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` message requests arrived; return them."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.message_requests) >= count)
        return self.message_requests

    # ------------------------------------------------------------------ handlers
    def _pick(self, req: RecordedRequest) -> Behaviour:
        if self.responder is not None:
            chosen = self.responder(req)
            if chosen is not None:
                return chosen
        if self._queue:
            return self._queue.popleft()
        return self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        self.requests.append(rec)
        async with self._changed:
            self._changed.notify_all()

        path = request.path.rstrip("/")
        if request.method == "POST" and path == "/v1/messages/count_tokens":
            return web.json_response({"input_tokens": max(1, len(raw) // 4)})
        if request.method == "POST" and path == "/v1/messages":
            return await self._messages(request, rec)
        if request.method == "HEAD" or (request.method == "GET" and path in ("", "/")):
            return web.Response(status=200)
        return _error_response(404, "not_found_error", f"no route {request.method} {path}")

    async def _messages(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        behaviour = self._pick(rec)
        n = next(self._ids)
        msg_id = f"msg_fake_{uuid.uuid4().hex[:24]}"
        req_id = f"req_fake_{n:06d}"
        body = rec.body if isinstance(rec.body, dict) else {}
        model = str(body.get("model") or "claude-fake")
        stream = bool(body.get("stream"))
        input_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)

        if isinstance(behaviour, Hang) and not behaviour.after_start:
            await self._hang()
            return _error_response(529, "overloaded_error", "server closing")
        delay = getattr(behaviour, "delay", 0.0)
        if delay:
            await asyncio.sleep(delay)
        release = getattr(behaviour, "release", None)
        if release is not None:
            await release.wait()
        if isinstance(behaviour, ApiError):
            resp = _error_response(behaviour.status, behaviour.type, behaviour.message)
            resp.headers["request-id"] = req_id
            return resp

        blocks = self._blocks(behaviour, rec)
        stop_reason = "tool_use" if isinstance(behaviour, ToolUse) else "end_turn"
        if not stream:
            content = [
                {"type": "text", "text": b["text"]}
                if b["type"] == "text"
                else {"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]}
                for b in blocks
            ]
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 10},
                },
                headers={"request-id": req_id},
            )

        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": req_id,
            },
        )
        await resp.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            payload = f"event: {event}\ndata: {json.dumps(data)}\n\n"
            await resp.write(payload.encode())

        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        )
        if isinstance(behaviour, Hang):
            await self._hang()
            return resp

        chunks = behaviour.chunks if isinstance(behaviour, Reply) else 2
        chunk_delay = behaviour.chunk_delay if isinstance(behaviour, Reply) else 0.0
        output_tokens = 0
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                await send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                for piece in _split(block["text"], chunks):
                    if chunk_delay:
                        await asyncio.sleep(chunk_delay)
                    output_tokens += max(1, len(piece) // 4)
                    await send(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
            else:
                await send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    },
                )
                raw_input = json.dumps(block["input"])
                for piece in _split(raw_input, 2):
                    await send(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                output_tokens += max(1, len(raw_input) // 4)
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": max(1, output_tokens)},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp

    def _blocks(self, behaviour: Behaviour, rec: RecordedRequest) -> list[dict[str, Any]]:
        if isinstance(behaviour, ToolUse):
            blocks: list[dict[str, Any]] = []
            if behaviour.text:
                blocks.append({"type": "text", "text": behaviour.text})
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_fake_{uuid.uuid4().hex[:20]}",
                    "name": behaviour.name,
                    "input": behaviour.input,
                }
            )
            return blocks
        text = behaviour.text if isinstance(behaviour, Reply) else None
        if text is None:
            tool_result = _last_tool_result(rec.messages)
            source = tool_result if tool_result is not None else rec.last_user_text
            text = f"echo: {source}"
        return [{"type": "text", "text": text}]

    async def _hang(self) -> None:
        self.hanging += 1
        try:
            await self._closing.wait()
        finally:
            self.hanging -= 1


def _error_response(status: int, err_type: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": err_type, "message": message}}, status=status
    )
