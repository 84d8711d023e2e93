"""Dispatcher built directly, with Conversations and the store on a temporary SQLite file:
the filter chain (event kind, @mention, access, dedupe) and routing (commands, turns), with
events built the way Feishu sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from database.store import SessionStore
from feishu_bot.config import Settings
from feishu_bot.context import BotContext, GatewayStatus
from feishu_bot.dispatch import MESSAGE_EVENT, Dispatcher
from feishu_bot.feishu.access import AccessPolicy, RefusalLimiter
from feishu_bot.simulator.envelopes import bot_mention, build_envelope, build_message_event
from feishu_bot.turns import TurnRegistry

pytestmark = pytest.mark.timeout(30)

BOT = "ou_bot"
ALLOWED = "ou_allowed"


class Replier:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.sent = asyncio.Event()

    def note_chat(self, message_id: str, chat_id: str) -> None: ...

    async def reply_text(self, message_id: str, text: str, *, in_thread: bool = False) -> str:
        self.texts.append((message_id, text))
        self.sent.set()
        return "om_reply"


class Conversations:
    """Records what reaches the owner of turns."""

    def __init__(self) -> None:
        self.admitted: list[str] = []

    async def admit(self, msg: Any) -> Any:
        from feishu_bot.conversations import Admission

        self.admitted.append(msg.message_id)
        return Admission.ACCEPTED


def event(text: str, *, mid: str, chat_type: str = "p2p", sender: str = ALLOWED,
          mention: bool = False) -> dict[str, Any]:
    mentions = [bot_mention("@_user_1", bot_open_id=BOT, bot_name="Bot", tenant_key="t")]
    body = build_message_event(
        message_id=mid,
        chat_id="oc_group" if chat_type == "group" else "oc_p2p",
        chat_type=chat_type,
        sender_open_id=sender,
        msg_type="text",
        content={"text": ("@_user_1 " if mention else "") + text},
        tenant_key="t",
        mentions=mentions if mention else None,
    )
    return build_envelope(MESSAGE_EVENT, body, app_id="cli_t", tenant_key="t", token="")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Any]:
    async with await SessionStore.open(tmp_path / "bot.db") as store:
        settings = Settings(_env_file=None, FEISHU_APP_ID="cli_t", FEISHU_APP_SECRET="s")  # type: ignore[call-arg]
        turns, replier, owner = TurnRegistry(), Replier(), Conversations()
        ctx = BotContext(
            settings=settings,
            store=store,
            launcher=None,  # type: ignore[arg-type]
            replier=replier,  # type: ignore[arg-type]
            turns=turns,
            conversations=owner,  # type: ignore[arg-type]
            workdir_root=tmp_path,
            gateway_status=lambda: GatewayStatus(connected=True),
        )
        dispatcher = Dispatcher(
            ctx, bot_open_id=BOT, access=AccessPolicy([ALLOWED], [], False),
            refusals=RefusalLimiter(),
        )
        yield dispatcher, owner, replier, turns
        await turns.aclose()


async def test_a_private_message_becomes_a_turn_once(world: Any) -> None:
    dispatcher, owner, _replier, _turns = world
    assert await dispatcher.handle(event("hello", mid="om_1")) is None
    assert owner.admitted == ["om_1"]
    assert dispatcher.counters.turns_accepted == 1


async def test_a_group_message_needs_the_mention(world: Any) -> None:
    dispatcher, owner, replier, _turns = world
    await dispatcher.handle(event("hi all", mid="om_g1", chat_type="group"))
    assert owner.admitted == [] and replier.texts == []
    await dispatcher.handle(event("do it", mid="om_g2", chat_type="group", mention=True))
    assert owner.admitted == ["om_g2"]


async def test_a_stranger_is_refused_with_their_ids_and_nothing_runs(world: Any) -> None:
    dispatcher, owner, replier, _turns = world
    await dispatcher.handle(event("let me in", mid="om_s", sender="ou_stranger"))
    assert owner.admitted == [] and dispatcher.counters.refused == 1
    async with asyncio.timeout(5):
        await replier.sent.wait()
    assert "ou_stranger" in replier.texts[0][1]


async def test_a_command_is_answered_once_and_is_not_a_turn(world: Any) -> None:
    dispatcher, owner, replier, turns = world
    await dispatcher.handle(event("/help", mid="om_c"))
    await dispatcher.handle(event("/help", mid="om_c"))  # Feishu delivers it again
    assert await turns.wait_idle(5)
    assert owner.admitted == []
    assert [mid for mid, _ in replier.texts] == ["om_c"] and "/new" in replier.texts[0][1]
    assert dispatcher.counters.duplicates_dropped == 1


async def test_unknown_events_are_ignored(world: Any) -> None:
    dispatcher, owner, _replier, _turns = world
    other = build_envelope("im.message.message_read_v1", {}, app_id="a", tenant_key="t", token="")
    assert await dispatcher.handle(other) is None
    assert owner.admitted == [] and dispatcher.counters.events == 0
