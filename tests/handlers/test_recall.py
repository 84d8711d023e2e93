"""handle_recall against a real SQLite store, and Conversations.withdraw on the real
TurnRegistry: what a recall does to a message not seen yet, kept attachments, a waiting turn,
a running turn and a finished one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from database.store import SessionStore
from feishu_bot.context import BotContext, GatewayStatus
from feishu_bot.handlers.recall import RECALL_EVENT, handle_recall, recalled_message_id
from feishu_bot.turns import TurnRegistry
from tests.fakes.wiring import make_conversations

KEY = "p2p:oc_1"


class Withdraw:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int]] = []

    def withdraw(self, key: str, turn_id: int) -> bool:
        self.asked.append((key, turn_id))
        return self.answer


def envelope(message_id: Any) -> dict[str, Any]:
    return {"header": {"event_type": RECALL_EVENT}, "event": {"message_id": message_id}}


@pytest.fixture
async def store(tmp_path: Path):
    async with await SessionStore.open(tmp_path / "bot.db") as s:
        yield s


def ctx_with(store: SessionStore, conversations: Any) -> BotContext:
    return BotContext(
        settings=None, store=store, launcher=None, replier=None,  # type: ignore[arg-type]
        turns=TurnRegistry(), workdir_root=Path("/tmp"), conversations=conversations,
        gateway_status=lambda: GatewayStatus(connected=True),
    )


async def journal(store: SessionStore, message_id: str, status: str = "queued") -> int:
    turn_id = await store.accept_message(
        message_id, conversation_key=KEY, chat_id="oc_1", prompt="hi", reply_in_thread=False
    )
    assert turn_id is not None
    if status != "queued":
        await store.update_turn(turn_id, status=status)
    return turn_id


async def test_a_message_recalled_before_it_arrived_never_runs(store: SessionStore) -> None:
    ctx = ctx_with(store, Withdraw(True))
    assert await handle_recall(ctx, envelope("om_early")) == "unseen"
    assert await store.accept_message(
        "om_early", conversation_key=KEY, chat_id="oc_1", prompt="hi", reply_in_thread=False
    ) is None  # when it arrives it is a duplicate


async def test_kept_attachments_are_dropped(store: SessionStore) -> None:
    await store.keep_message(
        "om_img", conversation_key=KEY, chat_id="oc_1", reply_in_thread=False,
        attachments_json='[{"kind": "image", "key": "img_1", "name": "", "size": null}]',
    )
    assert await handle_recall(ctx_with(store, Withdraw(True)), envelope("om_img")) == (
        "kept-dropped"
    )
    assert await store.claim_kept(KEY, "om_question", since=0) == []


async def test_a_waiting_turn_is_withdrawn_and_a_running_one_goes_on(store: SessionStore) -> None:
    waiting = await journal(store, "om_wait")
    conversations = Withdraw(True)
    assert await handle_recall(ctx_with(store, conversations), envelope("om_wait")) == "withdrawn"
    assert conversations.asked == [(KEY, waiting)]
    running = await journal(store, "om_run", "running")
    busy = Withdraw(False)
    assert await handle_recall(ctx_with(store, busy), envelope("om_run")) == "running"
    assert busy.asked == [(KEY, running)]


async def test_finished_turns_and_bad_events_are_left_alone(store: SessionStore) -> None:
    await journal(store, "om_done", "done")
    conversations = Withdraw(True)
    ctx = ctx_with(store, conversations)
    assert await handle_recall(ctx, envelope("om_done")) == "finished"
    assert await handle_recall(ctx, envelope(None)) == "ignored"
    assert await handle_recall(ctx, {"event": "nonsense"}) == "ignored"
    assert conversations.asked == []
    assert recalled_message_id(envelope("om_x")) == "om_x"


async def test_withdraw_cancels_only_a_turn_claude_has_not_started() -> None:
    turns = TurnRegistry()
    conversations = make_conversations(None, launcher=None, turns=turns)
    gate = asyncio.Event()
    waiting = turns.admit(KEY, "om_wait", 1)
    turns.start(waiting, gate.wait())
    running = turns.admit(KEY, "om_run", 2)
    running.running = True
    turns.start(running, gate.wait())
    assert not conversations.withdraw(KEY, 2)  # Claude works on it: not stopped
    assert not conversations.withdraw(KEY, 99)  # not waiting or running
    assert conversations.withdraw(KEY, 1)
    assert waiting.cancel_reason == "recalled"
    await asyncio.gather(waiting.task, return_exceptions=True)
    assert waiting.task.cancelled() and not running.task.done()
    await turns.aclose()
