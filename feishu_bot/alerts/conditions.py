"""Alerts: conditions a person must hear about, as one card in the admin chat when each starts
and one when it clears.

``AlertEngine`` is the pure core: it is fed samples of the bot's state (``observe``) and turn
outcomes (``turn_finished``) with the time they were taken, and answers ``Transition``s. It
holds the conditions' state and the rules:

- ``ws_down``: the long connection has been down longer than ``ws_down_s``. The card cannot be
  sent while Feishu is unreachable, so it goes out when the connection is back, with the
  outage's length (the start is only logged).
- ``claude_auth``: a turn failed because Claude cannot authenticate (401/403, "not logged
  in"). One episode however many turns fail; a successful turn clears it.
- ``turn_failures``: more than half of the last ``window`` turns failed, or ``in_row`` in a
  row, counting only failures that are the bot's: not a user's stop, a timeout, a shutdown, a
  refused attachment, nor an authentication failure (``claude_auth`` already said so, and
  while it is active this condition does not start).
- ``degraded``: warm sessions fell back to one process per turn after repeated crashes.
- ``queue_full``: the queue has been at its limit (new messages refused as busy) for longer
  than ``queue_full_s``.
- ``disk_low``: less than ``disk_min_bytes`` free where CLAUDE_WORKDIR or the database live.
- ``sandbox_off``: the sandbox was unavailable at start (``sandbox_available=False``; None
  means the bot has no sandbox to speak of). It never clears within a run.

At most one start card per condition per ``repeat_s`` (an hour): a start inside that window
is logged and shown in /healthz but not sent, its clear is not sent either, and the next card
says how many episodes went unannounced.

The shell that samples the bot and sends the cards is ``alerts.service``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from feishu_bot import wording
from feishu_bot.errors import AttachmentError, ClaudeError, QueueFull

if TYPE_CHECKING:
    from feishu_bot.config import Settings

__all__ = [
    "AlertEngine",
    "Condition",
    "Sample",
    "Thresholds",
    "Transition",
    "TurnKind",
    "is_auth_failure",
    "turn_kind",
]

_MB = 1024 * 1024


class Condition(StrEnum):
    WS_DOWN = "ws_down"
    CLAUDE_AUTH = "claude_auth"
    TURN_FAILURES = "turn_failures"
    DEGRADED = "degraded"
    QUEUE_FULL = "queue_full"
    DISK_LOW = "disk_low"
    SANDBOX_OFF = "sandbox_off"


class TurnKind(StrEnum):
    OK = "ok"
    FAILED = "failed"  # the bot's failure: counts toward turn_failures
    AUTH = "auth"  # Claude cannot authenticate
    OTHER = "other"  # stop, timeout, shutdown, busy, a user's bad attachment: not counted


# The reasons `claude.protocol.classify` gives, and the CLI's own wording, for credentials the
# API refuses (measured on 2.1.329: "Invalid API key · Fix external API key" for a 401 without
# retries, api_retry lines with error "authentication_failed" with them).
_AUTH = re.compile(
    r"not logged in|api error 40[13]\b|authentication_failed|invalid api key", re.IGNORECASE
)


def is_auth_failure(error: BaseException | None) -> bool:
    """True when a failed turn's error says Claude cannot authenticate."""
    if not isinstance(error, ClaudeError):
        return False
    text = " ".join((str(error), *error.result_errors))
    return _AUTH.search(text) is not None


def turn_kind(outcome: str, error: BaseException | None = None) -> TurnKind:
    """What a finished turn (its metrics outcome and error) counts as for the alerts (pure)."""
    if outcome == "ok":
        return TurnKind.OK
    if outcome != "failed":
        return TurnKind.OTHER
    if is_auth_failure(error):
        return TurnKind.AUTH
    if isinstance(error, AttachmentError | QueueFull):
        return TurnKind.OTHER
    return TurnKind.FAILED


