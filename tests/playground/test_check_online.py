"""`feishu-bot check --online` against the Feishu simulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from feishu_bot.__main__ import main
from feishu_bot.checks import online_checks, run_online_checks
from feishu_bot.config import Settings
from feishu_bot.simulator import FeishuSimulator
from tests.fakes.claude_env import REAL_CLAUDE_BIN


def _settings(sim: FeishuSimulator, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "FEISHU_APP_ID": sim.options.app_id,
        "FEISHU_APP_SECRET": sim.options.app_secret,
        "FEISHU_DOMAIN": sim.base_url,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def test_all_good(sim: FeishuSimulator, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(run_online_checks, _settings(sim))
    out = capsys.readouterr()
    assert code == 0, out
    lines = out.out.splitlines()
    assert lines[0] == "credentials: ok (tenant access token issued)"
    assert lines[1] == f"bot capability: on, ClaudeBot ({sim.options.bot_open_id})"
    assert lines[2].startswith("long connection: available")
    assert out.err == ""
    # The ws URL carries a ticket: it is never printed.
    assert "ticket" not in out.out and "access_key" not in out.out
    paths = [r.path for r in sim.requests]
    assert "/open-apis/bot/v3/info" in paths and "/callback/ws/endpoint" in paths


async def test_refused_credentials(sim: FeishuSimulator) -> None:
    results = await online_checks(_settings(sim, FEISHU_APP_SECRET="wrong-secret"))
    assert [ok for ok, _ in results] == [False, False, False]
    assert results[0][1].startswith("credentials: refused by Feishu (code 10014")
    assert "FEISHU_APP_SECRET" in results[0][1]
    assert results[1][1] == "bot capability: not checked (no tenant token)"
    assert results[2][1].startswith("long connection: not available (code ")
    assert "wrong-secret" not in "".join(line for _, line in results)


async def test_bot_capability_off(sim: FeishuSimulator) -> None:
    sim.fail_next("GET", r"/bot/v3/info$", status=400, code=10003)
    results = await online_checks(_settings(sim))
    assert [ok for ok, _ in results] == [True, False, True]
    assert results[1][1].startswith("bot capability: off (code 10003")
    assert "机器人" in results[1][1]


async def test_bot_not_enabled_in_tenant(sim: FeishuSimulator) -> None:
    body = {
        "code": 0,
        "msg": "ok",
        "bot": {"activate_status": 3, "app_name": "ClaudeBot", "open_id": "ou_x"},
    }
    sim.fail_next("GET", r"/bot/v3/info$", status=200, body=json.dumps(body))
    results = await online_checks(_settings(sim))
    assert results[1] == (
        False,
        "bot capability: on, but the app is not enabled: installed, waiting to be enabled "
        "(ClaudeBot (ou_x))",
    )


async def test_long_connection_refused(sim: FeishuSimulator) -> None:
    sim.fail_next("POST", r"/callback/ws/endpoint$", status=200, body='{"code": 403, "msg": "x"}')
    results = await online_checks(_settings(sim))
    assert [ok for ok, _ in results] == [True, True, False]
    assert results[2][1] == "long connection: not available (code 403: x)"


async def test_unreachable_domain(sim: FeishuSimulator) -> None:
    results = await online_checks(_settings(sim, FEISHU_DOMAIN="http://127.0.0.1:1"))
    assert [ok for ok, _ in results] == [False, False, False]
    assert results[0][1].startswith("credentials: cannot reach http://127.0.0.1:1")


async def test_main_exit_codes(
    sim: FeishuSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {
        "FEISHU_APP_ID": sim.options.app_id,
        "FEISHU_APP_SECRET": sim.options.app_secret,
        "FEISHU_DOMAIN": sim.base_url,
        "CLAUDE_BIN": str(REAL_CLAUDE_BIN),
        "DATABASE_PATH": str(tmp_path / "data" / "bot.db"),
        "CLAUDE_WORKDIR": str(tmp_path / "workspace"),
        "LOG_DIR": "",
    }.items():
        monkeypatch.setenv(name, value)
    argv = ["--env-file", "", "check", "--online"]
    assert await asyncio.to_thread(main, argv) == 0
    assert "long connection: available" in capsys.readouterr().out

    monkeypatch.setenv("FEISHU_APP_SECRET", "wrong-secret")
    assert await asyncio.to_thread(main, argv) == 1
    assert "credentials: refused by Feishu" in capsys.readouterr().err

    monkeypatch.setenv("CLAUDE_BIN", str(tmp_path / "no-such-claude"))
    assert await asyncio.to_thread(main, argv) == 2  # bad configuration wins
