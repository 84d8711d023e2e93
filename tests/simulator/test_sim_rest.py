"""The simulator's REST endpoints over real HTTP (aiohttp client)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from feishu_bot.simulator import FeishuSimulator

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES = "/open-apis/im/v1/messages"
CARD = {
    "config": {"update_multi": True},
    "elements": [{"tag": "markdown", "content": "thinking…"}],
}


class Api:
    """A tiny REST client for the tests: returns (HTTP status, JSON body)."""

    def __init__(self, sim: FeishuSimulator, http: aiohttp.ClientSession, token: str) -> None:
        self.sim = sim
        self.http = http
        self.token = token

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, **params: str
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        async with self.http.request(
            method, self.sim.base_url + path, json=body, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def create(
        self, chat_id: str = "oc_chat", msg_type: str = "text", content: Any = None, **extra: Any
    ) -> tuple[int, Any]:
        content = {"text": "hi"} if content is None else content
        body = {
            "receive_id": chat_id,
            "msg_type": msg_type,
            "content": content if isinstance(content, str) else json.dumps(content),
            **extra,
        }
        return await self.call("POST", MESSAGES, body, receive_id_type="chat_id")

    async def reply(
        self, message_id: str, content: Any, msg_type: str = "text", **extra: Any
    ) -> tuple[int, Any]:
        body = {"msg_type": msg_type, "content": json.dumps(content), **extra}
        return await self.call("POST", f"{MESSAGES}/{message_id}/reply", body)


@pytest.fixture
def api(sim: FeishuSimulator, http: aiohttp.ClientSession, token: str) -> Api:
    return Api(sim, http, token)


# -- tokens and auth ----------------------------------------------------------------------


async def test_tenant_token_issue_reuse_and_bad_credentials(sim, http):
    url = sim.base_url + TOKEN_PATH
    good = {"app_id": sim.options.app_id, "app_secret": sim.options.app_secret}
    async with http.post(url, json=good) as resp:
        first = await resp.json()
    assert resp.status == 200
    assert first["code"] == 0 and first["msg"] == "ok"
    assert first["tenant_access_token"].startswith("t-")
    assert 7000 < first["expire"] <= 7200
    async with http.post(url, json=good) as resp:
        again = await resp.json()
    assert again["tenant_access_token"] == first["tenant_access_token"]  # > 30 min left

    async with http.post(url, json={**good, "app_secret": "nope"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == 10014
    async with http.post(url, json={**good, "app_id": "cli_other"}) as resp:
        assert (await resp.json())["code"] == 10003


async def test_every_call_needs_a_valid_token(api: Api):
    status, body = await api.call("GET", "/open-apis/bot/v3/info", token="")
    assert (status, body["code"]) == (400, 99991661)
    status, body = await api.call("GET", "/open-apis/bot/v3/info", token="t-forged")
    assert (status, body["code"]) == (400, 99991663)
    status, body = await api.call("GET", "/open-apis/bot/v3/info")
    assert status == 200
    assert body["code"] == 0
    assert body["bot"]["open_id"] == "ou_sim_bot"
    assert body["bot"]["app_name"] == "ClaudeBot"
    assert body["bot"]["activate_status"] == 2


async def test_expire_tokens_until_a_new_one_is_fetched(sim, http, api: Api):
    old = api.token
    sim.expire_tokens()
    status, body = await api.create()
    assert (status, body["code"]) == (400, 99991663)
    async with http.post(
        sim.base_url + TOKEN_PATH,
        json={"app_id": sim.options.app_id, "app_secret": sim.options.app_secret},
    ) as resp:
        new = (await resp.json())["tenant_access_token"]
    assert new != old
    api.token = new
    status, body = await api.create()
    assert (status, body["code"]) == (200, 0)


# -- messages -----------------------------------------------------------------------------


async def test_create_message_in_a_chat(sim, api: Api):
    status, body = await api.create("oc_chat", content={"text": "hello"})
    assert (status, body["code"], body["msg"]) == (200, 0, "success")
    data = body["data"]
    assert data["message_id"].startswith("om_")
    assert data["chat_id"] == "oc_chat"
    assert data["msg_type"] == "text"
    assert data["sender"]["sender_type"] == "app"
    assert json.loads(data["body"]["content"]) == {"text": "hello"}
    [msg] = sim.messages
    assert (msg.message_id, msg.chat_id, msg.msg_type) == (data["message_id"], "oc_chat", "text")
    assert msg.content == {"text": "hello"}
    assert msg.reply_to is None
    assert sim.message_text(msg) == "hello"


async def test_create_message_to_a_user_lands_in_their_p2p_chat(sim, api: Api):
    await sim.push_message(text="hi bot", chat_id="oc_p2p_alice", sender_open_id="ou_alice")
    status, body = await api.call(
        "POST",
        MESSAGES,
        {"receive_id": "ou_alice", "msg_type": "text", "content": json.dumps({"text": "yo"})},
        receive_id_type="open_id",
    )
    assert status == 200
    assert body["data"]["chat_id"] == "oc_p2p_alice"


async def test_create_message_validation(api: Api):
    status, body = await api.call(
        "POST", MESSAGES, {"receive_id": "oc_x", "msg_type": "text", "content": "{}"}
    )
    assert (status, body["code"]) == (400, 99992402)  # receive_id_type missing
    status, body = await api.create(content="not json")
    assert (status, body["code"]) == (400, 230001)
    status, body = await api.create(content={"no_text": 1})
    assert (status, body["code"]) == (400, 230001)
    status, body = await api.create(msg_type="telegram")
    assert (status, body["code"]) == (400, 230001)
    status, body = await api.create(msg_type="interactive", content={"what": "ever"})
    assert (status, body["code"]) == (400, 230099)
    status, body = await api.create(msg_type="post", content={"zh_cn": {"content": "x"}})
    assert (status, body["code"]) == (400, 230001)


async def test_size_limits_card_30kb_text_150kb(api: Api):
    big_card = {"elements": [{"tag": "markdown", "content": "x" * (31 * 1024)}]}
    status, body = await api.create(msg_type="interactive", content=big_card)
    assert (status, body["code"]) == (400, 230025)
    ok_card = {"elements": [{"tag": "markdown", "content": "x" * (29 * 1024)}]}
    status, body = await api.create(msg_type="interactive", content=ok_card)
    assert (status, body["code"]) == (200, 0)
    status, body = await api.create(content={"text": "y" * (150 * 1024)})
    assert (status, body["code"]) == (400, 230025)
    status, body = await api.create(content={"text": "y" * (100 * 1024)})
    assert (status, body["code"]) == (200, 0)


async def test_reply_to_a_user_message_and_in_thread(sim, api: Api):
    parent = await sim.push_message(text="question", chat_id="oc_group", chat_type="group")
    status, body = await api.reply(parent, {"text": "answer"})
    assert (status, body["code"]) == (200, 0)
    [reply] = sim.replies_to(parent)
    assert reply.chat_id == "oc_group"
    assert reply.reply_to == parent and reply.root_id == parent
    assert not reply.reply_in_thread and reply.thread_id is None
    assert body["data"]["parent_id"] == parent

    status, body = await api.reply(parent, {"text": "in topic"}, reply_in_thread=True)
    assert status == 200
    threaded = sim.replies_to(parent)[1]
    assert threaded.reply_in_thread
    assert threaded.thread_id and threaded.thread_id.startswith("omt_")
    assert body["data"]["thread_id"] == threaded.thread_id
    assert sim.user_messages[parent].thread_id == threaded.thread_id


async def test_reply_to_unknown_or_recalled_message(sim, api: Api):
    status, body = await api.reply("om_missing", {"text": "x"})
    assert (status, body["code"]) == (400, 230001)
    _, created = await api.create()
    message_id = created["data"]["message_id"]
    status, body = await api.call("DELETE", f"{MESSAGES}/{message_id}")
    assert (status, body["code"]) == (200, 0)
    assert sim.message(message_id).deleted
    status, body = await api.reply(message_id, {"text": "x"})
    assert (status, body["code"]) == (400, 230011)


async def test_patch_card_records_every_version(sim, api: Api):
    _, created = await api.create(msg_type="interactive", content=CARD)
    message_id = created["data"]["message_id"]
    for text in ("step 1", "step 2", "done"):
        card = {**CARD, "elements": [{"tag": "markdown", "content": text}]}
        status, body = await api.call(
            "PATCH", f"{MESSAGES}/{message_id}", {"content": json.dumps(card)}
        )
        assert (status, body["code"]) == (200, 0)
    msg = sim.message(message_id)
    assert sim.message_text(msg) == "done"
    assert [v["elements"][0]["content"] for v in msg.versions] == [
        "thinking…",
        "step 1",
        "step 2",
        "done",
    ]
    assert len(msg.version_times) == 4
    assert msg.updated


async def test_patch_errors(sim, api: Api):
    _, text_msg = await api.create()
    status, body = await api.call(
        "PATCH", f"{MESSAGES}/{text_msg['data']['message_id']}", {"content": json.dumps(CARD)}
    )
    assert (status, body["code"]) == (400, 230001)  # only cards can be patched
    status, body = await api.call("PATCH", f"{MESSAGES}/om_missing", {"content": json.dumps(CARD)})
    assert (status, body["code"]) == (400, 230001)
    user_msg = await sim.push_message(text="mine")
    status, body = await api.call("PATCH", f"{MESSAGES}/{user_msg}", {"content": json.dumps(CARD)})
    assert (status, body["code"]) == (400, 230012)
    unshared = {"elements": [{"tag": "markdown", "content": "x"}]}
    _, card_msg = await api.create(msg_type="interactive", content=unshared)
    status, body = await api.call(
        "PATCH", f"{MESSAGES}/{card_msg['data']['message_id']}", {"content": json.dumps(CARD)}
    )
    assert (status, body["code"]) == (400, 230099)  # update_multi was not set when sent
    v2 = {"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "v2"}]}}
    _, v2_msg = await api.create(msg_type="interactive", content=v2)
    status, body = await api.call(
        "PATCH", f"{MESSAGES}/{v2_msg['data']['message_id']}", {"content": json.dumps(v2)}
    )
    assert (status, body["code"]) == (200, 0)  # 2.0 cards are always shared


async def test_uuid_makes_create_and_reply_idempotent(sim, api: Api):
    first = await api.create(uuid="u-1", content={"text": "once"})
    second = await api.create(uuid="u-1", content={"text": "once"})
    assert first[1]["data"]["message_id"] == second[1]["data"]["message_id"]
    parent = await sim.push_message(text="q")
    r1 = await api.reply(parent, {"text": "a"}, uuid="u-2")
    r2 = await api.reply(parent, {"text": "a"}, uuid="u-2")
    assert r1[1]["data"]["message_id"] == r2[1]["data"]["message_id"]
    assert len(sim.messages) == 2
    await api.create(uuid="u-3")
    assert len(sim.messages) == 3


# -- reactions ----------------------------------------------------------------------------


async def test_reactions_add_and_remove(sim, api: Api):
    parent = await sim.push_message(text="react to me")
    path = f"{MESSAGES}/{parent}/reactions"
    status, body = await api.call("POST", path, {"reaction_type": {"emoji_type": "Typing"}})
    assert (status, body["code"]) == (200, 0)
    data = body["data"]
    assert data["reaction_type"] == {"emoji_type": "Typing"}
    assert data["operator"]["operator_type"] == "app"
    [live] = sim.live_reactions(parent)
    assert live.reaction_id == data["reaction_id"] and live.emoji_type == "Typing"

    status, body = await api.call("DELETE", f"{path}/{data['reaction_id']}")
    assert (status, body["code"]) == (200, 0)
    assert sim.live_reactions(parent) == []
    assert len(sim.reactions) == 1 and not sim.reactions[0].live

    status, body = await api.call("DELETE", f"{path}/{data['reaction_id']}")
    assert (status, body["code"]) == (400, 231011)
    status, body = await api.call("POST", path, {"reaction_type": {"emoji_type": ""}})
    assert (status, body["code"]) == (400, 231001)
    status, body = await api.call(
        "POST", f"{MESSAGES}/om_missing/reactions", {"reaction_type": {"emoji_type": "OK"}}
    )
    assert (status, body["code"]) == (400, 231003)


# -- faults, records, waiting ---------------------------------------------------------------


async def test_fail_next_rate_limit_with_reset_header(sim, api: Api):
    rule = sim.fail_next(
        "POST", r"/messages$", status=429, headers={"x-ogw-ratelimit-reset": "1"}, count=2
    )
    for _ in range(2):
        async with api.http.post(
            sim.base_url + MESSAGES,
            params={"receive_id_type": "chat_id"},
            json={"receive_id": "oc_x", "msg_type": "text", "content": '{"text":"x"}'},
            headers={"Authorization": f"Bearer {api.token}"},
        ) as resp:
            assert resp.status == 429
            assert resp.headers["x-ogw-ratelimit-reset"] == "1"
            assert (await resp.json())["code"] == 99991400
    assert rule.hits == 2
    status, body = await api.create()
    assert (status, body["code"]) == (200, 0)
    assert [r.status for r in sim.requests if r.path == MESSAGES] == [429, 429, 200]
    assert [r.code for r in sim.requests if r.path == MESSAGES] == [99991400, 99991400, 0]


async def test_fail_next_500_with_a_non_json_body(sim, api: Api):
    sim.fail_next("PATCH", "/messages/", status=500, body="<html>upstream error</html>")
    status, body = await api.call("PATCH", f"{MESSAGES}/om_any", {"content": "{}"})
    assert status == 500
    assert body == "<html>upstream error</html>"
    assert sim.requests[-1].code is None


async def test_rate_limits_when_enabled(http):
    async with FeishuSimulator(rate_limits=True) as sim:
        async with http.post(
            sim.base_url + TOKEN_PATH,
            json={"app_id": sim.options.app_id, "app_secret": sim.options.app_secret},
        ) as resp:
            token = (await resp.json())["tenant_access_token"]
        api = Api(sim, http, token)
        _, created = await api.create(msg_type="interactive", content=CARD)
        path = f"{MESSAGES}/{created['data']['message_id']}"
        codes = []
        for _ in range(6):
            _, body = await api.call("PATCH", path, {"content": json.dumps(CARD)})
            codes.append(body["code"])
        assert codes[:5] == [0] * 5
        assert codes[5] == 230020


async def test_wait_for_wakes_on_changes_without_polling(sim, api: Api):
    parent = await sim.push_message(text="q")
    waiter = asyncio.create_task(sim.wait_for(lambda: sim.replies_to(parent)))
    await asyncio.sleep(0)
    assert not waiter.done()
    await api.reply(parent, {"text": "a"})
    [reply] = await asyncio.wait_for(waiter, 5)
    assert sim.message_text(reply) == "a"
    with pytest.raises(TimeoutError):
        await sim.wait_for(lambda: False, timeout=0.05)
