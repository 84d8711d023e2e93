"""Pure checks for resources in and out of Feishu: image sniffing and validation, file names,
paths inside a working directory, upload file types. No I/O except `resolve_inside`'s stat
and `open_inside`, which opens the file it checks (run it off the event loop).
"""

from __future__ import annotations

import os
import re
import stat
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from feishu_bot.errors import AttachmentError

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_NAME_CHARS",
    "OpenedFile",
    "OutboundFileError",
    "check_image",
    "file_type_for",
    "open_inside",
    "resolve_inside",
    "sanitize_name",
    "sniff_image",
]

MAX_NAME_CHARS = 120
# Linux file systems allow 255 bytes per name; a Chinese character takes 3 of them, so 120
# characters can be 360 bytes. 200 leaves room for a suffix added later.
MAX_NAME_BYTES = 200


def sniff_image(data: bytes) -> str | None:
    """The media type of png / jpeg / gif / webp data by its magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _png_ok(data: bytes) -> bool:
    # Walk the chunks: a truncated file ends inside one or lacks IEND.
    pos, seen_ihdr = 8, False
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        if ctype == b"IHDR":
            width, height = struct.unpack(">II", data[pos + 8 : pos + 16])
            seen_ihdr = width > 0 and height > 0
        pos += 12 + length
        if ctype == b"IEND":
            return seen_ihdr and pos <= len(data)
    return False


def _jpeg_ok(data: bytes) -> bool:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                return False
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            # The entropy-coded data follows; a complete file ends with EOI.
            return width > 0 and height > 0 and b"\xff\xd9" in data[-1024:]
        pos += 2 + length
    return False


def _gif_ok(data: bytes) -> bool:
    if len(data) < 14:
        return False
    width, height = struct.unpack("<HH", data[6:10])
    return width > 0 and height > 0 and data.rstrip(b"\x00").endswith(b";")


def _webp_ok(data: bytes) -> bool:
    (riff_size,) = struct.unpack("<I", data[4:8])
    return riff_size + 8 <= len(data) + 1 and data[12:16] in (b"VP8 ", b"VP8L", b"VP8X")


_CHECKS = {
    "image/png": _png_ok,
    "image/jpeg": _jpeg_ok,
    "image/gif": _gif_ok,
    "image/webp": _webp_ok,
}


def check_image(data: bytes, *, label: str = "The image") -> str:
    """The media type of a complete png/jpeg/gif/webp image; AttachmentError otherwise.

    Measured on CLI 2.1.329: a truncated image is passed to the API untouched (which then
    rejects the whole request, and the image would stay in the session), so structure is
    checked here, not only the magic bytes.
    """
    media_type = sniff_image(data)
    if media_type is None:
        raise AttachmentError(
            f"{label} is not a PNG, JPEG, GIF or WebP image, so Claude cannot look at it.",
            reason="not_image",
            kind="image",
        )
    try:
        ok = _CHECKS[media_type](data)
    except struct.error:
        ok = False
    if not ok:
        kind = media_type.split("/")[1].upper()
        raise AttachmentError(
            f"{label} looks like a {kind} but is damaged or incomplete, so Claude cannot "
            "look at it. Please send it again.",
            reason="not_image",
            kind="image",
        )
    return media_type


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def sanitize_name(name: str, *, fallback: str) -> str:
    """A file name that is safe as one path component: no separators, no control characters,
    no leading dots (so never "." or ".."), at most MAX_NAME_CHARS characters and
    MAX_NAME_BYTES bytes of UTF-8 (the extension is kept, characters are never cut in half).
    `fallback` is used when nothing usable is left."""
    name = unicodedata.normalize("NFC", name or "")
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if not name:
        name = fallback
    if len(name) > MAX_NAME_CHARS or len(name.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            tail = "." + ext
            name = _cut(stem, MAX_NAME_CHARS - len(tail), MAX_NAME_BYTES - len(tail.encode()))
            name += tail
        else:
            name = _cut(name, MAX_NAME_CHARS, MAX_NAME_BYTES)
    return name


def _cut(text: str, chars: int, max_bytes: int) -> str:
    text = text[:chars]
    while len(text.encode()) > max_bytes:
        text = text[:-1]
    return text


class OutboundFileError(ValueError):
    """A file Claude asked to send cannot be sent; the message is the tool's error text."""


def resolve_inside(workdir: Path, rel: str) -> Path:
    """The real path of `rel` under `workdir`, refusing anything that leaves it.

    Symlinks are resolved first, so a link pointing out of the directory is refused like
    "../x". Absolute paths are accepted only when they resolve inside the directory.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise OutboundFileError(
            "`path` must be a non-empty path relative to the working directory."
        )
    if "\x00" in rel:
        raise OutboundFileError("`path` contains a NUL character.")
    root = workdir.resolve()
    try:
        target = (root / rel).resolve(strict=True)
    except FileNotFoundError:
        raise OutboundFileError(f"{rel}: no such file in the working directory.") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission problem
        raise OutboundFileError(f"{rel}: cannot be opened ({type(exc).__name__}).") from None
    if not target.is_relative_to(root):
        raise OutboundFileError(
            f"{rel}: refused, only files inside the conversation's working directory "
            "can be sent (symlinks are followed before checking)."
        )
    if not target.is_file():
        raise OutboundFileError(f"{rel}: not a regular file.")
    return target


@dataclass
class OpenedFile:
    """A file opened once for sending: checks and the upload use this descriptor, never the
    name again (a file swapped for a FIFO or a symlink after the check cannot be read)."""

    fd: int
    path: Path
    size: int
    head: bytes

    def reader(self) -> BinaryIO:
        """A new file object at offset 0 over the same open file (closed by its user)."""
        handle = os.fdopen(os.dup(self.fd), "rb")
        handle.seek(0)
        return handle

    def close(self) -> None:
        os.close(self.fd)


def open_inside(workdir: Path, rel: str) -> OpenedFile:
    """Open `rel` under `workdir` once (no symlink at the end, never blocking on a FIFO) and
    check the open file: a regular file whose real path is inside `workdir`. Blocking I/O."""
    target = resolve_inside(workdir, rel)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        raise OutboundFileError(f"{rel}: cannot be opened ({exc.strerror or exc}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutboundFileError(f"{rel}: not a regular file.")
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not real.is_relative_to(workdir.resolve()):
            raise OutboundFileError(
                f"{rel}: refused, only files inside the conversation's working directory "
                "can be sent."
            )
        return OpenedFile(fd, real, info.st_size, os.pread(fd, 16, 0))
    except BaseException:
        os.close(fd)
        raise


_FILE_TYPES = {
    ".pdf": "pdf",
    ".doc": "doc",
    ".docx": "doc",
    ".xls": "xls",
    ".xlsx": "xls",
    ".ppt": "ppt",
    ".pptx": "ppt",
}


def file_type_for(name: str) -> str:
    """The `file_type` of POST /im/v1/files. mp4/opus are sent as "stream" too: those types
    would make Feishu expect a video/audio message (with duration), not a `file` one."""
    return _FILE_TYPES.get(Path(name).suffix.lower(), "stream")
