"""Property tests of inbound event parsing (#10): any JSON envelope either parses into a message
whose every string SQLite and Feishu can take, or raises MalformedEvent, never anything else.

Inputs: random JSON; real-looking envelopes of every message type with one value replaced by
random JSON or one key removed; message content strings cut short or replaced.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feishu_bot.events import Attachment, InboundMessage
from feishu_bot.feishu.inbound import (
    MalformedEvent,
    event_message_id,
    event_type,
    parse_message_event,
)
from tests.fakes.json_fuzz import json_scalars, mutate_json
from tests.fakes.json_fuzz import json_values as fuzz_json_values

BOT = "ou_bot_0001"
_INT64 = 2**63

KEYS = (
    "schema header event_type event message sender sender_id open_id message_id chat_id "
    "chat_type message_type content create_time mentions key id name thread_id root_id text "
    "title tag href user_id image_key file_key file_name zh_cn en_us"
).split()
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["text", "post", "image", "file", "p2p", "group", "@_user_1", BOT]),
    st.sampled_from(["\ud800", "a\udfffb", "", "\x00", "12345", " 7 ", "²", "9" * 5000]),
    st.sampled_from(["x" * 100_000, "@_user_1" * 1000]),
)
scalars = json_scalars(texts)
json_values = fuzz_json_values(texts, KEYS)

POST = {
    "zh_cn": {
        "title": "T",
        "content": [
            [{"tag": "text", "text": "hi "}, {"tag": "at", "user_id": "@_user_1"}],
            [{"tag": "a", "text": "x", "href": "https://e.x"}, {"tag": "img", "image_key": "k"}],
            [{"tag": "code_block", "language": "PY", "text": "print(1)"}],
        ],
    }
}
CONTENTS = {
    "text": {"text": "@_user_1 hello @_user_2"},
    "post": POST,
    "image": {"image_key": "img_v2_1"},
    "file": {"file_key": "file_v2_1", "file_name": "a.txt", "file_size": 3},
    "audio": {"file_key": "file_v2_2", "duration": 1000},
    "sticker": {"file_key": "file_v2_3"},
}


def real_envelope(msg_type: str) -> dict[str, Any]:
    mentions = [
        {"key": "@_user_1", "id": {"open_id": BOT}, "name": "bot"},
        {"key": "@_user_2", "id": {"open_id": "ou_2"}, "name": "Ann"},
    ]
    message = {
        "message_id": "om_1",
        "create_time": "1700000000123",
        "chat_id": "oc_1",
        "chat_type": "group",
        "message_type": msg_type,
        "content": json.dumps(CONTENTS[msg_type]),
        "mentions": mentions,
        "thread_id": "omt_1",
        "root_id": "om_0",
    }
    sender = {"sender_id": {"open_id": "ou_1"}, "sender_type": "user"}
    header = {"event_id": "ev_1", "event_type": "im.message.receive_v1"}
    return {"schema": "2.0", "header": header, "event": {"sender": sender, "message": message}}


def _mutate(draw: st.DrawFn, value: Any) -> Any:
    return mutate_json(draw, value, json_values)


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> Any:
    """A real envelope mutated, or its content string mutated, or its content cut short."""
    env = real_envelope(draw(st.sampled_from(sorted(CONTENTS))))
    message = env["event"]["message"]
    how = draw(st.sampled_from(["envelope", "content", "cut"]))
    if how == "cut":
        raw = message["content"]
        message["content"] = raw[: draw(st.integers(0, len(raw)))]
    elif how == "content":
        message["content"] = json.dumps(_mutate(draw, json.loads(message["content"])))
    else:
        env = _mutate(draw, env)
    return env


LEAVES = [
    ("event", "message", "message_id"),
    ("event", "message", "chat_id"),
    ("event", "message", "chat_type"),
    ("event", "message", "message_type"),
    ("event", "message", "create_time"),
    ("event", "message", "thread_id"),
    ("event", "message", "root_id"),
    ("event", "message", "mentions", 0, "key"),
    ("event", "message", "mentions", 1, "name"),
    ("event", "message", "mentions", 1, "id", "open_id"),
    ("event", "sender", "sender_id", "open_id"),
    ("content", "text"),
    ("content", "image_key"),
    ("content", "file_key"),
    ("content", "file_name"),
]


@st.composite
def one_field_replaced(draw: st.DrawFn) -> Any:
    """A real envelope with one field the parser reads set to a random scalar."""
    msg_type = draw(st.sampled_from(sorted(CONTENTS)))
    env = real_envelope(msg_type)
    path = draw(st.sampled_from(LEAVES))
    value = draw(scalars)
    if path[0] == "content":
        content = json.loads(env["event"]["message"]["content"])
        content[path[1]] = value
        env["event"]["message"]["content"] = json.dumps(content)
        return env
    parent = env
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return env


envelopes = st.one_of(json_values, mutated_envelopes(), one_field_replaced())
# derandomize: the same examples on every run (tests here are deterministic).
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check(msg: InboundMessage) -> None:
    for value in (msg.message_id, msg.chat_id, msg.chat_type, msg.sender_open_id, msg.msg_type):
        assert isinstance(value, str) and value
        value.encode()  # SQLite and Feishu take only encodable text
    assert msg.thread_root is None or (isinstance(msg.thread_root, str) and msg.thread_root)
    if msg.thread_root:
        msg.thread_root.encode()
    assert msg.text is None or isinstance(msg.text, str)
    if msg.text is not None:
        msg.text.encode()
    assert isinstance(msg.create_time_ms, int) and 0 <= msg.create_time_ms < _INT64
    assert all(isinstance(a, Attachment) for a in msg.attachments)
    for a in msg.attachments:
        (a.key + a.name).encode()


@PROPERTY
@given(envelopes)
def test_parse_message_event_raises_only_malformed_event(value: Any) -> None:
    try:
        msg = parse_message_event(value, BOT)
    except MalformedEvent as exc:
        assert len(exc.reason) <= 500  # the reason is logged: bounded, whatever the input
        return
    _check(msg)


@PROPERTY
@given(envelopes)
def test_envelope_helpers_never_raise(value: Any) -> None:
    assert event_type(value) is None or isinstance(event_type(value), str)
    mid = event_message_id(value)
    assert mid is None or (isinstance(mid, str) and mid)


@PROPERTY
@given(st.sampled_from(sorted(CONTENTS)), st.data())
def test_truncated_envelope_json_never_raises(msg_type: str, data: st.DataObject) -> None:
    raw = json.dumps(real_envelope(msg_type))
    cut = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        value = json.loads(cut)
    except ValueError:
        return  # the gateway drops bytes that are not JSON; nothing reaches the parser
    try:
        _check(parse_message_event(value, BOT))
    except MalformedEvent:
        pass
