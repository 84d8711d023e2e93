"""The Claude Code CLI's stream-json output, parsed without I/O.

``StreamParser`` takes the lines of one CLI run (``claude -p --output-format stream-json
--verbose [--include-partial-messages]``) and turns them into ``ClaudeEvent``s; it remembers the
session id from ``init``, the assistant text accumulated so far, and the final ``result``.
``classify`` decides, from the result object, the exit code and the stderr tail, whether a run
succeeded and, if not, what kind of failure it was. Raw CLI JSON never leaves this package.

Text accumulation (``answer_text.AnswerText``): with ``--include-partial-messages`` the
``stream_event`` ``text_delta`` lines give token-level text; the complete ``assistant`` lines that
follow (one per content block) replace the streamed text of the same block, so nothing is counted
twice. Without partial messages only the ``assistant`` lines are there. The accumulated text is
every top-level text block of the turn, in order, separated by a blank line (subagent messages,
which carry a ``parent_tool_use_id``, are left out). The final answer is ``result.result``. A
delta costs time linear in its own length, not in the answer's; "text" events are
``TextEvent``s, whose text is joined only when read.

Robustness: the CLI's output is trusted to be JSON lines, not to have the shape we expect. A
field of an unexpected type (a list where an object was expected, an int for a string, a number
too large for SQLite) is ignored or takes its default; ``feed``, ``parse_result`` and ``classify``
never raise.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from feishu_bot.claude.answer_text import AnswerText, TextEvent
from feishu_bot.events import ClaudeEvent

__all__ = [
    "STALE_MARKERS",
    "Outcome",
    "ResultInfo",
    "StreamParser",
    "TextEvent",
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
_SURROGATE = re.compile("[\ud800-\udfff]")
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


_INT64 = 2**63


def _as_int(value: Any, default: int = 0) -> int:
    """An int from a JSON number or numeric string; `default` for anything else, including
    values SQLite could not store (beyond 64 bits) and inf/nan."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if -_INT64 <= number < _INT64 else default


def _as_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _clean(text: str) -> str:
    """`text` without lone surrogates (valid JSON ``"\\ud800"``), which no UTF-8 encoder,
    SQLite or Feishu request accepts: each becomes U+FFFD."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def _session_id(value: Any) -> str | None:
    """A session id the CLI can be given back (`--resume`): a non-empty encodable string."""
    if isinstance(value, str) and value and not _SURROGATE.search(value):
        return value
    return None


def _str(value: Any) -> str:
    """A JSON string (cleaned); "" for anything else (never the repr of a structure)."""
    return _clean(value) if isinstance(value, str) else ""


def _ident(value: Any) -> str:
    """An id: a JSON string as is, an integer as its digits; "" for anything else."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _INT64:
        return str(value)
    return ""


def _scalar(value: Any, limit: int = 200) -> str:
    """A string or number as a short string (ids, statuses); "" for structures and null."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float):
        return str(value) if abs(value) < 1e18 else ""
    if isinstance(value, str):
        return _clean(value if len(value) <= limit else value[: limit - 1] + "…")
    return ""


def _error_strings(value: Any) -> tuple[str, ...]:
    """`errors` as strings: a string, or a list of strings (or of objects with a message)."""
    if isinstance(value, str):
        return (_clean(value),)
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        if isinstance(item, dict):
            item = item.get("message") or item.get("error")
        if isinstance(item, str):
            out.append(_clean(item))
    return tuple(out)


def parse_result(obj: Any) -> ResultInfo:
    """Reduce a ``{"type": "result", ...}`` object to ``ResultInfo``.

    Missing fields, and fields of an unexpected type, take their defaults; never raises.
    """
    if not isinstance(obj, dict):
        obj = {}
    denials = []
    raw_denials = obj.get("permission_denials")
    for item in raw_denials if isinstance(raw_denials, list) else ():
        if isinstance(item, dict):
            denials.append(_scalar(item.get("tool_name")) or _scalar(item.get("name")) or "?")
        elif isinstance(item, str):
            denials.append(_clean(item))
    status = _as_int(obj.get("api_error_status"), -1)
    return ResultInfo(
        text=_str(obj.get("result")),
        is_error=bool(obj.get("is_error")),  # an unclear value is not a success
        subtype=_scalar(obj.get("subtype")),
        errors=_error_strings(obj.get("errors")),
        session_id=_session_id(obj.get("session_id")),
        cost_usd=_as_float(obj.get("total_cost_usd")),
        duration_ms=_as_int(obj.get("duration_ms")),
        num_turns=_as_int(obj.get("num_turns")),
        api_error_status=status if status >= 0 else None,
        terminal_reason=_scalar(obj.get("terminal_reason")),
        permission_denials=tuple(denials),
    )


def tool_detail(tool_input: Any, limit: int = 200) -> str:
    """A one-line summary of a tool call's input (the command, the file, ...)."""
    if not isinstance(tool_input, dict):
        return ""
    for key in _DETAIL_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            line = " ".join(_clean(value).split())
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


