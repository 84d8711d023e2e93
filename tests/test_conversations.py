"""Conversations built directly (as app.py does), with the store on a temporary SQLite file, a
real launcher for the places in the queue (no process is started: the runner is a test
double), and reply sinks that record what the user would see.

Each turn's journal row moves only through its Turn: queued → running → done, failed or
cancelled; a busy refusal and a duplicate leave no turn; one card's Stop stops that turn
only; recovery interrupts what was running and runs again what was queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from database.models import TurnStatus
from database.store import SessionStore
from feishu_bot.claude.launcher import Launcher, LauncherConfig
from feishu_bot.conversations import Admission, Conversations
from feishu_bot.errors import TransientCliError
from feishu_bot.events import InboundMessage, TurnResult
from feishu_bot.turn import Turn
from feishu_bot.turns import TurnRegistry
from tests.claude.support import MemoryBinding
from tests.fakes.wiring import make_conversations

pytestmark = pytest.mark.timeout(30)


class Sink:
    """A reply that records its end."""

    def __init__(self, reply_to: str) -> None:
        self.reply_to = reply_to
        self.finished: str | None = None
        self.failed: str | None = None
        self.adopted: str | None = None
        self.on_ui: Any = None

    def adopt(self, card: str) -> None:
        self.adopted = card

    async def started(self) -> None: ...

    async def finish(self, text: str, *, note: str | None = None) -> None:
        self.finished = text

    async def fail(self, message: str, *, partial_text: str | None = None) -> None:
        self.failed = message


class Sinks:
    def __init__(self) -> None:
        self.made: dict[str, Sink] = {}

    def __call__(self, replier: Any, reply_to: str, **kw: Any) -> Sink:
        sink = self.made[reply_to] = Sink(reply_to)
        return sink


class Replier:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    async def reply_text(self, message_id: str, text: str, *, in_thread: bool = False) -> str:
        self.texts.append((message_id, text))
        return "om_reply"

    async def remove_reaction(self, message_id: str, reaction_id: str) -> None: ...


class Runner:
    """Like the chat runner: waits for its place (the ticket), runs until the test opens its
    gate, then succeeds or raises what the test put there, and gives its place back."""

    def __init__(self) -> None:
        self.launcher: Launcher | None = None
        self.gates: dict[str, asyncio.Event] = {}
        self.errors: dict[str, Exception] = {}
        self.started: list[str] = []
        self.changed = asyncio.Event()

    def gate(self, message_id: str) -> asyncio.Event:
        return self.gates.setdefault(message_id, asyncio.Event())

    async def __call__(self, turn: Turn, ticket: Any) -> TurnResult:
        while not ticket.granted:
            ticket.changed.clear()
            await ticket.changed.wait()
        mid = turn.msg.message_id
        await turn.running()
        self.started.append(mid)
        self.changed.set()
        await self.gate(mid).wait()
        if mid in self.errors:
            raise self.errors[mid]
        result = TurnResult(text=f"answer to {turn.msg.text}", session_id="sess-1", is_error=False)
        await turn.succeed(result, resumed_from=None)
        assert self.launcher is not None
        self.launcher.cancel_reservation(ticket)  # what launcher.run does at the end
        return result

    async def wait_started(self, mid: str) -> None:
        async with asyncio.timeout(10):
            while mid not in self.started:
                self.changed.clear()
                await self.changed.wait()


def msg(mid: str, text: str = "hi", *, chat: str = "oc_1", user: str = "ou_1") -> InboundMessage:
    return InboundMessage(mid, chat, "p2p", user, "text", text)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Any]:
    async with await SessionStore.open(tmp_path / "bot.db") as store:
        launcher = Launcher(
            LauncherConfig(bin="claude", max_concurrent=1, queue_max=2), MemoryBinding()
        )
        turns, sinks, replier, runner = TurnRegistry(), Sinks(), Replier(), Runner()
        runner.launcher = launcher
        conversations = make_conversations(
            store, launcher=launcher, turns=turns, sinks=sinks, replier=replier, runner=runner
        )
        yield conversations, store, turns, sinks, replier, runner
        for gate in runner.gates.values():
            gate.set()
        await turns.aclose()
        await launcher.aclose()


async def test_a_turn_moves_through_its_journal_states(world: Any) -> None:
    conversations, store, turns, sinks, _replier, runner = world
    assert await conversations.admit(msg("om_1", "question")) is Admission.ACCEPTED
    await runner.wait_started("om_1")
    (row,) = await store.pending_turns()
    assert row.status is TurnStatus.RUNNING
    assert conversations.status("p2p:oc_1").running
    runner.gate("om_1").set()
    assert await turns.wait_idle(10)
    assert sinks.made["om_1"].finished == "answer to question"
    assert (await store.get_turn(row.id)).status is TurnStatus.DONE
    assert await store.pending_turns() == []


async def test_duplicates_and_busy_refusals_leave_no_turn(world: Any) -> None:
    conversations, store, _turns, _sinks, replier, _runner = world
    assert await conversations.admit(msg("om_1")) is Admission.ACCEPTED
    assert await conversations.admit(msg("om_1")) is Admission.DUPLICATE
    assert await conversations.admit(msg("om_2")) is Admission.ACCEPTED  # waits (cap 1)
    assert await conversations.admit(msg("om_3")) is Admission.ACCEPTED  # waits (queue 2)
    assert await conversations.admit(msg("om_4")) is Admission.BUSY
    assert await conversations.admit(msg("om_4")) is Admission.DUPLICATE  # told once
    await asyncio.sleep(0)
    for _ in range(50):
        if replier.texts:
            break
        await asyncio.sleep(0.01)
    assert [mid for mid, _ in replier.texts] == ["om_4"] and "busy" in replier.texts[0][1]
    assert len(await store.pending_turns()) == 3


async def test_a_cards_stop_cancels_that_turn_only(world: Any) -> None:
    conversations, store, turns, sinks, _replier, runner = world
    await conversations.admit(msg("om_1"))
    await conversations.admit(msg("om_2"))
    await conversations.admit(msg("om_3"))
    await runner.wait_started("om_1")
    rows = {t.message_id: t for t in await store.pending_turns()}
    assert conversations.stop_turn("p2p:oc_1", rows["om_2"].id)
    assert not conversations.stop_turn("p2p:oc_1", 999)  # no such live turn
    runner.gate("om_1").set()
    runner.gate("om_3").set()
    assert await turns.wait_idle(10)
    assert (await store.get_turn(rows["om_2"].id)).status is TurnStatus.CANCELLED
    assert sinks.made["om_2"].failed and "Stopped" in sinks.made["om_2"].failed
    assert sinks.made["om_1"].finished and sinks.made["om_3"].finished
    assert runner.started == ["om_1", "om_3"]


async def test_a_failed_run_is_journaled_and_told(world: Any) -> None:
    conversations, store, turns, sinks, _replier, runner = world
    runner.errors["om_1"] = TransientCliError("api error 529", attempts=3)
    await conversations.admit(msg("om_1"))
    runner.gate("om_1").set()
    assert await turns.wait_idle(10)
    assert "failed after 3 attempts" in (sinks.made["om_1"].failed or "")
    row = next(iter(await store_rows(store)))
    assert (row.status, row.attempts) == (TurnStatus.FAILED, 3)


async def test_recovery_interrupts_what_ran_and_runs_what_waited(tmp_path: Path) -> None:
    async with await SessionStore.open(tmp_path / "bot.db") as store:
        for mid in ("om_ran", "om_waited"):
            await store.accept_message(
                mid, conversation_key="p2p:oc_1", chat_id="oc_1", prompt=mid,
                reply_in_thread=False, sender_open_id="ou_1",
            )
        ran = next(t for t in await store.pending_turns() if t.message_id == "om_ran")
        await store.update_turn(ran.id, status=TurnStatus.RUNNING)
        launcher = Launcher(LauncherConfig(bin="claude"), MemoryBinding())
        turns, sinks, replier, runner = TurnRegistry(), Sinks(), Replier(), Runner()
        runner.launcher = launcher
        conversations: Conversations = make_conversations(
            store, launcher=launcher, turns=turns, sinks=sinks, replier=replier, runner=runner
        )
        runner.gate("om_waited").set()
        await conversations.recover()
        assert await turns.wait_idle(10)
        assert replier.texts and replier.texts[0][0] == "om_ran"
        assert "restarted" in replier.texts[0][1]
        assert runner.started == ["om_waited"]
        assert sinks.made["om_waited"].finished == "answer to om_waited"
        assert (await store.get_turn(ran.id)).status is TurnStatus.INTERRUPTED
        await turns.aclose()
        await launcher.aclose()


async def store_rows(store: SessionStore) -> list[Any]:
    out = []
    for turn_id in range(1, 10):
        row = await store.get_turn(turn_id)
        if row is not None:
            out.append(row)
    return out
