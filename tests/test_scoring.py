"""Tests for mailer.scoring: events-table rows to scoring events, and the pure score."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.scoremodel import EVENT_TYPES, Contribution, ScoringEvent
from mailer.scoring import score, scoring_event
from mailer.scoringrules import ScoreRule

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def event(key: str, type_: str, at: datetime = NOW, name: str | None = None) -> ScoringEvent:
    return ScoringEvent(key=key, type=type_, at=at, name=name)


def rule(event_type: str, points: float, **options: Any) -> ScoreRule:
    name = options.pop("name", event_type if options.get("match") is None else f"{event_type} {options['match']}")
    return ScoreRule(name=name, event=event_type, points=points, **options)


# scoring_event: what each row of the events table means


def row(type_: str, data: dict[str, Any] | None = None, *, machine: bool = False, row_id: int = 7) -> ScoringEvent | None:
    return scoring_event(row_id, type_, NOW, machine, data or {})


def test_human_opens_and_clicks_score_with_the_link_tag_as_name() -> None:
    """A person's open and click become scoring events keyed by row id; a click is named by its data-tag."""
    assert row("opened", {"ip": "192.0.2.1"}) == event("e7", "opened")
    assert row("clicked", {"link": 2, "tag": "pricing", "url": "https://x.example/"}) == event("e7", "clicked", name="pricing")
    assert row("clicked", {"link": 1, "tag": "", "url": "https://x.example/"}) == event("e7", "clicked")


def test_machine_rows_never_score() -> None:
    """Opens and clicks judged to be a machine's (proxies, scanners) map to nothing."""
    assert row("opened", machine=True) is None
    assert row("clicked", {"tag": "pricing"}, machine=True) is None


def test_subscription_is_a_form_named_by_its_source_or_list() -> None:
    """A sign-up (subscribed row) is a form submission named by its form source, else by its list."""
    assert row("subscribed", {"list": "news", "status": "pending", "source": "webinar-page"}) == event(
        "e7", "form_submitted", name="webinar-page"
    )
    assert row("subscribed", {"list": "news", "status": "confirmed", "source": ""}) == event("e7", "form_submitted", name="news")


def test_consent_and_complaint_rows_keep_their_type() -> None:
    """Confirmed opt-ins, unsubscribes and complaints score under their own names."""
    assert row("confirmed", {"list": "news", "lifted": []}) == event("e7", "confirmed", name="news")
    assert row("unsubscribed", {"list": "", "method": "one-click"}) == event("e7", "unsubscribed")
    assert row("complained", {"bounce": 3, "reason": "feedback", "action": "complaint"}) == event("e7", "complained")


def test_api_rows_carry_their_name_and_the_callers_key() -> None:
    """Form, page and product events from the API are named by data.name and keyed by the caller's id."""
    assert row("form_submitted", {"name": "demo-request", "key": "crm-42"}) == event("crm-42", "form_submitted", name="demo-request")
    assert row("page_visit", {"name": "/pricing"}) == event("e7", "page_visit", name="/pricing")
    assert row("product_event", {"name": "invited_teammate", "key": ""}) == event("e7", "product_event", name="invited_teammate")


def test_only_hard_bounces_that_are_the_addresss_fault_score() -> None:
    """A DSN bounce row is `bounced` when the policy suppressed a hard bounce; soft and sender-side ones are not."""
    assert row("bounce", {"bounce": 1, "reason": "userunknown", "action": "suppress"}) == event("e7", "bounced")
    assert row("bounce", {"bounce": 1, "reason": "hostunknown", "action": "record"}) == event("e7", "bounced")
    assert row("bounce", {"bounce": 1, "reason": "mailboxfull", "action": "retry"}) is None
    assert row("bounce", {"bounce": 1, "reason": "mailboxfull", "action": "soft-bounce-escalation"}) is None
    assert row("bounce", {"bounce": 1, "reason": "blocked", "action": "sender-alert"}) is None


