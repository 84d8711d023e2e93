"""Pure builders for what the bot shows in Feishu: interactive cards, text content, splitting.

Nothing here does I/O. Sizes are measured the way the replier sends them, because Feishu's
limit (30 KB for cards) applies to the *request body*: the card is serialised with
`dumps` (UTF-8, not ASCII-escaped) and that string is escaped once more as the `content`
field of the JSON body. `card_size` is the card's share of the body by exactly that measure
(a CJK character costs 3 bytes, a quote 4, a newline 3), and every card built here stays at
or under `CARD_MAX_BYTES` by it, leaving room for the rest of the body. Text is not escaped
or rewritten, with one exception: Feishu's mention tags (`<at id=all></at>`, `<at user_id=…>`)
in Claude's text are shown literally (`literal_mentions`), so a prompt-injected answer cannot
ping a whole group. The bot's own mentions (approval records) are added after that, in blocks.

Splitting keeps order and content: joining the parts gives the text back, except that a part
that ends inside a ``` code fence gets a closing fence line appended and the next part starts
with the same opening fence line (language kept), so each part renders on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

__all__ = [
    "ANSWER_ELEMENT",
    "CARD_MAX_BYTES",
    "STATES",
    "TEXT_MAX_BYTES",
    "Block",
    "Button",
    "CardState",
    "Span",
    "body_dumps",
    "card2",
    "card_for",
    "card_size",
    "dumps",
    "final_cards",
    "final_cards2",
    "literal_mentions",
    "live_text",
    "split_spans",
    "split_text",
    "text_content",
]

CARD_MAX_BYTES = 28_000  # Feishu allows 30 KB per card request body; the rest is margin.
TEXT_MAX_BYTES = 150_000  # text messages
MIN_SPLIT_BYTES = 256  # below this a fence reopen/close pair could not fit

CardState = Literal["queued", "working", "done", "error"]
STATES: dict[str, tuple[str, str]] = {
    # state: (header template colour, default title)
    "queued": ("wathet", "Queued"),
    "working": ("blue", "Claude is working…"),
    "done": ("green", "Claude"),
    "error": ("red", "Claude hit a problem"),
}
_EMPTY = "…"  # Feishu rejects an empty markdown element
_TRUNCATED = "*…(earlier output not shown yet)*\n\n"

Measure = Callable[[str], int]

# A zero-width space after "<" keeps the tag visible as text but no longer a tag, in card
# markdown, in code blocks and in text messages alike (an HTML entity would show up verbatim
# inside code blocks and in text messages).
_MENTION_TAG = re.compile(r"<(?=\s*/?\s*at\b)", re.IGNORECASE)


def literal_mentions(text: str) -> str:
    """Claude's text with Feishu mention tags made inert (idempotent)."""
    return _MENTION_TAG.sub("<\u200b", text) if "<" in text else text


def text_content(text: str) -> dict[str, str]:
    """Content for msg_type "text" (the caller keeps it under TEXT_MAX_BYTES)."""
    return {"text": text}


def dumps(content: dict[str, Any]) -> str:
    """The exact string the replier sends as a message's `content` (sizes are measured on it)."""
    return json.dumps(content, ensure_ascii=False)


def body_dumps(body: dict[str, Any]) -> bytes:
    """The exact request body the replier sends for a JSON payload."""
    return json.dumps(body, ensure_ascii=False).encode()


def card_size(card: dict[str, Any]) -> int:
    """Bytes the card takes in the request body (its `content` string, escaped, in UTF-8)."""
    return _body_len(dumps(card))


def _body_len(s: str) -> int:
    return len(json.dumps(s, ensure_ascii=False).encode()) - 2


def _utf8(s: str) -> int:
    return len(s.encode())


def _json_len(s: str) -> int:
    # Bytes a piece of markdown costs in the request body: escaped inside the card JSON, then
    # again inside the body. Additive over concatenation (both escapes work per character).
    return _body_len(json.dumps(s, ensure_ascii=False)[1:-1])


