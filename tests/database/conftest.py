"""Fixtures for the database tests: a real SQLite file in tmp_path and a clock the test drives."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from database import SessionStore

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """A settable UTC epoch clock; the store reads it for every timestamp it writes."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    # A missing parent directory on purpose: `open` must create it.
    return tmp_path / "data" / "bot.db"


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[SessionStore]:
    async with await SessionStore.open(db_path, clock=clock) as opened:
        yield opened


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for child interpreters that import `database` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
