"""Tests for mailer.planner: what happens next to an enrollment whose step is due."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.conditions import Engagement, parse_condition
from mailer.leads import Lead
from mailer.planner import Decision, lead_zone, plan
from mailer.scenario import Entry, Reentry, Scenario, Step, load_scenario
from mailer.sendwindow import SendWindow, is_open

UTC = timezone.utc
TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
# Monday 2026-01-05
MONDAY_NOON_UTC = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
NOTHING = Engagement()

NURTURE = """
name: nurture
sender: default
entry:
  list: signups
timezone: America/New_York
send_window:
  days: weekdays
  hours: "09:00-17:00"
exit_when:
  attribute: stage
  in: [customer, SQL]
steps:
  - id: welcome
    subject: "Welcome"
    template: welcome.html
  - id: tips
    wait: 2d
    subject: "Tips"
    template: tips.html
    condition:
      opened: welcome
  - id: demo
    wait: 3d
    subject: "Demo"
    template: demo.html
    send_window:
      days: [tue]
      hours: "10:00-11:00"
"""

ANYTIME = """
name: anytime
sender: default
entry:
  list: signups
steps:
  - id: only
    wait: 1h
    subject: "Only"
    template: only.html
    condition:
      attribute: plan
      equals: pro
"""


@pytest.fixture
def nurture(tmp_path: Path) -> Scenario:
    path = tmp_path / "nurture.yaml"
    path.write_text(NURTURE, encoding="utf-8")
    return load_scenario(path)


@pytest.fixture
def anytime(tmp_path: Path) -> Scenario:
    path = tmp_path / "anytime.yaml"
    path.write_text(ANYTIME, encoding="utf-8")
    return load_scenario(path)


def lead(**fields: object) -> Lead:
    return Lead(email="ada@example.com", **fields)  # type: ignore[arg-type]


def decide(
    scenario: Scenario,
    step_index: int,
    *,
    who: Lead | None = None,
    engagement: Engagement = NOTHING,
    suppressed: bool = False,
    now: datetime = MONDAY_NOON_UTC,
) -> Decision:
    return plan(
        scenario,
        step_index=step_index,
        lead=who or lead(),
        engagement=engagement,
        suppressed=suppressed,
        now=now,
    )


# Exits


def test_suppressed_lead_exits(nurture: Scenario) -> None:
    """A lead who may no longer be mailed leaves the scenario, whatever else holds."""
    decision = decide(nurture, 0, suppressed=True, who=lead(stage="customer"))
    assert decision == Decision("exit", 0, None, "suppressed")


def test_goal_reached_exits_before_the_step(nurture: Scenario) -> None:
    """A lead who became a customer leaves before the next step is sent."""
    decision = decide(nurture, 1, who=lead(stage="customer"), engagement=Engagement(opened=frozenset({"welcome"})))
    assert decision == Decision("exit", 1, None, "goal reached")


def test_goal_is_checked_even_after_the_last_step(nurture: Scenario) -> None:
    """An enrollment past its last step that reached the goal counts as an exit, not a completion."""
    assert decide(nurture, 3, who=lead(stage="SQL")).action == "exit"


def test_past_the_last_step_completes(nurture: Scenario) -> None:
    """An enrollment past its last step is complete and never due again."""
    assert decide(nurture, 3) == Decision("complete", 3, None)


# Conditions


def test_unmet_condition_skips_with_next_wait_from_now(nurture: Scenario) -> None:
    """A lead who did not open `welcome` skips `tips`; `demo` is due its own wait after now."""
    monday_late = datetime(2026, 1, 5, 23, 30, tzinfo=UTC)  # 18:30 in New York: window closed
    decision = decide(nurture, 1, now=monday_late)
    assert decision.action == "skip"
    assert decision.step_index == 1
    assert decision.due_at == monday_late + timedelta(days=3)
    assert decision.reason == "condition not met"


def test_unmet_condition_on_the_last_step_ends(anytime: Scenario) -> None:
    """Skipping the last step leaves nothing due."""
    assert decide(anytime, 0, who=lead(attributes={"plan": "free"})) == Decision(
        "skip", 0, None, "condition not met"
    )


def test_met_condition_sends(nurture: Scenario) -> None:
    """A lead who opened `welcome` is sent `tips` inside the window, with `demo` due 3 days later."""
    nine_in_new_york = MONDAY_NOON_UTC + timedelta(hours=2)
    decision = decide(nurture, 1, engagement=Engagement(opened=frozenset({"welcome"})), now=nine_in_new_york)
    assert decision == Decision("send", 1, nine_in_new_york + timedelta(days=3))


def test_click_counts_as_open_for_a_condition(nurture: Scenario) -> None:
    """A lead whose client blocked the pixel but clicked still meets `opened: welcome`."""
    nine_in_new_york = MONDAY_NOON_UTC + timedelta(hours=2)
    decision = decide(nurture, 1, engagement=Engagement(clicked=frozenset({"welcome"})), now=nine_in_new_york)
    assert decision.action == "send"


# Send windows


def test_closed_window_waits_in_the_scenario_zone(nurture: Scenario) -> None:
    """A lead without a zone, due at 07:00 New York time, waits for the scenario's 09:00 opening there."""
    decision = decide(nurture, 0)
    assert decision.action == "wait"
    assert decision.due_at == datetime(2026, 1, 5, 9, 0, tzinfo=NEW_YORK)
    assert decision.reason == "outside the send window"