def card_for(
    text: str,
    *,
    state: CardState,
    note: str | None = None,
    title: str | None = None,
    max_bytes: int = CARD_MAX_BYTES,
) -> dict[str, Any]:
    """One card (Card JSON 1.0, `update_multi` so it can be PATCHed) for the given state.

    If the text does not fit, the card shows its *tail* after a short marker line (the live
    view of a long answer); `final_cards` is the lossless path.
    """
    text = literal_mentions(text)
    card = _card(text, state=state, note=note, title=title)
    if card_size(card) <= max_bytes:
        return card
    budget = max_bytes - card_size(_card("", state=state, note=note, title=title))
    budget -= _json_len(_TRUNCATED)
    if budget < MIN_SPLIT_BYTES:
        raise ValueError(f"max_bytes={max_bytes} leaves no room for text")
    tail = _tail(text, budget, _json_len)
    return _card(_TRUNCATED + tail, state=state, note=note, title=title)


def final_cards(
    text: str,
    *,
    title: str | None = None,
    note: str | None = None,
    state: CardState = "done",
    max_bytes: int = CARD_MAX_BYTES,
) -> list[dict[str, Any]]:
    """The complete answer as one or more cards, in order, each `card_size` ≤ max_bytes.

    With several parts the titles read "Title (1/3)", … and the note goes on the last card.
    """
    text = literal_mentions(text)
    base_title = title or STATES[state][1]
    # Budget against the largest possible frame: title with "(999/999)" and the note.
    frame = _card("", state=state, note=note, title=f"{base_title} (999/999)")
    budget = max_bytes - card_size(frame)
    if budget < MIN_SPLIT_BYTES:
        raise ValueError(f"max_bytes={max_bytes} leaves no room for text")
    parts = _split(text, budget, _json_len)
    if len(parts) == 1:
        return [_card(parts[0], state=state, note=note, title=base_title)]
    n = len(parts)
    return [
        _card(
            part,
            state=state,
            note=note if i == n else None,
            title=f"{base_title} ({i}/{n})",
        )
        for i, part in enumerate(parts, start=1)
    ]


def _card(text: str, *, state: CardState, note: str | None, title: str | None) -> dict[str, Any]:
    if state not in STATES:
        raise ValueError(f"unknown card state {state!r}")
    template, default_title = STATES[state]
    elements: list[dict[str, Any]] = [{"tag": "markdown", "content": text or _EMPTY}]
    if note:
        elements.append({"tag": "note", "elements": [{"tag": "plain_text", "content": note}]})
    return {
        "config": {"wide_screen_mode": True, "update_multi": True},
        "header": {
            "template": template,
            "title": {"tag": "plain_text", "content": title or default_title},
        },
        "elements": elements,
    }


# -- splitting -------------------------------------------------------------------------------


def split_text(text: str, limit_bytes: int) -> list[str]:
    """Split `text` into parts of at most `limit_bytes` UTF-8 bytes each, in order.

    Prefers paragraph breaks, then line breaks, then spaces; never splits inside a character;
    keeps ``` fences balanced per part (see the module docstring). Returns `[text]` when it
    already fits (also for "").
    """
    return _split(text, limit_bytes, _utf8)


# A fence line: up to any indentation, 3+ backticks or tildes, then an info string.
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*?)[ \t]*\r?\n?$")
_MAX_MARKER = 16  # longer "fences" are not treated as fences (bounds the reopen overhead)


class _Fence:
    __slots__ = ("lang", "marker")

    def __init__(self, marker: str, lang: str) -> None:
        self.marker = marker
        self.lang = lang

    def reopen(self) -> str:
        return f"{self.marker}{self.lang}\n"

    def close(self, part: str) -> str:
        return ("" if part.endswith("\n") else "\n") + self.marker


def _fence_step(state: _Fence | None, line: str) -> _Fence | None:
    m = _FENCE_RE.match(line)
    if not m:
        return state
    marker, info = m.group(1), m.group(2).strip()
    if len(marker) > _MAX_MARKER:
        return state
    if state is None:
        if marker[0] == "`" and "`" in info:
            return None  # not a fence opener per CommonMark (inline code like ```a```)
        lang = info.split()[0][:32] if info else ""
        return _Fence(marker, lang)
    if marker[0] == state.marker[0] and len(marker) >= len(state.marker) and not info:
        return None
    return state


