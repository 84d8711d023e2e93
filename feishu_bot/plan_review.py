"""Claude's plan, reviewed from the chat: `ExitPlanMode` shown as a plan card.

In plan mode (/mode plan) Claude writes a plan and asks to leave plan mode with its
`ExitPlanMode` tool, which arrives as a permission request (FACTS, "Plan mode": its input holds
the plan file's text, or is empty when no file was written; then the plan is in the model's own
tool input). `PlanReview` is a mixin of `ApprovalBroker` that shows it as a block of the turn's
card: the plan as markdown, **Approve** (button action ``allow``) and **Keep planning**
(``deny``), with the broker's rules for who may answer (the requester and FEISHU_APPROVERS),
its toast and its timeout.

- Approve: allowed, with ``updatedPermissions: [{"type": "setMode", "mode": <working mode>,
  "destination": "session"}]``, since the CLI otherwise drops to ``default`` (measured): the
  rest of the turn runs in the working mode (CLAUDE_PERMISSION_MODE, or acceptEdits when that
  is plan itself). The next turn is put back into the conversation's mode by the launcher.
- Keep planning: denied with a message telling Claude to revise; it stays in plan mode.
- A message the requester sends while the card waits (`plan_feedback`) is Keep planning with
  that text as Claude's feedback; the message is not a turn of its own.
- No answer within the timeout: denied, like any approval; Stop: denied and interrupted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from feishu_bot import wording
from feishu_bot.events import PermissionDecision, PermissionRequest
from feishu_bot.feishu.render import Block, Button, literal_mentions

if TYPE_CHECKING:
    from feishu_bot.feishu.reply_sink import BlockSink

__all__ = ["EXIT_PLAN_MODE", "PLAN_CHARS", "PlanReview", "plan_text", "working_mode"]

EXIT_PLAN_MODE = "ExitPlanMode"
PLAN_CHARS = 6000  # a card body is at most 30 KB; a longer plan shows its start and a note
NO_PLAN = "(Claude did not write out a plan.)"
KEEP_PLANNING = (
    "The user chose Keep planning: the plan is not approved. Refine it (ask the user what to "
    "change if it is unclear) and present it again with ExitPlanMode."
)


def working_mode(configured: str) -> str:
    """The mode an approved plan runs in: the operator's mode, acceptEdits when that is plan."""
    return "acceptEdits" if configured in ("", "plan") else configured


def plan_text(request: PermissionRequest) -> str:
    """The plan of an ExitPlanMode request: the plan file's text the CLI sent, else the plan
    the model wrote in its tool call, else "" (none)."""
    for source in (request.input, request.model_input or {}):
        plan = source.get("plan") if isinstance(source, dict) else None
        if isinstance(plan, str) and plan.strip():
            return plan.strip()
    return ""


def _shown(plan: str) -> str:
    if not plan:
        return NO_PLAN
    text = literal_mentions(plan)
    if len(text) > PLAN_CHARS:
        text = text[:PLAN_CHARS] + f"\n\n*… {len(plan) - PLAN_CHARS} more characters not shown.*"
    return text


class PlanReview:
    """Mixin of `ApprovalBroker`: the plan card and plan feedback (see the module docstring)."""

    # Provided by ApprovalBroker.
    _pending: dict[str, Any]
    _approvers: frozenset[str]
    _timeout: float
    _working_mode: str
    _new: Callable[..., Any]
    _wait: Callable[..., Awaitable[tuple[str, str]]]
    _value: Callable[..., dict[str, Any]]

    def plan_feedback(self, conversation_key: str, sender_open_id: str, text: str) -> bool:
        """Keep planning with `text` as feedback, when a plan `sender_open_id` asked for waits
        in this conversation; False otherwise (the message is then an ordinary turn)."""
        for pending in list(self._pending.values()):
            if (
                pending.kind == "plan"
                and pending.outcome is None
                and pending.conversation_key == conversation_key
                and pending.requester == sender_open_id
            ):
                pending.feedback = text
                pending.settle("deny", sender_open_id)
                logger.info("plan {}: feedback from the requester", pending.request_id)
                return True
        return False

    def _answer_plan(self, pending: Any, action: str, operator: str) -> tuple[str, str]:
        """A click on the plan card (who may answer was checked by the broker)."""
        if action not in ("allow", "deny"):
            return "error", "This button does not fit this plan. Nothing was done."
        pending.settle(action, operator)
        if action == "allow":
            return "success", f"Plan approved: Claude goes on in {self._working_mode} mode."
        return "info", "Claude keeps planning. Send a message to say what to change."

    async def _ask_plan(
        self, key: str, turn_id: int, requester: str, stream: BlockSink, request: PermissionRequest
    ) -> PermissionDecision:
        pending = self._new(key, turn_id, requester, request, "plan")
        rid, plan = pending.request_id, plan_text(request)
        buttons = (
            Button("Approve", self._value("allow", pending), "primary"),
            Button("Keep planning", self._value("deny", pending), "default"),
        )
        who = _mention(requester) + (" or an approver" if self._approvers else "")
        ask_text = (
            f"📋 **Claude's plan**\n{_shown(plan)}\n\n"
            f"*Approve* = Claude carries it out in {self._working_mode} mode (your next message "
            f"plans again). *Keep planning* = Claude revises it; or send your feedback as a "
            f"message.\nWaiting for {who} (up to {wording.duration(self._timeout)})."
        )
        logger.info("plan {} shown ({} characters)", rid, len(plan))
        await stream.show_block(Block(rid, ask_text, buttons))
        try:
            action, operator = await self._wait(pending)
        except TimeoutError:
            waited = wording.duration(self._timeout)
            await stream.resolve_block(
                rid, f"⏱ **Plan** not approved within {waited}\n{_shown(plan)}"
            )
            return PermissionDecision(
                allow=False,
                message=f"No one approved the plan within {wording.duration(self._timeout)}. "
                + KEEP_PLANNING,
            )
        except asyncio.CancelledError:
            await stream.resolve_block(rid, f"⏹ **Plan**: stopped\n{_shown(plan)}")
            raise
        logger.info("plan {}: {} by {}", rid, action, operator or "stop")
        if action == "stop":
            await stream.resolve_block(rid, f"⏹ **Plan**: stopped\n{_shown(plan)}")
            return PermissionDecision(allow=False, message="Stopped by the user.", interrupt=True)
        if action == "deny":
            feedback = getattr(pending, "feedback", "")
            said = f": “{literal_mentions(_one_line(feedback))}”" if feedback else ""
            await stream.resolve_block(
                rid, f"📝 **Keep planning**, by {_mention(operator)}{said}\n{_shown(plan)}"
            )
            message = KEEP_PLANNING
            if feedback:
                message = f"{KEEP_PLANNING} The user's feedback on the plan: {feedback}"
            return PermissionDecision(allow=False, message=message)
        await stream.resolve_block(
            rid,
            f"✅ **Plan approved** by {_mention(operator)}, carried out in "
            f"{self._working_mode} mode\n{_shown(plan)}",
        )
        update = {"type": "setMode", "mode": self._working_mode, "destination": "session"}
        return PermissionDecision(
            allow=True, updated_input=dict(request.input), updated_permissions=(update,)
        )


def _mention(open_id: str) -> str:
    return f"<at id={open_id}></at>" if open_id else "someone"


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