def test_failed_delivery_is_judged_from_its_smtp_reply() -> None:
    """A failed row (the reply stored by record_outcomes) is `bounced` only for an unknown user, not a block or a build error."""
    unknown = {"code": 550, "enhanced": "5.1.1", "text": "5.1.1 <a@b.example>: Recipient address rejected: User unknown",
               "command": "RCPT", "host": "mx.b.example"}
    blocked = {"code": 554, "enhanced": "5.7.1", "text": "Service unavailable; client host [192.0.2.1] blocked using zen.spamhaus.org",
               "command": "RCPT", "host": "mx.b.example"}
    assert row("failed", unknown) == event("e7", "bounced")
    assert row("failed", blocked) is None
    assert row("failed", {"detail": "template welcome.html: undefined variable"}) is None


def test_rows_that_are_not_behaviour_map_to_nothing() -> None:
    """Delivery bookkeeping and the engine's own history rows never score."""
    for type_ in ("sent", "deferred", "entered", "exited", "score_changed", "stage_changed", "unsuppressed"):
        assert row(type_) is None


# score: examples


def test_every_matching_rule_adds_up() -> None:
    """A click on the pricing link earns both `clicked` and `clicked pricing`; other clicks only the first."""
    rules = (rule("clicked", 5), rule("clicked", 15, match="pricing"))
    result = score([event("a", "clicked", name="pricing"), event("b", "clicked", name="case-study")], rules, NOW)
    assert result.score == 25
    assert result.contributions == (Contribution("clicked pricing", 1, 15.0), Contribution("clicked", 2, 10.0))


def test_name_patterns_are_globs_in_any_case() -> None:
    """A rule's name pattern matches with fnmatch wildcards and without regard to case."""
    rules = (rule("page_visit", 10, match="/pricing*"), rule("form_submitted", 30, match="Demo-Request"))
    events = [
        event("a", "page_visit", name="/pricing/enterprise"), event("b", "page_visit", name="/blog"),
        event("c", "form_submitted", name="demo-request"), event("d", "page_visit"),
    ]
    assert score(events, rules, NOW).score == 40


def test_daily_cap_spends_its_allowance_in_time_order_and_resets_each_utc_day() -> None:
    """With a cap of 12 on 5-point opens, a day's third open adds the 2 points left; the next UTC day starts afresh."""
    rules = (rule("opened", 5, daily_cap=12),)
    day1 = datetime(2025, 5, 30, 0, 0, tzinfo=timezone.utc)
    events = [event(f"a{i}", "opened", day1 + timedelta(hours=i)) for i in range(5)]
    events.append(event("late", "opened", day1 + timedelta(hours=23, minutes=59)))
    events.append(event("next", "opened", day1 + DAY))
    result = score(events, rules, day1)
    assert result.score == 12 + 5
    assert result.contributions == (Contribution("opened", 4, 17.0),)


def test_daily_cap_counts_negative_points_by_their_size() -> None:
    """A cap limits negative rules too: -10 points capped at 15 a day is -15 for three events on one day."""
    events = [event(str(i), "unsubscribed", NOW - timedelta(minutes=i)) for i in range(3)]
    assert score(events, (rule("unsubscribed", -10, daily_cap=15),), NOW).score == -15


def test_half_life_halves_points_per_half_life_of_age() -> None:
    """An event one half-life old is worth half, two half-lives a quarter."""
    rules = (rule("clicked", 40, half_life=timedelta(days=30)),)
    assert score([event("a", "clicked", NOW - 30 * DAY)], rules, NOW).score == 20
    assert score([event("a", "clicked", NOW - 60 * DAY)], rules, NOW).score == 10


def test_expired_points_drop_to_zero_at_the_window() -> None:
    """Points that expire after 90 days count in full until the 90th day and not at all from it."""
    rules = (rule("clicked", 5, expires_after=timedelta(days=90)),)
    clicked = [event("a", "clicked", NOW - 90 * DAY + timedelta(seconds=1))]
    assert score(clicked, rules, NOW).score == 5
    assert score(clicked, rules, NOW + timedelta(seconds=1)).score == 0
    assert score(clicked, rules, NOW + timedelta(seconds=1)).contributions == ()


def test_events_in_the_future_count_as_brand_new() -> None:
    """An event stamped after `now` (a clock ahead) counts with age 0, not more."""
    rules = (rule("clicked", 10, half_life=timedelta(days=1)),)
    assert score([event("a", "clicked", NOW + 5 * DAY)], rules, NOW).score == 10


