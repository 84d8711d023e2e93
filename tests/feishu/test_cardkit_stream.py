"""CardKitStream against the Feishu simulator over real HTTP: a streamed CardKit answer,
streaming closed early (by Feishu, or by the stream before Feishu would), long answers,
buttons and blocks, a restarted run continuing the card, and a refusal handed to the owner.
(Moving to PATCH cards when CardKit is refused or off: test_reply_switch.py.)"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from loguru import logger

from feishu_bot.errors import FeishuApiError
from feishu_bot.feishu.buttons import ButtonSigner
from feishu_bot.feishu.cardkit_state import CardKitState
from feishu_bot.feishu.cardkit_stream import CardKitRefused, CardKitStream
from feishu_bot.feishu.render import ANSWER_ELEMENT, Block, Button
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.cardkit import find_button

pytestmark = pytest.mark.timeout(60)

KEY = "p2p:oc_sim_p2p"


@pytest.fixture
async def replier(sim: FeishuSimulator) -> AsyncIterator[FeishuReplier]:
    async with FeishuReplier(
        app_id=sim.options.app_id, app_secret=sim.options.app_secret, domain=sim.base_url
    ) as client:
        yield client


@pytest.fixture
def signer(sim: FeishuSimulator) -> ButtonSigner:
    return ButtonSigner(sim.options.app_secret)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    sink = io.StringIO()
    handler = logger.add(sink, level="DEBUG", format="{level} {message}")
    yield sink
    logger.remove(handler)


def make_stream(
    replier: FeishuReplier,
    user_msg: str,
    kit: CardKitState,
    signer: ButtonSigner | None = None,
    **kw: Any,
) -> CardKitStream:
    kw.setdefault("text_interval", 0.02)
    kw.setdefault("full_interval", 0.05)
    kw.setdefault("op_interval", 0.005)
    return CardKitStream(
        replier,
        user_msg,
        in_thread=False,
        cardkit=kit,
        signer=signer,
        conversation_key=KEY,
        turn_id=1,
        **kw,
    )


async def until(predicate: Any, timeout: float = 10) -> None:
    """For state that announces no change of its own (callbacks the stream calls)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing to await on
            await asyncio.sleep(0.01)


def cardkit_requests(sim: FeishuSimulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in sim.requests if "/cardkit/" in r.path]


async def test_streamed_cardkit_answer(sim, replier, signer):
    user = await sim.push_message(text="hi")
    stream = make_stream(replier, user, CardKitState(), signer)
    await stream.queued(2)
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    entity = reply.card_entity
    assert entity is not None and entity.streaming
    assert "queued, position 2" in sim.message_text(reply)
    assert find_button(sim.rendered_card(reply.message_id), "Stop") is not None

    await stream.started()
    await sim.wait_for(lambda: sim.live_reactions(user))
    for text in ("The", "The answer", "The answer is 42"):
        await stream.update(text)
        await sim.wait_for(lambda text=text: sim.message_text(reply).startswith(text))
    await stream.finish("The answer is 42.", note="1.2s · 1 turn")

    assert not sim.live_reactions(user)
    assert len(sim.replies_to(user)) == 1  # the same card, updated in place
    text = sim.message_text(reply)
    assert text.startswith("The answer is 42.") and "1.2s · 1 turn" in text
    card = sim.rendered_card(reply.message_id)
    assert card["config"]["streaming_mode"] is False and not entity.streaming
    assert card["header"]["template"] == "green"
    new = find_button(card, "New session")
    assert signer.verify(new).action == "new"
    assert find_button(card, "Stop") is None
    kinds = [op for op, _, code in entity.ops if code == 0]
    assert "content" in kinds and kinds[-2:] == ["settings", "update"]
    assert all(code == 0 for _, _, code in entity.ops) and entity.rate_limited == 0
    # The text went to the markdown element while streaming.
    content_bodies = [
        r.body for r in sim.requests if r.path.endswith(f"/elements/{ANSWER_ELEMENT}/content")
    ]
    assert content_bodies and content_bodies[-1]["content"] == "The answer is 42"
    sequences = [
        b["sequence"] for b in (r.body for r in sim.requests if "/cardkit/v1/cards/" in r.path)
    ]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