class _Units:
    """The text cut into units (lines, or chunks of over-long lines) with fence state."""

    def __init__(self, text: str, limit: int, measure: Measure) -> None:
        lines = text.splitlines(keepends=True)
        states: list[_Fence | None] = []  # fence state before each line, then after the last
        state: _Fence | None = None
        for line in lines:
            states.append(state)
            state = _fence_step(state, line)
        states.append(state)
        fences = {(f.marker, f.lang): f for f in states if f is not None}
        # Worst case a part pays for a reopen line and a closing fence.
        overhead = max(
            (measure(f.reopen()) + measure(f.close("")) for f in fences.values()), default=0
        )
        cap = limit - overhead
        if cap < MIN_SPLIT_BYTES // 2:
            raise ValueError(f"limit {limit} is too small for the fences in this text")
        self.measure = measure
        self.units: list[str] = []
        self.before: list[_Fence | None] = []
        self.after: list[_Fence | None] = []
        for i, line in enumerate(lines):
            pieces = [line] if measure(line) <= cap else _hard_split(line, cap, measure)
            for k, piece in enumerate(pieces):
                self.units.append(piece)
                self.before.append(states[i])
                self.after.append(states[i + 1] if k == len(pieces) - 1 else states[i])
        self.sizes = [measure(u) for u in self.units]
        self.offsets: list[int] = []
        pos = 0
        for unit in self.units:
            self.offsets.append(pos)
            pos += len(unit)

    def prefix(self, i: int) -> str:
        fence = self.before[i]
        return fence.reopen() if fence else ""

    def closing(self, j: int, body: str) -> str:
        fence = self.after[j]
        return fence.close(body) if fence else ""

    def part(self, i: int, j: int) -> str:
        return self.span(i, j).text

    def span(self, i: int, j: int) -> Span:
        body = "".join(self.units[i : j + 1])
        start = self.offsets[i]
        return Span(self.prefix(i), start, start + len(body), self.closing(j, body), body)


class Span(NamedTuple):
    """One part: `text[start:end]` with the fence lines added around it."""

    prefix: str
    start: int
    end: int
    suffix: str
    body: str

    @property
    def text(self) -> str:
        return self.prefix + self.body + self.suffix


def _split(text: str, limit: int, measure: Measure) -> list[str]:
    return [span.text for span in split_spans(text, limit, measure)]


def split_spans(text: str, limit: int, measure: Measure = _utf8) -> list[Span]:
    """Like `split_text`, but says which slice of `text` each part holds (for checks)."""
    if limit < MIN_SPLIT_BYTES:
        raise ValueError(f"limit {limit} is below the minimum of {MIN_SPLIT_BYTES} bytes")
    if measure(text) <= limit:
        return [Span("", 0, len(text), "", text)]
    u = _Units(text, limit, measure)
    units, sizes, m = u.units, u.sizes, u.measure
    parts: list[Span] = []
    floor = limit // 2
    i, n = 0, len(units)
    while i < n:
        used = m(u.prefix(i))
        # Grow the part greedily, remembering the last good place to end it of each kind.
        j = i
        best: dict[str, int] = {}
        while j < n:
            need = used + sizes[j] + m(u.closing(j, units[j]))
            if need > limit and j > i:
                break
            used += sizes[j]
            unit = units[j]
            if used >= floor:
                if unit.endswith("\n"):
                    best["line"] = j
                    nxt = units[j + 1] if j + 1 < n else ""
                    if not unit.strip() or not nxt.strip():
                        best["para"] = j
                elif unit[-1:].isspace():
                    best["space"] = j
            j += 1
        if j >= n:
            end = n - 1
        else:
            end = best.get("para", best.get("line", best.get("space", j - 1)))
        span = u.span(i, end)
        if end == n - 1:
            span = span._replace(suffix="")  # text that ends inside a fence stays as it was
        parts.append(span)
        i = end + 1
    return parts


