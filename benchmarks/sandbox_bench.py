"""The cost of Claude Code's sandbox: a one-Bash-command turn through the bot, sandbox on / off.

Two bots run as subprocesses, each against its own Feishu simulator, both against one
FakeAnthropic: `CLAUDE_SANDBOX=on` and `CLAUDE_SANDBOX=off` (both with CLAUDE_ALLOWED_TOOLS=Bash,
so nothing waits for a card). In every turn the model asks for one Bash command
(`echo … > out.txt && cat out.txt`), the CLI runs it (under bubblewrap, or not), the model
answers with its output. Each sample is two such turns in a new conversation: the first starts
the conversation's CLI ("new conversation"), the second runs in that warm CLI ("follow-up").
Push → final answer, median of N per bot and kind, interleaved (the bot that goes first
alternates), after one warm-up pair each; once with a 2 s model latency per request (two
requests per turn), once with instant answers.

    .venv/bin/python benchmarks/sandbox_bench.py [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import BotProcess, machine_info, percentile
from feishu_bot.simulator import FeishuSimulator
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env
from tests.fakes.fake_anthropic import Behaviour, FakeAnthropic, RecordedRequest, Reply, ToolUse

COMMAND = "echo sandbox-bench > out.txt && cat out.txt"
ANSWER = "echo: sandbox-bench"


def scripted(latency: list[float]) -> object:
    """The model: a Bash call for a new message, an echo of the tool's output after it."""

    def respond(req: RecordedRequest) -> Behaviour:
        last = req.messages[-1] if req.messages else {}
        content = last.get("content") if isinstance(last, dict) else None
        after_tool = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
        if after_tool:
            return Reply(delay=latency[0])
        return ToolUse("Bash", {"command": COMMAND, "description": "bench"}, delay=latency[0])

    return respond


async def one_turn(sim: FeishuSimulator, chat: str) -> float:
    started = time.monotonic()
    mid = await sim.push_message(chat_id=chat, text="run the command")

    def done() -> bool:
        texts = "\n".join(sim.message_text(m) for m in sim.replies_to(mid))
        return ANSWER in texts and not sim.live_reactions(mid)

    await sim.wait_for(done, 180)
    return time.monotonic() - started


Times = dict[str, dict[str, list[float]]]  # kind ("new", "follow-up") -> mode -> seconds


async def measure(
    bots: dict[str, tuple[FeishuSimulator, BotProcess]], samples: int, tag: str
) -> Times:
    times: Times = {kind: {mode: [] for mode in bots} for kind in ("new", "follow-up")}
    order = list(bots)
    for i in range(samples + 1):
        for mode in order if i % 2 else order[::-1]:
            sim, _ = bots[mode]
            chat = f"oc_{tag}_{mode}_{i}"
            cold = await one_turn(sim, chat)
            warm = await one_turn(sim, chat)
            if i:  # the first pair warms caches
                times["new"][mode].append(cold)
                times["follow-up"][mode].append(warm)
    return times


def report(title: str, times: dict[str, list[float]], target: str) -> float:
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    print(f"\n{title}, median of {len(times['on'])} (interleaved):")
    for mode, med in (("on", on), ("off", off)):
        values = times[mode]
        print(f"  sandbox {mode:<3} {med * 1000:7.0f} ms  (p10 {percentile(values, 10) * 1000:.0f},"
              f" p90 {percentile(values, 90) * 1000:.0f})")
    print(f"  ratio       {on / off:7.3f}   {target}")
    return on / off


async def main(samples: int) -> None:
    print(machine_info())
    latency = [0.0]
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp_s:
        tmp = Path(tmp_s)
        async with FakeAnthropic(responder=scripted(latency)) as api:  # type: ignore[arg-type]
            bots: dict[str, tuple[FeishuSimulator, BotProcess]] = {}
            sims: list[FeishuSimulator] = []
            try:
                for mode in ("on", "off"):
                    sim = FeishuSimulator(ping_interval=120)
                    await sim.start()
                    sims.append(sim)
                    env = claude_env(api.base_url, tmp / mode / "home")
                    settings = dict(
                        FEISHU_APP_ID=sim.options.app_id, FEISHU_APP_SECRET=sim.options.app_secret,
                        FEISHU_DOMAIN=sim.base_url, FEISHU_ALLOW_ALL="true",
                        CLAUDE_BIN=str(REAL_CLAUDE_BIN), CLAUDE_WORKDIR=str(tmp / mode / "work"),
                        DATABASE_PATH=str(tmp / mode / "data" / "bot.db"), LOG_DIR="",
                        LOG_LEVEL="INFO", CLAUDE_SANDBOX=mode, CLAUDE_ALLOWED_TOOLS="Bash",
                    )
                    bot = BotProcess({**env, **settings}, tmp / f"bot-{mode}.log", tmp)
                    await bot.start()
                    bots[mode] = (sim, bot)
                for mode, (_, bot) in bots.items():
                    print(f"bot {mode}: sandbox {(await bot.healthz())['sandbox']}")
                latency[0] = 2.0
                slow = await measure(bots, samples, "slow")
                latency[0] = 0.0
                fast = await measure(bots, samples, "fast")
            finally:
                for _, bot in bots.values():
                    await bot.stop()
                for sim in sims:
                    await sim.stop()
    for kind in ("new", "follow-up"):
        what = "in a new conversation" if kind == "new" else "as a follow-up (warm CLI)"
        report(f"one-Bash-command turn {what}, 2 s model latency", slow[kind], "(target ≤ 1.15)")
        report(f"one-Bash-command turn {what}, instant fake API", fast[kind], "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    asyncio.run(main(parser.parse_args().samples))
