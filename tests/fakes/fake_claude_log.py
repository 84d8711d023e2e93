"""Reading what the fake `claude` script records (see fake_claude.py, FAKE_CLAUDE_LOG).

Tests measure the launcher from outside with it: start/exit times of every process (the
concurrency cap, live processes at any instant), its turns (warm reuse, turns running at once),
the control messages it received, the pids of children a run started (the process-tree kill),
leftovers.
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
    """The JSON lines the fake CLI appends to FAKE_CLAUDE_LOG (see fake_claude.py).

    Events: start, turn_start, turn_end, control, tool, tool_done, edit, mcp, mcp_connect,
    child, exit. The fake runs in other processes, so waiting means reading the file again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        # A line still being appended by a running fake has no newline yet: leave it for later.
        for line in self.path.read_text().split("\n")[:-1]:
            if line.strip():
                rec = json.loads(line)
                if event is None or rec["event"] == event:
                    out.append(rec)
        return out

    @staticmethod
    def _key(rec: dict[str, Any]) -> Any:
        # ``run`` is unique per process (pids can be reused); old records only have ``pid``.
        return rec.get("run") or rec["pid"]

    def starts(self, marker: str | None = None) -> list[dict[str, Any]]:
        """One ``start`` record per process, optionally only those that saw ``marker``.

        A stream-json process logs ``start`` before it has read a prompt; for it the marker is
        looked for in its turns' prompts too, and the returned copy of its ``start`` record
        carries the first turn's ``prompt_head``.
        """
        recs = self.records()
        heads: dict[Any, list[str]] = {}
        for rec in recs:
            if rec["event"] == "turn_start":
                heads.setdefault(self._key(rec), []).append(rec["prompt_head"])
        out = []
        for rec in recs:
            if rec["event"] != "start":
                continue
            seen = [rec["prompt_head"], *heads.get(self._key(rec), [])]
            if marker is not None and not any(marker in head for head in seen):
                continue
            if not rec["prompt_head"] and len(seen) > 1:
                rec = {**rec, "prompt_head": seen[1]}
            out.append(rec)
        return out

    def turns(self, marker: str | None = None) -> list[dict[str, Any]]:
        """``turn_start`` records (every turn of every process), in log order."""
        return [
            r for r in self.records("turn_start") if marker is None or marker in r["prompt_head"]
        ]

    def turn_ends(self) -> list[dict[str, Any]]:
        return self.records("turn_end")

    def controls(self, subtype: str | None = None) -> list[dict[str, Any]]:
        """Control messages the fake received (``type``, ``subtype``, ``request_id``, ...)."""
        return [r for r in self.records("control") if subtype is None or r["subtype"] == subtype]

    def turns_per_process(self) -> dict[int, int]:
        """pid -> number of turns it started."""
        counts: dict[int, int] = {}
        for rec in self.records("turn_start"):
            counts[rec["pid"]] = counts.get(rec["pid"], 0) + 1
        return counts

    def lifetimes(self, *, require_exit: bool = True) -> list[tuple[float, float]]:
        """(start, exit) ``mono`` of every process; one still running ends at +inf."""
        starts = {self._key(r): r["mono"] for r in self.records("start")}
        exits = {self._key(r): r["mono"] for r in self.records("exit")}
        if require_exit:
            missing = set(starts) - set(exits)
            assert not missing, f"every fake run must log its exit; no exit for {missing}"
        return [(t, exits.get(key, float("inf"))) for key, t in starts.items()]

    def live_at(self, mono: float) -> int:
        """How many fake CLI processes were alive at that ``time.monotonic()`` instant."""
        return sum(start <= mono < end for start, end in self.lifetimes(require_exit=False))

    def live_now(self) -> list[int]:
        """Pids that logged ``start`` and no ``exit`` yet (by the log alone)."""
        exited = {self._key(r) for r in self.records("exit")}
        return [r["pid"] for r in self.records("start") if self._key(r) not in exited]

    def max_overlap(self, *, require_exit: bool = True) -> int:
        """Largest number of fake CLI processes alive at once, from their own records."""
        return _max_overlap(self.lifetimes(require_exit=require_exit))

    def max_busy(self) -> int:
        """Largest number of turns running at once (``turn_start`` to its ``turn_end``/exit)."""
        intervals = []
        open_turns: dict[Any, float] = {}
        for rec in self.records():
            key = self._key(rec)
            if rec["event"] == "turn_start":
                open_turns[key] = rec["mono"]
            elif rec["event"] in ("turn_end", "exit") and key in open_turns:
                intervals.append((open_turns.pop(key), rec["mono"]))
        intervals += [(t, float("inf")) for t in open_turns.values()]
        return _max_overlap(intervals)

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


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    points: list[tuple[float, int]] = []
    for start, end in intervals:
        points += [(start, 1), (end, -1)]
    # At equal timestamps count the end first: intervals that only touch do not overlap.
    points.sort(key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best
