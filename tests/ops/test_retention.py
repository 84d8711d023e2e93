"""run_pruning: the store's retention on a schedule, and the dropped sessions' transcripts
deleted from the CLI's config directory (issue 12 #12)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from database import PruneResult, SessionStore
from feishu_bot.retention import run_pruning

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Rounds:
    """The `sleep` of run_pruning: records each wait; after `n` rounds it parks for good."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.waits: list[float] = []
        self.done = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self.n:
            self.done.set()
            await asyncio.Event().wait()


async def run_rounds(store: Any, n: int, **kw: Any) -> Rounds:
    rounds = Rounds(n)
    task = asyncio.create_task(run_pruning(store, 60, sleep=rounds, **kw))
    try:
        async with asyncio.timeout(10):
            await rounds.done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return rounds


async def test_transcripts_of_dropped_sessions_stay_forever(tmp_path: Path) -> None:
    clock = Clock()
    home = tmp_path / "home"
    project = home / ".claude" / "projects" / "-w"
    project.mkdir(parents=True)
    ids = [str(uuid.UUID(int=n + 1)) for n in range(23)]
    async with await SessionStore.open(tmp_path / "bot.db", clock=clock) as store:
        for sid in ids:
            clock.now += 1
            (project / f"{sid}.jsonl").write_text("{}\n")
            await store.touch_session("p2p:oc_1", sid, "q")
        turn_id = await store.accept_message(
            "om_1", conversation_key="p2p:oc_1", chat_id="oc_1", prompt="x", reply_in_thread=False
        )
        await store.update_turn(turn_id, status="done")
        clock.now += 31 * DAY

        rounds = await run_rounds(store, 1, env={"HOME": str(home)})

        assert rounds.waits == [60]
        assert sorted(p.stem for p in project.iterdir()) == sorted(ids[3:])  # the newest 20
        assert len(await store.list_sessions("p2p:oc_1", limit=50)) == 20
        assert await store.get_turn(turn_id) is None


async def test_a_failed_round_does_not_end_the_schedule() -> None:
    class FlakyStore:
        calls = 0

        async def prune(self, now: float | None = None) -> PruneResult:
            self.calls += 1
            if self.calls == 1:
                raise OSError("disk I/O error")
            return PruneResult()

    store = FlakyStore()
    rounds = await run_rounds(store, 3, env={})
    assert store.calls == 3 and rounds.waits == [60, 60, 60]
