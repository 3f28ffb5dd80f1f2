"""Tests for mailer.warmup: the ramp, the caps per IP and provider, engagement first, the brakes."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from conftest import make_config
from mailer.providers import ProviderLimits
from mailer.warmup import (
    DEFAULT_SCHEDULE,
    SendingIP,
    WarmupPlan,
    complaint_brake,
    daily_cap,
    hourly_cap,
    prioritize,
)

T0 = datetime(2026, 1, 7, 10, 0, tzinfo=timezone.utc)
START = date(2026, 1, 5)  # T0 is day 3 of the warm-up
IP = SendingIP("main", address="192.0.2.10", warming=True, start=START)


def plan(**changes: object) -> WarmupPlan:
    values: dict[str, object] = {"ips": (IP,)}
    values.update(changes)
    return WarmupPlan(**values)  # type: ignore[arg-type]


# The schedule


def test_the_default_ramp_starts_at_50_and_grows_about_half_a_day() -> None:
    """Day 1 is 50; each day is about ×1.5 the one before (two significant figures), for 30 days."""
    assert DEFAULT_SCHEDULE[0] == 50 and len(DEFAULT_SCHEDULE) == 30
    for before, after in zip(DEFAULT_SCHEDULE, DEFAULT_SCHEDULE[1:]):
        assert after > before
        assert 1.4 <= after / before <= 1.6


def test_past_the_schedule_an_ip_is_warm() -> None:
    """The day after the last entry has no cap; days before the start count as day 1."""
    assert daily_cap((10, 20), 1) == 10 and daily_cap((10, 20), 0) == 10
    assert daily_cap((10, 20), 2) == 20 and daily_cap((10, 20), 3) is None


def test_the_hourly_cap_spreads_a_day_with_a_floor() -> None:
    """A day's cap over 12 hours, at least 10 an hour, never more than the day's."""
    assert hourly_cap(1200, spread_hours=12, min_hourly=10) == 100
    assert hourly_cap(50, spread_hours=12, min_hourly=10) == 10
    assert hourly_cap(4, spread_hours=12, min_hourly=10) == 4


def test_each_provider_takes_its_share_of_the_ip_cap() -> None:
    """Day 3 is 110: Gmail may take 40% of it, a provider without a share takes `other`'s."""
    warmup = plan()
    caps = warmup.caps(IP, "gmail", T0.date())
    assert (caps.ip_day, caps.day) == (110, 44)
    assert caps.ip_hour == 10 and caps.hour == 10
    assert warmup.caps(IP, "docomo", T0.date()).day == 55


def test_an_ip_not_warming_has_no_caps() -> None:
    """Warm-up off (the implicit default IP): no daily or hourly caps at all."""
    caps = plan(ips=(SendingIP("default"),)).caps(SendingIP("default"), "gmail", T0.date())
    assert (caps.ip_day, caps.ip_hour, caps.day, caps.hour) == (None, None, None, None)


def test_plan_from_config_reads_ips_schedule_shares_and_limits(tmp_path: Path) -> None:
    """mailer.toml's [warmup], [ips.*] and [providers.*] become the plan."""
    config = make_config(
        tmp_path, 25,
        warmup={"enabled": True, "schedule": [100, 200], "shares": {"gmail": 0.8}, "pause_after": 2},
        ips={"main": {"address": "192.0.2.10", "warmup_start": "2026-01-06"}, "old": {"address": "192.0.2.11", "warmup": False}},
        providers={"gmail": {"per_minute": 50}},
    )
    warmup = WarmupPlan.from_config(config)
    assert warmup.ip("main").warming and not warmup.ip("old").warming
    assert warmup.caps(warmup.ip("main"), "gmail", T0.date()).day == 160
    assert warmup.provider_limits("gmail") == ProviderLimits(concurrency=10, per_connection=100, per_minute=50)
    assert warmup.policy.pause_after == 2


# Engagement first, complaints brake


def test_the_most_engaged_leads_go_first_and_ties_keep_their_order() -> None:
    """While warming, a budget of two goes to the two most engaged; equal scores stay in order."""
    leads = [("a", 0.0), ("b", 3.0), ("c", 1.0), ("d", 3.0)]
    assert [name for name, _ in prioritize(leads, lambda lead: lead[1])] == ["b", "d", "c", "a"]


@pytest.mark.parametrize(
    ("complaints", "delivered", "brake"),
    [(0, 10_000, "ok"), (9, 10_000, "ok"), (10, 10_000, "warn"), (29, 10_000, "warn"), (30, 10_000, "stop"), (0, 0, "ok"), (1, 0, "stop")],
)
def test_the_complaint_brake_follows_gmails_thresholds(complaints: int, delivered: int, brake: str) -> None:
    """0.1% of delivered mail complained about warns, 0.3% stops (Gmail's sender guidelines)."""
    assert complaint_brake(complaints, delivered) == brake


def test_one_complaint_in_a_tiny_volume_warns_but_does_not_stop() -> None:
    """Below min_delivered, a rate over the stop threshold is noise: warn at most."""
    assert complaint_brake(1, 50, min_delivered=1000) == "warn"
    assert complaint_brake(4, 1000, min_delivered=1000) == "stop"
