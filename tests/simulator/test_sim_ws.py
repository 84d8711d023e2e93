"""The simulator's long connection, driven by the real lark_oapi ws client (via FeishuGateway)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from feishu_bot.feishu.gateway import ACKED_EVENT_TYPES
from feishu_bot.simulator import FeishuSimulator

pytestmark = pytest.mark.timeout(90)

OTHER_EVENTS = {
    "im.message.message_read_v1": {
        "reader": {
            "reader_id": {"open_id": "ou_sim_user"},
            "read_time": "1700000000000",
            "tenant_key": "sim_tenant",
        },
        "message_id_list": ["om_x"],
    },
    "im.message.reaction.created_v1": {
        "message_id": "om_x",
        "reaction_type": {"emoji_type": "SMILE"},
        "operator_type": "user",
        "user_id": {"open_id": "ou_sim_user"},
        "action_time": "1700000000000",
    },
    "im.message.reaction.deleted_v1": {
        "message_id": "om_x",
        "reaction_type": {"emoji_type": "SMILE"},
        "operator_type": "user",
        "user_id": {"open_id": "ou_sim_user"},
        "action_time": "1700000000000",
    },
    "im.chat.member.bot.added_v1": {
        "chat_id": "oc_x",
        "operator_id": {"open_id": "ou_sim_user"},
        "external": False,
        "operator_tenant_key": "sim_tenant",
        "name": "team",
    },
    "im.chat.member.bot.deleted_v1": {
        "chat_id": "oc_x",
        "operator_id": {"open_id": "ou_sim_user"},
        "external": False,
        "operator_tenant_key": "sim_tenant",
        "name": "team",
    },
    "im.chat.access_event.bot_p2p_chat_entered_v1": {
        "chat_id": "oc_x",
        "operator_id": {"open_id": "ou_sim_user"},
        "last_message_id": "om_x",
        "last_message_create_time": "1700000000000",
    },
}


async def test_text_message_arrives_in_the_feishu_v2_schema(sim: FeishuSimulator, connect):
    _, sink = await connect(sim)
    message_id = await sim.push_message(text="hello there", chat_id="oc_sim_p2p")
    [envelope] = await sink.wait(1)

    user_msg = sim.user_messages[message_id]
    assert envelope["schema"] == "2.0"
    header = envelope["header"]
    assert header["event_id"] == user_msg.event_id
    assert header["event_type"] == "im.message.receive_v1"
    assert header["app_id"] == sim.options.app_id
    assert header["tenant_key"] == sim.options.tenant_key
    assert header["create_time"].isdigit()
    assert header["token"]
    event = envelope["event"]
    assert event["sender"] == {
        "sender_id": {"open_id": "ou_sim_user", "union_id": "on_sim_user", "user_id": "u_sim_user"},
        "sender_type": "user",
        "tenant_key": sim.options.tenant_key,
    }
    msg = event["message"]
    assert msg["message_id"] == message_id
    assert msg["chat_id"] == "oc_sim_p2p"
    assert msg["chat_type"] == "p2p"
    assert msg["message_type"] == "text"
    assert isinstance(msg["content"], str)  # a JSON string, as on the wire
    assert json.loads(msg["content"]) == {"text": "hello there"}
    assert msg["create_time"].isdigit()
    assert "mentions" not in msg and "root_id" not in msg


async def test_group_mention_of_the_bot(sim: FeishuSimulator, connect):
    _, sink = await connect(sim)
    await sim.push_message(text="do it", chat_type="group", mention_bot=True)
    [envelope] = await sink.wait(1)
    msg = envelope["event"]["message"]
    assert msg["chat_id"] == "oc_sim_group"
    assert msg["chat_type"] == "group"
    assert json.loads(msg["content"]) == {"text": "@_user_1 do it"}
    [mention] = msg["mentions"]
    assert mention["key"] == "@_user_1"
    assert mention["id"]["open_id"] == sim.options.bot_open_id
    assert mention["name"] == sim.options.bot_name


async def test_thread_message_carries_root_and_thread(sim: FeishuSimulator, connect):
    _, sink = await connect(sim)
    await sim.push_message(text="in topic", chat_type="group", root_id="om_root", thread_id="omt_1")
    [envelope] = await sink.wait(1)
    msg = envelope["event"]["message"]
    assert (msg["root_id"], msg["parent_id"], msg["thread_id"]) == ("om_root", "om_root", "omt_1")


async def test_fragmented_event_is_reassembled(sim: FeishuSimulator, connect):
    _, sink = await connect(sim)
    text = "long " * 2000
    message_id = await sim.push_message(text=text, fragments=3)
    [envelope] = await sink.wait(1)
    assert json.loads(envelope["event"]["message"]["content"])["text"] == text
    [delivery] = sim.deliveries
    assert delivery.fragments == 3
    ack = await sim.wait_ack(message_id)
    assert ack.code == 200
    assert len(sim.acks) == 1  # one ack for the whole event, not one per fragment


async def test_pings_are_answered_with_pongs_carrying_client_config(connect):
    async with FeishuSimulator(ping_interval=1) as sim:
        gw, sink = await connect(sim)
        conn = sim.connection_log[0]
        # Discovery said PingInterval 1; from now on pongs say 2. Only a pong can teach it 2.
        sim.configure_client(ping_interval=2)
        pongs_before = conn.pongs
        # +2: a pong already being written when the config changed still says 1.
        await sim.wait_for(lambda: conn.pongs >= pongs_before + 2)
        assert sim.pings >= conn.pongs
        # Frames are handled in arrival order: once a later event is delivered, the pong
        # before it has been processed.
        await sim.push_message(text="barrier")
        await sink.wait(1)
        assert gw.ping_interval == 2
        assert gw.last_frame_at is not None


async def test_acks_are_recorded_with_code_200_and_latency(sim: FeishuSimulator, connect):
    await connect(sim)
    ids = [await sim.push_message(text=f"m{i}") for i in range(3)]
    for message_id in ids:
        ack = await sim.wait_ack(message_id)
        assert ack.code == 200
        assert ack.event_id == sim.user_messages[message_id].event_id
        assert 0 <= ack.latency_s < 2.0
        assert ack.biz_rt_ms is not None
    assert all(d.acked for d in sim.deliveries)


@pytest.mark.parametrize("event_type", sorted(OTHER_EVENTS))
async def test_other_bot_events_are_acked_200_not_forwarded(sim, connect, event_type):
    assert event_type in ACKED_EVENT_TYPES
    _, sink = await connect(sim)
    event_id = await sim.push_event(event_type, OTHER_EVENTS[event_type])
    ack = await sim.wait_ack(event_id)
    assert ack.code == 200
    # A message after it arrives, and is the only thing forwarded to on_event.
    await sim.push_message(text="after")
    [envelope] = await sink.wait(1)
    assert envelope["header"]["event_type"] == "im.message.receive_v1"


async def test_other_events_are_forwarded_when_asked(sim: FeishuSimulator, connect):
    event_type = "im.chat.member.bot.added_v1"
    _, sink = await connect(sim, forward_event_types={event_type})
    event_id = await sim.push_event(event_type, OTHER_EVENTS[event_type])
    [envelope] = await sink.wait(1)
    assert envelope["header"]["event_id"] == event_id
    assert envelope["event"] == OTHER_EVENTS[event_type]


async def test_unregistered_event_type_is_acked_500_by_the_sdk(sim: FeishuSimulator, connect):
    await connect(sim)
    event_id = await sim.push_event("contact.user.created_v3", {"object": {}})
    ack = await sim.wait_ack(event_id)
    assert ack.code == 500


async def test_redeliver_pushes_the_identical_envelope_again(sim: FeishuSimulator, connect):
    _, sink = await connect(sim)
    message_id = await sim.push_message(text="once")
    await sink.wait(1)
    event_id = sim.user_messages[message_id].event_id
    delivery = await sim.redeliver(event_id)
    first, second = await sink.wait(2)
    assert first == second
    assert second["event"]["message"]["message_id"] == message_id
    ack = await sim.wait_ack(event_id)
    assert ack.frame_message_id == delivery.frame_message_id
    assert ack.code == 200
    assert len({d.frame_message_id for d in sim.deliveries}) == 2


async def test_event_pushed_before_any_connection_waits_for_one(sim: FeishuSimulator, connect):
    message_id = await sim.push_message(text="early")
    assert sim.deliveries[0].sent_at is None
    _, sink = await connect(sim)
    [envelope] = await sink.wait(1)
    assert envelope["event"]["message"]["message_id"] == message_id


async def test_endpoint_discovery_rejects_bad_credentials(sim: FeishuSimulator, http):
    async with http.post(
        sim.base_url + "/callback/ws/endpoint",
        json={"AppID": sim.options.app_id, "AppSecret": "wrong"},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["code"] == 403  # lark_oapi.ws.const.FORBIDDEN: fatal, no retry


async def test_endpoint_discovery_and_single_use_tickets(sim: FeishuSimulator, http):
    creds = {"AppID": sim.options.app_id, "AppSecret": sim.options.app_secret}
    urls = []
    for _ in range(2):
        async with http.post(sim.base_url + "/callback/ws/endpoint", json=creds) as resp:
            body = await resp.json()
        assert body["code"] == 0
        assert set(body["data"]["ClientConfig"]) == {
            "ReconnectCount",
            "ReconnectInterval",
            "ReconnectNonce",
            "PingInterval",
        }
        urls.append(body["data"]["URL"])
    assert urls[0] != urls[1]
    query = dict(part.split("=") for part in urls[0].split("?")[1].split("&"))
    assert set(query) == {"device_id", "service_id", "access_key", "ticket"}

    async with http.ws_connect(urls[0]) as ws:
        assert not ws.closed
        await sim.wait_connected(1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(urls[0])  # the ticket was used
    assert info.value.headers["handshake-status"] == "514"


async def test_drop_connections_makes_the_sdk_reconnect(sim: FeishuSimulator, connect):
    _, sink = await connect(sim)
    assert await sim.drop_connections() == 1
    assert sim.connections == 0
    await sim.wait_connected(1)
    assert sim.total_connections == 2
    await sim.push_message(text="after the cut")
    await sink.wait(1)
    assert sim.connection_log[0].dropped
