"""Tool approvals and Claude's questions, answered by people from the turn's card.

`ApprovalBroker` owns every request that waits for a person. `for_turn(...)` returns the
`AskPermission` a turn's runner calls for each `can_use_tool`; a click on the card reaches the
broker through `answer(...)` (the card-action handler), which only settles a future and returns
the toast: the waiting coroutine does the rest (card record, stored grant, decision).

Rules, in order:
- `AskUserQuestion` is always shown as a question (measured with CLI 2.1.329: it asks even
  under bypassPermissions), its options as buttons; the answer goes back as
  ``updated_input = {**input, "answers": {question text: chosen label}}`` (several labels of a
  multi-select question joined by ", ").
- CLAUDE_PERMISSION_MODE=bypassPermissions: everything else is allowed, nothing is asked.
- A tool named in CLAUDE_ALLOWED_TOOLS (plain names; the CLI applies patterns itself) or
  granted "Always allow" in this conversation (stored, survives restarts): allowed at once.
- Otherwise the card shows the tool and a short summary of its input with Allow once, Always
  allow and Deny. Who may answer: the user whose message started the turn and FEISHU_APPROVERS.
  No answer within `timeout` seconds: denied, and the card says so. `stop_conversation` (Stop,
  /stop) denies and interrupts. Cancelling the waiting coroutine records "stopped" and
  re-raises. The card keeps a line per decision naming who made it.

While a request waits, the ask coroutine simply awaits; the runner pauses the turn's timeout
clock for as long as an AskPermission call is pending. `waiting_since` tells since when.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger

from feishu_bot.events import AskPermission, PermissionDecision, PermissionRequest
from feishu_bot.feishu.buttons import ButtonSigner, ButtonValue
from feishu_bot.feishu.render import Block, Button

__all__ = ["ASK_USER_QUESTION", "ApprovalBroker", "BlockSink", "GrantStore", "summarize"]

ASK_USER_QUESTION = "AskUserQuestion"
DENIED_MESSAGE = "The user denied this tool use from the chat."
NOT_SHOWN_MESSAGE = "This tool needs a person's approval, which this chat cannot show."
_MAX_SUMMARY = 600
_EDIT_LINES = 8


class BlockSink(Protocol):
    """Where a turn's requests are shown (CardStream)."""

    async def show_block(self, block: Block) -> None: ...

    async def resolve_block(self, block_id: str, text: str) -> None: ...


class GrantStore(Protocol):
    async def grant_tool(self, conversation_key: str, tool: str, granted_by: str) -> Any: ...

    async def list_grants(self, conversation_key: str) -> Iterable[Any]: ...


@dataclass(eq=False)
class _Pending:
    """One request waiting for people. `changed` wakes its coroutine after every click."""

    request_id: str
    kind: str  # "approval" | "question"
    conversation_key: str
    turn_id: int
    requester: str
    request: PermissionRequest
    created_at: float
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    outcome: tuple[str, str] | None = None  # (action, operator) once settled
    questions: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[int, tuple[str, str]] = field(default_factory=dict)  # q -> (label, operator)
    picked: dict[int, list[int]] = field(default_factory=dict)  # multi-select in progress

    def settle(self, action: str, operator: str) -> None:
        if self.outcome is None:
            self.outcome = (action, operator)
        self.changed.set()


