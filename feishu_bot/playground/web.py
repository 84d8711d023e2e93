"""The playground's web side: one static page, a JSON API and a websocket feed.

Routes (all on 127.0.0.1):

- ``GET /`` the page; ``GET /static/...`` its script and style sheet (no build step);
- ``GET /api/feed`` websocket: ``hello`` (mode, chats, what the simulator supports), a
  ``snapshot`` of every message, then ``items`` (messages that changed) and ``health``;
- ``GET /api/state`` the same as one JSON document (for scripts and tests);
- ``POST /api/send`` ``{"chat": "p2p"|"group", "text", "mention"}``: pushes the user's message
  into the simulator as a real ``im.message.receive_v1`` event over the long connection;
- ``POST /api/action`` ``{"message_id", "value", "tag"}``: a card button click, pushed as a
  real ``card.action.trigger`` callback; answers with what the bot returned (its toast);
- ``POST /api/upload`` (multipart ``file``, ``chat``, ``mention``): an image or file message,
  when the simulator can hold resources; ``GET /api/resource/{key}`` serves them back;
- ``GET /api/healthz`` the bot's /healthz body.

Every route but ``/static/`` needs this run's token, and every request must come from the page
itself (`guard`): ``url`` is the address to open, ``/?token=…``, which sets the page's cookie.
Each page's feed queue is bounded: a page that falls `feed_queue_max` messages behind (its
socket full, or gone quiet) is dropped, and its script reconnects to a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

from feishu_bot.simulator import FeishuSimulator

from . import features
from .guard import Guard, guard_middleware
from .view import CHATS, PLAYGROUND_USER, ChatView

__all__ = ["PlaygroundWeb"]

STATIC = Path(__file__).resolve().parent / "static"
BATCH_S = 0.05  # coalesce bursts of record changes (a streamed card) into one feed message
HEALTH_EVERY_S = 2.0
MAX_UPLOAD = 30 * 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# Feed messages one page may have waiting. A page that reads keeps its queue near empty (the
# records are coalesced every BATCH_S); one that does not would otherwise hold every card
# version of the run in memory.
FEED_QUEUE_MAX = 1000
CLOSE_TIMEOUT_S = 2.0  # a page whose socket will not take even the close frame is cut


@dataclass(eq=False, slots=True)
class _Page:
    """One open page feed: its websocket, its queue, the task writing the queue out."""

    ws: web.WebSocketResponse
    queue: asyncio.Queue[str]
    transport: asyncio.BaseTransport | None
    writer: asyncio.Task[None] | None = None


class PlaygroundWeb:
    """The aiohttp app; `info` is sent to every page as the ``hello`` message.

    `token` is this run's secret (a fresh one when not given); `url` carries it.
    """

    def __init__(
        self,
        sim: FeishuSimulator,
        *,
        info: dict[str, Any],
        health: Callable[[], Awaitable[dict[str, Any]]],
        host: str = "127.0.0.1",
        port: int = 8780,
        token: str | None = None,
        feed_queue_max: int = FEED_QUEUE_MAX,
    ) -> None:
        if feed_queue_max < 3:
            raise ValueError("feed_queue_max must hold a page's hello, snapshot and health")
        self.sim = sim
        self.info = info
        self._health = health
        self._host = host
        self._port = port
        self.port: int | None = None
        self.health_line = ""
        self.token = token or secrets.token_urlsafe(32)
        self._feed_max = feed_queue_max
        self._guard: Guard | None = None
        self._pages: dict[web.WebSocketResponse, _Page] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._view = ChatView(sim)

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """The address to open: the page, with the token that lets it in."""
        return f"{self.base_url}/?token={self.token}"

    @property
    def pages(self) -> int:
        """Open page feeds."""
        return len(self._pages)

    @property
    def feed_backlog(self) -> int:
        """Feed messages waiting to be written, over all pages."""
        return sum(page.queue.qsize() for page in self._pages.values())

    async def start(self) -> None:
        app = web.Application(
            client_max_size=MAX_UPLOAD + 1024 * 1024,
            middlewares=[guard_middleware(lambda: self._guard)],
        )
        app.add_routes(
            [
                web.get("/", self._index),
                web.static("/static", STATIC),
                web.get("/api/feed", self._feed),
                web.get("/api/state", self._state),
                web.get("/api/healthz", self._healthz),
                web.post("/api/send", self._send),
                web.post("/api/action", self._action),
                web.post("/api/upload", self._upload),
                web.get("/api/resource/{key}", self._resource),
            ]
        )
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._guard = Guard(token=self.token, port=self.port, host=self._host)
        self._tasks = [
            asyncio.create_task(self._watch_records(), name="playground-records"),
            asyncio.create_task(self._watch_health(), name="playground-health"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pages = list(self._pages.values())
        self._pages.clear()
        await asyncio.gather(*(_close(page, WSCloseCode.GOING_AWAY) for page in pages))
        await asyncio.gather(*self._closing, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def set_health_line(self, line: str) -> None:
        """Called from the log sink with the bot's latest health line."""
        self.health_line = line

    def notice(self, text: str, level: str = "info") -> None:
        """A banner line on every open page (e.g. "the bot stopped")."""
        self.info = {**self.info, "notice": {"text": text, "level": level}}
        self._broadcast({"type": "hello", "info": self._hello()})

    # -- feed -------------------------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        return {
            **self.info,
            "bot_name": self.sim.options.bot_name,
            "user": PLAYGROUND_USER,
            "chats": {key: {"title": c.title, "type": c.chat_type} for key, c in CHATS.items()},
            "features": features.capabilities(self.sim),
        }

    def _broadcast(self, message: dict[str, Any]) -> None:
        # One queue per page keeps the order of feed messages (a card's versions).
        data = json.dumps(message, default=str, ensure_ascii=False)
        for page in list(self._pages.values()):
            try:
                page.queue.put_nowait(data)
            except asyncio.QueueFull:
                self._drop(page)

    def _drop(self, page: _Page) -> None:
        """Forget a page that fell too far behind; its script reconnects to a snapshot."""
        logger.info("playground: a page fell {} feed messages behind: dropped", self._feed_max)
        self._pages.pop(page.ws, None)
        # Free the backlog now, not once the close is done.
        while not page.queue.empty():
            page.queue.get_nowait()
        if page.writer is not None:
            page.writer.cancel()
        task = asyncio.create_task(_close(page, WSCloseCode.TRY_AGAIN_LATER), name="page-drop")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _watch_records(self) -> None:
        seen = -1
        while True:
            if self.sim.revision == seen:
                with contextlib.suppress(TimeoutError):
                    await self.sim.wait_for(
                        lambda seen=seen: self.sim.revision != seen, timeout=3600
                    )
                continue
            seen = self.sim.revision
            changed = self._view.changed()
            if changed:
                self._broadcast({"type": "items", "items": changed})
            await asyncio.sleep(BATCH_S)

    async def _health_message(self) -> dict[str, Any]:
        try:
            status: Any = await self._health()
        except Exception as exc:  # the bot may be stopping: show it, do not die
            status = {"error": repr(exc)}
        return {"type": "health", "line": self.health_line, "healthz": status}

    async def _watch_health(self) -> None:
        last = ""
        while True:
            message = await self._health_message()
            encoded = json.dumps(message, sort_keys=True, default=str)
            if encoded != last and self._pages:
                last = encoded
                self._broadcast(message)
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        health = json.dumps(await self._health_message(), default=str)
        # The snapshot and the registration happen without an await in between: every later
        # change reaches this page after its snapshot, none is lost.
        page = _Page(ws, asyncio.Queue(maxsize=self._feed_max), request.transport)
        page.queue.put_nowait(json.dumps({"type": "hello", "info": self._hello()}, default=str))
        snapshot = {"type": "snapshot", "items": self._view.items()}
        page.queue.put_nowait(json.dumps(snapshot, default=str, ensure_ascii=False))
        page.queue.put_nowait(health)
        self._pages[ws] = page
        page.writer = asyncio.create_task(_write(ws, page.queue), name="playground-page")
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._pages.pop(ws, None)
            page.writer.cancel()
            await asyncio.gather(page.writer, return_exceptions=True)
        return ws

    # -- pages and API ----------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        # No framing by other pages: a framed page could be clicked through (an approval).
        headers = {
            "Cache-Control": "no-cache",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "frame-ancestors 'none'",
        }
        return web.FileResponse(STATIC / "index.html", headers=headers)

    async def _state(self, request: web.Request) -> web.Response:
        body = {
            "info": self._hello(),
            "items": self._view.items(),
            **{k: v for k, v in (await self._health_message()).items() if k != "type"},
        }
        return web.json_response(body, dumps=lambda o: json.dumps(o, default=str))

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response((await self._health_message())["healthz"])

    async def _send(self, request: web.Request) -> web.Response:
        body = await _json(request)
        chat = CHATS.get(str(body.get("chat", "p2p")))
        text = body.get("text")
        if chat is None or not isinstance(text, str) or not text.strip():
            return web.json_response({"error": "chat and text are required"}, status=400)
        mention = bool(body.get("mention")) and chat.chat_type == "group"
        message_id = await self.sim.push_message(
            chat_id=chat.chat_id,
            chat_type=chat.chat_type,
            sender_open_id=PLAYGROUND_USER,
            text=text,
            mention_bot=mention,
        )
        return web.json_response({"message_id": message_id})

    async def _action(self, request: web.Request) -> web.Response:
        body = await _json(request)
        message_id = body.get("message_id")
        target = self.sim.records.find_message(str(message_id)) if message_id else None
        if target is None:
            return web.json_response({"error": "unknown message"}, status=404)
        try:
            answer = await features.push_card_action(
                self.sim,
                message_id=target.message_id,
                chat_id=target.chat_id,
                operator_open_id=PLAYGROUND_USER,
                value=body.get("value"),
                tag=str(body.get("tag") or "button"),
                name=body.get("name"),
                form_value=body.get("form_value"),
            )
        except TimeoutError:
            answer = {"error": "the bot did not answer the callback in time"}
        return web.json_response({"answer": answer})

    async def _upload(self, request: web.Request) -> web.Response:
        if not features.capabilities(self.sim)["upload"]:
            return web.json_response(
                {"error": "the simulator cannot hold images or files yet"}, status=501
            )
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return web.json_response({"error": "file is required"}, status=400)
        chat = CHATS.get(str(form.get("chat") or "p2p"), CHATS["p2p"])
        data = upload.file.read()
        mime = upload.content_type or mimetypes.guess_type(upload.filename)[0] or ""
        kind = "image" if mime in IMAGE_TYPES else "file"
        mention = str(form.get("mention") or "") in ("1", "true") and chat.chat_type == "group"
        message_id = await features.push_attachment(
            self.sim,
            kind=kind,
            name=upload.filename,
            data=data,
            chat_id=chat.chat_id,
            chat_type=chat.chat_type,
            sender_open_id=PLAYGROUND_USER,
            mention_bot=mention,
        )
        return web.json_response({"message_id": message_id, "kind": kind})

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        found = features.resource(self.sim, request.match_info["key"])
        if found is None:
            raise web.HTTPNotFound()
        data, mime, name = found
        disposition = f'inline; filename="{name.replace(chr(34), "")}"'
        return web.Response(
            body=data, content_type=mime, headers={"Content-Disposition": disposition}
        )


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _close(page: _Page, code: WSCloseCode) -> None:
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await page.ws.close(code=code, message=b"feed closed: reconnect for a snapshot")
    except TimeoutError:
        # The page's socket is full and does not take even the close frame: cut it.
        if page.transport is not None:
            page.transport.abort()
    except Exception as exc:  # a page that went away meanwhile: nothing left to close
        logger.debug("playground: closing a page feed: {!r}", exc)


async def _write(ws: web.WebSocketResponse, queue: asyncio.Queue[str]) -> None:
    while True:
        data = await queue.get()
        try:
            await ws.send_str(data)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("playground: a page went away ({})", exc)
            return
