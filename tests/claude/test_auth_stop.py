"""A turn whose credentials the API refuses stops at the CLI's first 401 retry (issue 19).

The CLI retries a 401 like a 529 (ten times over about three minutes by default, FACTS); the
user must hear at once that Claude is not logged in. Real pinned CLI against FakeAnthropic.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from feishu_bot.claude.launcher import Launcher, LauncherConfig
from feishu_bot.claude.outcome import auth_refusal, not_logged_in
from feishu_bot.claude.protocol import Outcome, classify
from feishu_bot.errors import PermanentCliError
from tests.claude.support import MemoryBinding, request
from tests.claude.test_real_cli import cli_pids
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env_overrides
from tests.fakes.fake_anthropic import ApiError, FakeAnthropic, Reply

REFUSED = ApiError(401, "authentication_error", "invalid x-api-key")


def test_only_a_refused_credentials_retry_is_an_auth_refusal() -> None:
    line = {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10,
            "error_status": 401, "error": "authentication_failed"}
    assert auth_refusal(line) == "401 authentication_failed"
    assert auth_refusal({**line, "error_status": 529, "error": "overloaded"}) is None
    assert auth_refusal({**line, "subtype": "init"}) is None
    assert auth_refusal({"type": "result", "error_status": 401}) is None
    # whatever the interrupt left as the result, the verdict names the cause
    verdict = classify(exit_code=None, result=not_logged_in(None, "401 authentication_failed"),
                       stderr="")
    assert verdict.outcome is Outcome.PERMANENT and "not logged in" in verdict.reason


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(default=REFUSED) as server:
        yield server


@pytest.mark.real_cli
async def test_a_refused_key_stops_the_turn_at_the_first_retry(
    api: FakeAnthropic, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    home = tmp_path / "home"
    # the CLI's own retries on, as in production: without the stop this takes minutes
    env = claude_env_overrides(api.base_url, home, max_retries=10)
    config = LauncherConfig(bin=str(REAL_CLAUDE_BIN), timeout=120.0, retry_delay=0.01,
                            extra_env=tuple(env.items()))
    binding = MemoryBinding()
    launcher = Launcher(config, binding)
    try:
        began = time.monotonic()
        with pytest.raises(PermanentCliError) as caught:
            await launcher.run(request(workdir, "hello"))
        elapsed = time.monotonic() - began
        assert elapsed < 20, f"took {elapsed:.1f}s: the CLI's retries were waited out"
        error = caught.value
        assert "not logged in" in str(error)
        assert error.result_errors == (
            "Claude is not logged in: the API refused its credentials (401 authentication_failed)",
        )
        assert error.attempts == 1  # the bot does not retry it either
        assert len(api.message_requests) == 1
        # refused credentials are not kept warm: the next turn starts a new process
        assert not launcher.is_warm("p2p:c1") and launcher.stats().warm_idle == 0
        assert cli_pids(home) == []
        api.default = Reply()
        stored = binding.sessions.get("p2p:c1")
        result = await launcher.run(request(workdir, "again", session_id=stored))
        assert result.text == "echo: again"
        # the refused turn was cut from the history: Claude does not see "hello" again
        assert api.message_requests[-1].user_texts == ["again"]
    finally:
        await launcher.aclose()
