"""GET /healthz and GET /metrics of a running `feishu-bot run` (HEALTH_PORT set)."""

from __future__ import annotations

import signal
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feishu_bot.simulator import FeishuSimulator
from tests.ops.conftest import BotProcess, StartBot, free_port, replies_text

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Subprocess bots start in ~2 s on an idle box and far slower on a loaded one.
pytestmark = pytest.mark.timeout(300)


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        return resp.status, await resp.json()


async def metrics(port: int) -> Samples:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_healthz_and_metrics_follow_the_bot(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    port = free_port()
    bot: BotProcess = await start_bot(
        HEALTH_PORT=port, CLAUDE_MAX_CONCURRENT=1, CLAUDE_MAX_RETRIES=1, SHUTDOWN_GRACE=0
    )
    assert bot.find(rf"health endpoint on http://127\.0\.0\.1:{port}/healthz") is not None
    # liveness on the health line: the age of Feishu's last frame, no successful turn yet
    await bot.wait_line(r"health: .* ws up .* last-frame \d+s last-ok-turn never alerts none$")
    status, body = await healthz(port)
    assert status == 200, body
    assert body["healthy"] is True and body["stopping"] is False
    websocket = body["websocket"]
    assert (websocket["connected"], websocket["reconnects"]) == (True, 0)
    assert 0 <= websocket["last_frame_age_s"] < 60  # the connection's first frames
    assert body["database"] == {"ok": True}
    assert (body["active"], body["max_concurrent"], body["queued"]) == (0, 1, 0)
    assert body["uptime_s"] >= 0
    assert body["last_ok_turn_age_s"] is None and body["alerts"] == []

    # Traffic that moves every number: an answer, a redelivery, a stale session, a retry.
    first = await sim.push_message(chat_id="oc_m1", text="hello metrics")
    await replies_text(sim, first, contains="echo: hello metrics", finished=True)
    await sim.redeliver(sim.user_messages[first].event_id)
    await bot.wait_line(r"duplicate delivery dropped")
    stale = await sim.push_message(chat_id="oc_m1", text="[[fake:stale]] resume me")
    await replies_text(sim, stale, contains="echo: [[fake:stale]] resume me", finished=True)
    # "turn N done" is logged after the turn's metrics were recorded.
    await bot.wait_line(r"turn \d+ done", start=(await bot.wait_line(r"turn \d+ done")) + 1)
    crash = await sim.push_message(chat_id="oc_m2", text="[[fake:crash]] boom")
    await replies_text(sim, crash, contains="failed after 2 attempts")
    hung = await sim.push_message(chat_id="oc_m3", text="[[fake:hang]] busy")
    await replies_text(sim, hung, contains="working")
    waiting = await sim.push_message(chat_id="oc_m4", text="waiting for the slot")
    await replies_text(sim, waiting, contains="queued")

    m = await metrics(port)
    assert value(m, "feishu_bot_turns_total", outcome="ok") == 2
    assert value(m, "feishu_bot_turns_total", outcome="failed") == 1
    assert value(m, "feishu_bot_claude_retries_total") == 1
    assert value(m, "feishu_bot_stale_sessions_cleared_total") == 1
    assert value(m, "feishu_bot_duplicate_deliveries_dropped_total") == 1
    assert value(m, "feishu_bot_turn_duration_seconds_count") == 2
    assert value(m, "feishu_bot_queue_wait_seconds_count") >= 3  # every turn that ran
    assert value(m, "feishu_bot_queue_wait_seconds_bucket", le="+Inf") >= 3
    assert value(m, "feishu_bot_active_turns") == 1
    assert value(m, "feishu_bot_queued_turns") == 1
    assert value(m, "feishu_bot_max_concurrent") == 1
    assert value(m, "feishu_bot_websocket_connected") == 1
    assert value(m, "feishu_bot_websocket_reconnects_total") == 0
    # warm sessions: one busy process and no idle one at the cap of 1 (each new conversation
    # evicted the idle process of the one before)
    assert value(m, "feishu_bot_claude_processes", state="busy") == 1
    assert value(m, "feishu_bot_claude_processes", state="idle") == 0
    assert value(m, "feishu_bot_claude_evictions_total") >= 1
    assert value(m, "feishu_bot_claude_cold_starts_total") >= 4
    assert value(m, "feishu_bot_first_text_seconds_count") >= 2
    assert value(m, "feishu_bot_last_ok_turn_timestamp_seconds") > 0
    # the fake CLI reports a running total of $0.0104 (a process's first turn costs that)
    assert value(m, "feishu_bot_cost_usd_total") > 0
    assert value(m, "feishu_bot_websocket_last_frame_timestamp_seconds") > 0
    for condition in ("ws_down", "claude_auth", "turn_failures", "degraded", "queue_full",
                      "disk_low", "sandbox_off"):
        assert (
            "feishu_bot_alert_active", frozenset({("condition", condition)})
        ) in m, condition
        assert value(m, "feishu_bot_alert_active", condition=condition) == 0
    assert value(m, "feishu_bot_disk_free_bytes", directory="CLAUDE_WORKDIR") > 0
    status, body = await healthz(port)
    assert status == 200 and (body["active"], body["queued"]) == (1, 1)
    assert body["last_ok_turn_age_s"] >= 0

    # Feishu goes away and refuses new connections: unhealthy until it is back.
    refuse = sim.fail_next("POST", r"/callback/ws/endpoint$", status=503, count=10**6)
    mark = len(bot.lines)
    assert await sim.drop_connections() == 1
    await bot.wait_line(r"feishu gateway disconnected", start=mark)
    status, body = await healthz(port)
    assert status == 503, body
    assert body["healthy"] is False and body["websocket"]["connected"] is False
    assert body["database"] == {"ok": True}
    assert value(await metrics(port), "feishu_bot_websocket_connected") == 0
    await bot.wait_line(r"connect failed", start=mark)  # logged after the refusal
    assert refuse.hits >= 1
    sim.faults.clear()
    await bot.wait_line(r"feishu gateway reconnected", start=mark, timeout=60)
    status, body = await healthz(port)
    assert status == 200
    assert (body["websocket"]["connected"], body["websocket"]["reconnects"]) == (True, 1)
    assert value(await metrics(port), "feishu_bot_websocket_reconnects_total") == 1

    bot.send(signal.SIGTERM)
    assert await bot.wait_exit(30) == 0
