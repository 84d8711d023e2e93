"""Fuzz (#10): random, mutated and truncated events thrown at a running bot through the real
lark_oapi client; afterwards the bot still answers a normal message.

A seeded generator (fixed cases, same every run) builds each payload from a real
im.message.receive_v1 envelope: cut short at a random byte, a value somewhere replaced by
random JSON or a key removed, its content string mutated, random JSON instead of an envelope,
bytes that are not UTF-8. Payloads that are not a JSON envelope go out as raw frames
(`WsHub.push_raw`); the rest as ordinary pushes. Every payload is sent to the p2p chat (no
mention needed) or to a group with the bot mentioned, so the parser, not the filter, meets it.
"""

from __future__ import annotations

import json
import random
from typing import Any

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.records import Delivery, UserMessage
from tests.e2e.conftest import StartBot, final_text
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.json_fuzz import json_paths

SEED = 20261201
CASES = 120
KEYS = ["message", "content", "text", "chat_id", "message_id", "sender", "mentions", "header"]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 7, 2**63, 10**30, 1.5, float("inf"), float("nan")])
    if kind in (3, 4, 5):
        return rng.choice(["", "x", "\ud800", "a\x00b", "@_user_1", "text", "p2p", "y" * 3000])
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice([*KEYS, "k", ""]): random_json(rng, depth + 1) for _ in range(rng.randrange(4))
    }


def real_envelope(sim: FeishuSimulator, n: int, rng: random.Random) -> dict[str, Any]:
    group = rng.random() < 0.5
    mentions = []
    text = f"fuzz {n}"
    if group:
        mentions = [
            {
                "key": "@_user_1",
                "id": {"open_id": sim.options.bot_open_id, "union_id": "on_bot"},
                "name": sim.options.bot_name,
                "tenant_key": sim.options.tenant_key,
            }
        ]
        text = f"@_user_1 fuzz {n}"
    message: dict[str, Any] = {
        "message_id": f"om_fuzz_{n}",
        "create_time": "1764590000000",
        "chat_id": "oc_fuzz_group" if group else "oc_fuzz_p2p",
        "chat_type": "group" if group else "p2p",
        "message_type": rng.choice(["text", "text", "post", "image", "file"]),
        "content": json.dumps({"text": text}),
        "mentions": mentions,
    }
    if message["message_type"] == "post":
        body = {"title": "t", "content": [[{"tag": "text", "text": text}]]}
        message["content"] = json.dumps({"zh_cn": body})
    elif message["message_type"] == "image":
        message["content"] = json.dumps({"image_key": f"img_fuzz_{n}"})
    elif message["message_type"] == "file":
        message["content"] = json.dumps({"file_key": f"file_fuzz_{n}", "file_name": "a.txt"})
    return {
        "schema": "2.0",
        "header": {
            "event_id": f"ev_fuzz_{n}",
            "event_type": "im.message.receive_v1",
            "create_time": "1764590000000",
            "token": "",
            "app_id": sim.options.app_id,
            "tenant_key": sim.options.tenant_key,
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": "ou_fuzz_user", "union_id": "on_u", "user_id": "u"},
                "sender_type": "user",
                "tenant_key": sim.options.tenant_key,
            },
            "message": message,
        },
    }


def mutate(rng: random.Random, value: Any) -> Any:
    path = rng.choice(json_paths(value))
    if not path:
        return random_json(rng)
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and rng.random() < 0.4:
        del parent[path[-1]]
    else:
        parent[path[-1]] = random_json(rng)
    return value


def fuzz_payload(sim: FeishuSimulator, n: int, rng: random.Random) -> dict[str, Any] | bytes:
    """Case `n`: its real envelope (see `real_envelope`) broken one way: a dict or raw bytes."""
    env = real_envelope(sim, n, rng)
    how = rng.choice(["cut", "cut", "mutate", "mutate", "content", "json", "bytes"])
    if how == "cut":
        raw = json.dumps(env, ensure_ascii=False).encode()
        return raw[: rng.randrange(len(raw))]
    if how == "mutate":
        return mutate(rng, env)
    if how == "content":
        message = env["event"]["message"]
        raw = message["content"]
        if rng.random() < 0.5:
            message["content"] = raw[: rng.randrange(len(raw) + 1)]
        else:
            message["content"] = json.dumps(mutate(rng, json.loads(raw)))
        return env
    if how == "json":
        return json.dumps(random_json(rng)).encode()
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))


async def push(sim: FeishuSimulator, payload: dict[str, Any] | bytes) -> Delivery:
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()  # escapes lone surrogates, as Feishu would
    return await sim.hub.push_raw(payload)


def known_to_the_platform(sim: FeishuSimulator, env: dict[str, Any]) -> None:
    """Feishu knows every message its events name, so the bot's replies to them land."""
    message = env["event"]["message"]
    sim.records.user_messages[message["message_id"]] = UserMessage(
        message_id=message["message_id"],
        event_id=env["header"]["event_id"],
        chat_id=message["chat_id"],
        chat_type=message["chat_type"],
        sender_open_id="ou_fuzz_user",
        msg_type=message["message_type"],
        content={},
    )


async def test_fuzzed_events_then_a_normal_message_is_answered(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot(fake_cli=True)
    rng = random.Random(SEED)
    for n in range(CASES):
        state = rng.getstate()
        known_to_the_platform(sim, real_envelope(sim, n, rng))
        rng.setstate(state)  # the case starts from the same envelope
        await push(sim, fuzz_payload(sim, n, rng))
    # Events are handed to the bot one at a time, in order: once this one is answered, every
    # fuzzed event before it has been through the SDK, the gateway and the parser.
    ok = await sim.push_message(text="still there?")
    await final_text(sim, ok, contains="echo: still there?", timeout=60)
    assert not running.task.done()
    assert running.bot.dispatcher.counters.malformed >= 10  # the parser met the fuzz
    log = running.log_text()
    # The bot's own code never raised on an event (it would be acked 500 and come back forever)
    assert "on_event raised" not in log
    assert "unexpected error while routing" not in log
