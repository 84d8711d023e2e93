"""quoted: the text of a quoted message of every kind (pure), how it is put before the user's
words, and what happens when it cannot be read (a recording replier stands in for Feishu)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from feishu_bot.errors import FeishuApiError, FeishuTransientError
from feishu_bot.events import InboundMessage
from feishu_bot.quoted import MISSING_SCOPE, compose, quoted_text, unreadable, with_quote


def item(msg_type: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"msg_type": msg_type, "body": {"content": json.dumps(content)}, **extra}


def test_text_with_its_mentions_named() -> None:
    got = quoted_text(
        item("text", {"text": "@_user_1 the build is red"},
             mentions=[{"key": "@_user_1", "name": "Li Lei"}])
    )
    assert got == "@Li Lei the build is red"


def test_post_paragraphs_links_and_images() -> None:
    post = {"title": "Incident", "content": [
        [{"tag": "text", "text": "see "}, {"tag": "a", "text": "runbook", "href": "https://x"}],
        [{"tag": "img", "image_key": "img_1"}, {"tag": "at", "user_name": "Han"}],
    ]}
    assert quoted_text(item("post", post)) == "Incident\nsee runbook\n[image]@Han"
    assert quoted_text(item("post", {"zh_cn": post})) == "Incident\nsee runbook\n[image]@Han"


def test_cards_give_their_text_not_their_buttons() -> None:
    card = {"schema": "2.0", "header": {"title": {"tag": "plain_text", "content": "Answer"}},
            "body": {"elements": [
                {"tag": "markdown", "content": "The answer is **42**."},
                {"tag": "button", "text": {"tag": "plain_text", "content": "New session"},
                 "behaviors": [{"type": "callback", "value": {"a": "new"}}]},
            ]}}
    got = quoted_text(item("interactive", card))
    assert got == "Answer\nThe answer is **42**."
    # the simplified form Feishu returns for cards, and a card in a JSON string
    simple = {"title": "", "elements": [[{"tag": "text", "text": "old style"}]]}
    assert quoted_text(item("interactive", simple)) == "old style"
    wrapped = {"json_card": json.dumps(card)}
    assert "The answer is **42**." in quoted_text(item("interactive", wrapped))


def test_resources_are_named_and_recalls_said() -> None:
    assert quoted_text(item("file", {"file_key": "f", "file_name": "report.pdf"})) == (
        "[a file named “report.pdf”]"
    )
    assert quoted_text(item("media", {"file_key": "f"})) == "[a video]"
    assert quoted_text(item("image", {"image_key": "i"})) == "[an image]"
    assert quoted_text(item("audio", {"file_key": "a"})) == "[a voice message]"
    assert quoted_text(item("vote", {})) == "[a vote message]"
    assert quoted_text({"deleted": True}) == "(the quoted message was recalled)"
    assert quoted_text({"msg_type": "text", "body": {"content": "not json"}}) == ""


def test_long_quotes_are_bounded() -> None:
    got = quoted_text(item("text", {"text": "x" * 5000}), limit=100)
    assert got.startswith("x" * 100) and got.endswith("(4900 more characters not shown)")


def test_the_quote_comes_first_and_marked() -> None:
    assert compose("line one\nline two", "another member of the chat", "what now?") == (
        "[Quoted message — the user is replying to this message from another member of the "
        "chat:]\n> line one\n> line two\n\nwhat now?"
    )


def test_unreadable_names_the_missing_scope() -> None:
    assert "im:message.group_msg" in unreadable(FeishuApiError("x", code=MISSING_SCOPE))
    assert "code 230001" in unreadable(FeishuApiError("x", code=230001))
    assert "could not be asked" in unreadable(FeishuTransientError("timeout"))


class Replier:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.replies: list[tuple[str, str, bool]] = []

    async def get_message(self, message_id: str) -> dict[str, Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def reply_text(self, message_id: str, text: str, *, in_thread: bool = False) -> str:
        self.replies.append((message_id, text, in_thread))
        return "om_reply"


class Ctx:
    def __init__(self, replier: Replier) -> None:
        self.replier = replier


def message(parent: str | None) -> InboundMessage:
    return InboundMessage(
        "om_me", "oc_g", "group", "ou_me", "text", "why?", mentioned_bot=True, parent_id=parent
    )


async def test_with_quote_puts_the_fetched_text_first() -> None:
    replier = Replier(item("text", {"text": "tests fail"}, sender={"id": "ou_me",
                                                                   "sender_type": "user"}))
    got = await with_quote(Ctx(replier), message("om_parent"), "why?")  # type: ignore[arg-type]
    assert got == compose("tests fail", "the user themselves", "why?")
    assert await with_quote(Ctx(replier), message(None), "why?") == "why?"  # type: ignore[arg-type]
    bot = Replier(item("text", {"text": "done"}, sender={"id": "cli_x", "sender_type": "app"}))
    assert "from the bot (an earlier answer)" in await with_quote(
        Ctx(bot), message("om_card"), "why?"  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("error", [FeishuApiError("no scope", code=MISSING_SCOPE),
                                   FeishuTransientError("timeout")])
async def test_an_unreadable_quote_is_said_in_one_line_and_the_turn_goes_on(
    error: Exception,
) -> None:
    replier = Replier(error)
    got = await with_quote(Ctx(replier), message("om_parent"), "why?")  # type: ignore[arg-type]
    assert got.endswith("\n\nwhy?") and "could not read" in got
    [(to, text, _)] = replier.replies
    assert to == "om_me" and text == unreadable(error) and "\n" not in text
