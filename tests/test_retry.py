"""Tests for mailer.retry: when a deferred message is tried again, and when it expires."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import RetryConfig
from mailer.retry import RetryPolicy

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
NO_JITTER = RetryPolicy(jitter=0.0)

durations = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=2))
jitters = st.floats(min_value=0.0, max_value=0.9)
attempts = st.integers(min_value=-5, max_value=10_000)


def test_delay_doubles_from_twenty_minutes_up_to_four_hours() -> None:
    """Without jitter the waits are 20m, 40m, 80m, 160m and then 4h for ever."""
    rng = random.Random(0)
    minutes = [NO_JITTER.delay(n, rng) / timedelta(minutes=1) for n in range(1, 9)]
    assert minutes == [20, 40, 80, 160, 240, 240, 240, 240]


def test_attempt_numbers_below_one_count_as_the_first() -> None:
    """Attempt 0 or a negative attempt waits the first delay rather than less."""
    rng = random.Random(0)
    assert NO_JITTER.delay(0, rng) == NO_JITTER.delay(-3, rng) == timedelta(minutes=20)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    """A message deferred thousands of times still gets the capped delay, not an OverflowError."""
    assert NO_JITTER.delay(10**6, random.Random(0)) == timedelta(hours=4)


@given(attempt=attempts, seed=st.integers())
def test_default_jitter_stays_within_twenty_percent(attempt: int, seed: int) -> None:
    """Each jittered delay is within ±20% of the unjittered one."""
    base = NO_JITTER.delay(attempt, random.Random(0))
    delay = RetryPolicy().delay(attempt, random.Random(seed))
    assert base * 0.8 <= delay <= base * 1.2


def test_jitter_actually_spreads_the_delays() -> None:
    """Different random draws give different delays, so retries do not arrive in waves."""
    rng = random.Random(42)
    assert len({RetryPolicy().delay(1, rng) for _ in range(20)}) > 1


@given(first=durations, max_interval=durations, attempt=st.integers(min_value=-5, max_value=200))
def test_delays_never_decrease_without_jitter(first: timedelta, max_interval: timedelta, attempt: int) -> None:
    """With jitter 0 each delay is at least the one before it."""
    policy = RetryPolicy(first=first, max_interval=max_interval, jitter=0.0)
    rng = random.Random(0)
    assert policy.delay(attempt + 1, rng) >= policy.delay(attempt, rng)


@given(first=durations, max_interval=durations, jitter=jitters, attempt=attempts, seed=st.integers())
def test_delay_never_exceeds_the_jittered_cap(
    first: timedelta, max_interval: timedelta, jitter: float, attempt: int, seed: int
) -> None:
    """No delay is longer than max_interval × (1 + jitter), nor negative."""
    policy = RetryPolicy(first=first, max_interval=max_interval, jitter=jitter)
    delay = policy.delay(attempt, random.Random(seed))
    assert timedelta(0) <= delay <= max_interval * (1 + jitter)


def test_next_attempt_is_now_plus_the_delay() -> None:
    """While the message is young, the next attempt is `now` plus the attempt's delay."""
    now = T0 + timedelta(hours=1)
    when = NO_JITTER.next_attempt(attempt=2, first_attempt_at=T0, now=now, rng=random.Random(0))
    assert when == now + timedelta(minutes=40)


def test_the_last_retry_is_made_at_max_age_then_the_message_expires() -> None:
    """A retry that would fall beyond four days is moved to the four-day mark; after it, none."""
    now = T0 + timedelta(days=4) - timedelta(hours=1)
    assert NO_JITTER.next_attempt(attempt=30, first_attempt_at=T0, now=now, rng=random.Random(0)) == T0 + timedelta(days=4)
    late = T0 + timedelta(days=4)
    assert NO_JITTER.next_attempt(attempt=31, first_attempt_at=T0, now=late, rng=random.Random(0)) is None


def test_next_attempt_exactly_at_max_age_is_still_made() -> None:
    """A retry landing exactly at max_age is the last one allowed."""
    now = T0 + timedelta(days=4) - timedelta(hours=4)
    assert NO_JITTER.next_attempt(attempt=30, first_attempt_at=T0, now=now, rng=random.Random(0)) == T0 + timedelta(days=4)


@given(seed=st.integers(), hours=st.integers(min_value=0, max_value=200))
def test_next_attempt_is_never_beyond_max_age(seed: int, hours: int) -> None:
    """Whatever the jitter draws, a scheduled retry is never later than first attempt + max_age."""
    policy = RetryPolicy()
    when = policy.next_attempt(
        attempt=hours // 4 + 1, first_attempt_at=T0, now=T0 + timedelta(hours=hours), rng=random.Random(seed)
    )
    assert when is None or T0 < when <= T0 + policy.max_age


def test_from_config_copies_every_setting() -> None:
    """A policy built from [retry] uses its four settings."""
    config = RetryConfig(
        first=timedelta(minutes=5), max_interval=timedelta(hours=1), max_age=timedelta(days=5), jitter=0.1
    )
    assert RetryPolicy.from_config(config) == RetryPolicy(
        first=timedelta(minutes=5), max_interval=timedelta(hours=1), max_age=timedelta(days=5), jitter=0.1
    )


def test_default_policy_equals_default_config() -> None:
    """The policy's own defaults are the configuration's defaults."""
    assert RetryPolicy.from_config(RetryConfig()) == RetryPolicy()


@pytest.mark.parametrize("attempt", [1, 5])
def test_same_seed_gives_same_delay(attempt: int) -> None:
    """The policy is pure: the same random state yields the same delay."""
    assert RetryPolicy().delay(attempt, random.Random(7)) == RetryPolicy().delay(attempt, random.Random(7))


def test_tries_by_reads_the_backoff_from_a_messages_age() -> None:
    """A message whose tries are not counted (a broken template) backs off by its age: 20 min, 40, 80, then the 4-hour cap."""
    policy = RetryPolicy()
    ages = [timedelta(0), timedelta(minutes=19), timedelta(minutes=20), timedelta(minutes=60), timedelta(minutes=140)]
    assert [policy.tries_by(age) for age in ages] == [1, 1, 2, 3, 4]
    delays = [policy.delay(policy.tries_by(timedelta(hours=h)), random.Random(1)) / timedelta(minutes=1) for h in (0, 1, 3, 24)]
    assert delays == sorted(delays) and delays[-1] <= 4 * 60 * 1.2
    assert policy.tries_by(timedelta(days=4)) < 40  # the cap stops the doubling: a day is six 4-hour waits
