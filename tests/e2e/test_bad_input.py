"""Bad input gets a clear reply or a logged skip; the conversation keeps working."""

from __future__ import annotations

from feishu_bot.simulator import FeishuSimulator, UserMessage
from feishu_bot.simulator.envelopes import build_message_event
from tests.e2e.conftest import StartBot, final_text
from tests.fakes.fake_anthropic import FakeAnthropic


async def test_malformed_content_gets_a_reply_and_the_chat_goes_on(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot()
    event = build_message_event(
        message_id="om_broken_1",
        chat_id="oc_sim_p2p",
        chat_type="p2p",
        sender_open_id="ou_sim_user",
        msg_type="text",
        content={"text": "x"},
        tenant_key="sim_tenant",
    )
    event["message"]["content"] = "{not json"
    event_id = "ev_broken_1"
    # the platform knows the message even though its content is broken, so it can be replied to
    sim.records.user_messages["om_broken_1"] = UserMessage(
        message_id="om_broken_1",
        event_id=event_id,
        chat_id="oc_sim_p2p",
        chat_type="p2p",
        sender_open_id="ou_sim_user",
        msg_type="text",
        content={},
    )
    await sim.push_event("im.message.receive_v1", event, event_id=event_id)
    ack = await sim.wait_ack(event_id)
    assert ack.code == 200
    await final_text(sim, "om_broken_1", contains="could not read")
    ok = await sim.push_message(text="still fine?")
    await final_text(sim, ok, contains="echo: still fine?")
    assert running.bot.dispatcher.counters.malformed == 1
    assert len(anthropic.message_requests) == 1


async def test_other_bot_events_are_acked_200(sim: FeishuSimulator, start_bot: StartBot) -> None:
    await start_bot()
    events = {
        "im.message.message_read_v1": {
            "reader": {"reader_id": {"open_id": "ou_sim_user"}, "read_time": "1"},
            "message_id_list": ["om_x"],
        },
        "im.message.reaction.created_v1": {
            "message_id": "om_x",
            "reaction_type": {"emoji_type": "SMILE"},
            "operator_type": "user",
            "user_id": {"open_id": "ou_sim_user"},
        },
        "im.chat.member.bot.added_v1": {"chat_id": "oc_new", "operator_id": {"open_id": "ou_1"}},
        "im.chat.access_event.bot_p2p_chat_entered_v1": {
            "chat_id": "oc_p2p_new",
            "operator_id": {"open_id": "ou_1"},
        },
    }
    for event_type, body in events.items():
        event_id = await sim.push_event(event_type, body)
        assert (await sim.wait_ack(event_id)).code == 200, event_type


async def test_empty_mention_and_oversized_text_get_clear_replies(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    empty = await sim.push_message(chat_type="group", text="", mention_bot=True)
    await final_text(sim, empty, contains="empty")
    huge = await sim.push_message(text="y" * 120_000)
    await final_text(sim, huge, contains="too long")
    assert anthropic.message_requests == []


async def test_a_long_prompt_over_100kb_of_text_runs(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    prompt = "line of context\n" * 6000  # 96 KB, under the limit
    mid = await sim.push_message(text=prompt + "END")
    await final_text(sim, mid, contains="END", timeout=90)
    assert anthropic.message_requests[-1].last_user_text.endswith("END")


async def test_wrong_app_secret_exits_2_and_never_logs_it(sim: FeishuSimulator, tmp_path) -> None:
    import io

    from loguru import logger

    from feishu_bot.app import Bot
    from feishu_bot.config import Settings
    from feishu_bot.log import configure_logging

    wrong = "definitely-not-the-secret-42"
    logs = io.StringIO()
    configure_logging(level="DEBUG", secrets=[wrong], stderr=logs)
    try:
        settings = Settings(
            _env_file=None,
            FEISHU_APP_ID=sim.options.app_id,
            FEISHU_APP_SECRET=wrong,
            FEISHU_DOMAIN=sim.base_url,
            DATABASE_PATH=tmp_path / "bot.db",
            CLAUDE_WORKDIR=tmp_path / "ws",
            LOG_DIR="",
        )
        assert await Bot(settings).run() == 2
    finally:
        logger.remove()
    assert "refused" in logs.getvalue()
    assert wrong not in logs.getvalue()