def test_total_rounds_half_away_from_zero() -> None:
    """2.5 points make 3 and -2.5 make -3 (not round()'s half to even)."""
    assert score([event("a", "opened")], (rule("opened", 2.5),), NOW).score == 3
    assert score([event("a", "opened")], (rule("opened", -2.5),), NOW).score == -3
    assert score([event("a", "opened")], (rule("opened", 0.5),), NOW).score == 1


def test_product_score_is_the_product_event_part() -> None:
    """product_score adds only what product_event rules gave; score adds everything."""
    rules = (rule("product_event", 15, match="invited_teammate"), rule("opened", 3), rule("product_event", 1))
    events = [event("a", "product_event", name="invited_teammate"), event("b", "opened"), event("c", "product_event", name="x")]
    result = score(events, rules, NOW)
    assert (result.score, result.product_score) == (20, 17)


def test_last_engaged_is_the_latest_engagement_whatever_the_rules() -> None:
    """last_engaged_at is the newest open, click, form, page or product event, even one no rule scores."""
    events = [
        event("a", "opened", NOW - 3 * DAY), event("b", "page_visit", NOW - DAY, "/x"),
        event("c", "unsubscribed", NOW), event("d", "bounced", NOW),
    ]
    assert score(events, (), NOW).last_engaged_at == NOW - DAY
    assert score([event("c", "unsubscribed")], (), NOW).last_engaged_at is None


def test_no_rules_no_events_nothing() -> None:
    """Without rules every lead scores 0; events of types no rule names are ignored."""
    assert score([event("a", "opened")], (), NOW).score == 0
    result = score([event("a", "complained")], (rule("opened", 3),), NOW)
    assert (result.score, result.contributions) == (0, ())


def test_a_replayed_key_counts_once_and_a_conflicting_replay_is_settled_the_same_way() -> None:
    """Two events with one key count once, and which one counts does not depend on arrival order."""
    rules = (rule("clicked", 5), rule("clicked", 20, match="pricing"))
    first, second = event("k", "clicked", NOW, "pricing"), event("k", "clicked", NOW - DAY, "other")
    assert score([first, first], rules, NOW).score == 25
    assert score([first, second], rules, NOW) == score([second, first], rules, NOW)


def test_rules_as_a_list_score_like_the_tuple() -> None:
    """A list of rules (not cached, since it may change) scores exactly like the same rules as a tuple."""
    rules = [rule("opened", 3, daily_cap=6), rule("clicked", 5, match="p*")]
    events = [event("a", "opened"), event("b", "clicked", name="pricing")]
    assert score(events, rules, NOW) == score(events, tuple(rules), NOW)
    rules[1] = rule("clicked", 50, match="p*")
    assert score(events, rules, NOW).score == 53


# score: properties

_NAMES = ("pricing", "case-study", "/pricing", "/blog", "demo-request", "invited_teammate")
_TIMES = st.integers(min_value=-200 * 86_400, max_value=86_400).map(lambda s: NOW + timedelta(seconds=s))
_EVENTS = st.lists(
    st.builds(ScoringEvent, key=st.just(""), type=st.sampled_from(EVENT_TYPES), at=_TIMES,
              name=st.none() | st.sampled_from(_NAMES)),
    max_size=40,
).map(lambda found: [ScoringEvent(f"e{index}", e.type, e.at, e.name) for index, e in enumerate(found)])


@st.composite
def _rules(draw: st.DrawFn, *, non_negative: bool = False) -> tuple[ScoreRule, ...]:
    found: list[ScoreRule] = []
    for index in range(draw(st.integers(0, 6))):
        low = 0 if non_negative else -50
        found.append(ScoreRule(
            name=f"r{index}",
            event=draw(st.sampled_from(EVENT_TYPES)),
            points=draw(st.integers(low, 50) | st.floats(low, 50, allow_nan=False).map(lambda x: round(x, 3))),
            match=draw(st.none() | st.sampled_from((*_NAMES, "*pricing*", "/*"))),
            daily_cap=draw(st.none() | st.integers(1, 60).map(float)),
            half_life=draw(st.none() | st.integers(3600, 90 * 86_400).map(lambda s: timedelta(seconds=s))),
            expires_after=draw(st.none() | st.integers(3600, 180 * 86_400).map(lambda s: timedelta(seconds=s))),
        ))
    return tuple(found)


