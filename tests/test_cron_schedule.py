"""cron_schedule (pure): five-field schedules through croniter, their words through
cron-descriptor, due times at the edges, the scheduling rule (run the latest unhandled due time
if it is under an hour old, else skip; never a burst), and the zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from feishu_bot.cron_schedule import (
    CATCH_UP_S,
    Decision,
    ScheduleError,
    decide,
    describe,
    format_time,
    latest_due,
    next_due,
    split_add_args,
    validate,
    zone,
)

UTC = ZoneInfo("UTC")
SHANGHAI = ZoneInfo("Asia/Shanghai")
NINE = datetime(2026, 12, 7, 9, 0, tzinfo=SHANGHAI).timestamp()  # a Monday


def test_validate_accepts_five_fields_and_normalizes_spacing() -> None:
    assert validate("0  9 *  * 1-5") == "0 9 * * 1-5"
    assert validate("*/15 * * * mon-fri") == "*/15 * * * mon-fri"


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("0 9 * *", "five fields"),
        ("0 9 * * * *", "not 6"),  # croniter would read a sixth field as seconds
        ("@daily", "not 1"),
        ("61 * * * *", "not a valid schedule"),
        ("0 25 * * *", "not a valid schedule"),
        ("0 0 31 2 *", "never comes due"),
    ],
)
def test_validate_refuses_with_a_sentence(expr: str, says: str) -> None:
    with pytest.raises(ScheduleError, match=says):
        validate(expr)


def test_split_add_args() -> None:
    assert split_add_args("0 9 * * 1-5 summarize yesterday's commits") == (
        "0 9 * * 1-5",
        "summarize yesterday's commits",
    )
    assert split_add_args("* * * * *   multi\nline prompt ") == ("* * * * *", "multi\nline prompt")
    with pytest.raises(ScheduleError, match="Usage: /cron add"):
        split_add_args("0 9 * * 1-5")
    with pytest.raises(ScheduleError, match="not a valid schedule"):
        split_add_args("0 99 * * * hello")


def test_describe_in_words() -> None:
    assert describe("0 9 * * 1-5") == "At 09:00, Monday through Friday"
    assert describe("* * * * *") == "Every minute"


def test_due_times_at_the_edges() -> None:
    # a due time equal to now counts as due; the next one is strictly after
    assert latest_due("0 9 * * *", SHANGHAI, NINE) == NINE
    assert latest_due("0 9 * * *", SHANGHAI, NINE - 1) == NINE - 86400
    assert next_due("0 9 * * *", SHANGHAI, NINE) == NINE + 86400
    assert next_due("0 9 * * *", SHANGHAI, NINE - 0.5) == NINE
    # weekdays only: Friday 09:00 is followed by Monday 09:00
    friday = NINE - 3 * 86400
    assert next_due("0 9 * * 1-5", SHANGHAI, friday) == NINE
    # the zone matters: 09:00 in Shanghai is 01:00 UTC
    assert next_due("0 9 * * *", UTC, NINE) == NINE + 8 * 3600


def test_decide_runs_the_latest_unhandled_due_time_once() -> None:
    expr = "*/10 * * * *"
    assert decide(expr, UTC, now=NINE + 5, handled_until=NINE - 1) == Decision("run", NINE)
    assert decide(expr, UTC, now=NINE + 5, handled_until=NINE) == Decision("wait")


def test_decide_never_runs_what_was_due_before_the_job_existed() -> None:
    created = NINE + 30  # created just after 09:00: the 09:00 run is not its
    assert decide("0 9 * * *", SHANGHAI, now=NINE + 60, handled_until=created).action == "wait"


def test_after_downtime_only_the_latest_missed_run_is_made_up_and_only_within_an_hour() -> None:
    every_minute = "* * * * *"
    down_at = NINE
    back = NINE + 45 * 60 + 20  # 45 missed due times
    step = decide(every_minute, UTC, now=back, handled_until=down_at)
    assert step == Decision("run", NINE + 45 * 60)  # one run, the latest: no burst
    daily = "0 9 * * *"
    late = decide(daily, SHANGHAI, now=NINE + CATCH_UP_S + 1, handled_until=NINE - 86400)
    assert late == Decision("skip", NINE)
    assert decide(daily, SHANGHAI, now=NINE + CATCH_UP_S, handled_until=NINE - 86400).action == (
        "run"
    )


def test_zone_is_cron_tz_or_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert zone("Asia/Shanghai") == SHANGHAI
    monkeypatch.setenv("TZ", "America/New_York")
    assert zone("") == ZoneInfo("America/New_York")  # DST-aware, not a fixed offset


def test_format_time_names_the_zone() -> None:
    assert format_time(NINE, SHANGHAI) == "2026-12-07 09:00 (Asia/Shanghai)"
