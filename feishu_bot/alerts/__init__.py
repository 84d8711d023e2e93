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
from feishu_bot.alerts.service import AlertService, disk_free

__all__ = [
    "AlertEngine",
    "AlertService",
    "Condition",
    "Sample",
    "Thresholds",
    "Transition",
    "TurnKind",
    "alert_card",
    "alert_text",
    "disk_free",
    "is_auth_failure",
    "turn_kind",
]
