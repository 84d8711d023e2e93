"""Button clicks (`card.action.trigger`): decide in milliseconds, answer with a toast, work after.

Feishu waits 3 s for the answer, which rides on the event's ack; a slow answer shows the user
an error. So this handler only parses, checks and settles: access policy, the signature and
binding of the value (`feishu.buttons`), the chat the card is in, redelivery (the event id,
once, through `store.mark_processed("card:…")`), then:

- stop: the turn must still be queued or running (journal), else "already finished"; only
  that turn is stopped (a queued one leaves the queue; the running one's waiting approval is
  settled as stopped, then it is interrupted);
- new: as /new, run as a tracked task, only from the conversation's latest finished card;
- allow / allow_always / deny / answer: handed to the approval broker, which settles the
  waiting request (who may answer is its rule) and says what to toast.

It never returns a card: a streaming card cannot be replaced from a callback answer, and the
turn's own stream updates the card anyway. Anything it refuses does nothing but a toast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from feishu_bot import wording
from feishu_bot.feishu.buttons import ButtonSigner, ButtonValue
from feishu_bot.feishu.card_action import RecentAnswers, parse_card_action
from feishu_bot.keys import ConversationKey

if TYPE_CHECKING:
    from feishu_bot.approvals import ApprovalBroker
    from feishu_bot.config import Settings
    from feishu_bot.context import BotContext
    from feishu_bot.feishu.access import AccessPolicy
    from feishu_bot.feishu.reply_switch import ReplySwitchFactory

__all__ = ["CardServices", "RecentAnswers", "card_services", "handle_card_action", "toast"]

LIVE_STATUSES = ("queued", "running")


def toast(kind: str, content: str) -> dict[str, Any]:
    """A callback answer that shows a toast (kind: info, success, warning, error)."""
    return {"toast": {"type": kind, "content": content}}


@dataclass(frozen=True)
class CardServices:
    """What the composition root wires for cards: one of each per app."""

    signer: ButtonSigner
    stream_factory: ReplySwitchFactory
    broker: ApprovalBroker
    answers: RecentAnswers


def card_services(settings: Settings, store: Any) -> CardServices:
    """Build the card services from the settings (FEISHU_CARDKIT, FEISHU_APPROVERS,
    CLAUDE_ALLOWED_TOOLS, CLAUDE_PERMISSION_MODE, CLAUDE_APPROVAL_TIMEOUT)."""
    from feishu_bot.approvals import ApprovalBroker
    from feishu_bot.feishu.cardkit_state import CardKitState
    from feishu_bot.feishu.reply_switch import ReplySwitchFactory

    signer = ButtonSigner(settings.FEISHU_APP_SECRET.get_secret_value())
    broker = ApprovalBroker(
        store=store,
        signer=signer,
        approvers=settings.FEISHU_APPROVERS,
        allowed_tools=settings.allowed_tools,
        permission_mode=settings.CLAUDE_PERMISSION_MODE,
        timeout=settings.CLAUDE_APPROVAL_TIMEOUT,
    )
    factory = ReplySwitchFactory(cardkit=CardKitState(settings.FEISHU_CARDKIT), signer=signer)
    return CardServices(signer, factory, broker, RecentAnswers())


async def handle_card_action(
    ctx: BotContext,
    envelope: dict[str, Any],
    *,
    access: AccessPolicy,
    signer: ButtonSigner | None = None,
    answers: RecentAnswers | None = None,
) -> dict[str, Any]:
    """The answer to one click: verify → dedupe → call the owner (see the module docstring).
    `signer` defaults to one derived from FEISHU_APP_SECRET."""
    click = parse_card_action(envelope)
    if click is None:
        return toast("error", wording.CLICK_UNREADABLE)
    operator = click.operator_open_id
    with logger.contextualize(message_id=click.message_id):
        if not access.allows(operator, click.chat_id):
            logger.info("card action refused: {} is not allowed", operator)
            return toast("warning", wording.CLICK_NOT_ALLOWED)
        signer = signer or ButtonSigner(ctx.settings.FEISHU_APP_SECRET.get_secret_value())
        value = signer.verify(click.value)
        if value is None:
            logger.warning("card action with an invalid value from {}", operator)
            return toast("error", wording.CLICK_FORGED)
        if click.chat_id and not _in_chat(value.conversation_key, click.chat_id):
            logger.warning(
                "card action of {} clicked in chat {}", value.conversation_key, click.chat_id
            )
            return toast("error", wording.CLICK_ELSEWHERE)
        event_id = click.event_id
        if event_id and not await ctx.store.mark_processed("card:" + event_id):
            logger.info("card action {} delivered again", event_id)
            earlier = answers.get(event_id) if answers is not None else None
            return earlier or toast("info", wording.CLICK_ALREADY_DONE)
        with logger.contextualize(conversation=value.conversation_key):
            answer = await _act(ctx, value, operator)
        if answers is not None and event_id:
            answers.put(event_id, answer)
        return answer


async def _act(ctx: BotContext, value: ButtonValue, operator: str) -> dict[str, Any]:
    key = value.conversation_key
    logger.info("card action {} by {} (turn {})", value.action, operator, value.turn_id)
    if value.action == "stop":
        # This card's turn only: a queued one leaves the queue, the running one is stopped;
        # the conversation's other turns go on (/stop stops them all).
        turn = await ctx.store.get_turn(value.turn_id)
        if turn is None or turn.conversation_key != key or turn.status not in LIVE_STATUSES:
            return toast("info", wording.CLICK_FINISHED)
        if not ctx.conversations.stop_turn(key, value.turn_id):
            return toast("info", wording.CLICK_FINISHED)
        return toast("success", wording.CLICK_STOPPING)
    if value.action == "new":
        latest = await ctx.store.latest_finished_turn(key)
        if latest is not None and value.turn_id != latest:
            return toast("info", wording.CLICK_OLD_CARD)
        ctx.turns.spawn(_new_session(ctx, key), name=f"card-new:{key}")
        return toast("success", wording.CLICK_NEW_SESSION)
    if ctx.approvals is None:
        return toast("error", wording.CLICK_NO_APPROVALS)
    kind, text = ctx.approvals.answer(value, operator)
    return toast(kind, text)


async def _new_session(ctx: BotContext, key: str) -> None:
    """What /new does, for the conversation the button belongs to."""
    from feishu_bot.handlers.commands import reset_conversation

    try:
        await reset_conversation(ctx, key)
    except Exception:
        logger.exception("New session button failed for {}", key)


def _in_chat(conversation_key: str, chat_id: str) -> bool:
    """Whether a conversation key belongs to the chat the card was clicked in."""
    try:
        return ConversationKey.parse(conversation_key).chat_id == chat_id
    except ValueError:
        return False
