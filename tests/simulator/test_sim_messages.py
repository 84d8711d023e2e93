"""The simulator's GET of a message and the recall event: users' messages, the bot's own
messages and CardKit cards (their content only with card_msg_content_type=user_card_content),
the scope im:message.group_msg, and a recalled message."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.messages import MESSAGE_RECALLED, UPGRADE_TEXT

GET = "/open-apis/im/v1/messages/{}"


async def get(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str, message_id: str, **query: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(
        sim.base_url + GET.format(message_id), params=query,
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        return resp.status, await resp.json()


async def test_a_users_message_reads_back_as_in_the_event(sim, http, token) -> None:
    mid = await sim.push_message(text="hello", sender_open_id="ou_a")
    status, body = await get(sim, http, token, mid)
    assert status == 200 and body["code"] == 0
    [item] = body["data"]["items"]
    assert (item["message_id"], item["msg_type"], item["chat_id"]) == (mid, "text", "oc_sim_p2p")
    assert json.loads(item["body"]["content"]) == {"text": "hello"}
    assert item["sender"] == {
        "id": "ou_a", "id_type": "open_id", "sender_type": "user", "tenant_key": "sim_tenant"
    }
    assert item["deleted"] is False


async def test_a_reply_names_its_parent(sim, http, token) -> None:
    parent = await sim.push_message(text="first", chat_type="group")
    child = await sim.push_message(
        text="second", chat_type="group", mention_bot=True, parent_id=parent, root_id=parent
    )
    [item] = (await get(sim, http, token, child))[1]["data"]["items"]
    assert item["parent_id"] == parent and item["root_id"] == parent
    assert item["mentions"][0]["name"] == "ClaudeBot"


async def test_other_users_group_messages_need_the_group_msg_scope(sim, http, token) -> None:
    plain = await sim.push_message(text="internal", chat_type="group", sender_open_id="ou_b")
    at_bot = await sim.push_message(text="hi bot", chat_type="group", mention_bot=True)
    private = await sim.push_message(text="p2p", sender_open_id="ou_b")
    sim.reads.group_msg_scope = False
    status, body = await get(sim, http, token, plain)
    assert (status, body["code"], body["msg"]) == (400, 230027, "Lack of necessary permissions.")
    assert (await get(sim, http, token, at_bot))[1]["code"] == 0  # @bot: readable anyway
    assert (await get(sim, http, token, private))[1]["code"] == 0
    sim.reads.group_msg_scope = True
    assert (await get(sim, http, token, plain))[1]["code"] == 0
    assert (await get(sim, http, token, "om_nope"))[1]["code"] == 230001


async def test_the_bots_cardkit_card_needs_user_card_content(sim, http, token) -> None:
    user = await sim.push_message(text="q")
    card = {"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "**42**"}]}}
    async with http.post(
        sim.base_url + "/open-apis/cardkit/v1/cards",
        json={"type": "card_json", "data": json.dumps(card)},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        card_id = (await resp.json())["data"]["card_id"]
    async with http.post(
        sim.base_url + f"/open-apis/im/v1/messages/{user}/reply",
        json={"msg_type": "interactive",
              "content": json.dumps({"type": "card", "data": {"card_id": card_id}})},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        answer = (await resp.json())["data"]["message_id"]
    [plain] = (await get(sim, http, token, answer))[1]["data"]["items"]
    assert UPGRADE_TEXT in plain["body"]["content"]
    assert plain["sender"]["sender_type"] == "app" and plain["parent_id"] == user
    [full] = (await get(sim, http, token, answer, card_msg_content_type="user_card_content"))[
        1
    ]["data"]["items"]
    assert json.loads(full["body"]["content"])["body"]["elements"][0]["content"] == "**42**"


async def test_recall_pushes_the_event_and_the_message_reads_deleted(sim, http, token) -> None:
    mid = await sim.push_message(text="oops", chat_id="oc_x")
    event_id = await sim.recall(mid)
    delivery = next(d for d in sim.deliveries if d.event_id == event_id)
    assert delivery.envelope["header"]["event_type"] == MESSAGE_RECALLED
    event = delivery.envelope["event"]
    assert (event["message_id"], event["chat_id"], event["recall_type"]) == (
        mid, "oc_x", "message_owner"
    )
    [item] = (await get(sim, http, token, mid))[1]["data"]["items"]
    assert item["deleted"] is True and "recalled" in item["body"]["content"]
    async with http.post(
        sim.base_url + f"/open-apis/im/v1/messages/{mid}/reply",
        json={"msg_type": "text", "content": json.dumps({"text": "late"})},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert (await resp.json())["code"] == 230011  # replies to it are refused
