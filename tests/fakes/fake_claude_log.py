"""Reading what the fake `claude` script records (see fake_claude.py, FAKE_CLAUDE_LOG).

Tests measure the launcher from outside with it: start/exit times of every run (the
concurrency cap), the pids of children a run started (the process-tree kill), leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

__all__ = ["FakeClaudeLog"]


class FakeClaudeLog:
    """The JSON lines the fake CLI appends to FAKE_CLAUDE_LOG (start, child, exit).

    The fake runs in other processes, so waiting means reading the file again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if event is None or rec["event"] == event:
                    out.append(rec)
        return out

    def starts(self, marker: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records("start") if marker is None or marker in r["prompt_head"]]

    def max_overlap(self) -> int:
        """Largest number of fake CLI processes alive at once, from their own records."""
        points: list[tuple[float, int]] = []
        starts = {r["pid"]: r["mono"] for r in self.records("start")}
        exits = {r["pid"]: r["mono"] for r in self.records("exit")}
        assert set(starts) == set(exits), "every fake run must log its exit"
        for pid, t in starts.items():
            points.append((t, 1))
            points.append((exits[pid], -1))
        # At equal timestamps count the exit first: [start, exit] intervals that only touch
        # do not overlap.
        points.sort(key=lambda p: (p[0], p[1]))
        best = current = 0
        for _, delta in points:
            current += delta
            best = max(best, current)
        return best

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 60
    ) -> Any:
        """Poll the file (written by other processes; nothing to await) until it holds."""
        async with asyncio.timeout(timeout):
            while not (value := predicate(self.records())):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        return value

    def processes(self) -> list[tuple[int, float]]:
        """(pid, time logged) of every fake CLI run and every child it reported."""
        found = []
        for rec in self.records():
            if rec["event"] == "start":
                found.append((rec["pid"], rec["time"]))
            elif rec["event"] == "child":
                found += [(rec["child_pid"], rec["time"]), (rec["grandchild_pid"], rec["time"])]
        return found

    def alive(self) -> list[int]:
        """Pids from the log that still run (zombies count as dead; reused pids are skipped)."""
        left = []
        for pid, logged in self.processes():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() > logged + 1 or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            left.append(pid)
        return left

    def kill_all(self) -> list[int]:
        """SIGKILL whatever the log names that is still alive; returns those pids."""
        left = self.alive()
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return left
