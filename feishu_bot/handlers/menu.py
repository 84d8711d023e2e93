"""The bot menu: a click on the bot's custom menu runs one of the commands.

Feishu sends ``application.bot.menu_v6`` with the operator's ids, the item's ``event_key`` and
a timestamp only: no chat, no message to reply to. The keys ``new``, ``stop``, ``status``,
``sessions``, ``stats`` and ``help`` run those commands in the operator's private (p2p)
conversation with the bot, and the answer goes to the operator as a new message
(``receive_id_type=open_id``), which Feishu puts in that private chat. Other keys get a short
reply naming the known ones.

The private chat's id comes from ``P2pChats`` (filled by dispatch from every p2p message) or
the turn journal. When neither knows it, only ``help`` can run; the others ask for a first
message, since a command about "this conversation" has no conversation yet.

Dedupe, access and the error boundary are dispatch's; this module only parses and runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from feishu_bot.events import InboundMessage
from feishu_bot.handlers.commands import run_command

if TYPE_CHECKING:
    from feishu_bot.context import BotContext

__all__ = ["MENU_EVENT", "MENU_KEYS", "MenuClick", "P2pChats", "parse_menu_event", "run_menu"]

MENU_EVENT = "application.bot.menu_v6"
MENU_KEYS = ("new", "stop", "status", "sessions", "stats", "help")
UNKNOWN_KEY = (
    "This menu item ({key}) does nothing here. Menu items send one of these event keys: "
    + ", ".join(MENU_KEYS)
    + "."
)
NO_CHAT = (
    "Send me a message in this chat first: the menu's {key} acts on our conversation here, "
    "and there is none yet."
)
_KEY_MAX = 30  # Feishu's limit for event_key


@dataclass(frozen=True, slots=True)
class MenuClick:
    event_id: str
    open_id: str
    key: str


def parse_menu_event(envelope: Any) -> MenuClick | None:
    """The click an ``application.bot.menu_v6`` envelope carries; None when it names no
    operator (pure, never raises)."""
    if not isinstance(envelope, dict):
        return None
    header, event = envelope.get("header"), envelope.get("event")
    if not isinstance(header, dict) or not isinstance(event, dict):
        return None
    operator = event.get("operator")
    ids = operator.get("operator_id") if isinstance(operator, dict) else None
    open_id = ids.get("open_id") if isinstance(ids, dict) else None
    event_id = header.get("event_id")
    if not isinstance(open_id, str) or not open_id or not isinstance(event_id, str):
        return None
    key = event.get("event_key")
    key = key.strip()[:_KEY_MAX] if isinstance(key, str) else ""
    return MenuClick(event_id=event_id, open_id=open_id, key=key)


class P2pChats:
    """open_id -> the bot's private chat with that user, for the most recent users."""

    def __init__(self, limit: int = 4096) -> None:
        self._chats: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def note(self, open_id: str, chat_id: str) -> None:
        if not open_id or not chat_id:
            return
        self._chats[open_id] = chat_id
        self._chats.move_to_end(open_id)
        while len(self._chats) > self._limit:
            self._chats.popitem(last=False)

    def get(self, open_id: str) -> str | None:
        return self._chats.get(open_id)


async def run_menu(ctx: BotContext, click: MenuClick, chat_id: str | None) -> str:
    """The text that answers a click (the command's reply, or why there is none)."""
    printable = "".join(c if c.isprintable() else "?" for c in click.key) or "(none)"
    if click.key not in MENU_KEYS:
        return UNKNOWN_KEY.format(key=printable)
    if chat_id is None and click.key != "help":
        return NO_CHAT.format(key=click.key)
    msg = InboundMessage(
        message_id=f"menu:{click.event_id}",
        chat_id=chat_id or "",
        chat_type="p2p",
        sender_open_id=click.open_id,
        msg_type="text",
        text=f"/{click.key}",
    )
    return await run_command(ctx, msg, click.key, "")
