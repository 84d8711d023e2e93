"""A conversation's identity: the one place that builds, parses and prints the key.

A key is a p2p chat (`p2p:<chat_id>`), a group chat (`group:<chat_id>`) or one topic of a group
(`thread:<chat_id>:<root message id>`). Each has its own Claude session, working directory,
queue and grants. The string form is what the journal stores; `ConversationKey.parse` reads it
back and refuses anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ConversationKey", "default_workdir"]

Kind = Literal["p2p", "group", "thread"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """See the module docstring. Compare and hash as values; `str()` gives the stored form."""

    kind: Kind
    chat_id: str
    thread_root: str | None = None

    @classmethod
    def of(cls, chat_id: str, chat_type: str, thread_root: str | None) -> ConversationKey:
        """The conversation of a message in `chat_id` (a topic's when it has a thread root)."""
        if thread_root:
            return cls("thread", chat_id, thread_root)
        return cls("p2p" if chat_type == "p2p" else "group", chat_id)

    @classmethod
    def parse(cls, text: str) -> ConversationKey:
        """The key `text` prints as; ValueError for anything that is not one."""
        kind, _, rest = text.partition(":")
        if kind == "thread":
            chat_id, _, root = rest.partition(":")
            if chat_id and root:
                return cls("thread", chat_id, root)
        elif kind in ("p2p", "group") and rest and ":" not in rest:
            return cls(kind, rest)  # type: ignore[arg-type]
        raise ValueError(f"not a conversation key: {text[:80]!r}")

    def __str__(self) -> str:
        if self.kind == "thread":
            return f"thread:{self.chat_id}:{self.thread_root}"
        return f"{self.kind}:{self.chat_id}"

    @property
    def chat_type(self) -> str:
        """Feishu's chat type: "p2p", or "group" (topics are in groups)."""
        return "p2p" if self.kind == "p2p" else "group"

    @property
    def is_private(self) -> bool:
        return self.kind == "p2p"


def default_workdir(root: Path, key: str | ConversationKey, *, shared: bool) -> Path:
    """Where a new conversation works: its own directory under CLAUDE_WORKDIR, or the shared
    root itself when the operator chose CLAUDE_SHARED_WORKDIR."""
    if shared:
        return root
    return root / _UNSAFE.sub("_", str(key).replace(":", "-"))[:120]
