"""Start-up exit codes, through `feishu-bot run` in a subprocess (issue 12 #1 and #15).

Exit 2 stops pm2 and systemd from restarting the bot, so it is kept for what a restart
cannot fix: credentials Feishu refuses, a database that is corrupt or newer than the code.
A Feishu that cannot be reached yet is waited for.
"""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest

from database import SCHEMA_VERSION
from feishu_bot.simulator import FeishuSimulator
from tests.ops.conftest import StartBot, free_port

pytestmark = pytest.mark.timeout(180)


async def healthz(port: int) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        return resp.status


async def test_network_hiccup_at_startup_stops_the_bot(start_bot: StartBot) -> None:
    """Feishu unreachable at start: the bot waits (not ready) and starts once Feishu is up."""
    feishu_port, health_port = free_port(), free_port()
    bot = await start_bot(
        wait_ready=False,
        FEISHU_DOMAIN=f"http://127.0.0.1:{feishu_port}",
        HEALTH_PORT=health_port,
    )
    await bot.wait_line(r"feishu call failed \(attempt 2/")
    assert bot.returncode is None
    assert await healthz(health_port) == 503
    async with FeishuSimulator(port=feishu_port) as late:
        await bot.wait_line(r"feishu-bot ready", timeout=120)
        assert await healthz(health_port) == 200
        mid = await late.push_message(text="hello after the outage")
        assert (await late.wait_ack(mid)).code == 200
        bot.send(signal.SIGTERM)
        assert await bot.wait_exit(60) == 0
    assert bot.find(r"refused the app credentials") is None


async def test_stop_while_waiting_for_feishu_exits_0(start_bot: StartBot) -> None:
    bot = await start_bot(wait_ready=False, FEISHU_DOMAIN=f"http://127.0.0.1:{free_port()}")
    await bot.wait_line(r"feishu call failed")
    bot.send(signal.SIGTERM)
    assert await bot.wait_exit(30) == 0
    assert bot.find(r"start abandoned") is not None


async def test_feishu_5xx_at_startup_is_waited_out(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    rule = sim.fail_next("GET", r"/open-apis/bot/v3/info$", status=503, count=6)
    bot = await start_bot(wait_ready=False)
    await bot.wait_line(r"bot info not available yet")
    await bot.wait_line(r"feishu-bot ready", timeout=120)
    assert rule.hits == 6
    bot.send(signal.SIGTERM)
    assert await bot.wait_exit(60) == 0


async def test_refused_credentials_exit_2(start_bot: StartBot) -> None:
    bot = await start_bot(wait_ready=False, FEISHU_APP_SECRET="not-the-secret")
    assert await bot.wait_exit(60) == 2
    assert bot.find(r"Feishu refused the app credentials.*code 10014") is not None
    assert "not-the-secret" not in bot.text()


def _one_error_line(text: str, db: Path) -> str:
    lines = [line for line in text.splitlines() if str(db) in line and "ERROR" in line]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


async def test_corrupt_database_exits_1(start_bot: StartBot, tmp_path: Path) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(b"this is not a database, just text that happens to be here\n" * 200)
    bot = await start_bot(wait_ready=False, DATABASE_PATH=db)
    assert await bot.wait_exit(60) == 2
    line = _one_error_line(bot.text(), db)
    assert "corrupt or not a SQLite database" in line


async def test_damaged_pages_exit_1(start_bot: StartBot, tmp_path: Path) -> None:
    db = tmp_path / "damaged.db"
    with closing(sqlite3.connect(db)) as conn:
        # the current version: no migration runs first, the damage is what is found
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("CREATE INDEX filler_body ON filler (body)")
        conn.executemany(
            "INSERT INTO filler (body) VALUES (?)", [(f"row {i} " * 40,) for i in range(2000)]
        )
        conn.commit()
    raw = bytearray(db.read_bytes())
    page = 4096
    for offset in range(3 * page, len(raw) - page, 7 * page):  # scribble over some pages
        raw[offset + 8 : offset + 200] = b"\xff" * 192
    db.write_bytes(bytes(raw))
    bot = await start_bot(wait_ready=False, DATABASE_PATH=db)
    assert await bot.wait_exit(60) == 2
    line = _one_error_line(bot.text(), db)
    assert "corrupt" in line


async def test_newer_schema_exits_1(start_bot: StartBot, tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    bot = await start_bot(wait_ready=False, DATABASE_PATH=db)
    assert await bot.wait_exit(60) == 2
    line = _one_error_line(bot.text(), db)
    assert "schema version 99 is newer" in line
