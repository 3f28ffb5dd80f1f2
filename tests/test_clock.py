"""Tests for mailer.clock: real, accelerated and fake time."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest

from mailer.clock import AcceleratedClock, FakeClock, SystemClock

START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


async def test_fake_clock_stands_still_until_advanced() -> None:
    """A FakeClock reads the same instant until a test moves it."""
    clock = FakeClock(START)
    assert clock.now() == START
    await asyncio.sleep(0.01)
    assert clock.now() == START
    await clock.advance(minutes=90)
    assert clock.now() == START + timedelta(minutes=90)


def test_fake_clock_default_start_is_aware_utc() -> None:
    """Without a start the fake clock begins at a fixed, timezone-aware UTC instant."""
    now = FakeClock().now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)


async def test_advance_wakes_sleepers_in_wake_order() -> None:
    """Sleepers wake in the order of their wake-up times, not the order they went to sleep, each seeing its own time."""
    clock = FakeClock(START)
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(name, s)) for name, s in (("c", 3600), ("a", 60), ("b", 600))]
    await asyncio.sleep(0)
    await clock.advance(hours=2)
    await asyncio.gather(*tasks)
    assert woke == [
        ("a", START + timedelta(seconds=60)),
        ("b", START + timedelta(seconds=600)),
        ("c", START + timedelta(seconds=3600)),
    ]
    assert clock.now() == START + timedelta(hours=2)


async def test_advance_leaves_later_sleepers_asleep() -> None:
    """A sleeper due after the advanced-to instant keeps sleeping until a later advance reaches it."""
    clock = FakeClock(START)
    task = asyncio.create_task(clock.sleep(3600))
    await asyncio.sleep(0)
    await clock.advance(minutes=59)
    assert not task.done()
    await clock.advance(timedelta(minutes=1))
    assert task.done()


async def test_equal_wake_times_wake_in_sleep_order() -> None:
    """Two sleepers due at the same instant wake in the order they went to sleep."""
    clock = FakeClock(START)
    woke: list[int] = []

    async def sleeper(number: int) -> None:
        await clock.sleep(60)
        woke.append(number)

    tasks = [asyncio.create_task(sleeper(n)) for n in range(5)]
    await asyncio.sleep(0)
    await clock.advance(minutes=1)
    await asyncio.gather(*tasks)
    assert woke == [0, 1, 2, 3, 4]


async def test_periodic_loop_ticks_once_per_period() -> None:
    """A loop sleeping an hour at a time ticks three times, on the hour, when the clock moves three hours."""
    clock = FakeClock(START)
    ticks: list[datetime] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(3600)
            ticks.append(clock.now())

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await clock.advance(hours=3)
    task.cancel()
    assert ticks == [START + timedelta(hours=h) for h in (1, 2, 3)]


async def test_zero_sleep_returns_without_advancing() -> None:
    """Sleeping zero or negative time on a fake clock returns at once."""
    clock = FakeClock(START)
    await asyncio.wait_for(clock.sleep(0), timeout=1)
    await asyncio.wait_for(clock.sleep(-5), timeout=1)
    assert clock.now() == START


async def test_cancelled_sleeper_does_not_break_advance() -> None:
    """A sleeper cancelled before its time is skipped when the clock passes it."""
    clock = FakeClock(START)
    cancelled = asyncio.create_task(clock.sleep(60))
    kept = asyncio.create_task(clock.sleep(120))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    await clock.advance(minutes=5)
    assert cancelled.cancelled()
    assert kept.done() and not kept.cancelled()


async def test_accelerated_clock_runs_faster_than_real_time() -> None:
    """At speed 3600 a real tenth of a second is about six virtual minutes."""
    clock = AcceleratedClock(3600, start=START)
    began = time.monotonic()
    await asyncio.sleep(0.1)
    real = time.monotonic() - began
    elapsed = (clock.now() - START).total_seconds()
    assert 0.1 * 3600 <= elapsed <= (real + 0.05) * 3600


async def test_accelerated_sleep_takes_scaled_real_time() -> None:
    """Sleeping an hour of clock time at speed 36000 takes about a tenth of a second."""
    clock = AcceleratedClock(36000, start=START)
    began = time.monotonic()
    await clock.sleep(3600)
    real = time.monotonic() - began
    assert 0.09 <= real < 1.0
    assert clock.now() - START >= timedelta(hours=1)


def test_accelerated_clock_starts_now_by_default() -> None:
    """Without a start, accelerated time begins at the current real instant."""
    before = datetime.now(timezone.utc)
    now = AcceleratedClock(1.0).now()
    assert before <= now <= datetime.now(timezone.utc) + timedelta(seconds=1)


@pytest.mark.parametrize("speed", [0, -1.0])
def test_accelerated_clock_refuses_a_clock_that_does_not_run(speed: float) -> None:
    """A speed of zero or less is refused."""
    with pytest.raises(ValueError):
        AcceleratedClock(speed)


async def test_system_clock_is_aware_utc_and_sleeps() -> None:
    """The system clock reads timezone-aware UTC and sleeps real time."""
    clock = SystemClock()
    before = clock.now()
    await clock.sleep(0.01)
    assert before.utcoffset() == timedelta(0)
    assert clock.now() > before


async def test_sleep_until_a_time_already_passed_returns_at_once() -> None:
    """A deadline read before the clock moved does not sleep past it (the daemon's idle race)."""
    clock = FakeClock(datetime(2026, 1, 5, tzinfo=timezone.utc))
    deadline = clock.now() + timedelta(minutes=5)
    await clock.advance(hours=2)
    await asyncio.wait_for(clock.sleep_until(deadline), 1.0)
    assert clock.now() == datetime(2026, 1, 5, 2, tzinfo=timezone.utc)


async def test_sleep_until_a_future_time_waits_for_advance() -> None:
    """sleep_until wakes when the clock reaches the deadline, not before."""
    clock = FakeClock(datetime(2026, 1, 5, tzinfo=timezone.utc))
    sleeper = asyncio.create_task(clock.sleep_until(clock.now() + timedelta(minutes=10)))
    await clock.advance(minutes=9)
    assert not sleeper.done()
    await clock.advance(minutes=1)
    await asyncio.wait_for(sleeper, 1.0)
