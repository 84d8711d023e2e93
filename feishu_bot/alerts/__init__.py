"""Alerts in the admin chat: conditions (pure), the cards' words, and the service that sends
them. See ``alerts.conditions`` for the rules."""

from feishu_bot.alerts.cards import alert_card, alert_text
from feishu_bot.alerts.conditions import (
    AlertEngine,
    Condition,
    Sample,
    Thresholds,
    Transition,
    TurnKind,
    is_auth_failure,
    turn_kind,
)
from feishu_bot.alerts.service import AlertService, admin_chat_sender, disk_free, sample_of

__all__ = [
    "AlertEngine",
    "AlertService",
    "Condition",
    "Sample",
    "Thresholds",
    "Transition",
    "TurnKind",
    "admin_chat_sender",
    "alert_card",
    "alert_text",
    "disk_free",
    "is_auth_failure",
    "sample_of",
    "turn_kind",
]
