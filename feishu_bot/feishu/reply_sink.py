"""What a turn's runner tells the user through: one `ReplySink` per turn.

Two implementations show it, each on its own: `patch_stream.PatchStream` (an interactive card
PATCHed in place; blocks are small cards of their own) and `cardkit_stream.CardKitStream` (a
CardKit card that types, with buttons; blocks live on the card). `reply_switch.ReplySwitch`
starts with one and moves to the other when CardKit is refused; callers see only this protocol.

The contract every sink keeps:
- Intermediate states (`queued`, `started`, `update`, `show_block`, `resolve_block`) never
  wait for Feishu: they record the latest wanted view and a background task shows it, paced;
  only the latest text is sent. Their failures are logged and swallowed.
- The final answer (`finish` or `fail`) is delivered once: the first call wins, later final
  calls and updates are ignored. It waits for a request in flight, so a stale progress update
  never lands after the final content; parts that do not fit one card follow, in order.
- `finish`/`fail` raise `FeishuApiError` only when nothing could be delivered, or when the
  final update failed transiently after retries (it may have landed, and a second copy of the
  answer is worse than a reported failure).
- The "working" reaction, when the sink owns one, is added by `started` and removed at the
  end in every case (`aclose` only stops adding it).
- `on_ui` is told ("reaction", id) and ("card", id) as they appear (("reaction", "") once the
  reaction is gone), so the owner can journal them; `adopt(card)` continues a card that an
  earlier run of the same turn left, after a restart.

What a sink does not do: run Claude, decide what to say, or word errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from loguru import logger

from feishu_bot.feishu.render import Block

__all__ = [
    "BlockSink",
    "ReplySink",
    "ReplySinkFactory",
    "Text",
    "UiCallback",
    "UiNotifier",
    "failure_text",
]

# The answer so far, or a function returning it: read only when a card is about to be sent,
# since joining a long streamed answer on each of its thousands of deltas is quadratic.
Text = str | Callable[[], str]

# (kind, id): kind is "reaction" or "card"; the id is "" once a reaction is gone.
UiCallback = Callable[[str, str], None]


def failure_text(message: str, partial_text: str | None) -> str:
    """What a failed turn's card says: the partial answer (if any), a rule, then the message."""
    return f"{partial_text.rstrip()}\n\n---\n⚠️ {message}" if partial_text else message


class BlockSink(Protocol):
    """The part of a sink that shows requests waiting for a person (approvals, questions)."""

    async def show_block(self, block: Block) -> None:
        """Show (or replace) a block that waits for an answer. Returns at once."""
        ...

    async def resolve_block(self, block_id: str, text: str) -> None:
        """Replace a block by the record of its outcome (no buttons). Returns at once."""
        ...


class ReplySink(BlockSink, Protocol):
    """One turn's reply; see the module docstring for the contract."""

    @property
    def card_id(self) -> str | None:
        """The message id of the live card, once it exists."""
        ...

    @property
    def closed(self) -> bool:
        """True once `finish`, `fail` or `aclose` began: progress is over."""
        ...

    @property
    def on_ui(self) -> UiCallback | None: ...

    @on_ui.setter
    def on_ui(self, callback: UiCallback | None) -> None: ...

    def adopt(self, card: str) -> None:
        """Continue in the card an earlier run of the same turn left (its journalled id)."""
        ...

    async def aclose(self) -> None:
        """Stop background work without delivering anything."""
        ...

    async def queued(self, position: int) -> None:
        """Show (create or update) a "queued, position k" card."""
        ...

    async def started(self) -> None:
        """The turn runs: add the reaction; a queued card turns to working."""
        ...

    async def update(self, text: Text) -> None:
        """The answer so far (the whole text, not a delta). Returns at once."""
        ...

    async def finish(self, text: str, *, note: str | None = None) -> None:
        """Deliver the complete answer (split over several cards when long)."""
        ...

    async def fail(self, message: str, *, partial_text: str | None = None) -> None:
        """Turn the card red with one short message (after any partial answer)."""
        ...


class ReplySinkFactory(Protocol):
    """Makes the sink of each turn (what `reply_switch.ReplySwitchFactory` is)."""

    def __call__(
        self,
        replier: Any,
        reply_to: str,
        *,
        in_thread: bool,
        conversation_key: str = "",
        turn_id: int | None = None,
    ) -> ReplySink: ...


class UiNotifier:
    """`on_ui` for a sink: told ("reaction", id or "") and ("card", id) as they change, to
    journal them (a CardKit card's id is "<message_id>#<card_id>", what `adopt` needs). A
    failing callback is logged, never raised into the reply."""

    on_ui: UiCallback | None = None

    def _notify(self, kind: str, value: str) -> None:
        if self.on_ui is not None:
            try:
                self.on_ui(kind, value)
            except Exception:
                logger.exception("reply UI callback failed")
