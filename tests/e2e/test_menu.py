"""The bot menu (`application.bot.menu_v6`), end to end with the real lark_oapi client."""

from __future__ import annotations

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.records import SentMessage
from tests.e2e.conftest import StartBot, final_text

P2P = "oc_sim_p2p"  # the simulator's private chat of ou_sim_user with the bot


def new_messages(sim: FeishuSimulator, chat_id: str, contains: str) -> list[SentMessage]:
    """Messages the bot sent to `chat_id` unprompted (not replies) showing `contains`."""
    return [
        m
        for m in sim.messages
        if m.chat_id == chat_id and m.reply_to is None and contains in sim.message_text(m)
    ]


async def test_a_status_click_answers_status_in_the_private_chat(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    await start_bot()
    mid = await sim.push_message(text="hi")
    await final_text(sim, mid, contains="echo: hi")

    event_id = await sim.push_menu("status")
    ack = await sim.wait_ack(event_id)
    assert ack.code == 200
    await sim.wait_for(lambda: new_messages(sim, P2P, "Conversation p2p:oc_sim_p2p"), timeout=30)
    (answer,) = new_messages(sim, P2P, "Conversation p2p:oc_sim_p2p")
    text = sim.message_text(answer)
    assert "• turns: 1" in text and "websocket connected" in text
    (post,) = [
        r
        for r in sim.requests
        if r.path == "/open-apis/im/v1/messages" and r.body.get("receive_id") == "ou_sim_user"
    ]
    assert post.query["receive_id_type"] == "open_id"

    # Feishu delivers an event again when its ack is late: the click still answers once.
    await sim.redeliver(event_id)
    await sim.wait_ack(event_id)
    help_id = await sim.push_menu("help")
    await sim.wait_for(lambda: new_messages(sim, P2P, "/status — "), timeout=30)
    assert len(new_messages(sim, P2P, "Conversation p2p:")) == 1
    assert help_id != event_id

    await sim.push_menu("reboot")
    await sim.wait_for(lambda: new_messages(sim, P2P, "(reboot) does nothing here"), timeout=30)


async def test_menu_clicks_follow_the_allowlist_and_need_a_conversation(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    await start_bot(FEISHU_ALLOW_ALL=False, FEISHU_ALLOWED_USERS="ou_boss")
    await sim.push_menu("status", operator_open_id="ou_stranger")
    await sim.wait_for(lambda: sim.records.p2p_chats.get("ou_stranger"), timeout=30)
    stranger_chat = sim.records.p2p_chats["ou_stranger"]
    (refusal,) = await sim.wait_for(
        lambda: new_messages(sim, stranger_chat, "ou_stranger"), timeout=30
    )
    assert "Conversation" not in sim.message_text(refusal)

    # An allowed user who never wrote here: only help runs, the rest asks for a message first.
    await sim.push_menu("new", operator_open_id="ou_boss")
    await sim.wait_for(lambda: sim.records.p2p_chats.get("ou_boss"), timeout=30)
    boss_chat = sim.records.p2p_chats["ou_boss"]
    await sim.wait_for(lambda: new_messages(sim, boss_chat, "Send me a message"), timeout=30)
    # ... and once they have, the menu acts on that conversation
    mid = await sim.push_message(text="hello", sender_open_id="ou_boss", chat_id=boss_chat)
    await final_text(sim, mid, contains="echo: hello")
    await sim.push_menu("stop", operator_open_id="ou_boss")
    await sim.wait_for(lambda: new_messages(sim, boss_chat, "Nothing is running"), timeout=30)
