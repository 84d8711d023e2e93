"""The launcher: the only owner of Claude CLI processes, warm or one per turn.

A turn runs in its conversation's warm ``CliSession`` when there is one (no start-up cost),
else in a new one started with ``--resume <stored session> --fork-session``. With ``warm`` the
process stays alive after the turn, idle, until its conversation's next turn, until it is the
least recently used idle process and a turn of another conversation needs the slot, or until
``idle_timeout``. Without ``warm`` (or while degraded after repeated crashes) it is closed after
every turn. The cap, the queue and eviction are the scheduler's; what to do after a failure is
the policy's; process I/O is the session's.

Invariants:
- Live CLI processes (busy, idle and being closed) never exceed ``max_concurrent``.
- One turn per conversation at a time, in arrival order.
- A cancelled ``run()`` (``/stop``, shutdown) interrupts the turn and re-raises CancelledError
  once the process is either idle again or dead and reaped.

What it does not do: decide what users are told, or store anything except through
``SessionBinding``; it never runs a shell.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loguru import logger

from feishu_bot.claude.launcher_config import (
    LauncherConfig,
    LauncherStats,
    RunningTurn,
    SessionBinding,
)
from feishu_bot.claude.memory import read_memory
from feishu_bot.claude.netguard import guard
from feishu_bot.claude.outcome import api_failure, cli_argv, turn_error, turn_result
from feishu_bot.claude.policy import Action, ResumePoint, backoff, decide
from feishu_bot.claude.process import TAG_VAR, child_env, new_tag
from feishu_bot.claude.protocol import Outcome, classify
from feishu_bot.claude.scheduler import Scheduler, Ticket
from feishu_bot.claude.session import CliSession, TurnAttempt, user_message
from feishu_bot.claude.transcripts import discard_transcript
from feishu_bot.errors import (
    ClaudeError,
    CliNotFound,
    PermanentCliError,
    QueueFull,
    TurnCancelled,
    TurnRefused,
    TurnTimeout,
)
from feishu_bot.events import AskPermission, ClaudeEvent, McpHandler, TurnRequest, TurnResult

__all__ = [
    "Launcher",
    "LauncherConfig",
    "LauncherStats",
    "OnEvent",
    "OnQueued",
    "RunningTurn",
    "SessionBinding",
]

OnEvent = Callable[[ClaudeEvent], Awaitable[None]]
OnQueued = Callable[[int], Awaitable[None]]
SleepFn = Callable[[float], Awaitable[None]]

_DEGRADE_AFTER = 3  # consecutive warm-process failures before one process per turn
_RECOVER_AFTER = 3  # clean one-shot turns before warm again


class Launcher:
    """Runs Claude turns under the cap; see the module docstring."""

    def __init__(
        self,
        config: LauncherConfig,
        sessions: SessionBinding,
        *,
        sleep: SleepFn | None = None,
        default_mcp: McpHandler | None = None,
        gate: Callable[[TurnRequest], Awaitable[None]] | None = None,
    ) -> None:
        """`gate(request)` is awaited when a turn leaves the queue, before anything is written
        to Claude; what it raises ends the turn there (a spending limit: `TurnRefused`)."""
        self._cfg = config
        # Answers MCP requests a process sends between turns (no turn's server to ask).
        self.default_mcp = default_mcp
        self._gate = gate
        self._sessions = sessions
        self._sleep: SleepFn = sleep or asyncio.sleep
        self._sched = Scheduler(
            config.max_concurrent,
            config.queue_max,
            per_conversation_max=config.conversation_queue_max,
            per_user_max=config.max_per_user,
            user_queue_max=config.user_queue_max,
        )
        self._live: dict[str, CliSession] = {}  # conversation key -> its process
        # Every process started and not reaped yet, whatever its role now: aclose ends them all.
        self._spawned: set[CliSession] = set()
        self._retire: set[str] = set()  # close after the running turn (/new during a turn)
        # conversation -> (its stored session id, where to resume instead) after a given-up turn
        self._cut: dict[str, tuple[str | None, ResumePoint]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closers: set[asyncio.Task[None]] = set()
        # tickets holding a slot -> start of their running attempt (None between attempts)
        self._attempt_started: dict[Ticket, float | None] = {}
        self._inside: set[asyncio.Task[Any]] = set()
        self._idle_event = asyncio.Event()
        self._idle_event.set()
        self._closed = False
        self._failures_in_row = 0
        self._clean_oneshots = 0
        self._degraded = False
        self._n = dict.fromkeys(
            ("ok", "failed", "retried", "stale", "timeouts", "cancelled", "rejected", "cold",
             "died_idle"), 0,
        )

    @property
    def config(self) -> LauncherConfig:
        return self._cfg

    # ------------------------------------------------------------------ public API
    def reserve(self, key: str, user: str = "", *, count_rejection: bool = True) -> Ticket:
        """Fix a turn's place now (synchronously); QueueFull when the queues are full.

        ``count_rejection=False`` leaves the refusal out of the stats, for a caller that first
        checks whether the message is a redelivery (then ``note_rejected`` if it is not)."""
        if self._closed:
            raise TurnCancelled("launcher closed")
        try:
            return self._sched.reserve(key, user)
        except QueueFull:
            if count_rejection:
                self._n["rejected"] += 1
            raise

    def note_rejected(self) -> None:
        self._n["rejected"] += 1

    def cancel_reservation(self, ticket: Ticket) -> None:
        self._sched.release(ticket)

    async def run(
        self,
        req: TurnRequest,
        *,
        on_event: OnEvent | None = None,
        on_queued: OnQueued | None = None,
        ask_permission: AskPermission | None = None,
        mcp: McpHandler | None = None,
        ticket: Ticket | None = None,
    ) -> TurnResult:
        """Run one turn and return its result.

        ``on_event`` gets every parsed event in order ("init" after a new session id was saved,
        "text" with the text so far, "tool", "api_retry", "result"); a retried turn starts over
        with a new "init". ``on_queued(position)`` is awaited while the turn waits.
        ``ask_permission`` answers the CLI's tool permission requests (deny when None); ``mcp``
        serves the in-process MCP servers for this turn.

        Raises QueueFull, CliNotFound, PermanentCliError, TransientCliError, TurnTimeout,
        TurnCancelled (launcher closed); CancelledError once the turn is stopped.
        """
        if ticket is None:
            ticket = self.reserve(req.conversation_key, req.user_id)
        task = asyncio.current_task()
        if task is not None:
            self._inside.add(task)
            self._idle_event.clear()
        try:
            await self._sched.wait(ticket, on_queued)
            with logger.contextualize(conversation=req.conversation_key):
                result = await self._run_turn(req, ticket, on_event, ask_permission, mcp)
        except asyncio.CancelledError:
            self._n["cancelled"] += 1
            raise
        except TurnTimeout:
            self._n["timeouts"] += 1
            self._n["failed"] += 1
            raise
        except TurnRefused:
            raise  # refused before Claude saw it: not a failed turn
        except Exception:
            self._n["failed"] += 1
            raise
        finally:
            if task is not None:
                self._inside.discard(task)
                if not self._inside:
                    self._idle_event.set()
        self._n["ok"] += 1
        return result

    def child_environment(self) -> dict[str, str]:
        """The environment a CLI child gets (where its transcripts live, for retention)."""
        return self._env()

    def queue_position(self, key: str) -> int | None:
        return self._sched.queue_position(key)

    def live_session_id(self, key: str) -> str | None:
        """The session id of the conversation's live process, if it has one."""
        session = self._live.get(key)
        return session.session_id if session is not None else None

    def is_warm(self, key: str) -> bool:
        session = self._live.get(key)
        return session is not None and session.alive

    async def close_session(self, key: str) -> bool:
        """Close the conversation's process (``/new``, ``/cd``, ``/model``, ``/resume``): now
        if idle, after its running turn otherwise. True if there was one."""
        session = self._live.get(key)
        if session is None:
            return False
        if self._sched.is_idle(key):
            await self._close_idle(key, "closed by a command")
        else:
            self._retire.add(key)
        return True

    def stats(self) -> LauncherStats:
        now = time.monotonic()
        s = self._sched.stats()
        running = tuple(
            RunningTurn(
                t.key, round(now - started, 3) if started is not None else 0.0, self._cfg.timeout
            )
            for t, started in self._attempt_started.items()
        )
        return LauncherStats(
            active=s.running,
            max_concurrent=s.max_live,
            queued=s.queued,
            oldest_wait_s=s.oldest_wait_s,
            ok=self._n["ok"],
            failed=self._n["failed"],
            retried=self._n["retried"],
            stale_cleared=self._n["stale"],
            timeouts=self._n["timeouts"],
            running=running,
            queue_max=s.queue_max,
            cancelled=self._n["cancelled"],
            rejected=self._n["rejected"],
            warm_idle=s.idle,
            closing=s.closing,
            evictions=s.evictions,
            cold_starts=self._n["cold"],
            died_idle=self._n["died_idle"],
            degraded=self._degraded,
            warm=self._cfg.warm,
        )

    async def aclose(self, timeout: float | None = None) -> None:
        """Refuse new turns, stop every running one, close every idle process; all reaped."""
        self._closed = True
        for task in list(self._inside):
            task.cancel()
        limit = self._cfg.kill_grace + self._cfg.interrupt_grace + 10.0 if timeout is None else (
            timeout
        )
        try:
            await asyncio.wait_for(self._idle_event.wait(), limit)
        except TimeoutError:
            logger.error("launcher closed with {} turns still stopping", len(self._inside))
        for key in self._sched.idle_keys():
            await self._close_idle(key, "shutdown")
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        await self._sched.aclose()
        for session in list(self._live.values()):
            await session.close()
        for session in list(self._spawned):  # one no bookkeeping path still names
            logger.warning("closing claude pid={} of {} at shutdown", session.pid, session.key)
            await session.close()

    # ------------------------------------------------------------------ one turn
    async def _run_turn(
        self,
        req: TurnRequest,
        ticket: Ticket,
        on_event: OnEvent | None,
        ask: AskPermission | None,
        mcp: McpHandler | None,
    ) -> TurnResult:
        key = req.conversation_key
        self._cancel_timer(key)
        if ask is not None and self._cfg.sandboxed:
            ask = guard(ask)  # private hosts are refused before anyone is asked
        session = self._live.get(key) if ticket.reused else None
        spawned_from = ResumePoint(req.session_id)
        cut = self._cut.pop(key, None)
        if cut is not None and session is None and req.session_id and cut[0] == req.session_id:
            # the stored session ends with a turn we gave up on: resume from before it
            spawned_from = cut[1]
        started = time.monotonic()
        attempts = 0
        stale_reset = False
        saved = [req.session_id]

        async def events(event: ClaudeEvent) -> None:
            if event.kind == "init" and event.session_id and event.session_id != saved[0]:
                saved[0] = event.session_id
                try:
                    await self._sessions.set_session(key, event.session_id)
                except Exception:
                    logger.exception("could not save session {}", event.session_id)
            if on_event is not None:
                await on_event(event)

        try:
            if self._gate is not None:
                # Inside the try: a refusal hands the slot (and a warm process) back as usual.
                await self._gate(req)
            if session is not None and not await session.set_permission_mode(
                req.permission_mode or self._cfg.permission_mode
            ):
                # A warm process left in another mode (an approved plan) that cannot be
                # switched back: start one in the conversation's mode instead.
                await session.close()
                if self._live.get(key) is session:
                    del self._live[key]
                session = None
            while True:
                attempts += 1
                if session is None or not session.alive:
                    session = await self._spawn(req, spawned_from, attempts)
                    fresh = True
                else:
                    fresh = session.turns_done == 0
                    # With no completed turn its own session holds only stopped or failed
                    # turns and no cut point: a retry after a crash goes back to where the
                    # process began, or it would show the model this message twice.
                    spawned_from = (
                        session.origin
                        if fresh and isinstance(session.origin, ResumePoint)
                        else ResumePoint(session.session_id)
                    )
                before = (session.session_id, session.last_assistant_uuid)
                self._attempt_started[ticket] = time.monotonic()
                try:
                    att = await session.run_turn(
                        user_message(req.prompt, req.content),
                        timeout=self._cfg.timeout,
                        on_event=events,
                        ask_permission=ask,
                        mcp=mcp,
                    )
                finally:
                    self._attempt_started[ticket] = None  # still holds its slot (backoff)
                if att.retire:
                    self._retire.add(key)
                self._note_health(att)
                if att.timed_out:
                    raise TurnTimeout(
                        f"no result within {self._cfg.timeout:g}s",
                        stderr_tail=att.stderr_tail,
                        attempts=attempts,
                        partial_text=att.parser.text,
                        exit_code=att.exit_code,
                    )
                verdict = classify(
                    exit_code=att.exit_code if att.died else None,
                    result=att.parser.result,
                    stderr=att.stderr_tail,
                )
                if verdict.outcome is Outcome.OK:
                    session_id = att.parser.session_id
                    base = spawned_from.session_id
                    if fresh and base and self._cfg.fork_session and session_id not in (
                        None, base,
                    ):
                        # the fork is a full copy: the parent transcript is dead weight now
                        await discard_transcript(base, self._env())
                    return turn_result(att, attempts, stale_reset, started, warm=not fresh)
                logger.warning("claude attempt {} failed: {}", attempts, verdict.reason)
                step = decide(
                    verdict,
                    # the stale attempt does not count against the retries
                    attempts=attempts - stale_reset,
                    max_retries=self._cfg.max_retries,
                    process_alive=session.alive,
                    side_effects=tuple(att.side_effects),
                    stale_reset_done=stale_reset,
                    spawned_from=spawned_from,
                    first_turn_of_process=fresh,
                    session_before=before[0],
                    uuid_before=before[1],
                    forked=self._cfg.fork_session,
                )
                if step.action is Action.START_FRESH:
                    logger.warning("session {} is stale; starting a fresh session", req.session_id)
                    await self._sessions.clear_session(key)
                    self._n["stale"] += 1
                    stale_reset = True
                    # The refusing process exits by itself but may not be reaped yet (still
                    # "alive"): never hand the fresh attempt to it.
                    await session.close()
                    session = None
                    spawned_from = ResumePoint()
                    saved[0] = None
                    continue
                if step.action is Action.GIVE_UP:
                    cut = not att.side_effects and (
                        verdict.outcome is Outcome.TRANSIENT or api_failure(att.parser.result)
                    )
                    if cut:
                        # The CLI keeps a failed turn in its history (merged into the next
                        # message), a permanent API error's too: retire this process, and let
                        # the next turn resume from before it. A turn whose tools ran keeps
                        # its history (Claude must know what ran).
                        point = spawned_from if fresh else ResumePoint(before[0], before[1])
                        if point.session_id is None or point.at_uuid or fresh:
                            self._cut[key] = (saved[0], point)
                        self._retire.add(key)
                    error = turn_error(verdict.reason, att, attempts, step.reason)
                    if isinstance(error, ClaudeError):
                        error.history_cut = cut and bool(saved[0])
                    raise error
                self._n["retried"] += 1
                delay = backoff(self._cfg.retry_delay, attempts - stale_reset)
                logger.warning("retrying in {:.2f}s ({})", delay, step.action.value)
                if step.action is Action.RETRY_NEW:
                    # Closed before the backoff: a turn stopped meanwhile must not leave this
                    # process warm, its history holds the failed turn.
                    if session.alive:
                        await session.close()
                    if self._live.get(key) is session:
                        del self._live[key]
                    session = None
                    spawned_from = step.resume or ResumePoint()
                await self._sleep(delay)
        finally:
            self._attempt_started.pop(ticket, None)
            await self._after_turn(key, ticket, session)

    # ------------------------------------------------------------------ processes
    def _env(self) -> dict[str, str]:
        return child_env(os.environ, self._cfg.extra_env, self._cfg.env_drop)

    async def _spawn(self, req: TurnRequest, resume: ResumePoint, attempt: int) -> CliSession:
        workdir = Path(req.workdir)
        if not workdir.is_dir():
            raise PermanentCliError(f"working directory {workdir} does not exist")
        # The tag follows every process this CLI starts, so closing it can end them all.
        tag = new_tag()
        env = {**self._env(), TAG_VAR: tag}
        memory, scratch = "", None
        sandbox = self._cfg.sandbox
        if sandbox is not None and sandbox.enabled:
            try:
                scratch = await asyncio.to_thread(sandbox.make_scratch, tag)
            except OSError as exc:
                logger.error("cannot create the CLI's temporary directory: {}", exc)
                raise PermanentCliError(
                    f"sandbox: cannot create a temporary directory: {exc}"
                ) from exc
            env.update(sandbox.child_env(workdir, scratch, env))
            memory = await asyncio.to_thread(read_memory, workdir, sandbox.workspace)
        session = CliSession(
            req.conversation_key,
            cli_argv(
                self._cfg, resume, req.model, req.allowed_rules, req.permission_mode,
                memory=memory, scratch=scratch, hosts=req.allowed_hosts,
            ),
            cwd=workdir,
            env=env,
            kill_grace=self._cfg.kill_grace,
            interrupt_grace=self._cfg.interrupt_grace,
            max_line_bytes=self._cfg.max_line_bytes,
            stderr_tail_bytes=self._cfg.stderr_tail_bytes,
            on_exit=self._on_exit,
            tag=tag,
            scratch=scratch,
        )
        session.default_mcp = self.default_mcp
        session.origin = resume
        session.permission_mode = req.permission_mode or self._cfg.permission_mode
        try:
            await session.start()
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            if scratch is not None:
                await asyncio.to_thread(shutil.rmtree, scratch, True)
            raise CliNotFound(f"{self._cfg.bin}: {exc.strerror or exc}", attempts=attempt) from exc
        self._n["cold"] += 1
        logger.info(
            "claude session pid={} attempt={} resume={}{}",
            session.pid, attempt, resume.session_id or "-",
            f" at {resume.at_uuid}" if resume.at_uuid else "",
        )
        self._live[req.conversation_key] = session
        self._spawned.add(session)
        return session

    def _on_exit(self, session: CliSession) -> None:
        self._spawned.discard(session)
        key = session.key
        if self._live.get(key) is not session:
            return
        if self._sched.is_idle(key):
            # Died while idle: free its slot now; the next turn resumes in a new process.
            logger.warning("idle claude session of {} exited by itself", key)
            self._n["died_idle"] += 1
            self._count_failure()
            del self._live[key]
            self._cancel_timer(key)
            self._sched.idle_died(key)

    def _note_health(self, att: TurnAttempt) -> None:
        if att.died and not att.stopped:
            self._count_failure()
        elif not att.died:
            self._failures_in_row = 0
            if self._degraded:
                self._clean_oneshots += 1
                if self._clean_oneshots >= _RECOVER_AFTER:
                    self._degraded = False
                    logger.info("claude processes work again: back to warm sessions")

    def _count_failure(self) -> None:
        self._failures_in_row += 1
        self._clean_oneshots = 0
        if self._cfg.warm and not self._degraded and self._failures_in_row >= _DEGRADE_AFTER:
            self._degraded = True
            logger.warning(
                "claude processes crashed {} times in a row: one process per turn until they "
                "work again", self._failures_in_row,
            )

    async def _after_turn(self, key: str, ticket: Ticket, session: CliSession | None) -> None:
        keep = (
            session is not None
            and session.alive
            and self._cfg.warm
            and not self._degraded
            and not self._closed
            and key not in self._retire
        )
        self._retire.discard(key)
        if keep:
            assert session is not None
            self._sched.release(
                ticket, idle_close=lambda: self._close_session(key, "evicted", session)
            )
            self._timers[key] = asyncio.get_running_loop().call_later(
                self._cfg.idle_timeout, self._idle_expired, key
            )
            return
        if session is not None:
            await session.close()
            if self._live.get(key) is session:
                del self._live[key]
        self._sched.release(ticket)

    # ------------------------------------------------------------------ idle processes
    def _cancel_timer(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _idle_expired(self, key: str) -> None:
        self._timers.pop(key, None)
        if not self._sched.is_idle(key):
            return
        task = asyncio.get_running_loop().create_task(
            self._close_idle(key, f"idle for {self._cfg.idle_timeout:g}s"), name=f"idle:{key}"
        )
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_idle(self, key: str, why: str) -> None:
        close = self._sched.take_idle(key)
        if close is None:
            return
        try:
            await self._close_session(key, why, self._live.get(key))
        finally:
            self._sched.closed()

    async def _close_session(self, key: str, why: str, session: CliSession | None) -> None:
        if session is None:
            return
        if self._live.get(key) is session:
            # a newer process of the same conversation may already be running: leave it alone
            del self._live[key]
            self._cancel_timer(key)
        logger.info("closing the idle claude session of {} ({})", key, why)
        await session.close()
