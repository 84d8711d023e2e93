"""The typed bundle of services handed to handlers. Built once, in `app.py` only."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from feishu_bot.metrics import BotMetrics

if TYPE_CHECKING:
    from database.store import SessionStore
    from feishu_bot.approvals import ApprovalBroker
    from feishu_bot.claude.launcher import Launcher
    from feishu_bot.config import Settings
    from feishu_bot.conversations import Conversations
    from feishu_bot.cron_runner import CronRunner
    from feishu_bot.feishu.card_action import RecentAnswers
    from feishu_bot.feishu.replier import FeishuReplier
    from feishu_bot.turns import TurnRegistry

__all__ = ["BotContext", "GatewayStatus"]


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """The long connection as handlers see it."""

    connected: bool
    reconnects: int = 0
    last_frame_at: float | None = None  # wall clock of the last frame from Feishu


@dataclass(frozen=True)
class BotContext:
    """Everything a handler may use. Nothing is mutated after wiring."""

    settings: Settings
    store: SessionStore
    launcher: Launcher
    replier: FeishuReplier
    turns: TurnRegistry  # tracked tasks that are not turns (replies, clicks' work)
    conversations: Conversations
    workdir_root: Path
    gateway_status: Callable[[], GatewayStatus]
    metrics: BotMetrics = field(default_factory=BotMetrics)
    # None: tool requests are decided by the rules alone (nobody can be asked).
    approvals: ApprovalBroker | None = None
    card_answers: RecentAnswers | None = None  # the answers of recent clicks, for redeliveries
    cron: CronRunner | None = None  # /cron wakes it when jobs change
    started_at: float = field(default_factory=time.monotonic)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at
