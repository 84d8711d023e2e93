"""Part of the fake ``claude`` script: its log, its stdout and the shapes of its lines.

Imported by ``fake_claude.py`` (run as a script, so this directory is on ``sys.path``); not a
test helper of its own. Line shapes follow the real samples of CLI 2.1.329.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

VERSION = "2.1.329"
MODEL = "claude-opus-5-5"
BASE_TOOLS = ["Task", "Bash", "Edit", "Read", "Write"]

_LOG = os.environ.get("FAKE_CLAUDE_LOG")
# Fields repeated on every log record; the driver updates them as turns go by.
STATE: dict[str, Any] = {
    "run": uuid.uuid4().hex[:12],  # unique per process: pids can be reused within a test
    "mode": "",
    "resume": None,
    "session_id": None,
    "turn": 0,
    "input_format": "text",
    "prompt_len": 0,
    "prompt_head": "",
}
# Stdout is written by the turn (main thread) and by the stdin reader (control responses).
# Re-entrant: the SIGINT handler prints its result from the main thread, maybe mid-emit.
_OUT = threading.RLock()


def log(event: str, **fields: Any) -> None:
    """Append one JSON line to FAKE_CLAUDE_LOG (one write(2) with O_APPEND: safe across runs)."""
    if not _LOG:
        return
    record = {
        "event": event,
        "pid": os.getpid(),
        "time": time.time(),
        "mono": time.monotonic(),
        "argv": sys.argv[1:],
        **STATE,
        **fields,
    }
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def finish(code: int, **fields: Any) -> None:
    """Log ``exit`` and leave at once (also from a thread or a signal handler)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    log("exit", code=code, **fields)
    os._exit(code)


def emit(obj: dict[str, Any]) -> None:
    data = json.dumps(obj, ensure_ascii=False).encode() + b"\n"
    with _OUT:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except (BrokenPipeError, ValueError):
            finish(1, reason="stdout closed")


def new_uuid() -> str:
    return str(uuid.uuid4())


def msg_id() -> str:
    return f"msg_fake_{uuid.uuid4().hex[:24]}"


def tool_id() -> str:
    return f"toolu_fake_{uuid.uuid4().hex[:20]}"


def usage() -> dict[str, Any]:
    return {
        "input_tokens": 2562,
        "output_tokens": 11,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def init_line(
    sid: str,
    cwd: str,
    opts: dict[str, Any],
    *,
    tools: list[str] | None = None,
    mcp_servers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "system",
        "subtype": "init",
        "cwd": cwd,
        "session_id": sid,
        "tools": tools or BASE_TOOLS,
        "mcp_servers": mcp_servers or [],
        "model": opts.get("model") or MODEL,
        "permissionMode": opts.get("permission-mode", "default"),
        "apiKeySource": "ANTHROPIC_API_KEY",
        "claude_code_version": VERSION,
        "output_style": "default",
        "uuid": new_uuid(),
        "original_cwd": cwd,
    }


def stream_event(sid: str, message_id: str, event: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "stream_event",
        "event": event,
        "session_id": sid,
        "parent_tool_use_id": None,
        "uuid": new_uuid(),
        "api_message_id": message_id,
    }


def assistant_line(sid: str, message_id: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant message; its top-level ``uuid`` is what ``--resume-session-at`` takes."""
    return {
        "type": "assistant",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(),
            "context_management": None,
        },
        "parent_tool_use_id": None,
        "session_id": sid,
        "uuid": new_uuid(),
        "request_id": "req_fake_000001",
    }


def user_line(sid: str, content: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A user line the CLI prints itself (tool results, interruption notes)."""
    return {
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        "session_id": sid,
        "uuid": new_uuid(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        **extra,
    }


def tool_result_line(
    sid: str, tool_use_id: str, content: Any, *, is_error: bool, **extra: Any
) -> dict[str, Any]:
    block = {"tool_use_id": tool_use_id, "type": "tool_result", "content": content}
    block["is_error"] = is_error
    return user_line(sid, [block], **extra)


def result_line(
    sid: str, *, text: str | None, is_error: bool = False, subtype: str = "success", **extra: Any
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "duration_api_ms": 13,
        "stop_reason": "end_turn",
        "session_id": sid,
        "total_cost_usd": 0.010435999999999999,
        "usage": usage(),
        "modelUsage": {},
        "permission_denials": [],
        "terminal_reason": "completed",
        "is_error": is_error,
        "num_turns": 1,
        "subtype": subtype,
        "api_error_status": None,
        "type": "result",
        "duration_ms": 67,
        "uuid": new_uuid(),
        "queued_turn_count": 0,
        "result_index": 0,
    }
    if text is not None:
        line["result"] = text
    line.update(extra)
    return line


def aborted_result(sid: str, reason: str, **extra: Any) -> dict[str, Any]:
    """What an interrupt ends a turn with (measured: no ``result`` text)."""
    return result_line(
        sid,
        text=None,
        is_error=True,
        subtype="error_during_execution",
        terminal_reason=reason,
        stop_reason="tool_use" if reason == "aborted_tools" else None,
        num_turns=2,
        errors=["[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null"],
        **extra,
    )


class Aborted(Exception):
    """The turn was interrupted; ``partial`` is the text streamed before it."""

    def __init__(self, partial: str = "") -> None:
        super().__init__("interrupted")
        self.partial = partial


def stream_text(
    sid: str,
    text: str,
    *,
    partial: bool,
    chunks: int,
    delay: float,
    pause: Callable[[float], None],
) -> dict[str, Any]:
    """Print one assistant text message (token deltas first when ``partial``); return its line.

    ``pause(seconds)`` raises ``Aborted`` when the turn is interrupted; the text streamed so far
    is then printed as the assistant message, like the real CLI does, and ``Aborted`` re-raised.
    """
    message_id = msg_id()
    if partial:
        emit(
            {
                "type": "system",
                "subtype": "status",
                "status": "requesting",
                "session_id": sid,
                "uuid": new_uuid(),
            }
        )
        start = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(),
        }
        emit(stream_event(sid, message_id, {"type": "message_start", "message": start}))
        block = {"type": "text", "text": ""}
        emit(
            stream_event(
                sid,
                message_id,
                {"type": "content_block_start", "index": 0, "content_block": block},
            )
        )
    size = max(1, -(-len(text) // max(1, chunks)))
    sent = ""
    try:
        for start_at in range(0, len(text), size):
            if delay:
                pause(delay)
            piece = text[start_at : start_at + size]
            if partial:
                delta = {"type": "text_delta", "text": piece}
                emit(
                    stream_event(
                        sid,
                        message_id,
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                    )
                )
            sent += piece
    except Aborted:
        if sent:
            emit(assistant_line(sid, message_id, [{"type": "text", "text": sent}]))
        raise Aborted(sent) from None
    line = assistant_line(sid, message_id, [{"type": "text", "text": text}])
    emit(line)
    if partial:
        emit(stream_event(sid, message_id, {"type": "content_block_stop", "index": 0}))
        emit(
            stream_event(
                sid,
                message_id,
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 11},
                },
            )
        )
        emit(stream_event(sid, message_id, {"type": "message_stop"}))
    return line


def partial_text_start(sid: str, text: str) -> None:
    """Token deltas of a message that never finishes (the hang modes)."""
    message_id = msg_id()
    block = {"type": "text", "text": ""}
    emit(
        stream_event(
            sid, message_id, {"type": "content_block_start", "index": 0, "content_block": block}
        )
    )
    emit(
        stream_event(
            sid,
            message_id,
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )
    )
