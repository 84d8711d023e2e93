"""Attachments survive a restart: a journaled image turn downloads its image again, and an image
kept before a restart goes with the question asked after it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from database import SessionStore
from feishu_bot.events import Attachment
from feishu_bot.simulator import FeishuSimulator, UserMessage
from feishu_bot.simulator.media import sample_png
from feishu_bot.turn_input import KEPT_TEXT
from tests.e2e.conftest import StartBot, final_text, shown_text
from tests.fakes.fake_anthropic import FakeAnthropic


def images_in(request: Any) -> list[bytes]:
    last = [m for m in request.messages if m.get("role") == "user"][-1]
    return [
        base64.b64decode(b["source"]["data"])
        for b in last.get("content") or []
        if isinstance(b, dict) and b.get("type") == "image"
    ]


async def test_queued_image_turn_is_replayed_with_its_image(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    shot = sample_png(20, 20, seed=21)
    message_id = "om_replayed_image_turn"
    # Feishu knows the message and its image; the bot died after journaling the turn.
    sim.records.user_messages[message_id] = UserMessage(
        message_id=message_id,
        event_id="ev_replay",
        chat_id="oc_sim_p2p",
        chat_type="p2p",
        sender_open_id="ou_sim_user",
        msg_type="post",
        content={},
    )
    sim.media.add_resource(message_id, "img_replay", shot, kind="image")
    db = tmp_path / "data" / "bot.db"
    async with await SessionStore.open(db) as store:
        turn_id = await store.accept_message(
            message_id,
            conversation_key="p2p:oc_sim_p2p",
            chat_id="oc_sim_p2p",
            prompt="what is on this screenshot?",
            reply_in_thread=False,
            sender_open_id="ou_sim_user",
            attachments=[Attachment("image", "img_replay")],
        )
    assert turn_id is not None
    await start_bot(DATABASE_PATH=db)
    await final_text(sim, message_id, contains="echo:")
    request = anthropic.message_requests[-1]
    assert images_in(request) == [shot]
    assert any(t.startswith("what is on this screenshot?") for t in request.user_texts)
    assert sim.media.resources[(message_id, "img_replay")].fetches == 1


async def test_image_kept_before_a_restart_goes_with_the_next_question(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    first = await start_bot()
    shot = sample_png(12, 12, seed=22)
    image_id = await sim.media.push_image(shot)
    await shown_text(sim, image_id, contains=KEPT_TEXT)
    assert await first.stop() == 0
    await start_bot()
    question = await sim.push_message(text="and what about this one?")
    await final_text(sim, question, contains="echo:")
    assert images_in(anthropic.message_requests[-1]) == [shot]


async def test_new_drops_the_kept_image(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    image_id = await sim.media.push_image(sample_png(seed=23))
    await shown_text(sim, image_id, contains=KEPT_TEXT)
    new = await sim.push_message(text="/new")
    await shown_text(sim, new, contains="new")
    question = await sim.push_message(text="hello")
    await final_text(sim, question, contains="echo:")
    assert images_in(anthropic.message_requests[-1]) == []


async def test_a_sticker_gets_a_clear_reply(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    sticker = await sim.media.push_sticker()
    text = await shown_text(sim, sticker, contains="Stickers")
    assert "can't be downloaded" in text
    assert anthropic.message_requests == []
