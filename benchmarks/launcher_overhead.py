"""What the launcher adds to a turn: the real CLI through ``Launcher.run`` vs ``claude -p`` direct.

Both run the pinned CLI against a local FakeAnthropic (instant answers), with the same
arguments, environment and working directory, interleaved (direct, launcher, direct, ...) after
a warm-up, in one process on one machine. Prints a table of wall time per turn and time to the
first text, median of N runs each.

    .venv/bin/python benchmarks/launcher_overhead.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loguru import logger

from feishu_bot.claude.launcher import Launcher, LauncherConfig
from feishu_bot.events import ClaudeEvent, TurnRequest
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env, claude_env_overrides
from tests.fakes.fake_anthropic import FakeAnthropic

ARGS = [
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    "--permission-mode",
    "acceptEdits",
]


class NullBinding:
    async def set_session(self, key: str, session_id: str) -> None:
        return None

    async def clear_session(self, key: str) -> None:
        return None


async def direct_turn(env: dict[str, str], workdir: Path, prompt: str) -> tuple[float, float]:
    """Wall time and time to the first text delta of one plain ``claude -p`` run."""
    started = time.perf_counter()
    first_text = float("nan")
    proc = await asyncio.create_subprocess_exec(
        str(REAL_CLAUDE_BIN),
        *ARGS,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=workdir,
        env=env,
        limit=64 * 1024 * 1024,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(prompt.encode())
    await proc.stdin.drain()
    proc.stdin.close()
    while line := await proc.stdout.readline():
        if first_text != first_text and b'"text_delta"' in line:
            first_text = time.perf_counter() - started
    await proc.wait()
    assert proc.returncode == 0, proc.returncode
    return time.perf_counter() - started, first_text


async def launcher_turn(launcher: Launcher, workdir: Path, prompt: str) -> tuple[float, float]:
    started = time.perf_counter()
    first_text = float("nan")

    async def on_event(event: ClaudeEvent) -> None:
        nonlocal first_text
        if event.kind == "text" and first_text != first_text:
            first_text = time.perf_counter() - started

    result = await launcher.run(TurnRequest("bench", prompt, workdir), on_event=on_event)
    assert result.text == f"echo: {prompt}", result.text
    return time.perf_counter() - started, first_text


def row(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[max(0, round(0.9 * len(ms)) - 1)]
    return (
        f"| {name:<24} | {statistics.median(ms):8.1f} | {ms[0]:8.1f} | {p90:8.1f} | {ms[-1]:8.1f} |"
    )


async def main(runs: int) -> None:
    if not REAL_CLAUDE_BIN.exists():
        sys.exit(f"pinned CLI missing: {REAL_CLAUDE_BIN}")
    os.environ.pop("IS_SANDBOX", None)
    with tempfile.TemporaryDirectory(prefix="launcher-bench-") as tmp:
        home = Path(tmp) / "home"
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        async with FakeAnthropic() as api:
            env = claude_env(api.base_url, home)
            overrides = claude_env_overrides(api.base_url, home)
            launcher = Launcher(
                LauncherConfig(bin=str(REAL_CLAUDE_BIN), extra_env=tuple(overrides.items())),
                NullBinding(),
            )
            for i in range(2):  # warm-up: page cache, first transcript directory
                await direct_turn(env, workdir, f"warm {i}")
                await launcher_turn(launcher, workdir, f"warm {i}")
            direct: list[tuple[float, float]] = []
            through: list[tuple[float, float]] = []
            for i in range(runs):
                direct.append(await direct_turn(env, workdir, f"bench {i}"))
                through.append(await launcher_turn(launcher, workdir, f"bench {i}"))
            await launcher.aclose()
    version = await asyncio.create_subprocess_exec(
        str(REAL_CLAUDE_BIN), "--version", stdout=asyncio.subprocess.PIPE
    )
    version_text = (await version.communicate())[0].decode().strip()
    print(f"{version_text}; {runs} runs each, interleaved; {os.cpu_count()} CPUs; FakeAnthropic")
    print("| turn (ms)                | median   | min      | p90      | max      |")
    print("|--------------------------|----------|----------|----------|----------|")
    print(row("claude -p direct: wall", [d[0] for d in direct]))
    print(row("Launcher.run: wall", [t[0] for t in through]))
    print(row("direct: first text", [d[1] for d in direct]))
    print(row("Launcher: first text", [t[1] for t in through]))
    overhead = statistics.median(t[0] for t in through) - statistics.median(d[0] for d in direct)
    print(f"launcher overhead (median wall difference): {overhead * 1000:+.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    asyncio.run(main(parser.parse_args().runs))
