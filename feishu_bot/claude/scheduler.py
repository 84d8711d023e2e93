"""The scheduler: the hard cap on live CLI processes, one FIFO queue, LRU eviction of idle ones.

It owns numbers, not processes. A *unit* is one live CLI process: a turn holding a slot
(``running``), a warm session waiting for its conversation's next turn (``idle``), or a process
being closed to make room (``closing``). Invariant: ``running + idle + closing <= max_live`` at
every instant, because a slot is only handed out when that sum is below the cap, an idle unit
becomes a running one without changing the sum (its conversation's next turn reuses it), and a
closing unit is counted until its owner reports it reaped (``closed``).

Queueing rules:
- Every turn that cannot start at once waits in ONE list of at most ``queue_max`` turns,
  whether it waits for a slot, for the previous turn of its own conversation, or for its user's
  share (``per_user_max``). One conversation holds at most ``per_conversation_max`` waiting
  turns, one user at most ``user_queue_max`` (across all conversations). Beyond any limit
  ``reserve`` raises QueueFull at once — and the limits are checked before anything is evicted
  for the new turn, so a refused turn never costs another conversation its warm process.
- Waiting turns are served round-robin across users: a user's k-th waiting turn comes after
  every other user's (k-1)-th, so one user's backlog delays another user's first turn by at
  most one turn per slot. Within a conversation the order of arrival is kept.
- When something frees, the first waiting turn in that order whose conversation is not running
  and whose user is under the per-user cap starts: in its conversation's idle unit if there is
  one, else in a free slot, else the least recently used idle unit of another conversation is
  evicted (closed through the callback it registered) and the turn starts when that unit is
  reaped. A running unit is never evicted.

What it does not do: spawn, close or signal anything itself (callbacks do), or know about
sessions, retries or Feishu.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger

from feishu_bot.errors import QueueFull

__all__ = ["Scheduler", "SchedulerStats", "Ticket"]

CloseFn = Callable[[], Awaitable[None]]
OnPosition = Callable[[int], Awaitable[None]]


class Ticket:
    """One turn's place: waiting in the queue, then holding a unit until released."""

    __slots__ = ("changed", "enqueued_at", "granted", "key", "released", "reused", "user")

    def __init__(self, key: str, user: str, now: float) -> None:
        self.key = key
        self.user = user
        self.enqueued_at = now
        self.granted = False
        self.reused = False  # granted the conversation's idle warm unit
        self.released = False
        self.changed = asyncio.Event()


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    running: int
    idle: int
    closing: int
    queued: int
    oldest_wait_s: float
    evictions: int
    max_live: int
    queue_max: int


