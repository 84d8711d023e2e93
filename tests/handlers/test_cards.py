"""handle_card_action: access, forged and edited values, another chat, redelivery, Stop (live
and finished turns), New session, and approvals handed to the broker.

The context is a small stand-in with the real pieces the handler touches: a SQLite store in
tmp_path, the TurnRegistry, and the real signer and broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from database.store import SessionStore
from feishu_bot.approvals import ApprovalBroker
from feishu_bot.events import PermissionRequest
from feishu_bot.feishu.access import AccessPolicy
from feishu_bot.feishu.buttons import ButtonSigner
from feishu_bot.feishu.card_action import RecentAnswers
from feishu_bot.handlers.cards import handle_card_action
from feishu_bot.turns import TurnRegistry
from tests.fakes.wiring import make_conversations

pytestmark = pytest.mark.timeout(30)

SECRET = "app-secret"
SIGNER = ButtonSigner(SECRET)
CHAT = "oc_chat"
KEY = f"p2p:{CHAT}"
USER = "ou_user"
ACCESS = AccessPolicy([USER, "ou_other"], [], False)


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Any]:
    async with await SessionStore.open(tmp_path / "bot.db") as store:
        turns = TurnRegistry()
        broker = ApprovalBroker(store=store, signer=SIGNER, timeout=10)
        closed: list[str] = []

        async def close_session(key: str) -> None:
            closed.append(key)

        launcher = SimpleNamespace(close_session=close_session, closed=closed)
        yield SimpleNamespace(
            store=store,
            turns=turns,
            conversations=make_conversations(
                store, launcher=launcher, turns=turns, approvals=broker
            ),
            settings=SimpleNamespace(
                FEISHU_APP_SECRET=SecretStr(SECRET), CLAUDE_SHARED_WORKDIR=False
            ),
            approvals=broker,
            workdir_root=tmp_path,
            launcher=launcher,
        )
        await turns.aclose()


_events = iter(range(1_000_000))


def click(value: Any, *, operator: str = USER, chat: str = CHAT, event_id: str | None = None):
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id or f"ev{next(_events)}",
            "event_type": "card.action.trigger",
        },
        "event": {
            "operator": {"open_id": operator},
            "action": {"value": value, "tag": "button"},
            "context": {"open_message_id": "om_card", "open_chat_id": chat},
        },
    }


async def handle(ctx: Any, envelope: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return await handle_card_action(ctx, envelope, access=ACCESS, **kw)


async def live_turn(ctx: Any) -> tuple[int, asyncio.Task[None]]:
    turn_id = await ctx.store.accept_message(
        "om_user", conversation_key=KEY, chat_id=CHAT, prompt="hi", reply_in_thread=False
    )
    handle = ctx.turns.admit(KEY, "om_user", turn_id)
    task = ctx.turns.start(handle, asyncio.sleep(3600))
    return turn_id, task


async def test_stop_a_running_turn_and_replayed_stop(ctx):
    turn_id, task = await live_turn(ctx)
    await ctx.store.update_turn(turn_id, status="running")
    stop = SIGNER.value("stop", conversation_key=KEY, turn_id=turn_id)
    answer = await handle(ctx, click(stop))
    assert answer == {"toast": {"type": "success", "content": "Stopping…"}}
    with pytest.raises(asyncio.CancelledError):
        await task
    await ctx.store.update_turn(turn_id, status="cancelled")
    again = await handle(ctx, click(stop))  # the same button later: nothing to stop
    assert again["toast"]["type"] == "info" and "already finished" in again["toast"]["content"]


async def test_stop_on_one_card_leaves_the_conversations_other_turns_alone(ctx):
    _turn_id, task = await live_turn(ctx)
    other_id = await ctx.store.accept_message(
        "om_user2", conversation_key=KEY, chat_id=CHAT, prompt="two", reply_in_thread=False
    )
    other = ctx.turns.start(ctx.turns.admit(KEY, "om_user2", other_id), asyncio.sleep(3600))
    stop = SIGNER.value("stop", conversation_key=KEY, turn_id=other_id)
    assert (await handle(ctx, click(stop)))["toast"]["type"] == "success"
    with pytest.raises(asyncio.CancelledError):
        await other
    assert not task.done()


async def test_stranger_forged_edited_and_foreign_values_do_nothing(ctx):
    turn_id, task = await live_turn(ctx)
    stop = SIGNER.value("stop", conversation_key=KEY, turn_id=turn_id)
    assert (await handle(ctx, click(stop, operator="ou_stranger")))["toast"]["type"] == "warning"
    edited = {**stop, "t": turn_id + 1}
    forged = ButtonSigner("guessed").value("stop", conversation_key=KEY, turn_id=turn_id)
    for bad in (edited, forged, {"action": "stop"}, "garbage", None):
        answer = await handle(ctx, click(bad))
        assert answer["toast"]["type"] == "error" and "not valid" in answer["toast"]["content"]
    # A genuine value, clicked on a copy of the card in another chat.
    elsewhere = await handle(ctx, click(stop, chat="oc_elsewhere"))
    assert "another chat" in elsewhere["toast"]["content"]
    assert not task.done()


async def test_redelivered_click_is_handled_once(ctx):
    turn_id, task = await live_turn(ctx)
    stop = SIGNER.value("stop", conversation_key=KEY, turn_id=turn_id)
    answers = RecentAnswers()
    first = await handle(ctx, click(stop, event_id="ev-same"), answers=answers)
    assert first["toast"]["type"] == "success"
    with pytest.raises(asyncio.CancelledError):
        await task
    # Feishu pushes the same event again: the same answer, nothing done twice.
    assert await handle(ctx, click(stop, event_id="ev-same"), answers=answers) == first
    assert (await handle(ctx, click(stop, event_id="ev-same")))["toast"]["type"] == "info"


async def test_new_session_button(ctx):
    await ctx.store.ensure_conversation(
        KEY, chat_id=CHAT, chat_type="p2p", thread_root=None, workdir="/w"
    )
    await ctx.store.set_session(KEY, "sess-1")
    await ctx.store.add_grant(KEY, "tool", "Bash(ls:*)", USER)
    new = SIGNER.value("new", conversation_key=KEY, turn_id=1)
    answer = await handle(ctx, click(new))
    assert answer["toast"]["type"] == "success"
    await ctx.turns.wait_idle(5)
    # The same effect as /new: the session is forgotten, its warm process closed, grants gone.
    assert (await ctx.store.get_conversation(KEY)).session_id is None
    assert ctx.launcher.closed == [KEY]
    assert await ctx.store.list_grants(KEY) == []


async def test_approval_clicks_reach_the_broker(ctx):
    class Sink:
        def __init__(self) -> None:
            self.shown: asyncio.Queue[Any] = asyncio.Queue()

        async def show_block(self, block: Any) -> None:
            self.shown.put_nowait(block)

        async def resolve_block(self, block_id: str, text: str) -> None:
            pass

    sink = Sink()
    ask = ctx.approvals.for_turn(KEY, 5, USER, sink)
    task = asyncio.create_task(ask(PermissionRequest("r", "Bash", {"command": "ls"})))
    block = await asyncio.wait_for(sink.shown.get(), 5)
    allow = next(b.value for b in block.buttons if b.text == "Allow once")
    refused = await handle(ctx, click(allow, operator="ou_other"))
    assert refused["toast"]["type"] == "warning"
    answer = await handle(ctx, click(allow))
    assert answer == {"toast": {"type": "success", "content": "Allowed Bash once."}}
    assert (await task).allow
    late = await handle(ctx, click(allow))
    assert late["toast"]["type"] == "info"


async def test_malformed_envelopes(ctx):
    assert (await handle(ctx, {}))["toast"]["type"] == "error"
    assert (await handle(ctx, {"header": {}, "event": "x"}))["toast"]["type"] == "error"


def test_card_services_follow_the_settings():
    from feishu_bot.config import Settings
    from feishu_bot.handlers.cards import card_services

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        FEISHU_APP_ID="cli_x",
        FEISHU_APP_SECRET=SECRET,
        FEISHU_CARDKIT="off",
        FEISHU_APPROVERS="ou_a, ou_b",
        CLAUDE_APPROVAL_TIMEOUT=30,
    )
    services = card_services(settings, store=None)
    assert services.stream_factory.cardkit.mode == "off"
    value = services.signer.value("stop", conversation_key=KEY, turn_id=1)
    assert SIGNER.verify(value) is not None  # the same key as any signer of this secret
