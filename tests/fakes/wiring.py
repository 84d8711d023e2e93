"""Build the owner of turns for unit tests, the way app.py does, with test doubles where a
test does not need the real part (the launcher, the replier, the reply sinks)."""

from __future__ import annotations

from typing import Any

from feishu_bot.conversations import Conversations
from feishu_bot.feishu.access import AccessPolicy
from feishu_bot.metrics import BotMetrics
from feishu_bot.turns import TurnRegistry


async def _no_runner(turn: Any, ticket: Any) -> Any:
    raise AssertionError("this test does not run turns")


def make_conversations(
    store: Any,
    *,
    launcher: Any,
    turns: TurnRegistry,
    approvals: Any = None,
    replier: Any = None,
    sinks: Any = None,
    runner: Any = _no_runner,
    access: AccessPolicy | None = None,
    metrics: BotMetrics | None = None,
    timeout_s: float = 60.0,
    spend: Any = None,
    cron_tz: str = "",
) -> Conversations:
    return Conversations(
        store=store,
        replier=replier,
        launcher=launcher,
        turns=turns,
        metrics=metrics or BotMetrics(),
        access=access or AccessPolicy([], [], True),
        sinks=sinks,
        runner=runner,
        approvals=approvals,
        timeout_s=timeout_s,
        spend=spend,
        cron_tz=cron_tz,
    )
