"""Interactive cards end to end: the whole bot (real lark_oapi client, the simulator with
CardKit and card callbacks, SQLite) and the real pinned CLI against the fake Anthropic API.

What a user sees at each step is asserted on the card the simulator renders: a streamed
CardKit answer; the PATCH card when CardKit is refused; a stream Feishu closes early; the Stop
button; Allow once / Always allow / Deny on a real Bash request (the tool really runs, or
really does not); an approval by a stranger; the approval timeout; a forged button value;
Claude's question answered from the card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.cardkit import find_button
from tests.e2e.conftest import RunningBot, StartBot, final_text
from tests.fakes.fake_anthropic import Hang, Reply, ToolUse

pytestmark = pytest.mark.timeout(180)

KEY = "p2p:oc_sim_p2p"
USER = "ou_sim_user"
TOUCH = {"command": "touch made_by_tool.txt", "description": "Create a file"}


async def card_with(sim: FeishuSimulator, user_msg: str, label: str, timeout: float = 60) -> str:
    """The id of the reply to `user_msg` that shows a button labelled `label`."""

    def found() -> str | None:
        for reply in sim.replies_to(user_msg):
            if find_button(sim.rendered_card(reply.message_id), label) is not None:
                return reply.message_id
        return None

    return await sim.wait_for(found, timeout)


def made_files(bot: RunningBot) -> list[Path]:
    return list(Path(bot.settings.CLAUDE_WORKDIR).rglob("made_by_tool.txt"))


async def approval_bot(start_bot: StartBot, **kw: Any) -> RunningBot:
    # "default": every Bash call asks (acceptEdits may let a plain `touch` through). Sandbox
    # off: with it, a `touch` in the working directory runs without a card (tests/e2e/
    # test_sandbox_e2e.py); these tests are about the card of a tool that asks.
    return await start_bot(CLAUDE_PERMISSION_MODE="default", CLAUDE_SANDBOX="off", **kw)


async def test_streamed_cardkit_answer(sim, anthropic, start_bot):
    answer = "Streaming cards type the answer as Claude writes it, piece by piece, to the end."
    anthropic.enqueue(Reply(answer, chunks=6, chunk_delay=0.4))
    await start_bot()
    mid = await sim.push_message(text="show me streaming")
    text = await final_text(sim, mid, contains=answer)
    [reply] = sim.replies_to(mid)
    entity = reply.card_entity
    assert entity is not None, "the answer is a CardKit card"
    ops = [op for op, _, code in entity.ops if code == 0]
    assert "content" in ops, "text was streamed into the markdown element"
    assert ops[-1] == "update" and not entity.streaming
    assert entity.rate_limited == 0
    card = sim.rendered_card(reply.message_id)
    assert card["header"]["template"] == "green"
    assert find_button(card, "New session") is not None
    assert find_button(card, "Stop") is None
    assert "turn" in text  # the note: time, turns, cost
    # While it ran, the card had a Stop button.
    assert any(find_button(version, "Stop") for version in reply.versions[:-1])


async def test_cardkit_refused_answers_with_a_patch_card(sim, anthropic, start_bot):
    sim.cardkit.refuse()
    anthropic.enqueue(Reply("plain card answer", chunks=3, chunk_delay=0.3))
    bot = await start_bot()
    mid = await sim.push_message(text="hello")
    await final_text(sim, mid, contains="plain card answer")
    [reply] = sim.replies_to(mid)
    assert reply.card_entity is None and reply.content.get("schema") != "2.0"
    logs = bot.log_text()
    assert logs.count("cardkit:card:write") >= 1
    assert "WARNING" in next(line for line in logs.splitlines() if "cardkit:card:write" in line)


async def test_stream_closed_early_by_feishu_still_ends_complete(sim, anthropic, start_bot):
    now = [0.0]
    sim.cardkit.clock = lambda: now[0]
    answer = " ".join(f"part{i}" for i in range(12))
    anthropic.enqueue(Reply(answer, chunks=12, chunk_delay=0.4))
    await start_bot()
    mid = await sim.push_message(text="a long job")
    [reply_id] = [r.message_id for r in await sim.wait_for(lambda: sim.replies_to(mid))]
    await sim.wait_for(lambda: "part1" in sim.message_text(sim.message(reply_id)))
    now[0] += 601  # Feishu's streaming window (10 minutes) is over
    await final_text(sim, mid, contains=answer)
    entity = sim.message(reply_id).card_entity
    assert entity.timed_out or not entity.streaming
    assert len(sim.replies_to(mid)) == 1


async def test_stop_button(sim, anthropic, start_bot):
    anthropic.enqueue(Hang(after_start=True))
    await start_bot()
    mid = await sim.push_message(text="never ending")
    card = await card_with(sim, mid, "Stop")
    click = await sim.click(card, "Stop")
    assert click.error is None, click.error
    assert click.toast == {"type": "success", "content": "Stopping…"}
    text = await final_text(sim, mid, contains="Stopped")
    assert sim.rendered_card(card)["header"]["template"] == "red"
    assert "Stopped" in text
    again = await sim.push_card_action(card, click.value)
    assert again.toast["type"] == "info"  # finished: nothing to stop


async def test_allow_once_runs_the_tool(sim, anthropic, start_bot):
    anthropic.enqueue(ToolUse("Bash", TOUCH), Reply("created it"))
    bot = await approval_bot(start_bot)
    mid = await sim.push_message(text="make the file")
    card = await card_with(sim, mid, "Allow once")
    assert "touch made_by_tool.txt" in sim.message_text(sim.message(card))
    assert not made_files(bot)
    click = await sim.click(card, "Allow once")
    assert click.toast == {"type": "success", "content": "Allowed Bash once."}
    text = await final_text(sim, mid, contains="created it")
    assert made_files(bot), "the tool really ran"
    assert f"allowed once by <at id={USER}></at>" in text


async def test_always_allow_is_a_scoped_rule_the_cli_remembers(sim, anthropic, start_bot):
    """Safe controls #4 with the real CLI: "Always allow" grants `Bash(touch:*)` as a session
    rule; the same command then runs unasked, in the warm process and (from the stored grant)
    in a new one, while another command is still asked."""
    other = {"command": "rm -f made_by_tool.txt", "description": "Remove it"}
    anthropic.enqueue(
        ToolUse("Bash", TOUCH), Reply("first"),
        ToolUse("Bash", TOUCH), Reply("second"),
        ToolUse("Bash", TOUCH), Reply("third"),
        ToolUse("Bash", other), Reply("fourth"),
    )
    bot = await approval_bot(start_bot)
    first = await sim.push_message(text="make the file")
    card = await card_with(sim, first, "Allow once")
    shown = sim.message_text(sim.message(card))
    assert "Always allow Bash(touch:*)" in json.dumps(sim.rendered_card(card)), shown
    click = await sim.click(card, "Always allow Bash(touch:*)")
    assert "commands starting with `touch`" in click.toast["content"]
    text = await final_text(sim, first, contains="first")
    assert "always allowed here" in text and "Bash(touch:*)" in text
    second = await sim.push_message(text="make it again")
    await final_text(sim, second, contains="second")
    assert "Allow once" not in json.dumps([r.rendered for r in sim.replies_to(second)])
    assert made_files(bot)
    # A new process gets the stored grant at start (/model closes the warm one).
    model = await sim.push_message(text="/model default")
    await sim.wait_for(lambda: len(sim.replies_to(model)) >= 1, 30)
    third = await sim.push_message(text="and once more")
    await final_text(sim, third, contains="third")
    assert "Allow once" not in json.dumps([r.rendered for r in sim.replies_to(third)])
    fourth = await sim.push_message(text="now remove it")
    card = await card_with(sim, fourth, "Deny")  # not covered by the grant: asked
    await sim.click(card, "Deny")
    await final_text(sim, fourth, contains="fourth")
    listing = await sim.push_message(text="/permissions")
    await sim.wait_for(lambda: len(sim.replies_to(listing)) >= 1, 30)
    text = sim.message_text(sim.replies_to(listing)[0])
    assert "1. Bash(touch:*)" in text and USER in text


async def test_deny_keeps_the_tool_from_running(sim, anthropic, start_bot):
    anthropic.enqueue(ToolUse("Bash", TOUCH), Reply("ok, not creating it"))
    bot = await approval_bot(start_bot)
    mid = await sim.push_message(text="make the file")
    card = await card_with(sim, mid, "Deny")
    await sim.click(card, "Deny")
    text = await final_text(sim, mid, contains="ok, not creating it")
    assert not made_files(bot), "the tool did not run"
    assert "denied by" in text
    tool_result = json.dumps(anthropic.message_requests[-1].messages[-1])
    assert "denied" in tool_result


async def test_stranger_cannot_approve(sim, anthropic, start_bot):
    anthropic.enqueue(ToolUse("Bash", TOUCH), Reply("done"))
    bot = await approval_bot(start_bot)
    mid = await sim.push_message(text="make the file")
    card = await card_with(sim, mid, "Allow once")
    stranger = await sim.click(card, "Allow once", operator_open_id="ou_stranger")
    assert stranger.toast["type"] == "warning"
    assert "Only the person who sent the message" in stranger.toast["content"]
    assert not made_files(bot)
    await sim.click(card, "Allow once")
    await final_text(sim, mid, contains="done")
    assert made_files(bot)


async def test_approval_timeout_denies(sim, anthropic, start_bot):
    anthropic.enqueue(ToolUse("Bash", TOUCH), Reply("gave up"))
    bot = await approval_bot(start_bot, CLAUDE_APPROVAL_TIMEOUT=1)
    mid = await sim.push_message(text="make the file")
    text = await final_text(sim, mid, contains="gave up")
    assert "no answer within 1 s, denied" in text
    assert not made_files(bot)


async def test_forged_button_value_is_refused(sim, anthropic, start_bot):
    anthropic.enqueue(Hang(after_start=True))
    await start_bot()
    mid = await sim.push_message(text="never ending")
    card = await card_with(sim, mid, "Stop")
    value = dict(find_button(sim.rendered_card(card), "Stop"))
    value["t"] = value["t"] + 1
    forged = await sim.push_card_action(card, value)
    assert forged.error is None
    assert forged.toast["type"] == "error" and "not valid" in forged.toast["content"]
    # The turn is still running: Stop (the real one) still works.
    assert (await sim.click(card, "Stop")).toast["type"] == "success"
    await final_text(sim, mid, contains="Stopped")


async def test_question_answered_from_the_card(sim, anthropic, start_bot):
    question = {
        "questions": [
            {
                "question": "Which colour?",
                "header": "Colour",
                "multiSelect": False,
                "options": [
                    {"label": "Red", "description": "warm"},
                    {"label": "Blue", "description": "cold"},
                ],
            }
        ]
    }
    anthropic.enqueue(ToolUse("AskUserQuestion", question), Reply("Blue it is"))
    await start_bot()
    mid = await sim.push_message(text="ask me a colour")
    card = await card_with(sim, mid, "Blue")
    assert "Which colour?" in sim.message_text(sim.message(card))
    click = await sim.click(card, "Blue")
    assert click.toast == {"type": "success", "content": "Answer sent: Blue"}
    text = await final_text(sim, mid, contains="Blue it is")
    assert "→ **Blue**" in text
    tool_result = json.dumps(anthropic.message_requests[-1].messages[-1])
    assert "Your questions have been answered" in tool_result and "Blue" in tool_result


async def test_approval_on_the_patch_path_is_a_card_of_its_own(sim, anthropic, start_bot):
    anthropic.enqueue(ToolUse("Bash", TOUCH), Reply("created it"))
    bot = await approval_bot(start_bot, FEISHU_CARDKIT="off")
    mid = await sim.push_message(text="make the file")
    approval = await card_with(sim, mid, "Allow once")
    assert "touch made_by_tool.txt" in sim.message_text(sim.message(approval))
    click = await sim.click(approval, "Allow once")
    assert click.toast == {"type": "success", "content": "Allowed Bash once."}
    await final_text(sim, mid, contains="created it")
    assert made_files(bot)
    await sim.wait_for(lambda: "allowed once by" in sim.message_text(sim.message(approval)))
    assert find_button(sim.rendered_card(approval), "Allow once") is None
    assert not [r for r in sim.requests if "/cardkit/" in r.path]
