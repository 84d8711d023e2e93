"""The launcher: the only owner of Claude CLI processes.

One turn is one ``claude -p --output-format stream-json --verbose --include-partial-messages``
run in the conversation's working directory, the prompt written to stdin. The launcher enforces
a hard cap on live CLI processes, queues the rest in one FIFO, runs one turn at a time per
conversation, retries what is worth retrying, and kills whole process trees on timeout and on
cancellation.

Invariants:

- At no instant are more than ``max_concurrent`` CLI processes alive because of this launcher.
  A turn holds its slot from the moment it is granted until its last process has been reaped
  (``wait()`` returned), including the time its tree is being killed and the backoff sleeps
  between retries.
- One turn per conversation key at a time, in arrival order; different conversations run in
  parallel up to the cap.
- A cancelled ``run()`` (``/stop``, shutdown, ``aclose()``) re-raises ``CancelledError`` only
  after the process tree is dead and the slot or queue place is freed, whatever stage it was in.

What it does not do: it does not decide what users are told (exceptions carry data; dispatch
words them), it does not store anything except through ``SessionBinding``, and it never runs a
shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from loguru import logger
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from feishu_bot.claude.process import die_with_parent, kill_tree, reap_leftovers
from feishu_bot.claude.protocol import Outcome, StreamParser, Verdict, classify
from feishu_bot.claude.transcripts import discard_transcript
from feishu_bot.errors import (
    CliNotFound,
    PermanentCliError,
    QueueFull,
    TransientCliError,
    TurnCancelled,
    TurnTimeout,
)
from feishu_bot.events import ClaudeEvent, TurnRequest, TurnResult

if TYPE_CHECKING:
    from feishu_bot.config import Settings

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
T = TypeVar("T")

_READ_CHUNK = 256 * 1024
_STDERR_HEAD = 4 * 1024
_DRAIN_AFTER_EXIT_S = 2.0


class SessionBinding(Protocol):
    """Where a conversation's Claude session id lives (the SessionStore satisfies it)."""

    async def set_session(self, key: str, session_id: str) -> None: ...

    async def clear_session(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LauncherConfig:
    """How CLI processes are started and limited.

    ``fork_session`` (default True) adds ``--fork-session`` to every ``--resume``: each run then
    writes to a new session id and the session the turn started from is never modified, which
    is what makes a retry safe (see ``Launcher._run_turn``). ``extra_env`` pairs are added on
    top of the bot's own environment.
    """

    bin: str
    max_concurrent: int = 5
    queue_max: int = 20
    timeout: float = 600.0
    max_retries: int = 2
    retry_delay: float = 2.0
    permission_mode: str | None = "acceptEdits"
    allowed_tools: tuple[str, ...] = ()
    model: str | None = None
    kill_grace: float = 3.0
    include_partial: bool = True
    extra_env: tuple[tuple[str, str], ...] = ()
    fork_session: bool = True
    max_line_bytes: int = 64 * 1024 * 1024
    stderr_tail_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.queue_max < 0 or self.max_retries < 0:
            raise ValueError("queue_max and max_retries must not be negative")
        if self.timeout <= 0 or self.kill_grace < 0 or self.retry_delay < 0:
            raise ValueError("timeout must be positive, kill_grace and retry_delay not negative")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LauncherConfig:
        """Build from the ``CLAUDE_*`` settings; keyword overrides win."""
        values: dict[str, Any] = {
            "bin": settings.CLAUDE_BIN,
            "max_concurrent": settings.CLAUDE_MAX_CONCURRENT,
            "queue_max": settings.CLAUDE_QUEUE_MAX,
            "timeout": settings.CLAUDE_TIMEOUT,
            "max_retries": settings.CLAUDE_MAX_RETRIES,
            "retry_delay": settings.CLAUDE_RETRY_DELAY,
            "permission_mode": settings.CLAUDE_PERMISSION_MODE or None,
            "allowed_tools": tuple(settings.allowed_tools),
            "model": settings.CLAUDE_MODEL or None,
        }
        grace = getattr(settings, "CLAUDE_KILL_GRACE", None)
        if grace is not None:
            values["kill_grace"] = float(grace)
        values.update(overrides)
        return cls(**values)


class RunningTurn(NamedTuple):
    """A turn holding a slot: ``elapsed_s`` of its current attempt (0 between attempts)."""

    key: str
    elapsed_s: float
    timeout_s: float


@dataclass(frozen=True, slots=True)
class LauncherStats:
    """A consistent snapshot of the launcher; counters are cumulative since start.

    ``ok`` turns returned a result; ``failed`` raised a ClaudeError (timeouts included, also
    counted in ``timeouts``); ``cancelled`` were stopped; ``rejected`` got QueueFull;
    ``retried`` counts transient retries (attempts after the first), ``stale_cleared`` stale
    sessions dropped.
    """

    active: int
    max_concurrent: int
    queued: int
    oldest_wait_s: float
    ok: int
    failed: int
    retried: int
    stale_cleared: int
    timeouts: int
    running: tuple[RunningTurn, ...]
    queue_max: int = 0
    cancelled: int = 0
    rejected: int = 0


class _Ticket:
    """One turn's place: waiting in the queue, then holding a slot."""

    __slots__ = ("attempt_started", "changed", "enqueued_at", "granted", "key")

    def __init__(self, key: str, now: float) -> None:
        self.key = key
        self.enqueued_at = now
        self.granted = False
        self.changed = asyncio.Event()
        self.attempt_started: float | None = None


@dataclass(slots=True)
class _Attempt:
    """What one CLI run produced."""

    verdict: Verdict
    parser: StreamParser
    exit_code: int | None
    stderr_tail: str
    wall_s: float


class _Retry(Exception):
    """Internal: a transient failure that may be retried (wraps the public error)."""

    def __init__(self, error: TransientCliError) -> None:
        super().__init__(str(error))
        self.error = error


class _TailBuffer:
    """Keeps the first few KiB and the last ``limit`` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = _STDERR_HEAD - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.limit:
                del self.tail[: len(self.tail) - self.limit]

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        skipped = self.total - len(self.head) - len(self.tail)
        if skipped > 0:
            return f"{head}\n[... {skipped} bytes ...]\n{tail}"
        return head + tail


async def _run_to_completion(aw: Coroutine[Any, Any, T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile; re-raise after.

    Used for killing and reaping: a second /stop or a shutdown must not leave a half-killed
    tree behind or free a slot before ``wait()`` returned.
    """
    task = asyncio.ensure_future(aw)
    interrupted = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return task.result()


class Launcher:
    """Runs Claude turns under a global cap with one FIFO queue.

    Queueing rule: every turn that cannot start at once waits in ONE FIFO list of at most
    ``queue_max`` turns, whether it waits for a free slot or for the previous turn of its own
    conversation. When a slot frees, the oldest waiting turn whose conversation is idle (and
    has no older turn waiting) starts. A waiting turn's position is its 1-based place in that
    list (so a turn blocked only by its own conversation still counts, and still holds a place
    in ``queue_max``); it is reported through ``on_queued`` when the turn starts waiting and
    whenever it changes. A turn arriving when the list is full gets ``QueueFull`` at once.
    """

    def __init__(
        self,
        config: LauncherConfig,
        sessions: SessionBinding,
        *,
        sleep: SleepFn | None = None,
    ) -> None:
        self._cfg = config
        self._sessions = sessions
        self._sleep: SleepFn = sleep or asyncio.sleep
        self._waiting: list[_Ticket] = []
        self._running: list[_Ticket] = []
        self._busy_keys: set[str] = set()
        self._inside: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._ok = 0
        self._failed = 0
        self._retried = 0
        self._stale_cleared = 0
        self._timeouts = 0
        self._cancelled = 0
        self._rejected = 0

    @property
    def config(self) -> LauncherConfig:
        return self._cfg

    # ------------------------------------------------------------------ public API
    async def run(
        self,
        req: TurnRequest,
        *,
        on_event: OnEvent | None = None,
        on_queued: OnQueued | None = None,
    ) -> TurnResult:
        """Run one turn and return its result; see the module and class docs for the rules.

        ``on_event`` is awaited for every parsed event, in order ("init" after the new session
        id was saved through ``set_session``, "text" with the accumulated text so far, "tool",
        "api_retry", "result"); a retried or stale-reset turn starts over with a new "init",
        and its text restarts. ``on_queued(position)`` is awaited when the turn has to wait.
        Exceptions raised by the callbacks are logged and do not stop the turn; keep them quick,
        the CLI's output is read between them.

        Raises QueueFull (at once), CliNotFound, PermanentCliError, TransientCliError (retries
        exhausted), TurnTimeout, TurnCancelled (launcher closed); CancelledError propagates
        once the process tree is dead.
        """
        if self._closed:
            raise TurnCancelled("launcher closed")
        try:
            ticket = self._enqueue(req.conversation_key)
        except QueueFull:
            self._rejected += 1
            raise
        task = asyncio.current_task()
        if task is not None:
            self._inside.add(task)
            self._idle.clear()
        try:
            if not ticket.granted:
                await self._wait_for_slot(ticket, on_queued)
            try:
                with logger.contextualize(conversation=req.conversation_key):
                    result = await self._run_turn(req, ticket, on_event)
            finally:
                self._release(ticket)
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        except TurnTimeout:
            self._timeouts += 1
            self._failed += 1
            raise
        except Exception:
            self._failed += 1
            raise
        finally:
            if task is not None:
                self._inside.discard(task)
                if not self._inside:
                    self._idle.set()
        self._ok += 1
        return result

    def queue_position(self, key: str) -> int | None:
        """1-based position of the conversation's first waiting turn, None if none waits."""
        for index, ticket in enumerate(self._waiting):
            if ticket.key == key:
                return index + 1
        return None

    def stats(self) -> LauncherStats:
        now = time.monotonic()
        oldest = max((now - t.enqueued_at for t in self._waiting), default=0.0)
        running = tuple(
            RunningTurn(
                t.key,
                round(now - t.attempt_started, 3) if t.attempt_started is not None else 0.0,
                self._cfg.timeout,
            )
            for t in self._running
        )
        return LauncherStats(
            active=len(self._running),
            max_concurrent=self._cfg.max_concurrent,
            queued=len(self._waiting),
            oldest_wait_s=round(oldest, 3),
            ok=self._ok,
            failed=self._failed,
            retried=self._retried,
            stale_cleared=self._stale_cleared,
            timeouts=self._timeouts,
            running=running,
            queue_max=self._cfg.queue_max,
            cancelled=self._cancelled,
            rejected=self._rejected,
        )

    async def aclose(self, timeout: float | None = None) -> None:
        """Refuse new turns, cancel every turn inside ``run()`` and wait until all are out.

        The cancelled callers see CancelledError, after their process trees are dead. Waits at
        most ``timeout`` seconds (default: kill_grace + 10 s).
        """
        self._closed = True
        for task in list(self._inside):
            task.cancel()
        limit = self._cfg.kill_grace + 10.0 if timeout is None else timeout
        try:
            await asyncio.wait_for(self._idle.wait(), limit)
        except TimeoutError:
            logger.error("launcher closed with {} turns still stopping", len(self._inside))

    # ------------------------------------------------------------------ scheduling
    def _enqueue(self, key: str) -> _Ticket:
        ticket = _Ticket(key, time.monotonic())
        free = len(self._running) < self._cfg.max_concurrent
        if free and key not in self._busy_keys and all(t.key != key for t in self._waiting):
            # Whenever a slot is free, _dispatch has already started every waiting turn that
            # could start, so starting this one now does not overtake anyone eligible.
            self._grant(ticket)
            return ticket
        if len(self._waiting) >= self._cfg.queue_max:
            logger.warning(
                "queue full: {}/{} running, {} queued",
                len(self._running),
                self._cfg.max_concurrent,
                len(self._waiting),
            )
            raise QueueFull(len(self._running), self._cfg.max_concurrent, len(self._waiting))
        self._waiting.append(ticket)
        return ticket

    async def _wait_for_slot(self, ticket: _Ticket, on_queued: OnQueued | None) -> None:
        reported: int | None = None
        try:
            while not ticket.granted:
                position = self._waiting.index(ticket) + 1
                if position != reported:
                    reported = position
                    logger.debug("turn of {} queued at {}", ticket.key, position)
                    if on_queued is not None:
                        await self._callback(on_queued, position)
                    continue  # re-check: the position or the grant may have changed meanwhile
                ticket.changed.clear()
                await ticket.changed.wait()
        except BaseException:
            if ticket.granted:
                self._release(ticket)
            else:
                self._waiting.remove(ticket)
                self._dispatch()
            raise

    def _grant(self, ticket: _Ticket) -> None:
        ticket.granted = True
        self._running.append(ticket)
        self._busy_keys.add(ticket.key)
        ticket.changed.set()

    def _release(self, ticket: _Ticket) -> None:
        if ticket in self._running:
            self._running.remove(ticket)
            self._busy_keys.discard(ticket.key)
            self._dispatch()

    def _dispatch(self) -> None:
        """Start the oldest eligible waiting turns while slots are free; wake the rest."""
        blocked = set(self._busy_keys)
        for ticket in list(self._waiting):
            if len(self._running) >= self._cfg.max_concurrent:
                break
            if ticket.key in blocked:
                continue
            blocked.add(ticket.key)
            self._waiting.remove(ticket)
            self._grant(ticket)
        for ticket in self._waiting:
            ticket.changed.set()

    async def _callback(self, fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        try:
            await fn(arg)
        except Exception:
            logger.exception("launcher callback {} failed", getattr(fn, "__name__", fn))

    # ------------------------------------------------------------------ one turn
    async def _run_turn(
        self, req: TurnRequest, ticket: _Ticket, on_event: OnEvent | None
    ) -> TurnResult:
        """All attempts of one turn.

        Retry policy and why a retry cannot repeat the user's message in the session:
        every attempt starts from the same base, the session the turn began with (or a fresh
        session). The CLI writes the prompt into the session it runs in before it calls the
        API (measured on 2.1.329), and ``--resume X`` keeps id X and appends to it; so a failed
        attempt leaves the prompt behind in whatever session it ran in. With ``fork_session``
        every resumed attempt runs in a new forked id and the base stays untouched, and a fresh
        attempt runs in a new id anyway; the retry resumes the base again (never the failed
        attempt's session, even though its id was already saved from ``init``), so the prompt
        appears once. Without ``fork_session`` a resumed attempt that failed after ``init`` is
        not retried, because the base already holds the prompt.

        Stale session: the binding is cleared and the turn is retried at once without
        ``--resume``, once; that extra attempt is not counted against ``max_retries``.
        """
        cfg = self._cfg
        key = req.conversation_key
        base = req.session_id
        stale_reset = False
        attempts = 0
        started = time.monotonic()

        def before_sleep(state: RetryCallState) -> None:
            self._retried += 1
            delay = state.next_action.sleep if state.next_action else 0.0
            exc = state.outcome.exception() if state.outcome else None
            logger.warning(
                "claude attempt {} failed ({}); retrying in {:.2f}s", attempts, exc, delay
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.max_retries + 1),
            wait=self._backoff,
            retry=retry_if_exception_type(_Retry),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt_state in retrying:
                with attempt_state:
                    attempts += 1
                    outcome = await self._attempt(req, base, ticket, on_event, attempts)
                    if outcome.verdict.outcome is Outcome.STALE and base is not None:
                        logger.warning("session {} is stale; starting a fresh session", base)
                        await self._sessions.clear_session(key)
                        self._stale_cleared += 1
                        stale_reset = True
                        base = None
                        attempts += 1
                        outcome = await self._attempt(req, base, ticket, on_event, attempts)
                    result = self._judge(outcome, base, attempts, stale_reset, started)
                    if base and cfg.fork_session and result.session_id not in (None, base):
                        # the fork is a full copy: the parent transcript is dead weight now
                        await discard_transcript(base, {**os.environ, **dict(cfg.extra_env)})
                    return result
        except _Retry as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, state: RetryCallState) -> float:
        """Delay before retry k (k = 0, 1, ...): retry_delay * 2**k plus up to retry_delay."""
        delay = self._cfg.retry_delay
        return delay * 2 ** (state.attempt_number - 1) + random.uniform(0, delay)

    def _judge(
        self,
        outcome: _Attempt,
        base: str | None,
        attempts: int,
        stale_reset: bool,
        started: float,
    ) -> TurnResult:
        verdict = outcome.verdict
        parser = outcome.parser
        result = parser.result
        errors = result.errors if result else ()
        details = {
            "exit_code": outcome.exit_code,
            "stderr_tail": outcome.stderr_tail,
            "result_errors": errors,
            "attempts": attempts,
            "partial_text": parser.text,
        }
        if verdict.outcome is Outcome.OK:
            assert result is not None
            return TurnResult(
                text=result.text or parser.text,
                session_id=parser.session_id or result.session_id,
                is_error=False,
                subtype=result.subtype,
                errors=errors,
                cost_usd=result.cost_usd,
                duration_ms=result.duration_ms,
                num_turns=result.num_turns,
                attempts=attempts,
                exit_code=outcome.exit_code,
                stale_session_reset=stale_reset,
                extra={
                    "streamed_text": parser.text,
                    "terminal_reason": result.terminal_reason,
                    "permission_denials": result.permission_denials,
                    "tools": tuple(parser.tools_used),
                    "api_retries": parser.api_retries,
                    "wall_ms": int((time.monotonic() - started) * 1000),
                },
            )
        if verdict.outcome is Outcome.TRANSIENT:
            error = TransientCliError(verdict.reason, **details)
            if base is not None and not self._cfg.fork_session and parser.init_seen:
                # The base session already holds this prompt; resuming it again would show
                # the model the user's message twice.
                raise error
            raise _Retry(error)
        # PERMANENT, or STALE without --resume / a second time: retrying cannot help.
        raise PermanentCliError(verdict.reason, **details)

    def _argv(self, req: TurnRequest, resume: str | None) -> list[str]:
        cfg = self._cfg
        argv = [cfg.bin, "-p", "--output-format", "stream-json", "--verbose"]
        if cfg.include_partial:
            argv.append("--include-partial-messages")
        if resume:
            argv += ["--resume", resume]
            if cfg.fork_session:
                argv.append("--fork-session")
        if cfg.permission_mode:
            argv += ["--permission-mode", cfg.permission_mode]
        if cfg.allowed_tools:
            # One comma-joined value: the option is variadic and would swallow later words.
            argv += ["--allowedTools", ",".join(cfg.allowed_tools)]
        model = req.model or cfg.model
        if model:
            argv += ["--model", model]
        return argv

    async def _attempt(
        self,
        req: TurnRequest,
        resume: str | None,
        ticket: _Ticket,
        on_event: OnEvent | None,
        number: int,
    ) -> _Attempt:
        """One CLI run: spawn, feed stdin, stream stdout, drain stderr, reap. Never leaks."""
        cfg = self._cfg
        workdir = Path(req.workdir)
        if not workdir.is_dir():
            raise PermanentCliError(f"working directory {workdir} does not exist")
        argv = self._argv(req, resume)
        env = {**os.environ, **dict(cfg.extra_env)}
        parser = StreamParser()
        stderr = _TailBuffer(cfg.stderr_tail_bytes)
        started = time.monotonic()
        ticket.attempt_started = started
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            ticket.attempt_started = None
            raise CliNotFound(f"{cfg.bin}: {exc.strerror or exc}", attempts=number) from exc
        # (A cancellation while create_subprocess_exec awaits is handled by asyncio itself: it
        # kills and reaps the half-started child before re-raising.)
        logger.info(
            "claude started pid={} attempt={} resume={}{}",
            proc.pid,
            number,
            resume or "-",
            " (fork)" if resume and cfg.fork_session else "",
        )
        stdin_task = asyncio.create_task(self._feed_stdin(proc, req.prompt.encode("utf-8")))
        stderr_task = asyncio.create_task(self._drain(proc.stderr, stderr))
        reader = asyncio.create_task(
            self._read_stdout(proc.stdout, parser, req.conversation_key, resume, on_event)
        )
        timer = asyncio.timeout(cfg.timeout)
        timed_out = False
        try:
            try:
                async with timer:
                    await self._until_exit(proc, reader, stderr_task)
            except TimeoutError:
                if not timer.expired():
                    raise
                timed_out = True
        finally:
            await _run_to_completion(self._cleanup(proc, reader, stdin_task, stderr_task))
            ticket.attempt_started = None
        wall = time.monotonic() - started
        tail = stderr.text()
        if timed_out:
            logger.warning("claude pid={} killed after the {:g}s timeout", proc.pid, cfg.timeout)
            raise TurnTimeout(
                f"no result within {cfg.timeout:g}s",
                exit_code=proc.returncode,
                stderr_tail=tail,
                attempts=number,
                partial_text=parser.text,
            )
        verdict = classify(exit_code=proc.returncode, result=parser.result, stderr=tail)
        logger.info(
            "claude exited pid={} code={} {} ({}) in {:.2f}s",
            proc.pid,
            proc.returncode,
            verdict.outcome.value,
            verdict.reason,
            wall,
        )
        return _Attempt(verdict, parser, proc.returncode, tail, wall)

    async def _until_exit(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.Task[None],
        stderr_task: asyncio.Task[None],
    ) -> None:
        """Wait for stdout EOF and the exit; tolerate a grandchild holding the pipes open."""
        waiter = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()
                await waiter
            else:
                # The CLI is gone; its output is complete unless something it started still
                # holds the pipe, so stop waiting for EOF after a short while.
                await asyncio.wait({reader}, timeout=_DRAIN_AFTER_EXIT_S)
                if reader.done():
                    reader.result()
            await asyncio.wait({stderr_task}, timeout=_DRAIN_AFTER_EXIT_S)
        finally:
            if not waiter.done():
                waiter.cancel()

    async def _cleanup(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.Task[None],
        stdin_task: asyncio.Task[None],
        stderr_task: asyncio.Task[None],
    ) -> None:
        if proc.returncode is None:
            report = await kill_tree(proc, grace=self._cfg.kill_grace)
            logger.info(
                "killed claude pid={} tree: {} processes, {} needed SIGKILL, exit {}",
                report.pid,
                report.seen,
                report.killed,
                report.returncode,
            )
        else:
            await reap_leftovers(proc, grace=min(1.0, self._cfg.kill_grace))
        for task in (reader, stdin_task, stderr_task):
            if not task.done():
                task.cancel()
        results = await asyncio.gather(reader, stdin_task, stderr_task, return_exceptions=True)
        for res in results:
            if isinstance(res, Exception):
                logger.opt(exception=res).error("launcher I/O task failed")

    async def _feed_stdin(self, proc: asyncio.subprocess.Process, data: bytes) -> None:
        stdin = proc.stdin
        assert stdin is not None
        try:
            if data:
                stdin.write(data)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the CLI exited before reading everything (e.g. a stale --resume)
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
                stdin.close()
                await stdin.wait_closed()

    async def _drain(self, stream: asyncio.StreamReader | None, sink: _TailBuffer) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_READ_CHUNK):
            sink.add(chunk)

    async def _read_stdout(
        self,
        stream: asyncio.StreamReader | None,
        parser: StreamParser,
        key: str,
        resume: str | None,
        on_event: OnEvent | None,
    ) -> None:
        """Split stdout into lines by hand: lines of many MB are normal (tool results)."""
        if stream is None:
            return
        limit = self._cfg.max_line_bytes
        buf = bytearray()
        skipping = False
        while chunk := await stream.read(_READ_CHUNK):
            start = 0
            while True:
                newline = chunk.find(b"\n", start)
                if newline < 0:
                    if not skipping:
                        buf += chunk[start:]
                        if len(buf) > limit:
                            logger.warning("dropping a stdout line over {} bytes", limit)
                            buf.clear()
                            skipping = True
                    break
                if skipping:
                    skipping = False
                else:
                    buf += chunk[start:newline]
                    await self._line(bytes(buf), parser, key, resume, on_event)
                    buf.clear()
                start = newline + 1
        if buf and not skipping:
            await self._line(bytes(buf), parser, key, resume, on_event)

    async def _line(
        self,
        line: bytes,
        parser: StreamParser,
        key: str,
        resume: str | None,
        on_event: OnEvent | None,
    ) -> None:
        for event in parser.feed(line):
            if event.kind == "init" and event.session_id and event.session_id != resume:
                try:
                    await self._sessions.set_session(key, event.session_id)
                except Exception:
                    logger.exception("could not save session {} for {}", event.session_id, key)
            if on_event is not None:
                await self._callback(on_event, event)
