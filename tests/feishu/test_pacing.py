"""Pacing of sends (issue 12, "sends are not paced"): the unit with a fake clock, then the
replier against the simulator with Feishu's rate limits switched on."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

from feishu_bot.feishu.pacing import Pacer
from feishu_bot.feishu.render import card_for
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator import FeishuSimulator

pytestmark = pytest.mark.timeout(60)


class FakeTime:
    """A clock that only moves when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def approx(values: list[float]) -> list[float]:
    return [round(v, 6) for v in values]


async def departures(pacer: Pacer, t: FakeTime, keys: list[str]) -> list[tuple[str, float]]:
    """Start one call per key at once; the (key, fake time) each one left at."""
    out: list[tuple[str, float]] = []

    async def call(key: str) -> None:
        await pacer.wait(key)
        out.append((key, t.now))

    await asyncio.gather(*(call(k) for k in keys))
    return out


async def test_one_key_is_spaced_at_the_rate_in_order() -> None:
    t = FakeTime()
    pacer = Pacer(5, clock=t, sleep=t.sleep)
    left = await departures(pacer, t, ["chat:a"] * 12)
    times = [at for _, at in left]
    assert approx([b - a for a, b in itertools.pairwise(times)]) == [0.2] * 11
    for start in times:
        assert sum(1 for x in times if start <= x < start + 1.0) <= 5
    assert pacer.waited == pytest.approx(2.2)


async def test_keys_are_independent() -> None:
    t = FakeTime()
    pacer = Pacer(5, clock=t, sleep=t.sleep)
    await pacer.wait("chat:a")
    assert await pacer.wait("chat:b") == 0.0  # another chat has its own budget
    assert await pacer.wait("chat:a") == pytest.approx(0.2)
    t.now += 10  # idle: no wait
    assert await pacer.wait("chat:a") == 0.0


async def test_a_late_wake_up_does_not_squeeze_calls_together() -> None:
    """The gap counts from the real departure: a busy loop that wakes a call late does not
    let the next one leave early."""
    t = FakeTime()
    late = iter([0.5, 0.0, 0.3, 0.0, 0.0])

    async def oversleep(seconds: float) -> None:
        await t.sleep(seconds + next(late, 0.0))

    pacer = Pacer(5, clock=t, sleep=oversleep)
    left = await departures(pacer, t, ["k"] * 6)
    times = [at for _, at in left]
    assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(times))


async def test_merge_keeps_the_later_schedule() -> None:
    t = FakeTime()
    pacer = Pacer(5, clock=t, sleep=t.sleep)
    await pacer.wait("msg:om_1")
    pacer.merge("msg:om_1", "chat:oc_1")  # om_1 turned out to be in oc_1
    assert await pacer.wait("chat:oc_1") == pytest.approx(0.2)
    pacer.merge("msg:unknown", "chat:oc_1")  # nothing to carry over
    assert await pacer.wait("chat:oc_1") == pytest.approx(0.2)


async def test_idle_keys_are_forgotten() -> None:
    t = FakeTime()
    pacer = Pacer(5, clock=t, sleep=t.sleep, max_keys=10)
    for n in range(10):
        await pacer.wait(f"k{n}")
    t.now += 1
    await pacer.wait("k-new")
    assert set(pacer._next) == {"k-new"}


async def test_off_never_waits() -> None:
    pacer = Pacer.off()
    assert [await pacer.wait("k") for _ in range(100)] == [0.0] * 100
    with pytest.raises(ValueError):
        Pacer(0)


async def test_sends_not_paced() -> None:
    """A long answer's cards go out back to back: with pacing, none hits the rate limit."""
    async with FeishuSimulator(rate_limits=True) as sim:
        user_msg = await sim.push_message(text="a long question")
        async with FeishuReplier(
            app_id=sim.options.app_id,
            app_secret=sim.options.app_secret,
            domain=sim.base_url,
            timeout=5.0,
        ) as replier:
            await replier.reply_text(user_msg, "card 0")
            ids = await asyncio.gather(
                *(replier.reply_text(user_msg, f"card {n}") for n in range(1, 9))
            )
            assert len(set(ids)) == 8
            # And a burst of updates to one card.
            card = await replier.reply_card(user_msg, card_for("working", state="working"))
            await asyncio.gather(
                *(replier.patch(card, card_for(f"update {n}", state="working")) for n in range(7))
            )
        replies = [r for r in sim.requests if r.method == "POST" and re.search(r"/reply$", r.path)]
        patches = [r for r in sim.requests if r.method == "PATCH"]
        assert [r.code for r in replies] == [0] * 10  # no 230020, no retry
        assert [r.code for r in patches] == [0] * 7
        for group in (replies, patches):
            times = [r.time for r in group]
            for start in times:
                assert sum(1 for x in times if start <= x < start + 1.0) <= 5
        assert [sim.message_text(m) for m in sim.replies_to(user_msg)][:9] == [
            f"card {n}" for n in range(9)
        ]
