"""The health line (pure) and the monitor loop that must never die."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from loguru import logger

from feishu_bot.claude.launcher import LauncherStats, RunningTurn
from feishu_bot.health import HealthMonitor, HealthSnapshot, format_health, take_snapshot


def stats(**overrides: object) -> LauncherStats:
    values: dict[str, object] = {
        "active": 3,
        "max_concurrent": 5,
        "queued": 2,
        "oldest_wait_s": 41.2,
        "ok": 120,
        "failed": 3,
        "retried": 7,
        "stale_cleared": 2,
        "timeouts": 1,
        "running": (),
    }
    values.update(overrides)
    return LauncherStats(**values)  # type: ignore[arg-type]


@pytest.fixture
def records() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    sink = logger.add(lambda m: seen.append((m.record["level"].name, m.record["message"])))
    yield seen
    logger.remove(sink)


def test_line_has_every_number_and_is_info_below_capacity() -> None:
    snap = take_snapshot(stats(), rss_bytes=74 * 1024 * 1024)
    level, line = format_health(snap)
    assert level == "INFO"
    assert line == (
        "health: active 3/5 (60%) queued 2 oldest 41s ok 120 failed 3 timeouts 1 retried 7 "
        "stale-cleared 2 rss 74MB"
    )


def test_warning_at_capacity() -> None:
    level, line = format_health(take_snapshot(stats(active=5)))
    assert level == "WARNING"
    assert "active 5/5 (100%)" in line


def test_warning_when_a_turn_used_most_of_its_timeout() -> None:
    running = (RunningTurn("p2p:a", 100.0, 600.0), RunningTurn("group:b", 500.0, 600.0))
    snap = take_snapshot(stats(active=2, running=running))
    assert snap.near_timeout == (running[1],)
    level, line = format_health(snap)
    assert level == "WARNING"
    assert line.endswith("near-timeout 1 (group:b 500/600s)")
    # exactly 80% is not yet "more than 80%"
    edge = take_snapshot(stats(active=1, running=(RunningTurn("k", 480.0, 600.0),)))
    assert format_health(edge)[0] == "INFO"


def test_extras_are_appended_in_order() -> None:
    snap = take_snapshot(stats(), extras={"ws": "up", "connected": True, "reconnects": 2})
    _, line = format_health(snap)
    assert line.endswith("ws up connected yes reconnects 2")


def test_missing_stats_give_zeros_and_a_dict_view() -> None:
    snap = take_snapshot(None, rss_bytes=3 * 1024 * 1024, now=123.0)
    assert format_health(snap) == (
        "INFO",
        "health: active 0/0 (0%) queued 0 oldest 0s ok 0 failed 0 timeouts 0 retried 0 "
        "stale-cleared 0 rss 3MB",
    )
    data = snap.as_dict()
    assert data["rss_mb"] == 3.0 and data["taken_at"] == 123.0 and data["load_pct"] == 0


def test_snapshot_uses_the_real_rss_by_default() -> None:
    monitor = HealthMonitor(30.0, launcher_stats=stats)
    snap = monitor.snapshot()
    assert snap.rss_bytes > 10 * 1024 * 1024
    assert snap.active == 3 and snap.errors == ()


def test_a_raising_source_is_reported_not_raised(records: list[tuple[str, str]]) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("gateway gone")

    monitor = HealthMonitor(30.0, launcher_stats=stats, extras=broken, rss=lambda: 0)
    snap = monitor.tick()
    assert isinstance(snap, HealthSnapshot)
    assert snap.active == 3
    assert snap.errors and "gateway gone" in snap.errors[0]
    levels = [level for level, _ in records]
    assert "ERROR" in levels
    assert any(msg.startswith("health: active 3/5") for _, msg in records)


async def test_monitor_keeps_running_through_errors(records: list[tuple[str, str]]) -> None:
    calls = 0
    six_calls = asyncio.Event()

    def flaky() -> LauncherStats:
        nonlocal calls
        calls += 1
        if calls >= 6:
            six_calls.set()
        if calls % 2:
            raise ValueError("boom")
        return stats(active=calls % 5)

    monitor = HealthMonitor(0.01, launcher_stats=flaky, rss=lambda: 1)
    task = asyncio.create_task(monitor.run())
    async with asyncio.timeout(5):
        await six_calls.wait()
    await asyncio.sleep(0)  # let the sixth tick write its line
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    lines = [msg for _, msg in records if msg.startswith("health: ")]
    assert len(lines) >= 6  # one line per tick, failing source or not
    assert any(level == "ERROR" for level, _ in records)


async def test_monitor_survives_a_broken_formatter(
    records: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import feishu_bot.health as health

    failures = 0
    three_failures = asyncio.Event()

    def broken(snapshot: HealthSnapshot) -> tuple[str, str]:
        nonlocal failures
        failures += 1
        if failures >= 3:
            three_failures.set()
        raise RuntimeError("formatter bug")

    monkeypatch.setattr(health, "format_health", broken)
    monitor = HealthMonitor(0.01, launcher_stats=stats, rss=lambda: 1)
    task = asyncio.create_task(monitor.run())
    async with asyncio.timeout(5):
        await three_failures.wait()
    await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sum(1 for level, msg in records if msg == "health: tick failed") >= 3


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HealthMonitor(0)
