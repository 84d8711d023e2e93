"""Schema-v2 store methods: sender and attachments, a turn's UI ids, sessions, statistics,
and retention (issue 12 #12: stores that only grow)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from database import PruneResult, SessionStore, TurnStats

if TYPE_CHECKING:
    from conftest import FakeClock

DAY = 86400.0
KEY = "p2p:oc_1"


@dataclass(frozen=True)
class Att:
    kind: str
    key: str
    name: str
    size: int


async def accept(store: SessionStore, message_id: str, key: str = KEY, **kw) -> int | None:
    fields = {"conversation_key": key, "chat_id": "oc_1", "prompt": f"p {message_id}"}
    return await store.accept_message(message_id, reply_in_thread=False, **(fields | kw))


async def test_accept_message_keeps_sender_and_attachments(store: SessionStore):
    turn_id = await accept(
        store,
        "om_1",
        sender_open_id="ou_alice",
        attachments=(
            Att("image", "img_v3_1", "a.png", 1234),
            {"kind": "file", "key": "file_v3_2", "name": "报告.pdf", "size": 99, "extra": 1},
        ),
    )
    turn = await store.get_turn(turn_id)
    assert turn.sender_open_id == "ou_alice"
    assert turn.attachments == (
        {"kind": "image", "key": "img_v3_1", "name": "a.png", "size": 1234},
        {"kind": "file", "key": "file_v3_2", "name": "报告.pdf", "size": 99},
    )
    plain = await store.get_turn(await accept(store, "om_2"))
    assert (plain.sender_open_id, plain.attachments) == ("", ())
    [first, second] = await store.pending_turns()
    assert first.sender_open_id == "ou_alice" and second.attachments == ()


async def test_set_turn_ui_records_and_clears_ids(store: SessionStore, clock: FakeClock):
    turn_id = await accept(store, "om_1")
    clock.advance(5)
    assert await store.set_turn_ui(turn_id, reaction_id="r_1") is True
    turn = await store.get_turn(turn_id)
    assert (turn.reaction_id, turn.card_message_id, turn.updated_at) == ("r_1", None, clock.now)
    assert await store.set_turn_ui(turn_id, card_message_id="om_card") is True
    turn = await store.get_turn(turn_id)
    assert (turn.reaction_id, turn.card_message_id) == ("r_1", "om_card")
    assert await store.set_turn_ui(turn_id, reaction_id="") is True  # "" clears
    turn = await store.get_turn(turn_id)
    assert (turn.reaction_id, turn.card_message_id) == (None, "om_card")
    assert await store.set_turn_ui(turn_id) is True  # nothing to change
    assert await store.set_turn_ui(9999, reaction_id="r") is False
    [pending] = await store.pending_turns()
    assert pending.card_message_id == "om_card"


async def test_touch_session_inserts_then_counts(store: SessionStore, clock: FakeClock):
    created = clock.now
    await store.touch_session(KEY, "sid-a", "first question " + "x" * 500)
    clock.advance(60)
    await store.touch_session(KEY, "sid-a", "second question")
    [info] = await store.list_sessions(KEY)
    assert info.session_id == "sid-a" and info.conversation_key == KEY
    assert (info.created_at, info.last_used_at, info.turns) == (created, clock.now, 2)
    assert info.first_prompt.startswith("first question") and len(info.first_prompt) == 200
    assert await store.get_session_info("sid-a") == info
    assert await store.get_session_info("nope") is None


async def test_touch_session_carries_a_forked_session_over(store: SessionStore, clock: FakeClock):
    created = clock.now
    await store.touch_session(KEY, "sid-1", "how do I start?")
    clock.advance(10)
    await store.touch_session(KEY, "sid-2", "ignored: not the first", replaces="sid-1")
    clock.advance(10)
    await store.touch_session(KEY, "sid-3", "", replaces="sid-2")
    [info] = await store.list_sessions(KEY)
    assert (info.session_id, info.turns, info.created_at) == ("sid-3", 3, created)
    assert info.first_prompt == "how do I start?"
    # An unknown parent: a new row, as without `replaces`.
    await store.touch_session(KEY, "sid-9", "fresh", replaces="sid-unknown")
    assert [s.session_id for s in await store.list_sessions(KEY)] == ["sid-9", "sid-3"]


async def test_list_sessions_newest_first_per_conversation(store: SessionStore, clock: FakeClock):
    for n in range(5):
        clock.advance(1)
        await store.touch_session(KEY, f"sid-{n}", f"q{n}")
        await store.touch_session("group:oc_2", f"other-{n}", f"q{n}")
    assert [s.session_id for s in await store.list_sessions(KEY, limit=3)] == [
        "sid-4",
        "sid-3",
        "sid-2",
    ]
    assert len(await store.list_sessions(KEY)) == 5
    assert await store.list_sessions("p2p:none") == []


async def test_turn_stats(store: SessionStore, clock: FakeClock):
    assert await store.turn_stats(KEY, None) == TurnStats(0, 0, None, 0.0)
    t0 = clock.now
    rows = [("done", 100, 0.01), ("done", 300, 0.02), ("failed", 200, None), ("queued", None, None)]
    for n, (status, ms, cost) in enumerate(rows):
        turn_id = await accept(store, f"om_{n}")
        await store.update_turn(turn_id, status=status, duration_ms=ms, cost_usd=cost)
        clock.advance(10)
    other = await accept(store, "om_other", key="group:oc_2")
    await store.update_turn(other, status="done", duration_ms=5000, cost_usd=1.0)
    await store.keep_message(
        "om_kept",
        conversation_key=KEY,
        chat_id="oc_1",
        attachments_json="[]",
        reply_in_thread=False,
    )

    stats = await store.turn_stats(KEY, None)
    assert (stats.count, stats.ok, stats.median_duration_ms) == (4, 2, 200.0)
    assert abs(stats.total_cost_usd - 0.03) < 1e-9
    everyone = await store.turn_stats(None, None)
    assert (everyone.count, everyone.ok, everyone.median_duration_ms) == (5, 3, 250.0)
    recent = await store.turn_stats(KEY, since=t0 + 10)
    assert (recent.count, recent.ok, recent.median_duration_ms) == (3, 1, 250.0)


def raw_count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


async def test_stores_only_grow(store: SessionStore, clock: FakeClock):
    """Journal, processed ids and session rows are pruned by the documented retention."""
    old = {}
    for status in ("done", "failed", "cancelled", "interrupted", "queued", "running"):
        turn_id = await accept(store, f"om_old_{status}", prompt="x" * 100_000)
        await store.update_turn(turn_id, status=status)
        old[status] = turn_id
    await store.mark_processed("om_cmd_old")
    for n in range(25):
        clock.advance(1)
        await store.touch_session(KEY, f"sid-{n:02d}", f"q{n}")
    await store.ensure_conversation(
        KEY, chat_id="oc_1", chat_type="p2p", thread_root=None, workdir="/w"
    )
    await store.set_session(KEY, "sid-00")  # the oldest, but still in use
    for n in range(3):
        await store.touch_session("group:oc_2", f"g-{n}", "q")

    clock.advance(8 * DAY)
    recent = await accept(store, "om_recent")
    result = await store.prune(batch=2)
    # 8 days: only processed ids are past their retention (the old turns' ids and the command).
    assert result.turns == 0 and result.processed == 7
    # The newest 20 stay, and the one the conversation uses now, however old.
    assert set(result.sessions) == {"sid-01", "sid-02", "sid-03", "sid-04"}
    names = [s.session_id for s in await store.list_sessions(KEY, limit=50)]
    assert len(names) == 21 and "sid-00" in names and "sid-24" in names
    assert len(await store.list_sessions("group:oc_2")) == 3
    # A journal row still deduplicates its message after its processed id is gone.
    assert await accept(store, "om_old_done") is None

    clock.advance(23 * DAY)  # 31 days after the old turns
    result = await store.prune(batch=2)
    assert result.turns == 4 and result.sessions == ()
    assert {t.id for t in await store.pending_turns()} == {old["queued"], old["running"], recent}
    assert await store.get_turn(old["done"]) is None
    assert await store.get_turn(recent) is not None
    assert raw_count(store.path, "turns") == 3
    assert await store.prune() == PruneResult()


async def test_prune_now_argument(store: SessionStore, clock: FakeClock):
    turn_id = await accept(store, "om_1")
    await store.update_turn(turn_id, status="done")
    assert (await store.prune(now=clock.now + 29 * DAY)).turns == 0
    assert (await store.prune(now=clock.now + 31 * DAY)).turns == 1


async def test_p2p_chat_of_finds_the_newest_private_chat_of_a_user(store: SessionStore):
    assert await store.p2p_chat_of("ou_alice") is None
    await accept(store, "om_a", sender_open_id="ou_alice", chat_id="oc_old",
                 conversation_key="p2p:oc_old")
    await accept(store, "om_b", sender_open_id="ou_alice", chat_id="oc_p2p",
                 conversation_key="p2p:oc_p2p")
    # group turns, and other users' private chats, are not hers
    await accept(store, "om_c", sender_open_id="ou_alice", chat_id="oc_group",
                 conversation_key="group:oc_group")
    await accept(store, "om_d", sender_open_id="ou_bob", chat_id="oc_bob",
                 conversation_key="p2p:oc_bob")
    assert await store.p2p_chat_of("ou_alice") == "oc_p2p"
    assert await store.p2p_chat_of("ou_bob") == "oc_bob"
