"""The pure stream-json parser and the failure classifier, on real CLI output (2.1.329)."""

from __future__ import annotations

import json
import statistics
import tracemalloc

import pytest

from feishu_bot.claude.protocol import (
    Outcome,
    ResultInfo,
    StreamParser,
    classify,
    parse_result,
    tool_detail,
)
from tests.claude.support import SAMPLES


def sample_lines(name: str) -> tuple[list[str], dict | None]:
    """The JSON lines of a sample and the hand-added ``_exit_code``/``_stderr`` record."""
    lines, trailer = [], None
    for line in (SAMPLES / name).read_text().splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if "_exit_code" in obj:
            trailer = obj
        else:
            lines.append(line)
    return lines, trailer


def feed_all(parser: StreamParser, lines: list[str]) -> list:
    events = []
    for line in lines:
        events.extend(parser.feed(line))
    return events


def test_plain_stream_gives_init_text_result() -> None:
    lines, _ = sample_lines("a_stream_json_hello.jsonl")
    parser = StreamParser()
    events = feed_all(parser, lines)
    assert [e.kind for e in events] == ["init", "text", "result"]
    assert events[0].session_id == "e2e77fe8-1f8e-4fac-b749-58edb2de2af8"
    assert parser.session_id == events[0].session_id
    assert events[1].text == "echo: hello"
    assert parser.result is not None
    assert parser.result.text == "echo: hello"
    assert parser.result.is_error is False
    assert parser.result.num_turns == 1
    assert parser.result.cost_usd == pytest.approx(0.010436)
    assert parser.result.duration_ms == 67
    assert classify(exit_code=0, result=parser.result, stderr="").outcome is Outcome.OK


def test_partial_messages_stream_tokens_without_double_counting() -> None:
    lines, _ = sample_lines("b_stream_json_partial.jsonl")
    parser = StreamParser()
    events = feed_all(parser, lines)
    texts = [e.text for e in events if e.kind == "text"]
    # token deltas accumulate; the complete assistant line that follows changes nothing
    assert texts == ["echo: ", "echo: hello ", "echo: hello partial"]
    assert parser.text == "echo: hello partial"
    assert events[-1].kind == "result"
    assert parser.result is not None and parser.result.text == "echo: hello partial"


def test_tool_use_turn_accumulates_every_text_block_and_reports_the_tool() -> None:
    lines, _ = sample_lines("f_tool_use_bash.jsonl")
    parser = StreamParser()
    events = feed_all(parser, lines)
    tools = [e for e in events if e.kind == "tool"]
    assert [(t.text, t.detail) for t in tools] == [
        ("Bash", "echo hello-from-tool > out.txt && pwd")
    ]
    assert parser.text == "I'll write the file.\n\ndone"
    assert parser.result is not None and parser.result.text == "done"
    assert parser.result.num_turns == 2
    assert parser.tools_used == ["Bash"]


def test_resumed_turn_keeps_the_session_id() -> None:
    lines, _ = sample_lines("c_stream_json_resume.jsonl")
    parser = StreamParser()
    feed_all(parser, lines)
    assert parser.session_id == "e2e77fe8-1f8e-4fac-b749-58edb2de2af8"
    assert parser.result is not None and parser.result.text == "echo: again"


def test_stale_resume_is_classified_stale_from_stderr_or_errors() -> None:
    lines, trailer = sample_lines("d_stale_resume.jsonl")
    assert trailer is not None
    parser = StreamParser()
    events = feed_all(parser, lines)
    assert [e.kind for e in events] == ["result"]
    assert parser.init_seen is False
    result = parser.result
    assert result is not None and result.is_error
    assert result.subtype == "error_during_execution"
    verdict = classify(exit_code=trailer["_exit_code"], result=result, stderr=trailer["_stderr"])
    assert verdict.outcome is Outcome.STALE
    # either signal alone is enough
    assert classify(exit_code=1, result=None, stderr=trailer["_stderr"]).outcome is Outcome.STALE
    assert classify(exit_code=1, result=result, stderr="").outcome is Outcome.STALE


def test_invalid_resume_value_counts_as_stale() -> None:
    stderr = (
        "Error: --resume requires a valid session ID or session title when used with --print. "
        'Usage: claude -p --resume <session-id|title>. Provided value "x" is not a UUID'
    )
    assert classify(exit_code=1, result=None, stderr=stderr).outcome is Outcome.STALE


def test_api_error_after_cli_retries_is_transient() -> None:
    lines, trailer = sample_lines("e_529_exhausted.jsonl")
    parser = StreamParser()
    events = feed_all(parser, lines)
    assert "api_retry" in [e.kind for e in events]
    assert parser.api_retries == 1
    result = parser.result
    assert result is not None and result.is_error
    assert result.api_error_status == 529
    assert result.terminal_reason == "api_error"
    verdict = classify(exit_code=1, result=result, stderr=trailer["_stderr"])
    assert verdict.outcome is Outcome.TRANSIENT
    assert "529" in verdict.reason


