"""Graceful shutdown of `feishu-bot run` on SIGTERM/SIGINT, as pm2 and systemd send them."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.ops.conftest import (
    FakeClaudeLog,
    StartBot,
    free_port,
    journal,
    replies_text,
)

INTERRUPTED = "interrupted"

# Subprocess bots start in ~2 s on an idle box and far slower on a loaded one.
pytestmark = pytest.mark.timeout(300)


async def wait_running(db: Path, message_id: str, timeout: float = 60) -> None:
    """The journal says 'running' once the CLI printed something (its state is a file)."""
    async with asyncio.timeout(timeout):
        while journal(db).get(message_id) != "running":  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_sigterm_lets_a_running_turn_finish_and_keeps_later_messages(
    sim: FeishuSimulator, start_bot: StartBot, fake_log: FakeClaudeLog, tmp_path: Path
) -> None:
    bot = await start_bot(SHUTDOWN_GRACE=30)
    db = Path(bot.env["DATABASE_PATH"])
    mid = await sim.push_message(text="[[fake:gate]] finish me")
    await wait_running(db, mid)

    t0 = time.monotonic()
    bot.send(signal.SIGTERM)
    await bot.wait_line(r"shutdown: stopped taking events; 1 running turns get up to 30s")
    # The websocket is closed: a message sent now waits at Feishu for the next start.
    await sim.wait_for(lambda: sim.connections == 0, timeout=60)
    late = await sim.push_message(text="sent while stopping")
    (tmp_path / "home" / "gate").touch()  # let the running turn finish inside the grace
    await replies_text(sim, mid, contains="echo: [[fake:gate]] finish me")
    assert await bot.wait_exit(30) == 0
    stop_s = time.monotonic() - t0
    assert stop_s < 30, f"stop took {stop_s:.1f}s: the bot waited out the grace"
    assert bot.find(r"interrupting") is None
    assert bot.find(r"feishu-bot stopped") is not None
    assert journal(db)[mid] == "done"
    assert late not in journal(db)
    print(f"\ngraceful stop with one turn finishing in the grace: {stop_s:.2f}s")

    again = await start_bot(SHUTDOWN_GRACE=30)
    await replies_text(sim, late, contains="echo: sent while stopping", finished=True)
    t1 = time.monotonic()
    again.send(signal.SIGINT)
    assert await again.wait_exit(30) == 0
    print(f"idle stop: {time.monotonic() - t1:.2f}s")
    assert journal(db) == {mid: "done", late: "done"}
    assert len(fake_log.starts("finish me")) == 1
    assert len(fake_log.starts("sent while stopping")) == 1
    assert len(sim.replies_to(mid)) == 1 and len(sim.replies_to(late)) == 1


async def test_sigterm_interrupts_a_hung_turn_after_the_grace_and_keeps_a_waiting_one(
    sim: FeishuSimulator, start_bot: StartBot, fake_log: FakeClaudeLog
) -> None:
    grace = 2
    port = free_port()
    bot = await start_bot(SHUTDOWN_GRACE=grace, HEALTH_PORT=port, CLAUDE_MAX_CONCURRENT=1)
    db = Path(bot.env["DATABASE_PATH"])
    mid = await sim.push_message(text="[[fake:spawn_child]] stuck job")
    await replies_text(sim, mid, contains="working")
    await fake_log.wait_for(lambda recs: any(r["event"] == "child" for r in recs))
    assert journal(db)[mid] == "running"
    assert len(fake_log.alive()) == 3  # the CLI, its child and a grandchild in its own session
    waiting = await sim.push_message(chat_id="oc_ops_other", text="waiting for a slot")
    await replies_text(sim, waiting, contains="queued")

    t0 = time.monotonic()
    bot.send(signal.SIGTERM)
    await bot.wait_line(r"shutdown: stopped taking events; 1 running turns .* 1 waiting turns kept")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        body = await resp.json()
        assert resp.status == 503
    assert body["stopping"] is True and body["healthy"] is False

    assert await bot.wait_exit(grace + 30) == 0
    stop_s = time.monotonic() - t0
    # A few seconds over the grace: the interrupt (or kill) and teardown.
    assert grace <= stop_s < grace + 10, f"stop took {stop_s:.1f}s with a {grace}s grace"
    text = await replies_text(sim, mid, contains=INTERRUPTED)
    assert "send it again" in text
    assert journal(db)[mid] == "interrupted"
    assert fake_log.alive() == []
    exits = fake_log.records("exit")
    # interrupted over the control protocol (its tool's tree killed by the CLI), then closed
    # with the other processes at shutdown (stdin EOF): no signal needed
    assert [e.get("signal") for e in exits] == [None]
    assert bot.find(r"shutdown: interrupting 1 turns still running") is not None
    print(f"\nstop with a hung turn, grace {grace}s: {stop_s:.2f}s")
    # The waiting turn never started: the user is told it is kept, and it runs after a start.
    await replies_text(sim, waiting, contains="kept and will run when it is back")
    assert journal(db)[waiting] == "queued"
    assert fake_log.starts("waiting for a slot") == []
    again = await start_bot(SHUTDOWN_GRACE=grace)
    await replies_text(sim, waiting, contains="echo: waiting for a slot", finished=True)
    again.send(signal.SIGTERM)
    assert await again.wait_exit(30) == 0
    assert journal(db) == {mid: "interrupted", waiting: "done"}
    assert len(fake_log.starts("waiting for a slot")) == 1


async def test_second_signal_skips_the_grace(
    sim: FeishuSimulator, start_bot: StartBot, fake_log: FakeClaudeLog
) -> None:
    bot = await start_bot(SHUTDOWN_GRACE=120)
    db = Path(bot.env["DATABASE_PATH"])
    mid = await sim.push_message(text="[[fake:hang]] never ends")
    await replies_text(sim, mid, contains="working")
    assert journal(db)[mid] == "running"

    bot.send(signal.SIGTERM)
    await bot.wait_line(r"shutdown: stopped taking events; 1 running turns get up to 120s")
    t1 = time.monotonic()
    bot.send(signal.SIGINT)
    assert await bot.wait_exit(30) == 0
    fast_s = time.monotonic() - t1
    assert fast_s < 10, f"exit took {fast_s:.1f}s after the second signal (grace 120s)"
    assert bot.find(r"second stop signal") is not None
    await replies_text(sim, mid, contains=INTERRUPTED)
    assert journal(db)[mid] == "interrupted"
    assert fake_log.alive() == []
    print(f"\nexit after the second signal: {fast_s:.2f}s")


async def test_sigterm_during_startup_exits_0(sim: FeishuSimulator, start_bot: StartBot) -> None:
    # Feishu refuses the long connection, so the start waits for it; an operator stops the bot.
    sim.fail_next("POST", r"/callback/ws/endpoint$", status=503, count=10**6)
    bot = await start_bot(wait_ready=False)
    await bot.wait_line(r"trying to reconnect|connect failed")
    t0 = time.monotonic()
    bot.send(signal.SIGTERM)
    assert await bot.wait_exit(30) == 0
    print(f"\nstop during startup: {time.monotonic() - t0:.2f}s")
    assert bot.find(r"stop requested during startup: start abandoned") is not None
    assert bot.find(r"feishu-bot ready") is None
