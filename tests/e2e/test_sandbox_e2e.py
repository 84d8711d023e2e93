"""The whole bot with its default CLAUDE_SANDBOX=auto (bubblewrap and socat are installed):
the real CLI's commands run in Claude Code's sandbox, set up from the bot's own settings.

A command that stays in the conversation's directory runs without a card; the bot's database
and the simulator's HTTP port (a service on the host's loopback, like the health endpoint) are
out of reach, with or without ``no_proxy``, and no card is shown for any of it. /status, the
health line and /healthz say the sandbox is on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.cardkit import find_button
from tests.claude.test_sandbox_cli import tool_results
from tests.e2e.conftest import StartBot, final_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, ToolUse

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(180)]


def bash(label: str, command: str) -> ToolUse:
    return ToolUse("Bash", {"command": command, "description": label})


async def test_commands_are_contained_without_cards(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot(CLAUDE_PERMISSION_MODE="default")
    db = Path(running.settings.DATABASE_PATH).resolve()
    code = "-s -m 10 -o /dev/null -w '%{http_code}'"
    anthropic.enqueue(
        bash("inside", "echo made-by-tool > inside.txt && cat inside.txt"),
        bash("database", f"head -c 100 {db} 2>&1; echo"),
        bash("simulator", f"curl {code} {sim.base_url}/; echo ' exit='$?"),
        bash("simulator via proxy",
             f"env -u no_proxy -u NO_PROXY curl {code} {sim.base_url}/; echo ' exit='$?"),
        Reply("tried everything"),
    )
    mid = await sim.push_message(text="try these commands")
    await final_text(sim, mid, contains="tried everything")
    out = tool_results(anthropic.message_requests[-1])
    assert out["inside"] == "made-by-tool"
    made = list(Path(running.settings.CLAUDE_WORKDIR).rglob("inside.txt"))
    assert [p.read_text() for p in made] == ["made-by-tool\n"]
    assert "No such file or directory" in out["database"]
    assert out["simulator"] == "000 exit=7"
    assert out["simulator via proxy"].startswith("403 exit=0")
    assert "deny list" in out["simulator via proxy"]
    versions = [v for r in sim.replies_to(mid) for v in r.versions]
    assert not any(find_button(v, "Allow once") for v in versions), "no card was shown"

    status = await sim.push_message(text="/status")
    text = await final_text(sim, status, contains="uptime")
    assert "sandbox: on: commands write only here" in text
    assert "network without asking: pypi.org, files.pythonhosted.org" in text
    assert running.bot._health_extras()["sandbox"] == "on"
    assert (await running.bot.health_status())["sandbox"] == "on"
    assert "sandbox on:" in running.log_text()


async def test_sandbox_off_keeps_todays_behaviour_and_says_so(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As pm2 or systemd's EnvironmentFile= would: the bot's settings in its environment.
    monkeypatch.setenv("FEISHU_APP_SECRET", sim.options.app_secret)
    monkeypatch.setenv("FEISHU_APP_ID", sim.options.app_id)
    running = await start_bot(CLAUDE_SANDBOX="off", CLAUDE_ALLOWED_TOOLS="Bash")
    status = await sim.push_message(text="/status")
    text = await final_text(sim, status, contains="uptime")
    assert "sandbox: off (CLAUDE_SANDBOX=off)" in text
    assert (await running.bot.health_status())["sandbox"] == "off (CLAUDE_SANDBOX=off)"
    anthropic.enqueue(bash("env", "env | grep -c '^FEISHU_' ; true"), Reply("counted"))
    mid = await sim.push_message(text="count")
    await final_text(sim, mid, contains="counted")
    # No FEISHU_* value reaches a child, sandbox or not.
    assert tool_results(anthropic.message_requests[-1])["env"] == "0"
    assert json.dumps(anthropic.message_requests[-1].body).count(
        running.settings.FEISHU_APP_SECRET.get_secret_value()
    ) == 0


async def test_a_host_not_allowed_asks_on_the_card_and_the_answer_holds(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    """Network by approval: example.com is not in CLAUDE_SANDBOX_DOMAINS, so the command's
    request becomes a "🌐 connect to example.com" block. Deny: the command sees the proxy's
    403. Allow once: the proxy tries the host (offline here: 502, not 403). Always allow: a
    host grant of this conversation, which a new process gets at start (no card)."""
    from tests.e2e.test_cards_e2e import card_with

    code = "-s -m 20 -o /dev/null -w '%{http_code}'"
    curl = f"curl {code} http://example.com/; echo ' exit='$?"
    anthropic.enqueue(
        bash("denied", curl), Reply("after deny"),
        bash("once", curl), Reply("after once"),
        bash("always", curl), Reply("after always"),
        bash("granted", curl), Reply("after grant"),
    )
    await start_bot(CLAUDE_PERMISSION_MODE="default")

    async def turn(text: str, button: str | None, done: str) -> str:
        mid = await sim.push_message(text=text)
        if button is not None:
            card = await card_with(sim, mid, "Deny")
            shown = sim.message_text(sim.message(card))
            assert "Claude wants to connect to example.com" in shown, shown
            await sim.click(card, button)
        return await final_text(sim, mid, contains=done)

    await turn("first", "Deny", "after deny")
    assert tool_results(anthropic.message_requests[-1])["denied"].startswith("403")
    await turn("second", "Allow once", "after once")
    assert tool_results(anthropic.message_requests[-1])["once"].startswith("502")
    # measured: the CLI remembers a host allowed once for the rest of its process, so the
    # bot closes that process after the turn and the next one asks again
    text = await turn("third", "Always allow example.com", "after always")
    assert "always allowed here" in text
    model = await sim.push_message(text="/model default")  # a new process: the grant at start
    await sim.wait_for(lambda: len(sim.replies_to(model)) >= 1, 30)
    mid = await sim.push_message(text="fourth")
    await final_text(sim, mid, contains="after grant")
    assert tool_results(anthropic.message_requests[-1])["granted"].startswith("502")
    versions = [v for r in sim.replies_to(mid) for v in r.versions]
    assert not any(find_button(v, "Deny") for v in versions), "no card for a granted host"
    listing = await sim.push_message(text="/permissions")
    await sim.wait_for(lambda: len(sim.replies_to(listing)) >= 1, 30)
    assert "network: example.com" in sim.message_text(sim.replies_to(listing)[0])
