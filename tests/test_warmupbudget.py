"""Tests for mailer.warmupbudget: counting against the caps, reacting to replies, never over a cap."""

from __future__ import annotations

import math
from collections import Counter
from datetime import date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.providers import ProviderLimits
from mailer.reply import SMTPReply
from mailer.throttle import Throttle
from mailer.warmup import SendingIP, WarmupPlan
from mailer.warmupbudget import PACE_MINUTES, UNLIMITED, WarmupBudget

T0 = datetime(2026, 1, 7, 10, 0, tzinfo=timezone.utc)
START = date(2026, 1, 5)  # T0 is day 3 of the warm-up
IP = SendingIP("main", address="192.0.2.10", warming=True, start=START)
ACCEPTED = SMTPReply.parse(250, "2.0.0 OK", command="DATA")
SLOW_DOWN = SMTPReply.parse(421, "4.7.0 Try again later, closing connection.", command="RCPT")
BLOCKED = SMTPReply.parse(554, "5.7.1 Your IP address has been blocklisted", command="CONNECT")
NO_SUCH_USER = SMTPReply.parse(550, "5.1.1 The email account that you tried to reach does not exist", command="RCPT")


def plan(**changes: object) -> WarmupPlan:
    values: dict[str, object] = {"ips": (IP,)}
    values.update(changes)
    return WarmupPlan(**values)  # type: ignore[arg-type]


def spend(budget: WarmupBudget, provider: str, now: datetime, reply: SMTPReply = ACCEPTED, *, ip: str = "main") -> int:
    """Reserve and answer until the budget says no; returns how many went."""
    sent = 0
    while (grant := budget.reserve(ip, provider, now)) is not None:
        budget.record_reply(grant, reply, now)
        sent += 1
    return sent


def spend_hour(budget: WarmupBudget, provider: str, start: datetime, *, ip: str = "main") -> int:
    """Spend minute by minute for one hour (an hour's budget is paced over its minutes)."""
    return sum(spend(budget, provider, start + timedelta(minutes=minute), ip=ip) for minute in range(60))



def test_a_provider_gets_no_more_than_its_hourly_cap_then_the_next_hour_opens() -> None:
    """Day 3: Gmail's hour is 10; the 11th waits for the next hour, which has 10 again."""
    budget = WarmupBudget(plan())
    assert spend_hour(budget, "gmail", T0) == 10
    at, why = budget.next_opening("main", "gmail", T0 + timedelta(minutes=59))
    assert at == T0 + timedelta(hours=1) and "gmail's hourly cap 10 reached" in why
    assert budget.allowance("main", "gmail", T0 + timedelta(hours=1)) > 0


def test_a_day_is_capped_across_hours_and_providers() -> None:
    """All providers together never pass the IP's day (110 on day 3), however long the day."""
    budget = WarmupBudget(plan(min_hourly=200))
    total: Counter[str] = Counter()
    for minute in range(0, 14 * 60, 5):
        for provider in ("gmail", "microsoft", "yahoo", "apple", "other"):
            total[provider] += spend(budget, provider, T0 + timedelta(minutes=minute))
    assert sum(total.values()) == 110
    assert total["gmail"] <= 44 and total["microsoft"] <= 33 and total["apple"] <= 11


def test_an_hour_leaves_over_at_least_a_quarter_hour() -> None:
    """An hour's budget is paced: no more than a fifteenth of it in one minute."""
    budget = WarmupBudget(plan(schedule=(6000,) * 3))
    hour_cap = plan(schedule=(6000,) * 3).caps(IP, "gmail", T0.date()).hour
    assert hour_cap == 200
    assert spend(budget, "gmail", T0) == math.ceil(200 / PACE_MINUTES)


def test_a_421_halves_the_providers_hourly_cap_and_is_logged() -> None:
    """After a 421 from Microsoft, its hour holds half as many; Gmail is untouched."""
    budget = WarmupBudget(plan(schedule=(2400,) * 3))
    assert plan(schedule=(2400,) * 3).caps(IP, "microsoft", T0.date()).hour == 60
    grant = budget.reserve("main", "microsoft", T0)
    assert grant is not None
    decision = budget.record_reply(grant, SLOW_DOWN, T0)
    assert decision is not None and decision.startswith("main → microsoft: slowed to ×0.50")
    row = next(r for r in budget.status(T0) if r.provider == "microsoft")
    assert (row.hour_cap, row.state) == (30, "slowed")
    assert next(r for r in budget.status(T0) if r.provider == "gmail").hour_cap == 80