def test_closed_window_waits_for_the_leads_own_zone(nurture: Scenario) -> None:
    """For a Tokyo lead at 21:00 local Monday, the step waits until 09:00 Tuesday in Tokyo."""
    decision = decide(nurture, 0, who=lead(timezone="Asia/Tokyo"))
    assert decision == Decision("wait", 0, datetime(2026, 1, 6, 9, 0, tzinfo=TOKYO), "outside the send window")


def test_open_window_in_the_leads_zone_sends(nurture: Scenario) -> None:
    """At 12:00 UTC it is 13:00 in Berlin on a Monday, so a Berlin lead is sent the step now."""
    decision = decide(nurture, 0, who=lead(timezone="Europe/Berlin"))
    assert decision == Decision("send", 0, MONDAY_NOON_UTC + timedelta(days=2))


def test_invalid_lead_zone_falls_back_to_the_scenario_zone(nurture: Scenario) -> None:
    """A lead whose time zone is not an IANA name is treated as living in the scenario's zone."""
    assert decide(nurture, 0, who=lead(timezone="Mars/Olympus")) == decide(nurture, 0)
    assert lead_zone(lead(timezone="Mars/Olympus"), nurture) == NEW_YORK
    assert lead_zone(lead(timezone=""), nurture) == NEW_YORK
    assert lead_zone(lead(timezone="Asia/Tokyo"), nurture) == TOKYO


def test_step_window_overrides_the_scenario_window(nurture: Scenario) -> None:
    """`demo` goes out only on Tuesday 10–11 New York time, even when the scenario window is open."""
    monday_open = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # 10:00 Monday in New York
    decision = decide(nurture, 2, now=monday_open)
    assert decision == Decision("wait", 2, datetime(2026, 1, 6, 10, 0, tzinfo=NEW_YORK), "outside the send window")
    tuesday = datetime(2026, 1, 6, 10, 30, tzinfo=NEW_YORK)
    assert decide(nurture, 2, now=tuesday) == Decision("send", 2, None)


def test_condition_is_checked_before_the_window(nurture: Scenario) -> None:
    """A step the lead does not qualify for is skipped at once, without waiting for the window."""
    assert decide(nurture, 1, now=datetime(2026, 1, 10, 3, 0, tzinfo=UTC)).action == "skip"


def test_no_window_means_any_time(anytime: Scenario) -> None:
    """Without a send window the step is sent at 03:00 on a Sunday; the last step leaves nothing due."""
    sunday_night = datetime(2026, 1, 4, 3, 0, tzinfo=UTC)
    decision = decide(anytime, 0, who=lead(attributes={"plan": "Pro"}), now=sunday_night)
    assert decision == Decision("send", 0, None)


def test_scenario_without_timezone_defaults_to_utc(anytime: Scenario) -> None:
    """A scenario with no `timezone:` reads windows in UTC for leads without a zone."""
    assert anytime.timezone == "UTC"
    assert lead_zone(lead(), anytime) == ZoneInfo("UTC")


