"""The values that cross between scoring, grading, the lifecycle, the store and the API.

Behaviour becomes pipeline in one direction (see DESIGN.md):

    events ─► mailer.scoring (score) ─┐
    profile ─► mailer.grading (grade) ├─► mailer.stages (stage) ─► history, triggers, webhooks
    accounts ◄─ roll-up of lead scores┘

Each arrow is a pure function over these values; mailer.scoringengine runs them in the daemon
and the store writes what they return in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailer.leads import Lead

# Grades, best first: A–D and F, like school grades (and Pardot's letters without +/−).
GRADES = ("A", "B", "C", "D", "F")
# Lifecycle stages as written everywhere (files, CLI, API, webhooks); input is read without
# regard to case. Rank orders them for `stage >= SQL`: PQL sits with MQL (ready for sales by
# product use rather than marketing engagement), SGL with SAL (sales already own it), and
# recycled below lead (back in nurture).
STAGES = ("lead", "MQL", "PQL", "SAL", "SGL", "SQL", "customer", "recycled")
STAGE_RANK: Mapping[str, int] = {
    "recycled": 0, "lead": 1, "MQL": 2, "PQL": 2, "SAL": 3, "SGL": 3, "SQL": 4, "customer": 5,
}
ACCOUNT_STAGES = ("", "MQA")


def canonical_stage(text: str) -> str | None:
    """The stage `text` names (any case), or None when it names none."""
    wanted = text.strip().casefold()
    return next((stage for stage in STAGES if stage.casefold() == wanted), None)


# What the rules file may give points for. The events table's own types map onto these in
# mailer.scoring.scoring_event (opened/clicked by a person, subscribed → form_submitted, …).
EVENT_TYPES = (
    "opened", "clicked", "form_submitted", "confirmed", "page_visit", "product_event",
    "unsubscribed", "bounced", "complained",
)
# What other systems may post through the API (the rest come from mail and tracking).
API_EVENT_TYPES = ("form_submitted", "page_visit", "product_event")
# The events table types that can change a score; the store re-scores a lead when one is
# written (or when a stored one is re-judged human → machine).
SCORED_ROW_TYPES = (
    "opened", "clicked", "subscribed", "confirmed", "unsubscribed", "bounce", "failed", "complained",
    *API_EVENT_TYPES,
)
# Events that show a person is paying attention (recycling counts time from the last one).
ENGAGEMENT_TYPES = frozenset({"opened", "clicked", "form_submitted", "confirmed", "page_visit", "product_event"})


@dataclass(frozen=True)
class ScoringEvent:
    """One event as scoring sees it: a person's, never a machine's (those are never scored)."""

    key: str  # unique per event ("e<events.id>", or the API caller's event id): replays count once
    type: str  # one of EVENT_TYPES
    at: datetime
    name: str | None = None  # click: the link's data-tag; form: its name; page: its path; product: the event name


@dataclass(frozen=True)
class Contribution:
    """What one scoring rule added to a score, for "why is this lead an MQL?"."""

    rule: str  # the rule's name, as written or derived ("clicked pricing")
    events: int  # events it counted (after its daily cap)
    points: float  # after decay and caps


@dataclass(frozen=True)
class ScoreResult:
    score: int  # the behaviour score, rounded half away from zero
    product_score: int  # the part of it earned by product events (PQL rules read it)
    contributions: tuple[Contribution, ...] = ()  # largest first
    last_engaged_at: datetime | None = None  # the latest event of ENGAGEMENT_TYPES


@dataclass(frozen=True)
class GradeResult:
    grade: str  # "A" … "D", "F"; "" when no grading rules exist
    points: float
    matched: tuple[tuple[str, float], ...] = ()  # (rule name, points) of every rule that held


@dataclass(frozen=True)
class StageChange:
    """A move from one lifecycle stage to another, with the reason kept in the history."""

    from_stage: str
    to_stage: str
    reason: str  # one line a salesperson can read: "score 55 ≥ 50 and grade B ≥ B"
    by: str = "rules"  # rules | sales | api | import


@dataclass(frozen=True)
class LeadScoring:
    """Everything the engine needs to re-score one lead (read by the store in one query per batch)."""

    lead: Lead  # with its stored score, product_score, grade and stage
    events: tuple[ScoringEvent, ...]  # every human scoring event of the lead, any order
    stage_since: datetime | None  # when the current stage began (None: never changed)
    account: str | None  # the account key (mailer.stages.account_of) or None
    # leads.last_engaged_at as the last scoring stored it (None: never engaged or never scored):
    # a form event later than this is new to the engine, and fires form entry triggers once
    last_engaged_at: datetime | None = None


@dataclass(frozen=True)
class LeadChange:
    """What re-scoring one lead decided; the store writes only what differs and logs each as an event."""

    lead_id: int
    score: ScoreResult
    grade: GradeResult
    stage: StageChange | None  # None: the stage stays
    at: datetime  # when it was decided
    account: str | None = None


@dataclass(frozen=True)
class AccountChange:
    """An account's rolled-up score and, when it crossed the MQA line either way, its new stage."""

    account: str
    score: int
    stage: str  # "" or "MQA"
    previous_stage: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class HistoryEntry:
    """One change of score, grade or stage as `mailer leads show` prints it."""

    at: datetime
    type: str  # score_changed | grade_changed | stage_changed
    data: Mapping[str, Any] = field(default_factory=dict)  # from, to, reason, by, contributions/matched


@dataclass(frozen=True)
class Trigger:
    """A scenario entry that fires on a lead's change rather than on list membership."""

    scenario: str
    lead_id: int
    wait: timedelta = timedelta(0)  # the scenario's first wait: its first step is due this long after entry
    # how long after leaving it the lead may enter again; None: never (the scenario's `reentry`)
    reentry_after: timedelta | None = timedelta(0)


@dataclass(frozen=True)
class WebhookEvent:
    """One event to hand to the webhooks that want its type (written with the change that caused it)."""

    type: str  # stage_changed | account_stage_changed | score_changed | form_submitted | …
    at: datetime
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class NewDelivery:
    """A webhook call to make, built once (mailer.webhooks.deliveries_for) and stored in the outbox."""

    webhook: str
    event_type: str
    event_id: str
    body: bytes


@dataclass(frozen=True)
class WebhookDelivery:
    """One (event, webhook) pair in the outbox and its delivery log."""

    id: int
    webhook: str  # the [webhooks.NAME] it goes to
    event_type: str
    event_id: str  # stable across retries: receivers de-duplicate on it
    body: bytes  # the JSON sent, exactly (the signature covers these bytes)
    attempts: int
    state: str  # pending | delivered | failed (gave up)
    next_attempt_at: datetime | None
    last_status: int | None = None  # HTTP status of the last try, None when it never got one
    last_error: str = ""
    created_at: datetime | None = None
