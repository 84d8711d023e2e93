"""The scheduler of /cron jobs: it turns due times into turns of their conversations.

`CronRunner.run()` is one background task. Each pass (`tick`) reads the active jobs, acts on
each job's latest unhandled due time by the rule of `cron_schedule.decide` (run it if it is
less than an hour old, skip it otherwise: a restart makes up one missed run, never a burst),
then sleeps until the next due time of any job, at most `MAX_SLEEP_S`, or until `wake()` (a job
was added or resumed).

A run is admitted exactly like a message (`Conversations.admit`: the cap, the queues, the
spending limits, the journal), as a message of the job's creator whose id is the run's
exactly-once key ``cron:<job>:<due>``; the journal refuses a second turn with that id, so a
crash between admitting and recording the due time, or a catch-up after a restart, never runs
one due time twice. Before each run the creator's access is checked again: a creator no longer
allowed pauses the job, and the chat is told. A busy or spending refusal is reported in the
chat (by the admission) and is not a failure; the next due time is tried as usual. When a
job's runs since it was created or resumed have failed `FAILURES_TO_PAUSE` times in a row, it
pauses itself and says so.

Every task it starts (the loop, one watcher per running run) is cancelled by `aclose()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from database.cron import run_message_id
from database.models import TurnStatus
from feishu_bot.cron_schedule import decide, format_time, next_due
from feishu_bot.events import InboundMessage
from feishu_bot.keys import ConversationKey
from feishu_bot.scheduled_reply import post_to_conversation

if TYPE_CHECKING:
    from database.models import CronJob
    from database.store import SessionStore
    from feishu_bot.conversations import Conversations
    from feishu_bot.feishu.access import AccessPolicy
    from feishu_bot.turns import TurnRegistry

__all__ = ["FAILURES_TO_PAUSE", "MAX_SLEEP_S", "CronRunner"]

MAX_SLEEP_S: Final = 60.0  # also bounds how long a changed wall clock goes unnoticed
FAILURES_TO_PAUSE: Final = 3
_MIN_SLEEP_S: Final = 0.01  # a timer that fires a hair early must not spin
NOT_ALLOWED: Final = "its creator is no longer allowed to use the bot"
_ADMITTED: Final = {
    "accepted": "started",
    "duplicate": "already run",
    "busy": "skipped: the bot was busy",
    "refused": "skipped: spending limit reached",
}


class CronRunner:
    """See the module docstring. `clock` is epoch seconds (injectable for tests)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        conversations: Conversations,
        turns: TurnRegistry,
        access: AccessPolicy,
        replier: Any,
        tz: tzinfo,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._conversations = conversations
        self._turns = turns
        self._access = access
        self._replier = replier
        self.tz = tz
        self.clock = clock
        self._wake = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look at the jobs again now (one was added or resumed)."""
        self._wake.set()

    async def run(self) -> None:
        """Tick until cancelled; a failing pass is logged and tried again later."""
        while True:
            self._wake.clear()
            try:
                delay = await self.tick()
            except Exception:
                logger.exception("cron: a pass over the jobs failed")
                delay = MAX_SLEEP_S
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def aclose(self) -> None:
        """Cancel the watchers of running runs (the runs themselves belong to the turns)."""
        for task in list(self._watchers):
            task.cancel()
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)

    async def tick(self) -> float:
        """Act on every active job once; return the seconds until the next due time."""
        now = self.clock()
        nearest = MAX_SLEEP_S
        for job in await self._store.list_cron_jobs(active_only=True):
            step = decide(job.schedule, self.tz, now=now, handled_until=job.handled_until)
            if step.action == "run" and step.due is not None:
                await self._fire(job, step.due)
            elif step.action == "skip" and step.due is not None:
                logger.info("cron job {}: due {} missed by over an hour, skipped", job.job_id,
                            step.due)
                await self._store.handle_cron_due(
                    job.job_id, step.due, f"missed {self._when(step.due)} (the bot was down)"
                )
            upcoming = next_due(job.schedule, self.tz, now)
            if upcoming is not None:
                nearest = min(nearest, upcoming - now)
        return max(_MIN_SLEEP_S, nearest)

    # ------------------------------------------------------------------ one run
    async def _fire(self, job: CronJob, due: float) -> None:
        with logger.contextualize(conversation=job.conversation_key):
            if not self._access.allows(job.creator_open_id, job.chat_id):
                await self._pause(job, due, NOT_ALLOWED)
                return
            if await self._failing(job):
                await self._pause(job, due, f"its last {FAILURES_TO_PAUSE} runs failed")
                return
            key = ConversationKey.parse(job.conversation_key)
            msg = InboundMessage(
                message_id=run_message_id(job.job_id, due),
                chat_id=job.chat_id,
                chat_type=key.chat_type,
                sender_open_id=job.creator_open_id,
                msg_type="text",
                text=job.prompt,
                mentioned_bot=True,
                thread_root=key.thread_root,
                create_time_ms=int(due * 1000),
            )
            outcome = await self._conversations.admit(msg)
            logger.info("cron job {} due {}: {}", job.job_id, self._when(due), outcome)
            note = _ADMITTED.get(outcome, outcome)
            await self._store.handle_cron_due(job.job_id, due, f"{note} {self._when(due)}")
            if outcome == "accepted":
                self._watch(job, msg.message_id)

    def _watch(self, job: CronJob, run_id: str) -> None:
        handle = next((h for h in self._turns.handles(job.conversation_key)
                       if h.message_id == run_id), None)
        if handle is None or handle.task is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._after_run(job, run_id, handle.task), name=f"cron-watch:{run_id}"
        )
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _after_run(self, job: CronJob, run_id: str, turn_task: asyncio.Task[Any]) -> None:
        """Once the run's turn has ended: its outcome for /cron list, and the failure rule."""
        await asyncio.wait({turn_task})
        turn = await self._store.turn_of_message(run_id)
        if turn is None:
            return
        note = _outcome_note(turn.status, turn.error)
        await self._store.note_cron_outcome(job.job_id, f"{note} {self._when(turn.created_at)}")
        if turn.status == TurnStatus.FAILED and await self._failing(job):
            current = await self._store.get_cron_job(job.job_id)
            if current is not None and current.paused is None:
                await self._pause(current, None, f"its last {FAILURES_TO_PAUSE} runs failed")

    async def _failing(self, job: CronJob) -> bool:
        """Whether the job's last FAILURES_TO_PAUSE runs that ran (not refused, not stopped),
        of those due since it was created or resumed, all failed."""
        runs = await self._store.cron_runs(job.job_id, since=job.counted_since, limit=50)
        ran = [r for r in runs if r.status in (TurnStatus.DONE, TurnStatus.FAILED)]
        last = ran[:FAILURES_TO_PAUSE]
        return len(last) == FAILURES_TO_PAUSE and all(r.status == TurnStatus.FAILED for r in last)

    async def _pause(self, job: CronJob, due: float | None, why: str) -> None:
        if not await self._store.pause_cron_job(job.job_id, why):
            return
        logger.warning("cron job {} paused: {}", job.job_id, why)
        if due is not None:
            await self._store.handle_cron_due(job.job_id, due, f"paused {self._when(due)}")
        text = (
            f"⏸ /cron job {job.job_id} is paused: {why}. "
            f"/cron resume {job.job_id} starts it again, /cron rm {job.job_id} deletes it."
        )
        try:
            await post_to_conversation(self._replier, job.conversation_key, text)
        except Exception:
            logger.exception("cron: could not say that job {} paused", job.job_id)

    def _when(self, ts: float) -> str:
        return format_time(ts, self.tz)


def _outcome_note(status: TurnStatus, error: str | None) -> str:
    if status == TurnStatus.DONE:
        return "ok"
    if status == TurnStatus.FAILED:
        return "failed" + (f" ({error[:80]})" if error else "")
    if status == TurnStatus.CANCELLED:
        if error and "TurnRefused" in error:
            return "not run: spending limit reached"
        return "stopped"
    if status == TurnStatus.INTERRUPTED:
        return "interrupted by a restart"
    return "kept for the next start"  # queued again by a shutdown
