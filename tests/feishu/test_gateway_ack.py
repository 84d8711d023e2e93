"""The answer-on-ack contract: an async `on_event` decides when and how an event is acked.

Real lark_oapi client against the simulator; every wait is on an event or a record.
Issue 12 #9: an event used to be acked as soon as it was handed to the app loop, so a crash
before it was journaled lost a message Feishu would never resend.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from feishu_bot.feishu.gateway import CARD_ACTION_TRIGGER, MESSAGE_RECEIVE, FeishuGateway
from feishu_bot.simulator import FeishuSimulator

pytestmark = pytest.mark.timeout(120)

CARD_EVENT = {
    "operator": {
        "tenant_key": "sim_tenant",
        "open_id": "ou_clicker",
        "union_id": "on_clicker",
        "user_id": "u_clicker",
    },
    "token": "c-0123456789",
    "action": {"tag": "button", "value": {"op": "stop", "turn": 7, "sig": "abc"}},
    "host": "im_message",
    "context": {"open_message_id": "om_card_1", "open_chat_id": "oc_chat_1"},
}


@pytest.fixture
async def gateways() -> AsyncIterator[list[FeishuGateway]]:
    started: list[FeishuGateway] = []
    yield started
    for gw in started:
        await gw.stop()


async def start(
    sim: FeishuSimulator, gateways: list[FeishuGateway], on_event: Any, **kw: Any
) -> FeishuGateway:
    gw = FeishuGateway(
        app_id=sim.options.app_id,
        app_secret=sim.options.app_secret,
        domain=sim.base_url,
        on_event=on_event,
        log_level="CRITICAL",
        **kw,
    )
    gateways.append(gw)
    await gw.start(timeout=60)
    return gw


async def test_acked_message_lost_before_journal(sim, gateways):
    """The ack leaves only after the async handler returned (i.e. after it journaled)."""
    entered = asyncio.Event()
    journaled = asyncio.Event()
    seen: list[str] = []

    async def handle(envelope: dict[str, Any]) -> None:
        seen.append(envelope["event"]["message"]["message_id"])
        entered.set()
        await journaled.wait()  # the store's lock is busy; nothing is durable yet

    await start(sim, gateways, handle)
    message_id = await sim.push_message(text="keep me")
    async with asyncio.timeout(15):
        await entered.wait()
    # The SDK thread is waiting for the handler: no ack can have left yet.
    assert [a for a in sim.acks] == []
    journaled.set()
    ack = await sim.wait_ack(message_id)
    assert ack.code == 200
    assert seen == [message_id]


async def test_acked_although_handler_failed(sim, gateways):
    """A handler that raises gets a 500 ack, so Feishu delivers the event again."""
    calls = 0

    async def handle(envelope: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database is locked")

    await start(sim, gateways, handle)
    message_id = await sim.push_message(text="try twice")
    ack = await sim.wait_ack(message_id)
    assert ack.code == 500
    await sim.redeliver(sim.user_messages[message_id].event_id)
    ack = await sim.wait_ack(message_id)
    assert ack.code == 200
    assert calls == 2


async def test_acked_although_handler_too_slow(sim, gateways):
    """Past the deadline the ack says 500; the late handler is left to finish, not cancelled."""
    release = asyncio.Event()
    finished = asyncio.Event()

    async def handle(envelope: dict[str, Any]) -> None:
        await release.wait()
        finished.set()

    await start(sim, gateways, handle, ack_deadline=0.3)
    message_id = await sim.push_message(text="slow")
    ack = await sim.wait_ack(message_id)
    assert ack.code == 500
    release.set()
    async with asyncio.timeout(5):
        await finished.wait()


async def test_card_callback_answer_lost(sim, gateways):
    """A card callback's return value rides on its ack as the response Feishu shows."""
    got: list[dict[str, Any]] = []

    async def handle(envelope: dict[str, Any]) -> dict[str, Any] | None:
        got.append(envelope)
        if envelope["header"]["event_type"] == CARD_ACTION_TRIGGER:
            return {"toast": {"type": "info", "content": "Stopping…"}}
        return None

    await start(sim, gateways, handle)
    event_id = await sim.push_event(CARD_ACTION_TRIGGER, CARD_EVENT)
    ack = await sim.wait_ack(event_id)
    assert ack.code == 200
    assert ack.data == {"toast": {"type": "info", "content": "Stopping…"}}
    [envelope] = got
    assert envelope["header"]["event_id"] == event_id
    event = envelope["event"]
    assert event["operator"]["open_id"] == "ou_clicker"
    assert event["action"]["value"] == {"op": "stop", "turn": 7, "sig": "abc"}
    assert event["context"]["open_message_id"] == "om_card_1"
    # A message event goes to the same handler and is acked without data.
    message_id = await sim.push_message(text="hello")
    ack = await sim.wait_ack(message_id)
    assert ack.code == 200 and ack.data is None
    assert got[-1]["header"]["event_type"] == MESSAGE_RECEIVE


async def test_card_callback_acked_when_not_forwarded(sim, gateways):
    async def handle(envelope: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("not forwarded")

    await start(sim, gateways, handle, forward_event_types=(MESSAGE_RECEIVE,))
    event_id = await sim.push_event(CARD_ACTION_TRIGGER, CARD_EVENT)
    ack = await sim.wait_ack(event_id)
    assert ack.code == 200 and ack.data is None


async def test_events_handed_over_in_order_one_at_a_time(sim, gateways):
    active = 0
    order: list[str] = []

    async def handle(envelope: dict[str, Any]) -> None:
        nonlocal active
        active += 1
        assert active == 1
        await asyncio.sleep(0)
        order.append(envelope["event"]["message"]["message_id"])
        active -= 1

    gw = await start(sim, gateways, handle)
    ids = [await sim.push_message(text=f"m{i}") for i in range(20)]
    await sim.wait_for(lambda: len(sim.acks) == 20)
    assert order == ids
    assert all(a.code == 200 for a in sim.acks)
    assert gw.events_received == 20


async def test_async_callable_object_is_awaited(sim, gateways):
    class Handler:
        def __init__(self) -> None:
            self.thread: str | None = None

        async def __call__(self, envelope: dict[str, Any]) -> dict[str, Any]:
            self.thread = threading.current_thread().name
            return {"toast": {"type": "success", "content": "ok"}}

    handler = Handler()
    await start(sim, gateways, handler)
    event_id = await sim.push_event(CARD_ACTION_TRIGGER, CARD_EVENT)
    ack = await sim.wait_ack(event_id)
    assert ack.data == {"toast": {"type": "success", "content": "ok"}}
    assert handler.thread == threading.main_thread().name  # ran on the app loop
