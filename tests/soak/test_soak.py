"""Soak: 200 messages from 50 conversations through the whole bot, with faults on every side.

The bot runs in-process against the Feishu simulator (the e2e fixtures), with the fake CLI for
speed. What happens during the run (all choices come from one seeded `random.Random`):

- 50 conversations of three kinds (p2p chats, @-mentions in group chats, topics of one shared
  group), 4 messages each, sent in a shuffled order in three waves;
- redeliveries of the identical event (as Feishu re-pushes): at once, later, and a final burst
  after everything was answered; some events arrive in two fragments;
- two websocket drops while turns run; events written to a dropped socket and never acked are
  re-pushed, as Feishu does;
- 429 rate limits on replies and on card PATCHes;
- CLI crashes (exit 1, and death by SIGKILL): retried once (CLAUDE_MAX_RETRIES=1), then reported;
  one CLI that hangs until CLAUDE_TIMEOUT.

The cards are the PATCH-updated ones (FEISHU_CARDKIT=off); warm sessions are on.

At the end: every message was acked, has exactly one reply card, and that card is final (green
with the echo, or red with the expected error) and never went back to a progress state; no
answer appears twice; the bot ran exactly
the CLI turns it should (one per message, two per crashing one); the fake CLI's own
start/exit records never show more than CLAUDE_MAX_CONCURRENT alive at once; no CLI process is
left; no reaction is left on a user message; every received event was either accepted once or
dropped as a duplicate.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.records import SentMessage
from tests.claude.support import alive_pids, fake_cli_processes
from tests.e2e.conftest import StartBot, eventually
from tests.fakes.fake_claude_log import FakeClaudeLog

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEED = 20261105
CONVERSATIONS = 50
PER_CONVERSATION = 4
CAP = 5
# Long enough that an echo of the fake never hits it on a loaded 2-core box, short enough that
# the one hanging CLI costs little.
TIMEOUT_S = 5
MAX_RETRIES = 1
CRASHES, SIGKILLS, SLOW = 8, 4, 30
HANG_AT = 5  # send position of the hanging message: early, so its wait overlaps other work
WAVES = ((0, 80, 30), (80, 160, 100), (160, 200, None))  # [start, end), then wait for N final
DROPS_AT = (50, 150)  # send positions after which every websocket is cut
REPLY_429_AT = (20, 130)
PATCH_429_AT = (90,)
FINAL_TEMPLATES = {"green": "done", "red": "error"}
WAIT_S = 150


@dataclass
class Planned:
    """One user message of the soak and what must come of it."""

    index: int
    conv: int
    mode: str  # echo, slow, crash, sigkill, hang
    text: str
    message_id: str = ""

    @property
    def token(self) -> str:
        return f"soak#{self.index:03d} "

    @property
    def expected_runs(self) -> int:
        return MAX_RETRIES + 1 if self.mode in ("crash", "sigkill") else 1

    @property
    def expected_state(self) -> str:
        return "done" if self.mode in ("echo", "slow") else "error"

    def expected_text(self) -> str:
        if self.mode in ("echo", "slow"):
            return f"echo: {self.text}"
        if self.mode == "hang":
            return f"Claude took longer than {TIMEOUT_S:g}s"
        return f"Claude failed after {self.expected_runs} attempts"


def make_plan(rng: random.Random) -> list[Planned]:
    order = [c for c in range(CONVERSATIONS) for _ in range(PER_CONVERSATION)]
    rng.shuffle(order)
    others = [i for i in range(len(order)) if i != HANG_AT]
    special = rng.sample(others, CRASHES + SIGKILLS + SLOW)
    modes = {i: "echo" for i in range(len(order))}
    modes[HANG_AT] = "hang"
    for n, i in enumerate(special):
        modes[i] = "crash" if n < CRASHES else "sigkill" if n < CRASHES + SIGKILLS else "slow"
    plan = []
    for i, conv in enumerate(order):
        marker = "" if modes[i] == "echo" else f" [[fake:{modes[i]}]]"
        plan.append(Planned(i, conv, modes[i], f"soak#{i:03d} c{conv:02d}{marker}"))
    return plan


async def push(sim: FeishuSimulator, item: Planned, fragments: int) -> str:
    """Send one message in its conversation: p2p, @bot in a group, or @bot in a topic."""
    c = item.conv
    if c % 3 == 0:
        return await sim.push_message(
            chat_id=f"oc_soak_p2p_{c:02d}",
            sender_open_id=f"ou_soak_{c:02d}",
            text=item.text,
            fragments=fragments,
        )
    if c % 3 == 1:
        return await sim.push_message(
            chat_id=f"oc_soak_group_{c:02d}",
            chat_type="group",
            sender_open_id=f"ou_soak_{c:02d}",
            mention_bot=True,
            text=item.text,
            fragments=fragments,
        )
    return await sim.push_message(
        chat_id="oc_soak_topics",
        chat_type="group",
        sender_open_id=f"ou_soak_{c:02d}",
        mention_bot=True,
        root_id=f"om_soak_root_{c:02d}",
        thread_id=f"omt_soak_{c:02d}",
        text=item.text,
        fragments=fragments,
    )


def template(msg: SentMessage) -> str | None:
    header = msg.content.get("header") if isinstance(msg.content, dict) else None
    return header.get("template") if isinstance(header, dict) else None


def final_cards(sim: FeishuSimulator, wanted: set[str]) -> dict[str, SentMessage]:
    """user message id -> its reply card, for the cards already in a final state."""
    out: dict[str, SentMessage] = {}
    for msg in sim.messages:
        if msg.reply_to in wanted and template(msg) in FINAL_TEMPLATES:
            out[msg.reply_to] = msg
    return out


async def repush_lost(sim: FeishuSimulator, event_ids: list[str], timeout: float) -> int:
    """Feishu's re-push: redeliver events whose delivery died with a dropped connection.

    Returns once every event has at least one acked delivery; returns how many were re-pushed.
    """
    repushed = 0
    deadline = time.monotonic() + timeout
    while True:
        acked = {d.event_id for d in sim.deliveries if d.acked}
        unacked = [e for e in event_ids if e not in acked]
        if not unacked:
            return repushed
        live = {c.conn_id for c in sim.connection_log if c.live}
        last = {d.event_id: d for d in sim.deliveries}
        lost = [e for e in unacked if last[e].conn_id is not None and last[e].conn_id not in live]
        for event_id in lost:
            await sim.redeliver(event_id)
            repushed += 1
        if not lost:
            revision = sim.revision
            await sim.wait_for(lambda r=revision: sim.revision != r, deadline - time.monotonic())


def cli_runs(log: FakeClaudeLog) -> Counter[int]:
    """Message index -> number of CLI runs (turns, in warm or new processes) made for it."""
    runs: Counter[int] = Counter()
    for rec in log.turns():
        found = re.search(r"soak#(\d{3}) ", rec["prompt_head"])
        assert found, rec
        runs[int(found.group(1))] += 1
    return runs


async def test_soak_200_messages_50_conversations_with_faults(
    sim: FeishuSimulator,
    start_bot: StartBot,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    plan = make_plan(rng)
    fake_log = FakeClaudeLog(tmp_path / "fake_claude.log")
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(fake_log.path))
    running = await start_bot(
        fake_cli=True,
        CLAUDE_MAX_CONCURRENT=CAP,
        # Every waiting turn counts against the queue (also those behind their own
        # conversation), so room for all of them means no "busy" refusal can happen.
        CLAUDE_QUEUE_MAX=CONVERSATIONS * PER_CONVERSATION,
        CLAUDE_CONVERSATION_QUEUE_MAX=PER_CONVERSATION,
        # The PATCH cards, whose every version the simulator keeps (the CardKit path has its
        # own end-to-end tests, tests/e2e/test_cards_e2e.py).
        FEISHU_CARDKIT="off",
        CLAUDE_TIMEOUT=TIMEOUT_S,
        CLAUDE_MAX_RETRIES=MAX_RETRIES,
        LOG_LEVEL="INFO",
    )
    bot = running.bot
    by_id: dict[str, Planned] = {}
    sent: list[str] = []  # event ids in send order
    redelivered = repushed = 0

    def acked_events() -> int:
        return len({d.event_id for d in sim.deliveries if d.acked})

    def context() -> str:
        stats = bot.launcher.stats()
        return (
            f"launcher {stats}\ngateway connected={bot.gateway.connected}"
            f" reconnects={bot.gateway.reconnects}; simulator connections={sim.connections}"
            f" total={sim.total_connections}, unacked deliveries="
            f"{sum(not d.acked for d in sim.deliveries)}\nlog tail:\n{running.log_text()[-6000:]}"
        )

    for start, end, wait_final in WAVES:
        for item in plan[start:end]:
            fragments = 2 if rng.random() < 0.1 else 1
            item.message_id = await push(sim, item, fragments)
            by_id[item.message_id] = item
            sent.append(sim.user_messages[item.message_id].event_id)
            roll = rng.random()
            if roll < 0.08:  # the same event again at once: races the first delivery
                await sim.redeliver(sent[-1])
                redelivered += 1
            elif roll < 0.16:  # an earlier one, queued, running or answered by now
                await sim.redeliver(rng.choice(sent))
                redelivered += 1
            if item.index in REPLY_429_AT:
                sim.fail_next(
                    "POST",
                    r"/reply$",
                    status=429,
                    code=99991400,
                    count=3,
                    headers={"x-ogw-ratelimit-reset": "1"},
                )
            if item.index in PATCH_429_AT:
                sim.fail_next("PATCH", r"/messages/[^/]+$", status=429, code=99991400, count=2)
            if item.index in DROPS_AT:
                # Cut the socket while turns run: once the bot has taken most of what was sent,
                # so some events are in flight (lost, re-pushed below) and the rest are turns.
                await sim.wait_for(lambda: acked_events() >= len(set(sent)) - 10, WAIT_S)
                assert await sim.drop_connections() == 1
        # Feishu re-pushes what was not acked, so nothing sent so far stays lost.
        repushed += await repush_lost(sim, sent, WAIT_S)
        if wait_final is not None:
            wanted = set(by_id)
            try:
                await sim.wait_for(
                    lambda w=wanted, n=wait_final: len(final_cards(sim, w)) >= n, WAIT_S
                )
            except TimeoutError:
                raise AssertionError(
                    f"wave [{start}, {end}): {len(final_cards(sim, wanted))} final, not"
                    f" {wait_final}\n{context()}"
                ) from None

    wanted = set(by_id)
    try:
        await sim.wait_for(lambda: len(final_cards(sim, wanted)) == len(plan), WAIT_S)
    except TimeoutError:
        missing = sorted(wanted - set(final_cards(sim, wanted)), key=lambda m: by_id[m].index)
        raise AssertionError(
            f"{len(missing)} messages without a final answer, e.g. "
            f"{[by_id[m].text for m in missing[:5]]}\n{context()}"
        ) from None

    # A burst of redeliveries after everything was answered: all must be dropped as duplicates.
    counters = bot.dispatcher.counters
    dropped_before = counters.duplicates_dropped
    late = rng.sample(sent, 25)
    for event_id in late:
        await sim.redeliver(event_id)
    await repush_lost(sim, late, WAIT_S)
    await eventually(
        lambda: (
            counters.duplicates_dropped >= dropped_before + len(late)
            and counters.events == counters.turns_accepted + counters.duplicates_dropped
        ),
        WAIT_S,
    )

    stats = bot.launcher.stats()
    events, accepted, duplicates = (
        counters.events,
        counters.turns_accepted,
        counters.duplicates_dropped,
    )
    reconnects = bot.gateway.reconnects
    assert await running.stop() == 0
    elapsed = time.monotonic() - started

    # -- every message: acked, one reply card, final, with the expected content ----------------
    assert all(a.code == 200 for a in sim.acks), [a for a in sim.acks if a.code != 200][:3]
    assert {d.event_id for d in sim.deliveries if d.acked} >= set(sent)
    cards = final_cards(sim, wanted)
    problems: list[str] = []
    for mid, item in by_id.items():
        replies = sim.replies_to(mid)
        if len(replies) != 1:
            problems.append(f"{item.text}: {len(replies)} replies")
            continue
        card = cards[mid]
        states = [(v.get("header") or {}).get("template") for v in card.versions]
        first_final = next(i for i, t in enumerate(states) if t in FINAL_TEMPLATES)
        if any(t not in FINAL_TEMPLATES for t in states[first_final:]):
            problems.append(f"{item.text}: progress landed after the final state: {states}")
        state = FINAL_TEMPLATES[template(card) or ""]
        text = sim.message_text(card)
        if state != item.expected_state or item.expected_text() not in text:
            problems.append(f"{item.text}: {state} card {text!r}")
    assert not problems, "\n".join(problems[:10])
    # Nothing else was sent, and no answer text appears in two messages.
    assert len(sim.messages) == len(plan), [m.reply_to for m in sim.messages][:10]
    texts = [sim.message_text(m) for m in sim.messages]
    for item in plan:
        copies = sum(f"echo: {item.token}" in t for t in texts)
        assert copies == (1 if item.expected_state == "done" else 0), (item.text, copies)
    assert sim.live_reactions() == []

    # -- dedupe bookkeeping: each received event accepted once or dropped as a duplicate --------
    # (A delivery written just before a drop may have been read, with only its ack lost.)
    assert sum(d.acked for d in sim.deliveries) <= events <= len(sim.deliveries)
    assert accepted == len(plan)
    assert events == accepted + duplicates

    # -- the CLI: the right number of runs, never more than CAP alive, none left ---------------
    runs = cli_runs(fake_log)
    wrong = {i.index: runs[i.index] for i in plan if runs[i.index] != i.expected_runs}
    assert not wrong, f"message index -> CLI runs: {wrong}"
    overlap = fake_log.max_overlap()  # also asserts that every started run logged its exit
    assert overlap <= CAP
    pids = {rec["pid"] for rec in fake_log.starts()}
    assert len(pids) == len(fake_log.starts())
    assert alive_pids(pids) == []
    assert fake_cli_processes(str(tmp_path)) == []

    # -- the launcher's own account agrees ------------------------------------------------------
    n = Counter(item.mode for item in plan)
    assert stats.active == 0 and stats.queued == 0
    assert stats.rejected == 0
    assert stats.ok == n["echo"] + n["slow"]
    assert stats.failed == n["crash"] + n["sigkill"] + n["hang"]
    assert stats.timeouts == n["hang"]
    assert stats.retried == (n["crash"] + n["sigkill"]) * MAX_RETRIES

    # -- the faults really happened -------------------------------------------------------------
    dropped = [c for c in sim.connection_log if c.dropped]
    assert len(dropped) == len(DROPS_AT)
    assert reconnects >= len(DROPS_AT)
    limited = Counter((r.method, r.status) for r in sim.requests if r.status == 429)
    assert limited[("POST", 429)] == 3 * len(REPLY_429_AT)
    assert limited[("PATCH", 429)] == 2 * len(PATCH_429_AT)

    latencies = sorted(a.latency_s * 1000 for a in sim.acks)
    ack_ms = [round(latencies[int(q * (len(latencies) - 1))], 1) for q in (0.5, 0.99, 1.0)]
    summary: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "messages": len(plan),
        "modes": dict(n),
        "cli_runs": sum(runs.values()),
        "max_overlap": overlap,
        "redelivered": redelivered + len(late),
        "repushed_after_drop": repushed,
        "duplicates_dropped": duplicates,
        "connections": sim.total_connections,
        "429s": sum(limited.values()),
        "ack_ms_p50_p99_max": ack_ms,
    }
    print(f"soak summary: {summary}")
