"""lark_sdk's own event dispatcher (with ws_session's envelopes) against the SDK's, payload by
payload.

The lean load replaced lark_oapi's ``EventDispatcherHandler`` (whose module imports every API's
event processors) with `EventDispatcher`. What the host sees must not change: the same
envelopes for the same payloads, the same answer on a card callback's ack, and an exception
(so a 500 ack) in the same cases. A fresh interpreter imports the whole SDK as the reference
and feeds both the same payloads (the parent process stays lean).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from feishu_bot.simulator.envelopes import build_envelope, build_message_event

ROOT = Path(__file__).resolve().parents[2]

PARITY = r"""
import json, sys
import lark_oapi as lark  # the reference: the whole SDK
from feishu_bot.feishu import lark_sdk as ws
from feishu_bot.feishu.ws_session import _envelope

cases = json.loads(sys.stdin.read())
sdk = ws.load_sdk()

def run(kind, payload, answer):
    seen = []
    def on_event(data):
        seen.append(_envelope(data))
        return {"dropped": True}  # an event handler's return value never reaches the ack
    def on_card(data):
        seen.append(_envelope(data))
        if answer == "raise":
            raise RuntimeError("host failed")
        return answer
    if kind == "sdk":
        builder = lark.EventDispatcherHandler.builder("", "")
        builder.register_p2_customized_event("im.message.receive_v1", on_event)
        builder.register_p2_card_action_trigger(on_card)
        handler = builder.build()
    else:
        handler = ws.EventDispatcher(
            sdk,
            events={"p2.im.message.receive_v1": on_event},
            callbacks={"p2.card.action.trigger": (sdk.card_action_trigger, on_card)},
        )
    try:
        result = handler._do_without_validation(payload.encode("utf-8", "surrogateescape"))
    except Exception as exc:
        return {"seen": seen, "raised": str(exc)}
    # What the ws client puts on the ack: JSON.marshal of the return value.
    return {"seen": seen, "ack_data": None if result is None else lark.JSON.marshal(result)}

out = []
for case in cases:
    ref = run("sdk", case["payload"], case["answer"])
    ours = run("ours", case["payload"], case["answer"])
    out.append({"name": case["name"], "sdk": ref, "ours": ours})
print(json.dumps(out))
"""


def _envelope(event_type: str, event: dict[str, Any], **header: Any) -> dict[str, Any]:
    env = build_envelope(event_type, event, app_id="cli_a", tenant_key="tk", token="vt")
    env["header"].update(header)
    return env


def _cases() -> list[dict[str, Any]]:
    message = build_message_event(
        message_id="om_1",
        chat_id="oc_1",
        chat_type="group",
        sender_open_id="ou_1",
        msg_type="text",
        content={"text": "hi"},
        tenant_key="tk",
    )
    card_event = {
        "operator": {"tenant_key": "tk", "open_id": "ou_1", "user_id": None},
        "token": "c-1",
        "action": {
            "value": {"op": "stop", "turn": {"id": "t1", "sig": None}, "n": None},
            "tag": "button",
            "form_value": None,
            "unknown_action_field": 1,
        },
        "host": "im_message",
        "context": {"open_message_id": "om_1", "open_chat_id": "oc_1", "url": None},
        "unknown_event_field": {"x": 1},
    }
    card = _envelope("card.action.trigger", card_event, resource_id="r1")
    toast = {"toast": {"type": "info", "content": "停止中"}, "card": None}

    def case(name: str, payload: Any, answer: Any = None) -> dict[str, Any]:
        text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        return {"name": name, "payload": text, "answer": answer}

    return [
        case("message", _envelope("im.message.receive_v1", message)),
        case(
            "message with an unknown header field",
            _envelope("im.message.receive_v1", message, resource_id="r1", event_id=None),
        ),
        case("card action answered", card, toast),
        case("card action answered with nothing", card, None),
        case("card action whose host raises", card, "raise"),
        case("unregistered event type", _envelope("im.chat.member.bot.added_v1", {})),
        case("v1 event", {"uuid": "u1", "token": "t", "ts": "1", "event": {"type": "message"}}),
        case("schema without a header", {"schema": "2.0", "event": {}}),
        case("neither schema nor uuid", {"event": {"type": "message"}}),
        case("not JSON", "{"),
        case("JSON but not an object", "[1, 2]"),
        case("not UTF-8", "\udcff\udcfe"),
    ]


def test_our_dispatcher_hands_over_and_answers_exactly_as_the_sdks() -> None:
    cases = _cases()
    done = subprocess.run(
        [sys.executable, "-c", PARITY],
        input=json.dumps(cases),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    for r in results:
        assert r["ours"] == r["sdk"], r["name"]
    by_name = {r["name"]: r["ours"] for r in results}
    # The comparisons above mean something: each kind of outcome occurred.
    assert by_name["message"]["seen"][0]["event"]["message"]["message_id"] == "om_1"
    assert by_name["message"]["ack_data"] is None
    assert json.loads(by_name["card action answered"]["ack_data"])["toast"]["type"] == "info"
    assert "unknown_event_field" not in by_name["card action answered"]["seen"][0]["event"]
    assert by_name["unregistered event type"]["raised"] == (
        "processor not found, type: im.chat.member.bot.added_v1"
    )
    assert "raised" in by_name["card action whose host raises"]
    assert "raised" in by_name["not UTF-8"]
