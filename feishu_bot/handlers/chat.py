"""The chat runner: what one admitted message does as a Claude turn.

`ChatRunner` is handed to `Conversations`, which owns the turn (its journal row, its reply,
its end): the runner prepares the input, runs the launcher with the conversation's session
and grants, streams the text into the turn's reply, and hands the result back through
`turn.succeed`. Exceptions propagate to conversations, which ends the turn with them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from feishu_bot.errors import JournalError
from feishu_bot.events import ClaudeEvent, TurnRequest, TurnResult
from feishu_bot.keys import default_workdir
from feishu_bot.quoted import with_quote
from feishu_bot.turn_input import prepare_turn_input, turn_mcp

if TYPE_CHECKING:
    from database.store import SessionStore
    from feishu_bot.approvals import ApprovalBroker
    from feishu_bot.claude.launcher import Launcher
    from feishu_bot.claude.scheduler import Ticket
    from feishu_bot.config import Settings
    from feishu_bot.feishu.replier import FeishuReplier
    from feishu_bot.turn import Turn

__all__ = ["ChatRunner"]


@dataclass(frozen=True)
class ChatRunner:
    """Runs turns; built once by the composition root with the services it uses."""

    settings: Settings
    store: SessionStore
    replier: FeishuReplier
    launcher: Launcher
    approvals: ApprovalBroker | None
    workdir_root: Path

    async def __call__(self, turn: Turn, ticket: Ticket | None) -> TurnResult:
        msg, stream = turn.msg, turn.stream
        conv = await self.store.ensure_conversation(
            msg.conversation_key,
            chat_id=msg.chat_id,
            chat_type=msg.chat_type,
            thread_root=msg.thread_root,
            workdir=str(
                default_workdir(
                    self.workdir_root,
                    msg.conversation_key,
                    shared=self.settings.CLAUDE_SHARED_WORKDIR,
                )
            ),
        )
        workdir = Path(conv.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        prepared = await prepare_turn_input(self, msg, workdir=workdir)
        # The message it replies to, if any, goes before the user's words.
        prompt = await with_quote(self, msg, prepared.prompt)
        grants = await self.store.list_grants(msg.conversation_key)
        request = TurnRequest(
            conversation_key=msg.conversation_key,
            prompt=prompt,
            workdir=workdir,
            session_id=conv.session_id,
            model=conv.model or self.settings.CLAUDE_MODEL or None,
            content=tuple(prepared.content),
            user_id=msg.sender_open_id,
            allowed_rules=tuple(g.rule for g in grants if g.kind == "tool"),
            allowed_hosts=tuple(g.rule for g in grants if g.kind == "host"),
            permission_mode=await self.store.permission_mode(msg.conversation_key),
        )
        journal_error: list[JournalError] = []
        run: asyncio.Future[TurnResult] | None = None

        async def on_event(event: ClaudeEvent) -> None:
            try:
                await turn.running()
            except JournalError as exc:
                # Unjournaled, a crash now would run this turn again after the restart (its
                # tools twice): stop it instead.
                journal_error.append(exc)
                if run is not None:
                    run.cancel()
                return
            if event.kind == "text":
                # lazily: reading the whole text on every delta would make streaming quadratic
                await stream.update(lambda event=event: event.text)
            elif event.kind == "result" and event.cost_usd:
                # Journaled while the turn still holds its slot: the next turn the launcher
                # lets in already counts it against the spending limits.
                await turn.record_cost(event.cost_usd)

        ask = None
        if self.approvals is not None:
            ask = self.approvals.for_turn(
                msg.conversation_key, turn.turn_id, msg.sender_open_id, stream
            )
        await stream.started()
        try:
            run = asyncio.ensure_future(
                self.launcher.run(
                    request,
                    on_event=on_event,
                    on_queued=stream.queued,
                    ask_permission=ask,
                    mcp=turn_mcp(self, msg, workdir=workdir),
                    ticket=ticket,
                )
            )
            try:
                result = await run
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if journal_error and not (task is not None and task.cancelling()):
                    raise journal_error[0] from None
                raise
        finally:
            ok = run is not None and run.done() and not (run.cancelled() or run.exception())
            prepared.cleanup(
                run.result().session_id
                if ok and run is not None
                else self.launcher.live_session_id(msg.conversation_key)
            )
        await turn.succeed(result, resumed_from=conv.session_id)
        return result
