"""The simulator's hand-written protobuf codec against the SDK's own pbbp2.Frame, and the
pure text extraction used by `message_text`."""

from __future__ import annotations

import json

import pytest

from feishu_bot.simulator import card_text, content_text, decode_frame, encode_frame
from feishu_bot.simulator.frames import (
    METHOD_CONTROL,
    METHOD_DATA,
    Frame,
    FrameDecodeError,
    event_frames,
    pong_frame,
)


@pytest.fixture(scope="module")
def sdk_frame():
    from lark_oapi.ws.pb.pbbp2_pb2 import Frame as SdkFrame

    return SdkFrame


def test_encoded_frame_parses_in_the_sdk_byte_for_byte(sdk_frame) -> None:
    frame = Frame(
        seq_id=7,
        log_id=2**40,
        service=123456,
        method=METHOD_DATA,
        headers=[("type", "event"), ("message_id", "m1"), ("note", "中文")],
        payload='{"k": "é"}'.encode(),
        log_id_new="x",
    )
    data = encode_frame(frame)
    parsed = sdk_frame()
    parsed.ParseFromString(data)
    assert (parsed.SeqID, parsed.LogID, parsed.service, parsed.method) == (7, 2**40, 123456, 1)
    assert [(h.key, h.value) for h in parsed.headers] == frame.headers
    assert parsed.payload == frame.payload
    assert parsed.SerializeToString() == data


def test_sdk_frames_decode(sdk_frame) -> None:
    ping = sdk_frame()
    ping.SeqID, ping.LogID, ping.service, ping.method = 0, 0, -5, METHOD_CONTROL
    header = ping.headers.add()
    header.key, header.value = "type", "ping"
    decoded = decode_frame(ping.SerializeToString())
    assert decoded.service == -5
    assert decoded.method == METHOD_CONTROL
    assert decoded.header("type") == "ping"
    assert decoded.payload == b""


def test_decode_rejects_garbage() -> None:
    with pytest.raises(FrameDecodeError):
        decode_frame(b"\xff\xff")
    with pytest.raises(FrameDecodeError):
        decode_frame(encode_frame(Frame())[:2])  # required fields missing


def test_pong_carries_all_four_client_config_fields() -> None:
    cfg = {"ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0, "PingInterval": 9}
    pong = decode_frame(encode_frame(pong_frame(42, cfg)))
    assert pong.method == METHOD_CONTROL
    assert pong.header("type") == "pong"
    assert json.loads(pong.payload) == cfg


def test_event_fragments_reassemble_in_seq_order() -> None:
    payload = json.dumps({"x": "y" * 1000}).encode()
    frames = event_frames(
        payload, service=1, frame_message_id="f", trace_id="t", seq_id=10, fragments=3
    )
    assert [f.header("seq") for f in frames] == ["0", "1", "2"]
    assert {f.header("sum") for f in frames} == {"3"}
    assert {f.header("message_id") for f in frames} == {"f"}
    assert b"".join(f.payload for f in frames) == payload
    assert all(f.payload for f in frames)


def test_text_of_text_and_post() -> None:
    assert content_text("text", {"text": "hi"}) == "hi"
    post = {
        "zh_cn": {
            "title": "T",
            "content": [
                [{"tag": "text", "text": "a "}, {"tag": "a", "text": "link", "href": "u"}],
                [{"tag": "at", "user_id": "ou_1", "user_name": "Bob"}, {"tag": "md", "text": "x"}],
            ],
        }
    }
    assert content_text("post", post) == "T\na link\n@Bobx"
    received_post = {"title": "", "content": [[{"tag": "text", "text": "plain"}]]}
    assert content_text("post", json.dumps(received_post)) == "plain"
    assert content_text("image", {"image_key": "k"}) == ""


def test_text_of_cards_v1_and_v2() -> None:
    v1 = {
        "config": {"update_multi": True},
        "header": {"title": {"tag": "plain_text", "content": "Header"}},
        "elements": [
            {"tag": "markdown", "content": "**md**"},
            {
                "tag": "div",
                "text": {"tag": "lark_md", "content": "div"},
                "fields": [{"is_short": True, "text": {"tag": "plain_text", "content": "f1"}}],
            },
            {"tag": "hr"},
            {"tag": "note", "elements": [{"tag": "plain_text", "content": "note"}]},
            {
                "tag": "column_set",
                "columns": [{"tag": "column", "elements": [{"tag": "markdown", "content": "col"}]}],
            },
        ],
    }
    assert card_text(v1) == "**md**\ndiv\nf1\nnote\ncol"
    v2 = {
        "schema": "2.0",
        "body": {
            "elements": [
                {"tag": "markdown", "content": "one"},
                {"tag": "collapsible_panel", "elements": [{"tag": "markdown", "content": "two"}]},
            ]
        },
    }
    assert card_text(v2) == "one\ntwo"
    assert content_text("interactive", json.dumps(v2)) == "one\ntwo"
