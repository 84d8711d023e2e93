"""FeishuReplier against the Feishu simulator over real HTTP on 127.0.0.1.

Retry waits go through an injected `sleep` that records the delay and returns at once, so
the tests assert the exact waits (rate-limit resets, no wait after a token refresh) without
sleeping.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from feishu_bot.errors import FeishuApiError, FeishuTransientError
from feishu_bot.feishu.render import card_for, final_cards
from feishu_bot.feishu.replier import FeishuReplier

sim_mod = pytest.importorskip("feishu_bot.simulator")
FeishuSimulator = sim_mod.FeishuSimulator

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
APP_ID = "cli_sim_app"
APP_SECRET = "sim_secret_0123456789"


class Sleeps:
    """Stands in for asyncio.sleep in the retry loop: records, then yields once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_replier(sim: Any, sleeps: Sleeps, **kw: Any) -> FeishuReplier:
    kw.setdefault("timeout", 5.0)
    return FeishuReplier(
        app_id=APP_ID, app_secret=APP_SECRET, domain=sim.base_url, sleep=sleeps, **kw
    )


@pytest.fixture
async def replier(sim: Any, sleeps: Sleeps) -> AsyncIterator[FeishuReplier]:
    async with make_replier(sim, sleeps) as r:
        yield r


@pytest.fixture
async def user_msg(sim: Any) -> str:
    """A user's message in a p2p chat, to reply to."""
    return await sim.push_message(text="hello bot")


def requests_to(sim: Any, method: str, pattern: str) -> list[Any]:
    return [r for r in sim.requests if r.method == method and re.search(pattern, r.path)]


# -- happy paths -------------------------------------------------------------------------------


async def test_bot_info(replier: FeishuReplier) -> None:
    bot = await replier.bot_info()
    assert bot["open_id"] == "ou_sim_bot"


async def test_reply_text_and_card_in_thread(
    sim: Any, replier: FeishuReplier, user_msg: str
) -> None:
    mid = await replier.reply_text(user_msg, 'hi 你好 "quoted"')
    msg = sim.message(mid)
    assert msg.reply_to == user_msg
    assert msg.msg_type == "text"
    assert sim.message_text(msg) == 'hi 你好 "quoted"'
    assert msg.uuid  # a uuid is always sent

    card_id = await replier.reply_card(user_msg, card_for("**x**", state="done"), in_thread=True)
    card_msg = sim.message(card_id)
    assert card_msg.msg_type == "interactive"
    assert card_msg.reply_in_thread is True
    assert sim.message_text(card_msg) == "**x**"


async def test_send_and_patch_card(sim: Any, replier: FeishuReplier) -> None:
    mid = await replier.send_card("oc_team", card_for("v1", state="working"))
    await replier.patch(mid, card_for("v2", state="done"))
    msg = sim.message(mid)
    assert msg.chat_id == "oc_team"
    assert [sim_mod.card_text(v) for v in msg.versions] == ["v1", "v2"]
    assert requests_to(sim, "POST", r"/messages$")[0].query == {"receive_id_type": "chat_id"}


async def test_reaction_add_and_remove(sim: Any, replier: FeishuReplier, user_msg: str) -> None:
    rid = await replier.add_reaction(user_msg, "OnIt")
    [reaction] = sim.live_reactions(user_msg)
    assert reaction.reaction_id == rid
    assert reaction.emoji_type == "OnIt"
    await replier.remove_reaction(user_msg, rid)
    assert sim.live_reactions(user_msg) == []


async def test_largest_final_card_is_accepted(
    sim: Any, replier: FeishuReplier, user_msg: str
) -> None:
    # CJK, emoji, quotes and newlines all grow on the wire; the simulator enforces 30 KB.
    text = ('中文😀"q"\\\n' * 5000) + "end"
    cards = final_cards(text)
    assert len(cards) > 1
    for card in cards:
        await replier.reply_card(user_msg, card)
    got = "".join(sim.message_text(m) for m in sim.replies_to(user_msg))
    assert got == text