class Scheduler:
    """Grants units to turns; see the module docstring for the rules."""

    def __init__(
        self,
        max_live: int,
        queue_max: int,
        *,
        per_conversation_max: int = 0,
        per_user_max: int = 0,
        user_queue_max: int = 0,
    ) -> None:
        if max_live < 1:
            raise ValueError("max_live must be at least 1")
        self.max_live = max_live
        self.queue_max = queue_max
        self.per_conversation_max = per_conversation_max
        self.per_user_max = per_user_max
        self.user_queue_max = user_queue_max
        self._waiting: list[Ticket] = []
        self._grants = 0
        self._last_grant: dict[str, int] = {}  # user -> sequence number of their latest grant
        self._running: list[Ticket] = []
        self._idle: OrderedDict[str, CloseFn] = OrderedDict()
        self._closing = 0
        self._evictions = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ turns
    def reserve(self, key: str, user: str = "") -> Ticket:
        """Take a place for one turn, synchronously (so arrival order is fixed); may grant at once.

        Raises QueueFull when the turn would have to wait and a queue limit is reached.
        """
        ticket = Ticket(key, user, time.monotonic())
        self._waiting.append(ticket)
        self._dispatch(evict=False)
        if ticket.granted:
            return ticket
        waiting_here = sum(1 for t in self._waiting if t.key == key)
        waiting_user = sum(1 for t in self._waiting if user and t.user == user)
        over_total = len(self._waiting) > self.queue_max
        over_here = self.per_conversation_max and waiting_here > self.per_conversation_max
        over_user = self.user_queue_max and waiting_user > self.user_queue_max
        if over_total or over_here or over_user:
            self._waiting.remove(ticket)
            logger.warning(
                "queue full: {}/{} running, {} queued ({} in this conversation, {} of this user)",
                len(self._running),
                self.max_live,
                len(self._waiting),
                waiting_here - 1,
                waiting_user - 1 if user else 0,
            )
            raise QueueFull(
                len(self._running),
                self.max_live,
                len(self._waiting),
                user_waiting=waiting_user - 1 if over_user and not over_total else 0,
            )
        self._dispatch()  # only now may an idle unit be evicted for it
        return ticket

    async def wait(self, ticket: Ticket, on_position: OnPosition | None = None) -> None:
        """Wait until the ticket is granted, reporting its 1-based position when it changes.

        Cancellation removes the ticket from the queue (or releases it if it was granted).
        """
        reported: int | None = None
        try:
            while not ticket.granted:
                if ticket.released:
                    raise asyncio.CancelledError
                position = self._order().index(ticket) + 1
                if position != reported:
                    reported = position
                    if on_position is not None:
                        try:
                            await on_position(position)
                        except Exception:
                            logger.exception("queue position callback failed")
                    continue
                ticket.changed.clear()
                await ticket.changed.wait()
        except BaseException:
            self.release(ticket)
            raise

    def release(self, ticket: Ticket, *, idle_close: CloseFn | None = None) -> None:
        """The turn is over. With ``idle_close`` its live process stays as the conversation's
        idle unit (closed through that callback if evicted); otherwise its slot is free now, so
        call this only once the process is reaped (or when none was started)."""
        if ticket.released:
            return
        ticket.released = True
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        elif ticket in self._running:
            self._running.remove(ticket)
            if idle_close is not None:
                self._idle[ticket.key] = idle_close
        self._dispatch()

    def queue_position(self, key: str) -> int | None:
        for index, ticket in enumerate(self._order()):
            if ticket.key == key:
                return index + 1
        return None

    # ------------------------------------------------------------------ idle units
    def is_idle(self, key: str) -> bool:
        return key in self._idle

    def take_idle(self, key: str) -> CloseFn | None:
        """Remove a conversation's idle unit to close it (``/new``, idle timeout): the caller
        closes it and then reports ``closed()``. None when the conversation has none."""
        close = self._idle.pop(key, None)
        if close is not None:
            self._closing += 1
        return close

    def idle_died(self, key: str) -> None:
        """An idle unit's process exited by itself (already reaped): its slot is free."""
        if self._idle.pop(key, None) is not None:
            self._dispatch()

    def closed(self) -> None:
        """A unit taken with ``take_idle`` or evicted has been reaped."""
        self._closing = max(0, self._closing - 1)
        self._dispatch()

    def idle_keys(self) -> list[str]:
        return list(self._idle)

    # ------------------------------------------------------------------ internals
    def _live(self) -> int:
        return len(self._running) + len(self._idle) + self._closing

    def _grant(self, ticket: Ticket, *, reused: bool) -> None:
        self._waiting.remove(ticket)
        self._grants += 1
        self._last_grant[ticket.user] = self._grants
        ticket.granted = True
        ticket.reused = reused
        self._running.append(ticket)
        ticket.changed.set()

    def _order(self) -> list[Ticket]:
        """Waiting tickets in the order they are served: by round (a user's turns running now
        plus those waiting ahead of it), then the user served longest ago, then arrival."""
        rank: dict[str, int] = {}
        for t in self._running:
            rank[t.user] = rank.get(t.user, 0) + 1
        keyed = []
        for arrival, ticket in enumerate(self._waiting):
            k = rank.get(ticket.user, 0)
            rank[ticket.user] = k + 1
            keyed.append((k, self._last_grant.get(ticket.user, -1), arrival, ticket))
        keyed.sort(key=lambda item: item[:3])
        return [item[3] for item in keyed]

    def _dispatch(self, *, evict: bool = True) -> None:
        busy = {t.key for t in self._running}
        per_user: dict[str, int] = {}
        for t in self._running:
            per_user[t.user] = per_user.get(t.user, 0) + 1
        # A conversation's later turns never pass its earlier ones, whatever the user order.
        first_of: dict[str, Ticket] = {}
        for ticket in self._waiting:
            first_of.setdefault(ticket.key, ticket)
        need = 0
        for ticket in self._order():
            if ticket.key in busy or first_of[ticket.key] is not ticket:
                continue
            if self.per_user_max and ticket.user and per_user.get(ticket.user, 0) >= (
                self.per_user_max
            ):
                continue
            if ticket.key in self._idle:
                del self._idle[ticket.key]
                self._grant(ticket, reused=True)
            elif self._live() < self.max_live:
                self._grant(ticket, reused=False)
            else:
                need += 1
                busy.add(ticket.key)  # later turns of this conversation stay behind it
                continue
            busy.add(ticket.key)
            per_user[ticket.user] = per_user.get(ticket.user, 0) + 1
        # Close idle units of other conversations, oldest first, for turns that need a slot.
        while evict and need > self._closing and self._idle:
            key, close = self._idle.popitem(last=False)
            self._closing += 1
            self._evictions += 1
            logger.info("evicting the idle claude session of {} to make room", key)
            task = asyncio.get_running_loop().create_task(self._evict(close), name=f"evict:{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for ticket in self._waiting:
            ticket.changed.set()

    async def _evict(self, close: CloseFn) -> None:
        try:
            await close()
        except Exception:
            logger.exception("closing an evicted claude session failed")
        finally:
            self.closed()

    async def aclose(self) -> None:
        """Wait for evictions in flight (their processes are reaped by then)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stats(self) -> SchedulerStats:
        now = time.monotonic()
        return SchedulerStats(
            running=len(self._running),
            idle=len(self._idle),
            closing=self._closing,
            queued=len(self._waiting),
            oldest_wait_s=round(max((now - t.enqueued_at for t in self._waiting), default=0.0), 3),
            evictions=self._evictions,
            max_live=self.max_live,
            queue_max=self.queue_max,
        )