async def test_quick_answer_is_one_message(sim, replier, signer):
    user = await sim.push_message(text="hi")
    stream = make_stream(replier, user, CardKitState(), signer)
    await stream.started()
    await stream.finish("fast", note="0.1s")
    [reply] = sim.replies_to(user)
    assert reply.card_entity is None and reply.content["schema"] == "2.0"
    assert sim.message_text(reply).startswith("fast")
    assert find_button(reply.content, "New session") is not None
    assert cardkit_requests(sim) == []


async def test_slow_start_shows_the_card_with_stop_before_any_text(sim, replier, signer):
    user = await sim.push_message(text="think hard")
    stream = make_stream(replier, user, CardKitState(), signer, show_after=0.05)
    await stream.started()
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    card = sim.rendered_card(reply.message_id)
    assert find_button(card, "Stop") is not None
    assert card["header"]["title"]["content"] == "Claude is working…"
    await stream.update("thought")
    await stream.finish("thought through")
    assert len(sim.replies_to(user)) == 1


async def test_ui_ids_are_told_and_a_restarted_run_continues_the_card(sim, replier, signer):
    user = await sim.push_message(text="long")
    seen: list[tuple[str, str]] = []
    stream = make_stream(replier, user, CardKitState(), signer)
    stream.on_ui = lambda kind, value: seen.append((kind, value))
    await stream.started()
    await stream.update("half way")
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    await until(lambda: len(seen) == 2)
    entity = reply.card_entity
    assert sorted(kind for kind, _ in seen) == ["card", "reaction"]
    card = dict(seen)["card"]
    assert card == f"{reply.message_id}#{entity.card_id}"
    await stream.aclose()  # the bot dies here; the card still streams with its Stop button

    again = make_stream(replier, user, CardKitState(), signer)
    again.adopt(card)
    await again.fail("The bot restarted while Claude was working on this.")
    assert len(sim.replies_to(user)) == 1
    shown = sim.rendered_card(reply.message_id)
    assert shown["header"]["template"] == "red" and not entity.streaming
    assert "bot restarted" in sim.message_text(reply)
    assert find_button(shown, "Stop") is None
    assert all(code == 0 for _, _, code in entity.ops)


async def test_streaming_closed_by_feishu_continues_with_full_updates(sim, replier, signer):
    sim_now = [0.0]
    sim.cardkit.clock = lambda: sim_now[0]
    user = await sim.push_message(text="long job")
    stream = make_stream(replier, user, CardKitState(), signer)
    await stream.update("minute 1")
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    await sim.wait_for(lambda: sim.message_text(reply).startswith("minute 1"))
    sim_now[0] += 601  # more than 10 minutes later: Feishu has closed streaming mode
    await stream.update("minute 11")
    await sim.wait_for(lambda: sim.message_text(reply).startswith("minute 11"))
    entity = reply.card_entity
    assert entity.timed_out
    codes = [r.code for r in sim.requests if r.path.endswith("/content")]
    assert codes.count(200850) == 1  # seen once, then full updates
    await stream.update("minute 12")
    await sim.wait_for(lambda: sim.message_text(reply).startswith("minute 12"))
    await stream.finish("all done after 12 minutes", note="720s")
    assert sim.message_text(reply).startswith("all done after 12 minutes")
    assert len(sim.replies_to(user)) == 1


async def test_stream_closes_streaming_itself_before_feishu_does(sim, replier):
    skew = [0.0]  # real time, moved forward by the test

    def clock() -> float:
        return time.monotonic() + skew[0]

    user = await sim.push_message(text="long job")
    stream = make_stream(replier, user, CardKitState(), stream_ttl=540, clock=clock)
    await stream.update("one")
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    skew[0] += 541
    await stream.update("two")
    await sim.wait_for(lambda: sim.message_text(reply).startswith("two"))
    entity = reply.card_entity
    assert not entity.streaming and not entity.timed_out
    assert all(code == 0 for _, _, code in entity.ops)
    assert [op for op, _, _ in entity.ops] == ["settings", "update"]
    await stream.finish("three")
    assert sim.message_text(reply).startswith("three")


