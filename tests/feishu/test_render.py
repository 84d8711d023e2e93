"""render: card shapes, size limits and lossless, fence-balanced splitting."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from feishu_bot.feishu import render
from feishu_bot.feishu.render import (
    CARD_MAX_BYTES,
    card_for,
    card_size,
    final_cards,
    split_text,
    text_content,
)

FENCE_LINE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


def fence_lines(part: str) -> int:
    return len(FENCE_LINE.findall(part))


def open_fence_at_end(text: str) -> bool:
    """CommonMark-style: is a fenced code block still open at the end of `text`?"""
    marker = None
    for line in text.splitlines():
        m = re.match(r"^[ \t]*(`{3,}|~{3,})(.*)$", line)
        if not m:
            continue
        fence, info = m.group(1), m.group(2).strip()
        if marker is None:
            if not (fence[0] == "`" and "`" in info):
                marker = fence
        elif fence[0] == marker[0] and len(fence) >= len(marker) and not info:
            marker = None
    return marker is not None


def checked_split(text: str, limit: int) -> list[str]:
    """split_text, checked against split_spans: parts are the text in order, plus fence lines.

    Joining the parts gives the text back once the added fence lines are removed, and the
    only additions are a reopening fence line at the start / a closing one at the end.
    """
    parts = split_text(text, limit)
    spans = render.split_spans(text, limit)
    assert [s.text for s in spans] == parts
    assert "".join(s.body for s in spans) == text
    pos = 0
    for span in spans:
        assert span.start == pos and text[span.start : span.end] == span.body
        pos = span.end
        assert span.prefix == "" or re.fullmatch(r"(`{3,}|~{3,})[^\n`]*\n", span.prefix)
        assert span.suffix == "" or re.fullmatch(r"\n?(`{3,}|~{3,})", span.suffix)
    assert pos == len(text)
    for before, after in itertools.pairwise(spans):
        # A fence closed at the end of one part is reopened at the start of the next.
        assert bool(before.suffix) == bool(after.prefix)
    return parts


# -- cards -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "template"),
    [("queued", "wathet"), ("working", "blue"), ("done", "green"), ("error", "red")],
)
def test_card_shape_per_state(state: render.CardState, template: str) -> None:
    card = card_for("**hi**", state=state, note="running 3s", title="T")
    assert card["config"] == {"wide_screen_mode": True, "update_multi": True}
    assert card["header"] == {"template": template, "title": {"tag": "plain_text", "content": "T"}}
    assert card["elements"][0] == {"tag": "markdown", "content": "**hi**"}
    assert card["elements"][1] == {
        "tag": "note",
        "elements": [{"tag": "plain_text", "content": "running 3s"}],
    }
    json.dumps(card)  # serialisable


def test_card_default_title_no_note_and_empty_text() -> None:
    card = card_for("", state="working")
    assert card["header"]["title"]["content"] == "Claude is working…"
    assert len(card["elements"]) == 1
    assert card["elements"][0]["content"]  # never empty: Feishu rejects that


def test_unknown_state_rejected() -> None:
    with pytest.raises(ValueError):
        card_for("x", state="bogus")  # type: ignore[arg-type]


def test_text_content() -> None:
    assert text_content("hi") == {"text": "hi"}


def test_card_for_long_text_shows_tail_within_limit() -> None:
    text = "".join(f'line {i} 中文 😀 "quoted"\n' for i in range(20000))
    card = card_for(text, state="working", note="running 9s")
    assert card_size(card) <= CARD_MAX_BYTES
    content = card["elements"][0]["content"]
    assert content.endswith('line 19999 中文 😀 "quoted"\n')
    assert "line 0 " not in content


def test_card_for_tail_inside_open_fence_is_balanced() -> None:
    text = "intro\n```python\n" + "x = 1\n" * 20000  # still streaming: fence not closed
    card = card_for(text, state="working")
    content = card["elements"][0]["content"]
    assert card_size(card) <= CARD_MAX_BYTES
    assert fence_lines(content) % 2 == 0
    assert "```python\n" in content


def test_final_cards_short_answer_is_one_card() -> None:
    cards = final_cards("done!", note="cost $0.01 · 3 turns")
    assert len(cards) == 1
    assert cards[0]["header"]["title"]["content"] == "Claude"
    assert cards[0]["elements"][1]["elements"][0]["content"] == "cost $0.01 · 3 turns"


def test_final_cards_error_state() -> None:
    [card] = final_cards("boom", state="error")
    assert card["header"]["template"] == "red"


def test_final_cards_multibyte_stay_under_limit_and_keep_order() -> None:
    # CJK (6 bytes escaped), emoji (12), quotes and newlines (2): JSON escaping grows text.
    para = '中文段落，含有表情😀和"引号"以及\\反斜杠。\n' * 40 + "\n"
    text = "".join(f"## Section {i}\n\n{para}" for i in range(60))
    cards = final_cards(text, title="Answer", note="cost $0.02")
    assert len(cards) > 2
    for card in cards:
        assert card_size(card) <= CARD_MAX_BYTES
        # card_size is exactly the card's share of the request body the replier sends.
        body = render.body_dumps({"msg_type": "interactive", "content": render.dumps(card)})
        empty = render.body_dumps({"msg_type": "interactive", "content": ""})
        assert len(body) - len(empty) == card_size(card)
        assert len(body) < 30 * 1024 - 1000  # Feishu: card request body ≤ 30 KB
    n = len(cards)
    assert [c["header"]["title"]["content"] for c in cards] == [
        f"Answer ({i}/{n})" for i in range(1, n + 1)
    ]
    assert all(len(c["elements"]) == 1 for c in cards[:-1])  # note only on the last
    assert cards[-1]["elements"][1]["elements"][0]["content"] == "cost $0.02"
    assert "".join(c["elements"][0]["content"] for c in cards) == text


def test_final_cards_one_megabyte() -> None:
    rng = random.Random(7)
    words = ["alpha", "beta", "数据", "🚀", "x" * 30, "`code`", "**bold**"]
    chunks = []
    size = 0
    while size < 1_000_000:
        if rng.random() < 0.05:
            block = "```bash\n" + "echo hi\n" * rng.randint(1, 400) + "```\n"
        else:
            block = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) + "\n"
            if rng.random() < 0.2:
                block += "\n"
        chunks.append(block)
        size += len(block.encode())
    text = "".join(chunks)
    cards = final_cards(text)
    assert all(card_size(c) <= CARD_MAX_BYTES for c in cards)
    contents = [c["elements"][0]["content"] for c in cards]
    assert all(fence_lines(c) % 2 == 0 for c in contents)
    stripped = "".join(contents).replace("```bash\n", "").replace("```\n", "").replace("```", "")
    original = text.replace("```bash\n", "").replace("```\n", "")
    assert stripped.replace("\n", "") == original.replace("\n", "")


# -- split_text --------------------------------------------------------------------------------


def test_split_fits_returns_whole_text() -> None:
    assert split_text("", 1000) == [""]
    assert split_text("short", 1000) == ["short"]


def test_split_rejects_tiny_limit() -> None:
    with pytest.raises(ValueError):
        split_text("x" * 1000, 10)


def test_split_prefers_paragraph_boundaries() -> None:
    paras = [f"paragraph {i} " + "word " * 30 for i in range(20)]
    text = "\n\n".join(paras)
    parts = split_text(text, 600)
    assert "".join(parts) == text
    for part in parts[:-1]:
        assert part.endswith("\n\n") or part.endswith("\n")
    assert all(len(p.encode()) <= 600 for p in parts)
    # Every part but the last ends on a blank line (a paragraph end), none mid-paragraph.
    assert all(p.endswith("\n\n") for p in parts[:-1])


def test_split_multibyte_never_breaks_a_character() -> None:
    text = "😀中" * 5000  # one long line, no spaces: must be hard-split
    parts = split_text(text, 1001)
    assert all(len(p.encode()) <= 1001 for p in parts)
    assert "".join(parts) == text  # all parts are valid str slices: characters intact
    for p in parts:
        p.encode().decode("utf-8")


def test_split_long_line_at_spaces() -> None:
    text = " ".join(f"w{i}" for i in range(3000))
    parts = split_text(text, 500)
    assert "".join(parts) == text
    assert all(p.endswith(" ") for p in parts[:-1])


def test_split_keeps_code_fences_balanced_with_language() -> None:
    code = "".join(f"print({i})  # 注释\n" for i in range(400))
    text = "Here is code:\n\n```python\n" + code + "```\n\nAnd after.\n"
    parts = checked_split(text, 1200)
    assert len(parts) > 3
    for k, part in enumerate(parts):
        assert len(part.encode()) <= 1200
        assert fence_lines(part) % 2 == 0, part
        if 0 < k < len(parts) - 1:
            assert part.startswith("```python\n")


def test_split_tilde_and_long_backtick_fences() -> None:
    text = "~~~\n" + "a line\n" * 300 + "~~~\n" + "````md\n" + "```inner```\n" * 200 + "````\n"
    parts = checked_split(text, 400)
    for part in parts:
        assert len(part.encode()) <= 400
    tilde_parts = [p for p in parts if p.startswith("~~~\n")]
    assert len(tilde_parts) > 2


def test_split_order_preserved_random_texts() -> None:
    rng = random.Random(1)
    pieces = ["word ", "中文 ", "\n", "\n\n", "```\n", "```js\n", "🚀", "x" * 200, '"q" ']
    for _ in range(30):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(50, 800)))
        limit = rng.choice([256, 300, 512, 1000])
        parts = checked_split(text, limit)
        assert all(len(p.encode()) <= limit for p in parts)
        assert not any(open_fence_at_end(p) for p in parts[:-1])
        assert open_fence_at_end(parts[-1]) == open_fence_at_end(text)


def test_final_cards_random_texts_small_cards() -> None:
    rng = random.Random(2)
    pieces = ["word ", "中文 ", "\n", "\n\n", "```\n", "```py\n", "😀", "\\", '"', "\t", "\x01"]
    for _ in range(30):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(50, 3000)))
        cards = final_cards(text, note="n", max_bytes=2000)
        assert all(card_size(c) <= 2000 for c in cards)
        bodies = [c["elements"][0]["content"] for c in cards]
        assert not any(open_fence_at_end(b) for b in bodies[:-1])
