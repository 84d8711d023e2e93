"""Bookkeeping of running and waiting turn tasks, and their cancellation.

`TurnRegistry` owns every turn task that `conversations` starts. It is the only place that knows
which tasks belong to which conversation, so `/stop` and shutdown cancel through it. The order of
a conversation's turns is the launcher's scheduler's (one FIFO, fixed at arrival), not this
module's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["TurnHandle", "TurnRegistry"]


@dataclass
class TurnHandle:
    """One accepted message on its way through a conversation."""

    conversation_key: str
    message_id: str
    turn_id: int | None = None
    task: asyncio.Task[Any] | None = None
    cancel_reason: str | None = None
    running: bool = False


class TurnRegistry:
    """Owns the tasks of all turns; cancels per conversation or all at once."""

    def __init__(self) -> None:
        self._handles: dict[str, list[TurnHandle]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def admit(
        self, conversation_key: str, message_id: str, turn_id: int | None = None
    ) -> TurnHandle:
        """Register a turn of a conversation (synchronous)."""
        handle = TurnHandle(conversation_key, message_id, turn_id)
        self._handles.setdefault(conversation_key, []).append(handle)
        return handle

    def start(self, handle: TurnHandle, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"turn:{handle.message_id}")
        handle.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Track a short task that is not a turn (a command reply, a refusal)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def finish(self, handle: TurnHandle) -> None:
        key = handle.conversation_key
        handles = self._handles.get(key, [])
        if handle in handles:
            handles.remove(handle)
        if not handles:
            self._handles.pop(key, None)

    def handles(self, conversation_key: str) -> list[TurnHandle]:
        return list(self._handles.get(conversation_key, []))

    def cancel_conversation(self, conversation_key: str, reason: str) -> int:
        """Cancel the running turn and every waiting turn of one conversation.

        A turn already being cancelled is left alone: a second cancel would cut short the
        journal write and the reply of the first."""
        count = 0
        for handle in self._handles.get(conversation_key, []):
            if handle.cancel_reason is not None:
                continue
            if handle.task is not None and not handle.task.done():
                handle.cancel_reason = reason
                handle.task.cancel()
                count += 1
        return count

    def handle_of(self, conversation_key: str, turn_id: int) -> TurnHandle | None:
        """The live handle of one journaled turn, or None when it is not waiting or running."""
        return next(
            (h for h in self._handles.get(conversation_key, []) if h.turn_id == turn_id), None
        )

    def cancel_turn(self, handle: TurnHandle, reason: str) -> bool:
        """Cancel one turn (its Stop button); False if it is already ending."""
        if handle.cancel_reason is not None or handle.task is None or handle.task.done():
            return False
        handle.cancel_reason = reason
        handle.task.cancel()
        return True

    def cancel_all(self, reason: str) -> int:
        """Cancel every turn not already being cancelled (a second cancel would cut short its
        reply to the user)."""
        count = 0
        for handles in list(self._handles.values()):
            for handle in handles:
                if handle.cancel_reason is not None:
                    continue
                if handle.task is not None and not handle.task.done():
                    handle.cancel_reason = reason
                    handle.task.cancel()
                    count += 1
        return count

    def cancel_waiting(self, reason: str) -> int:
        """Cancel every turn whose CLI has not produced output yet (shutdown: keep it queued).

        Turns marked `running` are left alone: they may have called the API or changed files,
        so they get the grace period instead of a re-run. A task cancelled before its first step
        never runs its body: give new tasks a loop pass before calling this.
        """
        count = 0
        for handles in list(self._handles.values()):
            for handle in handles:
                if handle.running or handle.cancel_reason is not None:
                    continue
                if handle.task is None or handle.task.done():
                    continue
                handle.cancel_reason = reason
                handle.task.cancel()
                count += 1
        return count

    @property
    def running_turns(self) -> int:
        """Turns whose CLI has produced output (what the shutdown grace is for)."""
        return sum(1 for hs in self._handles.values() for h in hs if h.running)

    @property
    def active_turns(self) -> int:
        return sum(len(h) for h in self._handles.values())

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until every tracked task is done; False if the timeout came first."""
        pending = {t for t in self._tasks if not t.done()}
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def aclose(self) -> None:
        """Cancel whatever is left and wait for it: no task outlives the registry."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
