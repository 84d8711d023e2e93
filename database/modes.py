"""Store methods for each conversation's permission mode, chosen with /mode.

`ModesMixin` is a base class of `SessionStore` and uses its plumbing (`_write`, `_fetchall`).
A conversation without a row uses the operator's CLAUDE_PERMISSION_MODE; `/new` deletes the
row. Nothing here checks that a mode is allowed (the /mode command does).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

__all__ = ["ModesMixin"]


class ModesMixin:
    """The `conversation_modes` table; see the module docstring."""

    # Provided by SessionStore.
    _write: Callable[..., Awaitable[Any]]
    _fetchall: Callable[..., Awaitable[list[sqlite3.Row]]]

    async def permission_mode(self, conversation_key: str) -> str | None:
        """The mode /mode chose for the conversation, or None (the operator's default)."""
        rows = await self._fetchall(
            "SELECT mode FROM conversation_modes WHERE conversation_key = ?", (conversation_key,)
        )
        return str(rows[0][0]) if rows else None

    async def set_permission_mode(self, conversation_key: str, mode: str | None) -> None:
        """Choose the conversation's mode; None goes back to the operator's default."""

        async def body(conn: aiosqlite.Connection) -> None:
            if mode is None:
                await conn.execute(
                    "DELETE FROM conversation_modes WHERE conversation_key = ?",
                    (conversation_key,),
                )
            else:
                await conn.execute(
                    "INSERT INTO conversation_modes (conversation_key, mode) VALUES (?, ?)"
                    " ON CONFLICT (conversation_key) DO UPDATE SET mode = excluded.mode",
                    (conversation_key, mode),
                )

        await self._write(body)
