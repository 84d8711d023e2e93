"""One Claude CLI process driven over stream-json: turns in, events out, control both ways.

``CliSession`` owns one ``claude --input-format stream-json --output-format stream-json`` process:
it writes user turns, reads every stdout line from the start to EOF in one reader task, matches
each ``result`` to the turn that is running, sends ``interrupt``, and answers every
``control_request`` of the CLI: ``can_use_tool`` through the turn's ``ask_permission`` (or a
deny when the turn has none), ``mcp_message`` through the turn's MCP handler, anything else
with an error response. Nothing is ever left unanswered.

Invariants:
- At most one turn runs at a time (the launcher guarantees it; ``run_turn`` asserts it).
- A turn always ends: with its ``result``, with the process's death, or with its deadline.
  Stop (cancellation) and the deadline send ``interrupt`` first; only if no ``result`` follows
  within ``interrupt_grace`` is the process tree killed.
- The deadline clock stops while a permission request waits for a person.
- ``close()`` returns only once the process and whatever it started are reaped: its tree, its
  session, and every process carrying its ``tag`` (``setsid nohup … &`` included), whatever
  ended the process (close, crash, kill). A stopped turn's tagged orphans are ended at once.

What it does not do: decide retries, count slots, or know about Feishu.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loguru import logger

from feishu_bot.claude.control import READ_ONLY_TOOLS, ControlChannel, TurnAttempt, TurnState
from feishu_bot.claude.outcome import auth_refusal, not_logged_in
from feishu_bot.claude.process import kill_tree, reap_after_exit, reap_tagged, spawn_cli
from feishu_bot.claude.streams import TailBuffer, drain, read_lines
from feishu_bot.events import (
    AskPermission,
    ClaudeEvent,
    ImageFile,
    McpHandler,
)

__all__ = ["READ_ONLY_TOOLS", "CliSession", "TurnAttempt", "user_message"]

OnEvent = Callable[[ClaudeEvent], Awaitable[None]]

_INTERRUPT_RESEND_S = 0.5  # an interrupt's result comes in ~45 ms (FACTS)


def user_message(prompt: str, content: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """The stream-json line of one user turn: the prompt text, then any extra blocks."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": prompt}, *content]
    return {
        "type": "user",
        "message": {"role": "user", "content": blocks},
        "parent_tool_use_id": None,
        "session_id": "default",
    }


