"""TurnRegistry: who owns which turn task, and cancelling them without cutting a cancel short."""

from __future__ import annotations

import asyncio

from feishu_bot.turns import TurnHandle, TurnRegistry


async def test_registry_cancel_conversation_only_touches_that_conversation() -> None:
    reg = TurnRegistry()
    started = asyncio.Event()

    async def body(handle: TurnHandle) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            await reg.finish(handle)

    h1 = reg.admit("p2p:a", "m1")
    h2 = reg.admit("p2p:a", "m2")
    h3 = reg.admit("p2p:b", "m3")
    for h in (h1, h2, h3):
        reg.start(h, body(h))
    await started.wait()
    assert reg.active_turns == 3
    assert reg.cancel_conversation("p2p:a", reason="stop") == 2
    await asyncio.gather(h1.task, h2.task, return_exceptions=True)
    assert h1.cancel_reason == "stop" and h2.cancel_reason == "stop"
    assert h1.task.cancelled() and h2.task.cancelled()
    assert not h3.task.done() and h3.cancel_reason is None
    assert reg.handles("p2p:a") == []
    assert reg.handles("p2p:b") == [h3]
    await reg.aclose()
    assert h3.task.cancelled()


async def test_two_stops_leave_a_turn_being_cancelled_alone() -> None:
    """Hardening #4: a second /stop while the first one's journal write and reply are still
    running must not cancel that cleanup (CancelledError is no Exception: it would skip the
    journal update and leave the row queued, to run again after a restart)."""
    reg = TurnRegistry()
    in_cleanup = asyncio.Event()
    release_cleanup = asyncio.Event()
    journal: list[str] = []

    async def body(handle: TurnHandle) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            in_cleanup.set()
            await release_cleanup.wait()  # e.g. the failure reply and the journal write
            journal.append(f"{handle.message_id}: {handle.cancel_reason}")
            raise
        finally:
            await reg.finish(handle)

    handle = reg.admit("p2p:a", "m1")
    reg.start(handle, body(handle))
    await asyncio.sleep(0)  # let the body start
    assert reg.cancel_conversation("p2p:a", reason="stop") == 1
    await in_cleanup.wait()
    # the second /stop, and a shutdown's cancel_all, find it already being cancelled
    assert reg.cancel_conversation("p2p:a", reason="stop again") == 0
    assert reg.cancel_all("shutdown") == 0
    assert reg.cancel_waiting("shutdown") == 0
    release_cleanup.set()
    await asyncio.gather(handle.task, return_exceptions=True)
    assert journal == ["m1: stop"]
    assert handle.task.cancelled()
    assert reg.active_turns == 0


async def test_stop_cancels_waiting_turns_behind_a_turn_being_cancelled() -> None:
    """Skipping the one being cancelled does not skip the turns queued behind it."""
    reg = TurnRegistry()
    release_cleanup = asyncio.Event()
    in_cleanup = asyncio.Event()

    async def slow_cancel(handle: TurnHandle) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            in_cleanup.set()
            await release_cleanup.wait()
            raise
        finally:
            await reg.finish(handle)

    async def waiter(handle: TurnHandle) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await reg.finish(handle)

    first = reg.admit("p2p:a", "m1")
    reg.start(first, slow_cancel(first))
    await asyncio.sleep(0)
    assert reg.cancel_conversation("p2p:a", reason="stop") == 1
    await in_cleanup.wait()
    second = reg.admit("p2p:a", "m2")  # arrived after the first /stop
    reg.start(second, waiter(second))
    await asyncio.sleep(0)
    assert reg.cancel_conversation("p2p:a", reason="stop") == 1
    await asyncio.gather(second.task, return_exceptions=True)
    assert second.task.cancelled() and not first.task.done()
    release_cleanup.set()
    await asyncio.gather(first.task, return_exceptions=True)
    assert reg.handles("p2p:a") == []


async def test_cancel_waiting_spares_running_turns() -> None:
    reg = TurnRegistry()

    async def body(handle: TurnHandle) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await reg.finish(handle)

    running = reg.admit("p2p:a", "m1")
    waiting = reg.admit("p2p:a", "m2")
    for h in (running, waiting):
        reg.start(h, body(h))
    await asyncio.sleep(0)
    running.running = True
    assert reg.running_turns == 1
    assert reg.cancel_waiting("shutdown") == 1
    await asyncio.gather(waiting.task, return_exceptions=True)
    assert waiting.task.cancelled() and not running.task.done()
    assert await reg.wait_idle(0.05) is False
    await reg.aclose()
    assert running.task.cancelled()
    assert await reg.wait_idle(0) is True
