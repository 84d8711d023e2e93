"""Persistent state of the bot: conversations, processed Feishu message ids, the turn journal.

`SessionStore` (in `database.store`) is the only code that speaks SQL. This package never
imports `feishu_bot`; importing it has no side effects (no connection is opened until
`await SessionStore.open(path)`).
"""

from database.migrations import SCHEMA_VERSION, SchemaTooNewError
from database.models import (
    PENDING_STATUSES,
    Conversation,
    CronJob,
    CronRun,
    PruneResult,
    SessionInfo,
    Turn,
    TurnStats,
    TurnStatus,
)
from database.store import SessionStore, StoreClosedError

__all__ = [
    "PENDING_STATUSES",
    "SCHEMA_VERSION",
    "Conversation",
    "CronJob",
    "CronRun",
    "PruneResult",
    "SchemaTooNewError",
    "SessionInfo",
    "SessionStore",
    "StoreClosedError",
    "Turn",
    "TurnStats",
    "TurnStatus",
]
