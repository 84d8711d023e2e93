"""The simulator's CardKit: entities, streaming text, settings, full updates, sequence checks,
the streaming timeout, limits, the missing-scope refusal, and messages that show an entity.

Driven through the bot's own REST client (real HTTP), with retries off so errors surface."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from feishu_bot.errors import FeishuApiError, FeishuRateLimited
from feishu_bot.feishu import render
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.cardkit import find_button

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def replier(sim: FeishuSimulator) -> AsyncIterator[FeishuReplier]:
    async with FeishuReplier(
        app_id=sim.options.app_id,
        app_secret=sim.options.app_secret,
        domain=sim.base_url,
        max_attempts=1,
    ) as client:
        yield client


def _streaming_card(text: str = "…") -> dict:
    return render.card2(text, state="working", streaming=True)


async def _sent(sim: FeishuSimulator, replier: FeishuReplier, card: dict) -> tuple[str, str]:
    user = await sim.push_message(text="question")
    card_id = await replier.create_card_entity(card)
    message_id = await replier.reply_card_entity(user, card_id)
    return card_id, message_id


async def test_stream_then_close_then_final_update(sim, replier):
    card_id, message_id = await _sent(sim, replier, _streaming_card())
    msg = sim.message(message_id)
    assert msg.content == {"type": "card", "data": {"card_id": card_id}}
    assert msg.card_entity is sim.records.cards[card_id]

    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "Hel", sequence=1)
    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "Hello", sequence=2)
    assert sim.message_text(msg) == "Hello"
    await replier.set_card_streaming(card_id, False, sequence=3)
    entity = sim.records.cards[card_id]
    assert entity.streaming is False
    final = render.final_cards2("Hello world", note="1.0s")[0]
    await replier.update_card_entity(card_id, final, sequence=4)
    assert sim.rendered_card(message_id) == final
    assert "Hello world" in sim.message_text(msg)
    # The message's versions are the card as its user saw it, first to last.
    assert msg.versions[0]["schema"] == "2.0" and msg.versions[-1] == final
    assert len(msg.versions) == 1 + len(entity.ops)
    assert [op for op, _, code in entity.ops if code == 0] == [
        "content",
        "content",
        "settings",
        "update",
    ]


async def test_sequence_must_increase(sim, replier):
    card_id, _ = await _sent(sim, replier, _streaming_card())
    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "a", sequence=5)
    for seq in (5, 4):
        with pytest.raises(FeishuApiError) as err:
            await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "ab", sequence=seq)
        assert err.value.code == 300317


async def test_repeated_uuid_is_done_once(sim, replier):
    card_id, _ = await _sent(sim, replier, _streaming_card())
    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "a", sequence=1, uuid="u1")
    # A retry of the same operation (same uuid and sequence) is answered as done.
    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "a", sequence=1, uuid="u1")
    assert len(sim.records.cards[card_id].ops) == 1


async def test_text_updates_need_streaming_mode(sim, replier):
    card_id, _ = await _sent(sim, replier, render.card2("x", state="working", streaming=False))
    with pytest.raises(FeishuApiError) as err:
        await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "y", sequence=1)
    assert err.value.code == 300309
    await replier.set_card_streaming(card_id, True, sequence=2)
    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "y", sequence=3)


async def test_streaming_closes_by_itself_after_the_ttl(sim, replier):
    now = [1000.0]
    sim.cardkit.clock = lambda: now[0]
    card_id, message_id = await _sent(sim, replier, _streaming_card())
    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "early", sequence=1)
    now[0] += 600  # Feishu closes streaming mode 10 minutes after it opened
    with pytest.raises(FeishuApiError) as err:
        await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "late", sequence=2)
    assert err.value.code == 200850
    entity = sim.records.cards[card_id]
    assert entity.streaming is False and entity.timed_out
    # Full updates still work after the close.
    await replier.update_card_entity(card_id, render.final_cards2("late")[0], sequence=3)
    assert "late" in sim.message_text(sim.message(message_id))


async def test_card_json_validation(sim, replier):
    cases = [
        ({"elements": [{"tag": "markdown", "content": "1.0"}]}, 300303),
        ({"schema": "2.0", "config": {"update_multi": False}, "body": {"elements": []}}, 300302),
        (
            {
                "schema": "2.0",
                "body": {
                    "elements": [
                        {"tag": "markdown", "content": "a", "element_id": "x"},
                        {"tag": "markdown", "content": "b", "element_id": "x"},
                    ]
                },
            },
            300301,
        ),
        ({"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": ""}]}}, 200220),
        (render.card2("x" * 40_000, state="done", max_bytes=60_000), 200860),
    ]
    for card, code in cases:
        with pytest.raises(FeishuApiError) as err:
            await replier.create_card_entity(card)
        assert err.value.code == code, card


async def test_entity_is_sent_once_and_must_exist(sim, replier):
    card_id, _ = await _sent(sim, replier, _streaming_card())
    user = await sim.push_message(text="again")
    for bad in (card_id, "123"):
        with pytest.raises(FeishuApiError) as err:
            await replier.reply_card_entity(user, bad)
        assert err.value.code == 230099


async def test_missing_scope_refusal(sim, replier):
    sim.cardkit.refuse()
    with pytest.raises(FeishuApiError) as err:
        await replier.create_card_entity(_streaming_card())
    assert err.value.status == 400
    assert err.value.code == 99991672
    assert "cardkit:card:write" in str(err.value)
    sim.cardkit.allow()
    assert await replier.create_card_entity(_streaming_card())


async def test_ten_operations_per_second_per_card(sim, replier):
    card_id, _ = await _sent(sim, replier, _streaming_card())
    for seq in range(1, 11):
        await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "a" * seq, sequence=seq)
    with pytest.raises(FeishuRateLimited):
        await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "b", sequence=11)
    assert sim.records.cards[card_id].rate_limited == 1


async def test_updates_fail_while_a_click_waits_on_a_streaming_card(sim, replier):
    card_id, _ = await _sent(sim, replier, _streaming_card())
    entity = sim.records.cards[card_id]
    entity.interacting = 1  # what push_card_action holds until the bot's ack arrives
    with pytest.raises(FeishuApiError) as err:
        await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "x", sequence=1)
    assert err.value.code == 200810
    entity.interacting = 0
    await replier.stream_card_text(card_id, render.ANSWER_ELEMENT, "x", sequence=1)


async def test_find_button_in_2_0_and_1_0_cards():
    signed = {"action": "stop", "sig": "s"}
    card = render.card2("x", state="working", buttons=[render.Button("Stop", signed)])
    assert find_button(json.loads(json.dumps(card)), "Stop") == signed
    old = {
        "elements": [
            {
                "tag": "action",
                "actions": [
                    {
                        "tag": "button",
                        "text": {"tag": "plain_text", "content": "Go"},
                        "value": {"a": 1},
                    }
                ],
            }
        ]
    }
    assert find_button(old, "Go") == {"a": 1}
    assert find_button(card, "Nope") is None