def test_a_block_pauses_the_provider_until_its_pause_ends() -> None:
    """A 554 block: nothing for that provider for 30 minutes, and the opening says so."""
    budget = WarmupBudget(plan())
    grant = budget.reserve("main", "yahoo", T0)
    assert grant is not None
    budget.record_reply(grant, BLOCKED, T0)
    assert budget.allowance("main", "yahoo", T0 + timedelta(minutes=29)) == 0
    at, why = budget.next_opening("main", "yahoo", T0 + timedelta(minutes=1))
    assert at == T0 + timedelta(minutes=30) and "yahoo paused" in why
    assert budget.allowance("main", "yahoo", T0 + timedelta(minutes=30)) > 0


def test_refused_recipients_count_as_attempts_but_do_not_slow() -> None:
    """A 550 user-unknown uses budget (the receiver saw it) and changes no throttle."""
    budget = WarmupBudget(plan())
    grant = budget.reserve("main", "gmail", T0)
    assert grant is not None
    assert budget.record_reply(grant, NO_SUCH_USER, T0) is None
    row = next(r for r in budget.status(T0) if r.provider == "gmail")
    assert (row.hour_used, row.state) == (1, "ok")


def test_a_released_attempt_gives_its_budget_back() -> None:
    """An attempt that never happened (no reply) is not counted."""
    budget = WarmupBudget(plan())
    before = budget.allowance("main", "gmail", T0)
    grant = budget.reserve("main", "gmail", T0)
    assert grant is not None
    budget.record_reply(grant, None, T0 + timedelta(minutes=2))
    assert budget.allowance("main", "gmail", T0 + timedelta(minutes=2)) == before


def test_warm_ips_are_limited_only_by_provider_rates() -> None:
    """Warm-up off: Gmail is held to its per-minute rate, `other` has no limit at all."""
    budget = WarmupBudget(plan(ips=(SendingIP("default"),), limits={"gmail": ProviderLimits(per_minute=30), "other": ProviderLimits()}))
    assert spend(budget, "gmail", T0, ip="default") == 30
    assert budget.allowance("default", "other", T0) == UNLIMITED
    assert not budget.warming("default", T0)


def test_the_ip_with_the_most_budget_left_is_picked() -> None:
    """With two warming IPs, the one further into its ramp (or less used) sends next."""
    older = SendingIP("older", warming=True, start=START - timedelta(days=5))
    budget = WarmupBudget(plan(ips=(IP, older)))
    assert budget.pick_ip("gmail", T0) == "older"
    spend_hour(budget, "gmail", T0, ip="older")
    spend_hour(budget, "gmail", T0, ip="main")
    assert budget.pick_ip("gmail", T0 + timedelta(minutes=59)) is None


def test_changes_rebuild_the_same_budget() -> None:
    """A budget built from the taken changes (what the store holds) has the same allowances."""
    budget = WarmupBudget(plan())
    spend_hour(budget, "gmail", T0 - timedelta(hours=1))
    grant = budget.reserve("main", "microsoft", T0)
    assert grant is not None
    budget.record_reply(grant, BLOCKED, T0)
    changes = budget.take_changes()
    assert not budget.take_changes()
    again = WarmupBudget(plan(), usage=changes.usage, throttles=changes.throttles)
    later = T0 + timedelta(minutes=5)
    for provider in ("gmail", "microsoft", "yahoo"):
        assert again.allowance("main", provider, later) == budget.allowance("main", provider, later)


def test_changes_that_failed_to_be_written_are_kept() -> None:
    """`restore` puts changes back, so the next take has them and the new ones together."""
    budget = WarmupBudget(plan())
    spend_hour(budget, "gmail", T0)
    failed = budget.take_changes()
    spend_hour(budget, "yahoo", T0 + timedelta(hours=1))
    budget.restore(failed)
    taken = budget.take_changes()
    assert {u.provider: u.attempts for u in taken.usage} == {"gmail": 10, "yahoo": 10}


# Never over a cap, whatever happens


