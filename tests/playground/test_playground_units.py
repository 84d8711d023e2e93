"""The playground's pure parts: the demo model's plan, credential detection, ack decoding."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp

from feishu_bot.playground.credentials import claude_credentials
from feishu_bot.playground.features import card_action_response
from feishu_bot.playground.offline_api import OFFLINE_LABEL, OfflineApi, plan_answer
from feishu_bot.playground.runner import find_claude_bin


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
    assert "was not run" in plan_answer([denied]).text


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
