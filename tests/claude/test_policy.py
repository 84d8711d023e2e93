"""policy.decide alone: what happens after a failed attempt (pure, no processes)."""

from __future__ import annotations

from typing import Any

from feishu_bot.claude.policy import Action, ResumePoint, backoff, decide
from feishu_bot.claude.protocol import Outcome, Verdict

TRANSIENT = Verdict(Outcome.TRANSIENT, "api error 529")


def step(verdict: Verdict = TRANSIENT, **kw: Any) -> Any:
    values: dict[str, Any] = {
        "attempts": 1,
        "max_retries": 2,
        "process_alive": True,
        "side_effects": (),
        "stale_reset_done": False,
        "spawned_from": ResumePoint("sess-base"),
        "first_turn_of_process": False,
        "session_before": "sess-live",
        "uuid_before": "uuid-last-answer",
    }
    values.update(kw)
    return decide(verdict, **values)


def test_a_transient_failure_retries_in_a_new_process_cut_at_the_last_answer() -> None:
    d = step()
    assert d.action is Action.RETRY_NEW
    assert d.resume == ResumePoint("sess-live", "uuid-last-answer")


def test_in_the_first_turn_of_a_process_the_retry_goes_back_where_it_began() -> None:
    d = step(first_turn_of_process=True)
    assert (d.action, d.resume) == (Action.RETRY_NEW, ResumePoint("sess-base"))
    # nothing to cut at: never resume the crashed half of this turn
    assert step(uuid_before=None).resume == ResumePoint("sess-base")


def test_a_started_side_effect_is_never_retried() -> None:
    d = step(side_effects=("Bash (npm install)",))
    assert (d.action, d.reason) == (Action.GIVE_UP, "side effects")


def test_retries_run_out() -> None:
    assert step(attempts=2).action is Action.RETRY_NEW
    d = step(attempts=3)
    assert (d.action, d.reason) == (Action.GIVE_UP, "retries exhausted")


def test_permanent_failures_are_given_up() -> None:
    d = step(Verdict(Outcome.PERMANENT, "api error 400"))
    assert d.action is Action.GIVE_UP and d.reason == "api error 400"


def test_a_stale_session_starts_fresh_once() -> None:
    stale = Verdict(Outcome.STALE, "stale session")
    d = step(stale)
    assert (d.action, d.resume) == (Action.START_FRESH, ResumePoint())
    assert step(stale, stale_reset_done=True).action is Action.GIVE_UP
    assert step(stale, spawned_from=ResumePoint()).action is Action.GIVE_UP  # nothing resumed


def test_without_fork_a_resumed_first_turn_cannot_be_retried() -> None:
    d = step(first_turn_of_process=True, forked=False)
    assert (d.action, d.reason) == (Action.GIVE_UP, "session changed in place")


def test_backoff_doubles_with_jitter_below_one_base() -> None:
    for k, floor in ((1, 2.0), (2, 4.0), (3, 8.0)):
        delay = backoff(2.0, k)
        assert floor <= delay <= floor + 2.0
