"""Store methods for kept attachments: an image or file sent without text waits, in a table of
its own, for its sender's next text message in the same conversation.

`KeptMixin` is a base class of `SessionStore` and uses its plumbing (`_write`, `_clock`), like
`HistoryMixin`. A row holds the attachments as JSON (keys, never bytes) and, once a text
message took it, that message's id (`claimed_by`), so a claim is idempotent per claiming
message and a replayed turn gets the same attachments again. `/new` deletes what waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

__all__ = ["KeptMixin"]


class KeptMixin:
    """Kept attachments; see the module docstring."""

    # Provided by SessionStore.
    _clock: Callable[[], float]
    _write: Callable[..., Awaitable[Any]]

    async def keep_message(
        self,
        message_id: str,
        *,
        conversation_key: str,
        chat_id: str,
        attachments_json: str,
        reply_in_thread: bool,
        sender_open_id: str = "",
    ) -> bool:
        """Record the message as processed and keep its attachments, atomically.

        False when `message_id` was seen before (nothing is kept twice).
        """
        now = self._clock()

        async def body(conn: aiosqlite.Connection) -> bool:
            first = await conn.execute_fetchall(
                "INSERT INTO processed_messages (message_id, seen_at) VALUES (?, ?)"
                " ON CONFLICT (message_id) DO NOTHING RETURNING 1",
                (message_id, now),
            )
            if not first:
                return False
            rows = await conn.execute_fetchall(
                "INSERT INTO kept_attachments (message_id, conversation_key, chat_id,"
                " sender_open_id, attachments, reply_in_thread, kept_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING RETURNING 1",
                (
                    message_id,
                    conversation_key,
                    chat_id,
                    sender_open_id,
                    attachments_json,
                    int(reply_in_thread),
                    now,
                ),
            )
            return bool(rows)

        return bool(await self._write(body))

    async def claim_kept(
        self,
        conversation_key: str,
        claimer_message_id: str,
        *,
        since: float,
        sender_open_id: str | None = None,
    ) -> list[tuple[str, str]]:
        """Give the conversation's waiting attachments kept at or after `since` to the message
        `claimer_message_id`; return every (message_id, attachments JSON) it holds, oldest
        first (including those it claimed before, so a replayed turn sees the same ones).
        With `sender_open_id`, only what that person sent is claimed (in a group, one member's
        screenshot never goes with another member's question)."""

        async def body(conn: aiosqlite.Connection) -> list[tuple[str, str]]:
            # Only what was kept before the claiming message was journaled (when it was): a
            # later image waits for the next question.
            await conn.execute(
                "UPDATE kept_attachments SET claimed_by = ? WHERE conversation_key = ?"
                " AND claimed_by IS NULL AND kept_at >= ? AND kept_at <= COALESCE("
                "(SELECT created_at FROM turns WHERE message_id = ?), 9e999)"
                " AND (? IS NULL OR sender_open_id = ?)",
                (claimer_message_id, conversation_key, since, claimer_message_id,
                 sender_open_id, sender_open_id),
            )
            rows = await conn.execute_fetchall(
                "SELECT message_id, attachments FROM kept_attachments WHERE claimed_by = ?"
                " AND conversation_key = ? ORDER BY kept_at, message_id",
                (claimer_message_id, conversation_key),
            )
            return [(str(row[0]), str(row[1])) for row in rows]

        result = await self._write(body)
        return list(result)

    async def drop_kept(self, conversation_key: str) -> int:
        """Forget the conversation's waiting attachments (/new); returns how many."""

        async def body(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "DELETE FROM kept_attachments WHERE conversation_key = ? AND claimed_by IS NULL",
                (conversation_key,),
            )
            try:
                return int(cursor.rowcount)
            finally:
                await cursor.close()

        return int(await self._write(body))

    async def drop_kept_message(self, message_id: str) -> bool:
        """Forget the attachments one message kept, if no text message has taken them yet
        (its sender recalled it); True if there were some."""

        async def body(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "DELETE FROM kept_attachments WHERE message_id = ? AND claimed_by IS NULL",
                (message_id,),
            )
            try:
                return int(cursor.rowcount)
            finally:
                await cursor.close()

        return bool(await self._write(body))
