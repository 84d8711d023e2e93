"""A Feishu Open Platform simulator on 127.0.0.1 (long connection + IM REST API).

Used by the tests of the whole bot and as a local playground (``python -m
feishu_bot.simulator``). It imports neither lark_oapi nor the bot's other modules.
"""

from .faults import FaultRule
from .frames import Frame, decode_frame, encode_frame
from .records import (
    AckRecord,
    ConnectionRecord,
    Delivery,
    Reaction,
    RequestRecord,
    SentMessage,
    UserMessage,
    card_text,
    content_text,
    message_text,
    post_text,
)
from .server import FeishuSimulator

__all__ = [
    "AckRecord",
    "ConnectionRecord",
    "Delivery",
    "FaultRule",
    "FeishuSimulator",
    "Frame",
    "Reaction",
    "RequestRecord",
    "SentMessage",
    "UserMessage",
    "card_text",
    "content_text",
    "decode_frame",
    "encode_frame",
    "message_text",
    "post_text",
]
