"""Signed callback values for card buttons (pure).

A button's `behaviors[].value` travels to Feishu's client and comes back in a
`card.action.trigger` callback. Anyone who can forward, copy or craft a card can put any
value there, so every value the bot emits is bound to its conversation and turn and signed:

    {"action": "allow", "k": conversation_key, "t": turn_id, "r": request_id,
     "o": option_index, "q": question_index, "sig": hex HMAC-SHA256}

`sig` covers the canonical JSON (sorted keys, no spaces, UTF-8) of every other field; the key
is derived from the app secret (HMAC(app_secret, "feishu-bot card v1")), so a value minted by
one deployment is worthless to another and rotating the secret voids all old buttons.
Verification is constant-time and rejects unknown actions, missing or extra fields and wrong
types. A *valid* value can still be stale (turn finished, request answered): that is for the
caller to judge against live state.

The signer never logs or exposes its key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ACTIONS", "ButtonSigner", "ButtonValue"]

ACTIONS: Final = frozenset({"stop", "new", "allow", "allow_always", "deny", "answer"})
_CONTEXT = b"feishu-bot card v1"
_FIELDS: Final = {"action": str, "k": str, "t": int, "r": str, "o": int, "q": int}
_MAX_VALUE_CHARS = 2048


@dataclass(frozen=True, slots=True)
class ButtonValue:
    """A verified button value. `request_id`/`option`/`question` are None when absent."""

    action: str
    conversation_key: str
    turn_id: int
    request_id: str | None = None
    option: int | None = None
    question: int | None = None


class ButtonSigner:
    """Mints and verifies button values with a key derived from the app secret."""

    __slots__ = ("_key",)

    def __init__(self, app_secret: str) -> None:
        if not app_secret:
            raise ValueError("app_secret must not be empty")
        self._key = hmac.new(app_secret.encode(), _CONTEXT, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "ButtonSigner(<key hidden>)"

    def value(
        self,
        action: str,
        *,
        conversation_key: str,
        turn_id: int,
        request_id: str | None = None,
        option: int | None = None,
        question: int | None = None,
    ) -> dict[str, Any]:
        """The signed `value` object for a button's callback behaviour."""
        if action not in ACTIONS:
            raise ValueError(f"unknown button action {action!r}")
        fields: dict[str, Any] = {"action": action, "k": conversation_key, "t": int(turn_id)}
        if request_id is not None:
            fields["r"] = request_id
        if option is not None:
            fields["o"] = int(option)
        if question is not None:
            fields["q"] = int(question)
        return {**fields, "sig": self._sign(fields)}

    def verify(self, value: Any) -> ButtonValue | None:
        """The decoded value if it is well-formed and its signature matches, else None."""
        if not isinstance(value, dict):
            return None
        sig = value.get("sig")
        if not isinstance(sig, str) or len(sig) != 64:
            return None
        fields = {k: v for k, v in value.items() if k != "sig"}
        for name, field_value in fields.items():
            kind = _FIELDS.get(name)
            # bool is an int subclass: a JSON true must not pass as a turn id.
            if kind is None or type(field_value) is not kind:
                return None
        if not {"action", "k", "t"} <= fields.keys() or fields["action"] not in ACTIONS:
            return None
        try:
            expected = self._sign(fields)
        except ValueError:
            return None
        if not hmac.compare_digest(expected, sig):
            return None
        return ButtonValue(
            action=fields["action"],
            conversation_key=fields["k"],
            turn_id=fields["t"],
            request_id=fields.get("r"),
            option=fields.get("o"),
            question=fields.get("q"),
        )

    def _sign(self, fields: dict[str, Any]) -> str:
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if len(canonical) > _MAX_VALUE_CHARS:
            raise ValueError("button value too large")
        return hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()
