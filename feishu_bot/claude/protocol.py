"""The Claude Code CLI's stream-json output, parsed without I/O.

``StreamParser`` takes the lines of one CLI run (``claude -p --output-format stream-json
--verbose [--include-partial-messages]``) and turns them into ``ClaudeEvent``s; it remembers the
session id from ``init``, the assistant text accumulated so far, and the final ``result``.
``classify`` decides, from the result object, the exit code and the stderr tail, whether a run
succeeded and, if not, what kind of failure it was. Raw CLI JSON never leaves this package.

Text accumulation: with ``--include-partial-messages`` the ``stream_event`` ``text_delta`` lines
give token-level text; the complete ``assistant`` lines that follow (one per content block)
replace the streamed text of the same block, so nothing is counted twice. Without partial
messages only the ``assistant`` lines are there. The accumulated text is every top-level text
block of the turn, in order, separated by a blank line (subagent messages, which carry a
``parent_tool_use_id``, are left out). The final answer is ``result.result``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from feishu_bot.events import ClaudeEvent

__all__ = [
    "STALE_MARKERS",
    "Outcome",
    "ResultInfo",
    "StreamParser",
    "Verdict",
    "classify",
    "parse_result",
    "tool_detail",
]

# `--resume <unknown uuid>` and `--resume <not a uuid>` (both measured on 2.1.329): the stored
# session id is unusable, so the remedy is the same: forget it and start a fresh session.
STALE_MARKERS = (
    "No conversation found with session ID",
    "--resume requires a valid session ID",
)
ROOT_BYPASS_MARKER = "cannot be used with root/sudo privileges"
# commander.js usage errors (exit 1, nothing on stdout).
_USAGE_ERROR = re.compile(
    r"^(error: (unknown option|unknown command|too many arguments|missing required argument"
    r"|option '.*' argument .* is invalid|option '.*' argument missing|required option)"
    r"|Error: Input must be provided)",
    re.MULTILINE,
)
# API statuses no retry can fix: bad request, bad key, forbidden, unknown model, too large.
_PERMANENT_API_STATUS = frozenset({400, 401, 403, 404, 413})
# Measured on 2.1.329 without credentials: exit 1, result {"subtype": "success",
# "is_error": true, "result": "Not logged in · Please run /login", "terminal_reason":
# "api_error"} and no api_error_status, so without this it would look transient.
AUTH_MARKERS = ("Not logged in", "Please run /login", "Invalid API key")
_BLOCK_SEPARATOR = "\n\n"
_DETAIL_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description")


@dataclass(frozen=True, slots=True)
class ResultInfo:
    """The fields of a ``result`` line the bot uses."""

    text: str
    is_error: bool
    subtype: str
    errors: tuple[str, ...]
    session_id: str | None
    cost_usd: float
    duration_ms: int
    num_turns: int
    api_error_status: int | None
    terminal_reason: str
    permission_denials: tuple[str, ...]


def _as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def parse_result(obj: dict[str, Any]) -> ResultInfo:
    """Reduce a ``{"type": "result", ...}`` object to ``ResultInfo`` (missing fields default)."""
    errors = obj.get("errors") or ()
    if isinstance(errors, str):
        errors = (errors,)
    denials = []
    for item in obj.get("permission_denials") or ():
        if isinstance(item, dict):
            denials.append(str(item.get("tool_name") or item.get("name") or "?"))
        else:
            denials.append(str(item))
    status = obj.get("api_error_status")
    text = obj.get("result")
    return ResultInfo(
        text=text if isinstance(text, str) else "",
        is_error=bool(obj.get("is_error")),
        subtype=str(obj.get("subtype") or ""),
        errors=tuple(str(e) for e in errors),
        session_id=obj.get("session_id"),
        cost_usd=_as_float(obj.get("total_cost_usd")),
        duration_ms=_as_int(obj.get("duration_ms")),
        num_turns=_as_int(obj.get("num_turns")),
        api_error_status=_as_int(status) if status is not None else None,
        terminal_reason=str(obj.get("terminal_reason") or ""),
        permission_denials=tuple(denials),
    )


def tool_detail(tool_input: Any, limit: int = 200) -> str:
    """A one-line summary of a tool call's input (the command, the file, ...)."""
    if not isinstance(tool_input, dict):
        return ""
    for key in _DETAIL_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            line = " ".join(value.split())
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


