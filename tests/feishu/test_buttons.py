"""Signed button values: what the bot mints verifies; edited, forged or foreign values do not."""

from __future__ import annotations

import json

import pytest

from feishu_bot.feishu.buttons import ACTIONS, ButtonSigner, ButtonValue

KEY = "p2p:oc_chat"


@pytest.fixture
def signer() -> ButtonSigner:
    return ButtonSigner("app-secret-1")


def test_round_trip_every_action(signer: ButtonSigner) -> None:
    for action in sorted(ACTIONS):
        value = signer.value(action, conversation_key=KEY, turn_id=7, request_id="r1", option=2)
        # The value survives the trip through Feishu as JSON.
        back = signer.verify(json.loads(json.dumps(value)))
        assert back == ButtonValue(action, KEY, 7, "r1", 2, None)


def test_minimal_value_has_no_optional_fields(signer: ButtonSigner) -> None:
    value = signer.value("stop", conversation_key=KEY, turn_id=1)
    assert set(value) == {"action", "k", "t", "sig"}
    assert signer.verify(value) == ButtonValue("stop", KEY, 1)


@pytest.mark.parametrize(
    ("field", "new"),
    [("action", "deny"), ("k", "p2p:oc_other"), ("t", 8), ("r", "r2"), ("o", 0)],
)
def test_edited_field_is_rejected(signer: ButtonSigner, field: str, new: object) -> None:
    value = signer.value("allow", conversation_key=KEY, turn_id=7, request_id="r1", option=1)
    value[field] = new
    assert signer.verify(value) is None


def test_added_or_removed_field_is_rejected(signer: ButtonSigner) -> None:
    value = signer.value("allow", conversation_key=KEY, turn_id=7, request_id="r1")
    assert signer.verify({**value, "o": 1}) is None
    assert signer.verify({**value, "extra": "x"}) is None
    without = dict(value)
    del without["r"]
    assert signer.verify(without) is None


def test_value_from_another_secret_is_rejected(signer: ButtonSigner) -> None:
    other = ButtonSigner("another-secret").value("stop", conversation_key=KEY, turn_id=1)
    assert signer.verify(other) is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "stop",
        [],
        {},
        {"action": "stop", "k": KEY, "t": 1},
        {"action": "stop", "k": KEY, "t": 1, "sig": "0" * 64},
        {"action": "stop", "k": KEY, "t": 1, "sig": 5},
    ],
)
def test_malformed_values_are_rejected(signer: ButtonSigner, value: object) -> None:
    assert signer.verify(value) is None


def test_wrong_types_are_rejected_even_when_signed(signer: ButtonSigner) -> None:
    # A turn id of JSON true would compare equal to 1; the type check keeps it out.
    value = signer.value("stop", conversation_key=KEY, turn_id=1)
    assert signer.verify({**value, "t": True}) is None
    assert signer.verify({**value, "t": "1"}) is None


def test_unknown_action_cannot_be_minted(signer: ButtonSigner) -> None:
    with pytest.raises(ValueError):
        signer.value("delete_everything", conversation_key=KEY, turn_id=1)


def test_key_never_shown(signer: ButtonSigner) -> None:
    assert "app-secret" not in repr(signer)
    with pytest.raises(ValueError):
        ButtonSigner("")