# -- token -------------------------------------------------------------------------------------


async def test_one_token_fetch_for_20_concurrent_calls(
    sim: Any, replier: FeishuReplier, user_msg: str
) -> None:
    ids = await asyncio.gather(*(replier.reply_text(user_msg, f"m{i}") for i in range(20)))
    assert len(set(ids)) == 20
    assert len(requests_to(sim, "POST", TOKEN_PATH)) == 1
    assert replier.token_fetches == 1
    await replier.reply_text(user_msg, "later")  # cached
    assert len(requests_to(sim, "POST", TOKEN_PATH)) == 1


async def test_expired_token_is_dropped_and_refetched(
    sim: Any, replier: FeishuReplier, sleeps: Sleeps, user_msg: str
) -> None:
    await replier.reply_text(user_msg, "one")
    sim.expire_tokens()
    await replier.reply_text(user_msg, "two")
    assert replier.token_fetches == 2
    codes = [r.code for r in requests_to(sim, "POST", r"/reply$")]
    assert codes == [0, 99991663, 0]
    assert sleeps.waits == [0.0]  # no backoff before the retry with the new token
    assert [sim.message_text(m) for m in sim.replies_to(user_msg)] == ["one", "two"]


async def test_concurrent_callers_share_one_refetch_after_expiry(
    sim: Any, replier: FeishuReplier, user_msg: str
) -> None:
    await replier.reply_text(user_msg, "warm up")
    sim.expire_tokens()
    await asyncio.gather(*(replier.reply_text(user_msg, f"m{i}") for i in range(20)))
    assert replier.token_fetches == 2
    assert len(requests_to(sim, "POST", TOKEN_PATH)) == 2
    assert len(sim.replies_to(user_msg)) == 21


async def test_token_refreshed_before_expiry(sim: Any, sleeps: Sleeps, user_msg: str) -> None:
    now = [1000.0]
    async with make_replier(sim, sleeps, clock=lambda: now[0]) as r:
        await r.reply_text(user_msg, "a")
        now[0] += 6500  # about 700 s left (expire 7200): cached
        await r.reply_text(user_msg, "b")
        assert r.token_fetches == 1
        now[0] += 150  # within 600 s of expiry: fetched again
        await r.reply_text(user_msg, "c")
        assert r.token_fetches == 2


async def test_bad_secret_is_permanent(sim: Any, sleeps: Sleeps, user_msg: str) -> None:
    async with FeishuReplier(
        app_id=APP_ID, app_secret="wrong", domain=sim.base_url, sleep=sleeps
    ) as r:
        with pytest.raises(FeishuApiError) as info:
            await r.reply_text(user_msg, "x")
    assert info.value.code == 10014
    assert not isinstance(info.value, FeishuTransientError)
    assert len(requests_to(sim, "POST", TOKEN_PATH)) == 1
    assert sleeps.waits == []


# -- retries -----------------------------------------------------------------------------------


async def test_retry_on_500_with_non_json_body(
    sim: Any, replier: FeishuReplier, sleeps: Sleeps, user_msg: str
) -> None:
    sim.fail_next("POST", r"/reply$", status=500, body="<html>upstream exploded</html>")
    mid = await replier.reply_text(user_msg, "survived")
    assert sim.message_text(sim.message(mid)) == "survived"
    statuses = [r.status for r in requests_to(sim, "POST", r"/reply$")]
    assert statuses == [500, 200]
    assert len(sleeps.waits) == 1 and 0 < sleeps.waits[0] <= 8.0  # exponential backoff


