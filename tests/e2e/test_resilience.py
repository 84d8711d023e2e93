"""Load, lost connections, rate limits, and what the logs must never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import StartBot, eventually, final_text, shown_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply


async def test_acks_stay_fast_while_5_turns_run_and_20_wait(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    running = await start_bot(
        fake_cli=True,
        CLAUDE_MAX_CONCURRENT=5,
        CLAUDE_QUEUE_MAX=20,
        CLAUDE_USER_QUEUE_MAX=0,  # one simulated user sends all 35: the global queue is tested
        SHUTDOWN_GRACE=0,
    )
    launcher = running.bot.launcher
    ids = [
        await sim.push_message(chat_id=f"oc_load_{i}", text=f"[[fake:hang]] job {i}")
        for i in range(25)
    ]
    await eventually(lambda: (s := launcher.stats()).active == 5 and s.queued == 20)
    # at capacity: more events still get acked at once, and the overflow is refused clearly
    extra = [
        await sim.push_message(chat_id=f"oc_more_{i}", text=f"one more {i}") for i in range(10)
    ]
    for mid in ids + extra:
        ack = await sim.wait_ack(mid)
        assert ack.code == 200
        assert ack.latency_s < 1.0, f"ack took {ack.latency_s:.3f}s"
    text = await final_text(sim, extra[0], contains="busy")
    assert "5/5 running, 20 queued" in text
    queued_card = await shown_text(sim, ids[-1], contains="queued")
    assert "position" in queued_card.lower()
    assert launcher.stats().active <= 5


async def test_bot_reconnects_after_the_connection_drops(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    running = await start_bot()
    assert await sim.drop_connections() == 1
    await sim.wait_for(lambda: sim.total_connections >= 2 and sim.connections == 1, timeout=30)
    mid = await sim.push_message(text="still there?")
    await final_text(sim, mid, contains="echo: still there?")
    assert running.bot.gateway.reconnects >= 1


async def test_two_429s_on_the_reply_still_deliver_the_answer(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    await start_bot()
    sim.fail_next(
        "POST",
        r"/reply$",
        status=429,
        code=99991400,
        count=2,
        headers={"x-ogw-ratelimit-reset": "1"},
    )
    mid = await sim.push_message(text="through the rate limit")
    await final_text(sim, mid, contains="echo: through the rate limit")
    assert len(sim.replies_to(mid)) == 1
    limited = [r for r in sim.requests if r.status == 429]
    assert len(limited) == 2


async def test_expired_token_is_refreshed(sim: FeishuSimulator, start_bot: StartBot) -> None:
    await start_bot()
    first = await sim.push_message(text="one")
    await final_text(sim, first, contains="echo: one")
    sim.expire_tokens()
    second = await sim.push_message(text="two")
    await final_text(sim, second, contains="echo: two")


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
async def test_secrets_never_reach_the_logs(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, level: str
) -> None:
    running = await start_bot(LOG_LEVEL=level)
    mid = await sim.push_message(text="hello")
    await final_text(sim, mid, contains="echo: hello")
    await sim.drop_connections()
    await sim.wait_for(lambda: sim.total_connections >= 2 and sim.connections == 1, timeout=30)
    issued_tokens = list(sim.rest._tokens)  # expire_tokens() forgets them
    sim.expire_tokens()
    again = await sim.push_message(text="again")
    await final_text(sim, again, contains="echo: again")
    await running.stop()
    logs = running.log_text()
    assert "connected" in logs.lower()  # the logs are not empty: connects were logged
    tokens = {*issued_tokens, *sim.rest._tokens}
    tickets = set(sim.hub._tickets)
    assert len(tokens) >= 2 and len(tickets) >= 2  # one before and one after the expiry / drop
    secrets = [sim.options.app_secret, *tokens, *tickets]
    for secret in secrets:
        assert secret not in logs, f"secret leaked into logs: {secret[:4]}…"


async def test_a_failed_running_journal_write_stops_the_turn(
    sim: FeishuSimulator,
    anthropic: FakeAnthropic,
    start_bot: StartBot,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (safe controls #15): a failed journal write of 'running' was swallowed, so
    after a crash the turn would run again (its tools twice). The turn is stopped instead,
    before its tool runs, and the user is told."""
    from database.store import SessionStore
    from tests.fakes.fake_anthropic import ToolUse

    real_update = SessionStore.update_turn

    async def failing_update(self: SessionStore, turn_id: int, **fields: object) -> object:
        if fields.get("status") == "running":
            raise OSError("disk I/O error")
        return await real_update(self, turn_id, **fields)

    monkeypatch.setattr(SessionStore, "update_turn", failing_update)
    marker = tmp_path / "workspace" / "ran.txt"
    anthropic.enqueue(ToolUse("Bash", {"command": f"touch {marker}"}, delay=1.0), Reply("done"))
    bot = await start_bot(CLAUDE_SHARED_WORKDIR=True, CLAUDE_ALLOWED_TOOLS="Bash")
    mid = await sim.push_message(text="make a file")
    text = await final_text(sim, mid, contains="could not record")
    assert "send it again" in text
    assert not marker.exists()
    assert "could not journal 'running'" in bot.log_text()