class _Message:
    """Text blocks of one assistant message: streamed (by block index) and final (in order)."""

    __slots__ = ("final", "streamed")

    def __init__(self) -> None:
        self.streamed: dict[int, str] = {}
        self.final: list[str] = []

    def blocks(self) -> list[str]:
        streamed = [self.streamed[i] for i in sorted(self.streamed)]
        count = max(len(streamed), len(self.final))
        return [self.final[k] if k < len(self.final) else streamed[k] for k in range(count)]


class StreamParser:
    """State of one CLI run's stdout; feed it lines, get events.

    Not thread-safe; one instance per CLI run. Malformed or non-JSON lines are counted in
    ``bad_lines`` and otherwise ignored (the CLI may print warnings on stdout).
    """

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.init_seen = False
        self.result: ResultInfo | None = None
        self.bad_lines = 0
        self.api_retries = 0
        self.tools_used: list[str] = []
        self._messages: dict[str, _Message] = {}
        self._order: list[str] = []
        self._current_stream_msg: str | None = None
        self._text_block_index: dict[tuple[str, int], int] = {}
        self._seen_tool_ids: set[str] = set()
        self._text = ""
        self._anon = 0

    @property
    def text(self) -> str:
        """Assistant text of this run so far (all top-level text blocks)."""
        return self._text

    def feed(self, line: bytes | str) -> list[ClaudeEvent]:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.strip()
        if not line:
            return []
        try:
            obj = json.loads(line)
        except ValueError:
            self.bad_lines += 1
            return []
        if not isinstance(obj, dict):
            self.bad_lines += 1
            return []
        return self.feed_object(obj)

    def feed_object(self, obj: dict[str, Any]) -> list[ClaudeEvent]:
        kind = obj.get("type")
        sid = obj.get("session_id") if isinstance(obj.get("session_id"), str) else None
        if kind == "system":
            return self._system(obj, sid)
        if kind == "stream_event":
            return self._stream_event(obj)
        if kind == "assistant":
            return self._assistant(obj)
        if kind == "result":
            self.result = parse_result(obj)
            if self.result.session_id and self.session_id is None:
                self.session_id = self.result.session_id
            return [ClaudeEvent("result", self.session_id, self.result.text, "result")]
        if kind in ("user", "rate_limit_event", "control_request", "control_response"):
            return []
        return [ClaudeEvent("other", self.session_id, "", str(kind or ""))]

    # ------------------------------------------------------------------ line kinds
    def _system(self, obj: dict[str, Any], sid: str | None) -> list[ClaudeEvent]:
        subtype = obj.get("subtype")
        if subtype == "init":
            self.init_seen = True
            if sid:
                self.session_id = sid
            return [ClaudeEvent("init", sid, "", "system")]
        if subtype == "api_retry":
            self.api_retries += 1
            text = (
                f"attempt {obj.get('attempt')}/{obj.get('max_retries')}: "
                f"{obj.get('error_status')} {obj.get('error') or ''}".rstrip()
            )
            return [ClaudeEvent("api_retry", self.session_id, text, "system")]
        return []

    def _stream_event(self, obj: dict[str, Any]) -> list[ClaudeEvent]:
        if obj.get("parent_tool_use_id"):
            return []
        event = obj.get("event")
        if not isinstance(event, dict):
            return []
        etype = event.get("type")
        if etype == "message_start":
            message = event.get("message") or {}
            msg_id = message.get("id") or obj.get("api_message_id")
            self._current_stream_msg = str(msg_id) if msg_id else self._anon_id()
            self._message(self._current_stream_msg)
            return []
        msg_id = obj.get("api_message_id") or self._current_stream_msg
        if not msg_id:
            msg_id = self._current_stream_msg = self._anon_id()
        msg_id = str(msg_id)
        index = _as_int(event.get("index"), -1)
        if etype == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "text":
                msg = self._message(msg_id)
                ordinal = len(msg.streamed)
                self._text_block_index[(msg_id, index)] = ordinal
                msg.streamed[ordinal] = str(block.get("text") or "")
                return self._text_changed("stream_event")
            return []
        if etype == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") != "text_delta":
                return []
            msg = self._message(msg_id)
            key = (msg_id, index)
            if key not in self._text_block_index:
                self._text_block_index[key] = len(msg.streamed)
                msg.streamed[self._text_block_index[key]] = ""
            ordinal = self._text_block_index[key]
            msg.streamed[ordinal] = msg.streamed.get(ordinal, "") + str(delta.get("text") or "")
            return self._text_changed("stream_event")
        return []

    def _assistant(self, obj: dict[str, Any]) -> list[ClaudeEvent]:
        if obj.get("parent_tool_use_id"):
            return []
        message = obj.get("message")
        if not isinstance(message, dict):
            return []
        msg_id = str(message.get("id") or obj.get("uuid") or self._anon_id())
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            return []
        events: list[ClaudeEvent] = []
        msg = self._message(msg_id)
        changed = False
        for block in content:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                msg.final.append(str(block.get("text") or ""))
                changed = True
            elif btype == "tool_use":
                tool_id = str(block.get("id") or "")
                if tool_id and tool_id in self._seen_tool_ids:
                    continue
                self._seen_tool_ids.add(tool_id)
                name = str(block.get("name") or "?")
                self.tools_used.append(name)
                events.append(
                    ClaudeEvent(
                        "tool",
                        self.session_id,
                        name,
                        "assistant",
                        detail=tool_detail(block.get("input")),
                    )
                )
        if changed:
            events = self._text_changed("assistant") + events
        return events

    # ------------------------------------------------------------------ helpers
    def _anon_id(self) -> str:
        self._anon += 1
        return f"_anon{self._anon}"

    def _message(self, msg_id: str) -> _Message:
        msg = self._messages.get(msg_id)
        if msg is None:
            msg = self._messages[msg_id] = _Message()
            self._order.append(msg_id)
        return msg

    def _text_changed(self, raw_type: str) -> list[ClaudeEvent]:
        blocks = [b for mid in self._order for b in self._messages[mid].blocks() if b]
        text = _BLOCK_SEPARATOR.join(blocks)
        if text == self._text:
            return []
        self._text = text
        return [ClaudeEvent("text", self.session_id, text, raw_type)]


