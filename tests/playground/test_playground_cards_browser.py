"""The page's card rendering and button clicks, in a real headless Chromium.

Cards are sent through the simulator's REST API exactly as the bot sends them (a reply with a
Card JSON 1.0 body, a CardKit entity streamed by element), to a group message that does not
mention the bot (so the bot itself stays quiet). A click on a button goes back to the bot as a
real ``card.action.trigger`` over the long connection; the page shows the bot's answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from feishu_bot.playground import Playground
from tests.playground.cdp import Browser, find_chromium

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]

CARD_V1: dict[str, Any] = {
    "config": {"wide_screen_mode": True, "update_multi": True},
    "header": {"template": "red", "title": {"tag": "plain_text", "content": "Version one"}},
    "elements": [
        {"tag": "markdown", "content": "**bold** and `code`\n- item\n<font color='red'>hot</font>"},
        {
            "tag": "div",
            "text": {"tag": "lark_md", "content": "a *div*"},
            "fields": [{"is_short": True, "text": {"tag": "lark_md", "content": "field"}}],
        },
        {"tag": "hr"},
        {"tag": "note", "elements": [{"tag": "plain_text", "content": "a note"}]},
        {
            "tag": "action",
            "actions": [
                {
                    "tag": "button",
                    "type": "primary",
                    "text": {"tag": "plain_text", "content": "Old button"},
                    "value": {"action": "v1"},
                }
            ],
        },
    ],
}

CARD_V2: dict[str, Any] = {
    "schema": "2.0",
    "config": {"streaming_mode": True},
    "header": {"template": "violet", "title": {"tag": "plain_text", "content": "Version two"}},
    "body": {
        "elements": [
            {"tag": "markdown", "content": "…", "element_id": "answer"},
            {
                "tag": "column_set",
                "columns": [
                    {"tag": "column", "elements": [{"tag": "markdown", "content": "left"}]},
                    {"tag": "column", "elements": [{"tag": "markdown", "content": "right"}]},
                ],
            },
            {
                "tag": "collapsible_panel",
                "header": {"title": {"tag": "plain_text", "content": "Details"}},
                "elements": [{"tag": "markdown", "content": "```py\nprint(1)\n```"}],
            },
            {
                "tag": "button",
                "type": "danger",
                "text": {"tag": "plain_text", "content": "Press me"},
                "behaviors": [{"type": "callback", "value": {"action": "press", "n": 1}}],
            },
        ]
    },
}


async def _send_cards(pg: Playground, parent: str) -> str:
    """Reply with CARD_V1, and with CARD_V2 as a streamed CardKit entity; returns its card_id."""
    sim = pg.sim
    assert sim is not None
    base = "/open-apis/cardkit/v1/cards"
    async with aiohttp.ClientSession(base_url=sim.base_url) as http:
        async with http.post(
            "/open-apis/auth/v3/tenant_access_token/internal",
            json={"app_id": sim.options.app_id, "app_secret": sim.options.app_secret},
        ) as resp:
            auth = {"Authorization": f"Bearer {(await resp.json())['tenant_access_token']}"}
        reply = f"/open-apis/im/v1/messages/{parent}/reply"
        body = {"msg_type": "interactive", "content": json.dumps(CARD_V1)}
        async with http.post(reply, json=body, headers=auth) as resp:
            assert (await resp.json())["code"] == 0
        async with http.post(
            base, json={"type": "card_json", "data": json.dumps(CARD_V2)}, headers=auth
        ) as resp:
            card_id = (await resp.json())["data"]["card_id"]
        content = {"type": "card", "data": {"card_id": card_id}}
        body = {"msg_type": "interactive", "content": json.dumps(content)}
        async with http.post(reply, json=body, headers=auth) as resp:
            assert (await resp.json())["code"] == 0
        async with http.put(
            f"{base}/{card_id}/elements/answer/content",
            json={"content": "streamed **text**", "sequence": 1, "uuid": "s1"},
            headers=auth,
        ) as resp:
            assert (await resp.json())["code"] == 0
    return card_id


async def test_cards_render_and_buttons_call_back(playground: Playground, tmp_path: Path) -> None:
    chromium = find_chromium()
    assert chromium, "Debian chromium is not installed (scripts/test.sh installs it)"
    pg = playground
    assert pg.sim is not None
    parent = await pg.sim.push_message(
        chat_id="oc_playground_group", chat_type="group", text="cards, no mention"
    )
    async with Browser(chromium, tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.goto(pg.url)
        await page.wait_for("document.getElementById('conn').dataset.state === 'up'")
        await page.click('.chat-tab[data-chat="group"]')
        await _send_cards(pg, parent)

        await page.wait_for("document.body.innerText.includes('streamed text')")
        v1 = "[...document.querySelectorAll('.card')].find((c) => c.dataset.schema === '1.0')"
        v2 = "[...document.querySelectorAll('.card')].find((c) => c.dataset.schema === '2.0')"
        assert await page.evaluate(f"{v1}.querySelector('.card-header').dataset.template") == "red"
        assert await page.evaluate(f"{v1}.querySelector('.card-md b').innerText") == "bold"
        assert await page.evaluate(f"{v1}.querySelector('.card-md code').innerText") == "code"
        assert await page.evaluate(f"{v1}.querySelector('.fc-red').innerText") == "hot"
        assert await page.evaluate(f"{v1}.querySelector('.card-note').innerText") == "a note"
        assert await page.evaluate(f"!!{v1}.querySelector('.card-fields')")
        assert await page.evaluate(f"{v1}.querySelector('.card-btn.btn-primary').innerText") == (
            "Old button"
        )
        assert await page.evaluate(f"{v2}.querySelector('.card-header').dataset.template") == (
            "violet"
        )
        assert await page.evaluate(f"{v2}.classList.contains('streaming')")
        assert await page.evaluate(f"{v2}.querySelectorAll('.card-column').length") == 2
        assert await page.evaluate(f"{v2}.querySelector('details.card-panel summary').innerText")
        assert await page.evaluate(f"{v2}.querySelector('pre.code').dataset.lang") == "py"

        # A click: a real card.action.trigger to the bot, whose answer the page shows.
        await page.evaluate(f"{v2}.querySelector('.card-btn.btn-danger').id = 'press-me'")
        await page.click("#press-me")
        await page.wait_for("document.querySelector('#toasts .toast') !== null")
    pushed = [
        d.envelope["event"]
        for d in pg.sim.deliveries
        if d.envelope["header"]["event_type"] == "card.action.trigger"
    ]
    assert [e["action"]["value"] for e in pushed] == [{"action": "press", "n": 1}]
    assert pushed[0]["operator"]["open_id"] == "ou_playground_user"
    # Only the two cards sent above: the bot was not mentioned, so it did not answer.
    assert len(pg.sim.replies_to(parent)) == 2
