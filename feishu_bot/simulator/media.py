"""Resources and uploads of the simulated platform: what users attach, what the bot sends back.

- `GET /open-apis/im/v1/messages/{message_id}/resources/{file_key}?type=image|file` serves the
  bytes registered for that message (`add_resource`, or the `push_*` helpers), with the knobs
  tests need: an error status/code, no Content-Length (chunked: the size is unknown until the
  end), a delay between chunks, a stall after N bytes.
- `POST /open-apis/im/v1/images` (multipart: image_type, image) and `POST /open-apis/im/v1/files`
  (multipart: file_type, file_name, file, optional duration) store an `Upload` and answer its key.
  Limits as documented: images ≤ 10 MB and a real image, files ≤ 30 MB and not empty.
- The bot's `image` / `file` messages must name a key that was uploaded (checked by `RestApi`
  through `check_message_key`).

Error codes where Feishu's docs are vague are the simulator's choice, noted at each constant.
The bytes in `sample_png` etc. are generated here so tests and the playground need no files.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .envelopes import new_id
from .options import SimOptions
from .records import Records, SentMessage

__all__ = [
    "FILE_LIMIT",
    "IMAGE_LIMIT",
    "Resource",
    "SimMedia",
    "Upload",
    "sample_gif",
    "sample_jpeg",
    "sample_png",
    "sample_webp",
]

IMAGE_LIMIT = 10 * 1024 * 1024
FILE_LIMIT = 30 * 1024 * 1024
# Codes: 234003 "File not in msg." (resource of another message / unknown key), 234001 invalid
# parameter, 234006 size over the limit, 234010 empty file, 234011 not an image: the 234xxx
# family the resource and upload docs use; the exact numbers are the simulator's choice.
NOT_IN_MESSAGE = 234003
INVALID_PARAM = 234001
TOO_LARGE = 234006
EMPTY_FILE = 234010
NOT_IMAGE = 234011

Push = Callable[..., Awaitable[str]]


@dataclass(slots=True)
class Resource:
    """Bytes served for (message_id, key). `kind` is the `type` query it must be fetched with."""

    message_id: str
    key: str
    data: bytes
    kind: str = "file"  # "image" or "file"
    content_type: str = "application/octet-stream"
    status: int = 200
    code: int = 0
    declare_length: bool = True
    chunk_size: int = 64 * 1024
    chunk_delay: float = 0.0
    stall_after: int | None = None
    fetches: int = 0


@dataclass(slots=True)
class Upload:
    """One successful upload by the bot."""

    kind: str  # "image" or "file"
    key: str
    data: bytes
    file_name: str = ""
    file_type: str = ""
    image_type: str = ""
    content_type: str = ""
    created_at: float = field(default_factory=time.time)


class SimMedia:
    """Routes plus state for resources and uploads; reach it as `FeishuSimulator.media`."""

    def __init__(self, opts: SimOptions, records: Records, push_message: Push) -> None:
        self.opts = opts
        self.records = records
        self._push_message = push_message
        self.resources: dict[tuple[str, str], Resource] = {}
        self.uploads: list[Upload] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(
                "/open-apis/im/v1/messages/{message_id}/resources/{file_key}", self.get_resource
            ),
            web.post("/open-apis/im/v1/images", self.upload_image),
            web.post("/open-apis/im/v1/files", self.upload_file),
        ]

    # -- scripting ---------------------------------------------------------------------------

    def add_resource(self, message_id: str, key: str, data: bytes, **knobs: Any) -> Resource:
        """Serve `data` for (message_id, key); `knobs` are `Resource` fields."""
        resource = Resource(message_id=message_id, key=key, data=data, **knobs)
        self.resources[(message_id, key)] = resource
        return resource

    async def push_image(
        self, data: bytes, *, resource: dict[str, Any] | None = None, **push: Any
    ) -> str:
        """A user sends an `image` message; returns its message_id. `push` goes to
        `push_message` (chat_id, chat_type, root_id, …); `resource` holds `Resource` knobs."""
        key = new_id("img_v3_", 12)
        message_id = push.pop("message_id", None) or new_id("om_")
        self.add_resource(message_id, key, data, kind="image", **(resource or {}))
        return await self._push_message(
            msg_type="image", content={"image_key": key}, message_id=message_id, **push
        )

    async def push_file(
        self,
        data: bytes,
        name: str,
        *,
        msg_type: str = "file",
        resource: dict[str, Any] | None = None,
        **push: Any,
    ) -> str:
        """A user sends a `file` (or `audio`, `media`) message carrying `data` as `name`."""
        key = new_id("file_v3_", 12)
        message_id = push.pop("message_id", None) or new_id("om_")
        content: dict[str, Any] = {"file_key": key}
        if msg_type in ("file", "media"):
            content["file_name"] = name
        if msg_type in ("audio", "media"):
            content["duration"] = 1000
        if msg_type == "media":
            content["image_key"] = new_id("img_v3_", 12)
        self.add_resource(message_id, key, data, kind="file", **(resource or {}))
        return await self._push_message(
            msg_type=msg_type, content=content, message_id=message_id, **push
        )

    async def push_sticker(self, **push: Any) -> str:
        """A sticker: its file_key cannot be downloaded (no resource is registered)."""
        return await self._push_message(
            msg_type="sticker", content={"file_key": new_id("file_v3_", 12)}, **push
        )

    async def push_post(
        self, parts: list[str | bytes], *, title: str = "", mention_bot: bool = False, **push: Any
    ) -> str:
        """A rich-text post: each `str` is a text paragraph, each `bytes` an image paragraph,
        in the given order (as Feishu's client sends pasted screenshots)."""
        message_id = push.pop("message_id", None) or new_id("om_")
        paragraphs: list[list[dict[str, Any]]] = []
        if mention_bot:
            paragraphs.append(
                [{"tag": "at", "user_id": "@_user_1", "user_name": self.opts.bot_name}]
            )
        for part in parts:
            if isinstance(part, bytes):
                key = new_id("img_v3_", 12)
                self.add_resource(message_id, key, part, kind="image")
                paragraphs.append([{"tag": "img", "image_key": key, "width": 16, "height": 16}])
            else:
                paragraphs.append([{"tag": "text", "text": part, "style": []}])
        return await self._push_message(
            msg_type="post",
            content={"title": title, "content": paragraphs},
            message_id=message_id,
            mention_bot=mention_bot,
            **push,
        )

    # -- what the bot sent -------------------------------------------------------------------

    def upload(self, key: str) -> Upload | None:
        return next((u for u in self.uploads if u.key == key), None)

    def sent_media(self, msg_type: str | None = None) -> list[tuple[SentMessage, Upload]]:
        """The bot's image/file messages with what they carry, oldest first."""
        out = []
        for msg in self.records.messages:
            if msg.msg_type not in ("image", "file") or (msg_type and msg.msg_type != msg_type):
                continue
            key = msg.content.get("image_key" if msg.msg_type == "image" else "file_key")
            upload = self.upload(key) if isinstance(key, str) else None
            if upload is not None:
                out.append((msg, upload))
        return out

    def check_message_key(self, msg_type: str, content: dict[str, Any]) -> tuple[int, str] | None:
        """For RestApi: an image/file message must carry a key this app uploaded."""
        if msg_type not in ("image", "file"):
            return None
        key = content.get("image_key" if msg_type == "image" else "file_key")
        upload = self.upload(key) if isinstance(key, str) else None
        if upload is None or upload.kind != msg_type:
            return (230001, f"invalid {msg_type} key")
        return None

    # -- handlers ----------------------------------------------------------------------------

    async def get_resource(self, request: web.Request) -> web.StreamResponse:
        message_id = request.match_info["message_id"]
        key = request.match_info["file_key"]
        kind = request.query.get("type", "")
        resource = self.resources.get((message_id, key))
        if kind not in ("image", "file"):
            return _error(400, INVALID_PARAM, "Invalid request param: type")
        if resource is None:
            return _error(400, NOT_IN_MESSAGE, "File not in msg.")
        resource.fetches += 1
        await self.records.changed()
        if resource.status != 200:
            return _error(resource.status, resource.code or resource.status, "resource error")
        if resource.kind != kind:
            return _error(
                400, INVALID_PARAM, f"Invalid request param: type must be {resource.kind}"
            )
        resp = web.StreamResponse(status=200, headers={"Content-Type": resource.content_type})
        if resource.declare_length:
            resp.content_length = len(resource.data)
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        data = resource.data
        while sent < len(data):
            if resource.stall_after is not None and sent >= resource.stall_after:
                await asyncio.sleep(3600)  # released when the simulator stops
            end = min(len(data), sent + resource.chunk_size)
            if resource.stall_after is not None and sent < resource.stall_after:
                end = min(end, resource.stall_after)
            if resource.chunk_delay:
                await asyncio.sleep(resource.chunk_delay)
            await resp.write(data[sent:end])
            sent = end
        await resp.write_eof()
        return resp

    async def upload_image(self, request: web.Request) -> web.Response:
        fields = _multipart(request.headers.get("Content-Type", ""), await request.read())
        if fields is None or "image" not in fields:
            return _error(400, INVALID_PARAM, "Invalid request param: image")
        image_type = fields.get("image_type", (None, b"", ""))[1].decode(errors="replace")
        if image_type not in ("message", "avatar"):
            return _error(400, INVALID_PARAM, "Invalid request param: image_type")
        filename, data, ctype = fields["image"]
        if len(data) > IMAGE_LIMIT:
            return _error(400, TOO_LARGE, "The file size exceeds the limit.")
        if not data:
            return _error(400, EMPTY_FILE, "File's size can't be 0.")
        if _image_type(data) is None:
            return _error(400, NOT_IMAGE, "Can't recognize the image format.")
        upload = Upload(
            "image",
            new_id("img_v3_", 12),
            data,
            file_name=filename or "",
            image_type=image_type,
            content_type=ctype,
        )
        self.uploads.append(upload)
        await self.records.changed()
        return _ok({"image_key": upload.key})

    async def upload_file(self, request: web.Request) -> web.Response:
        fields = _multipart(request.headers.get("Content-Type", ""), await request.read())
        if fields is None or "file" not in fields:
            return _error(400, INVALID_PARAM, "Invalid request param: file")
        file_type = fields.get("file_type", (None, b"", ""))[1].decode(errors="replace")
        file_name = fields.get("file_name", (None, b"", ""))[1].decode(errors="replace")
        if file_type not in ("opus", "mp4", "pdf", "doc", "xls", "ppt", "stream"):
            return _error(400, INVALID_PARAM, "Invalid request param: file_type")
        if not file_name:
            return _error(400, INVALID_PARAM, "Invalid request param: file_name")
        _, data, ctype = fields["file"]
        if len(data) > FILE_LIMIT:
            return _error(400, TOO_LARGE, "The file size exceeds the limit.")
        if not data:
            return _error(400, EMPTY_FILE, "File's size can't be 0.")
        upload = Upload(
            "file",
            new_id("file_v3_", 12),
            data,
            file_name=file_name,
            file_type=file_type,
            content_type=ctype,
        )
        self.uploads.append(upload)
        await self.records.changed()
        return _ok({"file_key": upload.key})


# -- helpers ---------------------------------------------------------------------------------


def _ok(data: dict[str, Any]) -> web.Response:
    return web.json_response({"code": 0, "msg": "success", "data": data})


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response(
        {"code": code, "msg": msg, "error": {"log_id": new_id(nbytes=12).upper()}}, status=status
    )


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes, str]] | None:
    """name -> (filename, bytes, content type) of a multipart/form-data body, byte-exact.

    The simulator's middleware has already read the body (to record it), so aiohttp's
    streaming reader cannot be used; this splitter is enough for what clients send.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or match is None:
        return None
    delimiter = b"--" + match.group(1).encode()
    fields: dict[str, tuple[str | None, bytes, str]] = {}
    for part in raw.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, body = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if body.endswith(b"\r\n"):
            body = body[:-2]
        headers = head.decode("utf-8", errors="replace")
        name = re.search(r'\bname="([^"]*)"', headers)
        if name is None:
            continue
        filename = re.search(r'\bfilename="([^"]*)"', headers)
        ctype = re.search(r"(?im)^content-type:\s*(\S+)", headers)
        fields[name.group(1)] = (
            filename.group(1) if filename else None,
            body,
            ctype.group(1) if ctype else "",
        )
    return fields


def _image_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# -- sample images (valid, tiny, generated without an imaging library) ----------------------


def sample_png(width: int = 16, height: int = 16, seed: int = 1) -> bytes:
    """An RGB PNG whose pixels depend on `seed`, so two samples differ byte for byte."""
    row = width * 3
    raw = b"".join(
        b"\x00" + bytes((x * 7 + y * 13 + seed * 31) % 256 for x in range(row))
        for y in range(height)
    )

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def sample_gif() -> bytes:
    """A 1×1 GIF89a."""
    return bytes.fromhex(
        "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
    )


def sample_webp() -> bytes:
    """A 1×1 lossless WebP."""
    return bytes.fromhex("524946461a000000574542505650384c0d0000002f0000001007101111888888fe0700")


def sample_jpeg() -> bytes:
    """An 8×8 grey baseline JPEG (one block, DC only, one-symbol Huffman tables)."""
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes([1] * 64)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 8, 8, 1) + b"\x01\x11\x00"
    dht_dc = b"\xff\xc4" + struct.pack(">H", 20) + b"\x00" + bytes([1] + [0] * 15) + b"\x00"
    dht_ac = b"\xff\xc4" + struct.pack(">H", 20) + b"\x10" + bytes([1] + [0] * 15) + b"\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x3f\x00"
    return b"\xff\xd8" + dqt + sof + dht_dc + dht_ac + sos + b"\x3f" + b"\xff\xd9"
