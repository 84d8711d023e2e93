"""card.action.trigger through the simulator's long connection and the real lark_oapi client
(FeishuGateway with an async on_event): the event's shape, the answer read from the ack, the
3 s deadline, and a streaming card refusing updates while a click waits for its answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from feishu_bot.feishu import render
from feishu_bot.feishu.gateway import FeishuGateway
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator import FeishuSimulator

pytestmark = pytest.mark.timeout(90)


async def start_gateway(sim: FeishuSimulator, handler: Any, **kw: Any) -> FeishuGateway:
    gw = FeishuGateway(
        app_id=sim.options.app_id,
        app_secret=sim.options.app_secret,
        domain=sim.base_url,
        on_event=handler,
        log_level="WARNING",
        **kw,
    )
    await gw.start(timeout=60)
    return gw


async def card_message(sim: FeishuSimulator, *, streaming: bool) -> tuple[str, str]:
    async with FeishuReplier(
        app_id=sim.options.app_id, app_secret=sim.options.app_secret, domain=sim.base_url
    ) as replier:
        user = await sim.push_message(text="hi")
        stop = render.Button("Stop", {"action": "stop", "k": "p2p:oc_sim_p2p", "t": 1}, "danger")
        card = render.card2("working", state="working", buttons=[stop], streaming=streaming)
        card_id = await replier.create_card_entity(card)
        return card_id, await replier.reply_card_entity(user, card_id)


async def test_click_arrives_in_shape_and_the_answer_rides_on_the_ack(sim):
    seen: list[dict[str, Any]] = []

    async def on_event(envelope: dict[str, Any]) -> dict[str, Any] | None:
        if envelope["header"]["event_type"] != "card.action.trigger":
            return None
        seen.append(envelope)
        return {"toast": {"type": "success", "content": "Stopping…"}}

    _, message_id = await card_message(sim, streaming=False)
    gw = await start_gateway(sim, on_event)
    try:
        action = await sim.click(message_id, "Stop", operator_open_id="ou_clicker")
    finally:
        await gw.stop()
    assert action.error is None, action.error
    assert action.toast == {"type": "success", "content": "Stopping…"}
    assert action.code == 200 and action.latency_s is not None and action.latency_s < 3
    [envelope] = seen
    assert envelope["schema"] == "2.0"
    assert envelope["header"]["event_id"] == action.event_id
    event = envelope["event"]
    assert event["operator"]["open_id"] == "ou_clicker"
    assert event["action"] == {
        "value": {"action": "stop", "k": "p2p:oc_sim_p2p", "t": 1},
        "tag": "button",
    }
    assert event["context"] == {"open_message_id": message_id, "open_chat_id": "oc_sim_p2p"}
    assert event["token"] and event["host"] == "im_message"
    assert sim.card_actions == [action]


async def test_late_and_bad_answers_are_recorded(sim):
    delay = [0.0]
    answer: list[Any] = [{"toast": {"type": "info", "content": "ok"}}]

    async def on_event(envelope: dict[str, Any]) -> dict[str, Any] | None:
        await asyncio.sleep(delay[0])  # a handler that is slow on purpose
        return answer[0]

    _, message_id = await card_message(sim, streaming=True)
    gw = await start_gateway(sim, on_event, ack_deadline=10)
    try:
        answer[0] = {"toast": {"type": "party", "content": "?"}}
        bad = await sim.click(message_id, "Stop")
        answer[0] = {"toast": {"type": "info", "content": "x"}, "card": {"type": "raw", "data": {}}}
        card_while_streaming = await sim.click(message_id, "Stop")
        answer[0] = {"toast": {"type": "info", "content": "ok"}}
        delay[0] = 3.3
        late = await sim.click(message_id, "Stop")
    finally:
        await gw.stop()
    assert bad.error and "invalid toast" in bad.error
    assert card_while_streaming.error and "streams" in card_while_streaming.error
    assert late.error and "after" in late.error and late.latency_s > 3


async def test_streaming_card_refuses_updates_while_a_click_waits(sim):
    release = asyncio.Event()
    entered = asyncio.Event()

    async def on_event(envelope: dict[str, Any]) -> dict[str, Any] | None:
        entered.set()
        await release.wait()
        return {"toast": {"type": "info", "content": "ok"}}

    card_id, message_id = await card_message(sim, streaming=True)
    gw = await start_gateway(sim, on_event)
    try:
        click = asyncio.create_task(sim.click(message_id, "Stop"))
        await asyncio.wait_for(entered.wait(), 10)
        async with FeishuReplier(
            app_id=sim.options.app_id,
            app_secret=sim.options.app_secret,
            domain=sim.base_url,
            max_attempts=1,
        ) as replier:
            with pytest.raises(Exception) as err:
                await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "x", sequence=1)
            assert getattr(err.value, "code", None) == 200810
            release.set()
            assert (await click).error is None
            await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "x", sequence=2)
    finally:
        await gw.stop()
