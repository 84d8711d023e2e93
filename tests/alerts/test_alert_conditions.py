"""The alert rules (`alerts.conditions`): thresholds, once-per-hour start cards, suppression."""

from __future__ import annotations

from feishu_bot.alerts import (
    AlertEngine,
    Condition,
    Sample,
    Thresholds,
    Transition,
    TurnKind,
    alert_text,
    is_auth_failure,
    turn_kind,
)
from feishu_bot.claude.protocol import classify, parse_result
from feishu_bot.errors import (
    AttachmentError,
    PermanentCliError,
    QueueFull,
    TransientCliError,
    TurnTimeout,
)

T0 = 1_800_000_000.0
MB = 1024 * 1024


def engine(**kw: object) -> AlertEngine:
    return AlertEngine(Thresholds(), **kw)  # type: ignore[arg-type]


def summary(ts: list[Transition]) -> list[tuple[str, str, bool]]:
    return [(str(t.condition), "start" if t.started else "clear", t.announce) for t in ts]


def turns(e: AlertEngine, kinds: str, now: float = T0) -> list[Transition]:
    """Feed turns: o = ok, f = failed, a = auth failure, x = other (stop, timeout)."""
    code = {"o": TurnKind.OK, "f": TurnKind.FAILED, "a": TurnKind.AUTH, "x": TurnKind.OTHER}
    out: list[Transition] = []
    for i, k in enumerate(kinds):
        out += e.turn_finished(code[k], now + i, "boom")
    return out


# -- ws_down ----------------------------------------------------------------------------------


def test_ws_outage_under_the_threshold_says_nothing() -> None:
    e = engine()
    assert e.observe(Sample(T0, ws_connected=False)) == []
    assert e.observe(Sample(T0 + 60, ws_connected=False)) == []  # not *more* than 60 s
    assert e.observe(Sample(T0 + 60, ws_connected=True)) == []
    assert e.active() == {}


def test_ws_outage_starts_silently_and_its_card_comes_when_it_is_back() -> None:
    e = engine()
    e.observe(Sample(T0, ws_connected=True))
    assert e.observe(Sample(T0 + 1, ws_connected=False)) == []
    started = e.observe(Sample(T0 + 62, ws_connected=False))
    # the card cannot be sent while Feishu is unreachable: the start is only logged
    assert summary(started) == [("ws_down", "start", False)]
    assert Condition.WS_DOWN in e.active()
    cleared = e.observe(Sample(T0 + 136, ws_connected=True, reconnects=3))
    assert summary(cleared) == [("ws_down", "clear", True)]
    assert "down for 2 min 15 s" in cleared[0].detail
    assert "reconnects so far: 3" in cleared[0].detail
    _, title, body = alert_text(cleared[0])
    assert title.endswith("The Feishu long connection was down")
    assert body.startswith("**ws_down**") and "What to do" in body
    assert e.active() == {}


def test_an_outage_that_ended_between_two_samples_still_gets_its_card() -> None:
    e = engine()
    e.observe(Sample(T0, ws_connected=False))
    assert summary(e.observe(Sample(T0 + 70, ws_connected=True))) == [
        ("ws_down", "start", False),
        ("ws_down", "clear", True),
    ]


def test_unknown_connection_state_changes_nothing() -> None:
    e = engine()
    e.observe(Sample(T0, ws_connected=False))
    assert e.observe(Sample(T0 + 500, ws_connected=None)) == []  # e.g. while stopping
    assert e.active() == {}


# -- claude_auth and turn_failures --------------------------------------------------------------


def test_auth_failures_make_one_alert_and_one_success_clears_it() -> None:
    e = engine()
    out = turns(e, "aaaaa")
    assert summary(out) == [("claude_auth", "start", True)]
    assert "5 turns failed" in e.active()[Condition.CLAUDE_AUTH][1]
    out = turns(e, "o", T0 + 10)
    assert summary(out) == [("claude_auth", "clear", True)]
    assert "5 turns had failed" in out[0].detail


def test_auth_failures_do_not_count_as_turn_failures() -> None:
    e = engine()
    assert summary(turns(e, "aaaaaaaaaa")) == [("claude_auth", "start", True)]


def test_three_failures_in_a_row_start_turn_failures_and_a_success_clears() -> None:
    e = engine()
    assert turns(e, "ff") == []
    out = turns(e, "f", T0 + 5)
    assert summary(out) == [("turn_failures", "start", True)]
    assert "3 of the last 3 turns failed, 3 in a row; last error: boom" in out[0].detail
    assert summary(turns(e, "o", T0 + 9)) == [("turn_failures", "clear", True)]


