"""parse_message_event: pure parsing of im.message.receive_v1 envelopes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from feishu_bot.feishu.inbound import (
    MalformedEvent,
    event_message_id,
    event_type,
    parse_message_event,
)

BOT = "ou_bot_0001"


def envelope(
    content: Any,
    *,
    msg_type: str = "text",
    chat_type: str = "p2p",
    mentions: list[dict[str, Any]] | None = None,
    thread_id: str | None = None,
    root_id: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": "om_msg_1",
        "create_time": "1700000000123",
        "chat_id": "oc_chat_1",
        "chat_type": chat_type,
        "message_type": msg_type,
        "content": content if isinstance(content, str) else json.dumps(content),
    }
    if mentions is not None:
        message["mentions"] = mentions
    if thread_id is not None:
        message["thread_id"] = thread_id
    if root_id is not None:
        message["root_id"] = root_id
        message["parent_id"] = root_id
    return {
        "schema": "2.0",
        "header": {
            "event_id": "ev_1",
            "event_type": "im.message.receive_v1",
            "create_time": "1700000000200",
            "token": "",
            "app_id": "cli_x",
            "tenant_key": "tk",
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": "ou_user_1", "union_id": "on_1", "user_id": "u1"},
                "sender_type": "user",
                "tenant_key": "tk",
            },
            "message": message,
        },
    }


def mention(key: str, open_id: str, name: str) -> dict[str, Any]:
    return {"key": key, "id": {"open_id": open_id, "union_id": "on_x"}, "name": name}


def test_text_message_basic_fields() -> None:
    msg = parse_message_event(envelope({"text": "  hello world \n"}), BOT)
    assert msg.message_id == "om_msg_1"
    assert msg.chat_id == "oc_chat_1"
    assert msg.chat_type == "p2p"
    assert msg.sender_open_id == "ou_user_1"
    assert msg.msg_type == "text"
    assert msg.text == "hello world"
    assert msg.mentioned_bot is False
    assert msg.thread_root is None
    assert msg.create_time_ms == 1700000000123
    assert msg.conversation_key == "p2p:oc_chat_1"


def test_create_time_as_int_and_missing() -> None:
    env = envelope({"text": "x"})
    env["event"]["message"]["create_time"] = 1700000000999
    assert parse_message_event(env, BOT).create_time_ms == 1700000000999
    del env["event"]["message"]["create_time"]
    assert parse_message_event(env, BOT).create_time_ms == 0


def test_mentions_replaced_and_bot_mention_removed() -> None:
    env = envelope(
        {"text": "@_user_1 please ask @_user_2 about it"},
        chat_type="group",
        mentions=[mention("@_user_1", BOT, "ClaudeBot"), mention("@_user_2", "ou_alice", "Alice")],
    )
    msg = parse_message_event(env, BOT)
    assert msg.mentioned_bot is True
    assert msg.text == "please ask @Alice about it"
    assert msg.conversation_key == "group:oc_chat_1"


def test_bot_mention_in_the_middle_keeps_single_space() -> None:
    env = envelope(
        {"text": "hey @_user_1 do x"},
        chat_type="group",
        mentions=[mention("@_user_1", BOT, "ClaudeBot")],
    )
    assert parse_message_event(env, BOT).text == "hey do x"


def test_indentation_survives_bot_mention_removal() -> None:
    code = "@_user_1 fix this:\ndef f():\n    return  1\n"
    env = envelope({"text": code}, mentions=[mention("@_user_1", BOT, "Bot")])
    assert parse_message_event(env, BOT).text == "fix this:\ndef f():\n    return  1"


def test_group_message_without_bot_mention() -> None:
    env = envelope(
        {"text": "@_user_1 hi"},
        chat_type="group",
        mentions=[mention("@_user_1", "ou_alice", "Alice")],
    )
    msg = parse_message_event(env, BOT)
    assert msg.mentioned_bot is False
    assert msg.text == "@Alice hi"


def test_user_10_placeholder_not_confused_with_user_1() -> None:
    mentions = [mention(f"@_user_{i}", f"ou_{i}", f"U{i}") for i in range(1, 11)]
    env = envelope({"text": "@_user_10 and @_user_1"}, mentions=mentions)
    assert parse_message_event(env, BOT).text == "@U10 and @U1"


def test_at_all() -> None:
    env = envelope({"text": "@_all attention"}, chat_type="group")
    assert parse_message_event(env, BOT).text == "@all attention"


def test_empty_bot_open_id_never_marks_a_mention() -> None:
    env = envelope({"text": "@_user_1 hi"}, mentions=[mention("@_user_1", "", "Someone")])
    msg = parse_message_event(env, "")
    assert msg.mentioned_bot is False
    assert msg.text == "@Someone hi"


def test_only_bot_mention_gives_empty_text() -> None:
    env = envelope({"text": "@_user_1"}, mentions=[mention("@_user_1", BOT, "Bot")])
    msg = parse_message_event(env, BOT)
    assert msg.text == ""
    assert msg.mentioned_bot is True


POST_BODY = {
    "title": "Report",
    "content": [
        [
            {"tag": "at", "user_id": "@_user_1", "user_name": "Bot"},
            {"tag": "text", "text": " see "},
            {"tag": "a", "text": "the docs", "href": "https://example.com/d"},
            {"tag": "text", "text": " and "},
            {"tag": "a", "text": "https://x.io", "href": "https://x.io"},
        ],
        [{"tag": "text", "text": "second paragraph", "style": ["bold"]}],
        [{"tag": "img", "image_key": "img_1"}],
        [{"tag": "code_block", "language": "PYTHON", "text": "print(1)\n"}],
        [{"tag": "emotion", "emoji_type": "SMILE"}, {"tag": "unknown_tag", "text": "!"}],
    ],
}


def test_post_flat_with_links_title_and_paragraphs() -> None:
    env = envelope(POST_BODY, msg_type="post", mentions=[mention("@_user_1", BOT, "Bot")])
    msg = parse_message_event(env, BOT)
    assert msg.msg_type == "post"
    assert msg.mentioned_bot is True
    assert msg.text == (
        "Report\n"
        "see the docs (https://example.com/d) and https://x.io\n"
        "second paragraph\n"
        "[image]\n"
        "\n```python\nprint(1)\n```\n\n"
        ":SMILE:!"
    )


def test_post_with_locale_wrapper() -> None:
    body = {"zh_cn": {"title": "", "content": [[{"tag": "text", "text": "你好"}]]}}
    msg = parse_message_event(envelope(body, msg_type="post"), BOT)
    assert msg.text == "你好"


def test_post_locale_other_than_known() -> None:
    body = {"fr_fr": {"title": "T", "content": [[{"tag": "text", "text": "salut"}]]}}
    assert parse_message_event(envelope(body, msg_type="post"), BOT).text == "T\nsalut"


def test_post_at_non_placeholder_uses_name() -> None:
    body = {"content": [[{"tag": "at", "user_id": "ou_z", "user_name": "Zed"}]]}
    assert parse_message_event(envelope(body, msg_type="post"), BOT).text == "@Zed"


def test_thread_root_from_root_id() -> None:
    env = envelope({"text": "in topic"}, chat_type="group", thread_id="omt_1", root_id="om_root")
    msg = parse_message_event(env, BOT)
    assert msg.thread_root == "om_root"
    assert msg.in_thread
    assert msg.conversation_key == "thread:oc_chat_1:om_root"


def test_thread_first_message_is_its_own_root() -> None:
    env = envelope({"text": "new topic"}, chat_type="group", thread_id="omt_1")
    assert parse_message_event(env, BOT).thread_root == "om_msg_1"


def test_plain_reply_without_thread_is_not_a_thread() -> None:
    env = envelope({"text": "quoted reply"}, root_id="om_root")
    assert parse_message_event(env, BOT).thread_root is None


def test_a_reply_names_the_message_it_quotes() -> None:
    env = envelope({"text": "quoted reply"}, root_id="om_root")
    env["event"]["message"]["parent_id"] = "om_parent"
    assert parse_message_event(env, BOT).parent_id == "om_parent"
    assert parse_message_event(envelope({"text": "new"}), BOT).parent_id is None


def test_in_a_topic_only_a_reply_to_another_message_is_a_quote() -> None:
    env = envelope({"text": "in topic"}, chat_type="group", thread_id="omt_1", root_id="om_root")
    assert parse_message_event(env, BOT).parent_id is None  # its parent is the topic's root
    env["event"]["message"]["parent_id"] = "om_middle"
    assert parse_message_event(env, BOT).parent_id == "om_middle"


@pytest.mark.parametrize(
    "msg_type",
    ["image", "file", "audio", "media", "sticker", "interactive", "share_chat", "merge_forward"],
)
def test_unsupported_types_have_no_text(msg_type: str) -> None:
    env = envelope({"image_key": "img_x"}, msg_type=msg_type)
    msg = parse_message_event(env, BOT)
    assert msg.text is None
    assert msg.msg_type == msg_type


def test_unsupported_type_content_is_not_inspected() -> None:
    env = envelope("not json at all", msg_type="image")
    assert parse_message_event(env, BOT).text is None


def _broken(path: list[Any], value: Any = ...) -> dict[str, Any]:
    env = copy.deepcopy(envelope({"text": "x"}))
    target = env
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return env


MALFORMED = {
    "not a dict": "just a string",
    "no event": _broken(["event"]),
    "event is list": _broken(["event"], []),
    "no message": _broken(["event", "message"]),
    "no sender": _broken(["event", "sender"]),
    "no sender_id": _broken(["event", "sender", "sender_id"]),
    "no open_id": _broken(["event", "sender", "sender_id", "open_id"]),
    "open_id int": _broken(["event", "sender", "sender_id", "open_id"], 5),
    "no message_id": _broken(["event", "message", "message_id"]),
    "empty chat_id": _broken(["event", "message", "chat_id"], ""),
    "no chat_type": _broken(["event", "message", "chat_type"]),
    "no message_type": _broken(["event", "message", "message_type"]),
    "no content": _broken(["event", "message", "content"]),
    "content dict": _broken(["event", "message", "content"], {"text": "x"}),
    "content not json": _broken(["event", "message", "content"], "{nope"),
    "content json list": _broken(["event", "message", "content"], "[1, 2]"),
    "text not str": _broken(["event", "message", "content"], '{"text": 5}'),
    "text missing": _broken(["event", "message", "content"], "{}"),
    "create_time junk": _broken(["event", "message", "create_time"], "soon"),
    "create_time float": _broken(["event", "message", "create_time"], 1.5),
    "mentions not list": _broken(["event", "message", "mentions"], {"a": 1}),
    "mention not dict": _broken(["event", "message", "mentions"], ["x"]),
    "mention no key": _broken(["event", "message", "mentions"], [{"name": "n"}]),
    "thread_id int": _broken(["event", "message", "thread_id"], 7),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_raises_malformed_event(case: str) -> None:
    with pytest.raises(MalformedEvent) as info:
        parse_message_event(MALFORMED[case], BOT)  # type: ignore[arg-type]
    assert str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "content",
    [
        {"title": 5, "content": []},
        {"title": "", "content": "para"},
        {"title": "", "content": ["para"]},
        {"title": "", "content": [["elem"]]},
        {"zh_cn": "nope"},
    ],
)
def test_malformed_post_raises(content: Any) -> None:
    with pytest.raises(MalformedEvent):
        parse_message_event(envelope(content, msg_type="post"), BOT)


def test_event_type_and_message_id_helpers() -> None:
    env = envelope({"text": "x"})
    assert event_type(env) == "im.message.receive_v1"
    assert event_message_id(env) == "om_msg_1"
    assert event_type({"event": {"type": "message"}}) == "message"  # schema 1.0
    for junk in (None, "x", {}, {"header": 3}, {"event": {"message": []}}):
        assert event_type(junk) is None
        assert event_message_id(junk) is None


# -- #10: valid JSON of an unexpected shape raises MalformedEvent (bounded) or parses cleanly ------


def _with(field: str, value: Any, content: Any = None) -> dict[str, Any]:
    env = envelope(content if content is not None else {"text": "hi"})
    env["event"]["message"][field] = value
    return env


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        (_with("create_time", 10**30), "out of range"),
        (_with("create_time", -1), "out of range"),
        (_with("create_time", "9" * 5000), "out of range"),
        (_with("create_time", "x" * 100_000), "not an integer"),
        (_with("create_time", "²"), "not an integer"),
        (_with("message_id", "om\udc00"), "not valid Unicode"),
        (_with("thread_id", "t\ud800"), "not valid Unicode"),
        (_with("chat_id", ["x"] * 100_000), "a list"),
        (_with("chat_id", 10**5000), "an int"),
        (_with("content", "[" * 100_000 + "]" * 100_000), "RecursionError"),
        (_with("content", '{"text": "' + "x" * 100_000), "not JSON"),
    ],
)
def test_unexpected_shape_inbound(env: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedEvent) as info:
        parse_message_event(env, BOT)
    assert reason in info.value.reason
    assert len(info.value.reason) <= 300 and len(str(info.value)) <= 300


def test_unexpected_shape_inbound_lone_surrogate_in_text() -> None:
    """JSON may escape a lone surrogate; the prompt goes to SQLite and the CLI's stdin."""
    msg = parse_message_event(envelope({"text": "a\ud800b \udfff"}), BOT)
    assert msg.text == "a\ufffdb \ufffd"
    msg.text.encode()
    post = {"title": "t\ud800", "content": [[{"tag": "text", "text": "x\udc00"}]]}
    msg = parse_message_event(envelope(post, msg_type="post"), BOT)
    assert msg.text == "t\ufffd\nx\ufffd"
