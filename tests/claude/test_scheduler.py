"""The scheduler alone: numbers, no processes (cap incl. idle units, FIFO, LRU eviction)."""

from __future__ import annotations

import asyncio
import random

import pytest

from feishu_bot.claude.scheduler import Scheduler, Ticket
from feishu_bot.errors import QueueFull


class Closer:
    """An idle unit's close callback that records the call and finishes when told."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.log.append(self.name)
        await self.release.wait()


def live(s: Scheduler) -> int:
    st = s.stats()
    return st.running + st.idle + st.closing


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_grants_up_to_the_cap_then_fifo() -> None:
    s = Scheduler(2, 10)
    a, b, c, d = (s.reserve(k) for k in "abcd")
    assert (a.granted, b.granted, c.granted, d.granted) == (True, True, False, False)
    assert [s.queue_position(k) for k in "abcd"] == [None, None, 1, 2]
    s.release(b)
    assert c.granted and not d.granted
    s.release(a)
    assert d.granted
    assert s.stats().queued == 0


async def test_wait_reports_positions_and_cancellation_leaves_the_queue() -> None:
    s = Scheduler(1, 10)
    holder = s.reserve("h")
    t1, t2 = s.reserve("x"), s.reserve("y")
    seen: dict[str, list[int]] = {"x": [], "y": []}

    async def wait(t: Ticket, name: str) -> None:
        async def on_position(p: int) -> None:
            seen[name].append(p)

        await s.wait(t, on_position)

    w1 = asyncio.create_task(wait(t1, "x"))
    w2 = asyncio.create_task(wait(t2, "y"))
    await settle()
    assert seen == {"x": [1], "y": [2]}
    w1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w1
    await settle()
    assert seen["y"] == [2, 1]
    s.release(holder)
    await w2
    assert t2.granted and s.stats().queued == 0


async def test_one_turn_per_conversation_in_arrival_order() -> None:
    s = Scheduler(5, 10)
    a1, a2, b1, a3 = s.reserve("a"), s.reserve("a"), s.reserve("b"), s.reserve("a")
    assert a1.granted and b1.granted and not a2.granted and not a3.granted
    s.release(a1)
    assert a2.granted and not a3.granted
    s.release(a2)
    assert a3.granted


async def test_idle_unit_is_reused_by_its_conversation() -> None:
    s = Scheduler(1, 10)
    log: list[str] = []
    a = s.reserve("a")
    s.release(a, idle_close=Closer("a", log))
    assert s.stats().idle == 1 and s.is_idle("a")
    again = s.reserve("a")
    assert again.granted and again.reused
    assert log == [] and s.stats().evictions == 0
    assert live(s) == 1


async def test_lru_idle_unit_is_evicted_and_the_slot_waits_for_the_reap() -> None:
    s = Scheduler(2, 10)
    log: list[str] = []
    closers = {k: Closer(k, log) for k in "ab"}
    for k in "ab":
        t = s.reserve(k)
        s.release(t, idle_close=closers[k])
    touched = s.reserve("a")  # a is used again: b is now the least recently used idle unit
    assert touched.reused
    s.release(touched, idle_close=closers["a"])
    c = s.reserve("c")
    await settle()
    assert log == ["b"]
    assert not c.granted  # not before b is reaped: the cap counts the closing unit
    assert (s.stats().closing, live(s)) == (1, 2)
    closers["b"].release.set()
    await settle()
    assert c.granted and s.stats().evictions == 1 and live(s) == 2
    assert s.is_idle("a")


async def test_running_units_are_never_evicted() -> None:
    s = Scheduler(2, 10)
    log: list[str] = []
    a, b = s.reserve("a"), s.reserve("b")
    c = s.reserve("c")
    await settle()
    assert not c.granted and log == [] and s.stats().evictions == 0
    s.release(a, idle_close=Closer("a", log))  # a idles while c waits: evicted for c
    await settle()
    assert log == ["a"] and not b.released


async def test_per_user_limit_skips_to_other_users() -> None:
    s = Scheduler(5, 10, per_user_max=1)
    a1 = s.reserve("a1", "ou_a")
    a2 = s.reserve("a2", "ou_a")
    b1 = s.reserve("b1", "ou_b")
    assert a1.granted and not a2.granted and b1.granted
    s.release(a1)
    assert a2.granted


async def test_queue_limits() -> None:
    s = Scheduler(1, 3, per_conversation_max=2)
    s.reserve("x")  # running
    s.reserve("x")
    s.reserve("x")
    with pytest.raises(QueueFull):
        s.reserve("x")  # a third waiting turn of one conversation
    s.reserve("y")
    with pytest.raises(QueueFull):
        s.reserve("z")  # the global queue holds 3
    assert s.stats().queued == 3


async def test_a_refused_turn_evicts_nothing() -> None:
    """Regression (safe controls #7): an idle process was evicted for a message that the
    queue limits then refused."""
    s = Scheduler(2, 1)
    log: list[str] = []
    idle = s.reserve("idle")
    s.release(idle, idle_close=Closer("idle", log))
    s.reserve("busy")  # running: the cap is reached (busy + idle)
    s.reserve("w1")  # waits (and takes the idle unit's slot by eviction)
    await settle()
    assert log == ["idle"] and s.stats().evictions == 1
    s2 = Scheduler(2, 0)
    log2: list[str] = []
    idle2 = s2.reserve("idle")
    s2.release(idle2, idle_close=Closer("idle", log2))
    s2.reserve("busy")
    with pytest.raises(QueueFull):
        s2.reserve("refused")  # the queue holds nothing: refused before any eviction
    await settle()
    assert log2 == [] and s2.stats().evictions == 0 and s2.is_idle("idle")


async def test_user_queue_limit_counts_one_users_waiting_turns_everywhere() -> None:
    s = Scheduler(1, 20, user_queue_max=2)
    s.reserve("h", "ou_other")
    s.reserve("t1", "ou_a")
    s.reserve("t2", "ou_a")
    with pytest.raises(QueueFull) as info:
        s.reserve("t3", "ou_a")  # a third waiting turn of ou_a, in another conversation
    assert info.value.user_waiting == 2
    s.reserve("t4", "ou_b")  # another user is not affected
    assert s.stats().queued == 3


async def test_waiting_turns_are_served_round_robin_across_users() -> None:
    """Regression (safe controls #5): 5 topics x 5 turns of one user delayed everyone."""
    s = Scheduler(1, 50)
    holder = s.reserve("h", "ou_x")
    hog = [s.reserve(f"topic{n}", "ou_hog") for n in range(5) for _ in range(2)]
    late = s.reserve("mine", "ou_late")
    assert s.queue_position("mine") == 2  # after the hog's first turn, not its tenth
    s.release(holder)
    granted = [t for t in [*hog, late] if t.granted]
    assert len(granted) == 1 and granted[0].user == "ou_hog"
    assert s.queue_position("mine") == 1
    s.release(granted[0])
    assert late.granted


async def test_round_robin_keeps_a_conversations_own_order() -> None:
    s = Scheduler(1, 50)
    holder = s.reserve("h", "ou_x")
    first = s.reserve("group", "ou_a")
    s.reserve("other", "ou_a")
    second = s.reserve("group", "ou_b")  # ou_b's first turn, but behind ou_a's in its group
    s.release(holder)
    assert first.granted and not second.granted
    s.release(first)
    assert second.granted


async def test_idle_unit_that_died_frees_its_slot_and_taken_units_count_until_closed() -> None:
    s = Scheduler(1, 10)
    log: list[str] = []
    t = s.reserve("a")
    s.release(t, idle_close=Closer("a", log))
    s.idle_died("a")
    assert live(s) == 0
    t = s.reserve("b")
    s.release(t, idle_close=Closer("b", log))
    assert s.take_idle("b") is not None
    c = s.reserve("c")
    assert not c.granted and live(s) == 1  # b is being closed by its owner
    s.closed()
    assert c.granted


async def test_live_units_never_exceed_the_cap_under_random_churn() -> None:
    rng = random.Random(8)
    cap = 3
    s = Scheduler(cap, 100, per_user_max=2)
    log: list[str] = []
    closers: list[Closer] = []
    held: list[Ticket] = []
    for step in range(600):
        op = rng.random()
        if op < 0.45:
            key = f"k{rng.randrange(8)}"
            try:
                t = s.reserve(key, f"u{rng.randrange(3)}")
            except QueueFull:
                continue
            held.append(t)
        elif op < 0.8:
            granted = [t for t in held if t.granted and not t.released]
            if granted:
                t = rng.choice(granted)
                if rng.random() < 0.7:
                    closer = Closer(t.key, log)
                    closers.append(closer)
                    s.release(t, idle_close=closer)
                else:
                    s.release(t)
        elif op < 0.9:
            for closer in closers:
                closer.release.set()
        else:
            key = f"k{rng.randrange(8)}"
            if s.take_idle(key) is not None:
                s.closed()
        await asyncio.sleep(0)
        assert live(s) <= cap, f"step {step}: {s.stats()}"
        running_keys = [t.key for t in held if t.granted and not t.released]
        assert len(running_keys) == len(set(running_keys))  # one turn per conversation
    for closer in closers:
        closer.release.set()
    await s.aclose()
    assert s.stats().evictions > 0
