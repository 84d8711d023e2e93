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
- ``close()`` returns only once the process and whatever it started are reaped.

What it does not do: decide retries, count slots, or know about Feishu.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from feishu_bot.claude.process import kill_tree, reap_leftovers, spawn_cli
from feishu_bot.claude.protocol import StreamParser
from feishu_bot.claude.streams import TailBuffer, drain, read_lines
from feishu_bot.events import (
    AskPermission,
    ClaudeEvent,
    McpHandler,
    PermissionDecision,
    PermissionRequest,
)

__all__ = ["READ_ONLY_TOOLS", "CliSession", "TurnAttempt", "user_message"]

OnEvent = Callable[[ClaudeEvent], Awaitable[None]]

# Tools that change nothing outside the conversation: a failed turn that ran only these may be
# sent again without doing anything twice.
READ_ONLY_TOOLS = frozenset(
    {"Read", "Glob", "Grep", "LS", "WebFetch", "WebSearch", "TodoWrite", "NotebookRead",
     "AskUserQuestion", "ExitPlanMode", "ListMcpResourcesTool", "ReadMcpResourceTool"}
)
_REJECTED = "The user doesn't want to proceed"
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


@dataclass
class TurnAttempt:
    """What one turn in this process produced."""

    parser: StreamParser = field(default_factory=StreamParser)
    died: bool = False  # the process exited before the turn's result
    exit_code: int | None = None
    timed_out: bool = False
    stopped: bool = False
    stderr_tail: str = ""
    wall_s: float = 0.0
    side_effects: list[str] = field(default_factory=list)  # tools that ran and may change things
    assistant_uuid: str | None = None
    first_text_s: float | None = None


class _Turn:
    def __init__(
        self,
        on_event: OnEvent | None,
        ask: AskPermission | None,
        mcp: McpHandler | None,
    ) -> None:
        self.attempt = TurnAttempt()
        self.done = asyncio.get_running_loop().create_future()
        self.on_event = on_event
        self.ask = ask
        self.mcp = mcp
        self.tool_names: dict[str, str] = {}
        self.started = time.monotonic()
        self.asking = 0
        self.paused_s = 0.0
        self.paused_at: float | None = None
        self.ask_changed = asyncio.Event()

    def active_s(self) -> float:
        now = time.monotonic()
        paused = self.paused_s + (now - self.paused_at if self.paused_at is not None else 0.0)
        return now - self.started - paused

    def pause(self, on: bool) -> None:
        now = time.monotonic()
        if on:
            self.asking += 1
            if self.asking == 1:
                self.paused_at = now
        else:
            self.asking -= 1
            if self.asking == 0 and self.paused_at is not None:
                self.paused_s += now - self.paused_at
                self.paused_at = None
        self.ask_changed.set()


