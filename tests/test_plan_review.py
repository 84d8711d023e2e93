"""plan_review: ExitPlanMode as a plan card in the ApprovalBroker — Approve (with the switch to
the working mode for the CLI), Keep planning by button or by the requester's message, who may
answer, the timeout, Stop, and where the plan's text comes from."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from feishu_bot.approvals import ApprovalBroker
from feishu_bot.events import PermissionDecision, PermissionRequest
from feishu_bot.plan_review import KEEP_PLANNING, NO_PLAN, plan_text, working_mode
from tests.test_approvals import KEY, OWNER, SIGNER, Sink, press

pytestmark = pytest.mark.timeout(30)

PLAN = "## Plan\n1. Edit `a.py`\n2. Run the tests"
EXIT = PermissionRequest("toolu_1", "ExitPlanMode", {"plan": PLAN}, tool_use_id="toolu_1")


class NoGrants:
    async def add_grant(self, conversation_key: str, kind: str, rule: str, granted_by: str) -> None:
        raise AssertionError("a plan is never granted for good")


def broker(**kw: Any) -> ApprovalBroker:
    kw.setdefault("timeout", 10)
    return ApprovalBroker(store=NoGrants(), signer=SIGNER, **kw)


async def ask(b: ApprovalBroker, sink: Sink, request: PermissionRequest = EXIT):
    return asyncio.create_task(b.for_turn(KEY, 7, OWNER, sink)(request))


async def test_approve_allows_and_switches_the_cli_to_the_working_mode() -> None:
    b, sink = broker(permission_mode="acceptEdits"), Sink()
    task = await ask(b, sink)
    block = await sink.shown()
    assert "Claude's plan" in block.text and "1. Edit `a.py`" in block.text
    assert [x.text for x in block.buttons] == ["Approve", "Keep planning"]
    assert press(b, block, "Approve") == (
        "success", "Plan approved: Claude goes on in acceptEdits mode."
    )
    assert await task == PermissionDecision(
        allow=True,
        updated_input=EXIT.input,
        updated_permissions=({"type": "setMode", "mode": "acceptEdits", "destination": "session"},),
    )
    record = await sink.resolution(block.block_id)
    assert record.startswith(f"✅ **Plan approved** by <at id={OWNER}></at>")
    assert "2. Run the tests" in record  # the plan stays on the card


async def test_keep_planning_button_denies_and_keeps_claude_planning() -> None:
    b, sink = broker(), Sink()
    task = await ask(b, sink)
    block = await sink.shown()
    assert press(b, block, "Keep planning")[0] == "info"
    decision = await task
    assert not decision.allow and not decision.interrupt
    assert decision.message == KEEP_PLANNING
    assert (await sink.resolution(block.block_id)).startswith("📝 **Keep planning**")


async def test_a_message_of_the_requester_is_keep_planning_with_its_text() -> None:
    b, sink = broker(), Sink()
    task = await ask(b, sink)
    block = await sink.shown()
    assert not b.plan_feedback(KEY, "ou_stranger", "do it differently")  # not the requester
    assert not b.plan_feedback("p2p:oc_other", OWNER, "elsewhere")  # not this conversation
    assert b.plan_feedback(KEY, OWNER, "also update the README")
    decision = await task
    assert not decision.allow
    assert decision.message.endswith("The user's feedback on the plan: also update the README")
    assert "“also update the README”" in await sink.resolution(block.block_id)
    assert not b.plan_feedback(KEY, OWNER, "too late")  # nothing waits any more


async def test_strangers_cannot_answer_and_approvers_can() -> None:
    b, sink = broker(approvers=["ou_lead"]), Sink()
    task = await ask(b, sink)
    block = await sink.shown()
    assert press(b, block, "Approve", who="ou_stranger")[0] == "warning"
    assert not task.done()
    assert press(b, block, "Approve", who="ou_lead")[0] == "success"
    assert (await task).allow


async def test_no_answer_within_the_timeout_is_keep_planning() -> None:
    b, sink = broker(timeout=0.05), Sink()
    decision = await (await ask(b, sink))
    block_id = next(iter(sink.blocks))
    assert not decision.allow and "No one approved the plan within 0.05 s" in decision.message
    assert (await sink.resolution(block_id)).startswith("⏱ **Plan** not approved")


async def test_stop_denies_and_interrupts() -> None:
    b, sink = broker(), Sink()
    task = await ask(b, sink)
    await sink.shown()
    assert b.stop_conversation(KEY) == 1
    decision = await task
    assert not decision.allow and decision.interrupt


async def test_the_plan_even_under_bypass_mode_is_shown() -> None:
    b, sink = broker(permission_mode="bypassPermissions"), Sink()
    task = await ask(b, sink)
    block = await sink.shown()  # bypass allows tools, but a plan is for a person to review
    press(b, block, "Approve")
    decision = await task
    assert decision.updated_permissions[0]["mode"] == "bypassPermissions"


def test_where_the_plan_comes_from() -> None:
    assert plan_text(EXIT) == PLAN
    # no plan file: the CLI sends {} and the plan is only in the model's tool call
    bare = PermissionRequest("toolu_2", "ExitPlanMode", {}, model_input={"plan": " step 1 "})
    assert plan_text(bare) == "step 1"
    assert plan_text(PermissionRequest("toolu_3", "ExitPlanMode", {})) == ""


async def test_no_plan_at_all_says_so() -> None:
    b, sink = broker(), Sink()
    task = await ask(b, sink, PermissionRequest("toolu_4", "ExitPlanMode", {}))
    block = await sink.shown()
    assert NO_PLAN in block.text
    press(b, block, "Keep planning")
    await task


def test_working_mode_is_the_operators_unless_that_is_plan() -> None:
    assert working_mode("acceptEdits") == "acceptEdits"
    assert working_mode("default") == "default"
    assert working_mode("plan") == "acceptEdits"
    assert working_mode("") == "acceptEdits"
