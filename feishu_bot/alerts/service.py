"""The shell around ``AlertEngine``: samples the bot, feeds the engine, sends the cards.

``AlertService`` samples the bot once per ``interval`` (the disk less often, in a thread), logs
every transition (WARNING on start, INFO on clear), queues the cards of the transitions to
announce and sends them one at a time, in order, on its own task. It owns the sampling loop and
the sender; both end when ``run()`` is cancelled (a card still queued then is dropped). It does
not decide what a condition means (``alerts.conditions``) nor what a card says
(``alerts.cards``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from feishu_bot.alerts.cards import alert_card
from feishu_bot.alerts.conditions import AlertEngine, Condition, Sample, Transition, turn_kind

__all__ = ["AlertService", "SendCard", "admin_chat_sender", "disk_free", "sample_of"]

SendCard = Callable[[dict[str, Any]], Awaitable[Any]]


class AlertService:
    """Samples the bot, feeds the engine, logs transitions and sends their cards in order."""

    def __init__(
        self,
        engine: AlertEngine,
        *,
        sample: Callable[[], Sample],
        send: SendCard | None,
        disk_paths: Mapping[str, Path] | None = None,
        interval: float = 1.0,
        disk_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``send`` posts one card to the admin chat (None: alerts are only logged and shown).
        ``disk_paths``: label -> a directory whose filesystem is watched."""
        self._engine = engine
        self._sample = sample
        self._send = send
        self._disk_paths = dict(disk_paths or {})
        self._interval = interval
        self._disk_interval = disk_interval
        self._clock = clock
        self._disk: dict[str, tuple[str, int]] = {}
        self._cards: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._host = socket.gethostname()
        self.cards_sent = 0

    def turn_finished(self, outcome: str, error: BaseException | None = None) -> None:
        """Called for every finished turn (on the loop); never raises into the caller."""
        try:
            kind = turn_kind(outcome, error)
            reason = _reason(error) if error is not None else ""
            self._apply(self._engine.turn_finished(kind, self._clock(), reason))
        except Exception:
            logger.exception("alerts: could not judge a finished turn")

    def active(self) -> list[dict[str, Any]]:
        """The active conditions for /healthz: ``{condition, since, detail}``."""
        return [
            {"condition": str(c), "since": _iso(since), "detail": detail}
            for c, (since, detail) in self._engine.active().items()
        ]

    def gauges(self) -> dict[str, int]:
        """Every condition -> 1 when active, else 0 (for ``feishu_bot_alert_active``)."""
        active = self._engine.active()
        return {str(c): int(c in active) for c in Condition}

    def disk_free(self) -> dict[str, int]:
        """Label -> free bytes at the last measurement."""
        return {label: free for label, (_, free) in self._disk.items()}

    def check(self) -> None:
        """Take one sample now and act on it (the loop calls this every ``interval``)."""
        sample = dataclasses.replace(self._sample(), disk=dict(self._disk))
        self._apply(self._engine.observe(sample))

    async def run(self) -> None:
        """Sample until cancelled; the card sender runs alongside and ends with it."""
        loop = asyncio.get_running_loop()
        disk_due = loop.time()
        async with asyncio.TaskGroup() as tasks:
            if self._send is not None:
                tasks.create_task(self._sender(self._send), name="alerts-sender")
            while True:
                if self._disk_paths and loop.time() >= disk_due:
                    # a statvfs on a hung network filesystem must not stall the loop
                    self._disk = await asyncio.to_thread(disk_free, self._disk_paths)
                    disk_due = loop.time() + self._disk_interval
                try:
                    self.check()
                except Exception:
                    logger.exception("alerts: a check failed")
                await asyncio.sleep(self._interval)

    def _apply(self, transitions: list[Transition]) -> None:
        for t in transitions:
            if t.started:
                logger.warning("alert {} started: {}", t.condition, t.detail)
            else:
                logger.info("alert {} cleared: {}", t.condition, t.detail)
            if t.announce and self._send is not None:
                self._cards.put_nowait(alert_card(t, host=self._host))

    async def _sender(self, send: SendCard) -> None:
        while True:
            card = await self._cards.get()
            try:
                await send(card)
                self.cards_sent += 1
            except Exception as exc:
                logger.error("alerts: could not send an alert card to FEISHU_ADMIN_CHAT: {}", exc)


def disk_free(paths: Mapping[str, Path]) -> dict[str, tuple[str, int]]:
    """Label -> (path, free bytes) for each directory (its nearest existing parent)."""
    out: dict[str, tuple[str, int]] = {}
    for label, path in paths.items():
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        with contextlib.suppress(OSError):
            out[label] = (str(path), shutil.disk_usage(probe).free)
    return out


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def admin_chat_sender(replier: Any, target: str) -> SendCard | None:
    """How a card reaches FEISHU_ADMIN_CHAT (None when it is empty: alerts are only logged)."""
    if not target:
        return None
    # The prefix says which kind of id it is (the configuration allows only these two).
    kind = "chat_id" if target.startswith("oc_") else "open_id"

    async def send(card: dict[str, Any]) -> None:
        await replier.send(target, "interactive", card, receive_id_type=kind)

    return send


def sample_of(gateway: Any, stats: Any) -> Sample:
    """A sample from the gateway (None: its state does not count now) and the launcher's
    stats (None before the launcher exists)."""
    connected = None if gateway is None else bool(gateway.connected)
    if stats is None:
        return Sample(time.time(), ws_connected=connected)
    return Sample(
        time.time(),
        ws_connected=connected,
        reconnects=int(gateway.reconnects) if gateway is not None else 0,
        degraded=bool(stats.degraded),
        queued=stats.queued,
        queue_max=stats.queue_max,
        active=stats.active,
        max_concurrent=stats.max_concurrent,
        rejected=stats.rejected,
    )
