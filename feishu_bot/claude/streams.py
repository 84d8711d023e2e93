"""Reading a CLI's pipes: stdout split into lines of any size, stderr kept as a bounded tail.

Lines of many MB are normal (tool results, a ``Read`` of an image), so stdout is split by hand
instead of with ``StreamReader.readline`` and its 64 KiB limit; a line over ``limit`` bytes is
dropped with a warning rather than killing the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

__all__ = ["TailBuffer", "drain", "read_lines"]

_READ_CHUNK = 256 * 1024
_HEAD = 4 * 1024


class TailBuffer:
    """Keeps the first few KiB and the last ``limit`` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = _HEAD - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.limit:
                del self.tail[: len(self.tail) - self.limit]

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        skipped = self.total - len(self.head) - len(self.tail)
        if skipped > 0:
            return f"{head}\n[... {skipped} bytes ...]\n{tail}"
        return head + tail

    def mark(self) -> int:
        """A position to ask ``since`` about later (stderr of one turn of a long process)."""
        return self.total

    def since(self, mark: int) -> str:
        """What arrived after ``mark``, as far as the tail still holds it."""
        text = self.text()
        new = self.total - mark
        return text[-new:] if new > 0 else ""


async def drain(stream: asyncio.StreamReader | None, sink: TailBuffer) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_READ_CHUNK):
        sink.add(chunk)


async def read_lines(
    stream: asyncio.StreamReader | None,
    on_line: Callable[[bytes], Awaitable[None]],
    *,
    limit: int,
) -> None:
    """Call ``on_line`` for every line until EOF, in order."""
    if stream is None:
        return
    buf = bytearray()
    skipping = False
    while chunk := await stream.read(_READ_CHUNK):
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                if not skipping:
                    buf += chunk[start:]
                    if len(buf) > limit:
                        logger.warning("dropping a stdout line over {} bytes", limit)
                        buf.clear()
                        skipping = True
                break
            if skipping:
                skipping = False
            else:
                buf += chunk[start:newline]
                await on_line(bytes(buf))
                buf.clear()
            start = newline + 1
    if buf and not skipping:
        await on_line(bytes(buf))
