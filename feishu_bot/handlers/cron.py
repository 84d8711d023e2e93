"""/cron: scheduled prompts of a conversation, and the system prompt that tells Claude of them.

- ``/cron add <minute hour day month weekday> <prompt>``: a job of this conversation, run as
  its creator (who must stay allowed; their spending limit applies) at every due time in
  CRON_TZ. At most CRON_MAX_PER_CONVERSATION jobs per conversation (0 turns /cron off).
- ``/cron list``: id, the schedule and its words, the next run, the last outcome, the prompt.
- ``/cron rm <id>``, ``/cron pause <id>``, ``/cron resume <id>``: the job's creator or an
  approver (FEISHU_APPROVERS) only, and only jobs of this conversation.

When runs happen is the cron runner's business (`feishu_bot.cron_runner`); this module only
edits jobs and wakes the runner so a new schedule counts at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from feishu_bot import wording
from feishu_bot.cron_schedule import (
    ScheduleError,
    describe,
    format_time,
    next_due,
    split_add_args,
    zone,
)

if TYPE_CHECKING:
    from database.models import CronJob
    from feishu_bot.context import BotContext
    from feishu_bot.events import InboundMessage

__all__ = ["CRON_SYSTEM_PROMPT", "cmd_cron"]

CRON_SYSTEM_PROMPT: Final = (
    "You are used from a Feishu chat through a bot. Your own scheduling tools are not "
    "available here. To run a prompt on a schedule, tell the user to send "
    "`/cron add <minute hour day month weekday> <prompt>` in this chat (five-field cron, e.g. "
    "`/cron add 0 9 * * 1-5 summarize yesterday's commits`); `/cron list`, `/cron rm <id>`, "
    "`/cron pause <id>` and `/cron resume <id>` manage the jobs. Each run is a new message to "
    "you in this conversation."
)
USAGE: Final = (
    "Scheduled prompts of this conversation:\n"
    "/cron add <minute hour day month weekday> <prompt> — e.g. "
    "/cron add 0 9 * * 1-5 summarize yesterday's commits\n"
    "/cron list — the jobs, their next run and last outcome\n"
    "/cron rm <id>, /cron pause <id>, /cron resume <id>"
)
_PROMPT_SHOWN: Final = 120


async def cmd_cron(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    sub, _, rest = args.strip().partition(" ")
    sub = sub.lower()
    if sub == "add":
        return await _add(ctx, msg, rest.strip())
    if sub in ("list", "ls"):
        return await _list(ctx, msg)
    if sub in ("rm", "remove", "delete", "pause", "resume"):
        return await _change(ctx, msg, sub, rest.strip())
    return USAGE


def _now(ctx: BotContext) -> float:
    runner = getattr(ctx, "cron", None)
    return float(runner.clock()) if runner is not None else time.time()


async def _add(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    limit = ctx.settings.CRON_MAX_PER_CONVERSATION
    if limit <= 0:
        return "Scheduled prompts are turned off on this bot (CRON_MAX_PER_CONVERSATION=0)."
    try:
        schedule, prompt = split_add_args(args)
    except ScheduleError as exc:
        return str(exc)
    job = await ctx.store.add_cron_job(
        msg.conversation_key,
        chat_id=msg.chat_id,
        creator_open_id=msg.sender_open_id,
        schedule=schedule,
        prompt=prompt,
        max_per_conversation=limit,
        now=_now(ctx),
    )
    if job is None:
        return (
            f"This conversation already has {limit} scheduled prompts, the most it may have "
            "(CRON_MAX_PER_CONVERSATION). Remove one with /cron rm <id> first."
        )
    runner = getattr(ctx, "cron", None)
    if runner is not None:
        runner.wake()
    tz = zone(ctx.settings.CRON_TZ)
    upcoming = next_due(schedule, tz, job.handled_until)
    when = format_time(upcoming, tz) if upcoming is not None else "never"
    return (
        f"Scheduled job {job.job_id}: {describe(schedule)} (`{schedule}`), next run {when}. "
        "It runs as you in this conversation: your access and spending limit apply, and its "
        "answers come as new messages here."
    )


async def _list(ctx: BotContext, msg: InboundMessage) -> str:
    jobs = await ctx.store.list_cron_jobs(msg.conversation_key)
    if not jobs:
        return "No scheduled prompts in this conversation. " + USAGE.split("\n", 1)[1]
    tz = zone(ctx.settings.CRON_TZ)
    now = _now(ctx)
    lines = [f"Scheduled prompts here ({len(jobs)}):"]
    for job in jobs:
        lines.append(_line(job, tz, now))
    return "\n".join(lines)


def _line(job: CronJob, tz: object, now: float) -> str:
    if job.paused:
        state = f"⏸ paused: {job.paused}"
    else:
        upcoming = next_due(job.schedule, tz, max(now, job.handled_until))  # type: ignore[arg-type]
        state = f"next {format_time(upcoming, tz) if upcoming else 'never'}"  # type: ignore[arg-type]
    last = job.last_outcome or "never run yet"
    prompt = wording.bounded(" ".join(job.prompt.split()), _PROMPT_SHOWN)
    return (
        f"{job.job_id}. `{job.schedule}` — {describe(job.schedule)} — {state} — last: {last} — "
        f"by <at id={job.creator_open_id}></at>\n    “{prompt}”"
    )


async def _change(ctx: BotContext, msg: InboundMessage, sub: str, arg: str) -> str:
    if not arg.isdigit():
        return f"Usage: /cron {sub} <id>, with the id from /cron list."
    job = await ctx.store.get_cron_job(int(arg))
    if job is None or job.conversation_key != msg.conversation_key:
        return f"There is no job {wording.bounded(arg, 12)} in this conversation (/cron list)."
    if msg.sender_open_id != job.creator_open_id and (
        msg.sender_open_id not in ctx.settings.FEISHU_APPROVERS
    ):
        return f"Only the creator of job {job.job_id} or an approver can {sub} it."
    if sub in ("rm", "remove", "delete"):
        await ctx.store.remove_cron_job(job.job_id)
        return f"Deleted job {job.job_id} ({describe(job.schedule)})."
    if sub == "pause":
        if not await ctx.store.pause_cron_job(job.job_id, "paused with /cron pause"):
            return f"Job {job.job_id} is already paused."
        return f"Paused job {job.job_id}; /cron resume {job.job_id} starts it again."
    if not await ctx.store.resume_cron_job(job.job_id, now=_now(ctx)):
        return f"Job {job.job_id} is not paused."
    runner = getattr(ctx, "cron", None)
    if runner is not None:
        runner.wake()
    return (
        f"Resumed job {job.job_id}: it runs again from its next due time (runs missed while "
        "it was paused are not made up)."
    )
