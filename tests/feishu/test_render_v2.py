"""Card JSON 2.0 rendering: structure, buttons, blocks, live tail and lossless splitting."""

from __future__ import annotations

import pytest

from feishu_bot.feishu import render
from feishu_bot.feishu.render import ANSWER_ELEMENT, Block, Button, card2, card_size

STOP = Button("Stop", {"action": "stop", "sig": "x"}, "danger")


def _elements(card: dict) -> list[dict]:
    return card["body"]["elements"]


def _buttons(card: dict) -> list[tuple[str, dict]]:
    found = []

    def walk(elements: list[dict]) -> None:
        for el in elements:
            if el.get("tag") == "button":
                found.append((el["text"]["content"], el["behaviors"][0]["value"]))
            for col in el.get("columns", []):
                walk(col.get("elements", []))

    walk(_elements(card))
    return found


def test_card2_structure() -> None:
    card = card2("hello **world**", state="working", note="n", buttons=[STOP], streaming=True)
    assert card["schema"] == "2.0"
    assert card["config"]["update_multi"] is True
    assert card["config"]["streaming_mode"] is True
    assert card["config"]["summary"]["content"] == "hello **world**"
    assert card["header"]["template"] == "blue"
    first = _elements(card)[0]
    assert first == {"tag": "markdown", "element_id": ANSWER_ELEMENT, "content": "hello **world**"}
    assert _buttons(card) == [("Stop", {"action": "stop", "sig": "x"})]
    assert {"tag": "markdown", "content": "n", "text_size": "notation"} in _elements(card)


def test_empty_text_is_never_an_empty_element() -> None:
    assert _elements(card2("", state="working"))[0]["content"] == "…"


def test_blocks_render_between_answer_and_note() -> None:
    allow = Button("Allow once", {"action": "allow"}, "primary")
    card = card2(
        "answer",
        state="working",
        note="note",
        blocks=[Block("b1", "**Bash** wants to run `ls`", (allow,)), Block("b2", "✅ done")],
    )
    contents = [el.get("content") for el in _elements(card) if el["tag"] == "markdown"]
    assert contents == ["answer", "**Bash** wants to run `ls`", "✅ done", "note"]
    assert [text for text, _ in _buttons(card)] == ["Allow once"]


def test_live_text_shows_the_tail_of_a_long_answer() -> None:
    text = "".join(f"line {i} " + "x" * 80 + "\n" for i in range(2000))
    card = card2(text, state="working", buttons=[STOP])
    assert card_size(card) <= render.CARD_MAX_BYTES
    shown = _elements(card)[0]["content"]
    assert shown.startswith("*…(earlier output not shown yet)*")
    assert shown.endswith("line 1999 " + "x" * 80 + "\n")


def test_final_cards2_lossless_with_extras_on_the_last_card() -> None:
    text = "\n\n".join(f"paragraph {i} " + "字" * 300 for i in range(200))
    new = Button("New session", {"action": "new"})
    cards = render.final_cards2(
        text, note="1.0s", blocks=[Block("b", "✅ Allowed once")], buttons=[new]
    )
    assert len(cards) > 1
    assert all(card_size(c) <= render.CARD_MAX_BYTES for c in cards)
    joined = "".join(_elements(c)[0]["content"] for c in cards)
    assert joined == text
    assert cards[0]["header"]["title"]["content"] == f"Claude (1/{len(cards)})"
    assert _buttons(cards[-1]) == [("New session", {"action": "new"})]
    assert all(not _buttons(c) for c in cards[:-1])
    last_texts = [el.get("content") for el in _elements(cards[-1])]
    assert "✅ Allowed once" in last_texts and "1.0s" in last_texts
    assert all(c["config"]["streaming_mode"] is False for c in cards)


def test_final_cards2_single_card() -> None:
    (card,) = render.final_cards2("short", state="error", title="T")
    assert card["header"] == {"template": "red", "title": {"tag": "plain_text", "content": "T"}}


def test_too_many_blocks_are_dropped_oldest_first() -> None:
    blocks = [Block(f"b{i}", f"decision {i} " + "y" * 900) for i in range(60)]
    cards = render.final_cards2("answer", blocks=blocks)
    assert all(card_size(c) <= render.CARD_MAX_BYTES for c in cards)
    texts = [el.get("content", "") for el in _elements(cards[-1])]
    assert any("earlier decisions not shown" in t for t in texts)
    assert any(t.startswith("decision 59 ") for t in texts)
    assert not any(t.startswith("decision 0 ") for t in texts)


def test_unknown_state_rejected() -> None:
    with pytest.raises(ValueError):
        card2("x", state="nope")  # type: ignore[arg-type]
