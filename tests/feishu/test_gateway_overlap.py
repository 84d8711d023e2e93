"""Issue 12 #13: an SDK thread that will not stop must never get a second session beside it.

The old behaviour: after 10 s the gateway left the stuck thread behind and started a new
session anyway, so two SDK clients shared lark_oapi's module-level loop.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import feishu_bot.feishu.gateway as gateway_module
from feishu_bot.feishu.gateway import FeishuGateway
from feishu_bot.simulator import FeishuSimulator

pytestmark = pytest.mark.timeout(120)


def gateway_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("feishu-gateway")]


async def test_two_sdk_sessions_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "RETIRE_TIMEOUT_S", 1.0, raising=False)
    wedge = threading.Event()
    async with FeishuSimulator(ping_interval=0.3) as sim:
        gw = FeishuGateway(
            app_id=sim.options.app_id,
            app_secret=sim.options.app_secret,
            domain=sim.base_url,
            on_event=lambda envelope: None,
            log_level="CRITICAL",
        )
        try:
            await gw.start(timeout=60)
            session = gw._session
            assert session is not None and session.loop is not None
            # The SDK thread blocks (as inside a blocking call in the SDK): no frames are read,
            # the connection looks stalled, and a stop request cannot get through.
            session.loop.call_soon_threadsafe(wedge.wait, 60)
            failed = asyncio.ensure_future(gw.wait_failed())
            second = asyncio.ensure_future(
                sim.wait_for(lambda: sim.total_connections >= 2, timeout=30)
            )
            done, _ = await asyncio.wait(
                {failed, second}, timeout=40, return_when=asyncio.FIRST_COMPLETED
            )
            second.cancel()
            assert failed in done, "the gateway neither failed nor stopped the second session"
            error = failed.result()
            assert "did not stop" in str(error)
            assert gw.failure is error
            assert not gw.connected
            assert sim.total_connections == 1  # no second session was started
            assert len(gateway_threads()) == 1
        finally:
            wedge.set()
            await gw.stop()
        # Once unstuck, the old thread winds down by itself (it was asked to stop).
        await asyncio.to_thread(lambda: [t.join(10) for t in gateway_threads()])
        assert gateway_threads() == []
