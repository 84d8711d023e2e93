"""Alerts in the admin chat, end to end: the real lark_oapi client against the simulator, the
real pinned CLI against the fake Anthropic API (issue 19)."""

from __future__ import annotations

import re

import pytest

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.records import SentMessage
from tests.e2e.conftest import StartBot, eventually, final_text
from tests.fakes.fake_anthropic import ApiError, FakeAnthropic, Reply

ADMIN = "oc_admin_chat"
REFUSED = ApiError(401, "authentication_error", "invalid x-api-key")


def admin_cards(sim: FeishuSimulator) -> list[SentMessage]:
    return [m for m in sim.messages if m.chat_id == ADMIN]


async def test_turns_failing_with_401_make_one_alert_and_one_cleared_card(
    sim: FeishuSimulator,
    anthropic: FakeAnthropic,
    start_bot: StartBot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The CLI's own retries on, as in production: each turn must still fail at once.
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "10")
    anthropic.default = REFUSED
    running = await start_bot(FEISHU_ADMIN_CHAT=ADMIN)
    for i in range(4):
        mid = await sim.push_message(text=f"hello {i}")
        text = await final_text(sim, mid, contains="not logged in", timeout=60)
        assert "Claude is not logged in" in text
    assert len(anthropic.message_requests) == 4  # one request per turn: no retries waited out
    assert [a["condition"] for a in running.bot.alerts.active()] == ["claude_auth"]

    anthropic.default = Reply()
    mid = await sim.push_message(text="and now?")
    await final_text(sim, mid, contains="echo: and now?")
    await sim.wait_for(lambda: len(admin_cards(sim)) >= 2, timeout=30)
    cards = admin_cards(sim)
    texts = [sim.message_text(m) for m in cards]
    assert len(cards) == 2, texts  # one alert for four failed turns, one "cleared"
    assert all(m.msg_type == "interactive" for m in cards)
    assert texts[0].startswith("**claude_auth** since ")
    assert "Claude cannot authenticate" in cards[0].rendered["header"]["title"]["content"]
    assert "not logged in" in texts[0] and "What to do" in texts[0]
    assert texts[1].startswith("**claude_auth** cleared at ")
    assert "4 turns had failed" in texts[1]
    # the failed turns did not make a second alert (turn_failures is suppressed by claude_auth)
    assert "turn_failures" not in "\n".join(texts)
    assert running.bot.alerts.active() == []
    sent = [r for r in sim.requests if r.path == "/open-apis/im/v1/messages" and r.status == 200]
    assert {r.query["receive_id_type"] for r in sent} == {"chat_id"}


async def test_a_long_websocket_outage_is_reported_when_the_connection_is_back(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    running = await start_bot(FEISHU_ADMIN_CHAT=ADMIN, ALERT_WS_DOWN_S=1)
    # Discovery refused 5 times (the SDK tries again every second): an outage of ~5 s.
    refused = sim.fail_next("POST", r"/callback/ws/endpoint$", status=503, count=5)
    assert await sim.drop_connections() == 1
    # While down: the condition is active (health, metrics), but no card can be sent.
    await eventually(
        lambda: [a["condition"] for a in running.bot.alerts.active()] == ["ws_down"], timeout=30
    )
    assert admin_cards(sim) == []
    await sim.wait_for(lambda: admin_cards(sim), timeout=60)
    assert refused.hits == 5 and sim.connections == 1
    (card,) = admin_cards(sim)
    text = sim.message_text(card)
    assert text.startswith("**ws_down** · the Feishu long connection was down for ")
    seconds = float(re.search(r"was down for ([\d.]+) s", text).group(1))  # type: ignore[union-attr]
    assert seconds >= 4.0  # at least the 5 refused attempts a second apart, less one
    assert "reconnects so far: 1" in text
    assert running.bot.alerts.active() == []
    # still answering after it
    mid = await sim.push_message(text="back?")
    await final_text(sim, mid, contains="echo: back?")
