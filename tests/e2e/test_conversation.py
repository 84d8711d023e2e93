"""A user's view: messages in, answers out, through the simulator and the real Claude CLI."""

from __future__ import annotations

import json

import psutil

from database.store import SessionStore
from feishu_bot.simulator import FeishuSimulator, content_text
from tests.e2e.conftest import StartBot, final_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply


async def test_p2p_message_streams_a_card_and_ends_with_the_complete_answer(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    answer = "The answer is forty-two, and here is a rather long explanation of why that is so."
    anthropic.enqueue(Reply(answer, chunks=6, chunk_delay=0.5))
    await start_bot()
    mid = await sim.push_message(text="what is the answer?")
    await final_text(sim, mid, contains=answer)
    replies = sim.replies_to(mid)
    assert len(replies) == 1
    card = replies[0]
    assert card.msg_type == "interactive"
    # the user saw progress: the card was updated while Claude streamed, then finished
    assert len(card.versions) >= 2
    first_shown = content_text("interactive", card.versions[0])
    assert answer not in first_shown  # the first version showed partial text
    # the "working" reaction came and went
    assert any(r.message_id == mid for r in sim.reactions)
    await sim.wait_for(lambda: not sim.live_reactions(mid))
    # the prompt reached the API
    assert anthropic.message_requests[-1].last_user_text.endswith("what is the answer?")


async def test_second_message_resumes_the_session(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot()
    first = await sim.push_message(text="remember the word PAPAYA")
    await final_text(sim, first, contains="echo: remember the word PAPAYA")
    second = await sim.push_message(text="which word?")
    await final_text(sim, second, contains="echo: which word?")
    body = json.dumps(anthropic.message_requests[-1].body)
    assert "remember the word PAPAYA" in body  # the earlier turn travelled with the resume
    await running.stop()  # drains the bookkeeping that follows the delivered answer
    reopened = await SessionStore.open(running.settings.DATABASE_PATH)
    conv = await reopened.get_conversation("p2p:oc_sim_p2p")
    await reopened.close()
    assert conv.session_id and conv.turn_count == 2


async def test_group_answers_only_when_mentioned(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    ignored = await sim.push_message(chat_type="group", text="chatter among humans")
    await sim.wait_ack(ignored)
    asked = await sim.push_message(chat_type="group", text="hello bot", mention_bot=True)
    text = await final_text(sim, asked, contains="echo: hello bot")
    assert "@_user_1" not in text and "ClaudeBot" not in text
    assert sim.replies_to(ignored) == []
    assert len(anthropic.message_requests) == 1


async def test_same_event_three_times_gives_one_run_and_one_answer(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot()
    mid = await sim.push_message(text="only once please")
    event_id = sim.user_messages[mid].event_id
    await sim.redeliver(event_id)
    await sim.redeliver(event_id)
    await final_text(sim, mid, contains="echo: only once please")
    # a later message in the same conversation proves the redeliveries were handled
    sentinel = await sim.push_message(text="sentinel")
    await final_text(sim, sentinel, contains="echo: sentinel")
    assert len(sim.replies_to(mid)) == 1
    assert len(anthropic.message_requests) == 2
    assert running.bot.dispatcher.counters.duplicates_dropped == 2
    assert all(a.code == 200 for a in sim.acks)


async def test_unauthorized_sender_is_refused_with_their_open_id(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot(FEISHU_ALLOW_ALL=False, FEISHU_ALLOWED_USERS="ou_someone_else")
    mid = await sim.push_message(text="let me in", sender_open_id="ou_stranger")
    text = await final_text(sim, mid, contains="ou_stranger")
    assert "oc_sim_p2p" in text and "FEISHU_ALLOWED_USERS" in text
    again = await sim.push_message(text="please", sender_open_id="ou_stranger")
    await sim.wait_ack(again)
    allowed = await sim.push_message(text="hi", sender_open_id="ou_someone_else", chat_id="oc_2")
    await final_text(sim, allowed, contains="echo: hi")
    assert sim.replies_to(again) == []  # at most one refusal per user per minute
    assert len(anthropic.message_requests) == 1


async def test_unknown_message_type_is_not_supported_and_runs_nothing(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    mid = await sim.push_message(msg_type="share_calendar_event", content={"summary": "x"})
    text = await final_text(sim, mid, contains="not supported")
    assert "share_calendar_event" in text
    assert anthropic.message_requests == []


async def test_post_rich_text_with_link_reaches_claude(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    content = {
        "zh_cn": {
            "title": "Bug report",
            "content": [
                [
                    {"tag": "text", "text": "see "},
                    {"tag": "a", "text": "the log", "href": "https://x.test/l"},
                ],
            ],
        }
    }
    mid = await sim.push_message(msg_type="post", content=content)
    await final_text(sim, mid, contains="Bug report")
    prompt = anthropic.message_requests[-1].last_user_text
    assert "Bug report" in prompt and "https://x.test/l" in prompt


async def test_no_cli_processes_left_after_stop(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot()
    mid = await sim.push_message(text="quick one")
    await final_text(sim, mid, contains="echo: quick one")
    assert await running.stop() == 0
    children = psutil.Process().children(recursive=True)
    assert [c for c in children if "claude" in " ".join(c.cmdline())] == []


async def test_a_topic_is_its_own_conversation_and_replies_stay_in_the_thread(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot()
    in_group = await sim.push_message(chat_type="group", text="group level", mention_bot=True)
    await final_text(sim, in_group, contains="echo: group level")
    root = "om_topic_root_1"
    in_topic = await sim.push_message(
        chat_type="group",
        text="inside the topic",
        mention_bot=True,
        root_id=root,
        thread_id="omt_1",
    )
    await final_text(sim, in_topic, contains="echo: inside the topic")
    (reply,) = sim.replies_to(in_topic)
    assert reply.reply_in_thread is True
    assert sim.replies_to(in_group)[0].reply_in_thread is False
    # the topic did not resume the group's session
    assert "group level" not in json.dumps(anthropic.message_requests[-1].body)
    await running.stop()
    store = await SessionStore.open(running.settings.DATABASE_PATH)
    try:
        topic = await store.get_conversation(f"thread:oc_sim_group:{root}")
        group = await store.get_conversation("group:oc_sim_group")
    finally:
        await store.close()
    assert topic and group and topic.session_id != group.session_id
