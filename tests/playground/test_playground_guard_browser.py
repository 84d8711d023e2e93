"""The reported attack, in a real headless Chromium: a foreign page tries to drive the playground.

The browser first opens the playground's printed address, so it holds the token cookie (the
user has the playground open). Then it visits a page served from another port of 127.0.0.1:
same-site for cookies (they ignore ports), so the browser does send the cookie along; only the
Origin and Sec-Fetch-Site it adds, and the guard's checks of them, stand in the way. The page
tries what the reported attack did and more: a JSON fetch, a no-cors text/plain POST (no
preflight), an HTML form POST, and the feed's websocket. Nothing may reach the bot and the page
may read nothing. Real page server and simulator; no bot or CLI needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from feishu_bot.playground.web import PlaygroundWeb
from feishu_bot.simulator import FeishuSimulator
from tests.playground.cdp import Browser, find_chromium

pytestmark = [pytest.mark.slow]

ATTACK_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" action="TARGET/api/send" enctype="text/plain" target="sink">
  <input name='{"chat":"p2p","text":"run: touch pwned","x":"' value='"}'>
</form>
<iframe name="sink"></iframe>
<script>
const T = "TARGET";
const body = JSON.stringify({chat: "p2p", text: "run: touch pwned"});
window.result = {};
async function attack() {
  try {
    const r = await fetch(T + "/api/send", {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body});
    window.result.json_fetch = "read " + r.status;
  } catch (e) { window.result.json_fetch = "blocked"; }
  try {
    await fetch(T + "/api/send", {method: "POST", mode: "no-cors", credentials: "include",
      headers: {"Content-Type": "text/plain"}, body});
    window.result.no_cors = "sent";
  } catch (e) { window.result.no_cors = "blocked"; }
  try {
    const r = await fetch(T + "/api/state", {credentials: "include"});
    window.result.state = "read " + r.status;
  } catch (e) { window.result.state = "blocked"; }
  window.result.ws = await new Promise((resolve) => {
    const ws = new WebSocket(T.replace("http", "ws") + "/api/feed");
    ws.onmessage = (ev) => resolve("read: " + ev.data.slice(0, 40));
    ws.onerror = () => resolve("refused");
    ws.onclose = () => resolve("refused");
  });
  // Last, the form: done once its answer has loaded in the frame, so the server has decided.
  // Said on the DOM: the test's wait re-checks on DOM changes.
  document.querySelector("iframe").onload = () => { document.body.dataset.done = "1"; };
  document.getElementById("f").submit();
}
attack();
</script></body></html>"""


async def _health() -> dict[str, Any]:
    return {"healthy": True}


@pytest.fixture
async def playground_page() -> AsyncIterator[PlaygroundWeb]:
    async with FeishuSimulator() as sim:
        page = PlaygroundWeb(sim, info={"offline": True}, health=_health, port=0)
        await page.start()
        try:
            yield page
        finally:
            await page.stop()


@pytest.fixture
async def foreign_site(playground_page: PlaygroundWeb) -> AsyncIterator[str]:
    """A page on another port of 127.0.0.1, aimed at the playground; yields its address."""
    html = ATTACK_PAGE.replace("TARGET", playground_page.base_url)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def test_a_foreign_page_in_the_same_browser_cannot_drive_or_read_it(
    playground_page: PlaygroundWeb, foreign_site: str, tmp_path: Path
) -> None:
    chromium = find_chromium()
    assert chromium, "Debian chromium is not installed (scripts/test.sh installs it)"
    sim = playground_page.sim
    async with Browser(chromium, tmp_path / "profile") as browser:
        tab = await browser.new_page()
        await tab.goto(playground_page.url)  # the user opened the playground: cookie set
        assert await tab.evaluate("location.href") == playground_page.base_url + "/"
        await tab.call("Page.navigate", {"url": foreign_site})
        await tab.wait_for("document.body && document.body.dataset.done === '1'")
        result = await tab.evaluate("window.result")
    assert result["json_fetch"] == "blocked", result  # no CORS headers: not readable
    assert result["state"] == "blocked", result
    assert result["ws"] == "refused", result
    assert sim.deliveries == [], [d.envelope["event"] for d in sim.deliveries]
    assert sim.user_messages == {}
