"""AccessPolicy (deny by default), RefusalLimiter, refusal_text."""

from __future__ import annotations

from feishu_bot.feishu.access import AccessPolicy, RefusalLimiter, refusal_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_deny_by_default() -> None:
    policy = AccessPolicy([], [], False)
    assert not policy.allows("ou_a", "oc_1")
    assert policy.is_open_to_nobody


def test_allowed_user_any_chat() -> None:
    policy = AccessPolicy(["ou_a", " ou_b "], [], False)
    assert policy.allows("ou_a", "oc_1")
    assert policy.allows("ou_b", "oc_2")  # entries are stripped
    assert not policy.allows("ou_c", "oc_1")


def test_allowed_chat_any_user() -> None:
    policy = AccessPolicy([], ["oc_team"], False)
    assert policy.allows("ou_anyone", "oc_team")
    assert not policy.allows("ou_anyone", "oc_other")


def test_allow_all() -> None:
    policy = AccessPolicy([], [], True)
    assert policy.allows("ou_x", "oc_y")
    assert policy.allows("", "")


def test_empty_ids_never_match_empty_entries() -> None:
    policy = AccessPolicy(["", "  "], [""], False)
    assert not policy.allows("", "")
    assert policy.is_open_to_nobody


def test_refusal_limiter_once_per_window() -> None:
    clock = FakeClock()
    limiter = RefusalLimiter(per_seconds=60, clock=clock)
    assert limiter.should_reply("ou_a")
    assert not limiter.should_reply("ou_a")
    assert limiter.should_reply("ou_b")
    clock.now += 59.9
    assert not limiter.should_reply("ou_a")
    clock.now += 0.2
    assert limiter.should_reply("ou_a")


def test_refusal_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RefusalLimiter(per_seconds=60, clock=clock, max_users=100)
    for i in range(1000):
        assert limiter.should_reply(f"ou_{i}")
    assert len(limiter) == 100
    clock.now += 61
    limiter.should_reply("ou_new")
    assert len(limiter) == 1  # expired entries are dropped


def test_refusal_text_names_ids_and_settings() -> None:
    text = refusal_text("ou_abc", "oc_def")
    assert "ou_abc" in text
    assert "oc_def" in text
    assert "FEISHU_ALLOWED_USERS" in text
    assert "FEISHU_ALLOWED_CHATS" in text
