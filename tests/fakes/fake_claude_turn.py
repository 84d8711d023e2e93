"""Part of the fake ``claude`` script: one turn, from ``system/init`` to its ``result`` line.

The same code serves one-shot ``-p`` runs and every turn of a stream-json process. A turn
checks for an interrupt wherever the real CLI can be interrupted (while "streaming" text or
waiting, while a tool or a permission request runs) and then ends with the measured
``aborted_streaming`` / ``aborted_tools`` result.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fake_claude_tools as tools
from fake_claude_channel import Channel
from fake_claude_session import Session
from fake_claude_wire import (
    STATE,
    Aborted,
    aborted_result,
    assistant_line,
    emit,
    finish,
    init_line,
    log,
    msg_id,
    new_uuid,
    partial_text_start,
    result_line,
    stream_text,
    user_line,
)

API_ERROR_TEXT = (
    "API Error: 529 Overloaded. This is a server-side issue, usually temporary — "
    "try again in a moment."
)
REJECTED = (
    "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it "
    "was a file edit, the new_string was NOT written to the file). STOP what you are doing and "
    "wait for the user to tell you how to proceed."
)
HANG_MODES = ("hang", "hang_ignore_term", "hang_deaf", "hang_deaf_ignore_term", "spawn_child")
STOPPED_WHILE_RUNNING = (
    " Correction to the text above: this call was stopped while running, not refused before it "
    "ran. It may have run in part or in full, and its changes may have been written."
)


@dataclass
class Process:
    """What lasts across the turns of one CLI process."""

    opts: dict[str, Any]
    cwd: str
    session: Session
    channel: Channel
    partial: bool
    delay: float
    stdio: bool  # --permission-prompt-tool stdio in stream-json mode: can_use_tool is sent
    allowed_tools: list[str] = field(default_factory=list)
    mcp_servers: list[str] = field(default_factory=list)  # connected SDK servers
    mcp_status: list[dict[str, Any]] = field(default_factory=list)
    mcp_tools: list[str] = field(default_factory=list)
    turns: int = 0
    last_error: bool = False
    _rpc: itertools.count = field(default_factory=lambda: itertools.count(0))

    def next_rpc_id(self) -> int:
        return next(self._rpc)

    def tools_list(self) -> list[str]:
        base = ["Task", "Bash", "Edit", "Read", "Write"]
        if self.stdio:
            base.insert(1, "AskUserQuestion")
        return base + self.mcp_tools


def spawn_sleeper(new_session: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(60)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )


class Turn:
    def __init__(
        self, proc: Process, prompt: str, images: list[tuple[str, bytes]], mode: str
    ) -> None:
        self.proc = proc
        self.prompt = prompt
        self.images = images
        self.mode = mode
        self.phase = "streaming"
        self.tool: dict[str, Any] = {}
        self.tools_ran = False
        self.denials: list[dict[str, Any]] = []
        self.prompt_uuid = new_uuid()

    @property
    def sid(self) -> str:
        return self.proc.session.sid

    @property
    def cwd(self) -> str:
        return self.proc.cwd

    def pause(self, seconds: float) -> None:
        """Sleep; raise ``Aborted`` at once if the turn is interrupted meanwhile."""
        channel = self.proc.channel
        if channel.interrupt.wait(seconds) and not channel.deaf:
            raise Aborted()

    def record_assistant(self, line: dict[str, Any], text: str) -> None:
        self.proc.session.add({"role": "assistant", "text": text, "uuid": line["uuid"]})

    def say(self, text: str, *, chunks: int = 3, delay: float = 0.0) -> None:
        line = stream_text(
            self.sid, text, partial=self.proc.partial, chunks=chunks, delay=delay, pause=self.pause
        )
        self.record_assistant(line, text)

    # ------------------------------------------------------------------ the turn
    def run(self) -> dict[str, Any]:
        proc = self.proc
        proc.turns += 1
        STATE.update(
            mode=self.mode,
            turn=proc.turns,
            session_id=self.sid,
            prompt_len=len(self.prompt),
            prompt_head=self.prompt[:80],
        )
        digests = [hashlib.sha1(data).hexdigest() for _, data in self.images]
        log("turn_start", images=len(self.images), image_sha1=digests)
        proc.channel.begin_turn()
        try:
            result = self._run()
        finally:
            proc.channel.end_turn()
        emit(result)
        proc.last_error = bool(result.get("is_error"))
        log(
            "turn_end",
            subtype=result.get("subtype"),
            is_error=result.get("is_error"),
            terminal_reason=result.get("terminal_reason"),
            result_text=(result.get("result") or "")[:80],
        )
        return result

    def _run(self) -> dict[str, Any]:
        mode = self.mode
        if mode == "hang_before_init":
            try:
                self._wait_forever()
            except Aborted as exc:
                return self._aborted(exc)
        emit(
            init_line(
                self.sid,
                self.cwd,
                self.proc.opts,
                tools=self.proc.tools_list(),
                mcp_servers=self.proc.mcp_status,
            )
        )
        # Like the real CLI: the prompt is in the transcript before the API is asked.
        self.proc.session.add(
            {
                "role": "user",
                "kind": "prompt",
                "text": self.prompt,
                "uuid": self.prompt_uuid,
                "images": len(self.images),
            }
        )
        self._save_images()
        try:
            return self._mode(mode)
        except Aborted as exc:
            return self._aborted(exc)

    def _mode(self, mode: str) -> dict[str, Any]:
        if mode == "gate":
            # Block until the gate file exists: lets a test decide when this turn finishes.
            gate = Path(os.environ.get("FAKE_CLAUDE_GATE") or Path(os.environ["HOME"]) / "gate")
            while not gate.exists():
                self.pause(0.01)
        if mode in HANG_MODES:
            self._hang(mode)
        if mode == "api_error":
            return self._api_error()
        if mode in ("crash", "crash_mid_turn"):
            self.say("partial answer", chunks=1)
            sys.stderr.write(
                "TypeError: Cannot read properties of undefined (reading 'x')\n"
                "    at fake (file:///fake/cli.js:1:1)\n"
            )
            finish(1, reason="crash")
        if mode == "sigkill":
            log("exit", code=-9)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "max_turns":
            return result_line(
                self.sid,
                text=None,
                is_error=True,
                subtype="error_max_turns",
                terminal_reason="max_turns",
                num_turns=2,
                stop_reason="tool_use",
                errors=["Reached maximum number of turns (1)"],
            )
        if mode == "big_line":
            size = int(os.environ.get("FAKE_CLAUDE_BIG_BYTES", str(1024 * 1024)))
            emit(
                user_line(
                    self.sid,
                    [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_fake_big",
                            "content": "x" * size,
                            "is_error": False,
                        }
                    ],
                )
            )
        if mode == "tool":
            self._echo_tool()
        if mode == "perm":
            command = os.environ.get("FAKE_CLAUDE_PERM_COMMAND", "touch made_by_tool.txt")
            return self._answer(tools.bash(self, command, "Create a file"))
        if mode == "ask":
            return self._answer(tools.ask_user(self))
        if mode == "mcp":
            return self._answer(tools.mcp_call(self))
        if mode == "unknown_control":
            # A control request the bot does not know (the real CLI sends hook_callback when
            # hooks were registered): it must get an error response, never silence.
            answer = self.proc.channel.request("hook_callback", callback_id="fake", input={})
            answer = answer or {}
            return self._answer(f"control: {answer.get('subtype')} {answer.get('error', '')}")
        if mode == "edit_then_529":
            tools.edit(self)
            return self._api_error()
        if mode == "history":
            return self._answer("history: " + " | ".join(self.proc.session.prompts()))
        if mode == "slow":
            return self._answer(f"echo: {self.prompt}", chunks=5, delay=self.proc.delay)
        return self._answer(f"echo: {self.prompt}")

    # ------------------------------------------------------------------ pieces
    def _answer(self, text: str, *, chunks: int = 3, delay: float = 0.0) -> dict[str, Any]:
        self.say(text, chunks=chunks, delay=delay)
        return result_line(
            self.sid,
            text=text,
            permission_denials=self.denials,
            num_turns=2 if self.tool else 1,
        )

    def _wait_forever(self) -> None:
        while True:
            self.pause(3600)

    def _hang(self, mode: str) -> None:
        if mode in ("hang_ignore_term", "hang_deaf_ignore_term"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children: list[subprocess.Popen[bytes]] = []
        if mode == "spawn_child":
            children = [spawn_sleeper(new_session=True), spawn_sleeper(new_session=False)]
            log("child", child_pid=children[1].pid, grandchild_pid=children[0].pid)
        if self.proc.partial:
            partial_text_start(self.sid, "working")
        else:
            line = assistant_line(self.sid, msg_id(), [{"type": "text", "text": "working"}])
            emit(line)
        if mode in ("hang_deaf", "hang_deaf_ignore_term"):
            # Interrupts are acknowledged but never end this turn: only a kill does.
            self.proc.channel.deaf = True
            while True:
                time.sleep(3600)
        try:
            self._wait_forever()
        except Aborted:
            # The real CLI kills a running tool's processes when the turn is interrupted; only
            # a kill of the CLI itself leaves them to the caller.
            for child in children:
                child.kill()
                child.wait()
            if children:
                log("children_killed", pids=[c.pid for c in children])
            raise

    def _api_error(self) -> dict[str, Any]:
        emit(
            {
                "type": "system",
                "subtype": "api_retry",
                "attempt": 1,
                "max_retries": 1,
                "retry_delay_ms": 581,
                "error_status": 529,
                "error": "overloaded",
                "session_id": self.sid,
                "uuid": new_uuid(),
            }
        )
        line = assistant_line(self.sid, new_uuid(), [{"type": "text", "text": API_ERROR_TEXT}])
        line["message"]["model"] = "<synthetic>"
        line.update(error="server_error", is_api_error_message=True, api_error_status=529)
        emit(line)
        # Re-measured on 2.1.329 (CLAUDE_CODE_MAX_RETRIES 0 and 1): the failed turn's prompt
        # IS in the next request (merged into the next user message), in the same process and
        # after --resume; only --resume-session-at before it leaves it out.
        # FAKE_CLAUDE_FAILED_TURN_KEPT=0 selects the older, wrong model (left out).
        kept = self.tools_ran or os.environ.get("FAKE_CLAUDE_FAILED_TURN_KEPT", "1") != "0"
        self.proc.session.add(
            {
                "role": "assistant",
                "text": API_ERROR_TEXT,
                "uuid": line["uuid"],
                "synthetic": True,
                "drops": None if kept else self.prompt_uuid,
            }
        )
        return result_line(
            self.sid,
            text=API_ERROR_TEXT,
            is_error=True,
            api_error_status=529,
            api_error_type="overloaded_error",
            terminal_reason="api_error",
            stop_reason="stop_sequence",
            total_cost_usd=0,
            permission_denials=self.denials,
        )

    def _aborted(self, exc: Aborted) -> dict[str, Any]:
        session = self.proc.session
        if self.phase == "tools" and self.tool:
            content = REJECTED + (STOPPED_WHILE_RUNNING if self.tool.get("running") else "")
            emit(
                user_line(
                    self.sid,
                    [
                        {
                            "type": "tool_result",
                            "content": content,
                            "is_error": True,
                            "tool_use_id": self.tool["id"],
                        }
                    ],
                    tool_use_result="User rejected tool use",
                )
            )
            note, reason = "[Request interrupted by user for tool use]", "aborted_tools"
        else:
            if exc.partial:
                session.add({"role": "assistant", "text": exc.partial, "uuid": new_uuid()})
            note, reason = "[Request interrupted by user]", "aborted_streaming"
        emit(user_line(self.sid, [{"type": "text", "text": note}]))
        session.add({"role": "user", "kind": "interrupt", "text": note})
        return aborted_result(self.sid, reason, permission_denials=self.denials)

    def _echo_tool(self) -> None:
        self.say("I'll run it.", chunks=1)
        emit(
            assistant_line(
                self.sid,
                msg_id(),
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
            user_line(
                self.sid,
                [
                    {
                        "tool_use_id": "toolu_fake_1",
                        "type": "tool_result",
                        "content": "hi",
                        "is_error": False,
                    }
                ],
            )
        )

    def _save_images(self) -> None:
        """Keep a copy of each image where the real CLI does (the bot must clean it up)."""
        if not self.images:
            return
        base = Path(os.environ.get("CLAUDE_CODE_TMPDIR") or tempfile.gettempdir())
        munged = "".join(c if c.isalnum() else "-" for c in self.cwd)
        folder = base / f"claude-{os.getuid()}" / munged / self.sid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        start = len(list(folder.iterdir()))
        for n, (media_type, data) in enumerate(self.images, start + 1):
            ext = media_type.rsplit("/", 1)[-1] or "png"
            (folder / f"{n}.{ext}").write_bytes(data)
