"""Fixtures for the simulator tests: a simulator, a REST session, and the real SDK client
(through FeishuGateway) connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from feishu_bot.feishu.gateway import FeishuGateway
from feishu_bot.simulator import FeishuSimulator
from tests.fakes.event_sink import EventSink

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def token(sim: FeishuSimulator, http: aiohttp.ClientSession) -> str:
    async with http.post(
        sim.base_url + TOKEN_PATH,
        json={"app_id": sim.options.app_id, "app_secret": sim.options.app_secret},
    ) as resp:
        body = await resp.json()
    return body["tenant_access_token"]


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[tuple[FeishuGateway, EventSink]]]]:
    """Start a FeishuGateway (the real lark_oapi ws client) against a simulator."""
    gateways: list[FeishuGateway] = []

    async def _connect(sim: FeishuSimulator, **kw: Any) -> tuple[FeishuGateway, EventSink]:
        sink = EventSink()
        gw = FeishuGateway(
            app_id=sim.options.app_id,
            app_secret=sim.options.app_secret,
            domain=sim.base_url,
            on_event=sink,
            log_level="WARNING",
            **kw,
        )
        gateways.append(gw)
        await gw.start(timeout=60)
        return gw, sink

    yield _connect
    for gw in gateways:
        await gw.stop()
