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
- A tool named in CLAUDE_ALLOWED_TOOLS (plain names; the CLI applies patterns itself): allowed.
- Otherwise the card shows the request (`approval_text.summarize`: the whole command, or its
  beginning and end) with Allow once, Always allow and Deny. "Always allow" grants a scoped
  rule (`approval_text.grant_scope`: `Bash(npm test:*)`, a tool, a host), stores it for the
  conversation and hands it to the running CLI as a session rule; the CLI matches later
  requests itself, and new processes get the stored rules at start (the bot never matches a
  command by string). Who may answer: the user whose message started the turn and
  FEISHU_APPROVERS; in a group only FEISHU_APPROVERS may grant "always" (anyone else's click
  on it allows once). No answer within `timeout` seconds: denied, and the card says so.
  `stop_conversation` (Stop, /stop) denies and interrupts. Cancelling the waiting coroutine
  records "stopped" and re-raises. The card keeps a line per decision naming who made it and
  what ran (the command, not Claude's description of it).

While a request waits, the ask coroutine simply awaits; the runner pauses the turn's timeout
clock for as long as an AskPermission call is pending.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from loguru import logger

from feishu_bot import wording
from feishu_bot.approval_text import (
    NETWORK_TOOL,
    GrantScope,
    grant_scope,
    record_head,
    summarize,
)
from feishu_bot.events import AskPermission, PermissionDecision, PermissionRequest
from feishu_bot.feishu.buttons import ButtonSigner, ButtonValue
from feishu_bot.feishu.render import Block, Button, literal_mentions
from feishu_bot.feishu.reply_sink import BlockSink
from feishu_bot.keys import ConversationKey
from feishu_bot.plan_review import EXIT_PLAN_MODE, PlanReview, working_mode

__all__ = ["ASK_USER_QUESTION", "ApprovalBroker", "GrantStore", "summarize"]

ASK_USER_QUESTION = "AskUserQuestion"
DENIED_MESSAGE = "The user denied this tool use from the chat."
_BUTTON_CHARS = 60


class GrantStore(Protocol):
    """Where "Always allow" grants are kept (the SessionStore satisfies it)."""

    async def add_grant(
        self, conversation_key: str, kind: str, rule: str, granted_by: str
    ) -> None: ...


@dataclass(eq=False)
class _Pending:
    """One request waiting for people. `changed` wakes its coroutine after every click."""

    request_id: str
    kind: str  # "approval" | "question" | "plan"
    conversation_key: str
    turn_id: int
    requester: str
    request: PermissionRequest
    created_at: float
    scope: GrantScope | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    outcome: tuple[str, str] | None = None  # (action, operator) once settled
    questions: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[int, tuple[str, str]] = field(default_factory=dict)  # q -> (label, operator)
    picked: dict[int, list[int]] = field(default_factory=dict)  # multi-select in progress
    feedback: str = ""  # a plan's Keep planning sent as a message (plan_review)

    def settle(self, action: str, operator: str) -> None:
        if self.outcome is None:
            self.outcome = (action, operator)
        self.changed.set()


class ApprovalBroker(PlanReview):
    """See the module docstring. One per app; `answer` is synchronous and never waits.
    Plans (ExitPlanMode) are the `PlanReview` mixin's."""

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
        self._working_mode = working_mode(permission_mode)
        self._timeout = timeout
        self._clock = clock
        self._pending: dict[str, _Pending] = {}

    # -- the runner's side -------------------------------------------------------------------

    def for_turn(
        self, conversation_key: str, turn_id: int, requester_open_id: str, stream: BlockSink
    ) -> AskPermission:
        """The AskPermission of one turn, showing its requests on `stream` (the turn's
        ReplySink: every sink shows blocks, on its card or as cards of their own)."""

        async def ask(request: PermissionRequest) -> PermissionDecision:
            if request.tool_name == EXIT_PLAN_MODE:
                return await self._ask_plan(
                    conversation_key, turn_id, requester_open_id, stream, request
                )
            if request.tool_name == ASK_USER_QUESTION and _questions(request.input):
                return await self._ask_question(
                    conversation_key, turn_id, requester_open_id, stream, request
                )
            if request.tool_name != ASK_USER_QUESTION and (
                self._bypass or request.tool_name in self._allowed
            ):
                return _allow(request)
            return await self._ask_approval(
                conversation_key, turn_id, requester_open_id, stream, request
            )

        return ask

    def stop_conversation(self, conversation_key: str) -> int:
        """Settle every waiting request of this conversation as stopped (deny + interrupt)."""
        count = 0
        for pending in list(self._pending.values()):
            if pending.conversation_key == conversation_key and pending.outcome is None:
                pending.settle("stop", "")
                count += 1
        return count

    def stop_turn(self, conversation_key: str, turn_id: int) -> int:
        """Settle the waiting requests of one turn as stopped (its card's Stop button)."""
        count = 0
        for pending in list(self._pending.values()):
            if (pending.conversation_key, pending.turn_id) == (conversation_key, turn_id) and (
                pending.outcome is None
            ):
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
        if pending.kind == "plan":
            return self._answer_plan(pending, value.action, operator_open_id)
        if value.action not in ("allow", "allow_always", "deny"):
            return "error", "This button does not fit this request. Nothing was done."
        tool = pending.request.tool_name
        if value.action == "allow_always" and not self._may_grant(pending, operator_open_id):
            pending.settle("allow", operator_open_id)
            return (
                "success",
                f"Allowed {tool} once: in a group only an approver (FEISHU_APPROVERS) can "
                "always allow.",
            )
        pending.settle(value.action, operator_open_id)
        scope = pending.scope
        return {
            "allow": ("success", f"Allowed {tool} once."),
            "allow_always": (
                "success",
                f"Allowed {scope.label if scope else tool} in this conversation from now on.",
            ),
            "deny": ("info", f"Denied {tool}."),
        }[value.action]

    def _may_grant(self, pending: _Pending, operator: str) -> bool:
        """Always allow: anyone who may answer in a private chat; approvers only in groups."""
        return _private(pending.conversation_key) or operator in self._approvers

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
        rid, tool = pending.request_id, request.tool_name
        scope = pending.scope = grant_scope(tool, request.input, request.suggestions)
        choices = [("Allow once", "allow", "primary")]
        always_ok = _private(key) or bool(self._approvers)
        if always_ok:
            label = _clip(f"Always allow {scope.rule}", _BUTTON_CHARS)
            choices.append((label, "allow_always", "default"))
        choices.append(("Deny", "deny", "danger"))
        buttons = tuple(
            Button(text, self._value(action, pending), kind) for text, action, kind in choices
        )
        who = _mention(requester) + (" or an approver" if self._approvers else "")
        if tool == NETWORK_TOOL:
            title = f"🌐 **Claude wants to connect to {literal_mentions(scope.rule)}**"
            body = ""
        else:
            title = f"🔐 **Claude wants to use {literal_mentions(tool)}**"
            body = summarize(tool, request.input) + "\n"
        always = ""
        if always_ok:
            only = "" if _private(key) else " (in a group: approvers only)"
            always = f"*Always allow* = {scope.label}, in this conversation until /new{only}.\n"
        ask_text = (
            f"{title}\n{body}{always}"
            f"Waiting for {who} (up to {wording.duration(self._timeout)})."
        )
        logger.info("approval {} asked for tool {}", rid, tool)
        await stream.show_block(Block(rid, ask_text, buttons))
        head = (
            f"🌐 {literal_mentions(scope.rule)}" if tool == NETWORK_TOOL
            else record_head(tool, request.input)
        )
        try:
            action, operator = await self._wait(pending)
        except TimeoutError:
            await stream.resolve_block(
                rid, f"⏱ {head}: no answer within {wording.duration(self._timeout)}, denied"
            )
            logger.info("approval {} timed out", rid)
            waited = wording.duration(self._timeout)
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
                await self._store.add_grant(key, scope.kind, scope.rule, operator)
            except Exception:
                logger.exception("could not store the grant of {}", scope.rule)
            await stream.resolve_block(
                rid,
                f"✅ {head}: always allowed here ({scope.label}, `{scope.rule}`), by "
                f"{_mention(operator)}",
            )
            return _allow(request, updates=(scope.update,))
        await stream.resolve_block(rid, f"✅ {head}: allowed once by {_mention(operator)}")
        if tool == NETWORK_TOOL:
            return replace(_allow(request), retire_after_turn=True)
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
                    f"💬 {literal_mentions(str(pending.questions[q].get('question')))} → "
                    f"**{literal_mentions(label)}** "
                    f"(by {_mention(operator)})",
                )

        async def unanswered(why: str) -> None:
            await record()
            for q in range(len(pending.questions)):
                if q not in recorded:
                    await stream.resolve_block(
                        _qid(pending, q),
                        f"{why} {literal_mentions(str(pending.questions[q].get('question')))}",
                    )

        try:
            await self._wait(pending, on_change=record)
        except TimeoutError:
            await unanswered("⏱ no answer:")
            waited = wording.duration(self._timeout)
            return PermissionDecision(
                allow=False, message=f"The user did not answer within {waited}."
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
        header = literal_mentions(str(question.get("header") or "Claude asks"))
        lines = [f"❓ **{header}**: {literal_mentions(str(question.get('question')))}"]
        lines += [
            f"- **{literal_mentions(str(opt.get('label')))}**"
            + (f" — {literal_mentions(str(opt['description']))}" if opt.get("description") else "")
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


def _private(key: str) -> bool:
    try:
        return ConversationKey.parse(key).is_private
    except ValueError:
        return False


def _qid(pending: _Pending, q: int) -> str:
    return f"{pending.request_id}q{q}"


def _allow(
    request: PermissionRequest, updates: tuple[dict[str, Any], ...] = ()
) -> PermissionDecision:
    return PermissionDecision(
        allow=True, updated_input=dict(request.input), updated_permissions=updates
    )


def _questions(data: dict[str, Any]) -> list[dict[str, Any]]:
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        return []
    return [q for q in questions if isinstance(q, dict) and q.get("question")]


def _mention(open_id: str) -> str:
    return f"<at id={open_id}></at>" if open_id else "someone"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
