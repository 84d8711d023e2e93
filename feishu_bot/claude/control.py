"""The control channel of a CLI session: requests the CLI sends us, and ours to it.

Every ``control_request`` of the CLI is answered: ``can_use_tool`` through the running turn's
``ask_permission`` (a deny with a reason when there is none, or when a stop cancels the wait),
``mcp_message`` through the turn's MCP handler (or the session's default one between turns;
notifications are acked too, or the CLI stalls 60 s), anything else with an error response.
The deadline clock of the turn stops while a person is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from feishu_bot.claude.protocol import StreamParser
from feishu_bot.events import (
    AskPermission,
    ClaudeEvent,
    McpHandler,
    PermissionDecision,
    PermissionRequest,
)

__all__ = ["READ_ONLY_TOOLS", "ControlChannel", "TurnAttempt", "TurnState", "effect_label"]

OnEvent = Callable[[ClaudeEvent], Awaitable[None]]

# Tools that change nothing outside the conversation: a failed turn that ran only these may be
# sent again without doing anything twice. Every other tool (MCP tools included) counts.
READ_ONLY_TOOLS = frozenset(
    {"Read", "Glob", "Grep", "LS", "WebFetch", "WebSearch", "TodoWrite", "NotebookRead",
     "AskUserQuestion", "ExitPlanMode", "ListMcpResourcesTool", "ReadMcpResourceTool"}
)
_LABEL_CHARS = 80


def effect_label(tool: str, tool_input: dict[str, Any]) -> str:
    """What the user is told ran: the tool and its command or path, on one short line."""
    detail = tool_input.get("command") or tool_input.get("file_path") or tool_input.get("path")
    if not isinstance(detail, str) or not detail.strip():
        return tool
    detail = " ".join(detail.split())
    if len(detail) > _LABEL_CHARS:
        detail = detail[: _LABEL_CHARS - 1] + "…"
    return f"{tool} ({detail})"


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
    # Tools allowed to run that may change things (``effect_label``), in order, once each.
    side_effects: list[str] = field(default_factory=list)
    assistant_uuid: str | None = None
    first_text_s: float | None = None
    # This turn's own cost: the CLI reports the process's running total (FACTS, "Cost").
    cost_usd: float = 0.0
    retire: bool = False  # close the process after this turn (see PermissionDecision)


class TurnState:
    """One running turn: its attempt, its end, its hooks, and its paused deadline clock."""

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
        self._effect_ids: set[str] = set()
        self.started = time.monotonic()
        self.asking = 0
        self.paused_s = 0.0
        self.paused_at: float | None = None
        self.ask_changed = asyncio.Event()
        self.tool_inputs: dict[str, dict[str, Any]] = {}  # tool_use id -> the model's input

    def note_side_effect(self, tool_use_id: str, tool: str, tool_input: dict[str, Any]) -> None:
        """Count a tool that is about to run (seen as ``tool_use`` or allowed by a person)."""
        if tool in READ_ONLY_TOOLS or tool_use_id in self._effect_ids:
            return
        self._effect_ids.add(tool_use_id)
        self.attempt.side_effects.append(effect_label(tool, tool_input))

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


class ControlChannel:
    """Mixin of ``CliSession``: the control requests in both directions."""

    _pending: dict[str, asyncio.Future[dict[str, Any]]]
    _handlers: dict[str, asyncio.Task[None]]
    _turn: TurnState | None
    default_mcp: McpHandler | None
    # The permission mode the process is in: set at start, changed by an allowed "setMode"
    # update (an approved plan) and by set_permission_mode.
    permission_mode: str | None = None

    async def _write(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError

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

    async def _permission(
        self, turn: TurnState | None, request: dict[str, Any]
    ) -> PermissionDecision:
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
            model_input=turn.tool_inputs.get(str(request.get("tool_use_id") or "")),
        )
        turn.pause(True)
        try:
            decision = await turn.ask(req)
        finally:
            turn.pause(False)
        if decision.allow:
            allowed = decision.updated_input if decision.updated_input is not None else tool_input
            turn.note_side_effect(req.tool_use_id or req.request_id, tool, allowed)
            turn.attempt.retire |= decision.retire_after_turn
            for update in decision.updated_permissions:
                if update.get("type") == "setMode" and isinstance(update.get("mode"), str):
                    self.permission_mode = update["mode"]
        return decision

    async def _mcp(self, turn: TurnState | None, request_id: str, request: dict[str, Any]) -> None:
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
        body: dict[str, Any] = {"behavior": "allow", "updatedInput": updated}
        if decision.updated_permissions:
            body["updatedPermissions"] = list(decision.updated_permissions)
        return body
    body = {"behavior": "deny", "message": decision.message or "Denied."}
    if decision.interrupt:
        body["interrupt"] = True
    return body

