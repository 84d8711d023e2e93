"""Shared pieces of the benchmarks: the machine, percentiles, and the bot as a subprocess.

`BotProcess` runs ``feishu-bot run`` in its own process (its own interpreter, GIL and memory),
configured only through environment variables, with the health endpoint on a free loopback
port; the benchmark reads its state from ``/healthz`` and its memory with psutil.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

__all__ = [
    "BotProcess",
    "SamplerStats",
    "free_port",
    "machine_info",
    "percentile",
]


def machine_info() -> str:
    """One line: CPU model, cores, memory, OS and Python."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}; {cores} cores ({usable} usable); {mem:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}; "
        f"load average {load}"
    )


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of the values: an observed sample, never a mix."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(data)))
    return data[rank - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SamplerStats:
    """The peak RSS of the bot process seen by `BotProcess.sample()`."""

    def __init__(self) -> None:
        self.max_rss = 0
        self.samples = 0


class BotProcess:
    """``feishu-bot run`` as a child process; ``async with`` starts it and stops it (SIGTERM).

    `env` is the complete environment (settings are environment variables; ``--env-file ''``
    keeps any ``.env`` in the working directory out). The bot's stderr goes to `log_path`.
    """

    def __init__(
        self, env: dict[str, str], log_path: Path, cwd: Path, command: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self._command = command or self.command()
        self.env = {**env, "HEALTH_PORT": str(self.port), "HEALTH_HOST": "127.0.0.1"}
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self.startup_s = math.nan
        self.spawned_at = math.nan  # time.time() at spawn: the simulator's records are wall clock
        self.cpu_at_healthy = math.nan  # its own CPU seconds then: start-up work without waits
        self.exit_code: int | None = None
        self.leftovers: list[int] = []  # children still alive after the bot exited (a bug)
        self._http: aiohttp.ClientSession | None = None
        self._log: Any = None

    @staticmethod
    def command(prelude: Path | None = None) -> list[str]:
        """``feishu-bot --env-file '' run``; with `prelude`, the same entry point run after
        executing that Python file in the bot process (a diagnosis knob, see the README)."""
        if prelude is not None:
            code = (
                f"import sys; exec(compile(open({str(prelude)!r}).read(), {str(prelude)!r},"
                " 'exec')); from feishu_bot.__main__ import main; sys.exit(main(sys.argv[1:]))"
            )
            return [sys.executable, "-c", code, "--env-file", "", "run"]
        script = Path(sys.executable).with_name("feishu-bot")
        if script.exists():
            return [str(script), "--env-file", "", "run"]
        return [sys.executable, "-m", "feishu_bot", "--env-file", "", "run"]

    async def __aenter__(self) -> BotProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 120) -> None:
        self._log = self.log_path.open("ab")
        self._http = aiohttp.ClientSession()
        started = time.perf_counter()
        self.spawned_at = time.time()
        self.proc = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=self.env,
            cwd=self.cwd,
        )
        self.ps = psutil.Process(self.proc.pid)
        try:
            await self._wait_healthy(timeout)
        except BaseException:
            await self.stop(timeout=10)
            raise
        self.startup_s = time.perf_counter() - started
        self.cpu_at_healthy = self.cpu()[0]

    async def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"bot exited {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                body = await self.healthz()
                if body.get("healthy"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"bot not healthy after {timeout}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # another process: nothing to await but its port

    async def healthz(self) -> dict[str, Any]:
        assert self._http is not None
        url = f"http://127.0.0.1:{self.port}/healthz"
        async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.json()

    async def wait_state(self, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        """Poll /healthz until `predicate(body)` holds (the bot is another process)."""
        deadline = time.monotonic() + timeout
        while True:
            body = await self.healthz()
            if predicate(body):
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot state not reached: {body}")
            await asyncio.sleep(0.02)

    def rss(self) -> int:
        """Resident set size of the bot process alone (its CLI children are other processes)."""
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def uss(self) -> int:
        """Memory unique to the bot process (what killing it would free)."""
        assert self.ps is not None
        return int(self.ps.memory_full_info().uss)

    def cpu(self) -> tuple[float, float]:
        """(own user+system CPU seconds, reaped children's user+system CPU seconds)."""
        assert self.ps is not None
        t = self.ps.cpu_times()
        return t.user + t.system, t.children_user + t.children_system

    def children(self) -> list[psutil.Process]:
        assert self.ps is not None
        try:
            return [c for c in self.ps.children(recursive=True) if c.status() != "zombie"]
        except psutil.Error:
            return []

    async def sample(self, stats: SamplerStats, stop: asyncio.Event, every: float = 0.1) -> None:
        """Record the peak RSS until `stop` is set (RSS only: it is one cheap /proc read)."""
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                stats.max_rss = max(stats.max_rss, self.rss())
                stats.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, wait; SIGKILL only if it does not stop in time. Returns the exit code."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            left = self.children()
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            for child in left:  # nothing the bot started may outlive it
                with contextlib.suppress(psutil.Error):
                    if child.is_running() and child.status() != "zombie":
                        self.leftovers.append(child.pid)
                        child.kill()
        if proc is not None:
            self.exit_code = proc.returncode
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.exit_code

    def log_tail(self, size: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        return ""