class CliSession(ControlChannel):
    """One live CLI process for one conversation: ``start()``, ``run_turn()``..., ``close()``.

    ``on_exit`` is called (synchronously, once) when the process is gone and reaped, whatever
    the reason, so the owner can free its slot at once. ``tag`` is the value of the process's
    ``TAG_VAR`` (the caller puts it into ``env``); ``scratch`` a directory of its own that is
    removed once the process is gone.
    """

    def __init__(
        self,
        key: str,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        kill_grace: float = 3.0,
        interrupt_grace: float = 5.0,
        max_line_bytes: int = 64 * 1024 * 1024,
        stderr_tail_bytes: int = 16 * 1024,
        on_exit: Callable[[CliSession], None] | None = None,
        tag: str | None = None,
        scratch: Path | None = None,
    ) -> None:
        self.key = key
        self.tag = tag
        self.scratch = scratch
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.kill_grace = kill_grace
        self.interrupt_grace = interrupt_grace
        self.max_line_bytes = max_line_bytes
        self.on_exit = on_exit
        self.proc: asyncio.subprocess.Process | None = None
        self.session_id: str | None = None
        self.last_assistant_uuid: str | None = None
        self.turns_done = 0
        # What the owner started this process from (its resume point); not used here.
        self.origin: Any = None
        self.last_used = time.monotonic()
        self.exited = asyncio.Event()
        self._stderr = TailBuffer(stderr_tail_bytes)
        self._turn: TurnState | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: dict[str, asyncio.Task[None]] = {}
        self._io: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._early: list[dict[str, Any]] = []
        # total_cost_usd of a warm process is its running total: each result's own cost is
        # the difference from the previous result, whichever turn (ours or one the CLI began
        # by itself between ours, whose cost goes to our next turn) printed it.
        self._cost_total = 0.0
        self._unclaimed_cost = 0.0
        self._auth_refusal: str | None = None  # set by the running turn's first 401 retry

    # ------------------------------------------------------------------ lifecycle
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self.exited.is_set() and not self._closing

    @property
    def busy(self) -> bool:
        return self._turn is not None

    async def start(self) -> None:
        """Spawn the process (FileNotFoundError/PermissionError if the CLI cannot start)."""
        self.proc = await spawn_cli(self.argv, cwd=self.cwd, env=self.env)
        logger.info("claude started pid={} ({})", self.proc.pid, self.key)
        self._io = [
            asyncio.create_task(self._read(), name=f"claude-out:{self.proc.pid}"),
            asyncio.create_task(drain(self.proc.stderr, self._stderr), name="claude-err"),
        ]

    async def close(self) -> None:
        """Close stdin and wait for the exit; kill the tree if it does not come in time.
        Runs to completion even if the caller is cancelled meanwhile."""
        self._closing = True
        await _run_to_completion(self._close())

    async def _close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.exited.wait()), self.kill_grace)
        except TimeoutError:
            report = await kill_tree(proc, grace=self.kill_grace)
            logger.info(
                "killed claude pid={} tree: {} processes, {} needed SIGKILL",
                report.pid, report.seen, report.killed,
            )
            await self.exited.wait()

    async def kill(self) -> None:
        """Kill the whole process tree now (a turn that ignores its interrupt)."""
        self._closing = True
        if self.proc is not None and self.proc.returncode is None:
            await _run_to_completion(kill_tree(self.proc, grace=self.kill_grace))
        await _run_to_completion(self.exited.wait())

    # ------------------------------------------------------------------ one turn
    async def run_turn(
        self,
        message: dict[str, Any],
        *,
        timeout: float,
        on_event: OnEvent | None = None,
        ask_permission: AskPermission | None = None,
        mcp: McpHandler | None = None,
    ) -> TurnAttempt:
        """Write one user turn and return when it ended (see the class invariants).

        On cancellation the turn is interrupted (killed if it does not stop), then
        CancelledError propagates; the process stays usable if the interrupt worked.
        """
        assert self._turn is None, "one turn at a time"
        turn = TurnState(on_event, ask_permission, mcp)
        self._turn = turn
        self._auth_refusal = None
        mark = self._stderr.mark()
        try:
            early, self._early = self._early, []
            for obj in early:
                await self._consume(turn, obj)
            try:
                if turn.done.done():
                    pass  # the process already ended this turn before it was written
                elif not self.exited.is_set():
                    # Inside the try: a stop while a big message drains must still interrupt
                    # it, or the CLI runs a turn nobody waits for and the next turn of this
                    # process would get its result.
                    try:
                        await self._write(message)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the reader sees the exit and ends the turn
                else:
                    self._end_turn_dead(turn)
                await self._until_done(turn, timeout)
            except asyncio.CancelledError:
                turn.attempt.stopped = True
                await _run_to_completion(self._stop_turn(turn))
                raise
            if turn.attempt.timed_out or self._auth_refusal is not None:
                await _run_to_completion(self._stop_turn(turn))
        finally:
            self._turn = None
            self.last_used = time.monotonic()
            att = turn.attempt
            att.wall_s = time.monotonic() - turn.started
            att.stderr_tail = self._stderr.since(mark) if not att.died else self._stderr.text()
            for handler in list(self._handlers.values()):
                handler.cancel()
        att = turn.attempt
        if self._auth_refusal is not None:
            att.parser.result = not_logged_in(att.parser.result, self._auth_refusal)
            self._closing = True  # its credentials were refused: not worth keeping warm
        if not att.died and att.parser.result is not None and not att.parser.result.is_error:
            self.turns_done += 1
            if att.assistant_uuid:
                self.last_assistant_uuid = att.assistant_uuid
        return att

    async def _until_done(self, turn: TurnState, timeout: float) -> None:
        while not turn.done.done() and self._auth_refusal is None:
            remaining = timeout - turn.active_s()
            if remaining <= 0 and not turn.asking:
                turn.attempt.timed_out = True
                return
            turn.ask_changed.clear()
            changed = asyncio.ensure_future(turn.ask_changed.wait())
            try:
                await asyncio.wait(
                    {turn.done, changed},
                    timeout=None if turn.asking else remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()

    async def _stop_turn(self, turn: TurnState) -> None:
        """Interrupt; kill the tree if no result comes within the grace."""
        for handler in list(self._handlers.values()):
            handler.cancel()  # a waiting approval is answered "deny" by its own cleanup
        if turn.done.done():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.interrupt_grace
        while True:
            # Sent again until the result comes: measured on 2.1.329, an interrupt that a warm
            # CLI reads before it has begun the turn just written is answered and ignored.
            try:
                await self._control({"subtype": "interrupt"}, wait=False)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            step = min(_INTERRUPT_RESEND_S, max(0.0, deadline - loop.time()))
            try:
                await asyncio.wait_for(asyncio.shield(turn.done), step)
                logger.info("claude pid={} interrupted; session stays warm", self.pid)
                if self.tag is not None and not self.exited.is_set():
                    # What the stopped turn started and the CLI lost track of (setsid).
                    began = time.time() - (time.monotonic() - turn.started)
                    await reap_tagged(
                        self.tag, grace=min(1.0, self.kill_grace), since=began,
                        spare_tree_of=self.pid,
                    )
                return
            except TimeoutError:
                if loop.time() < deadline:
                    continue
            logger.warning("claude pid={} ignored the interrupt; killing its tree", self.pid)
            await self.kill()
            return

    async def set_permission_mode(self, mode: str | None) -> bool:
        """Put the idle process into `mode` (the CLI's ``set_permission_mode`` control
        request; measured on 2.1.329: answered with the new mode). True once it is in that
        mode; False if the CLI refused or did not answer (the caller starts a new process)."""
        if not mode or mode == self.permission_mode:
            return True
        try:
            async with asyncio.timeout(self.interrupt_grace):
                answer = await self._control(
                    {"subtype": "set_permission_mode", "mode": mode}, wait=True
                )
        except (TimeoutError, OSError, AssertionError) as exc:
            logger.warning("claude pid={} did not change to mode {}: {!r}", self.pid, mode, exc)
            return False
        if not answer or answer.get("subtype") != "success":
            logger.warning("claude pid={} refused mode {}: {}", self.pid, mode, answer)
            return False
        self.permission_mode = mode
        return True

    # ------------------------------------------------------------------ stdin
    async def _write(self, obj: dict[str, Any]) -> None:
        """One JSON line. Images waiting on disk (`ImageFile`) are streamed into it as base64
        in pieces, so a turn with 50 MB of images never holds them in memory at once."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        files: list[ImageFile] = []
        token = f"@@image-{uuid.uuid4().hex}@@"

        def placeholder(value: Any) -> Any:
            if isinstance(value, ImageFile):
                files.append(value)
                return token
            raise TypeError(f"cannot write {type(value).__name__} to the CLI")

        text = json.dumps(obj, ensure_ascii=False, default=placeholder) + "\n"
        parts = text.split(token)
        async with self._write_lock:
            for i, part in enumerate(parts):
                proc.stdin.write(part.encode("utf-8"))
                await proc.stdin.drain()
                if i < len(files):
                    await _stream_base64(files[i], proc.stdin)

    # ------------------------------------------------------------------ stdout
    async def _read(self) -> None:
        proc = self.proc
        assert proc is not None
        try:
            await read_lines(proc.stdout, self._line, limit=self.max_line_bytes)
        except Exception:
            logger.exception("reading claude pid={} failed", proc.pid)
        code = await proc.wait()
        if len(self._io) > 1:
            await asyncio.wait({self._io[1]}, timeout=2.0)
        await reap_after_exit(
            proc, grace=min(1.0, self.kill_grace), tag=self.tag, scratch=self.scratch
        )
        self.exited.set()
        logger.info("claude exited pid={} code={} ({})", proc.pid, code, self.key)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("claude exited"))
        if self._turn is not None:
            self._end_turn_dead(self._turn)
        if self.on_exit is not None:
            try:
                self.on_exit(self)
            except Exception:
                logger.exception("on_exit callback failed")

    def _end_turn_dead(self, turn: TurnState) -> None:
        turn.attempt.died = True
        turn.attempt.exit_code = self.proc.returncode if self.proc else None
        if not turn.done.done():
            turn.done.set_result(None)

    async def _line(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            if raw.strip():
                logger.debug("claude printed a non-JSON line: {!r}", raw[:200])
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "control_request":
            self._on_control_request(obj)
            return
        if kind == "control_response":
            self._on_control_response(obj)
            return
        if kind == "control_cancel_request":
            handler = self._handlers.get(str(obj.get("request_id")))
            if handler is not None:
                handler.cancel()
            return
        turn = self._turn
        if turn is None:
            if self.turns_done == 0 and len(self._early) < 100:
                self._early.append(obj)  # e.g. a stale --resume's result, printed at start
            elif kind == "result":
                self._unclaimed_cost += self._result_cost(obj)
            return
        await self._consume(turn, obj)

    def _result_cost(self, obj: dict[str, Any]) -> float:
        total = obj.get("total_cost_usd")
        if not isinstance(total, int | float) or isinstance(total, bool):
            return 0.0
        delta = max(0.0, float(total) - self._cost_total)
        self._cost_total = float(total)
        return delta

    async def _consume(self, turn: TurnState, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if self._auth_refusal is None and (refusal := auth_refusal(obj)):
            # The CLI retries refused credentials for ~3 minutes (FACTS): stop at the first.
            logger.warning("claude pid={}: the API refused the credentials ({})", self.pid, refusal)
            self._auth_refusal = refusal
            turn.ask_changed.set()  # wakes _until_done
        self._observe(turn, obj)
        ends = kind == "result" and not turn.done.done()
        if ends:
            # Known before the callbacks run, so the owner can journal it while the turn still
            # holds its slot (a turn let in next then counts it against spending limits).
            turn.attempt.cost_usd = self._result_cost(obj) + self._unclaimed_cost
            self._unclaimed_cost = 0.0
        for event in turn.attempt.parser.feed_object(obj):
            if ends and event.kind == "result":
                event = dataclasses.replace(event, cost_usd=round(turn.attempt.cost_usd, 6))
            if event.kind == "init" and event.session_id:
                self.session_id = event.session_id
            if event.kind == "text" and turn.attempt.first_text_s is None:
                turn.attempt.first_text_s = time.monotonic() - turn.started
            if turn.on_event is not None:
                try:
                    await turn.on_event(event)
                except Exception:
                    logger.exception("turn event callback failed")
        if ends and not turn.done.done():
            turn.done.set_result(None)

    def _observe(self, turn: TurnState, obj: dict[str, Any]) -> None:
        """Track the assistant's message uuid and which tools may have changed something.

        A tool counts as a side effect from the moment its ``tool_use`` is seen (subagents'
        too, which carry a ``parent_tool_use_id``), not when its result arrives: a process
        killed while a command runs never reports the result, yet the command ran."""
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if obj.get("type") == "system" and obj.get("subtype") == "init":
            sid = obj.get("session_id")
            if isinstance(sid, str) and sid:
                self.session_id = sid
        if obj.get("type") != "assistant" or not isinstance(content, list):
            return
        if obj.get("parent_tool_use_id") is None and isinstance(obj.get("uuid"), str):
            turn.attempt.assistant_uuid = obj["uuid"]
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                name = str(block.get("name", "?"))
                tool_input = block.get("input")
                if isinstance(tool_input, dict):
                    turn.tool_inputs[str(block.get("id"))] = tool_input
                turn.note_side_effect(
                    str(block.get("id")), name, tool_input if isinstance(tool_input, dict) else {}
                )


_B64_CHUNK = 3 * 64 * 1024  # a multiple of 3: the pieces' base64 joins without padding


async def _stream_base64(image: ImageFile, stdin: asyncio.StreamWriter) -> None:
    """Write the file's bytes as base64, a piece at a time (file reads off the loop)."""
    handle = await asyncio.to_thread(image.path.open, "rb")
    try:
        while True:
            chunk = await asyncio.to_thread(handle.read, _B64_CHUNK)
            if not chunk:
                return
            stdin.write(base64.b64encode(chunk))
            await stdin.drain()
    finally:
        handle.close()


async def _run_to_completion(aw: Awaitable[Any]) -> Any:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile; re-raise after."""
    task = asyncio.ensure_future(aw)
    interrupted = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return task.result()
