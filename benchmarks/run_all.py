"""All benchmarks of the bot in one run; prints the machine and one table, asserts nothing.

    .venv/bin/python -m benchmarks.run_all [--samples 20] [--conversations 100000]

The bot runs as a subprocess (``feishu-bot run``) against the Feishu simulator and a fake
Anthropic API (both in this process, on 127.0.0.1), with the real pinned Claude CLI. See
benchmarks/README.md for what each row measures and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import BotProcess, SamplerStats, machine_info, percentile
from benchmarks.launcher_overhead import direct_turn
from benchmarks.store_bench import seed_conversations, time_checks, time_wipe
from benchmarks.stream_bench import stream_cost
from database import SessionStore
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.records import AckRecord, Delivery, SentMessage
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env
from tests.fakes.fake_anthropic import FakeAnthropic, RecordedRequest, Reply

FINAL = ("green", "red")
MB = 1e6


@dataclass
class Row:
    name: str
    measured: str
    target: str
    verdict: str  # "ok", "MISSED", "info"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, measured: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "info" if ok is None else ("ok" if ok else "MISSED")
        self.rows.append(Row(name, measured, target or "-", verdict))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  . {text}", file=sys.stderr, flush=True)


# -- helpers over the simulator's records -------------------------------------------------------


def _template(content: Any) -> str | None:
    header = content.get("header") if isinstance(content, dict) else None
    return header.get("template") if isinstance(header, dict) else None


def final_at(msg: SentMessage) -> float | None:
    """Wall time at which the card first showed a final (done/error) state."""
    for content, at in zip(msg.versions, msg.version_times, strict=False):
        if _template(content) in FINAL:
            return at
    return None


def finals(sim: FeishuSimulator, wanted: set[str]) -> dict[str, SentMessage]:
    """User message id -> reply card, for cards whose latest content is final."""
    return {
        m.reply_to: m
        for m in sim.messages
        if m.reply_to in wanted and _template(m.content) in FINAL
    }


async def wait_finals(sim: FeishuSimulator, mids: list[str], timeout: float) -> list[float]:
    wanted = set(mids)
    done = await sim.wait_for(
        lambda: (f := finals(sim, wanted)) and len(f) == len(wanted) and f, timeout
    )
    return [final_at(done[m]) or math.nan for m in mids]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# -- the store ------------------------------------------------------------------------------


async def bench_store(report: Report, conversations: int, checks: int, tmp: Path) -> None:
    path = tmp / "store_bench.db"
    async with await SessionStore.open(path):
        pass
    now = time.time()
    seed_conversations(path, conversations, now)
    cold, warm = await time_wipe(path, now=now, expected=(conversations + 1) // 2, rounds=5)
    wipe = statistics.median(cold)
    report.add(
        f"store: startup stale wipe, {conversations:,} conversations (median of 5)",
        f"{ms(wipe)} (max {ms(max(cold))}; nothing stale: {ms(statistics.median(warm))})",
        "≤ 200 ms",
        wipe <= 0.200,
    )
    results = {label: count / seconds for label, count, seconds in await time_checks(path, checks)}
    report.add(
        "store: processed-message checks/s (mark_processed, new id / seen id)",
        f"{results['mark_processed, new id, sequential']:,.0f} / "
        f"{results['mark_processed, seen id, sequential']:,.0f} per s",
    )
    report.add(
        "store: accept_message/s (dedupe + journal insert, sequential)",
        f"{results['accept_message, new id, sequential']:,.0f} per s",
    )


# -- streaming ------------------------------------------------------------------------------


def bench_streaming(report: Report) -> None:
    """Parser + live card per text delta (stream_bench.py): linear means 4x deltas, ~4x CPU."""
    small, large = stream_cost(4000), stream_cost(16000)
    report.add(
        "streaming: 16k text deltas (400k chars) through parser + card, CPU (best of 3)",
        f"{ms(large)} (4k deltas: {ms(small)}; ratio {large / small:.1f})",
        "ratio ≤ 5 (linear)",
        large / small <= 5,
    )


# -- the bot end to end ---------------------------------------------------------------------


def bot_env(base: dict[str, str], sim: FeishuSimulator, tmp: Path, **extra: Any) -> dict[str, str]:
    env = dict(base)
    env.update(
        FEISHU_APP_ID=sim.options.app_id,
        FEISHU_APP_SECRET=sim.options.app_secret,
        FEISHU_DOMAIN=sim.base_url,
        FEISHU_ALLOW_ALL="true",
        CLAUDE_BIN=str(REAL_CLAUDE_BIN),
        CLAUDE_WORKDIR=str(tmp / "work"),
        DATABASE_PATH=str(tmp / "data" / "bot.db"),
        LOG_DIR="",
        LOG_LEVEL="INFO",
        HEALTH_INTERVAL="30",
        # PATCH cards: the rows read each card's versions (CardKit cards are measured by
        # warm_bench.py, which waits for the rendered text)
        FEISHU_CARDKIT="off",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


async def idle_rss(bot: BotProcess, seconds: float = 2.0) -> float:
    """Median RSS of the idle bot over a few seconds (after start-up settled)."""
    rss = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rss.append(bot.rss())
        await asyncio.sleep(0.1)
    return statistics.median(rss)


def start_to_connected(sim: FeishuSimulator, bot: BotProcess) -> float:
    """Seconds from spawning `bot` to the simulator accepting its first websocket (the
    handshake done: discovery, ticket, upgrade). The simulator stamps connections with
    time.time(), as `BotProcess` stamps the spawn."""
    opened = [c.opened_at for c in sim.records.connections if c.opened_at >= bot.spawned_at]
    return min(opened) - bot.spawned_at if opened else math.nan


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| \w+ *\| (.*)$")
_LARK_LOADED = re.compile(r"lark_oapi \S+ loaded in ([\d.]+)s \((\d+) of its modules\)")


def start_breakdown(bot: BotProcess, connected: float) -> str:
    """Where spawn → connected went, from the bot's own log lines (text format, local time,
    millisecond stamps): the entry point up to "starting", the app's start up to its bot
    identity (imports of the services, the store, the health server, one REST call), then
    the gateway (the lark_oapi load as the bot logged it, discovery, websocket)."""
    marks: dict[str, float] = {}
    lark = ""
    for line in bot.log_tail(200_000).splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").timestamp() - bot.spawned_at
        text = match[2]
        if "starting (domain" in text:
            marks.setdefault("starting", at)
        elif "bot identity:" in text:
            marks.setdefault("identity", at)
        elif (loaded := _LARK_LOADED.search(text)) and not lark:
            lark = f"lark_oapi load {float(loaded[1]):.2f} s ({loaded[2]} modules), "
    if set(marks) != {"starting", "identity"}:
        return "start → connected breakdown: log lines not found"
    entry = marks["starting"]
    app = marks["identity"] - entry
    gateway = connected - marks["identity"]
    return (
        f'start → connected breakdown, the last start: spawn → "starting" (interpreter, entry'
        f" point, settings) {entry:.2f} s; → bot identity (the app's imports, store, health"
        f" server, one REST call) {app:.2f} s; → connected {gateway:.2f} s (of which {lark}the"
        f" rest thread start, discovery and the websocket handshake); the bot's CPU time at"
        f" healthy {bot.cpu_at_healthy:.2f} s"
    )


async def one_bot_turn(sim: FeishuSimulator, chat: str, text: str) -> float:
    """Seconds from pushing a message to its final card arriving at the simulator."""
    started = time.time()
    mid = await sim.push_message(chat_id=chat, text=text)
    (done,) = await wait_finals(sim, [mid], 120)
    card = finals(sim, {mid})[mid]
    if f"echo: {text}" not in sim.message_text(card):
        raise RuntimeError(f"unexpected answer to {text!r}: {sim.message_text(card)!r}")
    return done - started


@dataclass
class BotBench:
    """One bot subprocess and what the sections measured on it."""

    report: Report
    sim: FeishuSimulator
    api: FakeAnthropic
    tmp: Path
    command: list[str]
    cap: int = 5
    env: dict[str, str] = field(default_factory=dict)
    single_turn: float = math.nan
    load_rss: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def workdir(self) -> Path:
        return self.tmp / "work"

    def bot(self, name: str, **settings: Any) -> BotProcess:
        settings.setdefault("CLAUDE_MAX_CONCURRENT", self.cap)
        # The load comes from one simulated user: the global limits are what is measured.
        settings.setdefault("CLAUDE_USER_QUEUE_MAX", 0)
        return BotProcess(
            bot_env(self.env, self.sim, self.tmp, **settings),
            self.tmp / f"{name}.log",
            self.tmp,
            command=self.command,
        )


async def extra_starts(b: BotBench, count: int) -> list[float]:
    """Start → connected of `count` more bots, one after the other (each stopped before the
    next), so the row is a median and not one sample on a shared machine."""
    connected = []
    for i in range(count):
        bot = b.bot(f"bot_start_{i}")
        await bot.start()
        try:
            connected.append(start_to_connected(b.sim, bot))
        finally:
            await bot.stop()
    return connected


async def bench_idle_and_overhead(
    b: BotBench, bot: BotProcess, samples: int, starts: list[float]
) -> None:
    report = b.report
    rss_idle = await idle_rss(bot)
    uss_idle = bot.uss()
    report.add(
        "bot RSS idle (the bot process alone; USS in brackets)",
        f"{rss_idle / MB:.0f} MB ({uss_idle / MB:.0f} MB)",
        "≤ 100 MB",
        rss_idle <= 100 * MB,
    )
    connected = start_to_connected(b.sim, bot)
    starts = [*starts, connected]
    median = statistics.median(starts)
    report.add(
        "bot start → connected: spawn to the simulator accepting its websocket"
        f" (median of {len(starts)} starts)",
        f"{median:.2f} s ({min(starts):.2f}–{max(starts):.2f} s)",
        "≤ 1.5 s",
        median <= 1.5,
    )
    report.note(start_breakdown(bot, connected))
    report.add("bot start-up: spawn to /healthz healthy", f"{bot.startup_s:.2f} s")
    for i in range(2):  # warm-up: page cache, the transcript directory, the first REST token
        await direct_turn(b.env, b.workdir, f"warm {i}")
        await one_bot_turn(b.sim, f"oc_warm_{i}", f"warm {i}")
    direct: list[float] = []
    through: list[float] = []
    for i in range(samples):  # interleaved; each bot sample in a new conversation (no resume)
        direct.append((await direct_turn(b.env, b.workdir, f"direct {i}"))[0])
        through.append(await one_bot_turn(b.sim, f"oc_over_{i}", f"bench {i}"))
    d_med, b_med = statistics.median(direct), statistics.median(through)
    b.single_turn = b_med
    ratio = b_med / d_med
    report.add(
        f"overhead: push→final answer via the bot / `claude -p` direct (median of {samples})",
        f"{ratio:.2f} ({ms(b_med)} / {ms(d_med)}; +{ms(b_med - d_med)})",
        "≤ 1.10",
        ratio <= 1.10,
    )
    report.note(
        f"overhead samples p10/p90: bot {ms(percentile(through, 10))}/"
        f"{ms(percentile(through, 90))}, direct {ms(percentile(direct, 10))}/"
        f"{ms(percentile(direct, 90))}"
    )


MODEL_MARK = "mkslow"
MODEL_LATENCY_S = 2.0


def model_latency_responder(request: RecordedRequest) -> Reply | None:
    """Turns marked `mkslow` get their answer after MODEL_LATENCY_S, like a model thinking."""
    if MODEL_MARK in request.last_user_text:
        return Reply(delay=MODEL_LATENCY_S)
    return None


async def makespan_of(
    b: BotBench, bot: BotProcess, prefix: str, conversations: int
) -> tuple[float, float, float]:
    """Push one message to each of `conversations` new conversations at once; return the
    seconds until the last final answer, and the bot's own and its children's CPU seconds."""
    stats, stop = SamplerStats(), asyncio.Event()
    sampler = asyncio.create_task(bot.sample(stats, stop))
    cpu_before = bot.cpu()
    started = time.time()
    mids = [
        await b.sim.push_message(chat_id=f"oc_{prefix}_{i}", text=f"{prefix} {i}")
        for i in range(conversations)
    ]
    ends = await wait_finals(b.sim, mids, 600)
    cpu_after = bot.cpu()
    if prefix == "mk":
        b.load_rss["makespan"] = (stats.max_rss, bot.uss())
    stop.set()
    await sampler
    return max(ends) - started, cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]


async def direct_window(b: BotBench, prefix: str, conversations: int) -> tuple[float, float]:
    """The same turns without the bot: `claude -p` directly, at most `cap` at a time.

    Returns the wall time and the CPU seconds of those CLIs (reaped children of this process;
    the bot subprocess is reaped only when it stops, so it does not count here)."""
    gate = asyncio.Semaphore(b.cap)

    async def one(i: int) -> None:
        async with gate:
            await direct_turn(b.env, b.workdir, f"{prefix} direct {i}")

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(conversations)))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


async def bench_makespan(b: BotBench, bot: BotProcess, conversations: int = 50) -> None:
    report, cap = b.report, b.cap
    rounds = math.ceil(conversations / cap)
    if math.isnan(b.single_turn):  # the overhead section was skipped
        await one_bot_turn(b.sim, "oc_mk_warm", "mk warm")
        b.single_turn = statistics.median(
            [await one_bot_turn(b.sim, f"oc_mk_single_{i}", f"single {i}") for i in range(5)]
        )
    direct, direct_cpu = await direct_window(b, "mk", conversations)
    makespan, own, cli = await makespan_of(b, bot, "mk", conversations)
    ideal = rounds * b.single_turn
    report.add(
        f"makespan: {conversations} conversations × 1 message at cap {cap}"
        f" / (ceil({conversations}/{cap}) × single turn)",
        f"{makespan / ideal:.2f} ({makespan:.2f} s / {ideal:.2f} s)",
        "≤ 1.15",
        makespan / ideal <= 1.15,
    )
    report.add(
        f"  same run / the same {conversations} `claude -p` run directly, {cap} at a time",
        f"{makespan / direct:.2f} ({makespan:.2f} s / {direct:.2f} s; direct CLIs"
        f" {direct_cpu / conversations:.2f} CPU-s per turn)",
    )
    cores = len(os.sched_getaffinity(0))
    bound = (cli + own) / cores
    report.add(
        "  same run / CPU bound (CPU seconds of the CLIs and the bot / cores)",
        f"{makespan / bound:.2f} ({makespan:.2f} s / {bound:.2f} s; CLIs {cli:.1f} s ="
        f" {cli / conversations:.2f} s per turn, bot {own:.1f} s, {cores} cores)",
    )

    # The same with a model that takes MODEL_LATENCY_S to answer: the CPU is no longer the limit.
    b.api.responder = model_latency_responder
    try:
        single = statistics.median(
            [
                await one_bot_turn(b.sim, f"oc_{MODEL_MARK}_1_{i}", f"{MODEL_MARK} {i}")
                for i in range(3)
            ]
        )
        direct, _ = await direct_window(b, MODEL_MARK, conversations)
        slow_span, _, _ = await makespan_of(b, bot, MODEL_MARK, conversations)
    finally:
        b.api.responder = None
    ideal = rounds * single
    report.add(
        f"  same with a {MODEL_LATENCY_S:g} s model latency / (ceil({conversations}/{cap}) ×"
        " single turn)",
        f"{slow_span / ideal:.2f} ({slow_span:.2f} s / {ideal:.2f} s)",
        "(≤ 1.15)",
        slow_span / ideal <= 1.15,
    )
    report.add(
        f"  same with a {MODEL_LATENCY_S:g} s model latency / `claude -p` directly,"
        f" {cap} at a time",
        f"{slow_span / direct:.2f} ({slow_span:.2f} s / {direct:.2f} s)",
    )


SLOW_MARK = "ackload"


def slow_responder(request: RecordedRequest) -> Reply | None:
    """Turns marked `ackload` stream their answer for ~20 s: they hold their slots."""
    if SLOW_MARK in request.last_user_text:
        return Reply(chunks=40, chunk_delay=0.5)
    return None


class LoopLag:
    """How late this process's event loop wakes up (the simulator's clock for acks runs here)."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags.append(time.perf_counter() - before - self.period)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def probe_acks(
    sim: FeishuSimulator, push: Callable[[int], Awaitable[Delivery]], count: int, spacing: float
) -> tuple[list[AckRecord], LoopLag]:
    """Send `count` events `spacing` s apart; return their acks and this loop's lag meanwhile."""
    with LoopLag() as lag:
        frames = []
        for i in range(count):
            frames.append((await push(i)).frame_message_id)
            await asyncio.sleep(spacing)  # pacing: users write at a rate, not all at once
        wanted = set(frames)
        by_frame = await sim.wait_for(
            lambda: (
                len(
                    acked := {
                        a.frame_message_id: a for a in sim.acks if a.frame_message_id in wanted
                    }
                )
                == len(wanted)
                and acked
            ),
            30,
        )
    return [by_frame[f] for f in frames], lag


