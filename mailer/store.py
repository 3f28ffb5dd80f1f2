"""The one storage interface the engine uses, and the values that cross it.

Callers depend on `Store` only; `mailer.sqlitestore.SQLiteStore` is the embedded default and
a PostgreSQL store can be added later without touching them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from mailer.apiinput import EventInput
from mailer.conditions import Engagement
from mailer.consent import OPTIN_SCENARIO, stops
from mailer.daemons import DaemonRecord
from mailer.config import Config
from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.reply import SMTPReply
from mailer.scoremodel import (
    AccountChange,
    HistoryEntry,
    LeadChange,
    LeadScoring,
    NewDelivery,
    StageChange,
    Trigger,
    WebhookDelivery,
)
from mailer.throttle import Throttle
from mailer.warmupbudget import UsageCount, WarmupChanges


@dataclass(frozen=True)
class UpsertCounts:
    created: int
    updated: int
    added_to_list: int


@dataclass(frozen=True)
class DueEnrollment:
    """An active enrollment whose next step is due, with its lead."""

    id: int
    scenario: str
    cycle: int
    step_index: int
    due_at: datetime
    lead: Lead
    # (list, reason) of each suppression of the address; list "" is global
    suppressions: frozenset[tuple[str, str]]
    # When an earlier step's message is still on its way (queued, sending or deferred): when
    # it is next due. The next step waits for it, so steps arrive in order.
    previous_pending_until: datetime | None = None

    def suppressed_for(self, list_name: str | None) -> bool:
        """Whether the lead may not be mailed for a scenario entering from `list_name`."""
        return stops(self.suppressions, list_name)


@dataclass(frozen=True)
class NewMessage:
    message_id: str  # the Message-ID header value, kept across retries and repeats
    step_id: str
    not_before: datetime


@dataclass(frozen=True)
class EnrollmentUpdate:
    """What the planner decided for one enrollment, to be written in one transaction."""

    enrollment_id: int
    lead_id: int
    scenario: str
    step_index: int
    state: str  # active | completed | exited
    due_at: datetime | None
    event: str  # queued | skipped | waiting | exited | completed
    detail: dict[str, Any] = field(default_factory=dict)
    message: NewMessage | None = None


@dataclass(frozen=True)
class ClaimedMessage:
    """A message leased for one delivery attempt."""

    id: int
    message_id: str
    scenario: str
    step_id: str
    attempts: int  # attempts recorded before this one
    created_at: datetime
    lead: Lead
    # (list, reason) of each suppression of the address; list "" is global
    suppressions: frozenset[tuple[str, str]] = frozenset()
    first_attempt_at: datetime | None = None  # the first SMTP attempt's time; None: never attempted

    @property
    def is_confirmation(self) -> bool:
        """An opt-in confirmation email (scenario "@optin", step_id the list), not a scenario's."""
        return self.scenario == OPTIN_SCENARIO

    def suppressed_for(self, list_name: str | None) -> bool:
        """Whether this message may not be sent; `list_name` is its scenario's entry list.

        A confirmation is judged for its own list (its step_id) by the opt-in rules of
        mailer.consent, whatever `list_name` says.
        """
        if self.is_confirmation:
            return stops(self.suppressions, self.step_id, confirmation=True)
        return stops(self.suppressions, list_name)


