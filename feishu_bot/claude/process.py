"""Process-tree helpers for the launcher: find and kill everything a CLI run started.

The CLI is started in a session of its own (``start_new_session=True``), so its pid is also its
process group and session id. Its Bash-tool children do ``setsid`` (measured on 2.1.329: the
tool's shell has pgid == sid == its own pid), so killing the CLI's group is not enough and
SIGKILL of the CLI alone orphans them. ``kill_tree`` therefore:

1. snapshots the CLI's descendants (psutil, by parent links) *before* signalling anything,
   plus every process in the sessions of the CLI and of those descendants (this also finds
   double-forked daemons that were already re-parented to init);
2. sends SIGTERM to the CLI's process group, to every group of the snapshot and to every
   snapshot process;
3. waits up to ``grace`` seconds (the CLI itself event-driven, the rest by polling; a zombie
   counts as dead);
4. snapshots again (things forked meanwhile), SIGKILLs all survivors and their groups;
5. awaits the CLI's ``wait()`` so it is reaped, and waits briefly for the others to vanish.

Never signals the bot's own process group or session, nor pid 0/1.

A ``setsid nohup … &`` started by a tool leaves the CLI's tree and session for good (re-parented
to init), so every CLI also gets a tag in its environment (``TAG_VAR``), inherited by all its
descendants: ``reap_tagged`` finds them by it. The bot is not made a child subreaper: reaping
adopted orphans with ``waitpid(-1)`` steals asyncio's exit statuses (FACTS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
from loguru import logger

__all__ = [
    "TAG_VAR",
    "KillReport",
    "alive",
    "child_env",
    "kill_tree",
    "leftovers",
    "live_tags",
    "new_tag",
    "reap_after_exit",
    "reap_leftovers",
    "reap_tagged",
    "snapshot_tree",
    "spawn_cli",
    "tagged",
]

TAG_VAR = "CLAUDE_BOT_CLI_TAG"

_POLL_S = 0.02
_AFTER_KILL_S = 2.0


@dataclass(frozen=True, slots=True)
class KillReport:
    """What ``kill_tree`` did: how many processes it saw and whether SIGKILL was needed."""

    pid: int
    seen: int
    killed: int
    survivors: tuple[int, ...]
    returncode: int | None


def alive(proc: psutil.Process) -> bool:
    """True while the process exists and is not a zombie (same pid, same start time)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _own_ids() -> tuple[set[int], set[int]]:
    """Process groups and sessions that must never be signalled: ours, and 0/1."""
    return {0, 1, os.getpgid(0)}, {0, 1, os.getsid(0)}


def _members(sessions: set[int], groups: set[int]) -> dict[int, psutil.Process]:
    """Every process whose session id is in ``sessions`` or process group in ``groups``."""
    own_groups, own_sessions = _own_ids()
    sessions = sessions - own_sessions
    groups = groups - own_groups
    found: dict[int, psutil.Process] = {}
    if not sessions and not groups:
        return found
    me = os.getpid()
    for pid in psutil.pids():
        if pid == me:
            continue
        try:
            if os.getsid(pid) in sessions or os.getpgid(pid) in groups:
                found[pid] = psutil.Process(pid)
        except (OSError, psutil.Error):
            continue
    return found


def snapshot_tree(pid: int) -> dict[int, psutil.Process]:
    """The process ``pid`` (if alive), its descendants, and every member of their sessions."""
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(pid)
        found[pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    except psutil.Error:
        pass
    sids = {pid}
    for p in list(found.values()):
        with contextlib.suppress(OSError):
            sids.add(os.getsid(p.pid))
    found.update(_members(sids, set()))
    return found


def leftovers(pid: int) -> dict[int, psutil.Process]:
    """Live processes still in the session or process group of an exited CLI (pid=sid=pgid)."""
    return {p: proc for p, proc in _members({pid}, {pid}).items() if alive(proc)}


def _groups_of(procs: dict[int, psutil.Process], leader: int) -> set[int]:
    groups = {leader}
    for p in procs.values():
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(p.pid))
    own_groups, _ = _own_ids()
    return groups - own_groups