@given(_EVENTS, _rules(), st.randoms(use_true_random=False))
def test_score_does_not_depend_on_event_order(events: list[ScoringEvent], rules: tuple[ScoreRule, ...], rng: random.Random) -> None:
    """Any arrival order of the same events gives the same result, to the last contribution."""
    shuffled = list(events)
    rng.shuffle(shuffled)
    assert score(shuffled, rules, NOW) == score(events, rules, NOW)


@given(_EVENTS, _rules(), st.data())
def test_replayed_events_change_nothing(events: list[ScoringEvent], rules: tuple[ScoreRule, ...], data: st.DataObject) -> None:
    """Feeding any events again (a replay, a retried import) leaves the result as it was."""
    replayed = data.draw(st.lists(st.sampled_from(events), max_size=20)) if events else []
    assert score(events + replayed, rules, NOW) == score(events, rules, NOW)


@given(_EVENTS, _rules(non_negative=True), st.integers(0, 400 * 86_400), st.integers(0, 400 * 86_400))
def test_decay_never_raises_a_score_as_time_passes(
    events: list[ScoringEvent], rules: tuple[ScoreRule, ...], earlier: int, later: int
) -> None:
    """With no negative rules, the score at a later `now` is never above the score at an earlier one."""
    earlier, later = sorted((earlier, later))
    before = score(events, rules, NOW + timedelta(seconds=earlier))
    after = score(events, rules, NOW + timedelta(seconds=later))
    assert after.score <= before.score
    assert after.product_score <= before.product_score


@given(_EVENTS, _rules())
def test_daily_caps_hold_per_rule_per_utc_day(events: list[ScoringEvent], rules: tuple[ScoreRule, ...]) -> None:
    """A capped rule yields, per UTC day, the smaller of its cap and what that day's events would give uncapped."""
    rules = tuple(replace(r, half_life=None, expires_after=None) for r in rules)
    days: dict[date, list[ScoringEvent]] = defaultdict(list)
    for ev in events:
        days[ev.at.date()].append(ev)
    got = {part.rule: abs(part.points) for part in score(events, rules, NOW).contributions}
    for capped in rules:
        free = (replace(capped, daily_cap=None),)
        expected = 0.0
        for day_events in days.values():
            day_points = sum(abs(part.points) for part in score(day_events, free, NOW).contributions)
            expected += day_points if capped.daily_cap is None else min(capped.daily_cap, day_points)
        assert math.isclose(got.get(capped.name, 0.0), expected, abs_tol=0.005 * (len(days) + 1))
        if capped.daily_cap is not None:
            assert got.get(capped.name, 0.0) <= capped.daily_cap * len(days) + 0.005


def test_shipped_rules_make_an_engaged_reader_score_above_fifty() -> None:
    """Under scenarios/scoring.yaml a reader who opens and clicks the first three emails reaches 50 within a week."""
    from pathlib import Path

    from mailer.scoringrules import load_scoring

    config = load_scoring(Path(__file__).parent.parent / "scenarios" / "scoring.yaml")
    start = NOW - 7 * DAY
    events = [
        event("o1", "opened", start + timedelta(hours=3)), event("c1", "clicked", start + timedelta(hours=3, minutes=1)),
        event("o2", "opened", start + 2 * DAY), event("c2", "clicked", start + 2 * DAY, "case-study"),
        event("o3", "opened", start + 6 * DAY), event("c3", "clicked", start + 6 * DAY, "webinar"),
    ]
    assert score(events, config.rules, NOW).score >= 50
    assert score(events[:4], config.rules, NOW).score < 50


@pytest.mark.parametrize("size", [1, 50])
def test_rules_are_compiled_once_per_rule_tuple(size: int) -> None:
    """Scoring many leads with one rules tuple reuses its compiled plan (same result as a fresh tuple)."""
    rules = tuple(rule("opened", 1, name=f"r{i}") for i in range(size))
    events = [event("a", "opened")]
    assert score(events, rules, NOW).score == size
    assert score(events, tuple(rules), NOW).score == size
