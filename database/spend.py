"""Store methods for spending limits: what journaled turns cost since a time.

`SpendMixin` is a base class of `SessionStore` and uses its `_fetchall`. The cost of a turn is
the `cost_usd` its runner recorded in the journal (each turn's own cost, also in a warm
process), so the sums survive a restart. A turn counts against its `sender_open_id`: the
person who sent the message, or the creator of a scheduled run. Turns are counted by when
they were journaled (`created_at`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable

__all__ = ["SpendMixin"]


class SpendMixin:
    """Sums of recorded turn costs; see the module docstring."""

    # Provided by SessionStore.
    _fetchall: Callable[..., Awaitable[list[sqlite3.Row]]]

    async def spent_since(self, since: float, sender_open_id: str | None = None) -> float:
        """USD of the turns journaled at or after `since`: one sender's, or everyone's (None).
        Served by the indexes turns_sender_created and turns_created."""
        if sender_open_id is None:
            rows = await self._fetchall(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM turns WHERE created_at >= ?", (since,)
            )
        else:
            rows = await self._fetchall(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM turns"
                " WHERE sender_open_id = ? AND created_at >= ?",
                (sender_open_id, since),
            )
        return float(rows[0][0]) if rows else 0.0