def test_more_than_half_of_the_last_ten_failed() -> None:
    e = engine()
    # never 3 in a row; the 9th turn makes 6 failures: more than half of 10
    out = turns(e, "offoffoff")
    assert summary(out) == [("turn_failures", "start", True)]
    assert out[0].at == T0 + 8
    assert out[0].detail.startswith("6 of the last 9 turns failed, 2 in a row")


def test_half_is_not_more_than_half_and_old_turns_leave_the_window() -> None:
    e = engine()
    assert turns(e, "ffoffofooo") == []  # 5 of 10
    e2 = engine()
    assert summary(turns(e2, "offoffoff")) == [("turn_failures", "start", True)]
    # successes push failures out of the last 10: after the third one 5 of 10 are left
    out = turns(e2, "ooo", T0 + 20)
    assert summary(out) == [("turn_failures", "clear", True)]
    assert out[0].at == T0 + 22


def test_stops_and_timeouts_do_not_count() -> None:
    e = engine()
    # the x turns neither count nor break the streak: three of the bot's failures in a row
    assert summary(turns(e, "fxfxxxf")) == [("turn_failures", "start", True)]
    e2 = engine()
    assert turns(e2, "xxxxxxxxxx") == []
    assert e2.active() == {}


def test_claude_auth_suppresses_turn_failures() -> None:
    e = engine()
    turns(e, "a")
    # other failures while Claude cannot log in are not announced a second time
    assert turns(e, "fff", T0 + 10) == []
    assert Condition.TURN_FAILURES not in e.active()
    cleared = turns(e, "o", T0 + 20)
    assert summary(cleared) == [("claude_auth", "clear", True)]
    assert summary(turns(e, "fff", T0 + 30)) == [("turn_failures", "start", True)]


# -- at most one start card per condition per hour ---------------------------------------------


def test_at_most_one_start_card_per_condition_per_hour() -> None:
    e = engine()
    first = turns(e, "ao")
    assert summary(first) == [("claude_auth", "start", True), ("claude_auth", "clear", True)]
    # again within the hour: logged and in /healthz, but neither card is sent
    again = turns(e, "ao", T0 + 600)
    assert summary(again) == [("claude_auth", "start", False), ("claude_auth", "clear", False)]
    turns(e, "ao", T0 + 1200)
    later = turns(e, "a", T0 + 3600)
    assert summary(later) == [("claude_auth", "start", True)]
    assert later[0].unannounced == 2
    assert "2 earlier episodes in the last hour went without a card" in alert_text(later[0])[2]


def test_the_hourly_limit_is_per_condition() -> None:
    e = engine()
    turns(e, "ao")
    out = turns(e, "fff", T0 + 10)
    assert summary(out) == [("turn_failures", "start", True)]


# -- degraded, queue_full, disk_low, sandbox_off ----------------------------------------------


def test_degraded_starts_and_clears() -> None:
    e = engine()
    assert summary(e.observe(Sample(T0, degraded=True))) == [("degraded", "start", True)]
    assert e.observe(Sample(T0 + 1, degraded=True)) == []
    assert summary(e.observe(Sample(T0 + 2, degraded=False))) == [("degraded", "clear", True)]


def full(now: float, rejected: int) -> Sample:
    return Sample(now, queued=20, queue_max=20, active=5, max_concurrent=5, rejected=rejected)


def test_queue_full_after_the_threshold_with_the_refusals() -> None:
    e = engine()
    assert e.observe(full(T0, rejected=7)) == []
    assert e.observe(full(T0 + 300, rejected=20)) == []  # not *more* than 300 s
    out = e.observe(full(T0 + 301, rejected=30))
    assert summary(out) == [("queue_full", "start", True)]
    assert "20/20 waiting, 5/5 running, 23 messages refused as busy" in out[0].detail
    room = Sample(T0 + 400, queued=3, queue_max=20, active=5, max_concurrent=5, rejected=31)
    out = e.observe(room)
    assert summary(out) == [("queue_full", "clear", True)]
    assert "24 messages were refused" in out[0].detail


def test_a_queue_that_empties_in_between_starts_the_clock_again() -> None:
    e = engine()
    e.observe(full(T0, 0))
    e.observe(Sample(T0 + 200, queued=0, queue_max=20, max_concurrent=5))
    assert e.observe(full(T0 + 301, 0)) == []


