#!/usr/bin/env python3
"""A fake ``claude`` CLI speaking the stream-json protocol of Claude Code 2.1.329.

Point ``CLAUDE_BIN`` (or ``LauncherConfig.bin``) at this file. ``--version`` prints
``2.1.329 (Claude Code)``. Unknown options fail like the real CLI (``error: unknown option
'--x'``, exit 1); bypass permissions as root without ``IS_SANDBOX`` fails with the real message.
The code lives in the ``fake_claude_*.py`` modules next to this script.

Two ways to run, as with the real CLI:

- **One-shot** (``-p`` without ``--input-format stream-json``): the prompt comes from stdin (or
  a positional argument); one turn; exit 0, or 1 when the result ``is_error``.
- **Stream-json input** (``--input-format stream-json``, with or without ``-p``): nothing is
  printed until the first stdin line (except the measured start-up failures below and the MCP
  handshake). Each ``{"type":"user","message":{"role":"user","content": str | [blocks]}}`` line
  is one turn: ``system/init`` again, the mode's lines, one ``result``; a message written
  during a turn waits for the next. The prompt is the text blocks joined with newlines; image
  blocks (base64) are counted, hashed into the log and saved under ``CLAUDE_CODE_TMPDIR`` like
  the real CLI does. A non-JSON line: stderr ``Error parsing streaming input line ...``, exit 1
  at once. EOF: the running turn finishes, then exit 0 (1 if the last result was an error, as
  measured). Control requests from stdin: ``interrupt`` → ``{"still_queued": []}`` and the
  running turn ends at once with ``error_during_execution`` / ``aborted_streaming`` (or
  ``aborted_tools`` while a tool or a permission request runs; a pending ``can_use_tool`` gets
  a ``control_cancel_request`` first); ``initialize`` → a success response (a short version of
  the real one); ``set_permission_mode``/``set_model`` → ``{"mode"|"model": ...}``; else an error
  response (``Unsupported control request subtype: X``, ``error_code: unsupported_request``).
  With ``--mcp-config`` naming servers of ``"type": "sdk"``, at start-up (before any input, as
  measured) each gets ``mcp_message`` ``initialize`` and ``notifications/initialized`` (both
  must be answered, each within ``FAKE_CLAUDE_MCP_TIMEOUT`` s, default 30; after an error or a
  timeout the pair is tried once more, then the server is "failed"), then ``tools/list``;
  answers must be ``{"mcp_response": <json-rpc>}``. Until then, no turn starts.

Sessions live where the real CLI keeps them (``fake_claude_session.py``). ``--resume`` of an
unknown id fails at start (result ``error_during_execution``, stderr ``No conversation found
with session ID: <id>``, exit 1); ``--fork-session`` copies once at start and later turns append
to the new id; ``--session-id`` pre-assigns (with ``--resume`` only with ``--fork-session``;
refused when in use or not a UUID, real messages); ``--resume-session-at <assistant uuid>`` cuts
the loaded history after that assistant record (unknown uuid: ``No message found with
message.uuid of: <uuid>``, exit 1). Every assistant line has a ``uuid``.

Environment:

- ``FAKE_CLAUDE_MODE``: one mode, or a comma-separated sequence used turn by turn (turn *n* of
  all processes uses item *n*, the last item repeats; needs ``FAKE_CLAUDE_STATE``). A prompt
  containing ``[[fake:MODE]]`` overrides it for that turn. Modes:

  ``echo`` (default) answer ``echo: <prompt>``; ``history`` answer ``history: p1 | p2 | ...`` (the
  prompts the model would see: the session's, this one included); ``slow`` echo in 5 chunks,
  ``FAKE_CLAUDE_DELAY`` s (default 0.05) before each, interruptible; ``hang`` init + some text, then
  wait (interruptible); ``hang_before_init`` wait before init; ``hang_ignore_term`` like hang,
  SIGTERM ignored; ``hang_deaf`` like hang, interrupts acknowledged but ignored;
  ``hang_deaf_ignore_term`` both (only SIGKILL ends it); ``stale`` a ``--resume`` fails as stale;
  ``api_error`` 529 after the CLI's retries (result ``is_error``, ``api_error_status`` 529; a
  stream-json process stays alive); ``crash`` / ``crash_mid_turn`` some text, then exit 1 without a
  result; ``die_between_turns`` a normal turn, then exit 1 ``FAKE_CLAUDE_DIE_AFTER`` s (default 0.2)
  later while idle; ``sigkill`` die by SIGKILL; ``spawn_child`` start a grandchild in its own
  session and a child in the CLI's process group, log both pids, then hang (an interrupt kills both,
  as the real CLI kills a running tool's processes); ``big_line`` one ``FAKE_CLAUDE_BIG_BYTES``
  (default 1 MiB) tool_result line, then echo; ``gate`` wait until the file ``FAKE_CLAUDE_GATE``
  (default ``$HOME/gate``) exists, then echo; ``tool`` one Bash round (no permission asked), then
  echo; ``perm`` a Bash tool_use of ``FAKE_CLAUDE_PERM_COMMAND`` (default ``touch
  made_by_tool.txt``) and a ``can_use_tool`` like the real one; allow → run with /bin/sh in the cwd,
  answer ``done after tool``; deny → answer ``tool denied: <message>``; deny with ``interrupt`` →
  ``aborted_tools``; an error response → ``tool denied: Tool permission request failed: Error:
  <error>``; stdin closed while waiting → ``... AbortError: Tool permission stream closed before
  response received`` (measured); ``ask`` an AskUserQuestion ("Pick a colour", Red/Blue), answer
  ``answered: <answers>`` from ``updatedInput["answers"]``; ``mcp`` a ``tools/call`` of
  ``FAKE_CLAUDE_MCP_TOOL`` (default ``send_file``) on ``FAKE_CLAUDE_MCP_SERVER`` (default: the first
  SDK server, else ``feishu``) with ``FAKE_CLAUDE_MCP_ARGS`` (JSON, default ``{"path":
  "out.txt"}``), answer ``mcp: <text>`` (or ``mcp error: ...``); ``unknown_control`` send a
  ``hook_callback`` control request and answer ``control: <response subtype> <error>``;
  ``edit_then_529`` append a line to ``FAKE_CLAUDE_EDIT_FILE`` (default ``<cwd>/edited.txt``)
  through an Edit tool, then fail with 529; ``max_turns`` result ``error_max_turns``;
  ``root_bypass`` the root + bypass refusal; ``bad_arg`` an unknown-option error. Permissions follow
  ``--permission-mode`` (bypassPermissions allows all, acceptEdits allows Edit/Write) and
  ``--allowedTools`` (``Bash``, ``Bash(cmd)``, ``Bash(prefix:*)``, ``mcp__server``,
  ``mcp__server__tool``); otherwise ``can_use_tool`` is sent with ``--permission-prompt-tool stdio``
  in stream-json mode, else the tool is denied.
- ``FAKE_CLAUDE_LOG``: a file to which one JSON line is appended per event, each with ``pid``,
  ``run`` (unique per process), ``time``, ``mono`` (``time.monotonic()``, comparable across
  processes), ``argv``, ``input_format``, ``mode``, ``resume``, ``session_id``, ``turn``,
  ``prompt_len``, ``prompt_head`` (first 80 characters; of the current turn). Events:
  ``start`` (first thing in stream-json mode; after reading the prompt in one-shot mode),
  ``turn_start`` (``images``, ``image_sha1``), ``turn_end`` (``subtype``, ``is_error``,
  ``terminal_reason``, ``result_text``), ``control`` (each control message received: ``type``,
  ``subtype``, ``request_id``, ``behavior``), ``tool``/``tool_done`` (a Bash command run by
  ``perm``), ``edit``, ``mcp``, ``mcp_connect``, ``control_timeout``, ``child`` (``child_pid``,
  ``grandchild_pid``), ``children_killed``, ``stdin_eof`` (``turn_active``: a turn was running
  when stdin closed), ``exit`` (last
  thing, with ``code`` and ``reason``; also on SIGTERM/SIGINT; not on SIGKILL).
- ``FAKE_CLAUDE_FAILED_TURN_KEPT``: a turn that failed with an API error stays in what the
  model sees next, as the real CLI does (re-measured on 2.1.329); ``0`` leaves it out when no
  tool ran (an older, wrong model).
- ``FAKE_CLAUDE_STATE``: a counter file for mode sequences (locked, safe for parallel runs).
- ``FAKE_CLAUDE_SESSION_ID``: use this id for a new session instead of a random one.

SIGTERM ends the process with exit 143 and no result line; SIGINT prints an ``is_error`` result
and exits 0 (both measured on the real CLI).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import os
import signal
import sys
import time
import traceback
from typing import Any

import fake_claude_tools as tools
from fake_claude_channel import Channel
from fake_claude_session import STALE_MESSAGE, Session, StartupError
from fake_claude_turn import Process, Turn
from fake_claude_wire import STATE, VERSION, emit, finish, log, result_line

ROOT_MESSAGE = (
    "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
)

# --------------------------------------------------------------------------- arguments
_FLAGS = {
    "-p",
    "--print",
    "--verbose",
    "--include-partial-messages",
    "--fork-session",
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--strict-mcp-config",
    "--replay-user-messages",
}
_VALUED = {
    "--output-format",
    "--input-format",
    "--resume",
    "-r",
    "--resume-session-at",
    "--permission-mode",
    "--permission-prompt-tool",
    "--model",
    "--max-turns",
    "--session-id",
    "--append-system-prompt",
    "--system-prompt",
    "--fallback-model",
    "--settings",
    "--setting-sources",
    "--effort",
}
_VARIADIC = {
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--add-dir",
    "--tools",
    "--mcp-config",
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    if argv[:1] in (["--version"], ["-v"]):
        sys.stdout.write(f"{VERSION} (Claude Code)\n")
        finish(0)
    opts: dict[str, Any] = {"flags": set(), "positional": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
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


def split_rules(values: list[str]) -> list[str]:
    """``--allowedTools`` values split on commas and spaces outside parentheses."""
    rules: list[str] = []
    for value in values:
        depth, word = 0, ""
        for ch in value:
            depth += ch == "("
            depth -= ch == ")"
            if ch in ", " and depth == 0:
                if word:
                    rules.append(word)
                word = ""
            else:
                word += ch
        if word:
            rules.append(word)
    return rules


# --------------------------------------------------------------------------- modes
def _modes() -> list[str]:
    raw = os.environ.get("FAKE_CLAUDE_MODE", "echo")
    return [m.strip() for m in raw.split(",") if m.strip()] or ["echo"]


def pick_mode(prompt: str, *, peek: bool = False) -> str:
    """The mode of the next turn (``peek`` reads the sequence without using up an item)."""
    marker = prompt.find("[[fake:")
    if marker >= 0:
        end = prompt.find("]]", marker)
        if end > marker:
            return prompt[marker + 7 : end].strip()
    modes = _modes()
    state = os.environ.get("FAKE_CLAUDE_STATE")
    if len(modes) == 1 or not state:
        return modes[0]
    fd = os.open(state, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64).decode().strip()
        run = int(raw) if raw else 0
        if not peek:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(run + 1).encode())
    finally:
        os.close(fd)
    return modes[min(run, len(modes) - 1)]


# --------------------------------------------------------------------------- start-up
def refuse(exc: StartupError) -> None:
    if exc.stdout_error:
        emit(
            result_line(
                exc.sid,
                text=None,
                is_error=True,
                subtype="error_during_execution",
                num_turns=0,
                duration_ms=0,
                total_cost_usd=0,
                stop_reason=None,
                errors=[exc.stdout_error],
            )
        )
    sys.stderr.write(exc.stderr + "\n")
    finish(1, reason=exc.stderr)


def check_mode_refusals(mode: str, opts: dict[str, Any]) -> None:
    """The modes (and the root rule) that make the CLI refuse before doing anything."""
    if mode == "bad_arg":
        sys.stderr.write("error: unknown option '--fake-bad-option'\n")
        finish(1)
    flags = opts["flags"]
    bypass = (
        "--dangerously-skip-permissions" in flags
        or opts.get("permission-mode") == "bypassPermissions"
    )
    if mode == "root_bypass" or (bypass and os.geteuid() == 0 and not os.environ.get("IS_SANDBOX")):
        sys.stderr.write(ROOT_MESSAGE + "\n")
        finish(1)


def open_session(opts: dict[str, Any], cwd: str, *, stale: bool) -> Session:
    try:
        return Session.open(
            cwd,
            resume=opts.get("resume"),
            fork="--fork-session" in opts["flags"],
            at_uuid=opts.get("resume-session-at"),
            session_id=opts.get("session-id"),
            stale=stale,
        )
    except StartupError as exc:
        refuse(exc)
        raise


def make_process(opts: dict[str, Any], session: Session, channel: Channel, stdio: bool) -> Process:
    return Process(
        opts=opts,
        cwd=session.cwd,
        session=session,
        channel=channel,
        partial="--include-partial-messages" in opts["flags"],
        delay=float(os.environ.get("FAKE_CLAUDE_DELAY", "0.05")),
        stdio=stdio,
        allowed_tools=split_rules(opts.get("allowedTools", []) + opts.get("allowed-tools", [])),
    )


# --------------------------------------------------------------------------- one-shot
def run_oneshot(opts: dict[str, Any]) -> None:
    prompt = " ".join(opts["positional"])
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.buffer.read().decode("utf-8", "replace")
    STATE.update(prompt_len=len(prompt), prompt_head=prompt[:80], resume=opts.get("resume"))
    log("start")  # before any output: [start, exit] lies inside the launcher's [spawn, reap]
    mode = pick_mode(prompt)
    STATE["mode"] = mode
    check_mode_refusals(mode, opts)
    if mode == "hang_before_init":
        while True:
            time.sleep(3600)
    if not prompt.strip():
        sys.stderr.write(
            "Error: Input must be provided either through stdin or as a prompt "
            "argument when using --print\n"
        )
        finish(1)
    session = open_session(opts, os.getcwd(), stale=mode == "stale")
    channel = Channel(stdio=False, permission_mode=opts.get("permission-mode", "default"))
    result = Turn(make_process(opts, session, channel, stdio=False), prompt, [], mode).run()
    finish(1 if result.get("is_error") else 0)


# --------------------------------------------------------------------------- stream-json
def read_content(msg: dict[str, Any]) -> tuple[str, list[tuple[str, bytes]]]:
    """The prompt (text blocks joined) and the images of a user message."""
    message = msg.get("message") if isinstance(msg.get("message"), dict) else {}
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[tuple[str, bytes]] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "image":
            source = block.get("source") if isinstance(block.get("source"), dict) else {}
            try:
                data = base64.b64decode(source.get("data", ""), validate=True)
            except (binascii.Error, ValueError):
                data = b""
            images.append((str(source.get("media_type", "image/png")), data))
    return "\n".join(texts), images


def run_stream(opts: dict[str, Any]) -> None:
    STATE.update(input_format="stream-json", resume=opts.get("resume"))
    log("start")  # first thing: [start, exit] covers the whole life of the process
    resume = opts.get("resume")
    first_mode = pick_mode("", peek=True)
    if first_mode in ("bad_arg", "root_bypass") or (first_mode == "stale" and resume):
        pick_mode("")  # this process used that item of the sequence
    check_mode_refusals(first_mode, opts)
    session = open_session(opts, os.getcwd(), stale=bool(resume) and first_mode == "stale")
    STATE["session_id"] = session.sid
    stdio = opts.get("permission-prompt-tool") == "stdio"
    channel = Channel(stdio=True, permission_mode=opts.get("permission-mode", "default"))
    channel.start()
    proc = make_process(opts, session, channel, stdio=stdio)
    tools.mcp_connect(proc, opts.get("mcp-config", []))
    while True:
        msg = channel.inbox.get()
        if msg is None:
            finish(1 if proc.last_error else 0, reason="stdin EOF")
        assert msg is not None
        prompt, images = read_content(msg)
        mode = pick_mode(prompt)
        if proc.turns == 0 and resume and mode == "stale":
            message = STALE_MESSAGE.format(sid=resume)
            refuse(StartupError(message, stdout_error=message, sid=resume))
        check_mode_refusals(mode, opts)
        Turn(proc, prompt, images, mode).run()
        if mode == "die_between_turns":
            time.sleep(float(os.environ.get("FAKE_CLAUDE_DIE_AFTER", "0.2")))
            sys.stderr.write("Error: fake claude died between turns\n")
            finish(1, reason="died between turns")


# --------------------------------------------------------------------------- signals
def on_term(signum: int, frame: Any) -> None:
    finish(143, signal="SIGTERM")


def on_int(signum: int, frame: Any) -> None:
    emit(
        result_line(
            STATE.get("session_id") or "",
            text="",
            is_error=True,
            subtype="error_during_execution",
            errors=["Request was aborted."],
            terminal_reason="aborted_streaming",
        )
    )
    finish(0, signal="SIGINT")


def main() -> None:
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    opts = parse_args(sys.argv[1:])
    try:
        if opts.get("input-format") == "stream-json":
            run_stream(opts)
        else:
            run_oneshot(opts)
    except Exception:
        # A bug in the fake: say so loudly, and still log the exit.
        traceback.print_exc()
        finish(1, reason="fake_claude bug")


if __name__ == "__main__":
    main()
