"""A `card.action.trigger` event → a typed `CardAction` (next to inbound.py's message parser).

Pure: no I/O and no trust. The button value comes back as the raw object the button carried
(or None when it is missing or not JSON); `feishu.buttons.ButtonSigner.verify` decides whether
it is one of ours.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["CardAction", "RecentAnswers", "parse_card_action"]


@dataclass(frozen=True, slots=True)
class CardAction:
    """One click: who, where (chat and card message), the event id, and the raw value."""

    event_id: str
    operator_open_id: str
    chat_id: str
    message_id: str
    value: Any


def parse_card_action(envelope: object) -> CardAction | None:
    """The click in a callback envelope, or None when the envelope is not readable."""
    header = envelope.get("header") if isinstance(envelope, dict) else None
    event = envelope.get("event") if isinstance(envelope, dict) else None
    if not isinstance(header, dict) or not isinstance(event, dict):
        return None
    action = event.get("action")
    raw = action.get("value") if isinstance(action, dict) else None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    return CardAction(
        event_id=str(header.get("event_id") or ""),
        operator_open_id=_get(event, "operator", "open_id"),
        chat_id=_get(event, "context", "open_chat_id"),
        message_id=_get(event, "context", "open_message_id"),
        value=raw,
    )


def _get(obj: dict[str, Any], outer: str, inner: str) -> str:
    value = obj.get(outer)
    found = value.get(inner) if isinstance(value, dict) else None
    return found if isinstance(found, str) else ""


class RecentAnswers:
    """The answers given to the latest callbacks, so a redelivered one gets the same toast."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, event_id: str) -> dict[str, Any] | None:
        return self._items.get(event_id)

    def put(self, event_id: str, answer: dict[str, Any]) -> None:
        self._items[event_id] = answer
        while len(self._items) > self._size:
            self._items.popitem(last=False)
