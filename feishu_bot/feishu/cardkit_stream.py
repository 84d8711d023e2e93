"""The reply of one turn as a CardKit card that types, with buttons and approval blocks.

`CardKitStream` is a `reply_sink.ReplySink`: `queued`, `started`, `update`, `finish`, `fail`,
blocks (`show_block` / `resolve_block`: approval requests, Claude's questions and the record
of their answers, shown on the card) and buttons (Stop while the turn runs, New session on the
final card; only with a `signer` and a `turn_id`).

On the first thing to show, a Card JSON 2.0 entity is created in streaming mode and replied by
card_id; new text goes to its markdown element (full text, typewriter effect); anything else
that changes (state, blocks) is a full update of the card. At the end streaming is switched
off and the card is fully updated with the final answer and its note; parts that do not fit
go out as further cards, in order. Invariants:

- Every operation on the card carries a strictly increasing `sequence`, at most one is in
  flight, consecutive ones are at least `op_interval` apart (10/s per card), text updates
  at most one per `text_interval`, and every one first takes a slot from the app-wide
  `CardKitState` limiter (50/s, 1000/min).
- Feishu closes streaming mode ~10 minutes after it opened (200850/300309). The stream closes
  it itself after `stream_ttl` and continues with full updates (at most one per
  `full_interval`); a refusal it did not see coming is handled the same way. The final card
  always holds the complete answer.
- A card waiting on a click answer refuses updates for a moment (200810): the update is
  simply tried again.
- Intermediate states never wait for Feishu, and their failures are logged and swallowed;
  `finish`/`fail` deliver once and raise only when nothing could be delivered (after a
  transient failure of the final update, which may have landed, rather than post twice).

When CardKit is refused (any 4xx on create, e.g. the app lacks the scope cardkit:card:write,
remembered app-wide by `CardKitState.refuse`; or the reply that sends the created card) the
stream awaits its owner's `on_refused` and stops: nothing more is sent for this card. A
`finish`/`fail` after that sends nothing and raises `CardKitRefused`, so the owner delivers
the answer another way. It does not fall back by itself: `reply_switch.ReplySwitch` moves the
turn to a `PatchStream`.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from feishu_bot.errors import FeishuApiError, FeishuTransientError
from feishu_bot.feishu import render
from feishu_bot.feishu.buttons import ButtonSigner
from feishu_bot.feishu.cardkit_state import CardKitState
from feishu_bot.feishu.reaction import DEFAULT_REACTION, Reaction
from feishu_bot.feishu.render import ANSWER_ELEMENT, Block, Button, CardState
from feishu_bot.feishu.reply_sink import Text, UiNotifier, failure_text

__all__ = ["CardKitRefused", "CardKitStream"]

STREAMING_CLOSED = frozenset({200850, 300309})
IN_INTERACTION = 200810
_LIVE_RECORDS = 5  # resolved blocks kept on a running card (the final card keeps them all)


class CardKitRefused(FeishuApiError):
    """CardKit refused this turn's card, so `finish`/`fail` delivered nothing."""

    def __init__(self, cause: FeishuApiError) -> None:
        super().__init__(f"CardKit refused: {cause}", status=cause.status, code=cause.code)
        self.cause = cause


