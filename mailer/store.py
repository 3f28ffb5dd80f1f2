"""The one storage interface the engine uses, and the values that cross it.

Callers depend on `Store` only; `mailer.sqlitestore.SQLiteStore` is the embedded default and
a PostgreSQL store can be added later without touching them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from mailer.conditions import Engagement
from mailer.config import Config
from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.reply import SMTPReply


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
    suppressed: bool
    # When an earlier step's message is still on its way (queued, sending or deferred): when
    # it is next due. The next step waits for it, so steps arrive in order.
    previous_pending_until: datetime | None = None


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
    suppressed: bool


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


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Store: ...
    async def __aexit__(self, *exc: object) -> None: ...

    # leads and lists
    async def upsert_leads(
        self, leads: Sequence[Lead], *, list_name: str | None, now: datetime
    ) -> UpsertCounts: ...
    async def get_lead(self, email: str) -> Lead | None: ...
    async def sample_leads(self, limit: int) -> list[Lead]: ...
    async def lead_count(self) -> int: ...
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
    ) -> list[Lead]: ...
    async def enroll(
        self, *, scenario: str, lead_ids: Sequence[int], due_at: datetime, now: datetime
    ) -> int: ...
    async def due_enrollments(self, *, now: datetime, limit: int, scenarios: Sequence[str]) -> list[DueEnrollment]: ...
    async def engagement(self, enrollment_ids: Sequence[int]) -> dict[int, Engagement]: ...
    async def apply_updates(self, updates: Sequence[EnrollmentUpdate], *, now: datetime) -> None: ...

    # messages
    async def claim_messages(
        self, *, now: datetime, limit: int, lease: timedelta
    ) -> list[ClaimedMessage]: ...
    async def record_outcomes(self, outcomes: Sequence[Outcome]) -> None: ...
    async def release(self, message_ids: Sequence[int], *, now: datetime) -> None: ...
    async def recover_in_flight(self, *, now: datetime) -> int: ...
    async def next_wakeup(self, *, scenarios: Sequence[str]) -> datetime | None: ...
    async def message_counts(self) -> dict[str, int]: ...
    async def enrollment_counts(self) -> dict[str, int]: ...
    async def step_counts(self) -> dict[tuple[str, str], dict[str, int]]: ...

    # suppressions and bounces
    async def suppress(self, suppressions: Sequence[Suppression], *, now: datetime) -> None: ...
    async def soft_bounces_since(self, email: str, since: datetime) -> int: ...
    async def record_bounce(self, bounce: BounceRecord) -> int: ...
    async def find_message(self, *, row_id: int | None = None, message_id: str | None = None) -> MessageRef | None: ...
    async def bounces(self, *, email: str | None = None, limit: int = 50) -> list[BounceRecord]: ...
    async def bounce(self, bounce_id: int) -> BounceRecord | None: ...
    async def undo_bounce(self, bounce_id: int, *, now: datetime) -> BounceRecord | None: ...
    async def suppressions_of(self, email: str) -> list[tuple[str, str, str]]: ...
    async def bounce_summary(self, since: datetime) -> dict[str, int]: ...
    async def sent_since(self, since: datetime) -> int: ...


def open_store(config: Config) -> Store:
    """The store a workspace's config names: SQLite, the embedded default, for now.

    Callers `async with open_store(config) as store:`; a PostgreSQL store slots in here.
    """
    from mailer.sqlitestore import SQLiteStore  # the implementation depends on this module

    return SQLiteStore(config.store)
