"""The playground's parts on their own: the demo model, credentials, ack decoding, the view."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path

import aiohttp
import pytest
from loguru import logger

from feishu_bot.playground import PlaygroundConfig
from feishu_bot.playground.cli import serve
from feishu_bot.playground.credentials import claude_credentials
from feishu_bot.playground.features import card_action_response
from feishu_bot.playground.offline_api import OFFLINE_LABEL, OfflineApi, plan_answer
from feishu_bot.playground.runner import find_claude_bin
from feishu_bot.playground.view import ChatView
from feishu_bot.simulator import FeishuSimulator


def _user(text: str) -> dict[str, object]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def test_plan_echo_is_labelled() -> None:
    answer = plan_answer([_user("<system-reminder>x</system-reminder>"), _user("hi there")])
    assert answer.text.startswith(f"*{OFFLINE_LABEL}*")
    assert "You said: hi there" in answer.text
    assert answer.bash_command is None


def test_plan_tool_call_then_result() -> None:
    ask = plan_answer([_user("run: touch a.txt")])
    assert ask.bash_command == "touch a.txt"
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "done"}],
    }
    after = plan_answer([_user("run: touch a.txt"), {"role": "assistant", "content": []}, result])
    assert after.bash_command is None
    assert "The command printed:" in after.text and "done" in after.text
    denied = {**result, "content": [{**result["content"][0], "is_error": True}]}  # type: ignore[index]
    assert "refused or failed" in plan_answer([denied]).text


def test_plan_send_file_asks_for_the_bots_tool() -> None:
    answer = plan_answer([_user("send: out/plot.png")])
    assert answer.tool_call == (
        "mcp__feishu__send_file",
        {"path": "out/plot.png", "caption": "out/plot.png, sent by the offline demo"},
    )


def test_plan_notices_images() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    note = {"type": "text", "text": "[Image: source: /tmp/x/1.png]"}
    asked = {"role": "user", "content": [{"type": "text", "text": "what is this"}, image, note]}
    env = {"role": "system", "content": [{"type": "text", "text": "# Environment"}]}
    answer = plan_answer([asked, env])  # the CLI may put a system entry last
    assert "I received 1 image(s) (image/png). You said: what is this" in answer.text


def test_plan_slow_is_slow() -> None:
    answer = plan_answer([_user("be SLOW please")])
    assert answer.word_delay >= 0.5 and "word120" in answer.text


async def test_offline_api_streams_sse() -> None:
    async with OfflineApi() as api, aiohttp.ClientSession() as session:
        body = {"model": "m", "stream": True, "messages": [_user("one two three")]}
        async with session.post(api.base_url + "/v1/messages?beta=true", json=body) as resp:
            raw = (await resp.read()).decode()
    events = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    deltas = [
        json.loads(line[6:])["delta"]["text"]
        for line in raw.splitlines()
        if line.startswith("data: ") and '"text_delta"' in line
    ]
    assert len(deltas) > 5  # word by word
    assert "".join(deltas).endswith("to try Stop.") and "You said: one two three" in "".join(deltas)
    assert api.requests == 1


def test_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert claude_credentials({"HOME": str(home)}) is None
    assert claude_credentials({"HOME": str(home), "ANTHROPIC_API_KEY": "sk"}) == "ANTHROPIC_API_KEY"
    assert claude_credentials({"HOME": str(home), "ANTHROPIC_API_KEY": " "}) is None
    (home / ".claude.json").write_text(json.dumps({"primaryApiKey": "sk"}))
    assert "CLI API key" in str(claude_credentials({"HOME": str(home)}))
    (home / ".claude").mkdir()
    (home / ".claude" / ".credentials.json").write_text("{}")
    assert "CLI login" in str(claude_credentials({"HOME": str(home)}))
    other = tmp_path / "cfg"
    other.mkdir()
    found = claude_credentials({"HOME": str(tmp_path / "nohome"), "CLAUDE_CONFIG_DIR": str(other)})
    assert found is None


def test_card_action_response() -> None:
    data = base64.b64encode(json.dumps({"toast": {"type": "info", "content": "ok"}}).encode())
    assert card_action_response(200, {"code": 200, "data": data.decode()}) == {
        "toast": {"type": "info", "content": "ok"}
    }
    assert card_action_response(200, {"code": 200}) == {}
    assert "error" in card_action_response(500, {"code": 500})


def test_find_claude_bin_prefers_the_pinned_cli() -> None:
    assert find_claude_bin("/opt/claude") == "/opt/claude"
    found = find_claude_bin("claude")
    assert found == "claude" or found.endswith("node_modules/.bin/claude")


async def _auth(http: aiohttp.ClientSession, sim: FeishuSimulator) -> dict[str, str]:
    async with http.post(
        "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": sim.options.app_id, "app_secret": sim.options.app_secret},
    ) as resp:
        return {"Authorization": f"Bearer {(await resp.json())['tenant_access_token']}"}


async def test_chat_view_follows_replies_patches_and_reactions(sim: FeishuSimulator) -> None:
    """What the page is sent, driven through the simulator's REST API as the bot would."""
    view = ChatView(sim)
    user_id = await sim.push_message(
        chat_id="oc_playground_group", chat_type="group", text="hi", mention_bot=True
    )
    first = {i["id"]: i for i in view.changed()}
    assert first[user_id]["chat"] == "group" and first[user_id]["text"] == "@ClaudeBot hi"
    assert view.changed() == []  # nothing new, nothing sent

    card = {
        "config": {"update_multi": True},
        "header": {"template": "blue", "title": {"tag": "plain_text", "content": "t"}},
        "elements": [{"tag": "markdown", "content": "part"}],
    }
    async with aiohttp.ClientSession(base_url=sim.base_url) as http:
        auth = await _auth(http, sim)
        async with http.post(
            f"/open-apis/im/v1/messages/{user_id}/reactions",
            json={"reaction_type": {"emoji_type": "OnIt"}},
            headers=auth,
        ) as resp:
            reaction_id = (await resp.json())["data"]["reaction_id"]
        body = {"msg_type": "interactive", "content": json.dumps(card)}
        async with http.post(
            f"/open-apis/im/v1/messages/{user_id}/reply", json=body, headers=auth
        ) as resp:
            reply_id = (await resp.json())["data"]["message_id"]
        card["elements"][0]["content"] = "part and the rest"  # type: ignore[index]
        async with http.patch(
            f"/open-apis/im/v1/messages/{reply_id}",
            json={"content": json.dumps(card)},
            headers=auth,
        ) as resp:
            assert (await resp.json())["code"] == 0
        async with http.delete(
            f"/open-apis/im/v1/messages/{user_id}/reactions/{reaction_id}", headers=auth
        ) as resp:
            assert (await resp.json())["code"] == 0

    items = {i["id"]: i for i in view.changed()}
    reply = items[reply_id]
    assert reply["from"] == "bot" and reply["reply_to"] == user_id and reply["chat"] == "group"
    assert reply["version"] == 2 and reply["text"] == "part and the rest"
    assert reply["content"]["header"]["template"] == "blue"
    timings = items[user_id]["timings"]
    assert items[user_id]["reactions"] == [{"emoji": "OnIt", "live": False}]
    assert timings["updates"] == 1
    assert 0 <= timings["first_reply"] <= timings["last_update"] <= timings["done"]


