"""Environment for running a Claude CLI (real or fake) in tests, fully offline.

``claude_env(base_url, home)`` returns a complete environment dict (a copy of ``os.environ``
with overrides): the API pointed at a ``FakeAnthropic``, a throwaway HOME and temp dir, the
non-essential traffic switched off, proxies bypassed for loopback, and the CLI's own API retries
reduced so error tests stay fast. ``claude_env_overrides`` returns only the overrides, which is
what ``LauncherConfig.extra_env`` wants (the launcher adds them on top of ``os.environ``).

``REAL_CLAUDE_BIN`` is the pinned CLI from the repository's ``node_modules``;
``FAKE_CLAUDE_BIN`` the executable fake script next to this module.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "FAKE_CLAUDE_BIN",
    "QUIET_ENV",
    "REAL_CLAUDE_BIN",
    "REPO_ROOT",
    "claude_env",
    "claude_env_overrides",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_CLAUDE_BIN = REPO_ROOT / "node_modules" / ".bin" / "claude"
FAKE_CLAUDE_BIN = Path(__file__).resolve().parent / "fake_claude.py"

# Measured on 2.1.329: with these set the CLI only talks to ANTHROPIC_BASE_URL.
QUIET_ENV: dict[str, str] = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}

# Variables from the developer's shell that would change what the CLI does in a test.
_SCRUB = (
    "IS_SANDBOX",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CONFIG_DIR",
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
)


def claude_env_overrides(
    base_url: str, home: Path, *, max_retries: int = 0, api_timeout_ms: int | None = None
) -> dict[str, str]:
    """Only the variables a test must set (``home`` is created; ``home/tmp`` is the temp dir)."""
    home = Path(home)
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "HOME": str(home),
        "CLAUDE_CODE_TMPDIR": str(tmp),
        "TMPDIR": str(tmp),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
        **QUIET_ENV,
    }
    if api_timeout_ms is not None:
        env["API_TIMEOUT_MS"] = str(api_timeout_ms)
    return env


def claude_env(
    base_url: str, home: Path, *, max_retries: int = 0, api_timeout_ms: int | None = None
) -> dict[str, str]:
    """A full environment: ``os.environ`` minus stray Claude settings, plus the overrides."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(
        claude_env_overrides(base_url, home, max_retries=max_retries, api_timeout_ms=api_timeout_ms)
    )
    return env
