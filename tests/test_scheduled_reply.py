"""scheduled_reply: a scheduled run's stream replies into its chat under a header — a new
message in a chat, in the thread for a topic, sent once with a uuid tied to the run — and every
other call goes to the bot's replier unchanged."""

from __future__ import annotations

from typing import Any

from feishu_bot.scheduled_reply import (
    ScheduledReplier,
    header_text,
    post_to_conversation,
    scheduled_replier,
)

RUN = "cron:3:1800000000"  # job 3, due 2027-01-15 08:00 UTC


class Recorder:
    """The bot's replier as far as these calls go: it records them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def send(self, chat_id: str, msg_type: str, content: dict[str, Any], *,
                   uuid: str | None = None) -> str:
        self.calls.append(("send", chat_id, msg_type, content, uuid))
        return f"om_sent{len(self.calls)}"

    async def reply(self, message_id: str, msg_type: str, content: dict[str, Any], *,
                    in_thread: bool = False, uuid: str | None = None) -> str:
        self.calls.append(("reply", message_id, msg_type, content, in_thread, uuid))
        return f"om_reply{len(self.calls)}"

    async def add_reaction(self, message_id: str, emoji_type: str) -> str:
        self.calls.append(("react", message_id))
        return "r1"

    async def patch(self, message_id: str, content: dict[str, Any]) -> None:
        self.calls.append(("patch", message_id))


def test_header_names_job_due_time_and_prompt() -> None:
    assert header_text(3, 1_800_000_000, "  summarize\n the  logs ", "UTC") == (
        "⏰ Scheduled prompt (/cron job 3, due 2027-01-15 08:00 (UTC)): summarize the logs"
    )
    assert header_text(3, 1_800_000_000, "x" * 500, "UTC").endswith("x…")


async def test_in_a_chat_the_header_is_a_new_message_and_answers_reply_to_it() -> None:
    bot = Recorder()
    replier = scheduled_replier(bot, RUN, "p2p:oc_1", "check CI", "UTC")
    assert isinstance(replier, ScheduledReplier)
    card = await replier.reply_card_entity(RUN, "card_1", uuid="u1")
    text = await replier.reply_text(RUN, "and a note")
    send, first, second = bot.calls
    assert send[:3] == ("send", "oc_1", "text")
    assert send[3]["text"].startswith("⏰ Scheduled prompt (/cron job 3, due")
    assert first[:3] == ("reply", "om_sent1", "interactive")  # the card answers the header
    assert first[3] == {"type": "card", "data": {"card_id": "card_1"}} and first[5] == "u1"
    assert second[:4] == ("reply", "om_sent1", "text", {"text": "and a note"})
    assert (card, text) == ("om_reply2", "om_reply3")
    # the header goes once, with a uuid derived from the run: a restart resends the same one
    again = scheduled_replier(Recorder(), RUN, "p2p:oc_1", "check CI", "UTC")
    await again.reply_text(RUN, "x")
    assert again._replier.calls[0][4] == send[4] and send[4]


async def test_in_a_topic_everything_goes_into_its_thread() -> None:
    bot = Recorder()
    replier = scheduled_replier(bot, RUN, "thread:oc_g:om_root", "p", "UTC")
    await replier.reply_text(RUN, "answer")
    header, answer = bot.calls
    assert header[:2] == ("reply", "om_root") and header[4] is True
    assert answer[:2] == ("reply", "om_reply1") and answer[4] is True


async def test_reactions_on_the_run_do_nothing_and_other_calls_pass_through() -> None:
    bot = Recorder()
    replier = scheduled_replier(bot, RUN, "group:oc_g", "p", "UTC")
    assert await replier.add_reaction(RUN, "OnIt") == ""
    await replier.remove_reaction(RUN, "")
    assert bot.calls == []
    assert await replier.add_reaction("om_other", "OnIt") == "r1"
    await replier.patch("om_card", {})
    assert bot.calls == [("react", "om_other"), ("patch", "om_card")]


async def test_ordinary_messages_keep_the_bots_replier_and_notices_go_to_the_chat() -> None:
    bot = Recorder()
    assert scheduled_replier(bot, "om_123", "p2p:oc_1") is bot
    await post_to_conversation(bot, "group:oc_g", "paused")
    await post_to_conversation(bot, "thread:oc_g:om_root", "paused")
    assert bot.calls[0][:4] == ("send", "oc_g", "text", {"text": "paused"})
    assert bot.calls[1][:2] == ("reply", "om_root") and bot.calls[1][4] is True