def _tail(text: str, limit: int, measure: Measure) -> str:
    """The longest suffix of whole units that fits in `limit` as one balanced part."""
    if measure(text) <= limit:
        return text
    u = _Units(text, limit, measure)
    n = len(u.units)
    end_cost = measure(u.closing(n - 1, text))
    start, used = n, end_cost
    while start > 0:
        cand = start - 1
        if used + u.sizes[cand] + measure(u.prefix(cand)) > limit:
            break
        used += u.sizes[cand]
        start = cand
    start = min(start, n - 1)  # one unit always fits (units are capped)
    # Prefer to begin at a paragraph when one is near (units already begin at line starts).
    for k in range(start, min(n - 1, start + 40)):
        if k > 0 and not u.units[k - 1].strip():
            start = k
            break
    # Moving the start forward only drops text, but the reopen line may differ; re-check.
    while start < n - 1 and measure(u.part(start, n - 1)) > limit:
        start += 1
    return u.part(start, n - 1)


def _hard_split(line: str, cap: int, measure: Measure) -> list[str]:
    """Cut a line longer than `cap` into chunks ≤ cap, at spaces where possible."""
    out: list[str] = []
    rest = line
    while measure(rest) > cap:
        # Largest prefix (in characters) that fits: binary search on the measure.
        lo, hi = 1, len(rest)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if measure(rest[:mid]) <= cap:
                lo = mid
            else:
                hi = mid - 1
        cut = lo
        space = rest.rfind(" ", 0, cut)
        if space >= cut // 2:
            cut = space + 1  # keep the space with the first chunk
        out.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        out.append(rest)
    return out


# -- Card JSON 2.0 (CardKit entities, buttons) ------------------------------------------------
# A 2.0 card is one markdown element holding the answer (element_id ANSWER_ELEMENT, the one a
# CardKit stream types into), then the blocks (approval requests, questions, their records),
# a small note and a row of buttons. Sizes use the same measure as 1.0 cards; the body of a
# CardKit create/update carries the card JSON as a string exactly like a message's content.

ANSWER_ELEMENT = "answer"
_SUMMARY_CHARS = 60


class Button(NamedTuple):
    """A callback button; `value` is what comes back in card.action.trigger (sign it)."""

    text: str
    value: dict[str, Any]
    kind: str = "default"  # Feishu button type: default, primary, danger, primary_filled, ...


class Block(NamedTuple):
    """A section under the answer: markdown text and (while it waits) its buttons."""

    block_id: str
    text: str
    buttons: tuple[Button, ...] = ()


def card2(
    text: str,
    *,
    state: CardState,
    note: str | None = None,
    title: str | None = None,
    blocks: tuple[Block, ...] | list[Block] = (),
    buttons: tuple[Button, ...] | list[Button] = (),
    streaming: bool = False,
    max_bytes: int = CARD_MAX_BYTES,
) -> dict[str, Any]:
    """One Card JSON 2.0 card; a text that does not fit shows its tail (see `live_text`)."""
    text = literal_mentions(text)
    shown = live_text(
        text,
        state=state,
        note=note,
        title=title,
        blocks=blocks,
        buttons=buttons,
        max_bytes=max_bytes,
    )
    return _card2(
        shown,
        state=state,
        note=note,
        title=title,
        blocks=blocks,
        buttons=buttons,
        streaming=streaming,
        summary=text,
    )


def live_text(
    text: str,
    *,
    state: CardState,
    note: str | None = None,
    title: str | None = None,
    blocks: tuple[Block, ...] | list[Block] = (),
    buttons: tuple[Button, ...] | list[Button] = (),
    max_bytes: int = CARD_MAX_BYTES,
) -> str:
    """What the answer element shows: the text, or its tail after a marker when too long."""
    text = literal_mentions(text)
    frame = _card2(
        "",
        state=state,
        note=note,
        title=title,
        blocks=blocks,
        buttons=buttons,
        streaming=True,
        summary=text[:_SUMMARY_CHARS],
    )
    budget = max_bytes - card_size(frame)
    if _json_len(text or _EMPTY) <= budget:
        return text or _EMPTY
    budget -= _json_len(_TRUNCATED)
    if budget < MIN_SPLIT_BYTES:
        raise ValueError(f"max_bytes={max_bytes} leaves no room for text")
    return _TRUNCATED + _tail(text, budget, _json_len)


