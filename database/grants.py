"""Store methods for standing permissions ("Always allow") and the notice about grants a
migration dropped.

`GrantsMixin` is a base class of `SessionStore` and uses its plumbing (`_write`, `_fetchall`,
`_clock`), like `HistoryMixin`. A grant is a rule the bot hands to the Claude CLI, which does
the matching; nothing here interprets a rule. `/new` clears a conversation's grants.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

from database.models import Grant

__all__ = ["GrantsMixin"]

_COLUMNS = "grant_id, conversation_key, kind, rule, granted_by, granted_at"


def _grant(row: sqlite3.Row) -> Grant:
    return Grant(
        grant_id=int(row["grant_id"]),
        conversation_key=row["conversation_key"],
        kind=row["kind"],
        rule=row["rule"],
        granted_by=row["granted_by"],
        granted_at=float(row["granted_at"]),
    )


class GrantsMixin:
    """Grants per conversation; see the module docstring."""

    # Provided by SessionStore.
    _clock: Callable[[], float]
    _write: Callable[..., Awaitable[Any]]
    _fetchall: Callable[..., Awaitable[list[sqlite3.Row]]]

    async def add_grant(self, conversation_key: str, kind: str, rule: str, granted_by: str) -> None:
        """Allow `rule` for good in one conversation (granting it again updates who and when)."""
        if kind not in ("tool", "host"):
            raise ValueError(f"unknown grant kind {kind!r}")
        now = self._clock()

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO permission_grants (conversation_key, kind, rule, granted_by,"
                " granted_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (conversation_key, kind, rule)"
                " DO UPDATE SET granted_by = excluded.granted_by, granted_at = excluded.granted_at",
                (conversation_key, kind, rule, granted_by, now),
            )

        await self._write(body)

    async def list_grants(self, conversation_key: str) -> list[Grant]:
        """The conversation's grants, oldest first (the order `/permissions` numbers them)."""
        rows = await self._fetchall(
            f"SELECT {_COLUMNS} FROM permission_grants WHERE conversation_key = ?"
            " ORDER BY granted_at, grant_id",
            (conversation_key,),
        )
        return [_grant(row) for row in rows]

    async def remove_grant(self, conversation_key: str, grant_id: int) -> bool:
        """Remove one grant of this conversation; False if it does not exist (here)."""

        async def body(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "DELETE FROM permission_grants WHERE conversation_key = ? AND grant_id = ?",
                (conversation_key, grant_id),
            )
            try:
                return cursor.rowcount > 0
            finally:
                await cursor.close()

        return bool(await self._write(body))

    async def clear_grants(self, conversation_key: str) -> int:
        """Forget every grant of the conversation (/new); returns how many there were."""

        async def body(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "DELETE FROM permission_grants WHERE conversation_key = ?", (conversation_key,)
            )
            try:
                return int(cursor.rowcount)
            finally:
                await cursor.close()

        return int(await self._write(body))

    async def take_grant_notice(self, conversation_key: str) -> str | None:
        """The tools whose old, unscoped grants a migration dropped here (once: it is deleted
        as it is read), or None."""

        async def body(conn: aiosqlite.Connection) -> str | None:
            rows = await conn.execute_fetchall(
                "SELECT notice FROM grant_notices WHERE conversation_key = ?", (conversation_key,)
            )
            if not rows:
                return None
            await conn.execute(
                "DELETE FROM grant_notices WHERE conversation_key = ?", (conversation_key,)
            )
            return str(next(iter(rows))[0])

        result = await self._write(body)
        return result if isinstance(result, str) else None
