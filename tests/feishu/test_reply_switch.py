"""ReplySwitch against the Feishu simulator over real HTTP: CardKit refused at create moves the
turn to PATCH cards with what the card showed (text and blocks), FEISHU_CARDKIT=off is PATCH
only, one reaction across a move, a refusal while the answer waits, a refusal remembered and
re-checked, and a restarted run continuing either kind of card."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from loguru import logger

from feishu_bot.feishu.buttons import ButtonSigner
from feishu_bot.feishu.cardkit_state import CardKitState
from feishu_bot.feishu.cardkit_stream import CardKitStream
from feishu_bot.feishu.patch_stream import PatchStream
from feishu_bot.feishu.render import Block, Button
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.feishu.reply_sink import BlockSink, ReplySink
from feishu_bot.feishu.reply_switch import ReplySwitch, ReplySwitchFactory
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.cardkit import find_button
from tests.feishu.test_cardkit_stream import cardkit_requests, until

pytestmark = pytest.mark.timeout(60)

KEY = "p2p:oc_sim_p2p"
ALLOW = Button("Allow once", {"action": "allow"}, "primary")


@pytest.fixture
async def replier(sim: FeishuSimulator) -> AsyncIterator[FeishuReplier]:
    async with FeishuReplier(
        app_id=sim.options.app_id, app_secret=sim.options.app_secret, domain=sim.base_url
    ) as client:
        yield client


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    sink = io.StringIO()
    handler = logger.add(sink, level="DEBUG", format="{level} {message}")
    yield sink
    logger.remove(handler)


def make_switch(replier: Any, user_msg: str, kit: CardKitState, **kw: Any) -> ReplySwitch:
    factory = ReplySwitchFactory(
        cardkit=kit,
        signer=ButtonSigner("sim_secret"),
        text_interval=0.02,
        full_interval=0.05,
        op_interval=0.005,
        **kw,
    )
    return factory(replier, user_msg, in_thread=False, conversation_key=KEY, turn_id=1)


def journal(switch: ReplySwitch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    switch.on_ui = lambda kind, value: seen.append((kind, value))
    return seen


def is_patch_card(sim: FeishuSimulator, message: Any) -> bool:
    return message.card_entity is None and message.content.get("schema") != "2.0"


PROTOCOL = sorted(
    {name for proto in (ReplySink, BlockSink) for name in vars(proto) if not name.startswith("_")}
)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ReplySwitch(None, "om_user", in_thread=False, cardkit=CardKitState()),
        lambda: ReplySwitch(None, "om_user", in_thread=False, cardkit=CardKitState("off")),
        lambda: PatchStream(None, "om_user", in_thread=False),
        lambda: CardKitStream(None, "om_user", in_thread=False, cardkit=CardKitState()),
    ],
    ids=["switch-cardkit", "switch-patch", "patch", "cardkit"],
)
async def test_every_sink_implements_the_whole_protocol(make: Any) -> None:
    """Callers no longer probe with hasattr: every sink must have every member."""
    sink = make()
    assert "show_block" in PROTOCOL and "on_ui" in PROTOCOL and len(PROTOCOL) == 12
    assert [name for name in PROTOCOL if not hasattr(sink, name)] == []
    sink.on_ui = print
    assert sink.on_ui is print


async def test_refused_at_create_moves_to_a_patch_card_with_the_text_and_blocks(sim, replier):
    sim.cardkit.refuse()
    user = await sim.push_message(text="run ls")
    switch = make_switch(replier, user, CardKitState())
    await switch.started()
    # Both are on the CardKit card's to-do list when its create is refused.
    await switch.show_block(Block("r1", "**Bash** wants to run `ls`", (ALLOW,)))
    await switch.update("I will list the files.")
    replies = await sim.wait_for(lambda: len(sim.replies_to(user)) == 2 and sim.replies_to(user))
    assert not switch.uses_cardkit
    [answer] = [r for r in replies if find_button(r.content, "Allow once") is None]
    [asked] = [r for r in replies if r is not answer]
    assert is_patch_card(sim, answer) and asked.card_entity is None
    assert sim.message_text(answer).startswith("I will list the files.")
    assert "wants to run `ls`" in sim.message_text(asked)

    await switch.resolve_block("r1", "✅ Allowed once by someone")
    await sim.wait_for(lambda: "✅ Allowed once" in sim.message_text(asked))
    assert find_button(sim.rendered_card(asked.message_id), "Allow once") is None
    await switch.finish("files: a b", note="n")
    assert len(sim.replies_to(user)) == 2  # the answer went into the PATCH card
    assert sim.message_text(answer).startswith("files: a b")
    assert sim.rendered_card(answer.message_id)["header"]["template"] == "green"
    assert cardkit_requests(sim) == ["POST /open-apis/cardkit/v1/cards"]


async def test_a_queued_card_refused_is_replayed_as_queued(sim, replier):
    sim.cardkit.refuse()
    user = await sim.push_message(text="later")
    switch = make_switch(replier, user, CardKitState())
    await switch.queued(3)
    [card] = await sim.wait_for(lambda: sim.replies_to(user))
    assert is_patch_card(sim, card) and "queued, position 3" in sim.message_text(card)
    await switch.started()
    await switch.finish("done")
    assert [sim.message_text(r)[:4] for r in sim.replies_to(user)] == ["done"]


async def test_one_reaction_across_a_move_to_patch(sim, replier):
    sim.cardkit.refuse()
    user = await sim.push_message(text="hi")
    switch = make_switch(replier, user, CardKitState())
    seen = journal(switch)
    await switch.started()
    await switch.started()
    await switch.update("partial")
    [card] = await sim.wait_for(lambda: sim.replies_to(user))
    await sim.wait_for(lambda: sim.live_reactions(user))
    await switch.finish("whole answer")
    [reaction] = [r for r in sim.records.reactions if r.message_id == user]
    assert reaction.removed_at is not None
    assert [v for k, v in seen if k == "reaction"] == [reaction.reaction_id, ""]
    assert [v for k, v in seen if k == "card"] == [card.message_id]


async def test_a_refusal_while_the_answer_waits_leaves_no_working_card(sim, replier):
    """The create is in flight when the turn ends; CardKit then refuses it. The answer goes
    into the PATCH card the switch moved to: one message. (CardStream replayed the text into
    a PATCH card nobody finished, next to a separate final card.)"""
    sim.cardkit.refuse()
    reached, release = asyncio.Event(), asyncio.Event()

    class SlowCreate:
        def __getattr__(self, name: str) -> Any:
            return getattr(replier, name)

        async def create_card_entity(self, card: dict[str, Any]) -> str:
            reached.set()
            await release.wait()
            return await replier.create_card_entity(card)

    user = await sim.push_message(text="hi")
    switch = make_switch(SlowCreate(), user, CardKitState())
    await switch.started()
    await switch.update("partial")
    await asyncio.wait_for(reached.wait(), 5)
    finisher = asyncio.create_task(switch.finish("whole answer", note="n"))
    await until(lambda: switch.closed)
    release.set()
    await asyncio.wait_for(finisher, 10)
    [card] = sim.replies_to(user)
    assert is_patch_card(sim, card) and sim.message_text(card).startswith("whole answer")
    assert sim.rendered_card(card.message_id)["header"]["template"] == "green"
    assert not sim.live_reactions(user)


async def test_cardkit_off_uses_patch(sim, replier):
    user = await sim.push_message(text="hi")
    switch = make_switch(replier, user, CardKitState("off"))
    assert not switch.uses_cardkit
    await switch.update("a")
    await sim.wait_for(lambda: sim.replies_to(user))
    await switch.finish("ab")
    assert sim.message_text(sim.replies_to(user)[0]).startswith("ab")
    assert cardkit_requests(sim) == []


async def test_blocks_are_cards_of_their_own_on_the_patch_path(sim, replier):
    user = await sim.push_message(text="run ls")
    switch = make_switch(replier, user, CardKitState("off"))
    await switch.started()
    await switch.show_block(Block("r1", "**Bash** wants to run `ls`", (ALLOW,)))
    [block_msg] = await sim.wait_for(lambda: sim.replies_to(user))
    assert find_button(block_msg.content, "Allow once") is not None
    await switch.resolve_block("r1", "❌ Denied")
    await sim.wait_for(lambda: "❌ Denied" in sim.message_text(block_msg))
    assert find_button(block_msg.content, "Allow once") is None
    await switch.finish("no files listed")
    assert len(sim.replies_to(user)) == 2


async def test_cardkit_refused_falls_back_to_patch_and_rechecks_later(sim, replier, logs):
    sim.cardkit.refuse()
    now = [0.0]
    kit = CardKitState(recheck_after=600, clock=lambda: now[0])
    users = [await sim.push_message(text=f"q{i}") for i in range(3)]
    for user in users[:2]:
        switch = make_switch(replier, user, kit)
        await switch.started()
        await switch.update("partial")
        await sim.wait_for(lambda user=user: sim.replies_to(user))
        await switch.finish("whole answer", note="n")
        [reply] = sim.replies_to(user)
        assert is_patch_card(sim, reply)
        assert sim.message_text(reply).startswith("whole answer")
        assert not switch.uses_cardkit
    # One refused create: the second turn did not ask again, and one WARNING names the scope.
    assert cardkit_requests(sim) == ["POST /open-apis/cardkit/v1/cards"]
    warnings = [line for line in logs.getvalue().splitlines() if line.startswith("WARNING")]
    assert len([w for w in warnings if "cardkit:card:write" in w]) == 1

    sim.cardkit.allow()
    now[0] += 601  # the re-check period has passed
    switch = make_switch(replier, users[2], kit)
    await switch.update("typing")
    [reply] = await sim.wait_for(lambda: sim.replies_to(users[2]))
    await switch.finish("done")
    assert reply.card_entity is not None and switch.uses_cardkit and not kit.refused


async def test_adopting_a_patch_card_continues_on_the_patch_path(sim, replier):
    user = await sim.push_message(text="q")
    old = make_switch(replier, user, CardKitState("off"))
    seen = journal(old)
    await old.update("partial")
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    await until(lambda: seen)
    assert seen == [("card", reply.message_id)]
    await old.aclose()
    again = make_switch(replier, user, CardKitState())
    again.adopt(reply.message_id)
    assert not again.uses_cardkit
    await again.finish("the whole answer")
    assert len(sim.replies_to(user)) == 1
    assert sim.message_text(reply).startswith("the whole answer")


async def test_adopting_a_cardkit_card_continues_it(sim, replier):
    user = await sim.push_message(text="long")
    old = make_switch(replier, user, CardKitState())
    seen = journal(old)
    await old.update("half way")
    [reply] = await sim.wait_for(lambda: sim.replies_to(user))
    await until(lambda: seen)
    assert seen == [("card", f"{reply.message_id}#{reply.card_entity.card_id}")]
    await old.aclose()  # the bot dies here
    again = make_switch(replier, user, CardKitState())
    again.adopt(seen[0][1])
    assert again.uses_cardkit and again.card_id == reply.message_id
    await again.fail("The bot restarted while Claude was working on this.")
    assert len(sim.replies_to(user)) == 1
    assert sim.rendered_card(reply.message_id)["header"]["template"] == "red"