async def test_chat_view_shows_cardkit_cards_as_they_stream(sim: FeishuSimulator) -> None:
    view = ChatView(sim)
    user_id = await sim.push_message(chat_id="oc_playground_p2p", text="stream please")
    card = {
        "schema": "2.0",
        "config": {"streaming_mode": True},
        "header": {"template": "blue", "title": {"tag": "plain_text", "content": "Working"}},
        "body": {"elements": [{"tag": "markdown", "content": "…", "element_id": "answer"}]},
    }
    base = "/open-apis/cardkit/v1/cards"
    async with aiohttp.ClientSession(base_url=sim.base_url) as http:
        auth = await _auth(http, sim)
        body = {"type": "card_json", "data": json.dumps(card)}
        async with http.post(base, json=body, headers=auth) as resp:
            card_id = (await resp.json())["data"]["card_id"]
        content = {"type": "card", "data": {"card_id": card_id}}
        body = {"msg_type": "interactive", "content": json.dumps(content)}
        async with http.post(
            f"/open-apis/im/v1/messages/{user_id}/reply", json=body, headers=auth
        ) as resp:
            reply_id = (await resp.json())["data"]["message_id"]
        shown = {i["id"]: i for i in view.changed()}[reply_id]
        assert shown["content"]["_streaming"] is True and shown["text"] == "…"

        for sequence, text in enumerate(("Hello", "Hello world"), start=1):
            async with http.put(
                f"{base}/{card_id}/elements/answer/content",
                json={"content": text, "sequence": sequence, "uuid": f"u{sequence}"},
                headers=auth,
            ) as resp:
                assert (await resp.json())["code"] == 0, await resp.text()
        streamed = {i["id"]: i for i in view.changed()}[reply_id]
        assert streamed["text"] == "Hello world" and streamed["version"] > shown["version"]

        settings = {"config": {"streaming_mode": False}}
        async with http.patch(
            f"{base}/{card_id}/settings",
            json={"settings": json.dumps(settings), "sequence": 3, "uuid": "u3"},
            headers=auth,
        ) as resp:
            assert (await resp.json())["code"] == 0, await resp.text()
    final = {i["id"]: i for i in view.changed()}[reply_id]
    assert "_streaming" not in final["content"]
    assert final["content"]["schema"] == "2.0"
    assert {i["id"]: i for i in view.items()}[user_id]["timings"]["updates"] >= 2


async def test_cli_exit_codes_for_a_busy_port_and_a_missing_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = PlaygroundConfig(
            data_dir=tmp_path / "pg", port=busy.getsockname()[1], offline=True, env_file=None
        )
        assert await asyncio.to_thread(serve, config) == 2
    assert "is in use; pass --port N or set PLAYGROUND_PORT" in capsys.readouterr().err

    config = PlaygroundConfig(
        data_dir=tmp_path / "pg",
        port=0,
        offline=True,
        env_file=None,
        overrides={"CLAUDE_BIN": str(tmp_path / "no-claude")},
    )
    assert await asyncio.to_thread(serve, config) == 2
    assert "CLAUDE_BIN" in capsys.readouterr().err
    logger.remove()
