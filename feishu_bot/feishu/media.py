"""Resources in and out of Feishu: message downloads, image/file uploads, sending them back.

Ownership and invariants:
- Rides on the replier's HTTP session and tenant token (`FeishuReplier.http_session`,
  `tenant_token`, `upload`), so there is one connection pool and one token per app. Uploads go
  through the replier's own retry and error classification; downloads stream, so they have
  their own small retry loop here (the replier reads whole bodies and parses them as JSON).
- A download never holds more than one resource in memory, and never more than the limit:
  a declared Content-Length over the limit is refused before the body is read; a body without
  one is aborted as soon as it passes the limit. Files stream to disk; a failed or aborted
  download leaves no partial file behind.
- Every failure the user must hear about is an `AttachmentError` whose message is the sentence
  to show (see errors.py). HTTP 4xx is final; 5xx, 429, rejected tokens, connection errors and
  stalls are retried `max_attempts` times in all.
- Outgoing files are checked before anything is uploaded: inside the working directory after
  resolving symlinks, a regular file, within Feishu's size limit (`OutboundFileError`).

It does not decide what a resource means for a turn (turn_input.py does) and does
not word anything except the sentences of its own errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from loguru import logger

from feishu_bot.errors import AttachmentError, FeishuApiError
from feishu_bot.feishu.media_checks import (
    OpenedFile,
    OutboundFileError,
    check_image,
    file_type_for,
    open_inside,
    resolve_inside,
    sanitize_name,
    sniff_image,
)
from feishu_bot.feishu.render import literal_mentions, text_content
from feishu_bot.feishu.replier import RATE_LIMIT_CODES, TOKEN_INVALID_CODES

if TYPE_CHECKING:
    from feishu_bot.feishu.replier import FeishuReplier

__all__ = [
    "FILE_UPLOAD_LIMIT",
    "IMAGE_UPLOAD_LIMIT",
    "MediaClient",
    "OutboundFileError",
    "SentFile",
    "check_image",
    "file_type_for",
    "resolve_inside",
    "sanitize_name",
    "sniff_image",
]

IMAGE_UPLOAD_LIMIT = 10 * 1024 * 1024  # POST /im/v1/images
FILE_UPLOAD_LIMIT = 30 * 1024 * 1024  # POST /im/v1/files
CHUNK = 64 * 1024
_ERROR_BODY_LIMIT = 64 * 1024

Sleep = Callable[[float], Awaitable[None]]


def _uuid(seed: str, part: str) -> str:
    return hashlib.sha256(f"{seed}:{part}".encode()).hexdigest()[:32]


# -- the client ------------------------------------------------------------------------------


class _Transient(Exception):
    """One download attempt failed in a way worth repeating."""

    def __init__(self, detail: str, *, timeout: bool = False, retry_after: float = 0.0):
        super().__init__(detail)
        self.timeout = timeout
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class SentFile:
    """What `send_file` posted: the upload key and the ids of the messages created."""

    kind: str  # "image" or "file"
    key: str
    message_ids: tuple[str, ...]
    size: int


class MediaClient:
    """Downloads and uploads for one app. Cheap to build; holds no state besides settings."""

    def __init__(
        self,
        replier: FeishuReplier,
        *,
        max_download_bytes: int,
        max_attempts: int = 3,
        backoff: float = 0.5,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        total_timeout: float = 600.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._replier = replier
        self.max_download_bytes = max_download_bytes
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._total_timeout = total_timeout
        self._sleep = sleep

    # -- downloads ---------------------------------------------------------------------------

    async def download_bytes(self, message_id: str, key: str, *, kind: str, label: str) -> bytes:
        """The resource in memory (images: they become base64 content blocks anyway)."""
        buf = bytearray()

        def reset() -> None:
            buf.clear()

        await self._download(message_id, key, kind, label, buf.extend, reset)
        return bytes(buf)

    async def download_to_file(
        self, message_id: str, key: str, *, kind: str, label: str, dest: Path
    ) -> int:
        """Stream the resource into `dest` (parents created); returns its size in bytes.

        A file that cannot be saved (disk full, a name the file system refuses) raises an
        AttachmentError that names the file and the cause."""
        part = dest.with_name(dest.name + ".part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fh = part.open("wb")
        except OSError as exc:
            raise _save_error(label, exc) from exc
        try:

            def reset() -> None:
                fh.seek(0)
                fh.truncate()

            size = await self._download(message_id, key, kind, label, fh.write, reset)
            fh.close()
            os.replace(part, dest)
            return size
        except OSError as exc:
            raise _save_error(label, exc) from exc
        finally:
            fh.close()
            part.unlink(missing_ok=True)

    async def _download(
        self,
        message_id: str,
        key: str,
        kind: str,
        label: str,
        write: Callable[[bytes], Any],
        reset: Callable[[], None],
    ) -> int:
        """GET .../messages/{id}/resources/{key}?type=image|file with retries."""
        if kind not in ("image", "file"):
            raise ValueError(f"resource type must be image or file, not {kind!r}")
        last: _Transient | None = None
        for attempt in range(1, self._max_attempts + 1):
            if attempt > 1:
                assert last is not None
                reset()
                await self._sleep(max(last.retry_after, self._backoff * 2 ** (attempt - 2)))
            try:
                async with asyncio.timeout(self._total_timeout):
                    return await self._attempt(message_id, key, kind, label, write)
            except _Transient as exc:
                last = exc
            except TimeoutError:
                last = _Transient("no complete answer in time", timeout=True)
            logger.warning(
                "download of {} failed (attempt {}/{}): {}", key, attempt, self._max_attempts, last
            )
        assert last is not None
        if last.timeout:
            raise AttachmentError(
                f"Downloading {label} from Feishu timed out, so nothing was run. Please try again.",
                reason="timeout",
            )
        raise AttachmentError(
            f"Could not download {label} from Feishu after {self._max_attempts} attempts "
            f"({last}), so nothing was run. Please try again later.",
            reason="download_failed",
        )

    async def _attempt(
        self, message_id: str, key: str, kind: str, label: str, write: Callable[[bytes], Any]
    ) -> int:
        replier = self._replier
        token = await replier.tenant_token()
        url = f"{replier.base_url}/open-apis/im/v1/messages/{message_id}/resources/{key}"
        limit = self.max_download_bytes
        try:
            async with replier.http_session().get(
                url,
                params={"type": kind},
                # identity: the declared length is then the size of the file itself
                headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"},
                timeout=self._timeout,
            ) as resp:
                if resp.status != 200:
                    raw = await resp.content.read(_ERROR_BODY_LIMIT)
                    self._raise_for(resp, raw, token, label)
                declared = None if resp.headers.get("Content-Encoding") else resp.content_length
                if declared is not None and declared > limit:
                    raise _too_large(label, limit, size=declared)
                total = 0
                async for chunk in resp.content.iter_chunked(CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise _too_large(label, limit)
                    write(chunk)
                if declared is not None and total != declared:
                    raise _Transient(f"body ended after {total} of {declared} bytes")
                return total
        except aiohttp.ServerTimeoutError as exc:  # a stalled read: no byte for read_timeout
            raise _Transient("timeout", timeout=True) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise _Transient(type(exc).__name__) from exc

    def _raise_for(self, resp: aiohttp.ClientResponse, raw: bytes, token: str, label: str) -> None:
        code: int | None = None
        try:
            body = json.loads(raw.decode("utf-8"))
            if isinstance(body, dict) and isinstance(body.get("code"), int):
                code = body["code"]
        except ValueError:
            pass
        status = resp.status
        what = f"HTTP {status}" + (f", code {code}" if code is not None else "")
        if code in TOKEN_INVALID_CODES:
            self._replier.drop_token(token)
            raise _Transient(what)
        if status == 429 or code in RATE_LIMIT_CODES:
            reset = resp.headers.get("x-ogw-ratelimit-reset", "")
            wait = float(reset) if reset.strip().isdigit() else 1.0
            raise _Transient(what, retry_after=min(wait, 30.0))
        if status >= 500:
            raise _Transient(what)
        raise AttachmentError(
            f"Feishu would not give me {label} ({what}); it may have been recalled or expired, "
            "so nothing was run. Please send it again.",
            reason="not_found",
        )

    # -- uploads -----------------------------------------------------------------------------

    async def upload_image(self, source: Path | OpenedFile) -> str:
        """POST /open-apis/im/v1/images (image_type=message); returns the image_key."""
        opened, owned = await _opened(source)
        try:
            media_type = sniff_image(opened.head) or "application/octet-stream"
            name = opened.path.name

            def form() -> aiohttp.FormData:
                data = aiohttp.FormData()
                data.add_field("image_type", "message")
                data.add_field("image", opened.reader(), filename=name, content_type=media_type)
                return data

            body = await self._replier.upload("/open-apis/im/v1/images", form, op="upload_image")
        finally:
            if owned:
                opened.close()
        return _data_key(body, "image_key")

    async def upload_file(self, source: Path | OpenedFile, *, name: str) -> str:
        """POST /open-apis/im/v1/files (file_type, file_name); returns the file_key."""
        opened, owned = await _opened(source)
        try:

            def form() -> aiohttp.FormData:
                data = aiohttp.FormData()
                data.add_field("file_type", file_type_for(name))
                data.add_field("file_name", name)
                data.add_field(
                    "file", opened.reader(), filename=name,
                    content_type="application/octet-stream",
                )
                return data

            body = await self._replier.upload("/open-apis/im/v1/files", form, op="upload_file")
        finally:
            if owned:
                opened.close()
        return _data_key(body, "file_key")

    async def send_file(
        self,
        workdir: Path,
        rel_path: str,
        *,
        reply_to: str,
        in_thread: bool,
        caption: str | None = None,
        idempotency_seed: str = "",
    ) -> SentFile:
        """Check, upload and post one file of the working directory as a reply to `reply_to`.

        Images Feishu can show (png/jpeg/gif/webp, ≤ 10 MB) go as an `image` message,
        everything else (≤ 30 MB) as a `file` message; then the caption as text. With an
        `idempotency_seed` (the tool_use id) a repeated call does not post twice.
        The file is opened once, off the event loop, and checked and uploaded through that
        descriptor. Raises OutboundFileError for anything the caller (Claude) can fix.
        """
        opened = await asyncio.to_thread(open_inside, workdir, rel_path)
        try:
            return await self._send_opened(
                opened, rel_path, reply_to=reply_to, in_thread=in_thread, caption=caption,
                idempotency_seed=idempotency_seed,
            )
        finally:
            opened.close()

    async def _send_opened(
        self,
        opened: OpenedFile,
        rel_path: str,
        *,
        reply_to: str,
        in_thread: bool,
        caption: str | None,
        idempotency_seed: str,
    ) -> SentFile:
        size = opened.size
        if size == 0:
            raise OutboundFileError(
                f"{rel_path}: the file is empty; Feishu does not take empty files."
            )
        is_image = sniff_image(opened.head) is not None and size <= IMAGE_UPLOAD_LIMIT
        if not is_image and size > FILE_UPLOAD_LIMIT:
            raise OutboundFileError(
                f"{rel_path}: {size / 1048576:.1f} MB is over Feishu's 30 MB limit for files."
            )
        seed = idempotency_seed or f"{opened.path}:{size}:{os.fstat(opened.fd).st_mtime_ns}"
        ids: list[str] = []
        try:
            if is_image:
                key = await self.upload_image(opened)
                content: dict[str, Any] = {"image_key": key}
                msg_type = "image"
            else:
                name = sanitize_name(opened.path.name, fallback="file")
                key = await self.upload_file(opened, name=name)
                content = {"file_key": key}
                msg_type = "file"
            ids.append(
                await self._replier.reply(
                    reply_to, msg_type, content, in_thread=in_thread, uuid=_uuid(seed, "file")
                )
            )
            if caption and caption.strip():
                ids.append(
                    await self._replier.reply(
                        reply_to,
                        "text",
                        text_content(literal_mentions(caption.strip())),
                        in_thread=in_thread,
                        uuid=_uuid(seed, "caption"),
                    )
                )
        except FeishuApiError as exc:
            raise OutboundFileError(
                f"{rel_path}: Feishu refused the upload or the message ({exc})."
            ) from exc
        logger.info("sent {} {} ({} bytes) as {}", msg_type, opened.path.name, size, key)
        return SentFile(msg_type, key, tuple(ids), size)


def _too_large(label: str, limit: int, *, size: int | None = None) -> AttachmentError:
    limit_mb = f"{limit / 1048576:g} MB"
    if size is not None:
        sentence = (
            f"{label[:1].upper()}{label[1:]} is {size / 1048576:.1f} MB, over the {limit_mb} "
            "limit, so it was not downloaded and nothing was run."
        )
    else:
        sentence = (
            f"{label[:1].upper()}{label[1:]} is larger than the {limit_mb} limit, so the "
            "download was stopped and nothing was run."
        )
    return AttachmentError(sentence, reason="too_large")


def _data_key(body: dict[str, Any], key: str) -> str:
    data = body.get("data")
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise FeishuApiError(f"upload: response has no data.{key}", status=200)
    return value


async def _opened(source: Path | OpenedFile) -> tuple[OpenedFile, bool]:
    """An open file for an upload, and whether the caller must close it (it opened it)."""
    if isinstance(source, OpenedFile):
        return source, False
    return await asyncio.to_thread(open_inside, source.parent, source.name), True


def _save_error(label: str, exc: OSError) -> AttachmentError:
    cause = exc.strerror or type(exc).__name__
    return AttachmentError(
        f"I could not save {label} on the server ({cause}), so nothing was run.",
        reason="save_failed",
    )
