"""What happens next to an enrollment whose step is due: a pure decision.

Order of checks, each one the reason a marketer would give:

1. the lead may no longer be mailed (suppressed) → exit;
2. the scenario's goal (`exit_when`) is reached → exit, before any further step;
3. the lead no longer matches the rule of the dynamic list it entered by → exit, since a
   dynamic list is evaluated at send time (mailer.segments);
4. the previous step's message is still on its way (deferred, say) → wait for it, so that
   steps arrive in order and conditions on it see its fate;
5. the step's condition does not hold → skip it, the next step's wait counts from now;
6. the send window is closed in the lead's time zone → wait until it opens;
7. otherwise → queue the step's message; the next step is due after its own wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailer.conditions import Engagement
from mailer.leads import Lead
from mailer.scenario import Scenario
from mailer.sendwindow import next_open


# How long after a pending previous message is due to look again.
PENDING_RECHECK = timedelta(minutes=1)


@dataclass(frozen=True)
class Decision:
    """The planner's answer: `action` is send, skip, wait, exit or complete."""

    action: str
    step_index: int  # the step acted on (send, skip, wait) or the position left at
    due_at: datetime | None  # when the enrollment is due next; None when it ends
    reason: str = ""


def plan(
    scenario: Scenario,
    *,
    step_index: int,
    lead: Lead,
    engagement: Engagement,
    suppressed: bool,
    now: datetime,
    previous_pending_until: datetime | None = None,
) -> Decision:
    """Decide what to do with an enrollment at `step_index` that is due at `now`."""
    if suppressed:
        return Decision("exit", step_index, None, "suppressed")
    if scenario.exit_when is not None and scenario.exit_when.evaluate(lead, engagement):
        return Decision("exit", step_index, None, "goal reached")
    if step_index >= len(scenario.steps):
        return Decision("complete", step_index, None)
    segment = scenario.entry.segment
    if segment is not None and not segment.evaluate(lead, engagement):
        return Decision("exit", step_index, None, f"no longer in list {scenario.entry.list_name}")
    if previous_pending_until is not None:
        recheck = max(previous_pending_until, now) + PENDING_RECHECK
        return Decision("wait", step_index, recheck, "the previous step is not delivered yet")
    step = scenario.steps[step_index]
    if step.condition is not None and not step.condition.evaluate(lead, engagement):
        return Decision("skip", step_index, _next_due(scenario, step_index, now), "condition not met")
    window = step.send_window or scenario.send_window
    if window is not None:
        opens = next_open(now, window, lead_zone(lead, scenario))
        if opens > now:
            return Decision("wait", step_index, opens, "outside the send window")
    return Decision("send", step_index, _next_due(scenario, step_index, now))


def _next_due(scenario: Scenario, step_index: int, now: datetime) -> datetime | None:
    following = step_index + 1
    if following >= len(scenario.steps):
        return None
    return now + scenario.steps[following].wait


def lead_zone(lead: Lead, scenario: Scenario) -> ZoneInfo:
    """The lead's own time zone when it has a valid one, else the scenario's default."""
    return _zone(lead.timezone) or _zone(scenario.timezone) or ZoneInfo("UTC")


@lru_cache(maxsize=512)
def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