@dataclass(frozen=True)
class BounceRecord:
    """One bounce decision with its evidence: what came back, the rule that read it, the action."""

    at: datetime
    source: str  # smtp (a reply during delivery) | dsn (a bounce message at the listener) | ingest (a file)
    email: str
    kind: str  # bounce | feedback | vacation | delivered
    reason: str
    bounce_class: str
    action: str
    status: str | None = None
    reply_code: int | None = None
    diagnostic: str = ""
    rule: str = ""
    remote_host: str = ""
    message: int | None = None  # messages.id when the bounce was matched to a message
    lead_id: int | None = None
    evidence: bytes = b""  # the raw bounce message, or the SMTP reply line
    suppression: str | None = None  # the suppression reason written with it, if any
    id: int | None = None
    undone_at: datetime | None = None
    # what makes a returned message the same one again (mailer.bouncing.evidence_key): a bounce
    # re-read from a mailbox or re-sent by an MTA is stored once; None for SMTP replies
    evidence_key: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The recorded result of one attempt, or a decision not to attempt."""

    message: int  # messages.id
    lead_id: int
    state: MessageState
    at: datetime
    reply: SMTPReply | None = None
    next_attempt_at: datetime | None = None
    detail: str = ""
    bounce: BounceRecord | None = None  # the classified refusal, written with the outcome
    attempted: bool = True  # False when no SMTP transaction was tried (a pause, a build error)
    held: bool = False  # not attempted by choice (a warm-up budget, a breaker, a held domain): back by itself


@dataclass(frozen=True)
class EventRecord:
    at: datetime
    type: str
    scenario: str | None
    step_id: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class MessageRef:
    """Enough of a stored message to act on a bounce for it."""

    id: int
    message_id: str
    lead_id: int
    email: str
    scenario: str
    step_id: str
    state: MessageState


@dataclass(frozen=True)
class Suppression:
    email: str
    reason: str  # unsubscribe | hard-bounce | complaint | soft-bounce-escalation | manual | unconfirmed
    list_name: str = ""  # "" is global
    detail: str = ""
    created_at: datetime | None = None  # set when read from the store


@dataclass(frozen=True)
class ConsentRecord:
    """Evidence of one consent change: when, how, from where, and the words agreed to."""

    at: datetime
    email: str
    list_name: str  # "" for every list (an unsubscribe from everything)
    action: str  # subscribed | pending | confirmed | unsubscribed | imported
    method: str  # form | confirm-link | one-click | unsubscribe-page | mailto | import | cli | api
    ip: str = ""
    user_agent: str = ""
    text: str = ""  # the consent text shown on the form
    source: str = ""  # the form's source, or the imported file
    message: int | None = None  # messages.id the change came through (an unsubscribe link)


@dataclass(frozen=True)
class SubscribeResult:
    lead_id: int
    status: str  # "pending" (confirmation queued) | "confirmed" | "already" (already a confirmed member)
    confirm_message: int | None  # messages.id of the queued confirmation email, when pending


@dataclass(frozen=True)
class StepFigures:
    """Raw counts of one scenario step, for `mailer report` (mailer.report computes the rates).

    Every count but `unsubscribes` and `complaints` counts distinct messages; a human click
    counts as an open too (images may have been blocked, but the message was read).
    """

    scenario: str
    step_id: str
    sent: int = 0
    delivered: int = 0  # sent and not bounced later
    soft_bounces: int = 0
    hard_bounces: int = 0
    opens: int = 0  # unique human opens
    clicks: int = 0  # unique human clickers
    unsubscribes: int = 0
    complaints: int = 0
    machine_opens: int = 0
    machine_clicks: int = 0


@dataclass(frozen=True)
class TrackingEvent:
    """One open or click seen by the tracking server, judged human or machine (mailer.machine)."""

    at: datetime
    type: str  # opened | clicked
    message: int  # messages.id from the token; the lead, scenario and step come from that row
    machine: bool
    reason: str = ""  # why it is a machine's (head, too-soon, honeypot, all-links, scanner, …)
    data: dict[str, Any] = field(default_factory=dict)  # ip, user_agent, url, tag, link, agent


@dataclass(frozen=True)
class Reclassification:
    """Clicks of one message stored as human that turned out to be one machine burst."""

    message: int
    clicks: tuple[tuple[int, datetime], ...]  # (link number, event time) of each such click
    reason: str  # all-links


@dataclass(frozen=True)
class LastOutcome:
    """A message's newest recorded outcome (deferred, queued, failed, expired, recovered): the
    SMTP reply it got, if one came, and the daemon's detail (a hold, a broken template)."""

    type: str
    at: datetime
    reply: SMTPReply | None = None
    detail: str = ""


@dataclass(frozen=True)
class QueuedMessage:
    """One message not sent, as `mailer queue list` shows it (mailer.queueshell says why)."""

    id: int
    message_id: str
    email: str
    scenario: str
    step_id: str
    state: MessageState
    attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    last_reply: SMTPReply | None = None  # messages.last_*: the last SMTP reply it got, however old
    last_outcome: LastOutcome | None = None


