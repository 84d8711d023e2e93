"""The reply of one turn as an interactive card PATCHed in place: a `ReplySink` without CardKit.

`PatchStream` owns, for one turn:
- an emoji reaction on the user's message while Claude works (`started` … `finish`/`fail`);
- one interactive card, created lazily (on `queued` or the first `update`), then PATCHed;
- blocks (approval requests, Claude's questions, the record of their answers) as small Card
  JSON 2.0 cards of their own, replied and then PATCHed, one at a time in the order they
  changed (`_block_lock`); the final answer waits for those in flight;
- the final answer: the card is PATCHed with the first part and further parts are replied
  as extra cards, in order.

Invariants (beyond the `reply_sink.ReplySink` contract):
- Intermediate states (`queued`, `started`, `update`) never wait for Feishu: they record the
  latest wanted view and a background flusher shows it, at most once per `min_interval`
  (coalescing: only the latest text is sent; a trailing flush sends the last state).
- At most one card request (create or PATCH) is in flight at any time (`_io_lock`).
- The final answer (`finish` or `fail`) is delivered once: the first of them wins, later calls
  and updates are ignored. It waits for an in-flight PATCH to complete, so a stale progress
  PATCH can never land after the final content.
- Failures of progress calls are logged and swallowed; `finish`/`fail` raise `FeishuApiError`
  only when the answer could not be delivered (after the replier's own retries). If the final
  PATCH is refused for good (card too old, recalled) the answer is replied as a new card; if
  it fails transiently the error is raised instead, since the PATCH may have landed and a
  duplicate answer is worse. The reaction is removed in every case.

The answer card has no Stop or New session buttons (today's PATCH card, as before CardKit);
only block cards carry buttons. It does not run Claude, word errors, or decide what to say.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, Self

from loguru import logger

from feishu_bot.errors import FeishuApiError, FeishuTransientError
from feishu_bot.feishu import render
from feishu_bot.feishu.reaction import DEFAULT_REACTION, Reaction
from feishu_bot.feishu.render import Block, CardState
from feishu_bot.feishu.reply_sink import Text, UiNotifier, failure_text

__all__ = ["CardReplier", "PatchStream"]

BLOCK_TITLE = "Claude asks"


class CardReplier(Protocol):
    """The part of `FeishuReplier` a stream needs (tests may pass a fake)."""

    async def reply_card(
        self,
        message_id: str,
        card: dict[str, Any],
        *,
        in_thread: bool = False,
        uuid: str | None = None,
    ) -> str: ...

    async def patch(self, message_id: str, content: dict[str, Any]) -> None: ...

    async def add_reaction(self, message_id: str, emoji_type: str) -> str: ...

    async def remove_reaction(self, message_id: str, reaction_id: str) -> None: ...


# state, text, note, queue position. The note's running time alone never causes a PATCH;
# a change of state, text or queue position does.
_View = tuple[CardState, str, str | None, int | None]


class PatchStream(UiNotifier):
    """One turn's card, block cards and reaction; a `ReplySink` (see the module docstring)."""

    def __init__(
        self,
        replier: CardReplier,
        reply_to: str,
        *,
        in_thread: bool,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        reaction: str | None = DEFAULT_REACTION,
        title: str | None = None,
    ) -> None:
        self._replier = replier
        self._reply_to = reply_to
        self._in_thread = in_thread
        self._min_interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._title = title
        # One uuid per logical card: a retried or repeated create cannot post a duplicate.
        self._uuid = uuid_mod.uuid4().hex

        self._state: CardState = "working"
        self._text: Text = ""  # the latest update, read when shown
        self._queue_position: int | None = None
        self._started_at: float | None = None
        self._want_card = False

        self._card_id: str | None = None
        self._create_uncertain = False  # a create failed: it may still have landed
        self._shown: _View | None = None
        self._next_at = 0.0  # earliest clock time for the next progress request
        self._io_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._reaction = Reaction(
            replier, reply_to, reaction, lambda kind, value: self._notify(kind, value)
        )
        self._closed = False  # finish/fail began: progress is over
        self.patches = 0  # progress+final PATCH count (for tests and metrics)
        # Told ("reaction"|"card", id) when either appears ("" when the reaction goes), so the
        # owner can journal them and a restart can clean up or reuse them.

        self._blocks: dict[str, Block] = {}  # the latest version of each block
        self._block_messages: dict[str, str] = {}  # block id -> its card's message id
        self._block_tasks: list[asyncio.Task[None]] = []
        self._block_lock = asyncio.Lock()  # block cards are sent and PATCHed in order

    def adopt(self, card_id: str) -> None:
        """Continue in a card an earlier run of the same turn left (after a restart)."""
        if self._card_id is None:
            self._card_id = card_id
            self._want_card = True

    # -- context manager ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background work without delivering anything (finish/fail not called); a block
        card already on its way is still sent."""
        self._closed = True
        tasks = [t for t in (self._flusher, self._reaction.cancel()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- properties --------------------------------------------------------------------------

    @property
    def card_id(self) -> str | None:
        """The message id of the live card, once it exists."""
        return self._card_id

    @property
    def closed(self) -> bool:
        return self._closed

    # -- progress (never waits for Feishu) ---------------------------------------------------

    async def queued(self, position: int) -> None:
        """Show (create or update) a "queued, position k" card."""
        if self._closed:
            return
        self._state = "queued"
        self._queue_position = position
        self._want_card = True
        self._kick()

    async def started(self) -> None:
        """The turn runs: add the reaction (in the background); a queued card turns blue.

        The card itself is created lazily by the first `update` (a quick answer then costs
        one message, not a create plus a PATCH).
        """
        if self._closed:
            return
        if self._started_at is None:
            self._started_at = self._clock()
        self._state = "working"
        self._queue_position = None
        self._reaction.add()
        if self._card_id is not None or self._want_card:
            self._kick()

    async def update(self, text: Text) -> None:
        """The answer so far (the whole text, not a delta). Returns at once.

        `text` may be a function returning the text: it is called only when a card is about
        to be sent (at most once per `min_interval`), never per update. Pass one for streamed
        text (``lambda: event.text`` of a parser ``TextEvent``): joining a long answer for
        each of its thousands of deltas is quadratic.
        """
        if self._closed:
            return
        if self._started_at is None:
            self._started_at = self._clock()
        self._state = "working"
        self._queue_position = None
        self._text = text
        self._want_card = True
        self._kick()

    # -- the end -----------------------------------------------------------------------------

    async def finish(self, text: str, *, note: str | None = None) -> None:
        """Deliver the complete answer (split over several cards when long), remove the reaction.

        Raises FeishuApiError if the answer could not be delivered.
        """
        await self._deliver(text, state="done", note=note, title=self._title)

    async def fail(self, message: str, *, partial_text: str | None = None) -> None:
        """Turn the card red with one short message (after any partial answer).

        Raises FeishuApiError if nothing could be delivered.
        """
        text = failure_text(message, partial_text)
        await self._deliver(text, state="error", note=None, title=None)

    # -- blocks: small cards of their own (never waits for Feishu) ---------------------------

    async def show_block(self, block: Block) -> None:
        """Show (or replace) a block that waits for an answer, as a card with its buttons."""
        self._blocks[block.block_id] = block
        self._send_block(block.block_id)

    async def resolve_block(self, block_id: str, text: str) -> None:
        """PATCH the block's card with the record of its outcome (no buttons)."""
        self._blocks[block_id] = Block(block_id, text)
        self._send_block(block_id)

    def _send_block(self, block_id: str) -> None:
        # No `closed` check: a request settled as the turn ends (stopped, timed out) still gets
        # its record on its own card.
        task = asyncio.create_task(self._block_card(block_id), name=f"block:{block_id}")
        self._block_tasks.append(task)

    async def _block_card(self, block_id: str) -> None:
        """Reply the block's card the first time, PATCH it after; in order, one at a time."""
        async with self._block_lock:
            block = self._blocks[block_id]  # the latest version, read when it is its turn
            card = render.card2(
                block.text,
                state="working" if block.buttons else "done",
                title=BLOCK_TITLE,
                buttons=block.buttons,
            )
            try:
                message_id = self._block_messages.get(block_id)
                if message_id is None:
                    self._block_messages[block_id] = await self._replier.reply_card(
                        self._reply_to,
                        card,
                        in_thread=self._in_thread,
                        uuid=f"{self._uuid}-{block_id}",
                    )
                else:
                    await self._replier.patch(message_id, card)
            except Exception as exc:  # a block card must never kill the turn
                logger.warning("could not show the {} card: {}", block_id, exc)

    async def _blocks_sent(self) -> None:
        if self._block_tasks:
            await asyncio.gather(*self._block_tasks, return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------

    def _view(self) -> _View | None:
        if not self._want_card:
            return None
        if self._state == "queued":
            position = self._queue_position
            return ("queued", "Waiting for a free slot…", f"queued, position {position}", position)
        note = None
        if self._started_at is not None:
            note = f"running {int(self._clock() - self._started_at)}s"
        text = self._text if isinstance(self._text, str) else self._text()
        return ("working", text, note, None)

    def _kick(self) -> None:
        if self._closed:
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"card:{self._reply_to}")

    async def _flush_loop(self) -> None:
        while not self._closed:
            delay = self._next_at - self._clock()
            if delay > 0:
                await self._sleep(delay)
            async with self._io_lock:
                if self._closed:
                    return
                view = self._view()
                if view is None or (self._shown is not None and _key(view) == _key(self._shown)):
                    return
                await self._show(view)
                self._next_at = self._clock() + self._min_interval

    async def _show(self, view: _View) -> None:
        state, text, note, _ = view
        card = render.card_for(text, state=state, note=note, title=self._title)
        try:
            if self._card_id is None:
                await self._create(card)
            else:
                await self._replier.patch(self._card_id, card)
                self.patches += 1
            self._shown = view
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # progress must never kill the turn
            logger.warning("progress card update failed (will retry with the next): {}", exc)

    async def _create(self, card: dict[str, Any]) -> str:
        """Create the card (same uuid every time); PATCH it if an earlier create was unsure."""
        try:
            card_id = await self._replier.reply_card(
                self._reply_to, card, in_thread=self._in_thread, uuid=self._uuid
            )
        except FeishuApiError:
            self._create_uncertain = True
            raise
        self._card_id = card_id
        self._notify("card", card_id)
        if self._create_uncertain:
            # Feishu may have kept the first create (same uuid) with older content.
            self._create_uncertain = False
            await self._replier.patch(card_id, card)
            self.patches += 1
        return card_id

    async def _deliver(
        self, text: str, *, state: CardState, note: str | None, title: str | None
    ) -> None:
        if self._closed:
            logger.warning("reply stream already closed; final {} ignored", state)
            return
        self._closed = True
        try:
            await self._blocks_sent()  # a request's card comes before the answer that follows it
            async with self._io_lock:
                # The flusher is asleep or waiting for the lock, never mid-request here.
                if self._flusher is not None and not self._flusher.done():
                    self._flusher.cancel()
                cards = render.final_cards(text, state=state, note=note, title=title)
                await self._put_first(cards[0])
                for i, card in enumerate(cards[1:], start=2):
                    await self._replier.reply_card(
                        self._reply_to, card, in_thread=self._in_thread, uuid=f"{self._uuid}-{i}"
                    )
        finally:
            await self._blocks_sent()  # and a record that arrived meanwhile is not cut off
            await self._reaction.remove()

    async def _put_first(self, card: dict[str, Any]) -> None:
        if self._card_id is not None:
            try:
                await self._replier.patch(self._card_id, card)
                self.patches += 1
                return
            except FeishuTransientError:
                # Retries ran out: the PATCH may still have landed, and a second copy of the
                # answer is worse than a reported failure.
                raise
            except FeishuApiError as exc:
                # Refused for good (card too old, recalled, …): it did not change; post anew.
                logger.warning("final PATCH refused, replying a new card instead: {}", exc)
            await self._replier.reply_card(
                self._reply_to, card, in_thread=self._in_thread, uuid=f"{self._uuid}-1"
            )
            return
        await self._create(card)


def _key(view: _View) -> tuple[CardState, str, int | None]:
    return (view[0], view[1], view[3])
