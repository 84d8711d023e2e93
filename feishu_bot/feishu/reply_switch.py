"""The reply sink of every turn: CardKit when it may be used, PATCH cards when it may not.

`ReplySwitch` is the `ReplySink` a turn gets from `ReplySwitchFactory`. It starts with a
`CardKitStream` when `CardKitState.should_try()` (FEISHU_CARDKIT not off, and no refusal
remembered, or this turn is the one that re-checks), else with a `PatchStream`. When CardKit
refuses this turn's card, the CardKit stream stops and hands over (`on_refused`): the switch
moves to a `PatchStream` and replays what the card should show — every block in the order it
first appeared (a resolved one as its record), and the queue position or the text so far —
and every later call goes there, the final answer included. It moves once, one way.

What the switch itself owns, so a move changes none of it:
- the "working" reaction (the inner streams get none): added once by `started`, removed once
  after the final answer, whichever stream delivered it;
- `on_ui`: both inner streams report through it; a CardKit card is journalled as
  "<message_id>#<card_id>", a PATCH card as its message id;
- "the first final wins": a second `finish`/`fail` is ignored here.

`adopt(card)` continues the card a crashed run left: "<message_id>#<card_id>" on CardKit (if
this turn starts there), anything else on a PatchStream.

It does not pace or render anything itself; the inner streams do (see their docstrings).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from loguru import logger

from feishu_bot.feishu.buttons import ButtonSigner
from feishu_bot.feishu.cardkit_state import CardKitState
from feishu_bot.feishu.cardkit_stream import CardKitRefused, CardKitStream
from feishu_bot.feishu.patch_stream import PatchStream
from feishu_bot.feishu.reaction import DEFAULT_REACTION, Reaction
from feishu_bot.feishu.render import Block
from feishu_bot.feishu.reply_sink import ReplySink, Text, UiNotifier

__all__ = ["ReplySwitch", "ReplySwitchFactory"]


class ReplySwitch(UiNotifier):
    """One turn's reply on CardKit or PATCH cards; see the module docstring."""

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
        patch_options: Mapping[str, Any] | None = None,
        **cardkit_options: Any,
    ) -> None:
        """`cardkit_options` go to the CardKitStream (intervals, TTL, clock, sleep) and
        `patch_options` to the PatchStream (min_interval, clock, sleep)."""
        self._replier, self._reply_to, self._in_thread = replier, reply_to, in_thread
        self._title = title
        self._patch_options = dict(patch_options or {})
        self._reaction = Reaction(replier, reply_to, reaction, self._notify)
        self._closed = False
        # What the card should show, kept for a replay on a PatchStream.
        self._position: int | None = None
        self._text: Text = ""
        self._blocks: dict[str, Block] = {}

        self._cardkit: CardKitStream | None = None
        self._patch: PatchStream | None = None
        if cardkit.should_try():
            self._cardkit = CardKitStream(
                replier,
                reply_to,
                in_thread=in_thread,
                cardkit=cardkit,
                signer=signer,
                conversation_key=conversation_key,
                turn_id=turn_id,
                title=title,
                reaction=None,
                on_refused=self._cardkit_refused,
                **cardkit_options,
            )
            self._cardkit.on_ui = self._notify
        else:
            self._use_patch()

    # -- where calls go ----------------------------------------------------------------------

    @property
    def _sink(self) -> ReplySink:
        if self._patch is not None:
            return self._patch
        assert self._cardkit is not None
        return self._cardkit

    @property
    def uses_cardkit(self) -> bool:
        """False once the turn is on PATCH cards (from the start, or after a refusal)."""
        return self._patch is None

    def _use_patch(self) -> PatchStream:
        if self._patch is None:
            self._patch = PatchStream(
                self._replier,
                self._reply_to,
                in_thread=self._in_thread,
                title=self._title,
                reaction=None,
                **self._patch_options,
            )
            self._patch.on_ui = self._notify
        return self._patch

    async def _cardkit_refused(self) -> None:
        """Called by the CardKit stream, which stopped: show on PATCH cards what it showed.

        Runs before anything else touches the turn (see `CardKitStream._give_up`) and none of
        these calls waits for Feishu, so no update can slip in between or be overtaken. Blocks
        go first to keep the order the PATCH fallback always had: their cards are requested
        before the answer card (whose first request waits for the PatchStream's flusher)."""
        patch = self._use_patch()
        for block in self._blocks.values():
            await patch.show_block(block)
        if self._position is not None:
            await patch.queued(self._position)
        elif self._text:
            await patch.update(self._text)

    # -- the ReplySink -------------------------------------------------------------------------

    @property
    def card_id(self) -> str | None:
        """The message id of the live card, once it exists."""
        return self._sink.card_id

    @property
    def closed(self) -> bool:
        return self._closed

    def adopt(self, card: str) -> None:
        """Continue in the card an earlier run of the same turn left (after a restart)."""
        message_id, _, entity = card.partition("#")
        if self._patch is None and entity and self._sink.card_id is None:
            self._sink.adopt(card)
            return
        # A PATCH card (or CardKit is off or refused now): continue it with PATCH.
        self._use_patch().adopt(message_id)

    async def __aenter__(self) -> ReplySwitch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background work without delivering anything."""
        self._closed = True
        adding = self._reaction.cancel()
        for sink in (self._cardkit, self._patch):
            if sink is not None:
                await sink.aclose()
        if adding is not None:
            await asyncio.wait([adding])

    async def queued(self, position: int) -> None:
        if self._closed:
            return
        self._position = position
        await self._sink.queued(position)

    async def started(self) -> None:
        if self._closed:
            return
        self._reaction.add()
        self._position = None
        await self._sink.started()

    async def update(self, text: Text) -> None:
        """The answer so far (whole text, or a function returning it). Returns at once."""
        if self._closed:
            return
        self._text, self._position = text, None
        await self._sink.update(text)

    async def finish(self, text: str, *, note: str | None = None) -> None:
        """Deliver the complete answer; raises FeishuApiError if it could not be delivered."""
        await self._deliver("done", lambda sink: sink.finish(text, note=note))

    async def fail(self, message: str, *, partial_text: str | None = None) -> None:
        """Turn the card red with one short message (after any partial answer)."""
        await self._deliver("error", lambda sink: sink.fail(message, partial_text=partial_text))

    async def show_block(self, block: Block) -> None:
        """Show (or replace) a block that waits for an answer. Returns at once."""
        self._blocks[block.block_id] = block
        await self._sink.show_block(block)

    async def resolve_block(self, block_id: str, text: str) -> None:
        """Replace a block by the record of its outcome (no buttons). Returns at once."""
        self._blocks[block_id] = Block(block_id, text)
        await self._sink.resolve_block(block_id, text)

    # -- the end -----------------------------------------------------------------------------

    async def _deliver(self, state: str, final: Callable[[ReplySink], Awaitable[None]]) -> None:
        if self._closed:
            logger.warning("reply already closed; final {} ignored", state)
            return
        self._closed = True
        try:
            try:
                await final(self._sink)
            except CardKitRefused:
                # Refused while the answer waited for the card: the PatchStream holds the
                # replayed view by now and delivers the answer instead.
                await final(self._use_patch())
        finally:
            await self._reaction.remove()


class ReplySwitchFactory:
    """Makes the ReplySink of each turn; one per app, sharing one CardKitState and signer.

    ``factory(replier, message_id, in_thread=..., conversation_key=..., turn_id=...)``: the
    key and turn id sign the Stop and New session buttons (without a turn id the card has
    none). `options` go to every `ReplySwitch` (see its constructor).
    """

    def __init__(
        self, *, cardkit: CardKitState, signer: ButtonSigner | None = None, **options: Any
    ) -> None:
        self.cardkit = cardkit
        self._signer = signer
        self._options = options

    def __call__(
        self,
        replier: Any,
        reply_to: str,
        *,
        in_thread: bool,
        conversation_key: str = "",
        turn_id: int | None = None,
    ) -> ReplySwitch:
        return ReplySwitch(
            replier,
            reply_to,
            in_thread=in_thread,
            cardkit=self.cardkit,
            signer=self._signer,
            conversation_key=conversation_key,
            turn_id=turn_id,
            **self._options,
        )