class Outcome(StrEnum):
    OK = "ok"
    STALE = "stale"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str


def classify(*, exit_code: int | None, result: ResultInfo | None, stderr: str) -> Verdict:
    """Judge one finished CLI run. Success comes from the result object, never the exit code.

    - OK: a result with ``is_error: false`` (whatever the exit code).
    - STALE: ``No conversation found with session ID`` (or an invalid ``--resume`` value) in
      stderr or the result's errors.
    - PERMANENT: ``error_max_*`` results (max turns, budget), bypass permissions as root, the
      CLI not logged in (no API key), usage
      errors (unknown option, invalid argument), API statuses 400/401/403/404/413.
    - TRANSIENT: everything else: API errors after the CLI's own retries (529, 500, 429),
      crashes, death by signal, a non-zero exit without a known permanent cause, an exit without
      a result line, an ``is_error`` result after SIGINT.
    """
    if result is not None and not result.is_error:
        return Verdict(Outcome.OK, "success")
    errors_text = "\n".join(result.errors) if result is not None else ""
    haystack = f"{stderr}\n{errors_text}"
    if any(marker in haystack for marker in STALE_MARKERS):
        return Verdict(Outcome.STALE, "stale session")
    if result is not None and (
        result.subtype.startswith("error_max_") or result.terminal_reason == "max_turns"
    ):
        return Verdict(Outcome.PERMANENT, result.subtype or result.terminal_reason)
    if ROOT_BYPASS_MARKER in haystack:
        return Verdict(Outcome.PERMANENT, "bypass permissions as root")
    usage = _USAGE_ERROR.search(stderr)
    if usage:
        return Verdict(Outcome.PERMANENT, f"invalid argument: {usage.group(0)}")
    if result is not None and any(marker in (result.text or "") for marker in AUTH_MARKERS):
        return Verdict(
            Outcome.PERMANENT,
            "the Claude CLI is not logged in: set ANTHROPIC_API_KEY for the bot, "
            "or log the CLI in as the bot's user",
        )
    if result is not None and result.api_error_status in _PERMANENT_API_STATUS:
        return Verdict(Outcome.PERMANENT, f"api error {result.api_error_status}")
    if result is not None and (
        result.api_error_status is not None or result.terminal_reason == "api_error"
    ):
        return Verdict(Outcome.TRANSIENT, f"api error {result.api_error_status or ''}".strip())
    if exit_code is not None and exit_code < 0:
        return Verdict(Outcome.TRANSIENT, f"killed by signal {-exit_code}")
    if result is None:
        return Verdict(Outcome.TRANSIENT, f"exit code {exit_code} without a result")
    return Verdict(Outcome.TRANSIENT, f"error result ({result.subtype}), exit code {exit_code}")