class StreamParser:
    """State of one CLI run's stdout; feed it lines, get events.

    Not thread-safe; one instance per CLI run. Malformed or non-JSON lines are counted in
    ``bad_lines`` and otherwise ignored (the CLI may print warnings on stdout); so is anything
    of an unexpected shape inside a valid line: ``feed`` never raises.

    Cost: a text delta costs O(len(delta)) (``_TextLog``), however long the answer already is.
    """

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.init_seen = False
        self.result: ResultInfo | None = None
        self.bad_lines = 0
        self.api_retries = 0
        self.tools_used: list[str] = []
        self._answer = AnswerText()
        self._current_stream_msg: str | None = None
        self._seen_tool_ids: set[str] = set()
        self._anon = 0

    @property
    def text(self) -> str:
        """Assistant text of this run so far (all top-level text blocks)."""
        return self._answer.text

    def feed(self, line: bytes | str) -> list[ClaudeEvent]:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.strip()
        if not line:
            return []
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            self.bad_lines += 1
            return []
        return self.feed_object(obj)

    def feed_object(self, obj: Any) -> list[ClaudeEvent]:
        if not isinstance(obj, dict):
            self.bad_lines += 1
            return []
        kind = obj.get("type")
        sid = _session_id(obj.get("session_id"))
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
        return [ClaudeEvent("other", self.session_id, "", _scalar(kind))]

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
                f"attempt {_scalar(obj.get('attempt'))}/{_scalar(obj.get('max_retries'))}: "
                f"{_scalar(obj.get('error_status'))} {_scalar(obj.get('error'))}".rstrip()
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
            message = event.get("message")
            msg_id = _ident(message.get("id")) if isinstance(message, dict) else ""
            msg_id = msg_id or _ident(obj.get("api_message_id"))
            self._current_stream_msg = msg_id or self._anon_id()
            self._answer.open_message(self._current_stream_msg)
            return []
        msg_id = _ident(obj.get("api_message_id")) or self._current_stream_msg
        if not msg_id:
            msg_id = self._current_stream_msg = self._anon_id()
        index = _as_int(event.get("index"), -1)
        changed = False
        if etype == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                changed = self._answer.start_block(msg_id, index, _str(block.get("text")))
        elif etype == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                changed = self._answer.delta(msg_id, index, _str(delta.get("text")))
        return self._text_event("stream_event") if changed else []

    def _assistant(self, obj: dict[str, Any]) -> list[ClaudeEvent]:
        if obj.get("parent_tool_use_id"):
            return []
        message = obj.get("message")
        if not isinstance(message, dict):
            return []
        msg_id = _ident(message.get("id")) or _ident(obj.get("uuid")) or self._anon_id()
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            return []
        events: list[ClaudeEvent] = []
        self._answer.open_message(msg_id)
        changed = False
        before, rebuilds = self._answer.snapshot(), self._answer.rebuilds
        for block in content:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                changed = self._answer.final_block(msg_id, _str(block.get("text"))) or changed
            elif btype == "tool_use":
                tool_id = _ident(block.get("id"))
                if tool_id and tool_id in self._seen_tool_ids:
                    continue
                self._seen_tool_ids.add(tool_id)
                name = _scalar(block.get("name")) or "?"
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
        if changed and self._answer.rebuilds != rebuilds:
            # A block replaced in the middle: the line as a whole may have changed nothing.
            changed = self._answer.text != (before() if before else "")
        if changed:  # one text event for the line (its latest text), before its tools
            events = self._text_event("assistant") + events
        return events

    # ------------------------------------------------------------------ helpers
    def _anon_id(self) -> str:
        self._anon += 1
        return f"_anon{self._anon}"

    def _text_event(self, raw_type: str) -> list[ClaudeEvent]:
        source = self._answer.snapshot()
        if source is None:
            return []
        return [TextEvent("text", self.session_id, source, raw_type)]


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
