"""TurnRegistry's shutdown helpers: which turns are kept queued, which get the grace."""

from __future__ import annotations

import asyncio

from feishu_bot.turns import TurnHandle, TurnRegistry


async def _hold(reg: TurnRegistry, handle: TurnHandle, cancelled: list[str]) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(f"{handle.message_id}:{handle.cancel_reason}")
        await asyncio.sleep(0.05)  # the user is being told; a second cancel would cut it short
        cancelled.append(f"{handle.message_id}:told")
    finally:
        await reg.finish(handle)


async def test_cancel_waiting_spares_running_turns_and_cancel_all_does_not_cancel_twice() -> None:
    reg = TurnRegistry()
    cancelled: list[str] = []
    running = reg.admit("p2p:a", "running")
    behind = reg.admit("p2p:a", "behind")
    other = reg.admit("p2p:b", "other")
    for handle in (running, behind, other):
        reg.start(handle, _hold(reg, handle, cancelled))
    await asyncio.sleep(0)
    running.running = True
    assert reg.running_turns == 1

    assert reg.cancel_waiting("shutdown") == 2
    assert reg.cancel_waiting("shutdown") == 0
    await asyncio.sleep(0)
    assert sorted(cancelled) == ["behind:shutdown", "other:shutdown"]
    assert not running.task.done()

    # Grace over: only the running turn is cancelled now; the others finish their replies.
    assert reg.cancel_all("shutdown") == 1
    assert await reg.wait_idle(5)
    assert sorted(cancelled) == [
        "behind:shutdown",
        "behind:told",
        "other:shutdown",
        "other:told",
        "running:shutdown",
        "running:told",
    ]
    assert reg.active_turns == 0
    await reg.aclose()


async def test_cancel_waiting_leaves_a_turn_being_stopped_alone() -> None:
    reg = TurnRegistry()
    cancelled: list[str] = []
    handle = reg.admit("p2p:a", "m1")
    reg.start(handle, _hold(reg, handle, cancelled))
    await asyncio.sleep(0)
    assert reg.cancel_conversation("p2p:a", "stop") == 1
    assert reg.cancel_waiting("shutdown") == 0
    assert reg.cancel_all("shutdown") == 0
    assert await reg.wait_idle(5)
    assert cancelled == ["m1:stop", "m1:told"]
    await reg.aclose()