@given(
    now=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(["Asia/Tokyo", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", None]),
)
def test_sends_only_inside_the_window_and_waits_for_an_opening(now: datetime, zone: str | None) -> None:
    """For any instant, the planner sends when the window is open and otherwise waits until an instant when it is."""
    window = SendWindow(days=frozenset(range(5)), start=time(9), end=time(17))
    step = Step(id="a", wait=timedelta(0), subject="s", template="a.html", text_template=None,
                send_window=None, condition=None, line=1)
    scenario = Scenario(name="s", file="s.yaml", sender="default", entry=Entry(list_name=None, where=None),
                        steps=(step,), exit_when=None, reentry=Reentry(), timezone="America/New_York",
                        send_window=window)
    who = lead(timezone=zone)
    tz = ZoneInfo(zone or "America/New_York")
    decision = decide(scenario, 0, who=who, now=now)
    if is_open(now, window, tz):
        assert decision == Decision("send", 0, None)
    else:
        assert decision.action == "wait"
        assert decision.due_at is not None and decision.due_at > now
        assert is_open(decision.due_at, window, tz)
        assert decision.due_at - now <= timedelta(days=4)


def test_a_step_waits_while_the_previous_message_is_still_on_its_way(nurture: Scenario) -> None:
    """Step 2 is held while step 1's message is deferred, so steps never arrive out of order."""
    pending = MONDAY_NOON_UTC + timedelta(hours=3)
    decision = plan(
        nurture, step_index=1, lead=lead(), engagement=NOTHING, suppressed=False,
        now=MONDAY_NOON_UTC, previous_pending_until=pending,
    )
    assert decision.action == "wait" and decision.due_at is not None and decision.due_at > pending


def test_a_pending_previous_message_does_not_hold_an_exit(nurture: Scenario) -> None:
    """A suppressed lead exits at once even when a message of it is still queued."""
    decision = plan(
        nurture, step_index=1, lead=lead(), engagement=NOTHING, suppressed=True,
        now=MONDAY_NOON_UTC, previous_pending_until=MONDAY_NOON_UTC,
    )
    assert decision.action == "exit"


# Dynamic lists and lifecycle goals

HOT = """
name: hot
sender: default
entry:
  list: hot
exit_when: "stage >= SQL"
steps:
  - id: one
    subject: "One"
    template: one.html
  - id: two
    wait: 1d
    subject: "Two"
    template: two.html
"""


@pytest.fixture
def hot(tmp_path: Path) -> Scenario:
    path = tmp_path / "hot.yaml"
    path.write_text(HOT, encoding="utf-8")
    return load_scenario(path, segments={"hot": parse_condition("score >= 50 and grade >= B", file="lists.yaml", field="w")})


def test_a_lead_that_left_the_dynamic_list_exits_before_the_next_step(hot: Scenario) -> None:
    """The dynamic list's rule is checked again before every step: a lead whose score fell exits with the list's name."""
    assert decide(hot, 1, who=lead(score=70, grade="A")).action == "send"
    assert decide(hot, 1, who=lead(score=40, grade="A")) == Decision("exit", 1, None, "no longer in list hot")
    assert decide(hot, 0, who=lead(score=70, grade="C")) == Decision("exit", 0, None, "no longer in list hot")


def test_the_goal_wins_over_leaving_the_list(hot: Scenario) -> None:
    """A lead that became SQL exits for the goal, even if it also left the list."""
    assert decide(hot, 1, who=lead(score=0, stage="SQL")) == Decision("exit", 1, None, "goal reached")
    assert decide(hot, 1, who=lead(score=90, grade="A", stage="customer")).reason == "goal reached"


def test_a_finished_enrollment_completes_even_out_of_the_list(hot: Scenario) -> None:
    """Past the last step there is nothing left to hold back: the lead completes, not exits."""
    assert decide(hot, 2, who=lead(score=0)) == Decision("complete", 2, None)


def test_a_static_list_is_never_rechecked(nurture: Scenario) -> None:
    """A static list's members stay in the scenario whatever their score."""
    assert decide(nurture, 0, who=lead(timezone="Europe/Berlin", score=-100)).action == "send"
