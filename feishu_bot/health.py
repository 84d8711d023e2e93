"""The health monitor: one log line every interval, and the numbers behind it.

``HealthMonitor.snapshot()`` gathers a ``HealthSnapshot`` (launcher stats, the bot's own RSS,
extra fields supplied by the app such as the websocket state); ``format_health(snapshot)`` is
the pure function that turns it into ``(level, line)``, e.g.::

    health: active 3/5 (60%) queued 2 oldest 41s ok 120 failed 3 retried 7 stale-cleared 2 rss 74MB

The level is WARNING when every slot is busy or a running turn has used more than 80% of its
timeout, else INFO. ``run()`` never dies of its own errors: a source that raises is logged and
the line is still written with what is known; only cancellation ends it. ``HealthSnapshot`` is
also what /status and an HTTP endpoint can show (``as_dict()``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil
from loguru import logger

from feishu_bot.claude.launcher import LauncherStats, RunningTurn

__all__ = [
    "NEAR_TIMEOUT_FRACTION",
    "HealthMonitor",
    "HealthSnapshot",
    "format_health",
    "take_snapshot",
]

NEAR_TIMEOUT_FRACTION = 0.8
_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """The bot's vital numbers at one instant. Launcher fields are 0 when stats are missing."""

    active: int = 0
    max_concurrent: int = 0
    queued: int = 0
    oldest_wait_s: float = 0.0
    ok: int = 0
    failed: int = 0
    retried: int = 0
    stale_cleared: int = 0
    timeouts: int = 0
    rss_bytes: int = 0
    near_timeout: tuple[RunningTurn, ...] = ()
    extras: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    taken_at: float = 0.0

    @property
    def load_pct(self) -> int:
        return round(100 * self.active / self.max_concurrent) if self.max_concurrent else 0

    @property
    def at_capacity(self) -> bool:
        return self.max_concurrent > 0 and self.active >= self.max_concurrent

    def as_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "max_concurrent": self.max_concurrent,
            "load_pct": self.load_pct,
            "queued": self.queued,
            "oldest_wait_s": round(self.oldest_wait_s, 1),
            "ok": self.ok,
            "failed": self.failed,
            "retried": self.retried,
            "stale_cleared": self.stale_cleared,
            "timeouts": self.timeouts,
            "rss_mb": round(self.rss_bytes / _MB, 1),
            "near_timeout": [
                {"key": t.key, "elapsed_s": t.elapsed_s, "timeout_s": t.timeout_s}
                for t in self.near_timeout
            ],
            "extras": dict(self.extras),
            "errors": list(self.errors),
            "taken_at": self.taken_at,
        }


def take_snapshot(
    stats: LauncherStats | None,
    *,
    rss_bytes: int = 0,
    extras: Mapping[str, Any] | None = None,
    errors: tuple[str, ...] = (),
    now: float | None = None,
) -> HealthSnapshot:
    """Combine the sources into a snapshot (pure)."""
    near: tuple[RunningTurn, ...] = ()
    values: dict[str, Any] = {}
    if stats is not None:
        near = tuple(
            t
            for t in stats.running
            if t.timeout_s > 0 and t.elapsed_s > NEAR_TIMEOUT_FRACTION * t.timeout_s
        )
        values = {
            "active": stats.active,
            "max_concurrent": stats.max_concurrent,
            "queued": stats.queued,
            "oldest_wait_s": stats.oldest_wait_s,
            "ok": stats.ok,
            "failed": stats.failed,
            "retried": stats.retried,
            "stale_cleared": stats.stale_cleared,
            "timeouts": stats.timeouts,
        }
    return HealthSnapshot(
        **values,
        rss_bytes=rss_bytes,
        near_timeout=near,
        extras=dict(extras or {}),
        errors=errors,
        taken_at=time.time() if now is None else now,
    )


def _fmt_extra(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_health(snapshot: HealthSnapshot) -> tuple[str, str]:
    """``(level, line)`` for one snapshot; WARNING at capacity or near a timeout (pure)."""
    s = snapshot
    parts = [
        f"health: active {s.active}/{s.max_concurrent} ({s.load_pct}%)",
        f"queued {s.queued}",
        f"oldest {s.oldest_wait_s:.0f}s",
        f"ok {s.ok}",
        f"failed {s.failed}",
        f"timeouts {s.timeouts}",
        f"retried {s.retried}",
        f"stale-cleared {s.stale_cleared}",
        f"rss {s.rss_bytes / _MB:.0f}MB",
    ]
    for key, value in s.extras.items():
        parts.append(f"{key} {_fmt_extra(value)}")
    if s.near_timeout:
        worst = max(s.near_timeout, key=lambda t: t.elapsed_s / t.timeout_s)
        parts.append(
            f"near-timeout {len(s.near_timeout)} ({worst.key} {worst.elapsed_s:.0f}/"
            f"{worst.timeout_s:.0f}s)"
        )
    if s.errors:
        parts.append(f"source-errors {len(s.errors)}")
    level = "WARNING" if s.at_capacity or s.near_timeout else "INFO"
    return level, " ".join(parts)


class HealthMonitor:
    """Logs one health line every ``interval`` seconds until cancelled.

    ``launcher_stats`` returns the launcher's ``LauncherStats``; ``extras`` returns a mapping of
    further fields appended to the line in order (e.g. ``{"ws": "up", "reconnects": 2}``).
    Both are optional and called on the event loop, so they must be quick and non-blocking.
    The monitor owns no other task; the app owns the task running ``run()``.
    """

    def __init__(
        self,
        interval: float,
        *,
        launcher_stats: Callable[[], LauncherStats] | None = None,
        extras: Callable[[], Mapping[str, Any]] | None = None,
        rss: Callable[[], int] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._launcher_stats = launcher_stats
        self._extras = extras
        self._rss = rss or _own_rss
        self.last: HealthSnapshot | None = None
        self.ticks = 0

    def snapshot(self) -> HealthSnapshot:
        """Gather the numbers now; a failing source is reported in ``errors``, not raised."""
        errors: list[str] = []
        stats = None
        extras: Mapping[str, Any] = {}
        rss = 0
        if self._launcher_stats is not None:
            try:
                stats = self._launcher_stats()
            except Exception as exc:
                errors.append(f"launcher_stats: {exc!r}")
                logger.opt(exception=exc).error("health: launcher stats failed")
        if self._extras is not None:
            try:
                extras = dict(self._extras())
            except Exception as exc:
                errors.append(f"extras: {exc!r}")
                logger.opt(exception=exc).error("health: extras failed")
        try:
            rss = self._rss()
        except Exception as exc:
            errors.append(f"rss: {exc!r}")
            logger.opt(exception=exc).error("health: rss failed")
        snap = take_snapshot(stats, rss_bytes=rss, extras=extras, errors=tuple(errors))
        self.last = snap
        return snap

    def tick(self) -> HealthSnapshot | None:
        """Take a snapshot and log its line; never raises (except on interpreter exit)."""
        try:
            snap = self.snapshot()
            level, line = format_health(snap)
            logger.log(level, line)
            return snap
        except Exception:
            logger.exception("health: tick failed")
            return None
        finally:
            self.ticks += 1

    async def run(self) -> None:
        """Log at once, then every ``interval`` seconds (no drift); ends only by cancellation."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.tick()
            next_at += self.interval
            now = loop.time()
            if next_at < now:  # the loop was blocked: skip the missed beats
                next_at = now + self.interval
            await asyncio.sleep(next_at - now)


def _own_rss() -> int:
    return int(psutil.Process().memory_info().rss)
