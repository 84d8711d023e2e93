"""FeishuGateway: the real lark_oapi ws client against the Feishu simulator.

Every wait is on an event (simulator records, the sink of delivered envelopes), never a
sleep. The first gateway started in the process pays for loading lark_oapi (~0.3-0.5 s).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from loguru import logger

from feishu_bot.feishu.gateway import FeishuGateway, GatewayError
from feishu_bot.simulator import FeishuSimulator
from tests.fakes.event_sink import EventSink

pytestmark = pytest.mark.timeout(120)


def gateway_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("feishu-gateway")]


@pytest.fixture
async def started() -> AsyncIterator[list[FeishuGateway]]:
    """Gateways to stop at teardown, whatever the test did."""
    gateways: list[FeishuGateway] = []
    yield gateways
    for gw in gateways:
        await gw.stop()


async def start_gateway(
    sim: FeishuSimulator, started: list[FeishuGateway], on_event=None, **kw: Any
) -> tuple[FeishuGateway, EventSink]:
    sink = EventSink()
    gw = FeishuGateway(
        app_id=sim.options.app_id,
        app_secret=kw.pop("app_secret", sim.options.app_secret),
        domain=sim.base_url,
        on_event=on_event or sink,
        log_level="WARNING",
        **kw,
    )
    started.append(gw)
    await gw.start(timeout=60)
    return gw, sink


async def test_acks_return_while_the_consumer_is_still_busy(sim, started):
    """The handler only hands over: acks do not wait for what the app does with events."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    release = asyncio.Event()
    all_handled = asyncio.Event()
    handled: list[str] = []

    async def slow_consumer() -> None:
        while True:
            envelope = await queue.get()
            await release.wait()  # a Claude turn that has not finished yet
            handled.append(envelope["event"]["message"]["message_id"])
            if len(handled) == 5:
                all_handled.set()

    consumer = asyncio.create_task(slow_consumer())
    try:
        await start_gateway(sim, started, on_event=queue.put_nowait)
        ids = [await sim.push_message(text=f"turn {i}") for i in range(5)]
        acks = [await sim.wait_ack(message_id) for message_id in ids]
        assert handled == []  # every ack came back before the consumer finished anything
        assert all(ack.code == 200 for ack in acks)
        assert max(ack.latency_s for ack in acks) < 1.0
        release.set()
        async with asyncio.timeout(10):
            await all_handled.wait()
        assert handled == ids
    finally:
        consumer.cancel()


async def test_hundred_events_each_delivered_once_and_acked(sim, started):
    gw, sink = await start_gateway(sim, started)
    ids = [await sim.push_message(text=f"message {i}") for i in range(100)]
    events = await sink.wait(100)
    await sim.wait_for(lambda: len(sim.acks) == 100)
    delivered = [e["event"]["message"]["message_id"] for e in events]
    assert delivered == ids  # once each, in order
    assert gw.events_received == 100
    assert all(a.code == 200 for a in sim.acks)
    latencies = sorted(a.latency_s for a in sim.acks)
    print(
        f"\nack latency over 100 events: median {statistics.median(latencies) * 1000:.2f} ms, "
        f"p95 {latencies[94] * 1000:.2f} ms, max {latencies[-1] * 1000:.2f} ms"
    )
    assert latencies[-1] < 2.0


async def test_dropped_connection_reconnects_and_next_event_arrives(sim, started):
    gw, sink = await start_gateway(sim, started)
    assert gw.connected and gw.reconnects == 0
    await sim.drop_connections()
    message_id = await sim.push_message(text="after the cut")
    [envelope] = await sink.wait(1)
    assert envelope["event"]["message"]["message_id"] == message_id
    assert gw.reconnects == 1
    assert gw.connected
    assert gw.rebuilds == 0  # the SDK reconnected by itself
    assert sim.total_connections == 2


