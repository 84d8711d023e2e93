"""Fixtures for the launcher tests: the fake CLI, its log, an in-memory session binding."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from feishu_bot.claude.launcher import Launcher, LauncherConfig
from tests.claude.support import MemoryBinding
from tests.fakes.claude_env import FAKE_CLAUDE_BIN
from tests.fakes.fake_claude_log import FakeClaudeLog


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def fake_log(tmp_path: Path) -> FakeClaudeLog:
    return FakeClaudeLog(tmp_path / "fake_claude.log")


@pytest.fixture
def binding() -> MemoryBinding:
    return MemoryBinding()


@pytest.fixture
def fake_env(tmp_path: Path, fake_log: FakeClaudeLog) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        "HOME": str(home),
        "FAKE_CLAUDE_LOG": str(fake_log.path),
        "FAKE_CLAUDE_STATE": str(tmp_path / "fake_claude.state"),
        "FAKE_CLAUDE_DELAY": "0.01",
    }


LauncherFactory = Callable[..., Launcher]


@pytest.fixture
async def make_launcher(
    fake_env: dict[str, str], binding: MemoryBinding, fake_log: FakeClaudeLog
) -> AsyncIterator[LauncherFactory]:
    """Build launchers on the fake CLI; ``mode=`` sets FAKE_CLAUDE_MODE, ``env=`` adds vars,
    other keywords override LauncherConfig fields (``warm=False``: one process per turn)."""
    made: list[Launcher] = []

    def factory(
        *,
        mode: str = "echo",
        env: dict[str, str] | None = None,
        sessions: Any = None,
        sleep: Any = None,
        **config: Any,
    ) -> Launcher:
        merged = {**fake_env, "FAKE_CLAUDE_MODE": mode, **(env or {})}
        base = LauncherConfig(
            bin=str(FAKE_CLAUDE_BIN),
            retry_delay=0.001,
            kill_grace=1.0,
            timeout=30.0,
            extra_env=tuple(merged.items()),
        )
        cfg = replace(base, **config)
        launcher = Launcher(cfg, sessions if sessions is not None else binding, sleep=sleep)
        made.append(launcher)
        return launcher

    yield factory
    for launcher in made:
        await launcher.aclose()
    # A launcher bug must not leak fake CLIs into later tests (the test itself still fails on
    # what it checks; this only cleans up).
    fake_log.kill_all()