def final_cards2(
    text: str,
    *,
    state: CardState = "done",
    note: str | None = None,
    title: str | None = None,
    blocks: tuple[Block, ...] | list[Block] = (),
    buttons: tuple[Button, ...] | list[Button] = (),
    max_bytes: int = CARD_MAX_BYTES,
) -> list[dict[str, Any]]:
    """The complete answer as 2.0 cards in order; blocks, note and buttons go on the last one.

    Like `final_cards`: titles get "(i/n)" when split, and every card fits `max_bytes`.
    Blocks that would leave too little room for text are dropped oldest first (a line says
    how many).
    """
    text = literal_mentions(text)
    base_title = title or STATES[state][1]
    blocks = _fit_blocks(list(blocks), state, note, base_title, buttons, max_bytes)
    frame = _card2(
        "",
        state=state,
        note=note,
        title=f"{base_title} (999/999)",
        blocks=blocks,
        buttons=buttons,
        streaming=False,
        summary=text[:_SUMMARY_CHARS],
    )
    budget = max_bytes - card_size(frame)
    parts = _split(text, budget, _json_len)
    n = len(parts)
    cards = []
    for i, part in enumerate(parts, start=1):
        last = i == n
        cards.append(
            _card2(
                part,
                state=state,
                note=note if last else None,
                title=base_title if n == 1 else f"{base_title} ({i}/{n})",
                blocks=blocks if last else (),
                buttons=buttons if last else (),
                streaming=False,
                summary=part,
            )
        )
    return cards


def _fit_blocks(
    blocks: list[Block],
    state: CardState,
    note: str | None,
    title: str,
    buttons: tuple[Button, ...] | list[Button],
    max_bytes: int,
) -> list[Block]:
    kept, dropped = list(blocks), 0

    def with_marker() -> list[Block]:
        marker = Block("dropped", f"*…{dropped} earlier decisions not shown*")
        return [marker, *kept] if dropped else kept

    while kept:
        frame = _card2(
            "",
            state=state,
            note=note,
            title=f"{title} (999/999)",
            blocks=with_marker(),
            buttons=buttons,
            streaming=False,
            summary="",
        )
        if max_bytes - card_size(frame) >= 8 * MIN_SPLIT_BYTES:
            break
        kept.pop(0)
        dropped += 1
    return with_marker()


def _card2(
    text: str,
    *,
    state: CardState,
    note: str | None,
    title: str | None,
    blocks: tuple[Block, ...] | list[Block],
    buttons: tuple[Button, ...] | list[Button],
    streaming: bool,
    summary: str,
) -> dict[str, Any]:
    if state not in STATES:
        raise ValueError(f"unknown card state {state!r}")
    template, default_title = STATES[state]
    elements: list[dict[str, Any]] = [
        {"tag": "markdown", "element_id": ANSWER_ELEMENT, "content": text or _EMPTY}
    ]
    for block in blocks:
        elements.append({"tag": "hr"})
        elements.append({"tag": "markdown", "content": block.text or _EMPTY})
        if block.buttons:
            elements.append(_button_row(block.buttons))
    if note:
        elements.append({"tag": "markdown", "content": note, "text_size": "notation"})
    if buttons:
        elements.append(_button_row(buttons))
    line = " ".join(summary.split())[:_SUMMARY_CHARS] or default_title
    return {
        "schema": "2.0",
        "config": {"update_multi": True, "streaming_mode": streaming, "summary": {"content": line}},
        "header": {
            "template": template,
            "title": {"tag": "plain_text", "content": title or default_title},
        },
        "body": {"elements": elements},
    }


def _button_row(buttons: tuple[Button, ...] | list[Button]) -> dict[str, Any]:
    return {
        "tag": "column_set",
        "flex_mode": "flow",
        "horizontal_spacing": "8px",
        "columns": [
            {
                "tag": "column",
                "width": "auto",
                "elements": [
                    {
                        "tag": "button",
                        "text": {"tag": "plain_text", "content": b.text},
                        "type": b.kind,
                        "behaviors": [{"type": "callback", "value": b.value}],
                    }
                ],
            }
            for b in buttons
        ],
    }