async def test_two_429s_honour_ratelimit_reset_then_succeed(
    sim: Any, replier: FeishuReplier, sleeps: Sleeps, user_msg: str
) -> None:
    sim.fail_next(
        "PATCH", r"/messages/", status=429, count=2, headers={"x-ogw-ratelimit-reset": "3"}
    )
    mid = await replier.reply_card(user_msg, card_for("a", state="working"))
    await replier.patch(mid, card_for("b", state="done"))
    assert sleeps.waits == [3.0, 3.0]
    assert [r.code for r in requests_to(sim, "PATCH", r"/messages/")] == [99991400, 99991400, 0]
    assert sim.message_text(sim.message(mid)) == "b"


async def test_ratelimit_reset_is_capped(sim: Any, sleeps: Sleeps, user_msg: str) -> None:
    sim.fail_next("POST", r"/reply$", status=429, headers={"x-ogw-ratelimit-reset": "3600"})
    async with make_replier(sim, sleeps, rate_limit_max_wait=5.0) as r:
        await r.reply_text(user_msg, "x")
    assert sleeps.waits == [5.0]


async def test_code_99991400_on_http_400_and_230020_are_rate_limits(
    sim: Any, replier: FeishuReplier, sleeps: Sleeps, user_msg: str
) -> None:
    sim.fail_next("POST", r"/reply$", status=400, code=99991400)
    sim.fail_next("POST", r"/reply$", status=400, code=230020)
    await replier.reply_text(user_msg, "x")
    assert [r.code for r in requests_to(sim, "POST", r"/reply$")] == [99991400, 230020, 0]
    # Without a reset header a rate limit still waits at least a second (per-second windows).
    assert len(sleeps.waits) == 2 and min(sleeps.waits) >= 1.0


async def test_client_error_is_not_retried(
    sim: Any, replier: FeishuReplier, sleeps: Sleeps, user_msg: str
) -> None:
    sim.fail_next("POST", r"/reply$", status=400, code=230002)  # bot not in chat
    with pytest.raises(FeishuApiError) as info:
        await replier.reply_text(user_msg, "x")
    assert not isinstance(info.value, FeishuTransientError)
    assert (info.value.status, info.value.code) == (400, 230002)
    assert len(requests_to(sim, "POST", r"/reply$")) == 1
    assert sleeps.waits == []


async def test_unknown_message_is_a_permanent_error(replier: FeishuReplier) -> None:
    with pytest.raises(FeishuApiError) as info:
        await replier.reply_text("om_does_not_exist", "x")
    assert info.value.code == 230001


async def test_gives_up_after_max_attempts(sim: Any, sleeps: Sleeps, user_msg: str) -> None:
    sim.fail_next("POST", r"/reply$", status=503, count=10)
    async with make_replier(sim, sleeps, max_attempts=3) as r:
        with pytest.raises(FeishuTransientError) as info:
            await r.reply_text(user_msg, "x")
    assert info.value.status == 503
    assert isinstance(info.value, FeishuApiError)
    assert len(requests_to(sim, "POST", r"/reply$")) == 3
    assert len(sleeps.waits) == 2
    assert sim.replies_to(user_msg) == []


async def test_retried_reply_keeps_its_uuid(
    sim: Any, replier: FeishuReplier, user_msg: str
) -> None:
    sim.fail_next("POST", r"/reply$", status=502)
    await replier.reply_text(user_msg, "once")
    bodies = [r.body for r in requests_to(sim, "POST", r"/reply$")]
    assert len(bodies) == 2
    assert bodies[0]["uuid"] == bodies[1]["uuid"]
    assert len(sim.replies_to(user_msg)) == 1


async def test_lost_response_does_not_duplicate_the_message(
    sim: Any, sleeps: Sleeps, user_msg: str
) -> None:
    """The server stores the reply but the answer never arrives: the retry must not post
    a second message (same uuid, Feishu-side dedupe)."""
    lost = {"left": 1}

    async def drop_first_reply_answer(session: Any, ctx: Any, params: Any) -> None:
        if params.url.path.endswith("/reply") and lost["left"]:
            lost["left"] -= 1
            raise aiohttp.ServerDisconnectedError()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(drop_first_reply_answer)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        r = make_replier(sim, sleeps, session=session)
        mid = await r.reply_text(user_msg, "exactly once")
        await r.aclose()  # does not close a session it does not own
        assert not session.closed
    assert lost["left"] == 0
    assert len(requests_to(sim, "POST", r"/reply$")) == 2  # the server saw both attempts
    replies = sim.replies_to(user_msg)
    assert [m.message_id for m in replies] == [mid]


