"""Warm sessions: a conversation's second turn through the bot vs a cold `claude -p --resume`.

For each of N conversations (N = --samples, default 20), interleaved:
1. the bot answers a first message (this starts the conversation's warm CLI);
2. the bot answers a second message: push → final card at the simulator (the row's "warm");
3. the same second turn as a cold `claude -p --resume <that session> --fork-session` run
   directly (same CLI, environment and working directory): spawn → exit (the row's "cold").
Then the RSS/PSS/USS of 5 idle warm CLI processes of the bot (5 conversations answered, nothing
running). The bot runs as a subprocess against the Feishu simulator and FakeAnthropic (instant
answers), the CLI for real.

    .venv/bin/python benchmarks/warm_bench.py [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import BotProcess, machine_info, percentile
from feishu_bot.simulator import FeishuSimulator
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env
from tests.fakes.fake_anthropic import FakeAnthropic

MB = 1024 * 1024


async def bot_turn(sim: FeishuSimulator, chat: str, text: str) -> float:
    started = time.monotonic()
    mid = await sim.push_message(chat_id=chat, text=text)

    def done() -> bool:
        texts = "\n".join(sim.message_text(m) for m in sim.replies_to(mid))
        return f"echo: {text}" in texts and not sim.live_reactions(mid)

    await sim.wait_for(done, 120)
    return time.monotonic() - started


async def cold_resume(env: dict[str, str], workdir: Path, session: str, text: str) -> float:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(REAL_CLAUDE_BIN), "-p", "--output-format", "stream-json", "--verbose",
        "--include-partial-messages", "--permission-mode", "acceptEdits",
        "--resume", session, "--fork-session",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, cwd=workdir, env=env, limit=64 * MB,
    )
    out, _ = await proc.communicate(text.encode())
    took = time.monotonic() - started
    if proc.returncode != 0 or f"echo: {text}".encode() not in out:
        raise RuntimeError(f"cold resume failed: exit {proc.returncode}")
    return took


def session_of(db: Path, chat: str) -> tuple[str, Path]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        sid, workdir = conn.execute(
            "SELECT session_id, workdir FROM conversations WHERE key = ?", (f"p2p:{chat}",)
        ).fetchone()
    return sid, Path(workdir)


def memory_of(bot: BotProcess) -> list[tuple[float, float, float]]:
    rows = []
    for child in bot.children():
        try:
            full = child.memory_full_info()
        except psutil.Error:
            continue
        rows.append((full.rss / MB, getattr(full, "pss", 0) / MB, full.uss / MB))
    return rows


async def main(samples: int) -> None:
    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="warm-bench-") as tmp_s:
        tmp = Path(tmp_s)
        async with FeishuSimulator(ping_interval=120) as sim, FakeAnthropic() as api:
            env = claude_env(api.base_url, tmp / "home")
            settings = dict(
                FEISHU_APP_ID=sim.options.app_id, FEISHU_APP_SECRET=sim.options.app_secret,
                FEISHU_DOMAIN=sim.base_url, FEISHU_ALLOW_ALL="true",
                CLAUDE_BIN=str(REAL_CLAUDE_BIN), CLAUDE_WORKDIR=str(tmp / "work"),
                DATABASE_PATH=str(tmp / "data" / "bot.db"), LOG_DIR="", LOG_LEVEL="INFO",
                CLAUDE_MAX_CONCURRENT="5",
            )
            bot = BotProcess({**env, **settings}, tmp / "bot.log", tmp,
                             command=BotProcess.command(None))
            await bot.start()
            try:
                warm: list[float] = []
                cold: list[float] = []
                for i in range(samples + 1):
                    chat = f"oc_warm_{i}"
                    await bot_turn(sim, chat, f"first {i}")
                    sid, workdir = session_of(tmp / "data" / "bot.db", chat)
                    w = await bot_turn(sim, chat, f"second {i}")
                    c = await cold_resume(env, workdir, sid, f"second {i} cold")
                    if i:  # the first pair warms caches
                        warm.append(w)
                        cold.append(c)
                health = await bot.healthz()
                mem = memory_of(bot)
            finally:
                await bot.stop()
    w_med, c_med = statistics.median(warm), statistics.median(cold)
    print(f"\nsecond turn, push → final answer, median of {samples} (interleaved):")
    print(f"  warm bot   {w_med * 1000:7.0f} ms  (p10 {percentile(warm, 10) * 1000:.0f},"
          f" p90 {percentile(warm, 90) * 1000:.0f})")
    print(f"  cold -p    {c_med * 1000:7.0f} ms  (p10 {percentile(cold, 10) * 1000:.0f},"
          f" p90 {percentile(cold, 90) * 1000:.0f})")
    print(f"  ratio      {w_med / c_med:7.3f}   (target ≤ 0.15)")
    print(f"\n{len(mem)} idle warm CLI processes (RSS / PSS / USS MB each):")
    for rss, pss, uss in mem:
        print(f"  {rss:6.0f} {pss:6.0f} {uss:6.0f}")
    if mem:
        print(f"  sum   RSS {sum(r for r, _, _ in mem):.0f} MB, PSS {sum(p for _, p, _ in mem):.0f}"
              f" MB, USS {sum(u for _, _, u in mem):.0f} MB")
    print("\n/healthz:", json.dumps({k: health.get(k) for k in ("active", "queued")}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    asyncio.run(main(parser.parse_args().samples))
