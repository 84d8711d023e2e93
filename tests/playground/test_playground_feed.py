"""The page feed holds a bounded backlog per page: a page that does not read is dropped.

Against the real page server and a real simulator (no bot), through real websockets. The
pages' token cookie comes the way a browser gets it: by opening the printed address.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from feishu_bot.playground.web import PlaygroundWeb
from feishu_bot.simulator import FeishuSimulator

PAGE_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


async def _health() -> dict[str, Any]:
    return {"healthy": True}


async def _start(**kw: Any) -> tuple[FeishuSimulator, PlaygroundWeb]:
    sim = await FeishuSimulator().start()
    web = PlaygroundWeb(sim, info={"offline": True}, health=_health, port=0, **kw)
    await web.start()
    return sim, web


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield http


async def _open(
    session: aiohttp.ClientSession, web: PlaygroundWeb
) -> aiohttp.ClientWebSocketResponse:
    """Open the page (token → cookie), then its feed; returns once the page is registered
    (its hello, snapshot and health come out of its queue only after registration)."""
    async with session.get(web.url) as resp:
        assert resp.status == 200, await resp.text()
    ws = await session.ws_connect(f"http://127.0.0.1:{web.port}/api/feed")
    kinds = {json.loads((await ws.receive()).data)["type"] for _ in range(3)}
    assert kinds == {"hello", "snapshot", "health"}
    return ws


async def _next_notice(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The next notice on a feed (a health message may come in between)."""
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] == "hello":
            return str(data["info"]["notice"]["text"])


async def test_a_page_that_falls_1000_behind_is_dropped_and_reconnects(
    session: aiohttp.ClientSession,
) -> None:
    sim, web = await _start()
    try:
        ws = await _open(session, web)
        # A burst with no await in between: nothing can be written to the page meanwhile, so
        # its queue only grows, as it does for a page whose socket is full.
        for n in range(2500):
            web.notice(f"burst {n}")
        received = 0
        while (msg := await ws.receive(timeout=10)).type not in PAGE_CLOSED:
            received += 1
        assert received <= 1000, f"the page got {received} messages: its queue was not bounded"
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER
        assert web.pages == 0 and web.feed_backlog == 0
        # The page's script reconnects and starts again from a snapshot.
        again = await _open(session, web)
        assert web.pages == 1
        await again.close()
        await ws.close()
    finally:
        await web.stop()
        await sim.stop()


async def test_a_page_that_never_reads_is_dropped_at_the_cap_while_a_reader_stays(
    session: aiohttp.ClientSession,
) -> None:
    """The realistic case: the stuck page's socket fills, its writer waits on the socket, its
    queue fills to the cap and it is dropped; a page that keeps reading is not affected."""
    cap = 20
    sim, web = await _start(feed_queue_max=cap)
    try:
        stuck = await _open(session, web)  # never read again until the end
        reader = await _open(session, web)
        big = "x" * 256 * 1024  # fills the socket buffers in tens of messages, not thousands
        sent = 0
        while web.pages == 2:
            assert sent < 2000, "the page that does not read was never dropped"
            web.notice(f"{sent} {big}")
            sent += 1
            assert web.feed_backlog <= cap + 1  # the stuck page's queue, plus the reader's one
            # Pacing on the reader: every message reaches it before the next one is made.
            assert (await _next_notice(reader)).startswith(f"{sent - 1} ")
        assert web.pages == 1
        web.notice("after the drop")
        assert await _next_notice(reader) == "after the drop"
        # The stuck page, reading again, gets what was in flight and then the end of its feed
        # (a close frame, or a reset if the close frame could not be written in time).
        while (msg := await stuck.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert msg.type in (*PAGE_CLOSED, aiohttp.WSMsgType.ERROR)
        await reader.close()
        await stuck.close()
    finally:
        await web.stop()
        await sim.stop()