@dataclass(frozen=True)
class QueueGroup:
    """Messages waiting (queued, deferred, sending) for one recipient domain, in one state, for
    one reason: the rows `mailer queue` sums up per domain."""

    domain: str
    state: MessageState
    count: int
    next_attempt_at: datetime | None  # the earliest of the group
    last_reply: SMTPReply | None = None
    last_outcome: LastOutcome | None = None


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Store: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def checkpointing(self) -> AbstractAsyncContextManager[None]:
        """While open, the journal is written back beside the writers, not in their commits."""
        ...

    # leads and lists
    async def upsert_leads(
        self, leads: Sequence[Lead], *, list_name: str | None, now: datetime, consent_source: str = ""
    ) -> UpsertCounts: ...
    async def get_lead(self, email: str) -> Lead | None: ...
    async def sample_leads(self, limit: int) -> list[Lead]: ...
    async def list_names(self) -> list[str]: ...
    async def attribute_names(self, wanted: Collection[str], *, first: int) -> set[str]: ...
    async def lead_count(self) -> int: ...
    async def last_lead_id(self) -> int: ...
    async def lead_events(self, lead_id: int) -> list[EventRecord]: ...

    # enrollments
    async def entry_candidates(
        self,
        *,
        scenario: str,
        list_name: str | None,
        reentry_after: timedelta | None,
        now: datetime,
        after_lead_id: int,
        limit: int,
        through_lead_id: int | None = None,
    ) -> list[Lead]: ...
    async def enroll(
        self, *, scenario: str, lead_ids: Sequence[int], due_at: datetime, now: datetime
    ) -> int: ...
    async def due_enrollments(self, *, now: datetime, limit: int, scenarios: Sequence[str]) -> list[DueEnrollment]: ...
    async def engagement(self, enrollment_ids: Sequence[int]) -> dict[int, Engagement]: ...
    async def apply_updates(self, updates: Sequence[EnrollmentUpdate], *, now: datetime) -> None: ...

    # messages
    async def claim_messages(
        self, *, now: datetime, limit: int, lease: timedelta, owner: str | None = None
    ) -> list[ClaimedMessage]: ...
    async def record_outcomes(self, outcomes: Sequence[Outcome], *, owner: str | None = None) -> None: ...
    async def release(self, message_ids: Sequence[int], *, now: datetime, owner: str | None = None) -> None: ...
    async def recover_in_flight(self, *, now: datetime, owner: str | None = None, dead: Sequence[str] = ()) -> int: ...

    # the daemons holding leases (mailer.daemons)
    async def register_daemon(self, record: DaemonRecord) -> None: ...
    async def heartbeat(self, owner: str, *, at: datetime) -> bool: ...
    async def unregister_daemon(self, owner: str) -> None: ...
    async def daemons(self) -> list[DaemonRecord]: ...
    async def next_wakeup(self, *, scenarios: Sequence[str]) -> datetime | None: ...
    async def message_counts(self) -> dict[str, int]: ...
    async def enrollment_counts(self) -> dict[str, int]: ...
    async def step_counts(self) -> dict[tuple[str, str], dict[str, int]]: ...

    # the operator's view of the queue (mailer.sqlitequeue)
    async def queue_groups(self) -> list[QueueGroup]: ...
    async def queued_messages(
        self, *, states: Collection[MessageState], domain: str | None = None, scenario: str | None = None, limit: int = 50,
    ) -> tuple[list[QueuedMessage], int]: ...
    async def retry_deferred(self, *, now: datetime, domain: str | None = None, scenario: str | None = None) -> int: ...

    # suppressions and bounces
    async def suppress(self, suppressions: Sequence[Suppression], *, now: datetime) -> None: ...
    async def soft_bounces_since(self, email: str, since: datetime) -> int: ...
    async def record_bounce(self, bounce: BounceRecord) -> int: ...
    async def seen_bounce(self, evidence_key: str, *, email: str, evidence: bytes) -> BounceRecord | None: ...
    async def find_message(self, *, row_id: int | None = None, message_id: str | None = None) -> MessageRef | None: ...
    async def bounces(self, *, email: str | None = None, limit: int = 50) -> list[BounceRecord]: ...
    async def bounce(self, bounce_id: int) -> BounceRecord | None: ...
    async def undo_bounce(self, bounce_id: int, *, now: datetime) -> BounceRecord | None: ...
    async def suppressions_of(self, email: str) -> list[tuple[str, str, str]]: ...
    async def bounce_summary(self, since: datetime) -> dict[str, int]: ...
    async def sent_since(self, since: datetime) -> int: ...

    # consent and suppression management (mailer.sqliteconsent)
    async def subscribe(
        self, *, email: str, first_name: str, last_name: str, list_name: str, source: str,
        consent_text: str, ip: str, user_agent: str, double_opt_in: bool, confirm_message_id: str,
        now: datetime,
    ) -> SubscribeResult: ...
    async def confirm_subscription(
        self, *, lead_id: int, list_name: str, ip: str, user_agent: str, now: datetime
    ) -> bool: ...
    async def unsubscribe(
        self, *, message: int | None, email: str | None, list_name: str, everything: bool,
        method: str, ip: str, user_agent: str, now: datetime,
    ) -> str | None: ...
    async def membership(self, email: str, list_name: str) -> str | None: ...
    async def consents_of(self, email: str) -> list[ConsentRecord]: ...
    async def add_suppressions(self, suppressions: Sequence[Suppression], *, now: datetime) -> int: ...
    async def add_suppressions_by_scope(
        self, suppressions: Sequence[Suppression], *, now: datetime
    ) -> dict[tuple[str, str], int]: ...
    async def unsuppress(self, email: str, *, list_name: str, now: datetime) -> Suppression | None: ...
    async def list_suppressions(
        self, *, reason: str | None = None, list_name: str | None = None, email: str | None = None,
        limit: int | None = None,
    ) -> list[Suppression]: ...
    async def count_suppressions(
        self, *, reason: str | None = None, list_name: str | None = None, email: str | None = None
    ) -> int: ...
    async def step_figures(self, scenario: str | None = None) -> list[StepFigures]: ...

    # tracking events (mailer.sqlitetracking)
    async def record_tracking_events(self, events: Sequence[TrackingEvent]) -> int: ...
    async def reclassify_tracking_events(self, changes: Sequence[Reclassification]) -> int: ...

    # warm-up budgets (mailer.sqlitewarmup)
    async def record_warmup(self, changes: WarmupChanges) -> None: ...
    async def warmup_usage(self, *, since: date) -> list[UsageCount]: ...
    async def warmup_throttles(self) -> dict[tuple[str, str], Throttle]: ...

    # reputation: complaint brake and engaged-first (mailer.sqlitereputation)
    async def sent_per_hour(self, *, since: datetime) -> list[tuple[str, str, int, int]]: ...
    async def complaints_since(self, *, since: datetime) -> list[tuple[str, str, int]]: ...
    async def engagement_scores(self, lead_ids: Sequence[int], *, since: datetime) -> dict[int, int]: ...

    # scoring, stages and accounts (mailer.sqlitescoring); each write is one transaction
    async def take_scoring_work(self, *, limit: int) -> list[tuple[LeadScoring, int]]: ...
    async def scoring_inputs(self, *, after_lead_id: int, limit: int) -> list[LeadScoring]: ...
    async def apply_scoring(
        self, changes: Sequence[LeadChange], *, done: Sequence[tuple[int, int]], triggers: Sequence[Trigger],
        deliveries: Sequence[NewDelivery], now: datetime,
    ) -> int: ...
    async def scoring_backlog(self) -> int: ...
    async def account_rollup(self, accounts: Sequence[str]) -> dict[str, tuple[int, str]]: ...
    async def apply_account_changes(
        self, changes: Sequence[AccountChange], *, deliveries: Sequence[NewDelivery]
    ) -> None: ...
    async def set_stage(
        self, lead_id: int, change: StageChange, *, now: datetime, triggers: Sequence[Trigger] = (),
        deliveries: Sequence[NewDelivery] = (),
    ) -> None: ...
    async def lead_history(self, lead_id: int, *, limit: int = 200) -> list[HistoryEntry]: ...
    async def leads_by_stage(self, stage: str | None, *, limit: int = 100, after_id: int = 0) -> list[Lead]: ...
    async def accounts(self, *, stage: str | None = None, limit: int = 100) -> list[tuple[str, int, str]]: ...

    # the API and the webhook outbox (mailer.sqliteapi)
    async def record_api_event(
        self, *, email: str, type: str, at: datetime, name: str | None, data: Mapping[str, Any], key: str | None,
        now: datetime,
    ) -> bool: ...
    async def record_api_events(
        self, events: Sequence[EventInput], *, now: datetime, deliveries: Callable[[EventInput], Sequence[NewDelivery]]
    ) -> list[EventInput]: ...
    async def add_api_key(self, name: str, key_hash: bytes, *, now: datetime) -> None: ...
    async def api_keys(self) -> list[tuple[str, datetime, datetime | None, datetime | None]]: ...
    async def revoke_api_key(self, name: str, *, now: datetime) -> bool: ...
    async def api_key_name(self, key_hash: bytes, *, now: datetime) -> str | None: ...
    async def due_deliveries(
        self, *, now: datetime, limit: int, exclude: Collection[int] = ()
    ) -> list[WebhookDelivery]: ...
    async def record_delivery_attempt(
        self, delivery_id: int, *, at: datetime, status: int | None, error: str, duration_ms: int, delivered: bool,
        next_attempt_at: datetime | None,
    ) -> None: ...
    async def requeue_deliveries(self, *, now: datetime, webhook: str | None = None, ids: Collection[int] = ()) -> int: ...
    async def deliveries(self, *, webhook: str | None = None, limit: int = 50) -> list[WebhookDelivery]: ...
    async def delivery_attempts(self, delivery_id: int) -> list[tuple[datetime, int | None, str, int]]: ...


def open_store(config: Config) -> Store:
    """The store a workspace's config names: SQLite, the embedded default, for now.

    Callers `async with open_store(config) as store:`; a PostgreSQL store slots in here.
    """
    from mailer.sqlitestore import SQLiteStore  # the implementation depends on this module

    return SQLiteStore(config.store)
