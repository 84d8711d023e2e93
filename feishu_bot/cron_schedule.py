"""Five-field cron schedules: parsing, words, and which due time to act on (pure, no I/O).

Parsing and iteration are `croniter`'s, words are `cron-descriptor`'s; nothing here reads a
cron field by hand. Times are epoch seconds; a schedule is read in a time zone (CRON_TZ, or the
server's own zone when it is empty).

The scheduling rule (`decide`): at any moment a job acts on at most one due time, the latest one
at or before now that it has not handled yet. It runs when it is less than `CATCH_UP_S` old (so
a run missed while the bot was down is made up once at start, within the hour) and is skipped
otherwise; older missed due times are never run, so a restart never causes a burst.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

__all__ = [
    "CATCH_UP_S",
    "Decision",
    "ScheduleError",
    "decide",
    "describe",
    "format_time",
    "latest_due",
    "next_due",
    "split_add_args",
    "validate",
    "zone",
]

CATCH_UP_S: Final = 3600.0
_FIELDS: Final = 5
_EXAMPLE: Final = "/cron add 0 9 * * 1-5 summarize yesterday's commits"


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message is the sentence for the user."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What a job does now: "run" or "skip" the due time `due`, or "wait" (nothing due)."""

    action: str
    due: float | None = None


def validate(expr: str) -> str:
    """The schedule with its fields single-spaced; ScheduleError (saying why) if it is not
    five cron fields croniter accepts or it never comes due (e.g. 30 February)."""
    fields = expr.split()
    if len(fields) != _FIELDS:
        raise ScheduleError(
            f"A schedule is five fields (minute hour day month weekday), not {len(fields)}: "
            f"for example {_EXAMPLE}"
        )
    normalized = " ".join(fields)
    if not croniter.is_valid(normalized):
        raise ScheduleError(
            f"“{normalized}” is not a valid schedule (minute 0-59, hour 0-23, day 1-31, "
            "month 1-12, weekday 0-6 or mon-sun; * , - / allowed)."
        )
    try:
        croniter(normalized, 0.0).get_next(float)
    except (CroniterBadDateError, CroniterError):
        raise ScheduleError(f"“{normalized}” never comes due.") from None
    return normalized


def split_add_args(args: str) -> tuple[str, str]:
    """``<minute hour day month weekday> <prompt>`` → (schedule, prompt); ScheduleError."""
    parts = args.split(None, _FIELDS)
    if len(parts) <= _FIELDS or not parts[_FIELDS].strip():
        raise ScheduleError(f"Usage: /cron add <minute hour day month weekday> <prompt>, e.g. "
                            f"{_EXAMPLE}")
    return validate(" ".join(parts[:_FIELDS])), parts[_FIELDS].strip()


def describe(expr: str) -> str:
    """The schedule in words ("At 09:00, Monday through Friday"), or the expression itself if
    cron-descriptor cannot say it."""
    from cron_descriptor import ExpressionDescriptor, Options

    options = Options()
    options.use_24hour_time_format = True
    try:
        return str(ExpressionDescriptor(expr, options).get_description())
    except Exception:  # a library's parse error must not break /cron list
        return expr


def zone(name: str = "") -> tzinfo:
    """The zone schedules are read in: `name` (CRON_TZ, already validated) or the server's."""
    if name:
        return ZoneInfo(name)
    return _server_zone()


def _server_zone() -> tzinfo:
    """The server's zone by name when it can be found (TZ, /etc/localtime, /etc/timezone), so
    daylight-saving changes are followed; else the current fixed offset."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    except OSError:
        pass
    for name in candidates:
        if not name:
            continue
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            continue
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


def latest_due(expr: str, tz: tzinfo, now: float) -> float | None:
    """The latest due time at or before `now` (None if there is none)."""
    # croniter's get_prev is strictly before its start: start just after `now` so a due time
    # equal to `now` counts.
    start = datetime.fromtimestamp(now + 0.001, tz)
    try:
        return float(croniter(expr, start).get_prev(datetime).timestamp())
    except (CroniterBadCronError, CroniterBadDateError, CroniterError):
        return None


def next_due(expr: str, tz: tzinfo, after: float) -> float | None:
    """The first due time strictly after `after` (None if there is none)."""
    try:
        return float(
            croniter(expr, datetime.fromtimestamp(after, tz)).get_next(datetime).timestamp()
        )
    except (CroniterBadCronError, CroniterBadDateError, CroniterError):
        return None


def decide(
    expr: str, tz: tzinfo, *, now: float, handled_until: float, catch_up_s: float = CATCH_UP_S
) -> Decision:
    """What a job with this schedule does at `now` (see the module docstring)."""
    due = latest_due(expr, tz, now)
    if due is None or due <= handled_until:
        return Decision("wait")
    if now - due > catch_up_s:
        return Decision("skip", due)
    return Decision("run", due)


def format_time(ts: float, tz: tzinfo) -> str:
    """A due time for people: ``2026-12-07 09:00 (Asia/Shanghai)``."""
    moment = datetime.fromtimestamp(ts, tz)
    return f"{moment:%Y-%m-%d %H:%M} ({getattr(tz, 'key', None) or moment.strftime('%Z')})"
