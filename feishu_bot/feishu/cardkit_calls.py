"""The CardKit calls of the replier: card entities (scope cardkit:card:write; Card JSON 2.0).

`CardKitCalls` is a base class of `FeishuReplier` and uses its plumbing (`_call` with its
token, retries and pacing). Every operation on one card carries a `sequence` that
must increase strictly; the caller (cardkit_stream.CardKitStream) owns it. `uuid` makes a
retried operation idempotent.
"""

from __future__ import annotations

import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from typing import Any

from feishu_bot.errors import FeishuApiError
from feishu_bot.feishu.render import dumps

__all__ = ["CardKitCalls", "data_str", "new_uuid"]


class CardKitCalls:
    """CardKit card entities; see the module docstring."""

    # Provided by FeishuReplier.
    _call: Callable[..., Awaitable[dict[str, Any]]]

    async def create_card_entity(self, card: dict[str, Any]) -> str:
        """POST /cardkit/v1/cards; returns the card_id (send it with `reply_card_entity`)."""
        body = await self._call(
            "POST",
            "/open-apis/cardkit/v1/cards",
            json={"type": "card_json", "data": dumps(card)},
            op="cardkit_create",
        )
        return data_str(body, "card_id", "cardkit_create")

    async def stream_card_text(
        self,
        card_id: str,
        element_id: str,
        content: str,
        *,
        sequence: int,
        uuid: str | None = None,
    ) -> None:
        """PUT the full text of a markdown element (typewriter effect in streaming mode)."""
        await self._call(
            "PUT",
            f"/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content",
            json={"content": content, "sequence": sequence, "uuid": uuid or new_uuid()},
            op="cardkit_content",
        )

    async def set_card_streaming(
        self, card_id: str, streaming: bool, *, sequence: int, uuid: str | None = None
    ) -> None:
        """PATCH the card's settings: `streaming_mode` on or off."""
        settings = {"config": {"streaming_mode": streaming}}
        await self._call(
            "PATCH",
            f"/open-apis/cardkit/v1/cards/{card_id}/settings",
            json={"settings": dumps(settings), "sequence": sequence, "uuid": uuid or new_uuid()},
            op="cardkit_settings",
        )

    async def update_card_entity(
        self, card_id: str, card: dict[str, Any], *, sequence: int, uuid: str | None = None
    ) -> None:
        """PUT the whole card (a 2.0 card replaces a 2.0 card)."""
        await self._call(
            "PUT",
            f"/open-apis/cardkit/v1/cards/{card_id}",
            json={
                "card": {"type": "card_json", "data": dumps(card)},
                "sequence": sequence,
                "uuid": uuid or new_uuid(),
            },
            op="cardkit_update",
        )


def new_uuid() -> str:
    """An idempotency key for one Feishu operation."""
    return uuid_mod.uuid4().hex


def data_str(body: dict[str, Any], key: str, op: str) -> str:
    """`data.<key>` of a Feishu answer; FeishuApiError when it is missing."""
    data = body.get("data")
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise FeishuApiError(f"{op}: response has no data.{key}", status=200)
    return value
