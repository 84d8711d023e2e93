"""Fixtures shared by every test package.

Everything a test talks to listens on 127.0.0.1, so proxy variables from the developer's shell
are scrubbed (requests, used by the SDK's endpoint discovery, and aiohttp honour them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from feishu_bot.simulator import FeishuSimulator


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def sim() -> AsyncIterator[FeishuSimulator]:
    """A fresh Feishu simulator on 127.0.0.1 for one test."""
    async with FeishuSimulator() as simulator:
        yield simulator
