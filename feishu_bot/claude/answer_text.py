"""The assistant text of one CLI run, accumulated in time linear in its length.

A long answer arrives as thousands of token deltas. Re-joining the whole text for every delta,
and handing every consumer a fresh copy of it, costs O(length) per delta: quadratic over the
answer (16k deltas, 400k characters took ~1 s of event-loop time). Here a delta that extends
the last text block (nearly all of them) is an append to a list of pieces; the text is joined
only when somebody reads it, and a ``TextEvent`` keeps (pieces, count) so that reading it later
still gives the text as it was when the event was made.

The text is every top-level text block of the run, in order, separated by a blank line. A
block's complete version (from the ``assistant`` line that follows its deltas) replaces the
streamed one, so nothing is counted twice; a replacement that changes the text, or a delta to a
block that is not the last, joins the text anew (rare: at most once per block).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from feishu_bot.events import ClaudeEvent

__all__ = ["AnswerText", "TextEvent"]

BLOCK_SEPARATOR = "\n\n"


class _TextLog:
    """The text as an append-only list of pieces; a prefix is the text of an earlier moment.

    A change that is not an append starts a new log; events made earlier keep the old one.
    """

    __slots__ = ("_cached", "_cached_count", "parts", "size")

    def __init__(self, text: str = "") -> None:
        self.parts: list[str] = [text] if text else []
        self.size = len(text)
        self._cached = text
        self._cached_count = len(self.parts)

    def append(self, piece: str) -> None:
        self.parts.append(piece)
        self.size += len(piece)

    def read(self, count: int) -> str:
        """The text made of the first `count` pieces (the latest read is cached)."""
        if count == self._cached_count:
            return self._cached
        if count > self._cached_count:
            text = self._cached + "".join(self.parts[self._cached_count : count])
        else:
            text = "".join(self.parts[:count])
        if count >= self._cached_count:
            self._cached, self._cached_count = text, count
        return text


class TextEvent(ClaudeEvent):
    """A "text" ``ClaudeEvent`` whose ``text`` (the whole answer so far) is joined when read.

    It behaves as a ClaudeEvent (equality, hash and repr; copy and pickle give a plain one), so
    callers that read ``event.text`` keep working. A consumer that only needs the latest text
    now and then (a card updated once a second) should keep ``lambda: event.text`` and call it
    when it needs the text: reading the text of every event costs O(length) each time, which
    over a long answer is quadratic again. Text events never carry an empty text.
    """

    __slots__ = ("_source",)

    def __init__(
        self,
        kind: str = "text",
        session_id: str | None = None,
        text: str | Callable[[], str] = "",
        raw_type: str = "",
        detail: str = "",
    ) -> None:
        # The dataclass is frozen: set its slots the way its own __init__ does.
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "raw_type", raw_type)
        object.__setattr__(self, "detail", detail)
        object.__setattr__(self, "_source", text)

    @property  # type: ignore[override]
    def text(self) -> str:
        source = self._source
        return source if isinstance(source, str) else source()

    def _fields(self) -> tuple[Any, ...]:
        return (self.kind, self.session_id, self.text, self.raw_type, self.detail)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ClaudeEvent):
            theirs = (other.kind, other.session_id, other.text, other.raw_type, other.detail)
            return self._fields() == theirs
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[Any, ...]:
        return (ClaudeEvent, self._fields())


class _Message:
    """Text blocks of one assistant message: streamed (pieces, by ordinal) and final (in order).

    Final block k replaces streamed block k.
    """

    __slots__ = ("final", "streamed")

    def __init__(self) -> None:
        self.streamed: list[list[str]] = []
        self.final: list[str] = []

    def count(self) -> int:
        return max(len(self.streamed), len(self.final))

    def block(self, k: int) -> str:
        return self.final[k] if k < len(self.final) else "".join(self.streamed[k])


class AnswerText:
    """The text blocks of a run's assistant messages, and their joined text.

    Messages are keyed by the API message id; streamed blocks by the API content-block index.
    Each mutator returns whether the joined text changed.
    """

    def __init__(self) -> None:
        self._messages: dict[str, _Message] = {}
        self._order: list[str] = []
        self._block_ordinal: dict[tuple[str, int], int] = {}
        self._log = _TextLog()
        self.rebuilds = 0  # changes that were not appends (the text may have shrunk)

    @property
    def text(self) -> str:
        return self._log.read(len(self._log.parts))

    def snapshot(self) -> Callable[[], str] | None:
        """Reads the current text later, in O(1) now; None while the text is empty."""
        if not self._log.size:
            return None
        return functools.partial(self._log.read, len(self._log.parts))

    def open_message(self, msg_id: str) -> None:
        self._message(msg_id)

    def start_block(self, msg_id: str, index: int, text: str) -> bool:
        """A streamed text block begins (content_block_start), possibly with some text."""
        msg = self._message(msg_id)
        ordinal = self._block_ordinal[(msg_id, index)] = len(msg.streamed)
        msg.streamed.append([])
        return self._append(msg_id, ordinal, text)

    def delta(self, msg_id: str, index: int, text: str) -> bool:
        """More text for a streamed block (content_block_delta)."""
        msg = self._message(msg_id)
        ordinal = self._block_ordinal.get((msg_id, index))
        if ordinal is None:
            ordinal = self._block_ordinal[(msg_id, index)] = len(msg.streamed)
            msg.streamed.append([])
        return self._append(msg_id, ordinal, text)

    def final_block(self, msg_id: str, text: str) -> bool:
        """The complete version of the message's next text block (an ``assistant`` line)."""
        msg = self._message(msg_id)
        k = len(msg.final)
        before = msg.block(k) if k < msg.count() else ""
        msg.final.append(text)
        if text == before:
            return False  # the streamed text was complete already
        if not before and self._is_last_block(msg_id, k):
            self._grow(text, new_block=True)
            return True
        return self._rebuild()

    # -- internals -----------------------------------------------------------------------------

    def _message(self, msg_id: str) -> _Message:
        msg = self._messages.get(msg_id)
        if msg is None:
            msg = self._messages[msg_id] = _Message()
            self._order.append(msg_id)
        return msg

    def _is_last_block(self, msg_id: str, k: int) -> bool:
        return self._order[-1] == msg_id and k == self._messages[msg_id].count() - 1

    def _append(self, msg_id: str, k: int, piece: str) -> bool:
        if not piece:
            return False
        msg = self._messages[msg_id]
        parts = msg.streamed[k]
        was_empty = not parts
        parts.append(piece)
        if k < len(msg.final):
            return False  # its complete version already replaced it
        if self._is_last_block(msg_id, k):
            self._grow(piece, new_block=was_empty)  # the common case: the text grows at its end
            return True
        return self._rebuild()

    def _grow(self, piece: str, *, new_block: bool) -> None:
        if new_block and self._log.size:
            self._log.append(BLOCK_SEPARATOR)
        self._log.append(piece)

    def _rebuild(self) -> bool:
        blocks = (
            block
            for mid in self._order
            for msg in (self._messages[mid],)
            for block in (msg.block(k) for k in range(msg.count()))
            if block
        )
        text = BLOCK_SEPARATOR.join(blocks)
        if text == self.text:
            return False
        self._log = _TextLog(text)
        self.rebuilds += 1
        return True
