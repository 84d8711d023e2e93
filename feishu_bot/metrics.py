"""Prometheus metrics, kept in a registry per bot (never the process-global default one).

Counters the components already keep (launcher stats, dispatch counters, gateway reconnects,
the alerts' state) are read at scrape time by a collector, so no component depends on
Prometheus. Only turn outcomes and the histograms need observations, which the turn's owner
reports through `BotMetrics`; it passes each finished turn on to `on_turn` (the alerts).

Timestamps (last frame, last successful turn) are exported as epoch seconds, 0 for "never", so
a rule computes the age with `time() - …` whatever the scrape interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "BotMetrics", "HealthSnapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


OnTurn = Callable[[str, BaseException | None], None]


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """The bot's live numbers at one instant, read on every scrape and by /healthz."""

    active: int = 0
    queued: int = 0
    max_concurrent: int = 0
    proc_busy: int = 0
    proc_idle: int = 0
    proc_closing: int = 0
    evictions: int = 0
    cold_starts: int = 0
    retried: int = 0
    stale_cleared: int = 0
    ws_connected: bool = False
    reconnects: int = 0
    duplicates: int = 0
    uptime_s: float = 0.0
    last_frame_at: float | None = None
    alerts: Mapping[str, int] = field(default_factory=dict)  # condition -> 1 while active
    disk_free: Mapping[str, int] = field(default_factory=dict)  # setting -> free bytes


class _LiveCollector(Collector):
    def __init__(
        self, snapshot: Callable[[], HealthSnapshot], last_ok: Callable[[], float | None]
    ) -> None:
        self._snapshot = snapshot
        self._last_ok = last_ok

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from self._liveness(snap)
        gauges = {
            "feishu_bot_active_turns": ("claude processes running", snap.active),
            "feishu_bot_queued_turns": ("turns waiting for a slot", snap.queued),
            "feishu_bot_max_concurrent": ("cap on claude processes", snap.max_concurrent),
            "feishu_bot_websocket_connected": ("1 when connected", int(snap.ws_connected)),
            "feishu_bot_uptime_seconds": ("seconds since start", snap.uptime_s),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        processes = GaugeMetricFamily(
            "feishu_bot_claude_processes", "live claude processes by state", labels=["state"]
        )
        for state, count in (
            ("busy", snap.proc_busy), ("idle", snap.proc_idle), ("closing", snap.proc_closing)
        ):
            processes.add_metric([state], count)
        yield processes
        counters = {
            "feishu_bot_claude_retries": ("attempts retried", snap.retried),
            "feishu_bot_stale_sessions_cleared": ("stale sessions cleared", snap.stale_cleared),
            "feishu_bot_websocket_reconnects": ("websocket reconnects", snap.reconnects),
            "feishu_bot_claude_evictions": (
                "idle warm processes closed to make room",
                snap.evictions,
            ),
            "feishu_bot_claude_cold_starts": ("claude processes started", snap.cold_starts),
            "feishu_bot_duplicate_deliveries_dropped": (
                "redelivered events dropped",
                snap.duplicates,
            ),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)

    def _liveness(self, snap: HealthSnapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "feishu_bot_websocket_last_frame_timestamp_seconds",
            "when the last frame (event, pong) came from Feishu, epoch seconds; 0 = never",
            value=snap.last_frame_at or 0.0,
        )
        yield GaugeMetricFamily(
            "feishu_bot_last_ok_turn_timestamp_seconds",
            "when the last turn succeeded, epoch seconds; 0 = none since start",
            value=self._last_ok() or 0.0,
        )
        alerts = GaugeMetricFamily(
            "feishu_bot_alert_active",
            "1 while an alert condition is active (see FEISHU_ADMIN_CHAT)",
            labels=["condition"],
        )
        for condition, value in sorted(snap.alerts.items()):
            alerts.add_metric([condition], value)
        yield alerts
        disk = GaugeMetricFamily(
            "feishu_bot_disk_free_bytes",
            "free bytes where the directory a setting names lives",
            labels=["directory"],
        )
        for directory, free in sorted(snap.disk_free.items()):
            disk.add_metric([directory], free)
        yield disk


class BotMetrics:
    """The bot's metrics: turn outcomes and histograms, plus live values read on scrape."""

    def __init__(
        self,
        snapshot: Callable[[], HealthSnapshot] = HealthSnapshot,
        *,
        on_turn: OnTurn | None = None,
    ) -> None:
        """`on_turn(outcome, error)` hears of every finished turn (it must not block)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._on_turn = on_turn
        self.last_ok_at: float | None = None  # epoch seconds of the last successful turn
        self.turns = Counter(
            "feishu_bot_turns", "finished turns by outcome", ["outcome"], registry=self.registry
        )
        self.turn_duration = Histogram(
            "feishu_bot_turn_duration_seconds",
            "wall time of a turn from start to final answer",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "feishu_bot_queue_wait_seconds",
            "time from accepting a message to its claude process starting",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.cost = Counter(
            "feishu_bot_cost_usd",
            "USD the CLI reported for successful turns (each turn's own cost)",
            registry=self.registry,
        )
        self.first_text_latency = Histogram(
            "feishu_bot_first_text_seconds",
            "time from writing a turn to the first streamed text",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self._live = _LiveCollector(snapshot, lambda: self.last_ok_at)
        self.registry.register(self._live)

    def turn_finished(
        self,
        outcome: str,
        seconds: float | None = None,
        *,
        error: BaseException | None = None,
        cost_usd: float = 0.0,
    ) -> None:
        """Count a finished turn; `error` is why it did not succeed (for the alerts),
        `cost_usd` the turn's own cost (not a warm process's running total)."""
        self.turns.labels(outcome=outcome).inc()
        if cost_usd > 0:
            self.cost.inc(cost_usd)
        if seconds is not None:
            self.turn_duration.observe(max(0.0, seconds))
        if outcome == "ok":
            self.last_ok_at = time.time()
        if self._on_turn is not None:
            try:
                self._on_turn(outcome, error)
            except Exception:  # bookkeeping must never fail a turn
                logger.exception("metrics: the turn listener failed")

    def turn_started(self, waited_seconds: float) -> None:
        self.queue_wait.observe(max(0.0, waited_seconds))

    def first_text(self, seconds: float) -> None:
        self.first_text_latency.observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)
