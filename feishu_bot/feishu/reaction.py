"""The "working" reaction on the user's message: added in the background, removed at the end.

Shared by both reply streams (PATCH cards and CardKit cards); under `ReplySwitch` the switch
holds the turn's one reaction, so a move from CardKit to PATCH neither adds nor removes it twice.
Adding or removing it never fails a turn; `notify("reaction", id)` tells the owner its id (and
"" once it is gone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from loguru import logger

__all__ = ["DEFAULT_REACTION", "Reaction"]

# A real Feishu reaction emoji_type ("on it"); see the Feishu "emojis introduce" list.
DEFAULT_REACTION = "OnIt"


class Reaction:
    """The "working" emoji on the user's message, added in the background, removed at the end."""

    def __init__(
        self,
        replier: Any,
        message_id: str,
        emoji: str | None,
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        self._replier, self._message_id, self._emoji = replier, message_id, emoji
        self._notify = notify or (lambda kind, value: None)  # ("reaction", id or "" once gone)
        self._task: asyncio.Task[str | None] | None = None

    def add(self) -> None:
        if self._emoji and self._task is None:
            self._task = asyncio.create_task(self._add(), name=f"reaction:{self._message_id}")

    async def _add(self) -> str | None:
        try:
            reaction_id = await self._replier.add_reaction(self._message_id, self._emoji)
        except Exception as exc:  # cosmetic
            logger.warning("adding reaction {} failed: {}", self._emoji, exc)
            return None
        self._notify("reaction", reaction_id)
        return reaction_id

    async def remove(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        try:
            reaction_id = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves
            return  # only the reaction task was cancelled
        if reaction_id is not None:
            try:
                await self._replier.remove_reaction(self._message_id, reaction_id)
                self._notify("reaction", "")
            except Exception as exc:  # cosmetic
                logger.warning("removing reaction failed: {}", exc)

    def cancel(self) -> asyncio.Task[str | None] | None:
        """Stop adding it (aclose without delivery); returns the task to wait for, if any."""
        if self._task is not None:
            self._task.cancel()
        return self._task