async def test_connection_refused_is_transient(sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    async with FeishuReplier(
        app_id=APP_ID,
        app_secret=APP_SECRET,
        domain=f"http://127.0.0.1:{port}",
        max_attempts=3,
        sleep=sleeps,
    ) as r:
        with pytest.raises(FeishuTransientError):
            await r.bot_info()
    assert len(sleeps.waits) == 2


async def test_timeout_is_transient_and_retried(sleeps: Sleeps) -> None:
    hits = {"n": 0}

    async def slow(request: web.Request) -> web.Response:
        hits["n"] += 1
        if request.path == TOKEN_PATH:
            return web.json_response({"code": 0, "tenant_access_token": "t-x", "expire": 7200})
        await asyncio.sleep(30)
        return web.json_response({"code": 0})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with FeishuReplier(
            app_id=APP_ID,
            app_secret=APP_SECRET,
            domain=f"http://127.0.0.1:{port}",
            timeout=0.2,
            max_attempts=2,
            sleep=sleeps,
        ) as r:
            with pytest.raises(FeishuTransientError) as info:
                await r.patch("om_x", {"elements": []})
        assert "Timeout" in str(info.value)
        assert hits["n"] == 3  # token + 2 attempts
    finally:
        await runner.cleanup()


async def test_secrets_never_logged(sim: Any, sleeps: Sleeps, user_msg: str) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    try:
        async with make_replier(sim, sleeps) as r:
            sim.fail_next("POST", r"/reply$", status=500)
            await r.reply_text(user_msg, "x")
            sim.expire_tokens()
            await r.reply_text(user_msg, "y")
            token = r._token
    finally:
        logger.remove(sink)
    assert token and len(requests_to(sim, "POST", TOKEN_PATH)) == 2
    text = "\n".join(lines)
    assert lines  # something was logged (the retry warnings)
    assert APP_SECRET not in text
    assert token not in text


# -- reading a message, and replying to a recalled one (issue 18) ------------------------------


async def test_get_message_asks_for_cards_as_their_content(
    sim: Any, replier: FeishuReplier, user_msg: str
) -> None:
    item = await replier.get_message(user_msg)
    assert item["message_id"] == user_msg and item["msg_type"] == "text"
    [request] = requests_to(sim, "GET", f"/messages/{user_msg}$")
    assert request.query == {"card_msg_content_type": "user_card_content"}
    sim.reads.group_msg_scope = False
    other = await sim.push_message(text="theirs", chat_type="group", sender_open_id="ou_b")
    with pytest.raises(FeishuApiError) as caught:
        await replier.get_message(other)
    assert caught.value.code == 230027


async def test_a_reply_to_a_recalled_message_goes_to_its_chat(
    sim: Any, replier: FeishuReplier
) -> None:
    mid = await sim.push_message(text="do it", chat_id="oc_r")
    replier.note_chat(mid, "oc_r")  # as dispatch does for every inbound message
    await sim.recall(mid)
    new_id = await replier.reply_text(mid, "the answer")
    sent = sim.message(new_id)
    assert (sent.chat_id, sent.reply_to, sim.message_text(sent)) == ("oc_r", None, "the answer")
    unknown = await sim.push_message(text="x", chat_id="oc_s")  # its chat was never noted
    await sim.recall(unknown)
    with pytest.raises(FeishuApiError) as caught:
        await replier.reply_text(unknown, "lost")
    assert caught.value.code == 230011
