"""The playground wiring, through the page's own API and feed (no browser)."""

from __future__ import annotations

import io

import aiohttp
import pytest

from feishu_bot.playground import Playground
from feishu_bot.playground.cli import _print_banner
from feishu_bot.playground.offline_api import OFFLINE_LABEL
from feishu_bot.simulator.envelopes import MESSAGE_RECEIVE
from feishu_bot.simulator.media import sample_png
from tests.playground.conftest import Feed, StartPlayground, open_page

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]


async def _send(session: aiohttp.ClientSession, pg: Playground, **body: object) -> str:
    async with session.post(pg.base_url + "/api/send", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["message_id"]


async def test_p2p_message_is_answered_on_the_feed(playground: Playground) -> None:
    pg = playground
    async with open_page(pg) as session, session.ws_connect(pg.base_url + "/api/feed") as ws:
        feed = Feed(ws)
        await feed.until(lambda f: f.hello and f.health)
        assert feed.hello["offline"] is True
        assert feed.hello["offline_label"] == OFFLINE_LABEL
        assert feed.health["healthz"]["healthy"] is True
        assert feed.health["healthz"]["sandbox"] == "on"  # bubblewrap is installed here

        message_id = await _send(session, pg, chat="p2p", text="hello playground")
        text = await feed.until(lambda f: f.finished_text(message_id))

    assert text.startswith(f"*{OFFLINE_LABEL}*") or OFFLINE_LABEL in text.splitlines()[0]
    assert "You said: hello playground" in text
    # It went the real way: a real event over the long connection, acked by lark_oapi, and the
    # real CLI asked the demo model.
    user_msg = pg.sim.user_messages[message_id]
    assert user_msg.chat_type == "p2p"
    assert (await pg.sim.wait_ack(message_id)).code == 200
    delivery = next(d for d in pg.sim.deliveries if d.event_id == user_msg.event_id)
    assert delivery.envelope["header"]["event_type"] == MESSAGE_RECEIVE
    assert pg.api is not None and pg.api.requests >= 1
    timings = feed.items[message_id]["timings"]
    assert timings["ack"] is not None and timings["first_reply"] is not None
    assert timings["done"] is not None and timings["done"] >= timings["first_reply"]


async def test_group_answers_only_when_mentioned(playground: Playground) -> None:
    pg = playground
    async with open_page(pg) as session, session.ws_connect(pg.base_url + "/api/feed") as ws:
        feed = Feed(ws)
        ignored = await _send(session, pg, chat="group", text="talking to people", mention=False)
        asked = await _send(session, pg, chat="group", text="hello group", mention=True)
        text = await feed.until(lambda f: f.finished_text(asked))

    assert "You said: hello group" in text
    assert feed.items[asked]["text"].startswith("@ClaudeBot")
    # Both events reached the bot, in order; the first was dropped before the second ran.
    assert (await pg.sim.wait_ack(ignored)).code == 200
    assert pg.sim.replies_to(ignored) == []
    assert not pg.sim.live_reactions(ignored)
    assert all(i["chat"] == "group" for i in (feed.items[ignored], feed.items[asked]))


async def test_state_healthz_card_action_and_bad_requests(playground: Playground) -> None:
    pg = playground
    async with open_page(pg) as session:
        async with session.ws_connect(pg.base_url + "/api/feed") as ws:
            feed = Feed(ws)
            message_id = await _send(session, pg, chat="p2p", text="a card please")
            await feed.until(lambda f: f.finished_text(message_id))
        reply = pg.sim.replies_to(message_id)[0]

        async with session.get(pg.base_url + "/api/state") as resp:
            state = await resp.json()
        assert state["info"]["offline"] is True
        assert {i["id"] for i in state["items"]} >= {message_id, reply.message_id}
        async with session.get(pg.base_url + "/api/healthz") as resp:
            assert (await resp.json())["websocket"]["connected"] is True

        # A click is a real card.action.trigger over the long connection; the answer is what
        # the bot returned on the ack (a toast, or an error when it does not take callbacks).
        value = {"action": "noop", "from": "playground-test"}
        async with session.post(
            pg.base_url + "/api/action", json={"message_id": reply.message_id, "value": value}
        ) as resp:
            assert resp.status == 200
            answer = (await resp.json())["answer"]
        assert isinstance(answer, dict)
        pushed = [
            d.envelope["event"]
            for d in pg.sim.deliveries
            if d.envelope["header"]["event_type"] == "card.action.trigger"
        ]
        assert pushed and pushed[-1]["action"]["value"] == value
        assert pushed[-1]["context"]["open_message_id"] == reply.message_id

        blank = {"chat": "p2p", "text": " "}
        async with session.post(pg.base_url + "/api/send", json=blank) as resp:
            assert resp.status == 400
        async with session.post(
            pg.base_url + "/api/action", json={"message_id": "om_nope", "value": {}}
        ) as resp:
            assert resp.status == 404
        async with session.get(pg.base_url + "/") as resp:
            page = await resp.text()
        assert "/static/app.js" in page
        async with session.get(pg.base_url + "/static/cards.js") as resp:
            assert resp.status == 200

    # The terminal shows the address with this run's token: the one way in.
    out = io.StringIO()
    _print_banner(pg, out)
    assert f"Open {pg.base_url}/?token={pg.page_token} in a browser" in out.getvalue()
    assert f"Playground: {pg.url}\n" in out.getvalue()


async def test_image_upload_reaches_the_bot(playground: Playground) -> None:
    pg = playground
    png = sample_png(24, 24, seed=7)
    async with open_page(pg) as session, session.ws_connect(pg.base_url + "/api/feed") as ws:
        feed = Feed(ws)
        await feed.until(lambda f: f.hello)
        assert feed.hello["features"]["upload"] is True
        form = aiohttp.FormData()
        form.add_field("chat", "p2p")
        form.add_field("file", png, filename="shot.png", content_type="image/png")
        async with session.post(pg.base_url + "/api/upload", data=form) as resp:
            assert resp.status == 200, await resp.text()
            message_id = (await resp.json())["message_id"]
        item = await feed.until(lambda f: f.items.get(message_id))
        assert item["msg_type"] == "image" and item["from"] == "user"
        key = item["content"]["image_key"]
        async with session.get(f"{pg.base_url}/api/resource/{key}") as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            assert await resp.read() == png
        # The bot answers the image (an image alone waits for its question), then the
        # question: it downloads the image from the simulator and gives it to the model.
        await feed.until(lambda f: f.finished_text(message_id))
        question = await _send(session, pg, chat="p2p", text="what is this?")
        text = await feed.until(lambda f: f.finished_text(question))
    assert "I received 1 image(s) (image/png). You said: what is this?" in text
    fetched = [r for r in pg.sim.requests if r.path.endswith(f"/resources/{key}")]
    assert fetched and fetched[0].status == 200


async def test_queued_position_then_stop(start_playground: StartPlayground) -> None:
    """With one CLI slot, a second conversation's turn shows "queued, position 1"; /stop in
    the first frees the slot and the queued one is answered."""
    pg = await start_playground(CLAUDE_MAX_CONCURRENT=1)
    async with open_page(pg) as session, session.ws_connect(pg.base_url + "/api/feed") as ws:
        feed = Feed(ws)
        slow = await _send(session, pg, chat="p2p", text="something slow")
        await feed.until(lambda f: "word1" in "".join(r["text"] for r in f.bot_replies(slow)))
        waiting = await _send(session, pg, chat="group", text="after you", mention=True)
        queued = await feed.until(
            lambda f: next(
                (r for r in f.bot_replies(waiting) if "queued, position 1" in r["text"]), None
            )
        )
        assert queued["msg_type"] == "interactive"
        await _send(session, pg, chat="p2p", text="/stop")
        stopped = await feed.until(lambda f: f.finished_text(slow))
        answered = await feed.until(lambda f: f.finished_text(waiting))
    assert "word120" not in stopped
    assert "You said: after you" in answered