@dataclass(frozen=True, slots=True)
class Thresholds:
    ws_down_s: float = 60.0
    queue_full_s: float = 300.0
    disk_min_bytes: int = 1024 * _MB
    repeat_s: float = 3600.0
    window: int = 10
    in_row: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            ws_down_s=settings.ALERT_WS_DOWN_S,
            queue_full_s=settings.ALERT_QUEUE_FULL_S,
            disk_min_bytes=int(settings.ALERT_DISK_MIN_MB * _MB),
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """The bot's state at one instant. ``ws_connected`` None: unknown (starting, stopping).
    ``rejected``: busy refusals so far. ``disk``: label -> (path, free bytes)."""

    now: float
    ws_connected: bool | None = None
    reconnects: int = 0
    degraded: bool = False
    queued: int = 0
    queue_max: int = 0
    active: int = 0
    max_concurrent: int = 0
    rejected: int = 0
    disk: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    """A condition started (``started``) or cleared; ``announce``: send a card for it."""

    condition: Condition
    started: bool
    at: float
    since: float
    detail: str
    announce: bool
    unannounced: int = 0  # earlier episodes whose cards the hourly limit held back


@dataclass(slots=True)
class _Episode:
    since: float
    detail: str
    announced: bool
    base: int = 0  # a counter's value when the episode began (refusals, failed turns)


