"""The card pieces together, without the rest of the bot: a turn's ReplySink on the
simulator, the approval broker, and clicks pushed through the real lark_oapi client
(FeishuGateway) into handle_card_action, whose answer rides on the ack.

What a turn's runner would do is done by the test: ask the broker, stream text, finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from database.store import SessionStore
from feishu_bot.approvals import ApprovalBroker
from feishu_bot.events import PermissionRequest
from feishu_bot.feishu.access import AccessPolicy
from feishu_bot.feishu.buttons import ButtonSigner
from feishu_bot.feishu.card_action import RecentAnswers
from feishu_bot.feishu.cardkit_state import CardKitState
from feishu_bot.feishu.gateway import FeishuGateway
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.feishu.reply_switch import ReplySwitchFactory
from feishu_bot.handlers.cards import handle_card_action
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.cardkit import find_button
from feishu_bot.turns import TurnRegistry
from tests.fakes.wiring import make_conversations

pytestmark = pytest.mark.timeout(90)

USER = "ou_sim_user"
KEY = "p2p:oc_sim_p2p"


@pytest.fixture
async def world(sim: FeishuSimulator, tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    signer = ButtonSigner(sim.options.app_secret)
    access = AccessPolicy([USER, "ou_stranger"], [], False)
    answers = RecentAnswers()
    async with (
        await SessionStore.open(tmp_path / "bot.db") as store,
        FeishuReplier(
            app_id=sim.options.app_id, app_secret=sim.options.app_secret, domain=sim.base_url
        ) as replier,
    ):
        turns = TurnRegistry()
        broker = ApprovalBroker(store=store, signer=signer, timeout=30)
        ctx = SimpleNamespace(
            store=store,
            turns=turns,
            approvals=broker,
            conversations=make_conversations(
                store, launcher=None, turns=turns, approvals=broker, replier=replier
            ),
            settings=SimpleNamespace(FEISHU_APP_SECRET=SecretStr(sim.options.app_secret)),
        )

        async def on_event(envelope: dict[str, Any]) -> dict[str, Any] | None:
            if envelope["header"]["event_type"] != "card.action.trigger":
                return None
            return await handle_card_action(ctx, envelope, access=access, answers=answers)

        gateway = FeishuGateway(
            app_id=sim.options.app_id,
            app_secret=sim.options.app_secret,
            domain=sim.base_url,
            on_event=on_event,
            log_level="WARNING",
        )
        await gateway.start(timeout=60)
        factory = ReplySwitchFactory(
            cardkit=CardKitState(), signer=signer, text_interval=0.05, op_interval=0.01
        )
        try:
            yield SimpleNamespace(
                sim=sim, store=store, replier=replier, broker=broker, factory=factory, ctx=ctx
            )
        finally:
            await gateway.stop()
            await turns.aclose()


async def start_turn(w: SimpleNamespace, text: str = "make a file") -> tuple[str, int, Any]:
    user_msg = await w.sim.push_message(text=text)
    turn_id = await w.store.accept_message(
        user_msg, conversation_key=KEY, chat_id="oc_sim_p2p", prompt=text, reply_in_thread=False
    )
    stream = w.factory(w.replier, user_msg, in_thread=False, conversation_key=KEY, turn_id=turn_id)
    await stream.started()
    return user_msg, turn_id, stream


async def card_with(w: SimpleNamespace, user_msg: str, label: str) -> str:
    def found() -> str | None:
        for reply in w.sim.replies_to(user_msg):
            if find_button(w.sim.rendered_card(reply.message_id), label) is not None:
                return reply.message_id
        return None

    return await w.sim.wait_for(found)


async def test_allow_once_from_the_card(world):
    w = world
    user_msg, turn_id, stream = await start_turn(w)
    await stream.update("I will create the file.")
    ask = w.broker.for_turn(KEY, turn_id, USER, stream)
    decision = asyncio.create_task(ask(PermissionRequest("r1", "Bash", {"command": "touch x"})))
    card = await card_with(w, user_msg, "Allow once")

    stranger = await w.sim.click(card, "Allow once", operator_open_id="ou_stranger")
    assert stranger.error is None and stranger.toast["type"] == "warning"
    assert not decision.done()

    click = await w.sim.click(card, "Allow once", operator_open_id=USER)
    assert click.error is None, click.error
    assert click.toast == {"type": "success", "content": "Allowed Bash once."}
    assert (await decision).allow
    # The record replaces the buttons (the update is retried past the click's 200810 window).
    await w.sim.wait_for(lambda: "allowed once by" in w.sim.message_text(w.sim.message(card)))
    assert find_button(w.sim.rendered_card(card), "Allow once") is None
    await stream.update("I will create the file. Done.")
    await stream.finish("I will create the file. Done.", note="2.0s")
    text = w.sim.message_text(w.sim.message(card))
    assert "allowed once by <at id=ou_sim_user></at>" in text and "2.0s" in text
    assert find_button(w.sim.rendered_card(card), "New session") is not None
    assert all(not a.error for a in w.sim.card_actions)


async def test_stop_button_settles_a_waiting_approval(world):
    w = world
    user_msg, turn_id, stream = await start_turn(w)
    await w.store.update_turn(turn_id, status="running")
    handle = w.ctx.turns.admit(KEY, user_msg, turn_id)
    ask = w.broker.for_turn(KEY, turn_id, USER, stream)

    async def turn() -> Any:
        return await ask(PermissionRequest("r1", "Bash", {"command": "rm -rf build"}))

    task = w.ctx.turns.start(handle, turn())
    card = await card_with(w, user_msg, "Stop")
    await card_with(w, user_msg, "Deny")
    click = await w.sim.click(card, "Stop")
    assert click.toast == {"type": "success", "content": "Stopping…"}
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.store.update_turn(turn_id, status="cancelled")
    await stream.fail("Stopped by /stop.")
    text = w.sim.message_text(w.sim.message(card))
    assert "stopped" in text and "Stopped by /stop." in text
    assert find_button(w.sim.rendered_card(card), "Stop") is None
    replay = await w.sim.push_card_action(card, click.value)
    assert replay.toast["type"] == "info"  # the turn has finished: nothing to stop


async def test_forged_value_does_nothing(world):
    w = world
    user_msg, _turn_id, stream = await start_turn(w)
    await stream.update("working")
    card = await card_with(w, user_msg, "Stop")
    value = dict(find_button(w.sim.rendered_card(card), "Stop"))
    value["k"] = "p2p:oc_someone_else"
    forged = await w.sim.push_card_action(card, value)
    assert forged.error is None
    assert forged.toast["type"] == "error" and "not valid" in forged.toast["content"]
    await stream.finish("done")


async def test_question_answered_from_the_card(world):
    w = world
    user_msg, turn_id, stream = await start_turn(w, "pick a colour")
    ask = w.broker.for_turn(KEY, turn_id, USER, stream)
    question = {
        "questions": [
            {
                "question": "Which colour?",
                "header": "Colour",
                "multiSelect": False,
                "options": [{"label": "Red", "description": "warm"}, {"label": "Blue"}],
            }
        ]
    }
    decision = asyncio.create_task(ask(PermissionRequest("q", "AskUserQuestion", question)))
    card = await card_with(w, user_msg, "Blue")
    click = await w.sim.click(card, "Blue")
    assert click.toast == {"type": "success", "content": "Answer sent: Blue"}
    result = await decision
    assert result.allow and result.updated_input["answers"] == {"Which colour?": "Blue"}
    await w.sim.wait_for(lambda: "→ **Blue**" in w.sim.message_text(w.sim.message(card)))
    await stream.finish("Blue it is.")
