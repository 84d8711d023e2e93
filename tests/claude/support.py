"""Helpers for the launcher tests (importable as ``tests.claude.support``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from feishu_bot.events import ClaudeEvent, TurnRequest
from tests.fakes.fake_claude_log import FakeClaudeLog

SAMPLES = Path(__file__).resolve().parent / "samples"


@dataclass
class MemoryBinding:
    """A SessionBinding that remembers the current session per key and every call in order."""

    sessions: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def set_session(self, key: str, session_id: str) -> None:
        self.calls.append(("set", key, session_id))
        self.sessions[key] = session_id

    async def clear_session(self, key: str) -> None:
        self.calls.append(("clear", key))
        self.sessions.pop(key, None)


class EventRecorder:
    """An on_event callback that keeps every event and lets a test await a kind."""

    def __init__(self) -> None:
        self.events: list[ClaudeEvent] = []
        self._changed = asyncio.Event()

    async def __call__(self, event: ClaudeEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    async def wait_kind(self, kind: str, timeout: float = 10.0) -> ClaudeEvent:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.kind == kind:
                        return event
                self._changed.clear()
                await self._changed.wait()


def request(workdir: Path, prompt: str = "hello", key: str = "p2p:c1", **kw: Any) -> TurnRequest:
    return TurnRequest(conversation_key=key, prompt=prompt, workdir=workdir, **kw)


async def poll_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, checking every 20 ms (for state in other processes)."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def alive_pids(pids: Iterable[int]) -> list[int]:
    """The pids from ``pids`` that still exist and are not zombies (empty list = all dead)."""
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def fake_cli_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment mentions ``marker`` (the test's tmp path)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if any(marker in v for v in env.values()) and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def open_gate(fake_env: dict[str, str]) -> None:
    """Let every fake turn in ``gate`` mode finish (they wait for ``$HOME/gate``)."""
    (Path(fake_env["HOME"]) / "gate").touch()


def turn_pids(log: FakeClaudeLog, marker: str | None = None) -> list[int]:
    """The pid that ran each turn (optionally only turns whose prompt has ``marker``)."""
    return [rec["pid"] for rec in log.turns(marker)]


def exits_of(log: FakeClaudeLog, pid: int) -> list[dict[str, Any]]:
    return [rec for rec in log.records("exit") if rec["pid"] == pid]


async def wait_exit(log: FakeClaudeLog, pid: int, timeout: float = 30.0) -> dict[str, Any]:
    """The ``exit`` record of the fake CLI ``pid``, once it has logged one."""
    found = await log.wait_for(lambda _r: exits_of(log, pid), timeout=timeout)
    return found[0]


async def wait_turns(log: FakeClaudeLog, count: int, timeout: float = 30.0) -> None:
    """Until ``count`` turns have started (in any process)."""
    await log.wait_for(lambda r: sum(x["event"] == "turn_start" for x in r) >= count, timeout)
