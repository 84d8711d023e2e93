"""SpendPolicy: daily limits per person and for the bot from the journal's recorded costs, days
in CRON_TZ, the sentence a refused turn gets, the launcher's gate, and the /status line."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from database.store import SessionStore
from feishu_bot.config import Settings
from feishu_bot.errors import TurnRefused
from feishu_bot.events import TurnRequest
from feishu_bot.spend import SpendPolicy

SHANGHAI = ZoneInfo("Asia/Shanghai")
# 2026-12-06 23:30 in Shanghai (15:30 UTC): the day there ends in 30 minutes.
LATE = datetime(2026, 12, 6, 23, 30, tzinfo=SHANGHAI).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(LATE)


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SessionStore]:
    async with await SessionStore.open(tmp_path / "bot.db", clock=clock) as s:
        yield s


async def spend(store: SessionStore, who: str, cost: float) -> None:
    """A finished turn of `who` that cost `cost`, journaled now."""
    turn = await store.accept_message(
        f"om_{uuid.uuid4().hex}", conversation_key=f"p2p:oc_{who}", chat_id=f"oc_{who}",
        prompt="x", reply_in_thread=False, sender_open_id=who,
    )
    assert turn is not None
    await store.update_turn(turn, status="done", cost_usd=cost)


def policy(store: SessionStore, clock: Clock, **kw: float) -> SpendPolicy:
    return SpendPolicy(store, tz=SHANGHAI, clock=clock, **kw)


async def test_no_limits_never_refuse_and_need_no_query(store, clock) -> None:
    await spend(store, "ou_a", 100.0)
    p = policy(store, clock)
    assert not p.limited and await p.refusal("ou_a") is None


async def test_a_person_over_their_limit_is_refused_with_the_limit_and_its_reset(
    store, clock
) -> None:
    p = policy(store, clock, user_limit=1.0)
    await spend(store, "ou_a", 0.6)
    assert await p.refusal("ou_a") is None
    await spend(store, "ou_a", 0.4)  # exactly at the limit: spent
    text = await p.refusal("ou_a")
    assert text == (
        "Daily spending limit reached: $1.00 spent today of the $1.00 one person may spend per "
        "day, so this was not sent to Claude. The limit resets at 00:00 Asia/Shanghai (in 0h30m)."
    )
    assert await p.refusal("ou_b") is None  # someone else is not limited by it


async def test_the_bots_limit_counts_everyone(store, clock) -> None:
    p = policy(store, clock, bot_limit=2.0)
    await spend(store, "ou_a", 1.0)
    await spend(store, "ou_b", 0.5)
    assert await p.refusal("ou_c") is None
    await spend(store, "ou_c", 0.5)
    text = await p.refusal("ou_d")
    assert text is not None and text.startswith("The bot's daily spending limit is reached: $2.00")


async def test_days_are_calendar_days_in_cron_tz(store, clock) -> None:
    p = policy(store, clock, user_limit=1.0)
    await spend(store, "ou_a", 5.0)  # at 23:30
    assert await p.refusal("ou_a") is not None
    clock.now += 31 * 60  # 00:01 the next day in Shanghai: a new day, nothing spent
    assert await p.refusal("ou_a") is None
    start, reset = p.day_bounds()
    assert datetime.fromtimestamp(start, SHANGHAI).strftime("%Y-%m-%d %H:%M") == "2026-12-07 00:00"
    assert reset - start == 86400


async def test_the_gate_raises_turn_refused(store, clock) -> None:
    p = policy(store, clock, user_limit=0.5)
    request = TurnRequest("p2p:oc_a", "hi", Path("/tmp"), user_id="ou_a")
    await p.gate(request)  # nothing spent: passes
    await spend(store, "ou_a", 0.5)
    with pytest.raises(TurnRefused, match="Daily spending limit reached"):
        await p.gate(request)


async def test_summary_for_status_and_stats(store, clock) -> None:
    await spend(store, "ou_a", 0.25)
    await spend(store, "ou_b", 0.5)
    assert await policy(store, clock).summary("ou_a") == (
        "Spent today: you $0.2500, the bot $0.7500 (no limit)"
    )
    limited = policy(store, clock, user_limit=1.0, bot_limit=3.0)
    assert await limited.summary("ou_a") == (
        "Spent today: you $0.2500 of $1.00, the bot $0.7500 of $3.00; resets at 00:00 "
        "Asia/Shanghai (in 0h30m)"
    )


def test_from_settings_reads_the_limits_and_the_zone(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, FEISHU_APP_ID="cli", FEISHU_APP_SECRET="s", CLAUDE_USER_DAILY_USD=2,
        CLAUDE_DAILY_USD=20, CRON_TZ="Asia/Shanghai",
    )
    p = SpendPolicy.from_settings(settings, store=None)  # type: ignore[arg-type]
    assert (p.user_limit, p.bot_limit, p.limited) == (2.0, 20.0, True)
    assert p.day_bounds(LATE)[0] == datetime(2026, 12, 6, tzinfo=SHANGHAI).timestamp()