class CliSession:
    """One live CLI process for one conversation: ``start()``, ``run_turn()``..., ``close()``.

    ``on_exit`` is called (synchronously, once) when the process is gone and reaped, whatever
    the reason, so the owner can free its slot at once.
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
    ) -> None:
        self.key = key
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
        self._turn: _Turn | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: dict[str, asyncio.Task[None]] = {}
        self._io: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._early: list[dict[str, Any]] = []

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
        turn = _Turn(on_event, ask_permission, mcp)
        self._turn = turn
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
            if turn.attempt.timed_out:
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
        if not att.died and att.parser.result is not None and not att.parser.result.is_error:
            self.turns_done += 1
            if att.assistant_uuid:
                self.last_assistant_uuid = att.assistant_uuid
        return att

    async def _until_done(self, turn: _Turn, timeout: float) -> None:
        while not turn.done.done():
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

    async def _stop_turn(self, turn: _Turn) -> None:
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
                return
            except TimeoutError:
                if loop.time() < deadline:
                    continue
            logger.warning("claude pid={} ignored the interrupt; killing its tree", self.pid)
            await self.kill()
            return

    # ------------------------------------------------------------------ stdin
    async def _write(self, obj: dict[str, Any]) -> None:
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        async with self._write_lock:
            proc.stdin.write(data)
            await proc.stdin.drain()

    async def _control(self, request: dict[str, Any], *, wait: bool) -> dict[str, Any] | None:
        request_id = f"req_{uuid.uuid4().hex[:16]}"
        fut: asyncio.Future[dict[str, Any]] | None = None
        if wait:
            fut = asyncio.get_running_loop().create_future()
            self._pending[request_id] = fut
        await self._write({"type": "control_request", "request_id": request_id, "request": request})
        if fut is None:
            return None
        try:
            return await fut
        finally:
            self._pending.pop(request_id, None)

    async def _respond(self, request_id: str, body: dict[str, Any] | None, error: str = "") -> None:
        if error:
            response = {"subtype": "error", "request_id": request_id, "error": error}
        else:
            response = {"subtype": "success", "request_id": request_id, "response": body or {}}
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError, AssertionError):
            await self._write({"type": "control_response", "response": response})

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
        await reap_leftovers(proc, grace=min(1.0, self.kill_grace))
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

    def _end_turn_dead(self, turn: _Turn) -> None:
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
            return
        await self._consume(turn, obj)

    async def _consume(self, turn: _Turn, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        self._observe(turn, obj)
        for event in turn.attempt.parser.feed_object(obj):
            if event.kind == "init" and event.session_id:
                self.session_id = event.session_id
            if event.kind == "text" and turn.attempt.first_text_s is None:
                turn.attempt.first_text_s = time.monotonic() - turn.started
            if turn.on_event is not None:
                try:
                    await turn.on_event(event)
                except Exception:
                    logger.exception("turn event callback failed")
        if kind == "result" and not turn.done.done():
            turn.done.set_result(None)

    def _observe(self, turn: _Turn, obj: dict[str, Any]) -> None:
        """Track the assistant's message uuid and which tools really ran."""
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if obj.get("type") == "system" and obj.get("subtype") == "init":
            sid = obj.get("session_id")
            if isinstance(sid, str) and sid:
                self.session_id = sid
        if not isinstance(content, list):
            return
        if obj.get("type") == "assistant" and obj.get("parent_tool_use_id") is None:
            if isinstance(obj.get("uuid"), str):
                turn.attempt.assistant_uuid = obj["uuid"]
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    turn.tool_names[str(block.get("id"))] = str(block.get("name", "?"))
        elif obj.get("type") == "user":
            for block in content:
                if not isinstance(block, dict) or block.get("type") != "tool_result":
                    continue
                name = turn.tool_names.get(str(block.get("tool_use_id")), "")
                text = json.dumps(block.get("content"), ensure_ascii=False)[:200]
                if name and name not in READ_ONLY_TOOLS and _REJECTED not in text:
                    turn.attempt.side_effects.append(name)

    # ------------------------------------------------------------------ control requests
    def _on_control_response(self, obj: dict[str, Any]) -> None:
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        fut = self._pending.get(str(response.get("request_id")))
        if fut is not None and not fut.done():
            fut.set_result(response)

    def _on_control_request(self, obj: dict[str, Any]) -> None:
        request_id = str(obj.get("request_id") or "")
        request = obj.get("request") if isinstance(obj.get("request"), dict) else {}
        task = asyncio.create_task(self._answer(request_id, request), name=f"ctl:{request_id}")
        self._handlers[request_id] = task
        task.add_done_callback(lambda _t: self._handlers.pop(request_id, None))

    async def _answer(self, request_id: str, request: dict[str, Any]) -> None:
        subtype = request.get("subtype")
        turn = self._turn
        try:
            if subtype == "can_use_tool":
                decision = await self._permission(turn, request)
                await self._respond(request_id, _decision_body(decision, request))
            elif subtype == "mcp_message":
                await self._mcp(turn, request_id, request)
            else:
                logger.warning("claude sent an unknown control request {!r}", subtype)
                await self._respond(request_id, None, f"unsupported control request: {subtype}")
        except asyncio.CancelledError:
            if subtype == "can_use_tool":
                deny = PermissionDecision(False, "Stopped before anyone answered.", interrupt=True)
                await asyncio.shield(self._respond(request_id, _decision_body(deny, request)))
            raise
        except Exception as exc:
            logger.exception("answering control request {} failed", subtype)
            await self._respond(request_id, None, f"{type(exc).__name__}: {exc}")

    async def _permission(self, turn: _Turn | None, request: dict[str, Any]) -> PermissionDecision:
        tool = str(request.get("tool_name") or "?")
        if turn is None or turn.ask is None:
            reason = f"{tool} is not allowed by the bot's permission rules."
            return PermissionDecision(False, reason)
        tool_input = request.get("input") if isinstance(request.get("input"), dict) else {}
        suggestions = request.get("permission_suggestions")
        req = PermissionRequest(
            request_id=str(request.get("tool_use_id") or ""),
            tool_name=tool,
            input=tool_input,
            tool_use_id=request.get("tool_use_id") if isinstance(
                request.get("tool_use_id"), str) else None,
            blocked_path=request.get("blocked_path") if isinstance(
                request.get("blocked_path"), str) else None,
            suggestions=tuple(s for s in suggestions if isinstance(s, dict))
            if isinstance(suggestions, list) else (),
        )
        turn.pause(True)
        try:
            return await turn.ask(req)
        finally:
            turn.pause(False)

    async def _mcp(self, turn: _Turn | None, request_id: str, request: dict[str, Any]) -> None:
        server = str(request.get("server_name") or "")
        message = request.get("message") if isinstance(request.get("message"), dict) else {}
        handler = turn.mcp if turn is not None else self.default_mcp
        if handler is None:
            reply: dict[str, Any] | None = {
                "jsonrpc": "2.0",
                "id": message.get("id"),
                "error": {"code": -32601, "message": f"no MCP server {server!r} here"},
            }
        else:
            reply = await handler(server, message)
        await self._respond(request_id, {"mcp_response": reply or {"jsonrpc": "2.0", "result": {}}})

    default_mcp: McpHandler | None = None


def _decision_body(decision: PermissionDecision, request: dict[str, Any]) -> dict[str, Any]:
    if decision.allow:
        original = request.get("input") if isinstance(request.get("input"), dict) else {}
        updated = decision.updated_input if decision.updated_input is not None else original
        return {"behavior": "allow", "updatedInput": updated}
    body: dict[str, Any] = {"behavior": "deny", "message": decision.message or "Denied."}
    if decision.interrupt:
        body["interrupt"] = True
    return body


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
