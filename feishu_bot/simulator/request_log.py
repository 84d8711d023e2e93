"""`RequestLog`: the simulator's record of HTTP requests, bounded in count and in body bytes.

The simulator runs for hours inside the playground, where every streamed card update, every
upload and every refused call is a request: unbounded, the log would hold them all, bodies
included (a 30 MB upload as bytes). So the oldest records go first once there are `max_count`
of them or their kept bodies exceed `max_bytes`, and a body larger than `max_body` is never
kept (its record says how big it was). Tests read it like the list it used to be: iterate,
``len``, ``[-1]``.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

__all__ = ["MAX_BODY_BYTES", "MAX_LOG_BYTES", "MAX_LOG_COUNT", "RequestLog", "RequestRecord"]

MAX_LOG_COUNT = 10_000  # a long soak run makes a few thousand
MAX_LOG_BYTES = 32 * 1024 * 1024
MAX_BODY_BYTES = 1024 * 1024  # JSON calls are far below; uploads are above and not kept


@dataclass(slots=True)
class RequestRecord:
    """One HTTP request to the simulator (REST and endpoint discovery; not websocket frames).

    `code` is the Feishu `code` of the JSON answer (None when the body was not JSON).
    `body_size` is how many body bytes were read (0: not read, as for a call refused for want
    of a token); `body` is None when none was kept (see `RequestLog`).
    """

    method: str
    path: str
    query: dict[str, str]
    status: int
    code: int | None
    time: float
    body: Any = None
    body_size: int = 0


class RequestLog(Sequence[RequestRecord]):
    """Oldest first. `dropped` counts the records let go; `body_bytes` what kept bodies cost."""

    def __init__(
        self,
        max_count: int = MAX_LOG_COUNT,
        max_bytes: int = MAX_LOG_BYTES,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        if max_count < 1 or max_bytes < 0 or max_body < 0:
            raise ValueError("request log limits must be positive")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_body = min(max_body, max_bytes)
        self.dropped = 0
        self.body_bytes = 0
        self._records: deque[RequestRecord] = deque()

    def add(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        status: int,
        code: int | None,
        raw: bytes,
    ) -> RequestRecord:
        """Record one answered request whose body was `raw` (b"": none, or not read)."""
        # The size decides before parsing: a large body is neither parsed nor kept.
        body = _parsed(raw) if len(raw) <= self.max_body else None
        record = RequestRecord(method, path, query, status, code, time.time(), body, len(raw))
        self.append(record)
        return record

    def append(self, record: RequestRecord) -> None:
        """Add `record`; its `body_size` counts only if its body is kept."""
        self._records.append(record)
        self.body_bytes += _kept(record)
        while len(self._records) > self.max_count or self.body_bytes > self.max_bytes:
            old = self._records.popleft()
            self.body_bytes -= _kept(old)
            self.dropped += 1

    def clear(self) -> None:
        self._records.clear()
        self.body_bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self._records)

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return list(self._records)[index]
        return self._records[index]

    def __repr__(self) -> str:
        return f"RequestLog({len(self)} records, {self.body_bytes} body bytes)"


def _parsed(raw: bytes) -> Any:
    """A body as tests read it: parsed JSON, else the bytes; None when empty."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _kept(record: RequestRecord) -> int:
    return record.body_size if record.body is not None else 0