def test_cli_internal_retries_that_end_well_are_ok() -> None:
    lines, _ = sample_lines("e_529_twice_then_ok.jsonl")
    parser = StreamParser()
    events = feed_all(parser, lines)
    retries = [e for e in events if e.kind == "api_retry"]
    assert len(retries) == 2
    assert retries[0].text.startswith("attempt 1/10: 529")
    assert classify(exit_code=0, result=parser.result, stderr="").outcome is Outcome.OK


def _result(**fields: object) -> ResultInfo:
    base = {"type": "result", "subtype": "success", "is_error": True, "session_id": "s"}
    return parse_result({**base, **fields})


@pytest.mark.parametrize(
    ("exit_code", "result", "stderr", "outcome"),
    [
        # SIGINT: exit 0 but is_error -> not a success
        (0, _result(subtype="error_during_execution"), "", Outcome.TRANSIENT),
        # success is judged by the result, even with a non-zero exit code
        (1, _result(is_error=False, result="fine"), "", Outcome.OK),
        (1, _result(subtype="error_max_turns", terminal_reason="max_turns"), "", Outcome.PERMANENT),
        (1, _result(subtype="error_max_budget_usd"), "", Outcome.PERMANENT),
        (
            1,
            None,
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for "
            "security reasons\n",
            Outcome.PERMANENT,
        ),
        (1, None, "error: unknown option '--bogus'\n", Outcome.PERMANENT),
        (
            1,
            None,
            "error: option '--permission-mode <mode>' argument 'x' is invalid.\n",
            Outcome.PERMANENT,
        ),
        (
            1,
            None,
            "Error: Input must be provided either through stdin or as a prompt argument when "
            "using --print\n",
            Outcome.PERMANENT,
        ),
        (1, _result(api_error_status=401, terminal_reason="api_error"), "", Outcome.PERMANENT),
        (1, _result(api_error_status=500, terminal_reason="api_error"), "", Outcome.TRANSIENT),
        (-9, None, "", Outcome.TRANSIENT),
        (143, None, "", Outcome.TRANSIENT),
        (1, None, "TypeError: boom\n", Outcome.TRANSIENT),
        (0, None, "", Outcome.TRANSIENT),
    ],
)
def test_classify(exit_code: int, result: ResultInfo | None, stderr: str, outcome: Outcome) -> None:
    assert classify(exit_code=exit_code, result=result, stderr=stderr).outcome is outcome


def test_garbage_lines_are_counted_and_ignored() -> None:
    parser = StreamParser()
    assert parser.feed(b"not json at all") == []
    assert parser.feed("[1, 2]") == []
    assert parser.feed("") == []
    assert parser.bad_lines == 2
    events = parser.feed('{"type": "brand_new_kind"}')
    assert [e.kind for e in events] == ["other"]


def test_subagent_text_is_not_part_of_the_answer() -> None:
    parser = StreamParser()
    parser.feed(json.dumps({"type": "system", "subtype": "init", "session_id": "s1"}))
    sub = {
        "type": "assistant",
        "parent_tool_use_id": "toolu_1",
        "message": {"id": "m-sub", "content": [{"type": "text", "text": "inner"}]},
    }
    top = {"type": "assistant", "message": {"id": "m1", "content": [{"type": "text", "text": "A"}]}}
    assert parser.feed(json.dumps(sub)) == []
    events = parser.feed(json.dumps(top))
    assert [(e.kind, e.text) for e in events] == [("text", "A")]


def test_bytes_and_multibyte_text() -> None:
    parser = StreamParser()
    message = {"id": "m", "content": [{"type": "text", "text": "你好"}]}
    line = json.dumps({"type": "assistant", "message": message}, ensure_ascii=False).encode()
    assert parser.feed(line)[0].text == "你好"


def test_tool_detail_summaries() -> None:
    assert tool_detail({"command": "ls   -la\n/tmp"}) == "ls -la /tmp"
    assert tool_detail({"file_path": "/a/b.py", "content": "x"}) == "/a/b.py"
    assert tool_detail({"other": 1}) == ""
    assert tool_detail("nope") == ""
    assert len(tool_detail({"command": "x" * 500})) == 200


def test_not_logged_in_is_permanent_not_retried() -> None:
    # the real 2.1.329 result line without any credentials (exit 1)
    line = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": "Not logged in · Please run /login",
        "terminal_reason": "api_error",
        "api_error_status": None,
        "session_id": "c5ad1c98-0b2a-4111-bc23-34b1b693c0a0",
    }
    verdict = classify(exit_code=1, result=parse_result(line), stderr="")
    assert verdict.outcome is Outcome.PERMANENT
    assert "ANTHROPIC_API_KEY" in verdict.reason


# -- #10: valid JSON of an unexpected shape is ignored, never raised on ---------------------------

