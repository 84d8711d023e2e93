"""Processed message ids and the turn journal: accept, lifecycle, pending, counts, pruning."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from database import SessionStore, StoreClosedError, Turn, TurnStatus

if TYPE_CHECKING:
    from conftest import FakeClock

DAY = 86400.0


async def accept(store: SessionStore, message_id: str, **overrides) -> int | None:
    fields = {
        "conversation_key": "p2p:oc_1",
        "chat_id": "oc_1",
        "prompt": f"prompt of {message_id}",
        "reply_in_thread": False,
    } | overrides
    return await store.accept_message(message_id, **fields)


async def test_accept_message_journals_a_queued_turn_once(store: SessionStore, clock: FakeClock):
    turn_id = await accept(store, "om_1", prompt="多行\nprompt ✓", reply_in_thread=True)
    assert isinstance(turn_id, int)
    assert await store.get_turn(turn_id) == Turn(
        id=turn_id,
        message_id="om_1",
        conversation_key="p2p:oc_1",
        chat_id="oc_1",
        prompt="多行\nprompt ✓",
        reply_in_thread=True,
        status=TurnStatus.QUEUED,
        attempts=0,
        exit_code=None,
        duration_ms=None,
        cost_usd=None,
        error=None,
        created_at=clock.now,
        updated_at=clock.now,
    )
    assert await accept(store, "om_1") is None
    assert await accept(store, "om_1", prompt="a different prompt") is None
    assert (await store.get_turn(turn_id)).prompt == "多行\nprompt ✓"
    assert (await store.turn_counts())["queued"] == 1


async def test_processed_ids_are_one_namespace_for_turns_and_other_messages(
    store: SessionStore,
):
    assert await store.mark_processed("om_cmd") is True
    assert await store.mark_processed("om_cmd") is False
    assert await accept(store, "om_cmd") is None  # a command id never becomes a turn later
    assert await store.pending_turns() == []

    assert await accept(store, "om_chat") is not None
    assert await store.mark_processed("om_chat") is False


async def test_turn_lifecycle(store: SessionStore, clock: FakeClock):
    accepted_at = clock.now
    turn_id = await accept(store, "om_1")

    clock.advance(1)
    assert await store.update_turn(turn_id, status="running", attempts=1)
    turn = await store.get_turn(turn_id)
    assert (turn.status, turn.attempts, turn.updated_at) == ("running", 1, clock.now)

    clock.advance(1)
    assert await store.update_turn(turn_id, attempts=2, error="overloaded, retrying")
    turn = await store.get_turn(turn_id)
    assert (turn.status, turn.attempts, turn.error) == ("running", 2, "overloaded, retrying")

    clock.advance(30)
    assert await store.update_turn(
        turn_id, status=TurnStatus.DONE, exit_code=0, duration_ms=31_250, cost_usd=0.042
    )
    turn = await store.get_turn(turn_id)
    assert turn.status is TurnStatus.DONE
    assert (turn.exit_code, turn.duration_ms, turn.cost_usd) == (0, 31_250, 0.042)
    assert turn.error == "overloaded, retrying"  # None means "leave unchanged"
    assert (turn.created_at, turn.updated_at) == (accepted_at, clock.now)
    assert await store.pending_turns() == []


@pytest.mark.parametrize("status", ["failed", "cancelled", "interrupted"])
async def test_every_terminal_status_is_accepted(store: SessionStore, status: str):
    turn_id = await accept(store, "om_1")
    assert await store.update_turn(turn_id, status=status, exit_code=1, error="x")
    assert (await store.get_turn(turn_id)).status == status


async def test_update_turn_rejects_an_unknown_status_and_reports_a_missing_turn(
    store: SessionStore,
):
    turn_id = await accept(store, "om_1")
    with pytest.raises(ValueError, match="unknown turn status"):
        await store.update_turn(turn_id, status="finished")
    assert (await store.get_turn(turn_id)).status == "queued"
    assert await store.update_turn(9999, status="done") is False
    assert await store.get_turn(9999) is None


async def test_pending_turns_are_queued_or_running_oldest_first(
    store: SessionStore, clock: FakeClock
):
    ids = {}
    for name in ("a", "b", "c", "d", "e"):
        clock.advance(1)
        ids[name] = await accept(store, f"om_{name}", conversation_key=f"p2p:{name}")
    await store.update_turn(ids["a"], status="running")
    await store.update_turn(ids["b"], status="done")
    await store.update_turn(ids["d"], status="cancelled")
    clock.advance(1)
    await store.update_turn(ids["e"], status="running")  # a later update must not reorder
    pending = await store.pending_turns()
    assert [(t.message_id, t.status) for t in pending] == [
        ("om_a", "running"),
        ("om_c", "queued"),
        ("om_e", "running"),
    ]
    assert pending[1].prompt == "prompt of om_c"  # enough to re-run the turn


async def test_turn_counts_lists_every_status(store: SessionStore):
    assert await store.turn_counts() == {
        "queued": 0,
        "running": 0,
        "done": 0,
        "failed": 0,
        "cancelled": 0,
        "interrupted": 0,
    }
    for n in range(5):
        await accept(store, f"om_{n}")
    await store.update_turn(1, status="done")
    await store.update_turn(2, status="done")
    await store.update_turn(3, status="interrupted")
    counts = await store.turn_counts()
    assert counts["queued"] == counts["done"] == 2
    assert (counts["interrupted"], counts["failed"]) == (1, 0)
    assert sum(counts.values()) == 5


async def test_prune_processed_boundary_and_count(store: SessionStore, clock: FakeClock):
    start = clock.now
    await store.mark_processed("om_old")
    clock.now = start + 1
    await store.mark_processed("om_edge")
    clock.now = start + 2
    await store.mark_processed("om_new")

    # seen_at == cutoff is kept; only strictly older rows go.
    assert await store.prune_processed(7, now=start + 1 + 7 * DAY) == 1
    assert await store.mark_processed("om_edge") is False
    clock.now = start + 5 * DAY
    assert await store.mark_processed("om_old") is True  # forgotten, so it is "new" again

    clock.now = start + 3 + 7 * DAY
    assert await store.prune_processed() == 2  # default: 7 days before the store clock
    assert await store.prune_processed() == 0
    assert await store.mark_processed("om_old") is False  # re-marked at start + 5 days: kept


async def test_a_pruned_turn_message_is_still_not_accepted_twice(
    store: SessionStore, clock: FakeClock
):
    # The journal outlives the processed id: a very late redelivery must not re-run the turn.
    turn_id = await accept(store, "om_1")
    await store.update_turn(turn_id, status="done")
    assert await store.prune_processed(7, now=clock.now + 8 * DAY) == 1
    assert await accept(store, "om_1") is None
    assert (await store.turn_counts())["done"] == 1
    assert sum((await store.turn_counts()).values()) == 1


async def test_ping_integrity_and_use_after_close(store: SessionStore):
    assert await store.ping() is True
    assert await store.integrity_check() == []
    await store.close()
    await store.close()  # idempotent
    assert await store.ping() is False
    with pytest.raises(StoreClosedError):
        await store.mark_processed("om_1")
    with pytest.raises(StoreClosedError):
        await store.get_conversation("k")


async def test_a_cancelled_accept_leaves_no_half_transaction(store: SessionStore):
    # Cancel at every possible point of the transaction: the outcome is all-or-nothing and
    # the connection is never left inside a transaction.
    for yields in range(8):
        message_id = f"om_{yields}"
        task = asyncio.create_task(accept(store, message_id))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        turns = [t for t in await store.pending_turns() if t.message_id == message_id]
        recorded = not await store.mark_processed(message_id)
        assert recorded == bool(turns), f"processed={recorded} but turns={turns}"
    assert await store.ping()
    assert await accept(store, "om_after") is not None
