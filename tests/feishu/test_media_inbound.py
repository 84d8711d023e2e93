"""Inbound parsing of image, file, audio, video, sticker and post-with-image messages."""

from __future__ import annotations

from typing import Any

import pytest

from feishu_bot.events import Attachment, InboundMessage
from feishu_bot.feishu.inbound import parse_message_event
from feishu_bot.simulator.envelopes import build_envelope, build_message_event
from feishu_bot.turn_input import needs_question

BOT = "ou_bot"


def envelope(msg_type: str, content: dict[str, Any] | str) -> dict[str, Any]:
    event = build_message_event(
        message_id="om_1",
        chat_id="oc_1",
        chat_type="p2p",
        sender_open_id="ou_user",
        msg_type=msg_type,
        content={} if isinstance(content, str) else content,
        tenant_key="t",
    )
    if isinstance(content, str):
        event["message"]["content"] = content
    return build_envelope("im.message.receive_v1", event, app_id="a", tenant_key="t", token="x")


def parse(msg_type: str, content: dict[str, Any] | str) -> InboundMessage:
    return parse_message_event(envelope(msg_type, content), BOT)


def test_image_message() -> None:
    msg = parse("image", {"image_key": "img_v3_abc"})
    assert msg.text is None
    assert msg.attachments == (Attachment("image", "img_v3_abc"),)
    assert needs_question(msg)


def test_file_message_keeps_name_and_size_when_given() -> None:
    msg = parse("file", {"file_key": "file_v3_1", "file_name": "report.pdf", "file_size": 1234})
    assert msg.attachments == (Attachment("file", "file_v3_1", name="report.pdf", size=1234),)
    msg = parse("file", {"file_key": "file_v3_1", "file_name": "a.txt", "file_size": "big"})
    assert msg.attachments[0].size is None


def test_audio_video_and_sticker_messages() -> None:
    audio = parse("audio", {"file_key": "file_a", "duration": 2000})
    assert audio.attachments == (Attachment("audio", "file_a"),)
    video = parse(
        "media",
        {"file_key": "file_v", "image_key": "img_cover", "file_name": "clip.mp4", "duration": 9},
    )
    assert video.attachments == (Attachment("media", "file_v", name="clip.mp4"),)
    sticker = parse("sticker", {"file_key": "file_s"})
    assert sticker.attachments == (Attachment("sticker", "file_s"),)
    assert sticker.text is None


@pytest.mark.parametrize(
    ("msg_type", "content"),
    [
        ("image", {}),
        ("image", {"image_key": ""}),
        ("image", {"image_key": 5}),
        ("file", {"file_name": "x"}),
        ("image", "not json"),
        ("image", "[1, 2]"),
    ],
)
def test_media_without_a_key_has_no_attachment(msg_type: str, content: Any) -> None:
    msg = parse(msg_type, content)
    assert msg.text is None
    assert msg.attachments == ()
    assert not needs_question(msg)


def test_post_with_text_and_two_images_keeps_their_order() -> None:
    content = {
        "title": "",
        "content": [
            [{"tag": "text", "text": "compare these:"}],
            [{"tag": "img", "image_key": "img_1", "width": 10, "height": 10}],
            [{"tag": "text", "text": "and"}, {"tag": "img", "image_key": "img_2"}],
            [{"tag": "media", "file_key": "file_v", "image_key": "img_cover"}],
            [{"tag": "img"}],  # no key: skipped
        ],
    }
    msg = parse("post", content)
    assert msg.text == "compare these:\n[image]\nand[image]\n[video]\n[image]"
    assert msg.attachments == (
        Attachment("image", "img_1"),
        Attachment("image", "img_2"),
        Attachment("media", "file_v"),
    )
    assert not needs_question(msg)


def test_post_with_only_images_waits_for_a_question() -> None:
    content = {"title": "", "content": [[{"tag": "img", "image_key": "img_1"}], []]}
    msg = parse("post", content)
    assert msg.attachments == (Attachment("image", "img_1"),)
    assert needs_question(msg)


def test_localised_post_images_are_found() -> None:
    content = {"zh_cn": {"title": "t", "content": [[{"tag": "img", "image_key": "img_z"}]]}}
    msg = parse("post", content)
    assert msg.attachments == (Attachment("image", "img_z"),)


def test_text_messages_have_no_attachments() -> None:
    msg = parse("text", {"text": "hello"})
    assert msg.attachments == ()
    assert not needs_question(msg)