UNEXPECTED_SHAPES = [
    {"type": "stream_event", "event": {"type": "message_start", "message": ["not", "a", "dict"]}},
    {"type": "stream_event", "event": {"type": "content_block_start", "content_block": "text"}},
    {"type": "stream_event", "event": {"type": "content_block_start", "content_block": [1]}},
    {"type": "stream_event", "event": {"type": "content_block_delta", "delta": "text_delta"}},
    {"type": "stream_event", "event": {"type": "content_block_delta", "delta": 7, "index": 0}},
    {
        "type": "stream_event",
        "event": {"type": "content_block_delta", "index": 1e308, "delta": {"type": "text_delta"}},
    },
    {"type": "stream_event", "event": {"type": "content_block_delta", "index": float("inf")}},
    {"type": "stream_event", "api_message_id": {"id": 1}, "event": {"type": "content_block_stop"}},
    {"type": "assistant", "message": "hello"},
    {"type": "assistant", "message": {"id": ["x"], "content": [{"type": "text", "text": 5}]}},
    {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": {}, "name": []}]}},
    {"type": "system", "subtype": "api_retry", "attempt": [[[]]], "error": {"a": 1}},
    {"type": "system", "subtype": "init", "session_id": 42},
    {"type": "system", "subtype": "init", "session_id": "s\ud800"},
    {"type": ["result"]},
    {"type": "result", "errors": 3, "permission_denials": 1, "total_cost_usd": "x"},
    {"type": "result", "errors": {"a": 1}, "permission_denials": {"b": 2}, "session_id": [1]},
    {"type": "result", "duration_ms": 10**30, "num_turns": float("nan"), "api_error_status": "x"},
    {"type": "result", "total_cost_usd": float("inf"), "api_error_status": 1e300, "result": 1},
]


@pytest.mark.parametrize("obj", UNEXPECTED_SHAPES)
def test_unexpected_shape_is_ignored(obj: dict) -> None:
    parser = StreamParser()
    parser.feed(json.dumps({"type": "system", "subtype": "init", "session_id": "s"}))
    events = parser.feed(json.dumps(obj))
    assert all(isinstance(e.text, str) for e in events)
    assert parser.session_id == "s"
    if parser.result is not None:  # everything the store writes fits SQLite
        assert -(2**63) <= parser.result.duration_ms < 2**63
        assert -(2**63) <= parser.result.num_turns < 2**63
        assert parser.result.cost_usd == parser.result.cost_usd != float("inf")
        assert parser.result.api_error_status is None
        assert all(isinstance(e, str) for e in parser.result.errors)
        classify(exit_code=1, result=parser.result, stderr="")


def test_unexpected_shape_lone_surrogate_is_replaced() -> None:
    """JSON may escape a lone surrogate; no UTF-8 encoder (SQLite, Feishu) takes one."""
    parser = StreamParser()
    message = {"id": "m", "content": [{"type": "text", "text": "a\ud800b"}]}
    [event] = parser.feed(json.dumps({"type": "assistant", "message": message}))
    assert event.text == "a\ufffdb"
    parser.feed(json.dumps({"type": "result", "result": "x\udfffy", "errors": ["\ud83d"]}))
    assert parser.result is not None
    assert parser.result.text == "x\ufffdy"
    assert parser.result.errors == ("\ufffd",)


def test_unexpected_shape_deeply_nested_line() -> None:
    parser = StreamParser()
    assert parser.feed("[" * 100_000 + "]" * 100_000) == []
    assert parser.feed('{"type": ' + "[" * 100_000 + "]" * 100_000 + "}") == []
    assert parser.bad_lines == 2


# -- #11: the cost of a streamed delta does not grow with the answer ------------------------------


def _text_delta_lines(count: int, piece: str) -> list[str]:
    event = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
    event["delta"]["text"] = piece
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    return [
        json.dumps({"type": "stream_event", "event": {"type": "message_start", "message": {}}}),
        json.dumps({"type": "stream_event", "event": start}),
        *[json.dumps({"type": "stream_event", "event": event})] * count,
    ]


def test_quadratic_streaming_cost() -> None:
    """Bytes allocated while feeding one delta (tracemalloc: deterministic, unlike time) are
    the same for the last deltas of an 8000-delta answer as for the first ones. The old parser
    re-joined the whole answer for every delta: 26x more at the end, quadratic in total."""
    piece = "x" * 24 + "\n"
    lines = _text_delta_lines(8000, piece)
    parser = StreamParser()
    events = []
    allocated = []
    tracemalloc.start()
    try:
        for line in lines:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            events.extend(parser.feed(line))  # kept: an event must not hold a copy of the text
            allocated.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    first, last = statistics.median(allocated[2:502]), statistics.median(allocated[-500:])
    assert last <= 2 * first, (first, last)
    assert len(events) == 8000
    assert parser.text == events[-1].text == piece * 8000
    assert events[100].text == piece * 101  # an early event still reads its own moment
    assert parser.text is parser.text  # read twice, joined once
