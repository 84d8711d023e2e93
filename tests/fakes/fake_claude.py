#!/usr/bin/env python3
"""A fake ``claude`` CLI speaking the stream-json protocol of Claude Code 2.1.329.

Point ``CLAUDE_BIN`` (or ``LauncherConfig.bin``) at this file. ``--version`` prints
``2.1.329 (Claude Code)`` like the real one. It accepts the options the bot uses (``-p
--output-format stream-json --verbose --include-partial-messages --resume ID --fork-session
--permission-mode M --allowedTools ... --model M --max-turns N``), reads the prompt from stdin
(or a positional argument), and prints lines shaped like the real samples in
``tests/claude/samples`` (copied from ``/work/shared/samples/claude-cli``). Unknown options
fail like the real CLI (``error: unknown option '--x'``, exit 1); bypass permissions as root
without ``IS_SANDBOX`` fails with the real message.

Sessions are kept where the real CLI keeps them (``$HOME/.claude/projects/<cwd>/<id>.jsonl``, one
JSON object per message). ``--resume`` of an unknown id fails exactly like the real CLI (result
``error_during_execution``, stderr ``No conversation found with session ID: <id>``, exit 1);
``--resume`` keeps the session id and appends, ``--fork-session`` copies into a new id. Like the
real CLI the user's prompt is written to the session before the "API call", so a failed attempt
leaves it there.

Environment:

- ``FAKE_CLAUDE_MODE``: one mode, or a comma-separated sequence used run by run (run *n* uses
  item *n*, the last item repeats; needs ``FAKE_CLAUDE_STATE``). A prompt containing
  ``[[fake:MODE]]`` overrides it for that run. Modes:

  ``echo`` (default) answer ``echo: <prompt>``; ``history`` answer ``history: p1 | p2 | ...``
  (every user prompt in the session, this one included); ``slow`` echo in small chunks with
  ``FAKE_CLAUDE_DELAY`` s (default 0.05) between them; ``hang`` init + some text, then wait
  forever; ``hang_before_init`` wait before printing anything; ``hang_ignore_term`` like hang but
  SIGTERM is ignored; ``stale`` every ``--resume`` fails as stale; ``api_error`` the API failed
  after the CLI's own retries (529, exit 1); ``crash`` exit 1 without a result line;
  ``sigkill`` die by SIGKILL; ``spawn_child`` start a grandchild in its own session (setsid) and
  a child in the CLI's process group, log both pids, then hang; ``big_line`` print one
  ``FAKE_CLAUDE_BIG_BYTES`` (default 1 MiB) tool_result line, then echo; ``gate`` wait after
  init until the file ``FAKE_CLAUDE_GATE`` (default ``$HOME/gate``) exists, then echo;
  ``tool`` one Bash tool_use round, then echo; ``max_turns`` result ``error_max_turns`` (exit 1);
  ``root_bypass`` the root + bypass refusal (exit 1); ``bad_arg`` an unknown-option error.
- ``FAKE_CLAUDE_LOG``: a file to which one JSON line is appended per event: ``start`` (once
  the prompt is read, before any output), ``exit`` (last thing, also on SIGTERM/SIGINT),
  ``child`` (with ``child_pid``, ``grandchild_pid``); each with ``pid``, ``time``
  (``time.time()``), ``mono`` (``time.monotonic()``, comparable across processes on Linux),
  ``argv``, ``mode``, ``resume``, ``prompt_len``, ``prompt_head`` (first 80 characters).
- ``FAKE_CLAUDE_STATE``: a counter file for mode sequences (locked, safe for parallel runs).
- ``FAKE_CLAUDE_SESSION_ID``: use this id for a new session instead of a random one.

SIGTERM ends the run with exit 143 and no result line; SIGINT prints an ``is_error`` result and
exits 0 (both measured on the real CLI).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

VERSION = "2.1.329"
MODEL = "claude-opus-5-5"
STALE_MESSAGE = "No conversation found with session ID: {sid}"
ROOT_MESSAGE = (
    "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
)

_LOG = os.environ.get("FAKE_CLAUDE_LOG")
_STATE: dict[str, Any] = {
    "mode": "",
    "resume": None,
    "session_id": None,
    "prompt_len": 0,
    "prompt_head": "",
}


def log(event: str, **fields: Any) -> None:
    if not _LOG:
        return
    record = {
        "event": event,
        "pid": os.getpid(),
        "time": time.time(),
        "mono": time.monotonic(),
        "argv": sys.argv[1:],
        "mode": _STATE["mode"],
        "resume": _STATE["resume"],
        "prompt_len": _STATE["prompt_len"],
        "prompt_head": _STATE["prompt_head"],
        **fields,
    }
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(obj, ensure_ascii=False).encode() + b"\n")
    sys.stdout.buffer.flush()


def finish(code: int, **fields: Any) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    log("exit", code=code, **fields)
    os._exit(code)


def hang_forever() -> None:
    while True:
        time.sleep(3600)


# --------------------------------------------------------------------------- arguments
_FLAGS = {
    "-p",
    "--print",
    "--verbose",
    "--include-partial-messages",
    "--fork-session",
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
}
_VALUED = {
    "--output-format",
    "--input-format",
    "--resume",
    "-r",
    "--permission-mode",
    "--model",
    "--max-turns",
    "--session-id",
    "--append-system-prompt",
    "--system-prompt",
    "--fallback-model",
    "--settings",
    "--effort",
}
_VARIADIC = {
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--add-dir",
    "--tools",
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    if argv[:1] in (["--version"], ["-v"]):
        sys.stdout.write(f"{VERSION} (Claude Code)\n")
        finish(0)
    opts: dict[str, Any] = {"flags": set(), "positional": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and "=" in arg and arg.startswith("--"):
            name, value = arg.split("=", 1)
            argv = [*argv[:i], name, value, *argv[i + 1 :]]
            arg = name
        if arg in _FLAGS:
            opts["flags"].add(arg)
        elif arg in _VALUED:
            if i + 1 >= len(argv):
                sys.stderr.write(f"error: option '{arg} <value>' argument missing\n")
                finish(1)
            opts[arg.lstrip("-")] = argv[i + 1]
            i += 1
        elif arg in _VARIADIC:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values.append(argv[i + 1])
                i += 1
            opts[arg.lstrip("-")] = values
        elif arg.startswith("-") and arg != "-":
            sys.stderr.write(f"error: unknown option '{arg}'\n")
            finish(1)
        else:
            opts["positional"].append(arg)
        i += 1
    if "r" in opts:
        opts["resume"] = opts.pop("r")
    return opts


# --------------------------------------------------------------------------- sessions
def session_dir(cwd: str) -> Path:
    home = Path(os.environ.get("HOME", "/tmp"))
    munged = "".join(c if c.isalnum() else "-" for c in cwd)
    return home / ".claude" / "projects" / munged


def session_path(cwd: str, sid: str) -> Path:
    return session_dir(cwd) / f"{sid}.jsonl"


def load_session(cwd: str, sid: str) -> list[dict[str, Any]] | None:
    path = session_path(cwd, sid)
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_session(cwd: str, sid: str, *records: dict[str, Any]) -> None:
    path = session_path(cwd, sid)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def pick_mode(prompt: str) -> str:
    marker = prompt.find("[[fake:")
    if marker >= 0:
        end = prompt.find("]]", marker)
        if end > marker:
            return prompt[marker + 7 : end].strip()
    modes = [m.strip() for m in os.environ.get("FAKE_CLAUDE_MODE", "echo").split(",") if m.strip()]
    if not modes:
        return "echo"
    state = os.environ.get("FAKE_CLAUDE_STATE")
    if len(modes) == 1 or not state:
        return modes[0]
    fd = os.open(state, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64).decode().strip()
        run = int(raw) if raw else 0
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(run + 1).encode())
    finally:
        os.close(fd)
    return modes[min(run, len(modes) - 1)]


# --------------------------------------------------------------------------- output shapes
def init_line(sid: str, cwd: str, opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "system",
        "subtype": "init",
        "cwd": cwd,
        "session_id": sid,
        "tools": ["Task", "Bash", "Edit", "Read", "Write"],
        "mcp_servers": [],
        "model": opts.get("model") or MODEL,
        "permissionMode": opts.get("permission-mode", "default"),
        "apiKeySource": "ANTHROPIC_API_KEY",
        "claude_code_version": VERSION,
        "output_style": "default",
        "uuid": str(uuid.uuid4()),
        "original_cwd": cwd,
    }


def usage() -> dict[str, Any]:
    return {
        "input_tokens": 2562,
        "output_tokens": 11,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def stream_event(sid: str, msg_id: str, event: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "stream_event",
        "event": event,
        "session_id": sid,
        "parent_tool_use_id": None,
        "uuid": str(uuid.uuid4()),
        "api_message_id": msg_id,
    }


def assistant_line(sid: str, msg_id: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "assistant",
        "message": {
            "id": msg_id,
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
        "uuid": str(uuid.uuid4()),
        "request_id": "req_fake_000001",
    }


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
        "uuid": str(uuid.uuid4()),
        "result_index": 0,
    }
    if text is not None:
        line["result"] = text
    line.update(extra)
    return line


def stream_text(sid: str, text: str, *, partial: bool, chunks: int, delay: float) -> str:
    """Print one assistant text message (token deltas first when ``partial``)."""
    msg_id = f"msg_fake_{uuid.uuid4().hex[:24]}"
    if partial:
        emit(
            {
                "type": "system",
                "subtype": "status",
                "status": "requesting",
                "session_id": sid,
                "uuid": str(uuid.uuid4()),
            }
        )
        emit(
            stream_event(
                sid,
                msg_id,
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": MODEL,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage(),
                    },
                },
            )
        )
        emit(
            stream_event(
                sid,
                msg_id,
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        size = max(1, -(-len(text) // max(1, chunks)))
        for start in range(0, len(text), size):
            if delay:
                time.sleep(delay)
            emit(
                stream_event(
                    sid,
                    msg_id,
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": text[start : start + size]},
                    },
                )
            )
    elif delay:
        time.sleep(delay * chunks)
    emit(assistant_line(sid, msg_id, [{"type": "text", "text": text}]))
    if partial:
        emit(stream_event(sid, msg_id, {"type": "content_block_stop", "index": 0}))
        emit(
            stream_event(
                sid,
                msg_id,
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 11},
                },
            )
        )
        emit(stream_event(sid, msg_id, {"type": "message_stop"}))
    return msg_id


# --------------------------------------------------------------------------- signals
def on_term(signum: int, frame: Any) -> None:
    finish(143, signal="SIGTERM")


def on_int(signum: int, frame: Any) -> None:
    sid = _STATE.get("session_id") or str(uuid.uuid4())
    emit(
        result_line(
            sid,
            text="",
            is_error=True,
            subtype="error_during_execution",
            errors=["Request was aborted."],
            terminal_reason="aborted_streaming",
        )
    )
    finish(0, signal="SIGINT")


def spawn_sleeper(new_session: bool) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(60)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    return proc.pid


# --------------------------------------------------------------------------- main
def main() -> None:
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    opts = parse_args(sys.argv[1:])
    flags = opts["flags"]
    prompt = " ".join(opts["positional"])
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.buffer.read().decode("utf-8", "replace")
    _STATE["prompt_len"] = len(prompt)
    _STATE["prompt_head"] = prompt[:80]
    log("start")  # before any output: [start, exit] lies inside the launcher's [spawn, reap]
    mode = pick_mode(prompt)
    _STATE["mode"] = mode
    resume = opts.get("resume")
    _STATE["resume"] = resume
    cwd = os.getcwd()
    partial = "--include-partial-messages" in flags
    delay = float(os.environ.get("FAKE_CLAUDE_DELAY", "0.05"))

    if mode == "bad_arg":
        sys.stderr.write("error: unknown option '--fake-bad-option'\n")
        finish(1)
    bypass = (
        "--dangerously-skip-permissions" in flags
        or opts.get("permission-mode") == "bypassPermissions"
    )
    if mode == "root_bypass" or (bypass and os.geteuid() == 0 and not os.environ.get("IS_SANDBOX")):
        sys.stderr.write(ROOT_MESSAGE + "\n")
        finish(1)
    if mode == "hang_before_init":
        hang_forever()
    if not prompt.strip():
        sys.stderr.write(
            "Error: Input must be provided either through stdin or as a prompt "
            "argument when using --print\n"
        )
        finish(1)

    history: list[dict[str, Any]] = []
    if resume:
        loaded = None if mode == "stale" else load_session(cwd, resume)
        if loaded is None:
            emit(
                result_line(
                    resume,
                    text=None,
                    is_error=True,
                    subtype="error_during_execution",
                    num_turns=0,
                    duration_ms=0,
                    total_cost_usd=0,
                    stop_reason=None,
                    errors=[STALE_MESSAGE.format(sid=resume)],
                )
            )
            sys.stderr.write(STALE_MESSAGE.format(sid=resume) + "\n")
            finish(1)
        history = loaded
        if "--fork-session" in flags:
            sid = str(uuid.uuid4())
            append_session(cwd, sid, *history)
        else:
            sid = resume
    else:
        sid = os.environ.get("FAKE_CLAUDE_SESSION_ID") or str(uuid.uuid4())
    _STATE["session_id"] = sid
    emit(init_line(sid, cwd, opts))
    # Like the real CLI: the prompt is in the transcript before the API is asked.
    append_session(cwd, sid, {"role": "user", "text": prompt})
    prompts = [rec["text"] for rec in history if rec.get("role") == "user"] + [prompt]

    if mode == "gate":
        # Block until the gate file exists: lets a test decide when this run finishes.
        gate = Path(os.environ.get("FAKE_CLAUDE_GATE") or Path(os.environ["HOME"]) / "gate")
        while not gate.exists():
            time.sleep(0.01)
    if mode == "hang_ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode in ("hang", "hang_ignore_term", "spawn_child"):
        if mode == "spawn_child":
            grandchild = spawn_sleeper(new_session=True)
            child = spawn_sleeper(new_session=False)
            log("child", child_pid=child, grandchild_pid=grandchild)
        msg_id = f"msg_fake_{uuid.uuid4().hex[:24]}"
        if partial:
            emit(
                stream_event(
                    sid,
                    msg_id,
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            emit(
                stream_event(
                    sid,
                    msg_id,
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "working"},
                    },
                )
            )
        else:
            emit(assistant_line(sid, msg_id, [{"type": "text", "text": "working"}]))
        hang_forever()
    if mode == "api_error":
        emit(
            {
                "type": "system",
                "subtype": "api_retry",
                "attempt": 1,
                "max_retries": 1,
                "retry_delay_ms": 581,
                "error_status": 529,
                "error": "overloaded",
                "session_id": sid,
                "uuid": str(uuid.uuid4()),
            }
        )
        text = (
            "API Error: 529 Overloaded. This is a server-side issue, usually temporary — "
            "try again in a moment."
        )
        line = assistant_line(sid, str(uuid.uuid4()), [{"type": "text", "text": text}])
        line.update(error="server_error", is_api_error_message=True, api_error_status=529)
        emit(line)
        append_session(cwd, sid, {"role": "assistant", "text": text, "synthetic": True})
        emit(
            result_line(
                sid,
                text=text,
                is_error=True,
                api_error_status=529,
                api_error_type="overloaded_error",
                terminal_reason="api_error",
                stop_reason="stop_sequence",
            )
        )
        finish(1)
    if mode == "crash":
        stream_text(sid, "partial answer", partial=partial, chunks=1, delay=0)
        sys.stderr.write(
            "TypeError: Cannot read properties of undefined (reading 'x')\n"
            "    at fake (file:///fake/cli.js:1:1)\n"
        )
        finish(1)
    if mode == "sigkill":
        log("exit", code=-9)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "max_turns":
        emit(
            result_line(
                sid,
                text=None,
                is_error=True,
                subtype="error_max_turns",
                terminal_reason="max_turns",
                num_turns=2,
                stop_reason="tool_use",
                errors=["Reached maximum number of turns (1)"],
            )
        )
        finish(1)
    if mode == "big_line":
        size = int(os.environ.get("FAKE_CLAUDE_BIG_BYTES", str(1024 * 1024)))
        emit(
            {
                "type": "user",
                "message": {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_fake_big",
                            "content": "x" * size,
                            "is_error": False,
                        }
                    ],
                },
                "parent_tool_use_id": None,
                "session_id": sid,
                "uuid": str(uuid.uuid4()),
            }
        )
    if mode == "tool":
        stream_text(sid, "I'll run it.", partial=partial, chunks=1, delay=0)
        emit(
            assistant_line(
                sid,
                f"msg_fake_{uuid.uuid4().hex[:24]}",
                [
                    {
                        "type": "tool_use",
                        "id": "toolu_fake_1",
                        "name": "Bash",
                        "input": {"command": "echo hi", "description": "say hi"},
                    }
                ],
            )
        )
        emit(
            {
                "type": "user",
                "message": {
                    "role": "user",
                    "content": [
                        {
                            "tool_use_id": "toolu_fake_1",
                            "type": "tool_result",
                            "content": "hi",
                            "is_error": False,
                        }
                    ],
                },
                "parent_tool_use_id": None,
                "session_id": sid,
                "uuid": str(uuid.uuid4()),
            }
        )

    if mode == "history":
        text = "history: " + " | ".join(prompts)
    else:
        text = f"echo: {prompt}"
    slow = mode == "slow"
    stream_text(sid, text, partial=partial, chunks=5 if slow else 3, delay=delay if slow else 0)
    append_session(cwd, sid, {"role": "assistant", "text": text})
    emit(result_line(sid, text=text))
    finish(0)


if __name__ == "__main__":
    main()
