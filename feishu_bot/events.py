"""Frozen values that cross module boundaries.

Nothing here does I/O; raw `lark_oapi` objects and raw CLI JSON never appear in these types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feishu_bot.keys import ConversationKey

__all__ = [
    "AskPermission",
    "Attachment",
    "ClaudeEvent",
    "ImageFile",
    "InboundMessage",
    "McpHandler",
    "PermissionDecision",
    "PermissionRequest",
    "TurnRequest",
    "TurnResult",
    "conversation_key",
]


def conversation_key(chat_id: str, chat_type: str, thread_root: str | None) -> str:
    """The stored form of a conversation's key (see `keys.ConversationKey`)."""
    return str(ConversationKey.of(chat_id, chat_type, thread_root))


@dataclass(frozen=True, slots=True)
class ImageFile:
    """An image waiting on disk for its turn: the `data` of an image content block until the
    turn is written to the CLI, which streams it there as base64 straight from the file (no
    copy of the image is held in memory)."""

    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class Attachment:
    """A resource a message carries (an image, file, audio or video), by key, never by bytes.

    `kind` is the Feishu resource kind: "image", "file", "audio", "media", "sticker".
    `name` is the file name Feishu gave (files only); `size` is in bytes when Feishu said it.
    """

    kind: str
    key: str
    name: str = ""
    size: int | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One Feishu message, already parsed into plain text.

    `text` is None when the message type is not supported (image, file, …); then `msg_type`
    says what it was. `thread_root` is set when the message belongs to a thread/topic.
    """

    message_id: str
    chat_id: str
    chat_type: str  # "p2p" or "group"
    sender_open_id: str
    msg_type: str
    text: str | None
    mentioned_bot: bool = False
    thread_root: str | None = None
    create_time_ms: int = 0
    attachments: tuple[Attachment, ...] = ()
    # The message this one replies to (quotes), when it is not just the topic's root.
    parent_id: str | None = None

    @property
    def conversation_key(self) -> str:
        return conversation_key(self.chat_id, self.chat_type, self.thread_root)

    @property
    def in_thread(self) -> bool:
        return self.thread_root is not None


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """What the launcher needs to run one Claude turn for one conversation."""

    conversation_key: str
    prompt: str
    workdir: Path
    session_id: str | None = None
    model: str | None = None
    # Content blocks sent after the prompt text in the same user message, in order (image
    # blocks: {"type": "image", "source": {"type": "base64", "media_type": ..., "data": ...}}).
    content: tuple[dict[str, Any], ...] = ()
    user_id: str = ""
    # The conversation's "Always allow" grants, given to a new process at start (a warm one
    # got each as a session rule when it was granted): permission rules and sandbox hosts.
    allowed_rules: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # The conversation's permission mode (/mode); None: the launcher's configured one.
    permission_mode: str | None = None


@dataclass(frozen=True, slots=True)
class PermissionRequest:
    """The CLI asks whether a tool may run (`can_use_tool`), reduced to what a person needs."""

    request_id: str
    tool_name: str
    input: dict[str, Any]
    tool_use_id: str | None = None
    blocked_path: str | None = None
    suggestions: tuple[dict[str, Any], ...] = ()
    # The tool's input as the model wrote it in its tool_use (measured on 2.1.329: an
    # ExitPlanMode request carries {} when no plan file was written, the plan is only here).
    model_input: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PermissionDecision:
    """The answer to a PermissionRequest. `updated_input` replaces the tool input on allow
    (AskUserQuestion answers travel this way); `updated_permissions` are rule updates for the
    CLI with an allow (session rules of "Always allow"); `interrupt` ends the turn after a
    deny."""

    allow: bool
    message: str = ""
    updated_input: dict[str, Any] | None = None
    interrupt: bool = False
    updated_permissions: tuple[dict[str, Any], ...] = ()
    # The CLI would remember this allow for the rest of its process (measured for a host
    # allowed once): close the process after the turn, so "once" stays once.
    retire_after_turn: bool = False


# Asked for every can_use_tool; must always return (the caller enforces no deadline).
AskPermission = Callable[[PermissionRequest], Awaitable[PermissionDecision]]
# An in-process MCP server: (server name, JSON-RPC message) -> JSON-RPC response (or None for a
# notification).
McpHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class ClaudeEvent:
    """One parsed stream-json line, reduced to what the bot uses.

    kind: "init" (session_id set), "text" (text = the assistant text so far in this turn),
    "tool" (tool name in `text`, a one-line summary of its input such as the command or file
    in `detail`), "api_retry", "result", "other".
    """

    kind: str
    session_id: str | None = None
    text: str = ""
    raw_type: str = ""
    detail: str = ""
    cost_usd: float = 0.0  # "result": this turn's own cost (not a warm process's total)


@dataclass(frozen=True, slots=True)
class TurnResult:
    """The outcome of one turn, judged by the CLI's result object, not its exit code."""

    text: str
    session_id: str | None
    is_error: bool
    subtype: str = ""
    errors: tuple[str, ...] = ()
    cost_usd: float = 0.0
    duration_ms: int = 0
    num_turns: int = 0
    attempts: int = 1
    exit_code: int | None = None
    stale_session_reset: bool = False
    # Wall time of the turn, the CLI's start-up included (its own duration_ms leaves it out),
    # and when the first text streamed (None: no text came).
    wall_ms: int = 0
    first_text_s: float | None = None
    extra: dict[str, object] = field(default_factory=dict)
