"""/cron against a real SQLite store: add (schedule checks, the per-conversation limit, the
runner woken), list (words, next run, last outcome), and rm/pause/resume by the creator or an
approver only, in their own conversation only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from database.store import SessionStore
from feishu_bot.config import Settings
from feishu_bot.context import BotContext, GatewayStatus
from feishu_bot.events import InboundMessage
from feishu_bot.handlers.cron import cmd_cron
from feishu_bot.turns import TurnRegistry

START = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


class Runner:
    """What /cron uses of the CronRunner: its clock and wake()."""

    def __init__(self) -> None:
        self.wakes = 0

    def clock(self) -> float:
        return START + 30

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
async def ctx(tmp_path: Path):
    store = await SessionStore.open(tmp_path / "bot.db", clock=lambda: START)
    settings = Settings(
        _env_file=None, FEISHU_APP_ID="cli_t", FEISHU_APP_SECRET="secret-t",
        CLAUDE_WORKDIR=tmp_path, CRON_TZ="UTC", CRON_MAX_PER_CONVERSATION=2,
        FEISHU_APPROVERS="ou_lead",
    )
    yield BotContext(
        settings=settings, store=store, launcher=None, replier=None,  # type: ignore[arg-type]
        turns=TurnRegistry(), conversations=None,  # type: ignore[arg-type]
        workdir_root=tmp_path, gateway_status=lambda: GatewayStatus(connected=True),
        cron=Runner(),  # type: ignore[arg-type]
    )
    await store.close()


def msg(text: str, sender: str = "ou_a", chat: str = "oc_1") -> InboundMessage:
    return InboundMessage("om_x", chat, "p2p", sender, "text", text)


async def cron(ctx: BotContext, args: str, **kw: str) -> str:
    return await cmd_cron(ctx, msg(f"/cron {args}", **kw), args)


async def test_add_and_list(ctx: BotContext) -> None:
    added = await cron(ctx, "add 0 9 * * 1-5 summarize yesterday's commits")
    assert added.startswith("Scheduled job 1: At 09:00, Monday through Friday (`0 9 * * 1-5`)")
    assert "next run 2027-01-15 09:00 (UTC)" in added  # a Friday, 09:00 is an hour away
    assert ctx.cron.wakes == 1
    job = await ctx.store.get_cron_job(1)
    assert (job.conversation_key, job.creator_open_id, job.prompt) == (
        "p2p:oc_1", "ou_a", "summarize yesterday's commits"
    )
    listed = await cron(ctx, "list")
    assert listed.splitlines()[0] == "Scheduled prompts here (1):"
    assert "1. `0 9 * * 1-5` — At 09:00, Monday through Friday — next 2027-01-15 09:00 (UTC)" in (
        listed
    )
    assert "last: never run yet" in listed and "“summarize yesterday's commits”" in listed
    await ctx.store.note_cron_outcome(1, "ok 2027-01-15 09:00 (UTC)")
    assert "last: ok 2027-01-15 09:00 (UTC)" in await cron(ctx, "list")
    assert (await cron(ctx, "list", chat="oc_2")).startswith("No scheduled prompts")


async def test_bad_schedules_and_the_limit(ctx: BotContext) -> None:
    # four fields and a prompt: the prompt's first word is read as the weekday
    assert "not a valid schedule" in await cron(ctx, "add 0 9 * summarize the logs")
    assert "not a valid schedule" in await cron(ctx, "add 0 24 * * * late")
    assert (await cron(ctx, "add")).startswith("Usage: /cron add")
    await cron(ctx, "add * * * * * one")
    await cron(ctx, "add * * * * * two")
    over = await cron(ctx, "add * * * * * three")
    assert over.startswith("This conversation already has 2 scheduled prompts")
    assert len(await ctx.store.list_cron_jobs()) == 2
    assert (await cron(ctx, "")).startswith("Scheduled prompts of this conversation:")


async def test_rm_pause_resume_belong_to_the_creator_or_an_approver(ctx: BotContext) -> None:
    await cron(ctx, "add */5 * * * * check the queue")
    assert "Only the creator of job 1 or an approver" in await cron(ctx, "rm 1", sender="ou_b")
    assert "no job 1 in this conversation" in await cron(ctx, "pause 1", chat="oc_2")
    assert (await cron(ctx, "pause 1")).startswith("Paused job 1")
    assert "already paused" in await cron(ctx, "pause 1")
    assert "⏸ paused: paused with /cron pause" in await cron(ctx, "list")
    wakes = ctx.cron.wakes
    assert (await cron(ctx, "resume 1", sender="ou_lead")).startswith("Resumed job 1")
    assert ctx.cron.wakes == wakes + 1
    resumed = await ctx.store.get_cron_job(1)
    assert resumed.paused is None and resumed.handled_until == START + 30  # the runner's clock
    assert "is not paused" in await cron(ctx, "resume 1")
    assert "Usage: /cron rm <id>" in await cron(ctx, "rm one")
    assert (await cron(ctx, "rm 1")).startswith("Deleted job 1")
    assert await ctx.store.get_cron_job(1) is None


async def test_cron_can_be_turned_off(ctx: BotContext, tmp_path: Path) -> None:
    off = dataclasses.replace(
        ctx, settings=ctx.settings.model_copy(update={"CRON_MAX_PER_CONVERSATION": 0}), cron=None
    )
    assert "turned off" in await cron(off, "add * * * * * hi")
