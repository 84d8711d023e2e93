"""Plan mode from the chat, end to end: /mode plan, then Claude's ExitPlanMode (the real CLI in
plan mode against the fake API) shows the plan card; Approve lets the CLI carry it out in the
working mode, Keep planning (a button, or a message of the requester) keeps it planning, and the
next message plans again in the same warm process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.cardkit import find_button
from tests.e2e.conftest import StartBot, final_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, ToolUse

pytestmark = [pytest.mark.real_cli, pytest.mark.slow, pytest.mark.timeout(180)]

PLAN = "1. Write notes.txt\n2. Say done"
PLAN_ACTIVE = "Plan mode is active"  # the CLI's reminder in plan mode (measured on 2.1.329)


async def plan_card(sim: FeishuSimulator, user_msg: str) -> str:
    def found() -> str | None:
        for reply in sim.replies_to(user_msg):
            if find_button(sim.rendered_card(reply.message_id), "Approve") is not None:
                return reply.message_id
        return None

    return await sim.wait_for(found, timeout=60)


def tool_result_of(anthropic: FakeAnthropic, index: int) -> str:
    """The tool_result the CLI sent back in message request `index`."""
    last = anthropic.message_requests[index].messages[-1]
    return json.dumps(last.get("content"), ensure_ascii=False)


async def test_plan_then_approve_runs_the_rest_in_the_working_mode(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    bot = await start_bot()
    mode = await sim.push_message(text="/mode plan")
    assert "Permission mode is now plan" in await final_text(sim, mode, contains="plan")

    notes = Path(bot.settings.CLAUDE_WORKDIR) / "p2p-oc_sim_p2p" / "notes.txt"
    anthropic.enqueue(
        ToolUse("ExitPlanMode", {"plan": PLAN}),
        ToolUse("Write", {"file_path": str(notes), "content": "planned"}),
        Reply("done as planned"),
    )
    asked = await sim.push_message(text="plan the notes")
    card = await plan_card(sim, asked)
    shown = sim.message_text(sim.message(card))
    assert "Claude's plan" in shown and "1. Write notes.txt" in shown
    assert PLAN_ACTIVE in json.dumps(anthropic.message_requests[-1].messages)
    click = await sim.click(card, "Approve")
    assert click.error is None and click.toast["type"] == "success"
    assert "acceptEdits" in click.toast["content"]
    text = await final_text(sim, asked, contains="done as planned")
    assert "Plan approved" in text
    assert notes.read_text() == "planned"  # the Write ran without asking: acceptEdits
    # (no plan file was written: the card showed the plan from the model's own tool input)
    assert any("User has approved" in json.dumps(r.messages) for r in anthropic.message_requests)

    # The next message plans again, in the same warm process.
    cold = bot.bot.launcher.stats().cold_starts
    again = await sim.push_message(text="and now?")
    await final_text(sim, again, contains="echo: and now?")
    assert PLAN_ACTIVE in json.dumps(anthropic.message_requests[-1].messages[-1:])
    assert bot.bot.launcher.stats().cold_starts == cold

    status = await sim.push_message(text="/status")
    assert "permission mode: plan (/mode)" in await final_text(sim, status, contains="mode")
    new = await sim.push_message(text="/new")
    await final_text(sim, new, contains="Started a new conversation")
    status = await sim.push_message(text="/status")
    assert "permission mode: acceptEdits" in await final_text(sim, status, contains="mode")


async def test_keep_planning_by_button_and_by_message(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    await start_bot()
    mode = await sim.push_message(text="/mode plan")
    await final_text(sim, mode, contains="plan")

    anthropic.enqueue(ToolUse("ExitPlanMode", {"plan": PLAN}), Reply("revising"))
    first = await sim.push_message(text="plan it")
    card = await plan_card(sim, first)
    click = await sim.click(card, "Keep planning")
    assert click.error is None and click.toast["type"] == "info"
    await final_text(sim, first, contains="revising")
    denied = tool_result_of(anthropic, -1)
    assert "Keep planning" in denied and "is_error" in denied

    anthropic.enqueue(ToolUse("ExitPlanMode", {"plan": PLAN}), Reply("revised with tests"))
    second = await sim.push_message(text="plan it again")
    await plan_card(sim, second)
    requests = len(anthropic.message_requests)
    feedback = await sim.push_message(text="add a step that runs the tests")
    text = await final_text(sim, second, contains="revised with tests")
    assert "Keep planning" in text and "add a step that runs the tests" in text
    said = tool_result_of(anthropic, -1)
    assert "The user's feedback on the plan: add a step that runs the tests" in said
    assert len(anthropic.message_requests) == requests + 1  # the feedback was not a turn
    assert sim.replies_to(feedback) == []
