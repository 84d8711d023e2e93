import asyncio

from feishu_bot.turns import TurnRegistry, Turnstile


async def test_turnstile_admits_in_issue_order_even_if_waiters_arrive_late() -> None:
    stile = Turnstile()
    tickets = [stile.ticket() for _ in range(4)]
    order: list[int] = []

    async def worker(t: int) -> None:
        await stile.wait(t)
        order.append(t)
        await stile.release(t)

    # start them in reverse: order must still follow the tickets
    await asyncio.gather(*(worker(t) for t in reversed(tickets)))
    assert order == tickets
    assert stile.idle


async def test_released_ticket_does_not_block_later_ones() -> None:
    stile = Turnstile()
    a, b, c = stile.ticket(), stile.ticket(), stile.ticket()
    await stile.release(b)  # b dropped (e.g. duplicate) before its turn
    assert stile.ahead_of(c) == 1
    await stile.wait(a)
    await stile.release(a)
    await asyncio.wait_for(stile.wait(c), timeout=5)
    await stile.release(c)
    assert stile.idle


async def test_registry_cancel_conversation_only_touches_that_conversation() -> None:
    reg = TurnRegistry()
    started = asyncio.Event()

    async def body(handle) -> None:
        try:
            await reg.wait_turn(handle)
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
    assert reg.position(h2) == 1
    assert reg.cancel_conversation("p2p:a", reason="stop") == 2
    await asyncio.gather(h1.task, h2.task, return_exceptions=True)
    assert h1.cancel_reason == "stop" and not h3.task.done()
    assert reg.handles("p2p:a") == []
    await reg.aclose()
    assert h3.task.cancelled()
