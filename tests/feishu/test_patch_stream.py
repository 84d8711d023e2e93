"""PatchStream: throttled live card, reaction, block cards, exactly-once final delivery.

The first half uses an in-memory replier with a manual clock (exact control over in-flight
requests and time); the second half runs against the Feishu simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from feishu_bot.claude.protocol import StreamParser
from feishu_bot.errors import FeishuApiError, FeishuTransientError
from feishu_bot.events import ClaudeEvent
from feishu_bot.feishu.pacing import Pacer
from feishu_bot.feishu.patch_stream import BLOCK_TITLE, PatchStream
from feishu_bot.feishu.reaction import DEFAULT_REACTION
from feishu_bot.feishu.render import CARD_MAX_BYTES, Block, Button, card_size
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator.cardkit import find_button

# -- test doubles ------------------------------------------------------------------------------


class ManualTime:
    """A clock that moves only when told; `sleep` waits for it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + delay, fut))
        try:
            await fut
        finally:
            self._sleepers = [(t, f) for t, f in self._sleepers if f is not fut]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, fut in list(self._sleepers):
            if deadline <= self.now and not fut.done():
                fut.set_result(None)

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())


class FakeReplier:
    """Records calls; `gate[op]` (an Event) holds that op in flight; `fail[op]` raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.cards: dict[str, list[dict[str, Any]]] = {}  # message id -> versions
        self.order: list[str] = []  # created card ids in order
        self.reactions: dict[str, str] = {}  # reaction id -> message id (live ones)
        self.uuids: dict[str, str] = {}
        self.gate: dict[str, asyncio.Event] = {}
        self.fail: dict[str, list[Exception]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._cond = asyncio.Condition()
        self._n = 0

    async def _enter(self, op: str, detail: Any) -> None:
        self.calls.append((op, detail))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._changed()
            if op in self.gate:
                await self.gate[op].wait()
            if self.fail.get(op):
                raise self.fail[op].pop(0)
        finally:
            self.in_flight -= 1

    async def _changed(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(self, pred: Callable[[], Any], timeout: float = 5.0) -> Any:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(pred), timeout)
        return pred()

    def ops(self, op: str) -> list[Any]:
        return [d for o, d in self.calls if o == op]

    async def reply_card(
        self, message_id: str, card: dict[str, Any], *, in_thread: bool = False, uuid: str | None
    ) -> str:
        await self._enter("reply", (message_id, card, in_thread, uuid))
        if uuid in self.uuids:  # Feishu-like dedupe: same uuid, same message
            mid = self.uuids[uuid]
        else:
            self._n += 1
            mid = f"om_card_{self._n}"
            if uuid:
                self.uuids[uuid] = mid
            self.cards[mid] = [card]
            self.order.append(mid)
        await self._changed()
        return mid

    async def patch(self, message_id: str, content: dict[str, Any]) -> None:
        await self._enter("patch", (message_id, content))
        self.cards[message_id].append(content)
        await self._changed()

    async def add_reaction(self, message_id: str, emoji_type: str) -> str:
        await self._enter("add_reaction", (message_id, emoji_type))
        rid = f"r_{len(self.calls)}"
        self.reactions[rid] = message_id
        await self._changed()
        return rid

    async def remove_reaction(self, message_id: str, reaction_id: str) -> None:
        await self._enter("remove_reaction", (message_id, reaction_id))
        del self.reactions[reaction_id]
        await self._changed()


def body(card: dict[str, Any]) -> str:
    return card["elements"][0]["content"]


def latest(fake: FakeReplier, mid: str) -> dict[str, Any]:
    return fake.cards[mid][-1]


async def settle() -> None:
    """Let ready tasks run (no time passes on the manual clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def tick(t: ManualTime, seconds: float) -> None:
    """Let every task reach its next wait, then move the clock."""
    await settle()
    t.advance(seconds)
    await settle()


@pytest.fixture
def time_() -> ManualTime:
    return ManualTime()


@pytest.fixture
def fake() -> FakeReplier:
    return FakeReplier()


def make_stream(fake: FakeReplier, t: ManualTime, **kw: Any) -> PatchStream:
    return PatchStream(
        fake, "om_user", in_thread=False, min_interval=1.0, clock=t.clock, sleep=t.sleep, **kw
    )


# -- in-memory tests ---------------------------------------------------------------------------


async def test_rapid_updates_coalesce_with_trailing_flush(
    fake: FakeReplier, time_: ManualTime
) -> None:
    stream = make_stream(fake, time_)
    await stream.update("text 0")
    await fake.wait_for(lambda: fake.order)
    for i in range(1, 50):
        await stream.update(f"text {i}")
    await settle()
    assert len(fake.ops("reply")) == 1  # the card was created once...
    assert fake.ops("patch") == []  # ...and nothing else until the interval passes
    await tick(time_, 1.0)
    await fake.wait_for(lambda: fake.ops("patch"))
    await settle()
    [(mid, card)] = fake.ops("patch")
    assert body(card) == "text 49"  # only the latest text is sent
    await tick(time_, 5.0)
    await settle()
    assert len(fake.ops("patch")) == 1  # nothing new: no more PATCHes
    await stream.finish("final")
    assert body(latest(fake, mid)) == "final"
    assert fake.max_in_flight == 1


async def test_update_never_waits_for_feishu(fake: FakeReplier, time_: ManualTime) -> None:
    fake.gate["reply"] = asyncio.Event()  # card creation hangs
    stream = make_stream(fake, time_)
    await asyncio.wait_for(stream.update("a"), 0.5)
    await fake.wait_for(lambda: fake.ops("reply"))
    for i in range(10):
        await asyncio.wait_for(stream.update(f"b{i}"), 0.5)
    fake.gate["reply"].set()
    await stream.finish("done")
    assert [body(c) for c in fake.cards[fake.order[0]]][-1] == "done"


async def test_finish_waits_for_in_flight_patch_and_lands_last(
    fake: FakeReplier, time_: ManualTime
) -> None:
    stream = make_stream(fake, time_)
    await stream.update("one")
    await fake.wait_for(lambda: fake.order)
    mid = fake.order[0]
    fake.gate["patch"] = asyncio.Event()
    await stream.update("two")
    await tick(time_, 1.0)
    await fake.wait_for(lambda: fake.ops("patch"))  # the progress PATCH is in flight
    finisher = asyncio.create_task(stream.finish("final answer"))
    await settle()
    assert not finisher.done()
    assert len(fake.ops("patch")) == 1  # final not sent while one is in flight
    fake.gate["patch"].set()
    await finisher
    assert [body(c) for c in fake.cards[mid]] == ["one", "two", "final answer"]
    assert fake.max_in_flight == 1


async def test_finish_cancels_sleeping_trailing_flush(fake: FakeReplier, time_: ManualTime) -> None:
    stream = make_stream(fake, time_)
    await stream.update("one")
    await fake.wait_for(lambda: fake.order)
    await stream.update("two")  # would be flushed after 1 s
    await settle()
    assert time_.sleeping == 1
    await stream.finish("final")
    await tick(time_, 10)
    await settle()
    mid = fake.order[0]
    assert [body(c) for c in fake.cards[mid]] == ["one", "final"]


async def test_final_delivered_exactly_once(fake: FakeReplier, time_: ManualTime) -> None:
    stream = make_stream(fake, time_)
    await stream.update("x")
    await asyncio.gather(stream.finish("A"), stream.finish("B"), stream.fail("C"))
    await stream.update("late")  # ignored after the end
    await tick(time_, 5)
    await settle()
    mid = fake.order[0]
    finals = [body(c) for c in fake.cards[mid][1:]]
    assert finals == ["A"]
    assert len(fake.order) == 1
    assert stream.closed


async def test_quick_answer_is_one_message(fake: FakeReplier, time_: ManualTime) -> None:
    stream = make_stream(fake, time_)
    await stream.started()
    await stream.finish("42", note="cost $0.01 · 1 turns")
    assert len(fake.order) == 1
    assert fake.ops("patch") == []
    card = fake.cards[fake.order[0]][0]
    assert body(card) == "42"
    assert card["header"]["template"] == "green"
    assert card["elements"][1]["elements"][0]["content"] == "cost $0.01 · 1 turns"


async def test_reaction_added_then_removed(fake: FakeReplier, time_: ManualTime) -> None:
    stream = make_stream(fake, time_)
    await stream.started()
    await stream.started()  # idempotent
    await fake.wait_for(lambda: fake.reactions)
    assert fake.ops("add_reaction") == [("om_user", DEFAULT_REACTION)]
    await stream.finish("ok")
    assert fake.reactions == {}
    assert len(fake.ops("remove_reaction")) == 1


async def test_reaction_failure_is_harmless(fake: FakeReplier, time_: ManualTime) -> None:
    fake.fail["add_reaction"] = [FeishuApiError("nope", status=400, code=231001)]
    stream = make_stream(fake, time_)
    await stream.started()
    await stream.finish("ok")
    assert fake.ops("remove_reaction") == []
    assert body(fake.cards[fake.order[0]][0]) == "ok"


async def test_reaction_removed_even_when_finish_fails(
    fake: FakeReplier, time_: ManualTime
) -> None:
    stream = make_stream(fake, time_)
    await stream.started()
    await fake.wait_for(lambda: fake.reactions)
    fake.fail["reply"] = [FeishuApiError("bot removed", status=400, code=230002)]
    with pytest.raises(FeishuApiError):
        await stream.finish("answer")
    assert fake.reactions == {}


async def test_queued_then_started_then_answer(fake: FakeReplier, time_: ManualTime) -> None:
    stream = make_stream(fake, time_)
    await stream.queued(3)
    await fake.wait_for(lambda: fake.order)
    mid = fake.order[0]
    first = fake.cards[mid][0]
    assert first["header"]["template"] == "wathet"
    assert first["elements"][1]["elements"][0]["content"] == "queued, position 3"
    await stream.queued(2)
    await stream.queued(1)
    await settle()
    await tick(time_, 1.0)
    await fake.wait_for(lambda: len(fake.cards[mid]) == 2)
    assert fake.cards[mid][1]["elements"][1]["elements"][0]["content"] == "queued, position 1"
    await stream.started()
    await settle()
    await tick(time_, 1.0)
    await fake.wait_for(lambda: len(fake.cards[mid]) == 3)
    assert fake.cards[mid][2]["header"]["template"] == "blue"
    await tick(time_, 2.0)
    await stream.update("partial")
    await settle()
    await tick(time_, 1.0)
    await fake.wait_for(lambda: len(fake.cards[mid]) == 4)
    working = fake.cards[mid][3]
    assert body(working) == "partial"
    assert working["elements"][1]["elements"][0]["content"].startswith("running ")
    await stream.finish("all done")
    assert body(latest(fake, mid)) == "all done"
    assert len(fake.order) == 1


async def test_progress_failures_do_not_kill_the_turn(fake: FakeReplier, time_: ManualTime) -> None:
    stream = make_stream(fake, time_)
    await stream.update("a")
    await fake.wait_for(lambda: fake.order)
    fake.fail["patch"] = [FeishuApiError("boom", status=500)]
    await stream.update("b")
    await tick(time_, 1.0)
    await fake.wait_for(lambda: fake.ops("patch"))
    await settle()
    await stream.update("c")  # the stream still works
    await tick(time_, 1.0)
    await fake.wait_for(lambda: len(fake.ops("patch")) == 2)
    await stream.finish("final")
    assert body(latest(fake, fake.order[0])) == "final"


async def test_failed_create_is_retried_with_same_uuid_then_patched(
    fake: FakeReplier, time_: ManualTime
) -> None:
    fake.fail["reply"] = [FeishuApiError("timeout", status=0)]
    stream = make_stream(fake, time_)
    await stream.update("a")
    await fake.wait_for(lambda: fake.ops("reply"))
    await settle()
    assert fake.order == []
    await stream.finish("final")
    uuids = {detail[3] for detail in fake.ops("reply")}
    assert len(uuids) == 1  # the same logical card both times
    mid = fake.order[0]
    assert body(latest(fake, mid)) == "final"


async def test_long_final_answer_split_into_ordered_cards(
    fake: FakeReplier, time_: ManualTime
) -> None:
    stream = make_stream(fake, time_)
    await stream.update("start")
    await fake.wait_for(lambda: fake.order)
    text = "".join(f"paragraph {i}: " + "内容 " * 300 + "\n\n" for i in range(60))
    await stream.finish(text, note="cost $1.00")
    cards = [latest(fake, mid) for mid in fake.order]
    assert len(cards) > 2
    assert all(card_size(c) <= CARD_MAX_BYTES for c in cards)
    assert "".join(body(c) for c in cards) == text
    n = len(cards)
    assert [c["header"]["title"]["content"] for c in cards] == [
        f"Claude ({i}/{n})" for i in range(1, n + 1)
    ]
    uuids = [d[3] for d in fake.ops("reply")]
    assert len(set(uuids)) == len(uuids)


async def test_final_patch_rejected_falls_back_to_new_card(
    fake: FakeReplier, time_: ManualTime
) -> None:
    stream = make_stream(fake, time_)
    await stream.update("a")
    await fake.wait_for(lambda: fake.order)
    fake.fail["patch"] = [FeishuApiError("card too old", status=400, code=230031)]
    await stream.finish("final")
    assert len(fake.order) == 2
    assert body(latest(fake, fake.order[1])) == "final"


async def test_final_patch_transient_failure_is_raised_not_duplicated(
    fake: FakeReplier, time_: ManualTime
) -> None:
    stream = make_stream(fake, time_)
    await stream.started()
    await stream.update("a")
    await fake.wait_for(lambda: fake.order)
    fake.fail["patch"] = [FeishuTransientError("503 after retries", status=503)]
    with pytest.raises(FeishuTransientError):
        await stream.finish("final")
    assert len(fake.order) == 1  # no second copy: the PATCH may have landed
    assert fake.reactions == {}


async def test_fail_shows_red_card_with_partial_text(fake: FakeReplier, time_: ManualTime) -> None:
    stream = make_stream(fake, time_)
    await stream.started()
    await stream.update("half an answer")
    await fake.wait_for(lambda: fake.order)
    await stream.fail("Claude timed out after 600 s.", partial_text="half an answer")
    card = latest(fake, fake.order[0])
    assert card["header"]["template"] == "red"
    assert body(card).startswith("half an answer")
    assert body(card).endswith("Claude timed out after 600 s.")
    assert fake.reactions == {}


async def test_aclose_without_final_stops_background_work(
    fake: FakeReplier, time_: ManualTime
) -> None:
    async with make_stream(fake, time_) as stream:
        await stream.started()
        await stream.update("a")
        await fake.wait_for(lambda: fake.order)
        await stream.update("b")
        await settle()
    await tick(time_, 10)
    await settle()
    assert fake.ops("patch") == []
    assert stream.closed


def block_text(card: dict[str, Any]) -> str:
    """The markdown of a Card JSON 2.0 block card."""
    return "".join(e.get("content", "") for e in card["body"]["elements"] if e["tag"] == "markdown")


ALLOW = Button("Allow once", {"action": "allow"}, "primary")


async def test_blocks_are_cards_of_their_own_sent_in_order_before_the_answer(
    fake: FakeReplier, time_: ManualTime
) -> None:
    stream = make_stream(fake, time_)
    fake.gate["reply"] = asyncio.Event()  # the first block card hangs in flight
    await asyncio.wait_for(stream.show_block(Block("r1", "**Bash** wants `ls`", (ALLOW,))), 0.5)
    await asyncio.wait_for(stream.resolve_block("r1", "❌ Denied"), 0.5)
    await asyncio.wait_for(stream.show_block(Block("r2", "Which colour?", (ALLOW,))), 0.5)
    await fake.wait_for(lambda: fake.ops("reply"))
    await settle()
    assert len(fake.ops("reply")) == 1 and fake.ops("patch") == []  # one at a time
    fake.gate["reply"].set()
    await stream.finish("no files listed")

    asked, answer = fake.order[0], fake.order[-1]
    assert [op for op, _ in fake.calls] == ["reply", "patch", "reply", "reply"]
    first, record = fake.cards[asked]
    assert first["header"]["title"]["content"] == BLOCK_TITLE
    assert find_button(first, "Allow once") is not None
    assert "❌ Denied" in block_text(record) and find_button(record, "Allow once") is None
    assert find_button(latest(fake, fake.order[1]), "Allow once") is not None
    assert body(latest(fake, answer)) == "no files listed"  # the answer comes last
    uuids = [detail[3] for detail in fake.ops("reply")]
    assert uuids[0].endswith("-r1") and uuids[1].endswith("-r2") and len(set(uuids)) == 3
    assert fake.max_in_flight == 1


async def test_a_block_settled_as_the_turn_ends_still_gets_its_record(
    fake: FakeReplier, time_: ManualTime
) -> None:
    """Stop settles a waiting approval while the turn's failure is delivered: the approval's
    card must not keep its buttons."""
    stream = make_stream(fake, time_)
    await stream.show_block(Block("r1", "**Bash** wants `ls`", (ALLOW,)))
    await stream.fail("Stopped.")
    await stream.resolve_block("r1", "⏹ Bash: stopped")
    [(mid, record)] = await fake.wait_for(lambda: fake.ops("patch"))
    assert mid == fake.order[0] and "stopped" in block_text(record)
    assert find_button(record, "Allow once") is None


def _text_delta_lines(count: int, piece: str) -> list[str]:
    """A stream-json run whose one text block arrives as `count` deltas of `piece`."""
    event = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
    event["delta"]["text"] = piece
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    return [
        json.dumps({"type": "stream_event", "event": {"type": "message_start", "message": {}}}),
        json.dumps({"type": "stream_event", "event": start}),
        *[json.dumps({"type": "stream_event", "event": event})] * count,
    ]


async def test_quadratic_streaming_cost_card(fake: FakeReplier, time_: ManualTime) -> None:
    """#11: streamed text is read only when a card is shown (at most once a second), never per
    delta; 8000 deltas cost a few reads of the answer, not 8000 copies of it."""
    parser = StreamParser()
    stream = make_stream(fake, time_)
    reads: list[int] = []  # the length of every text the stream read

    def lazily(event: ClaudeEvent) -> Callable[[], str]:
        def read() -> str:
            reads.append(len(event.text))
            return event.text

        return read

    lines = _text_delta_lines(8000, "ab")
    for i, line in enumerate(lines):
        for event in parser.feed(line):
            if event.kind == "text":
                await stream.update(lazily(event))
        if i == len(lines) // 2:
            await fake.wait_for(lambda: fake.order)  # the card is created half way
    await tick(time_, 1.0)
    await fake.wait_for(lambda: fake.ops("patch"))
    await settle()
    [(_, card)] = fake.ops("patch")
    assert body(card) == parser.text == "ab" * 8000
    assert len(reads) <= 3  # the create, the PATCH, at most one check
    await stream.finish(parser.text)
    assert len(reads) <= 3


# -- against the simulator ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def real_replier(sim: Any, **kw: Any) -> AsyncIterator[FeishuReplier]:
    async with FeishuReplier(
        app_id="cli_sim_app",
        app_secret="sim_secret_0123456789",
        domain=sim.base_url,
        timeout=5.0,
        **kw,
    ) as replier:
        yield replier


def card_requests(sim: Any, method: str) -> list[Any]:
    return [
        r
        for r in sim.requests
        if r.method == method and re.search(r"/im/v1/messages(/[^/]+(/reply)?)?$", r.path)
    ]


async def test_sim_rapid_streaming_then_complete_final(sim: Any) -> None:
    user = await sim.push_message(text="question")
    async with real_replier(sim) as replier:
        stream = PatchStream(replier, user, in_thread=False, min_interval=1.0)
        await stream.started()
        text = ""
        for i in range(50):  # ~0.25 s of streaming: well within one interval
            text += f"token{i} "
            await stream.update(text)
            await asyncio.sleep(0.005)
        final = text + "\n\n**Done.**"
        await stream.finish(final, note="cost $0.01 · 3 turns")
    assert len(card_requests(sim, "PATCH")) <= 2
    [card] = sim.replies_to(user)
    assert card.msg_type == "interactive"
    assert card.content["elements"][0]["content"] == final
    assert card.content["header"]["template"] == "green"
    assert sim.message_text(card).endswith("cost $0.01 · 3 turns")
    assert card.content["config"]["update_multi"] is True


async def test_sim_long_answer_becomes_ordered_cards(sim: Any) -> None:
    user = await sim.push_message(text="write a lot", chat_type="group", mention_bot=True)
    text = "".join(
        f"## Part {i}\n\n"
        + '长文本 with `code` and "quotes". ' * 80
        + "\n\n"
        + ("```python\n" + "print('x')\n" * 200 + "```\n\n" if i % 5 == 0 else "")
        for i in range(40)
    )
    async with real_replier(sim) as replier:
        stream = PatchStream(replier, user, in_thread=True, min_interval=0.05)
        await stream.started()
        await stream.update(text[:500])
        await sim.wait_for(lambda: sim.replies_to(user))
        await stream.finish(text)
    cards = sim.replies_to(user)
    assert len(cards) > 3
    assert all(c.reply_in_thread for c in cards)
    n = len(cards)
    assert [c.content["header"]["title"]["content"] for c in cards] == [
        f"Claude ({i}/{n})" for i in range(1, n + 1)
    ]
    assert "".join(c.content["elements"][0]["content"] for c in cards) == text
    assert cards[0].updated  # the live card became part 1


async def test_sim_reaction_added_then_removed(sim: Any) -> None:
    user = await sim.push_message(text="hi")
    async with real_replier(sim) as replier:
        stream = PatchStream(replier, user, in_thread=False)
        await stream.started()
        [reaction] = await sim.wait_for(lambda: sim.live_reactions(user))
        assert reaction.emoji_type == DEFAULT_REACTION
        await stream.finish("hello")
    assert sim.live_reactions(user) == []
    assert [r.removed_at is not None for r in sim.reactions] == [True]


async def test_sim_fail_turns_card_red(sim: Any) -> None:
    user = await sim.push_message(text="hi")
    async with real_replier(sim) as replier:
        stream = PatchStream(replier, user, in_thread=False, min_interval=0.01)
        await stream.started()
        await stream.update("partial answer")
        await sim.wait_for(lambda: sim.replies_to(user))
        await stream.fail("Claude stopped: timeout after 600 s", partial_text="partial answer")
    [card] = sim.replies_to(user)
    assert card.content["header"]["template"] == "red"
    assert "timeout after 600 s" in card.content["elements"][0]["content"]
    assert sim.live_reactions(user) == []


async def test_sim_rate_limited_chat_still_gets_every_card(sim: Any) -> None:
    sim_mod = pytest.importorskip("feishu_bot.simulator")
    async with sim_mod.FeishuSimulator(rate_limits=True) as limited:
        user = await limited.push_message(text="long please")
        text = "".join(f"para {i} " + "词" * 9000 + "\n\n" for i in range(8))
        # Pacing off: this pins the 429 retry path (with pacing the limit is not reached).
        async with real_replier(
            limited, backoff_initial=0.05, backoff_max=0.5, pacer=Pacer.off()
        ) as replier:
            stream = PatchStream(replier, user, in_thread=False)
            await stream.finish(text)
        cards = limited.replies_to(user)
        assert "".join(c.content["elements"][0]["content"] for c in cards) == text
        assert any(r.code == 230020 for r in limited.requests)  # the limit was hit
