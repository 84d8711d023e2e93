"""The context of a reply, end to end: a message that quotes another one gets the quoted text
before the user's words in the prompt Claude receives; without the scope im:message.group_msg
the user is told in one line and the turn goes on."""

from __future__ import annotations

import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import StartBot, final_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]

GROUP = "oc_sim_group"


async def test_a_reply_to_another_users_group_message_carries_its_text(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    await start_bot()
    said = "the deploy failed at step 3: exit 137"
    other = await sim.push_message(chat_type="group", sender_open_id="ou_colleague", text=said)
    await sim.wait_ack(other)
    assert sim.replies_to(other) == []  # not addressed to the bot: no answer
    before = len(anthropic.message_requests)
    asked = await sim.push_message(
        chat_type="group", mention_bot=True, text="what does this mean?", parent_id=other
    )
    await final_text(sim, asked, contains="echo:")
    prompt = anthropic.message_requests[before].last_user_text
    quote_at = prompt.index("[Quoted message")
    assert "from another member of the chat" in prompt
    assert "> the deploy failed at step 3: exit 137" in prompt
    assert quote_at < prompt.index("what does this mean?")  # before the user's words


async def test_a_reply_to_the_bots_own_card_carries_the_cards_text(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    anthropic.enqueue(Reply("The answer is forty-two."))
    await start_bot()
    first = await sim.push_message(text="what is the answer?")
    await final_text(sim, first, contains="forty-two")
    [card] = sim.replies_to(first)
    assert card.card_entity is not None  # a CardKit card: read back as its content
    before = len(anthropic.message_requests)
    follow = await sim.push_message(text="why?", parent_id=card.message_id)
    await final_text(sim, follow, contains="echo:")
    prompt = anthropic.message_requests[before].last_user_text
    assert "from the bot (an earlier answer)" in prompt
    assert "> The answer is forty-two." in prompt
    assert "请升级" not in prompt


async def test_without_the_group_scope_the_user_is_told_and_the_turn_goes_on(
    sim: FeishuSimulator, start_bot: StartBot, anthropic: FakeAnthropic
) -> None:
    sim.reads.group_msg_scope = False
    await start_bot()
    other = await sim.push_message(chat_type="group", sender_open_id="ou_colleague", text="secret")
    await sim.wait_ack(other)
    before = len(anthropic.message_requests)
    asked = await sim.push_message(
        chat_type="group", mention_bot=True, text="summarize it", parent_id=other
    )
    text = await final_text(sim, asked, contains="echo:")
    assert "could not read the message you replied to" in text
    assert "im:message.group_msg" in text
    prompt = anthropic.message_requests[before].last_user_text
    assert "secret" not in prompt and "summarize it" in prompt