class AlertEngine:
    """The conditions' state and rules; see the module docstring. Pure: time comes in."""

    def __init__(self, thresholds: Thresholds, *, sandbox_available: bool | None = None,
                 sandbox_detail: str = "") -> None:
        self._t = thresholds
        self._sandbox = sandbox_available
        self._sandbox_detail = sandbox_detail or "the sandbox is unavailable"
        self._sandbox_done = False
        self._active: dict[Condition, _Episode] = {}
        self._last_card: dict[Condition, float] = {}
        self._held: dict[Condition, int] = {}
        self._results: deque[bool] = deque(maxlen=thresholds.window)  # True: failed
        self._in_row = 0
        self._last_error = ""
        self._auth_failed = 0
        self._ws_down_since: float | None = None
        self._full_since: float | None = None
        self._full_base = 0

    # -- state --------------------------------------------------------------------------------
    def active(self) -> dict[Condition, tuple[float, str]]:
        """The active conditions: condition -> (since, detail)."""
        return {c: (e.since, e.detail) for c, e in self._active.items()}

    # -- inputs -------------------------------------------------------------------------------
    def observe(self, s: Sample) -> list[Transition]:
        """One sample of the bot's state; the transitions it causes, in a fixed order."""
        out = [*self._ws(s), *self._degraded(s), *self._queue(s), *self._disk(s)]
        if self._sandbox is False and not self._sandbox_done:
            self._sandbox_done = True
            out.append(self._start(Condition.SANDBOX_OFF, s.now, s.now, self._sandbox_detail))
        return out

    def turn_finished(self, kind: TurnKind, now: float, error: str = "") -> list[Transition]:
        """One finished turn; the transitions it causes."""
        auth = self._active.get(Condition.CLAUDE_AUTH)
        if kind is TurnKind.AUTH:
            self._auth_failed += 1
            if auth is None:
                return [self._start(Condition.CLAUDE_AUTH, now, now,
                                    f"a turn failed: {error}")]
            since = wording.clock(auth.since)
            auth.detail = f"{self._auth_failed} turns failed since {since}: {error}"
            return []
        out: list[Transition] = []
        if kind is TurnKind.OK:
            if auth is not None:
                out.append(self._clear(
                    Condition.CLAUDE_AUTH, now,
                    f"a turn succeeded again; {self._auth_failed} turns had failed"))
            self._results.append(False)
            self._in_row = 0
        elif kind is TurnKind.FAILED:
            self._results.append(True)
            self._in_row += 1
            self._last_error = error
        else:
            return out
        return out + self._failures(now)

    # -- the rules ----------------------------------------------------------------------------
    def _failures(self, now: float) -> list[Transition]:
        t, cond = self._t, Condition.TURN_FAILURES
        failed = sum(self._results)
        failing = 2 * failed > t.window or self._in_row >= t.in_row
        episode = self._active.get(cond)
        detail = (f"{failed} of the last {len(self._results)} turns failed, {self._in_row} in a "
                  f"row; last error: {self._last_error or '?'}")
        if failing and episode is None and Condition.CLAUDE_AUTH not in self._active:
            return [self._start(cond, now, now, detail)]
        if failing and episode is not None:
            episode.detail = detail
        elif not failing and episode is not None:
            return [self._clear(cond, now, f"turns succeed again; {detail}")]
        return []

    def _ws(self, s: Sample) -> Iterator[Transition]:
        cond, limit = Condition.WS_DOWN, self._t.ws_down_s
        if s.ws_connected is None:
            return
        episode = self._active.get(cond)
        if not s.ws_connected:
            if self._ws_down_since is None:
                self._ws_down_since = s.now
            since = self._ws_down_since
            detail = f"the Feishu long connection has been down since {wording.clock(since)}"
            if episode is None and s.now - since > limit:
                yield self._start(cond, s.now, since, detail, send=False)
            elif episode is not None:
                episode.detail = f"{detail} ({wording.duration(s.now - since)})"
            return
        if self._ws_down_since is None:
            return
        since, self._ws_down_since = self._ws_down_since, None
        if episode is None:
            if s.now - since <= limit:
                return
            # it ended between two samples: the episode still happened
            yield self._start(cond, s.now, since, f"the Feishu long connection was down since "
                              f"{wording.clock(since)}", send=False)
        yield self._clear(cond, s.now, (
            f"the Feishu long connection was down for {wording.duration(s.now - since)}, from "
            f"{wording.clock(since)} to {wording.clock(s.now)}; it is connected again "
            f"(reconnects so far: {s.reconnects})"))

    def _degraded(self, s: Sample) -> Iterator[Transition]:
        cond = Condition.DEGRADED
        if s.degraded and cond not in self._active:
            yield self._start(cond, s.now, s.now, (
                "claude processes crashed 3 times in a row: every turn now starts a process of "
                "its own (slower) until 3 turns in a row run cleanly"))
        elif not s.degraded and cond in self._active:
            yield self._clear(cond, s.now, "claude processes work again: warm sessions are back")

    def _queue(self, s: Sample) -> Iterator[Transition]:
        cond = Condition.QUEUE_FULL
        if s.max_concurrent <= 0:
            return  # no launcher numbers in this sample
        # Full: the next message of a new conversation would be refused as busy.
        full = s.queued >= s.queue_max and (s.queue_max > 0 or s.active >= s.max_concurrent)
        episode = self._active.get(cond)
        if full:
            if self._full_since is None:
                self._full_since, self._full_base = s.now, s.rejected
            since = self._full_since
            detail = (f"the queue has been full for {wording.duration(s.now - since)}: {s.queued}/"
                      f"{s.queue_max} waiting, {s.active}/{s.max_concurrent} running, "
                      f"{s.rejected - self._full_base} messages refused as busy")
            if episode is None and s.now - since > self._t.queue_full_s:
                yield self._start(cond, s.now, since, detail)
            elif episode is not None:
                episode.detail = detail
            return
        self._full_since = None
        if episode is not None:
            yield self._clear(cond, s.now, (
                f"the queue has room again after {wording.duration(s.now - episode.since)}; "
                f"{s.rejected - self._full_base} messages were refused as busy"))

    def _disk(self, s: Sample) -> Iterator[Transition]:
        if not s.disk:
            return  # not measured yet
        cond, floor = Condition.DISK_LOW, self._t.disk_min_bytes
        low = [f"{free // _MB} MB free on {path} ({label})"
               for label, (path, free) in sorted(s.disk.items()) if free < floor]
        episode = self._active.get(cond)
        if low:
            detail = f"{'; '.join(low)}; the minimum is {floor // _MB} MB (ALERT_DISK_MIN_MB)"
            if episode is None:
                yield self._start(cond, s.now, s.now, detail)
            else:
                episode.detail = detail
        elif episode is not None:
            free = ", ".join(f"{free // _MB} MB on {path}" for path, free in s.disk.values())
            yield self._clear(cond, s.now, f"enough space again: {free}")

    # -- transitions --------------------------------------------------------------------------
    def _start(self, cond: Condition, now: float, since: float, detail: str, *,
               send: bool = True) -> Transition:
        last = self._last_card.get(cond)
        allowed = last is None or now - last >= self._t.repeat_s
        held = self._held.pop(cond, 0) if allowed else 0
        if allowed:
            self._last_card[cond] = now
        else:
            self._held[cond] = self._held.get(cond, 0) + 1
        self._active[cond] = _Episode(since, detail, allowed)
        return Transition(cond, True, now, since, detail, allowed and send, held)

    def _clear(self, cond: Condition, now: float, detail: str) -> Transition:
        episode = self._active.pop(cond)
        if cond is Condition.CLAUDE_AUTH:
            self._auth_failed = 0
        return Transition(cond, False, now, episode.since, detail, episode.announced)