async def test_sdk_retrying_by_itself_is_left_alone(started):
    async with FeishuSimulator(reconnect_interval=0.2) as sim:
        gw, sink = await start_gateway(sim, started)
        rule = sim.fail_next("POST", "^/callback/ws/endpoint$", status=500, count=3)
        await sim.drop_connections()
        await sim.push_message(text="after three failed attempts")
        await sink.wait(1)
        assert rule.hits == 3
        assert gw.reconnects == 1
        assert gw.rebuilds == 0
        await gw.stop()


async def test_sdk_giving_up_is_rebuilt(started):
    # ReconnectCount 0: after a drop the SDK's reconnect loop raises at once
    # (ServerUnreachableException) and would leave a dead client behind.
    async with FeishuSimulator(reconnect_count=0) as sim:
        gw, sink = await start_gateway(sim, started)
        await sim.drop_connections()
        await sim.push_message(text="after the rebuild")
        await sink.wait(1)
        assert gw.rebuilds == 1
        assert gw.reconnects == 1
        assert len(gateway_threads()) == 1
        await gw.stop()


async def test_stalled_connection_is_rebuilt(started):
    async with FeishuSimulator(ping_interval=1) as sim:
        gw, sink = await start_gateway(sim, started)
        await sim.wait_for(lambda: sim.connection_log[0].pongs >= 1)
        await sim.stall_connections()  # open, but silent: no pongs, no events
        stalled_at = time.monotonic()
        message_id = await sim.push_message(text="waits for a healthy connection")
        [envelope] = await sink.wait(1, timeout=30)
        recovered_in = time.monotonic() - stalled_at
        assert envelope["event"]["message"]["message_id"] == message_id
        assert gw.rebuilds == 1
        assert gw.reconnects == 1
        assert sim.connection_log[0].closed_at is not None  # the stuck socket was closed
        assert 2.5 < recovered_in < 20  # 3 x ping interval, not earlier
        await gw.stop()


async def test_stop_leaves_no_thread_and_no_reconnect(sim, started):
    gw, _ = await start_gateway(sim, started)
    assert len(gateway_threads()) == 1
    await gw.stop()
    assert gateway_threads() == []  # nothing left that could reconnect
    assert not gw.connected
    await sim.wait_for(lambda: sim.connections == 0)
    assert sim.total_connections == 1
    await gw.stop()  # idempotent


async def test_bad_secret_fails_start_fast_with_a_clear_error(sim, started):
    await start_gateway(sim, started)  # the lark_oapi import is paid here, not below
    began = time.monotonic()
    with pytest.raises(GatewayError) as info:
        await start_gateway(sim, started, app_secret="wrong")
    assert time.monotonic() - began < 5
    assert info.value.code == 403
    assert "refused" in str(info.value)
    assert len(gateway_threads()) == 1  # only the first, good gateway


async def test_start_times_out_when_feishu_is_unreachable(started):
    sim = FeishuSimulator()
    await sim.start()
    base_url = sim.base_url
    await sim.stop()  # nothing listens there any more
    gw = FeishuGateway(
        app_id="cli_x",
        app_secret="s",
        domain=base_url,
        on_event=lambda e: None,
        log_level="CRITICAL",
    )
    started.append(gw)
    with pytest.raises(GatewayError, match="no Feishu long connection"):
        await gw.start(timeout=1)
    assert gateway_threads() == []


async def test_logs_never_carry_the_ticket_or_access_key(sim, started):
    lines: list[str] = []
    sink_id = logger.add(lines.append, level="DEBUG", format="{message}")
    try:
        gw, sink = await start_gateway(sim, started)
        await sim.drop_connections()
        await sim.push_message(text="x")
        await sink.wait(1)
        await gw.stop()
    finally:
        logger.remove(sink_id)
    text = "\n".join(lines)
    assert "connected" in text and "reconnected" in text and "stopped" in text
    assert "ticket" not in text and "access_key" not in text and "ws://" not in text
