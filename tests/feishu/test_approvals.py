"""ApprovalBroker: allow once, always allow (stored, survives a restart), deny, strangers and
approvers, the timeout, cancellation and Stop, bypass mode, allowed tools, Claude's questions.

The blocks land in a recording sink standing in for the turn's card; the grants go to a real
SQLite store in tmp_path; button values are minted and verified by the real signer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from database.store import SessionStore
from feishu_bot.approvals import ApprovalBroker, summarize
from feishu_bot.events import PermissionDecision, PermissionRequest
from feishu_bot.feishu.buttons import ButtonSigner
from feishu_bot.feishu.render import Block

pytestmark = pytest.mark.timeout(30)

KEY = "p2p:oc_chat"
OWNER = "ou_owner"
SIGNER = ButtonSigner("secret")
BASH = PermissionRequest("req-1", "Bash", {"command": "touch x", "description": "Create x"})


class Sink:
    """Records what the broker shows; `shown()` waits for the next block."""

    def __init__(self) -> None:
        self.blocks: dict[str, Block] = {}
        self.resolved: dict[str, str] = {}
        self._queue: asyncio.Queue[Block] = asyncio.Queue()
        self._changed = asyncio.Event()

    async def show_block(self, block: Block) -> None:
        self.blocks[block.block_id] = block
        self._queue.put_nowait(block)

    async def resolve_block(self, block_id: str, text: str) -> None:
        self.resolved[block_id] = text
        self._changed.set()

    async def shown(self) -> Block:
        return await asyncio.wait_for(self._queue.get(), 5)

    async def resolution(self, block_id: str) -> str:
        while block_id not in self.resolved:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 5)
        return self.resolved[block_id]


def press(broker: ApprovalBroker, block: Block, label: str, who: str = OWNER) -> tuple[str, str]:
    button = next(b for b in block.buttons if b.text == label)
    value = SIGNER.verify(button.value)
    assert value is not None
    return broker.answer(value, who)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    async with await SessionStore.open(tmp_path / "bot.db") as s:
        yield s


def make_broker(store: Any, **kw: Any) -> ApprovalBroker:
    kw.setdefault("timeout", 10)
    return ApprovalBroker(store=store, signer=SIGNER, **kw)


async def ask(
    broker: ApprovalBroker, sink: Sink, request: PermissionRequest = BASH, *, key: str = KEY
) -> asyncio.Task[PermissionDecision]:
    fn = broker.for_turn(key, 7, OWNER, sink)
    return asyncio.create_task(fn(request))


async def test_allow_once(store):
    broker, sink = make_broker(store), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    assert "Bash" in block.text and "touch x" in block.text and OWNER in block.text
    assert [b.text for b in block.buttons] == ["Allow once", "Always allow", "Deny"]
    assert press(broker, block, "Allow once") == ("success", "Allowed Bash once.")
    decision = await task
    assert decision == PermissionDecision(allow=True, updated_input=BASH.input)
    assert f"allowed once by <at id={OWNER}></at>" in await sink.resolution(block.block_id)
    assert await store.list_grants(KEY) == []
    # The same button again: already answered, nothing happens.
    assert press(broker, block, "Deny")[0] == "info"


async def test_always_allow_is_stored_and_survives_a_restart(store, tmp_path):
    broker, sink = make_broker(store), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    press(broker, block, "Always allow")
    assert (await task).allow
    assert "always allowed" in await sink.resolution(block.block_id)
    [(tool, who, _)] = await store.list_grants(KEY)
    assert (tool, who) == ("Bash", OWNER)

    await store.close()
    async with await SessionStore.open(tmp_path / "bot.db") as reopened:
        broker2, sink2 = make_broker(reopened), Sink()
        decision = await (await ask(broker2, sink2))
        assert decision.allow and sink2.blocks == {}
        # Another conversation is still asked.
        other = await ask(broker2, sink2, key="p2p:oc_other")
        block = await sink2.shown()
        press(broker2, block, "Deny")
        assert not (await other).allow
        assert await reopened.clear_grants(KEY) == 1
        asked_again = await ask(broker2, sink2)
        await sink2.shown()
        broker2.stop_conversation(KEY)
        await asked_again


async def test_deny(store):
    broker, sink = make_broker(store), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    press(broker, block, "Deny")
    decision = await task
    assert not decision.allow and "denied" in decision.message and not decision.interrupt
    assert f"denied by <at id={OWNER}></at>" in await sink.resolution(block.block_id)


async def test_stranger_is_refused_and_an_approver_may_answer(store):
    broker, sink = make_broker(store, approvers=["ou_boss"]), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    kind, text = press(broker, block, "Allow once", who="ou_stranger")
    assert kind == "warning" and "Only the person who sent the message" in text
    assert "approver" in text
    assert not task.done()
    press(broker, block, "Deny", who="ou_boss")
    assert not (await task).allow
    assert "ou_boss" in await sink.resolution(block.block_id)


async def test_a_value_of_another_turn_does_nothing(store):
    broker, sink = make_broker(store), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    value = SIGNER.verify(block.buttons[0].value)
    assert value is not None
    forged = SIGNER.verify(
        SIGNER.value("allow", conversation_key=KEY, turn_id=8, request_id=value.request_id)
    )
    assert forged is not None
    assert broker.answer(forged, OWNER)[0] == "error"
    assert not task.done()
    broker.stop_conversation(KEY)
    await task


async def test_timeout_denies_and_says_so(store):
    broker, sink = make_broker(store, timeout=0.05), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    decision = await task
    assert not decision.allow and "0.05 s" in decision.message
    assert "no answer within 0.05 s, denied" in await sink.resolution(block.block_id)
    assert press(broker, block, "Allow once")[0] == "info"


async def test_cancelled_wait_records_stopped(store):
    broker, sink = make_broker(store), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    assert broker.waiting_since(KEY) is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "stopped" in sink.resolved[block.block_id]
    assert broker.waiting_since(KEY) is None


async def test_stop_conversation_denies_and_interrupts(store):
    broker, sink = make_broker(store), Sink()
    task = await ask(broker, sink)
    block = await sink.shown()
    assert broker.stop_conversation("p2p:oc_other") == 0
    assert broker.stop_conversation(KEY) == 1
    decision = await task
    assert not decision.allow and decision.interrupt
    assert "stopped" in await sink.resolution(block.block_id)


async def test_bypass_and_allowed_tools_are_not_asked(store):
    sink = Sink()
    bypass = make_broker(store, permission_mode="bypassPermissions")
    assert (await (await ask(bypass, sink))).allow
    listed = make_broker(store, allowed_tools=["Bash", "Read(./src/**)"])
    assert (await (await ask(listed, sink))).allow
    assert sink.blocks == {}


QUESTION = {
    "questions": [
        {
            "question": "Which colour?",
            "header": "Colour",
            "multiSelect": False,
            "options": [{"label": "Red", "description": "warm"}, {"label": "Blue"}],
        },
        {
            "question": "Which sizes?",
            "header": "Sizes",
            "multiSelect": True,
            "options": [{"label": "S"}, {"label": "M"}, {"label": "L"}],
        },
    ]
}


async def test_questions_are_asked_even_in_bypass_mode_and_answered(store):
    broker, sink = make_broker(store, permission_mode="bypassPermissions"), Sink()
    request = PermissionRequest("req-q", "AskUserQuestion", QUESTION)
    task = await ask(broker, sink, request)
    colour, sizes = await sink.shown(), await sink.shown()
    assert "Which colour?" in colour.text and "warm" in colour.text
    assert [b.text for b in colour.buttons] == ["Red", "Blue"]
    assert [b.text for b in sizes.buttons] == ["S", "M", "L", "Done"]

    assert press(broker, colour, "Blue", who="ou_stranger")[0] == "warning"
    assert press(broker, colour, "Blue") == ("success", "Answer sent: Blue")
    assert "→ **Blue**" in await sink.resolution(colour.block_id)
    assert not task.done()
    assert press(broker, sizes, "Done")[0] == "warning"  # nothing picked yet
    press(broker, sizes, "L")
    press(broker, sizes, "S")
    press(broker, sizes, "M")
    press(broker, sizes, "M")  # a second press unpicks
    assert press(broker, sizes, "Done") == ("success", "Answer sent: S, L")
    decision = await task
    assert decision.allow
    assert decision.updated_input == {
        **QUESTION,
        "answers": {"Which colour?": "Blue", "Which sizes?": "S, L"},
    }
    assert "→ **S, L**" in await sink.resolution(sizes.block_id)


async def test_question_timeout_and_stop(store):
    broker, sink = make_broker(store, timeout=0.05), Sink()
    request = PermissionRequest(
        "req-q", "AskUserQuestion", {"questions": QUESTION["questions"][:1]}
    )
    task = await ask(broker, sink, request)
    block = await sink.shown()
    decision = await task
    assert not decision.allow
    assert "no answer" in await sink.resolution(block.block_id)

    broker = make_broker(store)
    task = await ask(broker, sink, request)
    block = await sink.shown()
    broker.stop_conversation(KEY)
    decision = await task
    assert not decision.allow and decision.interrupt


def test_summaries():
    assert "```bash\nls -la\n```" in summarize("Bash", {"command": "ls -la"})
    edit = summarize(
        "Edit",
        {"file_path": "/w/a.py", "old_string": "x", "new_string": "\n".join(map(str, range(20)))},
    )
    assert edit.startswith("`/w/a.py`") and "\n7\n" in edit and "\n8\n" not in edit
    assert summarize("Write", {"file_path": "/w/b", "content": "hi"}).startswith("`/w/b`")
    assert summarize("WebFetch", {"url": "https://x"}) == "`https://x`"
    fenced = summarize("Bash", {"command": "echo ```"})
    assert fenced.startswith("````bash")
    long = summarize("Bash", {"command": "x" * 5000})
    assert len(long) < 700


async def test_a_stream_without_blocks_gets_rules_only(store):
    broker = make_broker(store, allowed_tools=["Read"])
    ask_fn = broker.for_turn(KEY, 7, OWNER, object())
    assert not (await ask_fn(BASH)).allow
    assert (await ask_fn(PermissionRequest("r", "Read", {"file_path": "/x"}))).allow
    question = PermissionRequest("q", "AskUserQuestion", QUESTION)
    assert not (await ask_fn(question)).allow