def _signal_all(procs: dict[int, psutil.Process], groups: set[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)
    for p in procs.values():
        with contextlib.suppress(psutil.Error, OSError):
            p.send_signal(sig)


def _signal_cli(proc: asyncio.subprocess.Process, sig: int) -> None:
    # os.kill, not proc.send_signal: Popen.send_signal() polls first, and that waitpid() can
    # reap the child behind asyncio's child watcher, which then reports exit code 255.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, sig)


async def _wait_gone(
    procs: dict[int, psutil.Process], deadline: float, proc: asyncio.subprocess.Process | None
) -> list[psutil.Process]:
    loop = asyncio.get_running_loop()
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), max(0.0, deadline - loop.time()))
    while True:
        left = [p for p in procs.values() if alive(p)]
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(_POLL_S)


async def kill_tree(proc: asyncio.subprocess.Process, *, grace: float) -> KillReport:
    """Stop ``proc`` and everything it started; return only once ``proc`` has been reaped.

    Safe to call when ``proc`` already exited (then only leftovers in its session or group are
    stopped). Not cancellation-safe by itself: the launcher runs it to completion even when the
    awaiting task is cancelled.
    """
    loop = asyncio.get_running_loop()
    pid = proc.pid
    running = proc.returncode is None
    # The snapshot comes first: once the CLI is signalled its children start to re-parent.
    targets = snapshot_tree(pid) if running else leftovers(pid)
    targets.pop(pid, None)  # the CLI itself is signalled and reaped through `proc`
    groups = _groups_of(targets, pid)
    seen = len(targets) + int(running)
    _signal_all(targets, groups, signal.SIGTERM)
    _signal_cli(proc, signal.SIGTERM)
    survivors = await _wait_gone(targets, loop.time() + grace, proc)
    killed = 0
    if proc.returncode is None or survivors:
        # Anything forked during the grace period is found now (parent links or session ids).
        more = snapshot_tree(pid) if proc.returncode is None else leftovers(pid)
        more.pop(pid, None)
        for p in survivors:
            more.setdefault(p.pid, p)
        groups |= _groups_of(more, pid)
        killed = len(more) + int(proc.returncode is None)
        _signal_all(more, groups, signal.SIGKILL)
        _signal_cli(proc, signal.SIGKILL)
        targets.update(more)
    await proc.wait()
    left = await _wait_gone(targets, loop.time() + _AFTER_KILL_S, None)
    if left:
        logger.warning("processes still alive after SIGKILL: {}", [p.pid for p in left])
    return KillReport(
        pid=pid,
        seen=seen,
        killed=killed,
        survivors=tuple(p.pid for p in left),
        returncode=proc.returncode,
    )


async def reap_after_exit(
    proc: asyncio.subprocess.Process, *, grace: float, tag: str | None, scratch: Path | None
) -> None:
    """After the CLI exited, for whatever reason: its session's and group's leftovers, every
    process still carrying its tag, then its temporary directory."""
    await reap_leftovers(proc, grace=grace)
    if tag is not None:
        await reap_tagged(tag, grace=grace)
    if scratch is not None:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


async def reap_leftovers(proc: asyncio.subprocess.Process, *, grace: float) -> int:
    """After a normal exit: stop whatever is still running in the CLI's session or group."""
    found = leftovers(proc.pid)
    if not found:
        return 0
    logger.info("stopping {} leftover processes of claude pid {}", len(found), proc.pid)
    await kill_tree(proc, grace=grace)
    return len(found)


def new_tag() -> str:
    """A tag for one CLI process: unique, and short (it names the CLI's temporary directory)."""
    return uuid.uuid4().hex[:16]


def live_tags() -> set[str]:
    """The tags of every live process that carries one (a /proc scan; blocking)."""
    prefix = f"{TAG_VAR}=".encode()
    found: set[str] = set()
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                entries = fh.read().split(b"\0")
        except OSError:
            continue
        found.update(e[len(prefix):].decode(errors="replace") for e in entries
                     if e.startswith(prefix))
    return found


def tagged(tag: str) -> dict[int, psutil.Process]:
    """Live processes whose environment holds ``TAG_VAR=tag`` (read from /proc: the environment
    a process was started with, which a child inherits even through ``setsid``)."""
    needle = f"{TAG_VAR}={tag}".encode()
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    for pid in psutil.pids():
        if pid in (0, 1, me):
            continue
        try:
            proc = psutil.Process(pid)  # before the read: pins the start time against reuse
            with open(f"/proc/{pid}/environ", "rb") as fh:
                entries = fh.read().split(b"\0")
        except (OSError, psutil.Error):
            continue
        if needle in entries and alive(proc):
            found[pid] = proc
    return found