async def test_long_answer_continues_in_further_cards(sim, replier, signer):
    user = await sim.push_message(text="essay")
    stream = make_stream(replier, user, CardKitState(), signer)
    text = "\n\n".join(f"paragraph {i}: " + "word " * 120 for i in range(150))
    await stream.update(text[:5000])
    await sim.wait_for(lambda: sim.replies_to(user))
    await stream.update(text)
    await stream.finish(text, note="9.9s")
    replies = sim.replies_to(user)
    assert len(replies) >= 3
    assert replies[0].card_entity is not None
    bodies = [sim.rendered_card(r.message_id)["body"]["elements"][0]["content"] for r in replies]
    assert "".join(bodies) == text
    assert find_button(sim.rendered_card(replies[-1].message_id), "New session") is not None
    assert "9.9s" in sim.message_text(replies[-1])


async def test_blocks_on_the_card_then_their_record(sim, replier, signer):
    user = await sim.push_message(text="run ls")
    stream = make_stream(replier, user, CardKitState(), signer)
    await stream.started()
    allow = Button("Allow once", {"action": "allow"}, "primary")
    await stream.show_block(Block("r1", "**Bash** wants to run `ls`", (allow,)))
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    await sim.wait_for(lambda: find_button(sim.rendered_card(reply.message_id), "Allow once"))
    await stream.resolve_block("r1", "✅ Allowed once by someone")
    await sim.wait_for(lambda: "✅ Allowed once" in sim.message_text(reply))
    assert find_button(sim.rendered_card(reply.message_id), "Allow once") is None
    await stream.finish("files: a b", note="n")
    assert "✅ Allowed once by someone" in sim.message_text(reply)


async def test_fail_shows_red_card_with_partial_text(sim, replier):
    user = await sim.push_message(text="hi")
    stream = make_stream(replier, user, CardKitState())
    await stream.update("half an answer")
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    await stream.fail("Stopped by /stop.", partial_text="half an answer")
    card = sim.rendered_card(reply.message_id)
    assert card["header"]["template"] == "red"
    assert "half an answer" in sim.message_text(reply) and "Stopped by /stop." in (
        sim.message_text(reply)
    )
    await stream.finish("ignored")  # the first final wins
    assert "ignored" not in sim.message_text(reply)


async def test_a_plain_message_id_is_not_adopted(sim, replier):
    stream = make_stream(replier, await sim.push_message(text="q"), CardKitState())
    with pytest.raises(ValueError, match="not a CardKit card"):
        stream.adopt("om_patch_card")


async def test_refused_create_tells_the_owner_and_sends_nothing_more(sim, replier, logs):
    sim.cardkit.refuse()
    kit = CardKitState()
    user = await sim.push_message(text="hi")
    told: list[str] = []

    async def on_refused() -> None:
        told.append(sim.message_text(sim.replies_to(user)[0]) if sim.replies_to(user) else "")

    stream = make_stream(replier, user, kit, on_refused=on_refused)
    await stream.started()
    await stream.update("partial")
    await until(lambda: told)
    assert told == [""] and stream.refused and kit.refused  # told before anything was shown
    await stream.update("more")
    await stream.show_block(Block("r1", "**Bash** wants to run `ls`"))
    with pytest.raises(CardKitRefused):
        await stream.finish("whole answer")
    with pytest.raises(CardKitRefused):  # every final after the refusal says so
        await stream.fail("failed")
    assert cardkit_requests(sim) == ["POST /open-apis/cardkit/v1/cards"]
    assert sim.replies_to(user) == [] and told == [""]
    assert not sim.live_reactions(user)  # its own reaction is removed all the same
    assert "cardkit:card:write" in logs.getvalue()


async def test_refused_reply_of_a_created_card_tells_the_owner(sim, replier):
    """The entity was created but the reply that sends it is refused for good (the user's
    message was recalled, say): the owner is told; CardKit itself is not marked refused."""

    class RefusingReply:
        def __getattr__(self, name: str) -> Any:
            return getattr(replier, name)

        async def reply_card_entity(self, *args: Any, **kwargs: Any) -> str:
            raise FeishuApiError("The message is recalled.", status=400, code=230011)

    user = await sim.push_message(text="hi")
    told: list[bool] = []

    async def on_refused() -> None:
        told.append(True)

    kit = CardKitState()
    stream = make_stream(RefusingReply(), user, kit, on_refused=on_refused)
    await stream.update("partial")
    await until(lambda: told)
    assert stream.refused and not kit.refused
    assert cardkit_requests(sim) == ["POST /open-apis/cardkit/v1/cards"]
    with pytest.raises(CardKitRefused) as refused:
        await stream.finish("whole answer")
    assert refused.value.code == 230011 and sim.replies_to(user) == []
