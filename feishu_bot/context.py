"""The typed bundle of services handed to handlers. Built once, in `app.py` only."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feishu_bot.metrics import BotMetrics

if TYPE_CHECKING:
    from database.store import SessionStore
    from feishu_bot.claude.launcher import Launcher
    from feishu_bot.config import Settings
    from feishu_bot.conversations import Conversations
    from feishu_bot.feishu.replier import FeishuReplier
    from feishu_bot.turns import TurnRegistry

__all__ = ["BotContext"]


@dataclass(frozen=True)
class BotContext:
    """Everything a handler may use. Nothing is mutated after wiring."""

    settings: Settings
    store: SessionStore
    launcher: Launcher
    replier: FeishuReplier
    turns: TurnRegistry
    workdir_root: Path
    started_at: float = field(default_factory=time.monotonic)
    gateway_status: Callable[[], dict[str, Any]] = dict
    metrics: BotMetrics = field(default_factory=BotMetrics)
    conversations: Conversations | None = None  # type: ignore[assignment]
    # Optional services of the cards and files features (None: rules only / no MCP tools).
    approvals: Any = None
    card_answers: Any = None  # the answers of recent clicks, for redeliveries
    cron: Any = None  # the CronRunner (/cron wakes it when jobs change)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at