async def reap_tagged(
    tag: str, *, grace: float, since: float | None = None, spare_tree_of: int | None = None
) -> int:
    """SIGTERM every live process tagged ``tag``, SIGKILL what is left after ``grace``; return
    how many there were. ``since`` (epoch seconds) keeps processes started earlier;
    ``spare_tree_of`` keeps that pid and its descendants (a live CLI and its helpers: the CLI
    stops its own tool trees). Scans /proc in a thread."""

    def select() -> dict[int, psutil.Process]:
        found = tagged(tag)
        if spare_tree_of is not None:
            found.pop(spare_tree_of, None)
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(spare_tree_of).children(recursive=True):
                    found.pop(child.pid, None)
        if since is not None:
            for pid, proc in list(found.items()):
                with contextlib.suppress(psutil.Error):
                    if proc.create_time() < since:
                        del found[pid]
        return found

    procs = await asyncio.to_thread(select)
    if not procs:
        return 0
    _signal_all(procs, set(), signal.SIGTERM)
    left = await _wait_gone(procs, asyncio.get_running_loop().time() + grace, None)
    if left:
        _signal_all({p.pid: p for p in left}, set(), signal.SIGKILL)
        loop = asyncio.get_running_loop()
        await _wait_gone({p.pid: p for p in left}, loop.time() + _AFTER_KILL_S, None)
    logger.info(
        "stopped {} processes left behind by claude tag {} ({} needed SIGKILL)",
        len(procs), tag, len(left),
    )
    return len(procs)


_PR_SET_PDEATHSIG = 1


@functools.cache
def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the CLI when the bot dies, even by SIGKILL.

    Linux only (None elsewhere). Resolved in the parent, so the child between fork and exec
    only makes one system call. The signal fires when the *thread* that forked exits: the
    launcher spawns from the event loop's thread, which lives as long as the bot. Covers the
    CLI itself, not its Bash-tool children (own sessions); after a crash those still need
    the journal's "interrupted" handling and an operator's cleanup.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the bot died between fork() and prctl()
            os.kill(os.getpid(), signal.SIGTERM)

    return set_pdeathsig


@functools.cache
def _setpriv() -> str | None:
    """util-linux ``setpriv`` if it can set a parent-death signal (Debian/Ubuntu: always)."""
    path = shutil.which("setpriv")
    if path is None or not sys.platform.startswith("linux"):
        return None
    return path


def child_env(
    base: Mapping[str, str], extra: Iterable[tuple[str, str]], drop: Iterable[str]
) -> dict[str, str]:
    """The environment of a ``claude`` child: the bot's own minus the bot's settings and
    secrets (every FEISHU_* and each name in ``drop``), plus ``extra``.

    With Bash allowed, anything in the child's environment is readable by every chat user.
    """
    dropped = set(drop)
    env = {
        k: v for k, v in base.items() if k not in dropped and not k.startswith("FEISHU_")
    }
    env.update(dict(extra))
    return env


async def spawn_cli(
    argv: list[str], *, cwd: Path, env: Mapping[str, str]
) -> asyncio.subprocess.Process:
    """Start the CLI with piped stdio in a session of its own, dying with the bot.

    The parent-death signal is set by ``setpriv --pdeathsig`` exec'ing the CLI (same pid), not
    by a ``preexec_fn``, which is unsafe in a process with threads (the SDK and SQLite have
    some). Without setpriv the ``preexec_fn`` is the fallback. Raises FileNotFoundError /
    PermissionError when the CLI cannot be started.
    """
    setpriv = _setpriv()
    preexec = None
    if setpriv is not None:
        binary = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
        if binary is None:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        if not os.access(binary, os.X_OK):
            raise PermissionError(13, "Permission denied", binary)
        argv = [setpriv, "--pdeathsig", "TERM", "--", binary, *argv[1:]]
    else:
        preexec = die_with_parent()
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
        preexec_fn=preexec,
    )