REPLIES = {"accepted": ACCEPTED, "421": SLOW_DOWN, "block": BLOCKED, "unknown": NO_SUCH_USER, "none": None}


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gmail", "microsoft", "other"]),
            st.integers(min_value=0, max_value=900),
            st.integers(min_value=1, max_value=40),
            st.sampled_from(sorted(REPLIES)),
        ),
        max_size=200,
    )
)
def test_no_hour_day_or_minute_ever_exceeds_its_cap(steps: list[tuple[str, int, int, str]]) -> None:
    """Over random sends, deferrals, blocks and releases across days, every cap holds."""
    warmup = plan(schedule=(40, 60, 90, 135), min_hourly=3, limits={"gmail": ProviderLimits(per_minute=4), "microsoft": ProviderLimits(), "other": ProviderLimits()})
    start = datetime(2026, 1, 5, 20, 0, tzinfo=timezone.utc)
    budget = WarmupBudget(warmup)
    hours: Counter[tuple[str, date, int]] = Counter()
    days: Counter[tuple[str, date]] = Counter()
    ip_hours: Counter[tuple[date, int]] = Counter()
    ip_days: Counter[date] = Counter()
    minutes: dict[str, list[datetime]] = {}
    now = start
    for provider, seconds, burst, outcome in steps:
        now += timedelta(seconds=seconds)
        for _ in range(burst):
            left = budget.allowance("main", provider, now)
            grant = budget.reserve("main", provider, now)
            assert (grant is None) == (left == 0)
            if grant is None:
                break
            day, hour = now.date(), now.hour
            step = 0 if REPLIES[outcome] is None else 1
            hours[provider, day, hour] += step
            days[provider, day] += step
            ip_hours[day, hour] += step
            ip_days[day] += step
            minutes.setdefault(provider, []).append(now)
            budget.record_reply(grant, REPLIES[outcome], now)
            caps = warmup.caps(IP, provider, day)
            assert caps.day is not None and caps.hour is not None and caps.ip_day is not None and caps.ip_hour is not None
            assert hours[provider, day, hour] <= caps.hour and days[provider, day] <= caps.day
            assert ip_hours[day, hour] <= caps.ip_hour and ip_days[day] <= caps.ip_day
            window = [at for at in minutes[provider] if at > now - timedelta(minutes=1)]
            per_minute = min(math.ceil(caps.hour / PACE_MINUTES), 4 if provider == "gmail" else UNLIMITED)
            assert len(window) <= per_minute


def test_throttles_start_in_good_standing() -> None:
    """An (IP, provider) never seen is ok at ×1, with nothing to report."""
    throttle = WarmupBudget(plan()).throttle("main", "gmail", T0)
    assert throttle == Throttle() and throttle.state(T0) == "ok"


def test_accepted_messages_after_a_421_raise_the_rate_and_every_decision_is_logged() -> None:
    """50 accepted after a 421 raise Microsoft a step; both decisions are in the log queue."""
    budget = WarmupBudget(plan(schedule=(24_000,) * 3))
    grant = budget.reserve("main", "microsoft", T0)
    assert grant is not None
    budget.record_reply(grant, SLOW_DOWN, T0)
    raised = None
    for second in range(50):
        now = T0 + timedelta(minutes=5, seconds=4 * second)  # 15 a minute: within the pace
        grant = budget.reserve("main", "microsoft", now)
        assert grant is not None
        raised = budget.record_reply(grant, ACCEPTED, now) or raised
    assert raised == "main → microsoft: raised to ×0.75 after 50 accepted"
    decisions = budget.take_decisions()
    assert len(decisions) == 2 and "slowed to ×0.50" in decisions[0] and decisions[1] == raised
    assert budget.take_decisions() == []


def test_a_clean_period_that_ends_while_asking_is_logged_too() -> None:
    """Thirty quiet minutes after a 421, merely asking for the allowance raises the rate, and says so."""
    budget = WarmupBudget(plan())
    grant = budget.reserve("main", "gmail", T0)
    assert grant is not None
    budget.record_reply(grant, SLOW_DOWN, T0)
    budget.take_decisions()
    budget.allowance("main", "gmail", T0 + timedelta(minutes=30))
    assert budget.take_decisions() == ["main → gmail: raised to ×0.75 after 30m without a refusal"]
    assert ("main", "gmail") in budget.take_changes().throttles
