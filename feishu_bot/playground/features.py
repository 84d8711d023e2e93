"""What the playground needs from the simulator beyond messages: cards, callbacks, files.

The simulator grows with the bot (CardKit card entities, ``card.action.trigger`` pushes,
resources). The playground reaches those parts only through the functions here, each of which
uses the simulator's own API when it has one and otherwise a generic path (or reports the
feature as missing), so the page keeps working whichever parts have landed. Adapting to a new
simulator API is an edit in this file only.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.envelopes import user_ids

__all__ = [
    "CARD_ACTION",
    "capabilities",
    "card_action_response",
    "card_entity",
    "push_attachment",
    "push_card_action",
    "rendered_card",
    "resource",
]

CARD_ACTION = "card.action.trigger"


def _cardkit_store(sim: FeishuSimulator) -> Any:
    """The simulator's CardKit card entities (card_id -> entity), when it has them."""
    store = getattr(sim.records, "cards", None)
    return store if isinstance(store, dict) else None


def card_entity(sim: FeishuSimulator, card_id: str) -> tuple[dict[str, Any], int] | None:
    """(the card JSON as it is now, a version number) of a CardKit card, or None if unknown.

    A card in streaming mode gets ``"_streaming": true`` so the page can show a cursor.
    """
    store = _cardkit_store(sim)
    entity = store.get(card_id) if store is not None else None
    if entity is None:
        return None
    return _entity_view(entity)


def _entity_view(entity: Any) -> tuple[dict[str, Any], int] | None:
    card = getattr(entity, "card", None)
    if not isinstance(card, dict):
        return None
    versions = getattr(entity, "versions", None)
    version = len(versions) if isinstance(versions, list) else int(getattr(entity, "sequence", 0))
    if getattr(entity, "streaming", False):
        card = {**card, "_streaming": True}
    return card, version


def rendered_card(sim: FeishuSimulator, msg: Any) -> tuple[dict[str, Any], int]:
    """(the card a bot message shows now, how many times its CardKit entity changed).

    A message sent by ``card_id`` shows its entity; an entity the simulator does not know is
    shown as a placeholder.
    """
    entity = getattr(msg, "card_entity", None)
    if entity is not None:
        found = _entity_view(entity)
        if found is not None:
            return found
    content = msg.content if isinstance(msg.content, dict) else {}
    data = content.get("data")
    if content.get("type") == "card" and isinstance(data, dict) and data.get("card_id"):
        found = card_entity(sim, str(data["card_id"]))
        return found if found is not None else ({"_missing_card": str(data["card_id"])}, 0)
    return content, 0


async def push_card_action(
    sim: FeishuSimulator,
    *,
    message_id: str,
    chat_id: str,
    operator_open_id: str,
    value: Any,
    tag: str = "button",
    name: str | None = None,
    form_value: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send a button click to the bot as ``card.action.trigger``; return the bot's answer.

    The answer is what the bot's handler returned (e.g. ``{"toast": {...}}``); Feishu reads it
    from the ack, and so does this. ``{"error": ...}`` when the bot did not take the callback.
    """
    native = getattr(sim, "push_card_action", None)
    if callable(native) and not form_value and not name:
        record = await native(
            message_id, value, operator_open_id=operator_open_id, tag=tag, timeout=timeout
        )
        answer = getattr(record, "answer", None)
        out = dict(answer) if isinstance(answer, dict) else {}
        error = getattr(record, "error", None)
        if error:
            out["error"] = str(error)
        return out
    action: dict[str, Any] = {"value": value, "tag": tag}
    if name:
        action["name"] = name
    if form_value:
        action["form_value"] = form_value
    event = {
        "operator": {**user_ids(operator_open_id), "tenant_key": sim.options.tenant_key},
        "token": "c-playground",
        "action": action,
        "host": "im_message",
        "context": {"open_message_id": message_id, "open_chat_id": chat_id},
    }
    event_id = await sim.push_event(CARD_ACTION, event)
    ack = await sim.wait_ack(event_id, timeout)
    return card_action_response(ack.code, ack.payload)


def card_action_response(code: int | None, payload: Any) -> dict[str, Any]:
    """Decode the ack of a callback: the handler's return value rides base64-encoded in it."""
    if code != 200:
        return {"error": f"the bot did not accept the callback (ack code {code})"}
    data = payload.get("data") if isinstance(payload, dict) else None
    if not data:
        return {}
    try:
        decoded = json.loads(base64.b64decode(data))
    except (ValueError, TypeError):
        return {"error": "the bot's callback answer was not JSON"}
    return decoded if isinstance(decoded, dict) else {}


def _media(sim: FeishuSimulator) -> Any:
    """The simulator's resources and uploads (`FeishuSimulator.media`), when it has them."""
    return getattr(sim, "media", None)


def capabilities(sim: FeishuSimulator) -> dict[str, bool]:
    """Which optional parts the page may offer."""
    media = _media(sim)
    return {
        "cardkit": _cardkit_store(sim) is not None,
        "upload": media is not None and callable(getattr(media, "push_image", None)),
    }


async def push_attachment(
    sim: FeishuSimulator, *, kind: str, name: str, data: bytes, **push: Any
) -> str:
    """A user sends an image or a file: stored as a message resource, pushed as a real
    ``image`` / ``file`` message event. Returns the message_id."""
    media = _media(sim)
    if media is None:
        raise NotImplementedError("this simulator cannot hold images or files")
    if kind == "image":
        return str(await media.push_image(data, **push))
    return str(await media.push_file(data, name, **push))


def resource(sim: FeishuSimulator, key: str) -> tuple[bytes, str, str] | None:
    """(bytes, content type, file name) of an image/file a user or the bot sent, or None."""
    media = _media(sim)
    if media is None:
        return None
    for upload in reversed(getattr(media, "uploads", [])):
        if upload.key == key:
            mime = upload.content_type or _sniff(upload.data, upload.kind)
            return upload.data, mime, upload.file_name or key
    for found in getattr(media, "resources", {}).values():
        if found.key == key:
            mime = found.content_type
            if not mime or mime == "application/octet-stream":
                mime = _sniff(found.data, found.kind)
            return found.data, mime, key
    return None


def _sniff(data: bytes, kind: str) -> str:
    signatures = (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8", "image/jpeg"),
        (b"GIF8", "image/gif"),
    )
    for magic, mime in signatures:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream" if kind != "image" else "image/png"