def cpu_of(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of the processes so far (0 for any that are gone)."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def ack_summary(acks: list[Any]) -> tuple[float, float, float]:
    lat = [a.latency_s for a in acks]
    return percentile(lat, 50), percentile(lat, 99), max(lat)


async def bench_acks(b: BotBench, probes: int) -> None:
    """Ack latency while `cap` turns run and 50 wait; then a shutdown under that load."""
    report, sim, cap = b.report, b.sim, b.cap
    b.api.responder = slow_responder
    bot = b.bot("bot_acks", CLAUDE_QUEUE_MAX=50, SHUTDOWN_GRACE=0)
    await bot.start()
    stats, stop = SamplerStats(), asyncio.Event()
    sampler = asyncio.create_task(bot.sample(stats, stop))
    try:
        # Baseline: the idle bot, events that cost it nothing (redeliveries of an answered one).
        await one_bot_turn(sim, "oc_ack_idle", "ack idle")
        first = sim.deliveries[-1].event_id
        idle_acks, idle_lag = await probe_acks(sim, lambda i: sim.redeliver(first), probes, 0.02)
        for i in range(cap + 50):
            await sim.push_message(chat_id=f"oc_load_{i}", text=f"{SLOW_MARK} {i}")
        await bot.wait_state(lambda h: h["active"] == cap and h["queued"] == 50)

        probe_ids: list[str] = []

        async def probe(i: int) -> Delivery:  # users keep writing: each is refused as busy
            probe_ids.append(await sim.push_message(chat_id=f"oc_probe_{i}", text=f"probe {i}"))
            return sim.deliveries[-1]

        clis = bot.children()
        cpu_bot, cpu_me, wall = bot.cpu()[0], time.process_time(), time.perf_counter()
        cpu_clis = cpu_of(clis)
        acks, lag = await probe_acks(sim, probe, probes, 0.02)
        wall = time.perf_counter() - wall
        cpu_bot, cpu_me = bot.cpu()[0] - cpu_bot, time.process_time() - cpu_me
        cpu_clis = cpu_of(clis) - cpu_clis
        load = os.getloadavg()[0]
        after = await bot.healthz()
        b.load_rss["acks"] = (stats.max_rss, bot.uss())
        # A refusal as busy is a text reply (Conversations.admit), not a card: wait for any
        # reply to each probe rather than for a final card.
        wanted = set(probe_ids)
        replies = await sim.wait_for(
            lambda: (
                (got := {m.reply_to: m for m in sim.messages if m.reply_to in wanted})
                and len(got) == len(wanted)
                and got
            ),
            120,
        )
        busy = sum("busy" in sim.message_text(m) for m in replies.values())
    finally:
        stop.set()
        await sampler
        b.api.responder = None
    held = after["active"] == cap and after["queued"] == 50
    p50, p99, top = ack_summary(acks)
    report.add(
        f"ack latency p50 / p99, {probes} events while {cap} turns run and 50 wait",
        f"{p50 * 1000:.1f} / {p99 * 1000:.1f} ms (max {top * 1000:.1f} ms)",
        "p99 ≤ 10 ms",
        p99 <= 0.010,
    )
    i50, i99, itop = ack_summary(idle_acks)
    report.add(
        f"ack latency p50 / p99, idle bot ({probes} redeliveries)",
        f"{i50 * 1000:.1f} / {i99 * 1000:.1f} ms (max {itop * 1000:.1f} ms)",
    )
    biz = [a.biz_rt_ms for a in acks if a.biz_rt_ms is not None]
    lag99, idle_lag99 = percentile(lag.lags, 99) * 1000, percentile(idle_lag.lags, 99) * 1000
    report.note(
        f"acks under load: SDK handler time (biz_rt) p50/p99 {percentile(biz, 50)}/"
        f"{percentile(biz, 99)} ms; event-loop lag p99 of this (measuring) process {lag99:.1f} ms"
        f" (idle run {idle_lag99:.1f} ms); CPU used during the probes: bot {cpu_bot / wall:.0%},"
        f" this process {cpu_me / wall:.0%}, the {len(clis)} CLIs {cpu_clis / wall:.0%} of one core"
        f" (load average {load:.1f}); load held through the probes: {held}"
        f" ({after['active']} running, {after['queued']} queued); {busy}/{probes} probes were"
        " answered 'busy'"
    )
    started = time.perf_counter()
    code = await bot.stop()
    report.add(
        f"shutdown under load (SIGTERM, SHUTDOWN_GRACE=0, {cap} running + 50 queued)",
        f"{time.perf_counter() - started:.2f} s, exit {code}, "
        f"{len(bot.leftovers)} CLI processes left",
    )


async def bench_bot(
    report: Report, tmp: Path, sections: set[str], args: argparse.Namespace
) -> None:
    command = BotProcess.command(args.prelude)
    async with FeishuSimulator(ping_interval=120) as sim, FakeAnthropic() as api:
        b = BotBench(report, sim, api, tmp, command, cap=args.cap)
        b.env = claude_env(api.base_url, tmp / "home")
        b.workdir.mkdir(parents=True, exist_ok=True)
        if sections & {"overhead", "makespan"}:
            starts = await extra_starts(b, args.starts - 1) if "overhead" in sections else []
            bot = b.bot("bot_main", CLAUDE_QUEUE_MAX=60, SHUTDOWN_GRACE=20)
            await bot.start()
            report.note(f"bot healthy {bot.startup_s:.1f} s after spawn")
            try:
                if "overhead" in sections:
                    await bench_idle_and_overhead(b, bot, args.samples, starts)
                if "makespan" in sections:
                    await bench_makespan(b, bot)
                rss_after = await idle_rss(bot, 1.0)
            finally:
                code = await bot.stop()
            report.note(
                f"bot stopped: exit {code}, {len(bot.leftovers)} CLI processes left; idle RSS"
                f" after the load {rss_after / MB:.0f} MB"
            )
        if "acks" in sections:
            await bench_acks(b, args.probes)
    if b.load_rss:
        report.add(
            "bot RSS under load, peak (USS at the end of the load)",
            "; ".join(
                f"{name} {rss / MB:.0f} MB ({uss / MB:.0f} MB)"
                for name, (rss, uss) in b.load_rss.items()
            ),
        )


# -- what lark_oapi costs -------------------------------------------------------------------

# RSS from /proc/self/statm, not ru_maxrss: Linux carries the parent's peak over fork + exec.
# argv: how many of the names to import untimed, then the names; a name "module:function" is
# imported and the function called.
_IMPORT_PROBE = """
import importlib, os, sys, time
untimed = int(sys.argv[1])
def load(entry):
    name, _, function = entry.partition(":")
    module = importlib.import_module(name)
    if function:
        getattr(module, function)()
for entry in sys.argv[2 : 2 + untimed]:
    load(entry)
started = time.perf_counter()
for entry in sys.argv[2 + untimed :]:
    load(entry)
took = time.perf_counter() - started
with open("/proc/self/statm") as f:
    print(took, int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
"""

# Everything `feishu-bot run` imports, except lark_oapi (the gateway loads it lazily).
_BOT_MODULES = [
    "feishu_bot.app",
    "feishu_bot.checks",
    "feishu_bot.claude.launcher",
    "feishu_bot.context",
    "feishu_bot.dispatch",
    "feishu_bot.feishu.access",
    "feishu_bot.feishu.gateway",
    "feishu_bot.feishu.patch_stream",
    "feishu_bot.feishu.replier",
    "feishu_bot.handlers.chat",
    "feishu_bot.handlers.commands",
    "feishu_bot.health",
    "feishu_bot.health_http",
    "feishu_bot.log",
    "feishu_bot.metrics",
    "feishu_bot.turns",
    "database.store",
]


async def import_cost(before: list[str], timed: list[str]) -> tuple[float, float]:
    """(seconds `timed` took, RSS bytes after all) of a fresh interpreter importing `before`
    and then `timed` (an entry "module:function" is imported and the function called)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _IMPORT_PROBE,
        str(len(before)),
        *before,
        *timed,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    took, rss = out.split()
    return float(took), float(rss)


async def bench_imports(report: Report) -> None:
    _, bare = await import_cost([], [])
    t_bot, bot = await import_cost([], _BOT_MODULES)
    t_full, full = await import_cost(_BOT_MODULES, ["lark_oapi"])
    report.add(
        "import: RSS of python / + the bot's modules / + the whole lark_oapi package",
        f"{bare / MB:.0f} / {bot / MB:.0f} / {full / MB:.0f} MB "
        f"(bot: {t_bot:.2f} s; lark_oapi: +{(full - bot) / MB:.0f} MB, {t_full:.1f} s)",
    )
    # What the bot does: lark_sdk's lean load (no package __init__, no event processors).
    t_lean, lean = await import_cost(_BOT_MODULES, ["feishu_bot.feishu.lark_sdk:load_sdk"])
    report.add(
        "import: + lark_oapi as the bot loads it (lark_sdk.load_sdk)",
        f"{lean / MB:.0f} MB (+{(lean - bot) / MB:.0f} MB, {t_lean:.2f} s)",
    )


# -- main -----------------------------------------------------------------------------------


def print_table(report: Report, header: str, elapsed: float) -> None:
    widths = [max(len(r.name) for r in report.rows), 0, 0, 6]
    widths[1] = max(len(r.measured) for r in report.rows)
    widths[2] = max(len(r.target) for r in report.rows)
    cols = ("benchmark", "measured", "target", "verdict")
    widths = [max(w, len(c)) for w, c in zip(widths, cols, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(header)
    print(line(cols))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in report.rows:
        print(line((r.name, r.measured, r.target, r.verdict)))
    if report.notes:
        print()
        for note in report.notes:
            print(f"- {note}")
    print(f"\n(total benchmark time {elapsed:.0f} s)")


SECTIONS = ("store", "imports", "streaming", "overhead", "makespan", "acks")


async def main(args: argparse.Namespace) -> None:
    # A CLI killed at shutdown closes its stream mid-answer; aiohttp logs that as an error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    if not REAL_CLAUDE_BIN.exists():
        sys.exit(f"pinned CLI missing: {REAL_CLAUDE_BIN}")
    for name in ("IS_SANDBOX", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    sections = set(args.only or SECTIONS)
    started = time.perf_counter()
    version = await asyncio.create_subprocess_exec(
        str(REAL_CLAUDE_BIN), "--version", stdout=asyncio.subprocess.PIPE
    )
    header = (
        f"machine: {machine_info()}\n"
        f"claude: {(await version.communicate())[0].decode().strip()} against FakeAnthropic"
        f" (instant replies); bot: `{' '.join(BotProcess.command(args.prelude)[:2])} ...`"
        f" as a subprocess"
    )
    report = Report()
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp_dir:
        tmp = Path(tmp_dir)
        if "store" in sections:
            print("running: store", file=sys.stderr, flush=True)
            (tmp / "store").mkdir()
            await bench_store(report, args.conversations, args.checks, tmp / "store")
        if "imports" in sections:
            print("running: imports", file=sys.stderr, flush=True)
            await bench_imports(report)
        if "streaming" in sections:
            print("running: streaming", file=sys.stderr, flush=True)
            await asyncio.to_thread(bench_streaming, report)  # it runs its own event loops
        if sections & {"overhead", "makespan", "acks"}:
            print("running: bot", file=sys.stderr, flush=True)
            (tmp / "bot").mkdir()
            await bench_bot(report, tmp / "bot", sections, args)
    print_table(report, header, time.perf_counter() - started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--samples", type=int, default=20, help="overhead samples of each kind")
    parser.add_argument(
        "--starts", type=int, default=5, help="bot starts for the start → connected row"
    )
    parser.add_argument("--cap", type=int, default=5, help="CLAUDE_MAX_CONCURRENT of the bot")
    parser.add_argument("--probes", type=int, default=200, help="events for the ack rows")
    parser.add_argument("--conversations", type=int, default=100_000, help="store rows")
    parser.add_argument("--checks", type=int, default=5_000, help="store rows")
    parser.add_argument(
        "--prelude",
        type=Path,
        default=None,
        help="diagnosis: a Python file the bot process runs before it starts (see README)",
    )
    asyncio.run(main(parser.parse_args()))