class CardKitStream(UiNotifier):
    """One turn's CardKit card; see the module docstring for the guarantees."""

    def __init__(
        self,
        replier: Any,
        reply_to: str,
        *,
        in_thread: bool,
        cardkit: CardKitState,
        signer: ButtonSigner | None = None,
        conversation_key: str = "",
        turn_id: int | None = None,
        title: str | None = None,
        reaction: str | None = DEFAULT_REACTION,
        on_refused: Callable[[], Awaitable[None]] | None = None,
        text_interval: float = 0.5,
        full_interval: float = 1.0,
        op_interval: float = 0.1,
        stream_ttl: float = 540.0,
        show_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._replier, self._reply_to, self._in_thread = replier, reply_to, in_thread
        self._kit, self._signer, self._title = cardkit, signer, title
        self._key, self._turn_id = conversation_key, turn_id
        self._text_interval, self._full_interval = text_interval, full_interval
        self._op_interval, self._stream_ttl = op_interval, stream_ttl
        self._show_after = show_after
        self._soon: asyncio.Task[None] | None = None
        self._clock, self._sleep = clock, sleep
        self._uuid = uuid_mod.uuid4().hex
        self._reaction = Reaction(replier, reply_to, reaction, self._notify)
        self._on_refused = on_refused
        self._refused: FeishuApiError | None = None  # CardKit said no: nothing more is sent

        self._state: CardState = "working"
        self._text: Text = ""
        self._position: int | None = None
        self._blocks: dict[str, Block] = {}
        self._pending: set[str] = set()  # blocks still waiting for an answer
        self._want_card = False
        self._closed = False

        self._entity: str | None = None  # CardKit card_id
        self._message_id: str | None = None
        self._reply_uncertain = False
        self._seq = 0
        self._streaming = True
        self._streaming_since = 0.0
        self._shown_struct: Any = None
        self._shown_text: str | None = None
        self._next_op = 0.0
        self._next_text = 0.0
        self._io = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self.operations = 0  # CardKit operations sent (tests, metrics)

    # -- the ReplySink ------------------------------------------------------------------------

    @property
    def card_id(self) -> str | None:
        """The message id of the live card, once it exists."""
        return self._message_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def refused(self) -> bool:
        """CardKit refused this card; the stream sends nothing more."""
        return self._refused is not None

    def adopt(self, card: str) -> None:
        """Continue in the CardKit card ("<message_id>#<card_id>") an earlier run of the same
        turn left (after a restart); ignored once this stream has a card of its own.

        Raises ValueError for a plain message id: a PATCH card cannot become a CardKit card
        (`ReplySwitch.adopt` continues it on a PatchStream)."""
        message_id, _, entity = card.partition("#")
        if not entity:
            raise ValueError(f"not a CardKit card: {card!r}")
        if self._message_id is None:
            self._message_id, self._entity = message_id, entity
            # Its last sequence is unknown: start above anything a run can have used (seconds
            # since 2023 stay within int32 until 2091), and close streaming first.
            self._seq = max(self._seq, int(time.time()) - 1_672_531_200)
            self._streaming_since = self._clock() - self._stream_ttl
            self._want_card = True

    async def __aenter__(self) -> CardKitStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background work without delivering anything."""
        self._closed = True
        self._reaction.cancel()
        if self._soon is not None:
            self._soon.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def queued(self, position: int) -> None:
        if self._closed:
            return
        self._state, self._position, self._want_card = "queued", position, True
        self._kick()

    async def started(self) -> None:
        if self._closed:
            return
        self._reaction.add()
        self._state, self._position = "working", None
        if self._want_card:
            self._kick()
        elif self._soon is None and self._signer is not None and self._turn_id is not None:
            # A quick answer costs one message; a slow start shows the card (and its Stop
            # button) after `show_after` seconds.
            self._soon = asyncio.create_task(self._show_soon(), name=f"soon:{self._reply_to}")

    async def _show_soon(self) -> None:
        await self._sleep(self._show_after)
        if not self._closed and self._refused is None and not self._want_card:
            self._want_card = True
            self._kick()

    async def update(self, text: Text) -> None:
        """The answer so far (whole text, or a function returning it). Returns at once."""
        if self._closed:
            return
        self._text = text
        self._state, self._position, self._want_card = "working", None, True
        self._kick()

    async def finish(self, text: str, *, note: str | None = None) -> None:
        """Deliver the complete answer; raises FeishuApiError if it could not be delivered
        (`CardKitRefused` when CardKit refused the card: nothing was sent)."""
        buttons = self._buttons("new")
        await self._deliver(text, state="done", note=note, title=self._title, buttons=buttons)

    async def fail(self, message: str, *, partial_text: str | None = None) -> None:
        """Turn the card red with one short message (after any partial answer); raises as
        `finish` does."""
        text = failure_text(message, partial_text)
        await self._deliver(text, state="error", note=None, title=None, buttons=())

    # -- blocks (approvals, questions) -------------------------------------------------------

    async def show_block(self, block: Block) -> None:
        """Show (or replace) a block that waits for an answer. Returns at once."""
        self._blocks[block.block_id] = block
        self._pending.add(block.block_id)
        self._want_card = True
        self._kick()

    async def resolve_block(self, block_id: str, text: str) -> None:
        """Replace a block by the record of its outcome (no buttons). Returns at once."""
        self._blocks[block_id] = Block(block_id, text)
        self._pending.discard(block_id)
        self._want_card = True
        self._kick()

    # -- internals -----------------------------------------------------------------------------

    def _buttons(self, action: str) -> tuple[Button, ...]:
        if self._signer is None or self._turn_id is None:
            return ()
        value = self._signer.value(action, conversation_key=self._key, turn_id=self._turn_id)
        if action == "stop":
            return (Button("Stop", value, "danger"),)
        return (Button("New session", value, "default"),)

    def _text_now(self) -> str:
        return self._text if isinstance(self._text, str) else self._text()

    def _live_blocks(self) -> tuple[Block, ...]:
        resolved = [b for i, b in self._blocks.items() if i not in self._pending]
        keep = {b.block_id for b in resolved[-_LIVE_RECORDS:]} | self._pending
        return tuple(b for i, b in self._blocks.items() if i in keep)

    def _view(self) -> tuple[Any, str, dict[str, Any]]:
        """(structure key, the answer element's text, the whole card) for the current state."""
        note = f"queued, position {self._position}" if self._state == "queued" else None
        text = "Waiting for a free slot…" if self._state == "queued" else self._text_now()
        blocks, buttons = self._live_blocks(), self._buttons("stop")
        args: dict[str, Any] = dict(
            state=self._state, note=note, title=self._title, blocks=blocks, buttons=buttons
        )
        shown = render.live_text(text, **args)
        card = render.card2(text, streaming=self._streaming, **args)
        struct = (self._state, note, blocks, self._streaming)
        return struct, shown, card

    def _kick(self) -> None:
        if not self._closed and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"card:{self._reply_to}")

    async def _flush_loop(self) -> None:
        while not self._closed and self._refused is None and self._want_card:
            now = self._clock()
            if now < self._next_op:
                await self._sleep(self._next_op - now)
                continue
            async with self._io:
                if self._closed or self._refused is not None:
                    return
                try:
                    if not await self._step():
                        return
                except Exception as exc:  # progress must never kill the turn
                    logger.warning("card {} progress failed (will retry): {}", self._entity, exc)
                    self._next_op = self._clock() + self._full_interval

    async def _step(self) -> bool:
        """Send what is due; False when the card shows the latest state."""
        if (
            self._streaming
            and self._entity
            and self._clock() - self._streaming_since >= (self._stream_ttl)
        ):
            logger.info("card {}: closing streaming mode before Feishu does", self._entity)
            self._streaming = False
            await self._op(self._replier.set_card_streaming, self._entity, False)
            return True
        struct, shown, card = self._view()
        if self._entity is None or self._message_id is None:
            await self._create(card, struct, shown)
            return self._refused is None
        if struct != self._shown_struct:
            if await self._op(self._replier.update_card_entity, self._entity, card):
                self._shown_struct, self._shown_text = struct, shown
            return True
        if shown == self._shown_text:
            return False
        now = self._clock()
        if now < self._next_text:
            self._next_op = self._next_text
            return True
        if self._streaming:
            ok = await self._op(self._replier.stream_card_text, self._entity, ANSWER_ELEMENT, shown)
            self._next_text = self._clock() + self._text_interval
        else:
            ok = await self._op(self._replier.update_card_entity, self._entity, card)
            self._next_text = self._clock() + self._full_interval
        if ok:
            self._shown_text = shown
        return True

    async def _create(self, card: dict[str, Any], struct: Any, shown: str) -> None:
        try:
            if self._entity is None:
                await self._kit.acquire()
                self._entity = await self._replier.create_card_entity(card)
                self._streaming_since = self._clock()
                self._kit.works()
                self._shown_struct, self._shown_text = struct, shown
            self._message_id = await self._replier.reply_card_entity(
                self._reply_to, self._entity, in_thread=self._in_thread, uuid=self._uuid
            )
            self._reply_uncertain = False
            self._notify("card", f"{self._message_id}#{self._entity}")
        except FeishuTransientError as exc:
            self._reply_uncertain = self._entity is not None
            self._next_op = self._clock() + self._full_interval
            logger.warning("card create/reply failed (will retry): {}", exc)
        except FeishuApiError as exc:
            if self._entity is None:
                self._kit.refuse(exc)
            else:
                logger.warning("replying with the CardKit card was refused, using PATCH: {}", exc)
            await self._give_up(exc)

    async def _give_up(self, exc: FeishuApiError) -> None:
        """Stop for good and tell the owner, which takes over what the card should show.

        Awaited inside the flusher, before anything else runs on this card: the owner's
        takeover sees the state as it was when CardKit refused, and nothing after it."""
        self._refused = exc
        if self._soon is not None:
            self._soon.cancel()
        if self._on_refused is not None:
            try:
                await self._on_refused()
            except Exception:
                logger.exception("taking over a refused CardKit card failed")

    async def _op(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """One CardKit operation with the next sequence; False (logged) if it failed."""
        for _ in range(3):
            await self._kit.acquire()
            self._seq += 1
            self.operations += 1
            try:
                await fn(*args, sequence=self._seq, uuid=f"{self._uuid}-s{self._seq}")
                return True
            except FeishuApiError as exc:
                if exc.code == IN_INTERACTION:  # a click is being answered; try again shortly
                    await self._sleep(3 * self._op_interval)
                    continue
                if exc.code in STREAMING_CLOSED and self._streaming:
                    logger.info(
                        "card {}: Feishu closed streaming mode; full updates now", self._entity
                    )
                    self._streaming = False
                    return False
                if isinstance(exc, FeishuTransientError) or self._closed:
                    raise
                logger.warning("card {} update failed (next update retries): {}", self._entity, exc)
                self._next_op = self._clock() + self._full_interval
                return False
            finally:
                self._next_op = max(self._next_op, self._clock() + self._op_interval)
        return False

    # -- the end -----------------------------------------------------------------------------

    async def _deliver(
        self,
        text: str,
        *,
        state: CardState,
        note: str | None,
        title: str | None,
        buttons: tuple[Button, ...],
    ) -> None:
        if self._closed and self._refused is None:
            logger.warning("card stream already closed; final {} ignored", state)
            return
        self._closed = True
        if self._soon is not None:
            self._soon.cancel()
        try:
            async with self._io:
                # The flusher is asleep or waiting for the lock, never mid-request here; CardKit
                # may have refused the card while this waited (nothing was shown: the owner
                # delivers the answer).
                if self._refused is not None:
                    raise CardKitRefused(self._refused)
                if self._flusher is not None and not self._flusher.done():
                    self._flusher.cancel()
                blocks = tuple(self._blocks.values())
                cards = render.final_cards2(
                    text, state=state, note=note, title=title, blocks=blocks, buttons=buttons
                )
                await self._put_first(cards[0])
                for i, card in enumerate(cards[1:], start=2):
                    await self._replier.reply_card(
                        self._reply_to, card, in_thread=self._in_thread, uuid=f"{self._uuid}-{i}"
                    )
        finally:
            await self._reaction.remove()

    async def _put_first(self, card: dict[str, Any]) -> None:
        if self._entity is not None and (self._message_id is not None or self._reply_uncertain):
            try:
                if self._message_id is None:  # a reply that may have landed: same uuid dedupes
                    self._message_id = await self._replier.reply_card_entity(
                        self._reply_to, self._entity, in_thread=self._in_thread, uuid=self._uuid
                    )
                if self._streaming:
                    self._streaming = False
                    try:  # best effort: the final card's config switches it off as well
                        await self._op(self._replier.set_card_streaming, self._entity, False)
                    except FeishuApiError as exc:
                        logger.warning("card {}: closing streaming failed: {}", self._entity, exc)
                if await self._op(self._replier.update_card_entity, self._entity, card):
                    return
            except FeishuTransientError:
                raise  # it may have landed; a second copy of the answer is worse
            except FeishuApiError as exc:
                logger.warning("final card update refused, replying a new card: {}", exc)
        message_id = await self._replier.reply_card(
            self._reply_to, card, in_thread=self._in_thread, uuid=f"{self._uuid}-1"
        )
        self._notify("card", message_id)