def test_queue_max_zero_is_full_when_every_slot_is_busy() -> None:
    e = engine()
    e.observe(Sample(T0, queue_max=0, active=5, max_concurrent=5))
    assert summary(e.observe(Sample(T0 + 301, queue_max=0, active=5, max_concurrent=5))) == [
        ("queue_full", "start", True)
    ]
    e2 = engine()
    e2.observe(Sample(T0, queue_max=0, active=4, max_concurrent=5))
    assert e2.observe(Sample(T0 + 301, queue_max=0, active=4, max_concurrent=5)) == []


def test_disk_low_below_the_minimum() -> None:
    e = engine()
    ok = {"CLAUDE_WORKDIR": ("/w", 2048 * MB), "DATABASE_PATH": ("/d", 5000 * MB)}
    assert e.observe(Sample(T0, disk=ok)) == []
    low = {**ok, "DATABASE_PATH": ("/d", 300 * MB)}
    out = e.observe(Sample(T0 + 30, disk=low))
    assert summary(out) == [("disk_low", "start", True)]
    assert out[0].detail == (
        "300 MB free on /d (DATABASE_PATH); the minimum is 1024 MB (ALERT_DISK_MIN_MB)"
    )
    assert summary(e.observe(Sample(T0 + 60, disk=ok))) == [("disk_low", "clear", True)]


def test_sandbox_unavailable_at_start_alerts_once() -> None:
    e = engine(sandbox_available=False, sandbox_detail="bubblewrap is missing")
    out = e.observe(Sample(T0))
    assert summary(out) == [("sandbox_off", "start", True)]
    assert out[0].detail == "bubblewrap is missing"
    assert e.observe(Sample(T0 + 1)) == []
    assert Condition.SANDBOX_OFF in e.active()
    for available in (True, None):
        assert engine(sandbox_available=available).observe(Sample(T0)) == []


# -- what a finished turn counts as ------------------------------------------------------------


def _error_from_cli(result: dict[str, object]) -> PermanentCliError:
    verdict = classify(exit_code=1, result=parse_result(result), stderr="")
    return PermanentCliError(verdict.reason)


def test_auth_failures_are_recognised_from_the_cli_verdicts() -> None:
    # what 2.1.329 prints for a 401 without retries, and without any credentials
    invalid = _error_from_cli({"is_error": True, "result": "Invalid API key · Fix external API "
                               "key", "api_error_status": 401, "terminal_reason": "api_error"})
    missing = _error_from_cli({"is_error": True, "result": "Not logged in · Please run /login",
                               "terminal_reason": "api_error"})
    forbidden = _error_from_cli({"is_error": True, "result": "x", "api_error_status": 403})
    for error in (invalid, missing, forbidden):
        assert is_auth_failure(error), error
        assert turn_kind("failed", error) is TurnKind.AUTH
    overloaded = TransientCliError("api error 529")
    assert turn_kind("failed", overloaded) is TurnKind.FAILED
    assert not is_auth_failure(ValueError("not logged in"))  # not a Claude error


def test_what_does_not_count_as_the_bots_failure() -> None:
    assert turn_kind("ok") is TurnKind.OK
    for outcome in ("cancelled", "interrupted", "deferred", "busy", "timeout"):
        assert turn_kind(outcome, TurnTimeout("slow")) is TurnKind.OTHER
    big = AttachmentError("too big", reason="too_large")
    assert turn_kind("failed", big) is TurnKind.OTHER
    assert turn_kind("failed", QueueFull(5, 5, 20)) is TurnKind.OTHER
    assert turn_kind("failed", RuntimeError("bug")) is TurnKind.FAILED


def test_a_start_card_reads_what_since_the_numbers_and_what_to_do() -> None:
    e = engine()
    (t,) = turns(e, "a")
    template, title, body = alert_text(t)
    assert template == "red" and title == "⚠️ Claude cannot authenticate"
    lines = body.splitlines()
    assert lines[0].startswith("**claude_auth** since ")
    assert lines[1] == "a turn failed: boom"
    assert lines[2].startswith("**What to do:** Users are told Claude is not logged in.")
    (c,) = turns(e, "o", T0 + 125)
    template, title, body = alert_text(c)
    assert template == "green" and title == "✅ Cleared: Claude cannot authenticate"
    assert "after 2 min 05 s" in body