class ApprovalBroker:
    """See the module docstring. One per app; `answer` is synchronous and never waits."""

    def __init__(
        self,
        *,
        store: GrantStore,
        signer: ButtonSigner,
        approvers: Iterable[str] = (),
        allowed_tools: Iterable[str] = (),
        permission_mode: str = "acceptEdits",
        timeout: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._signer = signer
        self._approvers = frozenset(a.strip() for a in approvers if a and a.strip())
        self._allowed = frozenset(t.strip() for t in allowed_tools if t and "(" not in t)
        self._bypass = permission_mode == "bypassPermissions"
        self._timeout = timeout
        self._clock = clock
        self._pending: dict[str, _Pending] = {}

    # -- the runner's side -------------------------------------------------------------------

    def for_turn(
        self, conversation_key: str, turn_id: int, requester_open_id: str, stream: BlockSink
    ) -> AskPermission:
        """The AskPermission of one turn, showing its requests on `stream`."""

        can_show = hasattr(stream, "show_block") and hasattr(stream, "resolve_block")

        async def ask(request: PermissionRequest) -> PermissionDecision:
            if not can_show:  # a stream without blocks (a bare ReplyStream): rules only
                allowed = self._bypass or request.tool_name in self._allowed
                if request.tool_name != ASK_USER_QUESTION and (
                    allowed or await self._granted(conversation_key, request.tool_name)
                ):
                    return _allow(request)
                return PermissionDecision(allow=False, message=NOT_SHOWN_MESSAGE)
            if request.tool_name == ASK_USER_QUESTION and _questions(request.input):
                return await self._ask_question(
                    conversation_key, turn_id, requester_open_id, stream, request
                )
            if self._bypass or request.tool_name in self._allowed:
                return _allow(request)
            if await self._granted(conversation_key, request.tool_name):
                logger.info("tool {} allowed by an earlier 'Always allow'", request.tool_name)
                return _allow(request)
            return await self._ask_approval(
                conversation_key, turn_id, requester_open_id, stream, request
            )

        return ask

    def waiting_since(self, conversation_key: str) -> float | None:
        """When the oldest request of this conversation started waiting (clock time), or None."""
        times = [
            p.created_at for p in self._pending.values() if p.conversation_key == conversation_key
        ]
        return min(times) if times else None

    def stop_conversation(self, conversation_key: str) -> int:
        """Settle every waiting request of this conversation as stopped (deny + interrupt)."""
        count = 0
        for pending in list(self._pending.values()):
            if pending.conversation_key == conversation_key and pending.outcome is None:
                pending.settle("stop", "")
                count += 1
        return count

    # -- the click's side --------------------------------------------------------------------

    def answer(self, value: ButtonValue, operator_open_id: str) -> tuple[str, str]:
        """Apply a verified button value; returns the toast (type, text). Never waits."""
        pending = self._pending.get(value.request_id or "")
        if pending is None or pending.outcome is not None:
            return "info", "This request was already answered or is no longer waiting."
        if (pending.conversation_key, pending.turn_id) != (value.conversation_key, value.turn_id):
            return "error", "This button does not belong to this request. Nothing was done."
        if operator_open_id != pending.requester and operator_open_id not in self._approvers:
            who = "the person who sent the message"
            if self._approvers:
                who += " or an approver (FEISHU_APPROVERS)"
            return "warning", f"Only {who} can answer this request."
        if pending.kind == "question":
            return self._answer_question(pending, value, operator_open_id)
        if value.action not in ("allow", "allow_always", "deny"):
            return "error", "This button does not fit this request. Nothing was done."
        pending.settle(value.action, operator_open_id)
        return {
            "allow": ("success", f"Allowed {pending.request.tool_name} once."),
            "allow_always": (
                "success",
                f"{pending.request.tool_name} is allowed in this conversation from now on.",
            ),
            "deny": ("info", f"Denied {pending.request.tool_name}."),
        }[value.action]

    def _answer_question(
        self, pending: _Pending, value: ButtonValue, operator: str
    ) -> tuple[str, str]:
        q, o = value.question, value.option
        if (
            value.action != "answer"
            or q is None
            or o is None
            or not 0 <= q < len(pending.questions)
        ):
            return "error", "This button does not fit this question. Nothing was done."
        question = pending.questions[q]
        labels = [str(opt.get("label", "")) for opt in question.get("options") or []]
        if q in pending.answers:
            return "info", "This question was already answered."
        if question.get("multiSelect") and o >= 0:
            if o >= len(labels):
                return "error", "This option does not exist. Nothing was done."
            picked = pending.picked.setdefault(q, [])
            if o in picked:
                picked.remove(o)
            else:
                picked.append(o)
            return "info", "Selected: " + (", ".join(labels[i] for i in sorted(picked)) or "none")
        if question.get("multiSelect"):
            chosen = ", ".join(labels[i] for i in sorted(pending.picked.get(q, [])))
            if not chosen:
                return "warning", "Pick at least one option first."
        elif 0 <= o < len(labels):
            chosen = labels[o]
        else:
            return "error", "This option does not exist. Nothing was done."
        pending.answers[q] = (chosen, operator)
        if len(pending.answers) == len(pending.questions):
            pending.settle("answer", operator)
        pending.changed.set()
        return "success", f"Answer sent: {chosen}"

    # -- waiting -----------------------------------------------------------------------------

    async def _ask_approval(
        self, key: str, turn_id: int, requester: str, stream: BlockSink, request: PermissionRequest
    ) -> PermissionDecision:
        pending = self._new(key, turn_id, requester, request, "approval")
        rid = pending.request_id
        summary = summarize(request.tool_name, request.input)
        buttons = tuple(
            Button(text, self._value(action, pending), kind)
            for text, action, kind in (
                ("Allow once", "allow", "primary"),
                ("Always allow", "allow_always", "default"),
                ("Deny", "deny", "danger"),
            )
        )
        who = _mention(requester) + (" or an approver" if self._approvers else "")
        ask_text = (
            f"🔐 **Claude wants to use {request.tool_name}**\n{summary}\n"
            f"Waiting for {who} (up to {_duration(self._timeout)})."
        )
        logger.info("approval {} asked for tool {}", rid, request.tool_name)
        await stream.show_block(Block(rid, ask_text, buttons))
        head = f"**{request.tool_name}** {_one_line(summary)}"
        try:
            action, operator = await self._wait(pending)
        except TimeoutError:
            await stream.resolve_block(
                rid, f"⏱ {head}: no answer within {_duration(self._timeout)}, denied"
            )
            logger.info("approval {} timed out", rid)
            waited = _duration(self._timeout)
            return PermissionDecision(
                allow=False, message=f"No one approved this within {waited}, so it was denied."
            )
        except asyncio.CancelledError:
            await stream.resolve_block(rid, f"⏹ {head}: stopped")
            raise
        logger.info("approval {}: {} by {}", rid, action, operator or "stop")
        if action == "stop":
            await stream.resolve_block(rid, f"⏹ {head}: stopped")
            return PermissionDecision(allow=False, message="Stopped by the user.", interrupt=True)
        if action == "deny":
            await stream.resolve_block(rid, f"❌ {head}: denied by {_mention(operator)}")
            return PermissionDecision(allow=False, message=DENIED_MESSAGE)
        if action == "allow_always":
            try:
                await self._store.grant_tool(key, request.tool_name, operator)
            except Exception:
                logger.exception("could not store the grant of {}", request.tool_name)
            await stream.resolve_block(
                rid,
                f"✅ {head}: {request.tool_name} always allowed in this conversation, by "
                f"{_mention(operator)}",
            )
        else:
            await stream.resolve_block(rid, f"✅ {head}: allowed once by {_mention(operator)}")
        return _allow(request)

    async def _ask_question(
        self, key: str, turn_id: int, requester: str, stream: BlockSink, request: PermissionRequest
    ) -> PermissionDecision:
        pending = self._new(key, turn_id, requester, request, "question")
        pending.questions = _questions(request.input)
        for q, question in enumerate(pending.questions):
            await stream.show_block(self._question_block(pending, q, question))
        recorded: set[int] = set()

        async def record() -> None:
            for q in sorted(pending.answers.keys() - recorded):
                recorded.add(q)
                label, operator = pending.answers[q]
                await stream.resolve_block(
                    _qid(pending, q),
                    f"💬 {pending.questions[q].get('question')} → **{label}** "
                    f"(by {_mention(operator)})",
                )

        async def unanswered(why: str) -> None:
            await record()
            for q in range(len(pending.questions)):
                if q not in recorded:
                    await stream.resolve_block(
                        _qid(pending, q), f"{why} {pending.questions[q].get('question')}"
                    )

        try:
            await self._wait(pending, on_change=record)
        except TimeoutError:
            await unanswered("⏱ no answer:")
            return PermissionDecision(
                allow=False, message=f"The user did not answer within {_duration(self._timeout)}."
            )
        except asyncio.CancelledError:
            await unanswered("⏹ stopped:")
            raise
        if pending.outcome is not None and pending.outcome[0] == "stop":
            await unanswered("⏹ stopped:")
            return PermissionDecision(allow=False, message="Stopped by the user.", interrupt=True)
        await record()
        answers = {
            str(pending.questions[q].get("question")): label
            for q, (label, _) in sorted(pending.answers.items())
        }
        return PermissionDecision(allow=True, updated_input={**request.input, "answers": answers})

    def _question_block(self, pending: _Pending, q: int, question: dict[str, Any]) -> Block:
        options = question.get("options") or []
        lines = [f"❓ **{question.get('header') or 'Claude asks'}**: {question.get('question')}"]
        lines += [
            f"- **{opt.get('label')}**"
            + (f" — {opt['description']}" if opt.get("description") else "")
            for opt in options
        ]
        buttons = [
            Button(str(opt.get("label"))[:40], self._value("answer", pending, q=q, o=i))
            for i, opt in enumerate(options)
        ]
        if question.get("multiSelect"):
            lines.append("*Pick one or more, then press Done.*")
            buttons.append(Button("Done", self._value("answer", pending, q=q, o=-1), "primary"))
        return Block(_qid(pending, q), "\n".join(lines), tuple(buttons))

    async def _wait(
        self, pending: _Pending, on_change: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[str, str]:
        """Until the request is settled (clicks in between call `on_change`); TimeoutError."""
        try:
            async with asyncio.timeout(self._timeout):
                while pending.outcome is None:
                    await pending.changed.wait()
                    pending.changed.clear()
                    if on_change is not None and pending.outcome is None:
                        await on_change()
            return pending.outcome
        finally:
            self._pending.pop(pending.request_id, None)

    def _new(
        self, key: str, turn_id: int, requester: str, request: PermissionRequest, kind: str
    ) -> _Pending:
        rid = secrets.token_hex(4)
        pending = _Pending(rid, kind, key, turn_id, requester, request, self._clock())
        self._pending[rid] = pending
        return pending

    def _value(self, action: str, pending: _Pending, **extra: int) -> dict[str, Any]:
        return self._signer.value(
            action,
            conversation_key=pending.conversation_key,
            turn_id=pending.turn_id,
            request_id=pending.request_id,
            option=extra.get("o"),
            question=extra.get("q"),
        )

    async def _granted(self, key: str, tool: str) -> bool:
        try:
            grants = await self._store.list_grants(key)
        except Exception:
            logger.exception("could not read the tool grants of {}", key)
            return False
        return any(_grant_tool(g) == tool for g in grants)


def _grant_tool(grant: Any) -> Any:
    """The tool name of a stored grant (a name, or a (tool, granted_by, granted_at) row)."""
    if isinstance(grant, str):
        return grant
    return getattr(grant, "tool", None) or grant[0]


def _qid(pending: _Pending, q: int) -> str:
    return f"{pending.request_id}q{q}"


def _allow(request: PermissionRequest) -> PermissionDecision:
    return PermissionDecision(allow=True, updated_input=dict(request.input))


def _questions(data: dict[str, Any]) -> list[dict[str, Any]]:
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        return []
    return [q for q in questions if isinstance(q, dict) and q.get("question")]


def _mention(open_id: str) -> str:
    return f"<at id={open_id}></at>" if open_id else "someone"


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _one_line(summary: str) -> str:
    for line in summary.splitlines():
        line = line.strip().strip("`")
        if line:
            return f"`{line[:80]}`"
    return ""


def _fence(text: str, lang: str = "") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def summarize(tool: str, data: dict[str, Any]) -> str:
    """A short markdown summary of a tool's input: the command, or the file and first lines."""
    data = data if isinstance(data, dict) else {}
    path = data.get("file_path") or data.get("notebook_path") or data.get("path")
    if tool == "Bash" and isinstance(data.get("command"), str):
        out = _fence(_clip(data["command"]), "bash")
        if data.get("description"):
            out = f"{_clip(str(data['description']), 200)}\n{out}"
        return out
    new_text = data.get("new_string") or data.get("content") or data.get("new_source")
    if isinstance(data.get("edits"), list) and data["edits"]:
        new_text = (data["edits"][0] or {}).get("new_string")
    if path and isinstance(new_text, str):
        first = "\n".join(new_text.splitlines()[:_EDIT_LINES])
        return f"`{path}`\n{_fence(_clip(first))}"
    if path:
        return f"`{path}`"
    for key in ("url", "pattern", "query"):
        if isinstance(data.get(key), str):
            return f"`{_clip(data[key], 300)}`"
    return _fence(_clip(json.dumps(data, ensure_ascii=False)), "json") if data else ""


def _clip(text: str, limit: int = _MAX_SUMMARY) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
