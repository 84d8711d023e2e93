"""Who may drive the playground: its own page (origin, host name, token cookie), nobody else.

Through a real aiohttp client against the real page server and a real simulator (no bot and
no CLI: every push towards the bot is recorded as a simulator `Delivery` whether or not a bot
is connected, so an empty `deliveries` list means nothing was sent to the bot). Each refused
request is otherwise exactly the page's own: the same valid JSON body and, unless the defect is
the token, the page's cookie.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from feishu_bot.playground.guard import Guard
from feishu_bot.playground.web import PlaygroundWeb
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.media import sample_png

SEND = {"chat": "p2p", "text": "run: touch pwned"}


async def _health() -> dict[str, Any]:
    return {"healthy": True}


@pytest.fixture
async def page() -> AsyncIterator[PlaygroundWeb]:
    async with FeishuSimulator(bot_open_id="ou_playground_bot") as sim:
        web = PlaygroundWeb(sim, info={"offline": True}, health=_health, port=0)
        await web.start()
        try:
            yield web
        finally:
            await web.stop()


def _base(web: PlaygroundWeb) -> str:
    return f"http://127.0.0.1:{web.port}"


def _jar() -> aiohttp.CookieJar:
    # aiohttp's jar refuses cookies of IP-address hosts unless told otherwise.
    return aiohttp.CookieJar(unsafe=True)


async def _page_cookies(web: PlaygroundWeb) -> dict[str, str]:
    """The cookies a browser holds after opening the address the terminal printed."""
    async with aiohttp.ClientSession(cookie_jar=_jar()) as session:
        async with session.get(web.url) as resp:
            assert resp.status == 200, await resp.text()
        return {cookie.key: cookie.value for cookie in session.cookie_jar}


Attempt = Callable[[PlaygroundWeb, dict[str, str]], Awaitable[tuple[int, str]]]


async def _post_send(
    web: PlaygroundWeb, cookies: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(cookies=cookies, cookie_jar=_jar()) as session,
        session.post(_base(web) + "/api/send", json=SEND, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def _foreign_origin(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _post_send(web, cookies, {"Origin": "http://evil.example"})


async def _other_local_port(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    # Another page on this machine is same-site (cookies ignore ports): the Origin decides.
    return await _post_send(web, cookies, {"Origin": "http://127.0.0.1:1"})


async def _null_origin(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _post_send(web, cookies, {"Origin": "null"})


async def _rebound_host(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    # DNS rebinding: evil.example now resolves to 127.0.0.1, so its page is "same-origin"
    # with itself; only the Host (and Origin) name it.
    host = f"evil.example:{web.port}"
    return await _post_send(web, cookies, {"Host": host, "Origin": f"http://{host}"})


async def _rebound_host_only(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _post_send(web, cookies, {"Host": f"evil.example:{web.port}"})


async def _no_token(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _post_send(web, {})


async def _wrong_cookie(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _post_send(web, {key: "x" + value for key, value in cookies.items()})


async def _wrong_bearer(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _post_send(web, {}, {"Authorization": "Bearer not-the-token"})


async def _text_plain(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    # A cross-site <form> or fetch without a preflight can only send "simple" types.
    async with (
        aiohttp.ClientSession(cookies=cookies, cookie_jar=_jar()) as session,
        session.post(
            _base(web) + "/api/send",
            data=json.dumps(SEND),
            headers={"Content-Type": "text/plain"},
        ) as resp,
    ):
        return resp.status, await resp.text()


async def _click_from_foreign_page(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    body = {"message_id": "om_any", "value": {"action": "allow"}}
    async with (
        aiohttp.ClientSession(cookies=cookies, cookie_jar=_jar()) as session,
        session.post(
            _base(web) + "/api/action", json=body, headers={"Origin": "http://evil.example"}
        ) as resp,
    ):
        return resp.status, await resp.text()


async def _upload(
    web: PlaygroundWeb, cookies: dict[str, str], headers: dict[str, str] | None
) -> tuple[int, str]:
    form = aiohttp.FormData()
    form.add_field("chat", "p2p")
    form.add_field("file", sample_png(8, 8), filename="x.png", content_type="image/png")
    async with (
        aiohttp.ClientSession(cookies=cookies, cookie_jar=_jar()) as session,
        session.post(_base(web) + "/api/upload", data=form, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def _upload_foreign(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _upload(web, cookies, {"Origin": "http://evil.example"})


async def _upload_no_token(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _upload(web, {}, None)


async def _read_state(
    web: PlaygroundWeb, cookies: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(cookies=cookies, cookie_jar=_jar()) as session,
        session.get(_base(web) + "/api/state", headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def _state_no_token(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    # The feed carries the signed values of the approval buttons: reading it is driving it.
    return await _read_state(web, {})


async def _state_cross_site(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    # A no-cors GET (an <img>, a <script>) from another local page carries no Origin but
    # carries the cookie; the browser's Sec-Fetch-Site says where it came from.
    return await _read_state(web, cookies, {"Sec-Fetch-Site": "same-site"})


async def _page_wrong_token(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(cookie_jar=_jar()) as session,
        session.get(_base(web) + "/?token=guess") as resp,
    ):
        return resp.status, await resp.text()


async def _feed(web: PlaygroundWeb, cookies: dict[str, str], origin: str | None) -> tuple[int, str]:
    async with aiohttp.ClientSession(cookies=cookies, cookie_jar=_jar()) as session:
        try:
            async with session.ws_connect(_base(web) + "/api/feed", origin=origin) as ws:
                first = await ws.receive()
                return 101, str(first.data)[:200]
        except aiohttp.WSServerHandshakeError as exc:
            # The handshake error keeps the status; the body is read by a plain GET below.
            status = exc.status
        async with session.get(
            _base(web) + "/api/feed", headers={"Origin": origin} if origin else None
        ) as resp:
            assert resp.status == status
            return status, await resp.text()


async def _feed_foreign(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _feed(web, cookies, "http://evil.example")


async def _feed_no_token(web: PlaygroundWeb, cookies: dict[str, str]) -> tuple[int, str]:
    return await _feed(web, {}, f"http://127.0.0.1:{web.port}")


REFUSED: dict[str, Attempt] = {
    "foreign Origin": _foreign_origin,
    "Origin of another local port": _other_local_port,
    "Origin null": _null_origin,
    "rebound Host and its Origin": _rebound_host,
    "rebound Host": _rebound_host_only,
    "no token": _no_token,
    "wrong token cookie": _wrong_cookie,
    "wrong bearer token": _wrong_bearer,
    "text/plain POST": _text_plain,
    "card click from a foreign page": _click_from_foreign_page,
    "upload from a foreign page": _upload_foreign,
    "upload without token": _upload_no_token,
    "feed read without token": _state_no_token,
    "feed read by a same-site page": _state_cross_site,
    "page with a wrong token": _page_wrong_token,
    "websocket from a foreign page": _feed_foreign,
    "websocket without token": _feed_no_token,
}


@pytest.mark.parametrize("attempt", list(REFUSED), ids=list(REFUSED))
async def test_refused_with_a_one_line_reason_and_nothing_reaches_the_bot(
    page: PlaygroundWeb, attempt: str
) -> None:
    cookies = await _page_cookies(page)
    status, text = await REFUSED[attempt](page, cookies)
    assert status == 403, f"{attempt}: HTTP {status}: {text[:300]}"
    reason = text.strip()
    assert reason and "\n" not in reason and len(reason) < 200, reason
    assert page.token not in text
    assert page.sim.deliveries == []
    assert page.sim.user_messages == {}
    assert page.sim.card_actions == []


async def test_the_page_flow_token_cookie_then_api_and_feed(page: PlaygroundWeb) -> None:
    base = _base(page)
    assert re.fullmatch(re.escape(base) + r"/\?token=[A-Za-z0-9_-]{32,}", page.url), page.url
    async with aiohttp.ClientSession(cookie_jar=_jar()) as session:
        # Opening the printed address: the token becomes an HttpOnly, SameSite=Strict cookie
        # and the address bar loses it.
        async with session.get(page.url, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
            assert resp.headers["Location"] == "/"
            set_cookie = resp.headers["Set-Cookie"]
        assert page.token in set_cookie
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        async with session.get(base + "/") as resp:
            assert resp.status == 200
            assert "/static/app.js" in await resp.text()
        async with session.get(base + "/static/app.js") as resp:
            assert resp.status == 200

        # What the page's script then does, with the headers a browser adds.
        origin = {"Origin": base}
        async with session.post(base + "/api/send", json=SEND, headers=origin) as resp:
            assert resp.status == 200, await resp.text()
            message_id = (await resp.json())["message_id"]
        async with session.ws_connect(base + "/api/feed", origin=base) as ws:
            kinds = []
            while "snapshot" not in kinds:
                data = json.loads((await ws.receive()).data)
                kinds.append(data["type"])
                if data["type"] == "snapshot":
                    assert message_id in {item["id"] for item in data["items"]}
        async with session.get(
            base + "/api/state", headers={**origin, "Sec-Fetch-Site": "same-origin"}
        ) as resp:
            assert resp.status == 200
        # The same page opened as localhost.
        local = f"localhost:{page.port}"
        async with session.get(
            base + "/api/healthz", headers={"Host": local, "Origin": f"http://{local}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        # A script on this machine holding the token (not the cookie) may use it too.
    async with aiohttp.ClientSession() as script:
        async with script.get(
            base + "/api/state", headers={"Authorization": f"Bearer {page.token}"}
        ) as resp:
            assert resp.status == 200
    assert page.sim.user_messages[message_id].chat_type == "p2p"
    assert [d.event_id for d in page.sim.deliveries] == [
        page.sim.user_messages[message_id].event_id
    ]


def test_rules_at_their_edges() -> None:
    """The pure decision: the page's own requests pass, a near miss does not."""
    guard = Guard(token="t" * 43, port=8780)
    ok: dict[str, Any] = {
        "method": "GET",
        "path": "/api/state",
        "host": "127.0.0.1:8780",
        "origin": None,
        "fetch_site": "same-origin",
        "content_type": "",
        "presented": "t" * 43,
    }
    assert guard.refusal(**ok) is None
    assert (
        guard.refusal(**{**ok, "host": "localhost:8780", "origin": "http://localhost:8780"}) is None
    )
    assert guard.refusal(**{**ok, "fetch_site": "none"}) is None  # opened from the terminal
    post = {**ok, "method": "POST", "origin": "http://127.0.0.1:8780"}
    assert (
        guard.refusal(**{**post, "path": "/api/send", "content_type": "application/json"}) is None
    )
    upload = {**post, "path": "/api/upload", "content_type": "multipart/form-data"}
    assert guard.refusal(**upload) is None
    # The script and style sheet need no token, but the Host and Origin rules still hold.
    assert guard.refusal(**{**ok, "path": "/static/app.js", "presented": None}) is None
    near_misses = {
        "another port": {"host": "127.0.0.1:8781"},
        "no port": {"host": "127.0.0.1"},
        "no Host": {"host": None},
        "https origin": {"origin": "https://127.0.0.1:8780"},
        "origin on another port": {"origin": "http://localhost:3000"},
        "same-site fetch": {"fetch_site": "same-site"},
        "cross-site fetch": {"fetch_site": "cross-site"},
        "token prefix": {"presented": "t" * 42},
        "static from a rebound host": {"path": "/static/app.js", "host": "evil.example:8780"},
    }
    for name, change in near_misses.items():
        reason = guard.refusal(**{**ok, **change})
        assert reason and "\n" not in reason, name
    assert "multipart" in str(guard.refusal(**{**upload, "content_type": "application/json"}))
    assert "application/json" in str(
        guard.refusal(**{**post, "path": "/api/action", "content_type": "text/plain"})
    )
    # Two playgrounds on one machine keep their cookies apart (cookies ignore ports).
    assert guard.cookie_name != Guard(token="t", port=8781).cookie_name
