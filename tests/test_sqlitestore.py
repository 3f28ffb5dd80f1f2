"""Tests for mailer.sqlitestore against a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import rows

from mailer.errors import StateError
from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.reply import SMTPReply
from mailer.sqlitestore import MIGRATIONS, SQLiteStore, StoreError, ms
from mailer.daemons import DaemonRecord
from mailer.store import EnrollmentUpdate, NewMessage, Outcome, Suppression

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
LEASE = timedelta(minutes=10)




def leads(*emails: str, **fields: Any) -> list[Lead]:
    return [Lead(email=email, **fields) for email in emails]


async def lead_id(store: SQLiteStore, email: str) -> int:
    found = await store.get_lead(email)
    assert found is not None and found.id is not None
    return found.id


async def enrolled(store: SQLiteStore, *emails: str, scenario: str = "nurture", due: datetime = T0) -> list[int]:
    """Create the leads, enroll them, and return their enrollment ids in email order."""
    await store.upsert_leads(leads(*emails), list_name=None, now=T0)
    ids = [await lead_id(store, email) for email in emails]
    await store.enroll(scenario=scenario, lead_ids=ids, due_at=due, now=T0)
    by_lead = dict(rows(store, "SELECT lead_id, id FROM enrollments WHERE scenario = ?", (scenario,)))
    return [by_lead[i] for i in ids]


def queue_update(
    enrollment_id: int, lead: int, *, step: str = "welcome", not_before: datetime = T0, message_id: str | None = None
) -> EnrollmentUpdate:
    return EnrollmentUpdate(
        enrollment_id=enrollment_id,
        lead_id=lead,
        scenario="nurture",
        step_index=1,
        state="active",
        due_at=T0 + timedelta(days=2),
        event="queued",
        detail={"step": step},
        message=NewMessage(
            message_id=message_id or f"<{enrollment_id}.{step}@acme.example>", step_id=step, not_before=not_before
        ),
    )


async def queued(store: SQLiteStore, *emails: str, not_before: datetime = T0) -> list[int]:
    """Enroll leads and queue one message each; return the messages' ids in email order."""
    enrollment_ids = await enrolled(store, *emails)
    lead_ids = [await lead_id(store, email) for email in emails]
    await store.apply_updates(
        [queue_update(e, lead, not_before=not_before) for e, lead in zip(enrollment_ids, lead_ids)], now=T0
    )
    by_enrollment = dict(rows(store, "SELECT enrollment_id, id FROM messages"))
    return [by_enrollment[e] for e in enrollment_ids]


def state_of(store: SQLiteStore, message: int) -> str:
    return str(rows(store, "SELECT state FROM messages WHERE id = ?", (message,))[0][0])


# Opening and migrations


async def test_open_sets_schema_version_wal_and_full_sync(store: SQLiteStore) -> None:
    """Opening migrates to the latest schema and runs in WAL mode with synchronous = FULL."""
    assert await store._pragma("PRAGMA user_version") == len(MIGRATIONS)
    assert await store._pragma("PRAGMA journal_mode") == "wal"
    assert await store._pragma("PRAGMA synchronous") == 2
    assert rows(store, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert rows(store, "PRAGMA journal_mode") == [("wal",)]


async def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    """Opening an existing store a second time keeps its rows and its schema version."""
    path = tmp_path / "sub" / "mailer.db"
    async with SQLiteStore(path) as first:
        await first.upsert_leads(leads("a@example.com"), list_name="signups", now=T0)
    async with SQLiteStore(path) as second:
        assert await second._pragma("PRAGMA user_version") == len(MIGRATIONS)
        assert await second.lead_count() == 1


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer mailer is refused rather than misread."""
    path = tmp_path / "mailer.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    refused = SQLiteStore(path)
    with pytest.raises(StoreError, match="newer"):
        await refused.open()
    assert refused._db is None  # the connection was closed, not leaked


async def test_closed_store_refuses_use(tmp_path: Path) -> None:
    """Using a store that is not open is a StoreError, not an AttributeError."""
    with pytest.raises(StoreError):
        await SQLiteStore(tmp_path / "mailer.db").lead_count()


# Leads and lists


async def test_upsert_creates_then_updates_by_email(store: SQLiteStore) -> None:
    """The first upsert creates leads; a second with the same addresses updates them in place."""
    first = await store.upsert_leads(
        [Lead(email="a@example.com", first_name="Ada"), Lead(email="b@example.com")], list_name=None, now=T0
    )
    assert (first.created, first.updated) == (2, 0)
    second = await store.upsert_leads(
        [Lead(email="a@example.com", first_name="Adele"), Lead(email="c@example.com")], list_name=None, now=T0
    )
    assert (second.created, second.updated) == (1, 1)
    assert await store.lead_count() == 3
    ada = await store.get_lead("a@example.com")
    assert ada is not None and ada.first_name == "Adele"


async def test_empty_values_never_erase(store: SQLiteStore) -> None:
    """An update with blank fields, no time zone or empty attributes keeps what the lead already had."""
    await store.upsert_leads(
        [Lead(email="a@example.com", first_name="Ada", last_name="Lovelace", company="Analytical",
              job_title="CTO", timezone="Europe/London", source="webinar", attributes={"plan": "pro"})],
        list_name=None,
        now=T0,
    )
    await store.upsert_leads(
        [Lead(email="a@example.com", company="Babbage Ltd", timezone="", attributes={"plan": "", "seats": None})],
        list_name=None,
        now=T0,
    )
    lead = await store.get_lead("a@example.com")
    assert lead is not None
    assert (lead.first_name, lead.last_name, lead.job_title) == ("Ada", "Lovelace", "CTO")
    assert lead.company == "Babbage Ltd"
    assert lead.timezone == "Europe/London"
    assert dict(lead.attributes) == {"plan": "pro"}


async def test_attributes_merge(store: SQLiteStore) -> None:
    """Attributes of an update are merged into the lead's: new keys added, changed keys replaced, others kept."""
    await store.upsert_leads(leads("a@example.com", attributes={"plan": "free", "seats": 3}), list_name=None, now=T0)
    await store.upsert_leads(leads("a@example.com", attributes={"plan": "pro", "country": "日本"}), list_name=None, now=T0)
    lead = await store.get_lead("a@example.com")
    assert lead is not None
    assert dict(lead.attributes) == {"plan": "pro", "seats": 3, "country": "日本"}


async def test_first_source_is_kept(store: SQLiteStore) -> None:
    """A lead's source records where it first came from; a later import does not overwrite it."""
    await store.upsert_leads(leads("a@example.com", source="webinar"), list_name=None, now=T0)
    await store.upsert_leads(leads("a@example.com", source="trade-show"), list_name=None, now=T0)
    lead = await store.get_lead("a@example.com")
    assert lead is not None and lead.source == "webinar"


async def test_list_membership_counts_only_new_members(store: SQLiteStore) -> None:
    """added_to_list counts leads newly added to the list, not ones already in it."""
    first = await store.upsert_leads(leads("a@example.com", "b@example.com"), list_name="signups", now=T0)
    assert first.added_to_list == 2
    again = await store.upsert_leads(leads("b@example.com", "c@example.com"), list_name="signups", now=T0)
    assert again.added_to_list == 1
    other = await store.upsert_leads(leads("a@example.com"), list_name="webinar", now=T0)
    assert (other.created, other.updated, other.added_to_list) == (0, 1, 1)
    none = await store.upsert_leads(leads("a@example.com"), list_name=None, now=T0)
    assert none.added_to_list == 0
    assert rows(store, "SELECT li.name, count(*) FROM list_members m JOIN lists li ON li.id = m.list_id "
                       "GROUP BY li.name ORDER BY li.name") == [("signups", 3), ("webinar", 1)]


async def test_duplicate_addresses_in_one_batch_count_once(store: SQLiteStore) -> None:
    """The same address twice in one batch creates one lead."""
    counts = await store.upsert_leads(leads("a@example.com", "a@example.com"), list_name="x", now=T0)
    assert (counts.created, counts.updated, counts.added_to_list) == (1, 0, 1)


# Entry candidates


async def candidates(
    store: SQLiteStore, *, list_name: str | None = None, reentry_after: timedelta | None = None,
    now: datetime = T0, after: int = 0, limit: int = 100,
) -> list[str]:
    found = await store.entry_candidates(
        scenario="nurture", list_name=list_name, reentry_after=reentry_after, now=now, after_lead_id=after, limit=limit
    )
    return [lead.email for lead in found]


async def test_entry_candidates_are_list_members_in_id_order(store: SQLiteStore) -> None:
    """With a list, only its members are candidates, in creation order, paged by lead id and limit."""
    await store.upsert_leads(leads("a@example.com", "b@example.com", "c@example.com"), list_name="signups", now=T0)
    await store.upsert_leads(leads("z@example.com"), list_name="other", now=T0)
    assert await candidates(store, list_name="signups") == ["a@example.com", "b@example.com", "c@example.com"]
    assert await candidates(store) == ["a@example.com", "b@example.com", "c@example.com", "z@example.com"]
    assert await candidates(store, list_name="signups", limit=2) == ["a@example.com", "b@example.com"]
    b = await lead_id(store, "b@example.com")
    assert await candidates(store, list_name="signups", after=b) == ["c@example.com"]


async def test_suppressed_leads_are_not_candidates(store: SQLiteStore) -> None:
    """A globally suppressed lead never enters; a list suppression keeps it out of that list only."""
    await store.upsert_leads(leads("a@example.com", "b@example.com", "c@example.com"), list_name="signups", now=T0)
    await store.upsert_leads(leads("b@example.com"), list_name="webinar", now=T0)
    await store.suppress(
        [Suppression("a@example.com", "hard-bounce"), Suppression("b@example.com", "unsubscribe", list_name="signups")],
        now=T0,
    )
    assert await candidates(store, list_name="signups") == ["c@example.com"]
    assert await candidates(store, list_name="webinar") == ["b@example.com"]
    assert await candidates(store) == ["b@example.com", "c@example.com"]


async def test_enrolled_leads_are_not_candidates_without_reentry(store: SQLiteStore) -> None:
    """A lead who has been in the scenario, even long ago and finished, does not enter again without re-entry."""
    [enrollment] = await enrolled(store, "a@example.com")
    await store.upsert_leads(leads("b@example.com"), list_name=None, now=T0)
    a = await lead_id(store, "a@example.com")
    await store.apply_updates(
        [EnrollmentUpdate(enrollment, a, "nurture", 3, "completed", None, "completed")], now=T0
    )
    assert await candidates(store, now=T0 + timedelta(days=365)) == ["b@example.com"]
    assert await store.entry_candidates(
        scenario="other", list_name=None, reentry_after=None, now=T0, after_lead_id=0, limit=10
    ) != []


async def test_reentry_waits_for_reentry_after(store: SQLiteStore) -> None:
    """With re-entry after 30 days, a lead who left re-enters only 30 days after leaving; an active one never."""
    [done, active] = await enrolled(store, "done@example.com", "active@example.com")
    left_at = T0 + timedelta(days=5)
    await store.apply_updates(
        [EnrollmentUpdate(done, await lead_id(store, "done@example.com"), "nurture", 1, "exited", None, "exited")],
        now=left_at,
    )
    month = timedelta(days=30)
    assert await candidates(store, reentry_after=month, now=left_at + month - timedelta(seconds=1)) == []
    assert await candidates(store, reentry_after=month, now=left_at + month + timedelta(seconds=1)) == [
        "done@example.com"
    ]
    assert await candidates(store, reentry_after=timedelta(0), now=left_at + timedelta(seconds=1)) == [
        "done@example.com"
    ]


# Enrollments


async def test_enroll_counts_and_cycles(store: SQLiteStore) -> None:
    """Enrolling creates cycle 1; enrolling the same lead again later starts cycle 2 and logs an `entered` event."""
    await store.upsert_leads(leads("a@example.com", "b@example.com"), list_name=None, now=T0)
    ids = [await lead_id(store, "a@example.com"), await lead_id(store, "b@example.com")]
    assert await store.enroll(scenario="nurture", lead_ids=ids, due_at=T0, now=T0) == 2
    assert await store.enroll(scenario="nurture", lead_ids=ids[:1], due_at=T0, now=T0 + timedelta(days=40)) == 1
    assert await store.enroll(scenario="nurture", lead_ids=[], due_at=T0, now=T0) == 0
    assert rows(store, "SELECT lead_id, cycle FROM enrollments ORDER BY id") == [(ids[0], 1), (ids[1], 1), (ids[0], 2)]
    events = await store.lead_events(ids[0])
    assert [(e.type, e.scenario, e.data) for e in events] == [
        ("entered", "nurture", {"cycle": 1}),
        ("entered", "nurture", {"cycle": 2}),
    ]


async def test_due_enrollments_in_due_order_with_limit(store: SQLiteStore) -> None:
    """Only active enrollments due by now come back, earliest first, at most `limit` of them."""
    await enrolled(store, "late@example.com", due=T0 + timedelta(hours=2))
    await enrolled(store, "early@example.com", due=T0 - timedelta(hours=1))
    await enrolled(store, "future@example.com", due=T0 + timedelta(days=1))
    [done] = await enrolled(store, "done@example.com", due=T0 - timedelta(hours=3))
    await store.apply_updates(
        [EnrollmentUpdate(done, await lead_id(store, "done@example.com"), "nurture", 1, "completed", None, "completed")],
        now=T0,
    )
    now = T0 + timedelta(hours=3)
    due = await store.due_enrollments(now=now, limit=10, scenarios=["nurture"])
    assert [(d.lead.email, d.due_at) for d in due] == [
        ("early@example.com", T0 - timedelta(hours=1)),
        ("late@example.com", T0 + timedelta(hours=2)),
    ]
    assert [d.lead.email for d in await store.due_enrollments(now=now, limit=1, scenarios=["nurture"])] == ["early@example.com"]
    assert (due[0].scenario, due[0].cycle, due[0].step_index, due[0].suppressions) == ("nurture", 1, 0, frozenset())


async def test_due_enrollment_reports_suppression(store: SQLiteStore) -> None:
    """A due enrollment of a globally suppressed lead is returned flagged, so the planner can exit it."""
    await enrolled(store, "a@example.com")
    await store.suppress([Suppression("a@example.com", "complaint")], now=T0)
    [due] = await store.due_enrollments(now=T0, limit=10, scenarios=["nurture"])
    assert due.suppressions == {("", "complaint")} and due.suppressed_for(None) and due.suppressed_for("any")


async def test_apply_updates_writes_enrollment_message_and_event(store: SQLiteStore) -> None:
    """One update advances the enrollment, queues its message and logs the event."""
    [enrollment] = await enrolled(store, "a@example.com")
    a = await lead_id(store, "a@example.com")
    await store.apply_updates([queue_update(enrollment, a, not_before=T0 + timedelta(minutes=5))], now=T0)
    assert rows(store, "SELECT step_index, state, due_at FROM enrollments WHERE id = ?", (enrollment,)) == [
        (1, "active", ms(T0 + timedelta(days=2)))
    ]
    assert rows(store, "SELECT message_id, lead_id, scenario, step_id, state, attempts, next_attempt_at FROM messages") == [
        (f"<{enrollment}.welcome@acme.example>", a, "nurture", "welcome", "queued", 0, ms(T0 + timedelta(minutes=5)))
    ]
    events = [e for e in await store.lead_events(a) if e.type == "queued"]
    assert [(e.scenario, e.step_id, e.data) for e in events] == [("nurture", "welcome", {"step": "welcome"})]


async def test_apply_updates_never_queues_a_step_twice(store: SQLiteStore) -> None:
    """Applying the same step of the same enrollment again (a retried batch) does not queue a second message."""
    [enrollment] = await enrolled(store, "a@example.com")
    a = await lead_id(store, "a@example.com")
    await store.apply_updates([queue_update(enrollment, a)], now=T0)
    await store.apply_updates([queue_update(enrollment, a, message_id="<other@acme.example>")], now=T0)
    assert await store.message_counts() == {"queued": 1}


async def test_apply_updates_is_one_transaction(store: SQLiteStore) -> None:
    """When one row of a batch cannot be written, no enrollment, message or event of the batch is."""
    [enrollment] = await enrolled(store, "a@example.com")
    a = await lead_id(store, "a@example.com")
    no_such_lead = a + 1000
    bad = EnrollmentUpdate(enrollment, no_such_lead, "nurture", 2, "exited", None, "exited")
    with pytest.raises(sqlite3.IntegrityError):
        await store.apply_updates([queue_update(enrollment, a), bad], now=T0)
    assert rows(store, "SELECT step_index, state FROM enrollments") == [(0, "active")]
    assert await store.message_counts() == {}
    assert [e.type for e in await store.lead_events(a)] == ["entered"]


async def test_engagement_reports_sent_steps(store: SQLiteStore) -> None:
    """A step whose message was sent counts as sent for that enrollment's conditions."""
    [message] = await queued(store, "a@example.com")
    [enrollment] = [row[0] for row in rows(store, "SELECT enrollment_id FROM messages")]
    assert (await store.engagement([enrollment]))[enrollment].sent == frozenset()
    await store.claim_messages(now=T0, limit=10, lease=LEASE)
    await store.record_outcomes([Outcome(message, await lead_id(store, "a@example.com"), MessageState.SENT, T0)])
    assert (await store.engagement([enrollment]))[enrollment].sent == {"welcome"}


# Claiming messages


async def test_claim_takes_only_due_messages(store: SQLiteStore) -> None:
    """Claiming leases due queued messages (queued → sending) and leaves not-yet-due ones queued."""
    [due, later] = await queued(store, "due@example.com", "later@example.com")
    await store.db.execute("UPDATE messages SET next_attempt_at = ? WHERE id = ?", (ms(T0 + timedelta(hours=1)), later))
    claimed = await store.claim_messages(now=T0, limit=10, lease=LEASE)
    assert [c.id for c in claimed] == [due]
    assert (state_of(store, due), state_of(store, later)) == ("sending", "queued")
    assert rows(store, "SELECT lease_until FROM messages WHERE id = ?", (due,)) == [(ms(T0 + LEASE),)]
    [message] = claimed
    assert (message.lead.email, message.scenario, message.step_id, message.attempts) == (
        "due@example.com", "nurture", "welcome", 0
    )
    assert message.message_id.endswith(".welcome@acme.example>")
    assert message.created_at == T0 and not message.suppressed_for(None)


async def test_claim_respects_limit_and_order(store: SQLiteStore) -> None:
    """At most `limit` messages are claimed, the longest-due first, and a claimed message is not claimed again."""
    ids = await queued(store, "a@example.com", "b@example.com", "c@example.com")
    for offset, message in zip((3, 1, 2), ids):
        await store.db.execute(
            "UPDATE messages SET next_attempt_at = ? WHERE id = ?", (ms(T0 - timedelta(minutes=offset)), message)
        )
    first = await store.claim_messages(now=T0, limit=2, lease=LEASE)
    assert [c.lead.email for c in first] == ["a@example.com", "c@example.com"]
    second = await store.claim_messages(now=T0, limit=2, lease=LEASE)
    assert [c.lead.email for c in second] == ["b@example.com"]
    assert await store.claim_messages(now=T0, limit=2, lease=LEASE) == []


async def test_claimed_message_of_suppressed_lead_is_flagged(store: SQLiteStore) -> None:
    """A message claimed for a lead suppressed since it was queued carries the flag, so it is not sent."""
    await queued(store, "a@example.com")
    await store.suppress([Suppression("a@example.com", "unsubscribe")], now=T0)
    [claimed] = await store.claim_messages(now=T0, limit=1, lease=LEASE)
    assert claimed.suppressed_for(None) and claimed.suppressed_for("signups")


# Recording outcomes


async def test_record_outcomes_moves_sending_to_its_outcome(store: SQLiteStore) -> None:
    """Sent, deferred and failed outcomes set state, attempts, next attempt and the last reply."""
    ids = await queued(store, "sent@example.com", "deferred@example.com", "failed@example.com")
    lead_ids = [await lead_id(store, e) for e in ("sent@example.com", "deferred@example.com", "failed@example.com")]
    await store.claim_messages(now=T0, limit=10, lease=LEASE)
    retry_at = T0 + timedelta(minutes=20)
    await store.record_outcomes([
        Outcome(ids[0], lead_ids[0], MessageState.SENT, T0, SMTPReply.parse(250, "2.0.0 Ok: queued as 4F2")),
        Outcome(ids[1], lead_ids[1], MessageState.DEFERRED, T0, SMTPReply.parse(451, "4.7.1 Greylisted"),
                next_attempt_at=retry_at),
        Outcome(ids[2], lead_ids[2], MessageState.FAILED, T0,
                SMTPReply.parse(550, "5.1.1 No such user", command="RCPT", host="mx.example")),
    ])
    assert rows(store, "SELECT state, attempts, next_attempt_at, lease_until, last_code, last_enhanced, last_text "
                       "FROM messages ORDER BY id") == [
        ("sent", 1, None, None, 250, "2.0.0", "Ok: queued as 4F2"),
        ("deferred", 1, ms(retry_at), None, 451, "4.7.1", "Greylisted"),
        ("failed", 1, None, None, 550, "5.1.1", "No such user"),
    ]
    [failed] = [e for e in await store.lead_events(lead_ids[2]) if e.type == "failed"]
    assert failed.step_id == "welcome" and failed.scenario == "nurture"
    assert failed.data == {"code": 550, "enhanced": "5.1.1", "text": "No such user", "command": "RCPT", "host": "mx.example"}
    [deferred] = [e for e in await store.lead_events(lead_ids[1]) if e.type == "deferred"]
    assert deferred.data["next_attempt_at"] == retry_at.isoformat()
    assert await store.message_counts() == {"sent": 1, "deferred": 1, "failed": 1}


async def test_deferred_message_is_claimed_again_when_due(store: SQLiteStore) -> None:
    """A deferred message is claimable again at its next attempt time, not before, with its attempt count."""
    [message] = await queued(store, "a@example.com")
    a = await lead_id(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE)
    retry_at = T0 + timedelta(minutes=20)
    await store.record_outcomes([Outcome(message, a, MessageState.DEFERRED, T0, next_attempt_at=retry_at)])
    assert await store.claim_messages(now=retry_at - timedelta(seconds=1), limit=1, lease=LEASE) == []
    [again] = await store.claim_messages(now=retry_at, limit=1, lease=LEASE)
    assert (again.id, again.attempts) == (message, 1)


async def test_the_first_attempt_time_is_set_by_the_first_smtp_attempt_and_kept(store: SQLiteStore) -> None:
    """A hold (not attempted) leaves first_attempt_at unset; the first attempted outcome sets it and later ones keep it."""
    [message] = await queued(store, "a@example.com")
    a = await lead_id(store, "a@example.com")
    held_until = T0 + timedelta(days=5)
    await store.claim_messages(now=T0, limit=1, lease=LEASE)
    await store.record_outcomes([Outcome(message, a, MessageState.DEFERRED, T0, next_attempt_at=held_until, attempted=False)])
    [claimed] = await store.claim_messages(now=held_until, limit=1, lease=LEASE)
    assert (claimed.first_attempt_at, claimed.attempts) == (None, 0)
    await store.record_outcomes([Outcome(message, a, MessageState.DEFERRED, held_until, SMTPReply.parse(451, "4.3.0 Later"),
                                         next_attempt_at=held_until + timedelta(minutes=20))])  # fmt: skip
    [again] = await store.claim_messages(now=held_until + timedelta(minutes=20), limit=1, lease=LEASE)
    assert (again.first_attempt_at, again.attempts) == (held_until, 1)
    await store.record_outcomes([Outcome(message, a, MessageState.DEFERRED, held_until + timedelta(hours=1),
                                         SMTPReply.parse(451, "4.3.0 Later"), next_attempt_at=held_until + timedelta(hours=2))])  # fmt: skip
    [third] = await store.claim_messages(now=held_until + timedelta(hours=2), limit=1, lease=LEASE)
    assert (third.first_attempt_at, third.attempts) == (held_until, 2)


async def test_upgrade_to_schema_7_dates_earlier_attempts_from_their_creation(tmp_path: Path) -> None:
    """Messages attempted before schema 7 count their give-up time from creation, as before; unattempted ones from their first attempt."""
    path = tmp_path / "mailer.db"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:6]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 6")
        db.execute("INSERT INTO leads (email, created_at, updated_at) VALUES ('a@example.com', 0, 0)")
        for number, attempts in ((1, 2), (2, 0)):
            db.execute(
                "INSERT INTO messages (message_id, lead_id, scenario, step_id, state, attempts, next_attempt_at, created_at, updated_at) "
                "VALUES (?, 1, 'nurture', 'welcome', 'deferred', ?, ?, ?, 0)",
                (f"<{number}@acme.example>", attempts, ms(T0), ms(T0 - timedelta(days=1))),
            )
    async with SQLiteStore(path) as upgraded:
        claimed = await upgraded.claim_messages(now=T0, limit=2, lease=LEASE)
        assert {(c.message_id, c.first_attempt_at) for c in claimed} == {
            ("<1@acme.example>", T0 - timedelta(days=1)), ("<2@acme.example>", None)}  # fmt: skip


async def test_suppressed_outcome_does_not_count_as_an_attempt(store: SQLiteStore) -> None:
    """A message not sent because its lead is suppressed ends `suppressed` with no attempt counted."""
    [message] = await queued(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE)
    await store.record_outcomes(
        [Outcome(message, await lead_id(store, "a@example.com"), MessageState.SUPPRESSED, T0, detail="unsubscribed")]
    )
    assert rows(store, "SELECT state, attempts FROM messages") == [("suppressed", 0)]
    [event] = rows(store, "SELECT data FROM events WHERE type = 'suppressed'")
    assert json.loads(event[0]) == {"detail": "unsubscribed"}


async def test_forbidden_outcome_raises_and_writes_nothing(store: SQLiteStore) -> None:
    """A batch holding an outcome the table forbids from `sending` raises StateError and records none of it."""
    ids = await queued(store, "a@example.com", "b@example.com")
    a, b = await lead_id(store, "a@example.com"), await lead_id(store, "b@example.com")
    await store.claim_messages(now=T0, limit=10, lease=LEASE)
    with pytest.raises(StateError):
        await store.record_outcomes([
            Outcome(ids[0], a, MessageState.SENT, T0, SMTPReply.parse(250, "Ok")),
            Outcome(ids[1], b, MessageState.SENDING, T0),
        ])
    assert await store.message_counts() == {"sending": 2}
    assert rows(store, "SELECT count(*) FROM events WHERE message_id IS NOT NULL") == [(0,)]


async def test_outcome_for_a_message_not_in_flight_changes_nothing(store: SQLiteStore) -> None:
    """Recording a second outcome for a message already recorded neither changes it nor logs a false event."""
    [message] = await queued(store, "a@example.com")
    a = await lead_id(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE)
    await store.record_outcomes([Outcome(message, a, MessageState.SENT, T0, SMTPReply.parse(250, "Ok"))])
    await store.record_outcomes([Outcome(message, a, MessageState.FAILED, T0, SMTPReply.parse(550, "No"))])
    assert rows(store, "SELECT state, attempts, last_code FROM messages") == [("sent", 1, 250)]
    assert [e.type for e in await store.lead_events(a) if e.type in ("sent", "failed")] == ["sent"]


# Releasing and recovering leases


async def test_release_hands_messages_back_to_the_queue(store: SQLiteStore) -> None:
    """Released messages go from sending to queued and can be claimed again at once."""
    ids = await queued(store, "a@example.com", "b@example.com")
    await store.claim_messages(now=T0, limit=10, lease=LEASE)
    await store.release([ids[0]], now=T0)
    assert (state_of(store, ids[0]), state_of(store, ids[1])) == ("queued", "sending")
    assert [c.id for c in await store.claim_messages(now=T0, limit=10, lease=LEASE)] == [ids[0]]


async def test_release_leaves_recorded_messages_alone(store: SQLiteStore) -> None:
    """Releasing a message whose outcome is already recorded does not resurrect it."""
    [message] = await queued(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE)
    await store.record_outcomes([Outcome(message, await lead_id(store, "a@example.com"), MessageState.SENT, T0)])
    await store.release([message], now=T0)
    assert state_of(store, message) == "sent"


def daemon(owner: str, *, pid: int = 1, heartbeat: datetime = T0) -> DaemonRecord:
    return DaemonRecord(owner=owner, pid=pid, host="mx1", pid_scope="boot/1", started_at=T0, heartbeat_at=heartbeat)


async def test_recover_in_flight_requeues_the_leases_of_a_dead_daemon_and_forgets_it(tmp_path: Path) -> None:
    """After a crash, a reopened store requeues what the dead daemon held, logs it with the owner, and drops its registration."""
    path = tmp_path / "mailer.db"
    async with SQLiteStore(path) as before_crash:
        ids = await queued(before_crash, "a@example.com", "b@example.com")
        await before_crash.register_daemon(daemon("crashed"))
        await before_crash.claim_messages(now=T0, limit=1, lease=LEASE, owner="crashed")
    async with SQLiteStore(path) as after_restart:
        await after_restart.register_daemon(daemon("restarted"))
        assert await after_restart.recover_in_flight(now=T0 + timedelta(minutes=1), owner="restarted", dead=["crashed"]) == 1
        assert await after_restart.recover_in_flight(now=T0 + timedelta(minutes=1), owner="restarted") == 0
        assert await after_restart.message_counts() == {"queued": 2}
        assert rows(after_restart, "SELECT lease_owner, lease_until FROM messages") == [(None, None), (None, None)]
        [(message, data)] = rows(after_restart, "SELECT message_id, data FROM events WHERE type = 'recovered'")
        assert message == ids[0] and json.loads(data) == {"owner": "crashed"}
        assert [d.owner for d in await after_restart.daemons()] == ["restarted"]


async def test_a_live_daemons_leases_are_never_recovered_even_past_lease_until(store: SQLiteStore) -> None:
    """A registered daemon not judged dead keeps its leases, however old: its attempts may still be under way."""
    await queued(store, "a@example.com")
    await store.register_daemon(daemon("first"))
    await store.register_daemon(daemon("second", pid=2))
    await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="first")
    assert await store.recover_in_flight(now=T0 + timedelta(days=1), owner="second") == 0
    assert rows(store, "SELECT state, lease_owner FROM messages") == [("sending", "first")]


async def test_the_callers_own_leases_are_never_recovered(store: SQLiteStore) -> None:
    """A daemon never requeues its own messages, even unregistered or named among the dead (taken for dead by another)."""
    [message] = await queued(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="me")
    assert await store.recover_in_flight(now=T0 + timedelta(days=1), owner="me", dead=["me"]) == 0
    assert state_of(store, message) == "sending"


async def test_leases_of_an_unregistered_owner_are_recovered(store: SQLiteStore) -> None:
    """A lease whose owner has no registration (it stopped, or was forgotten as dead) is requeued at once."""
    await queued(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="stopped")
    assert await store.recover_in_flight(now=T0, owner="me") == 1
    assert await store.message_counts() == {"queued": 1}


async def test_an_ownerless_claim_is_recovered_only_once_its_lease_has_passed(store: SQLiteStore) -> None:
    """A claim naming no owner (a tool) is judged by lease_until alone: kept before it, requeued at it."""
    await queued(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE)
    assert await store.recover_in_flight(now=T0 + LEASE - timedelta(seconds=1), owner="me") == 0
    assert await store.recover_in_flight(now=T0 + LEASE, owner="me") == 1


async def test_an_outcome_is_written_only_by_the_daemon_that_holds_the_lease(store: SQLiteStore) -> None:
    """After a lease was recovered and claimed again, the old holder's outcome changes nothing and logs nothing; the new holder's is written."""
    [message] = await queued(store, "a@example.com")
    a = await lead_id(store, "a@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="old")
    await store.recover_in_flight(now=T0, owner="new", dead=["old"])
    await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="new")
    await store.record_outcomes([Outcome(message, a, MessageState.FAILED, T0, SMTPReply.parse(550, "No"))], owner="old")
    assert rows(store, "SELECT state, lease_owner FROM messages") == [("sending", "new")]
    await store.record_outcomes([Outcome(message, a, MessageState.SENT, T0, SMTPReply.parse(250, "Ok"))], owner="new")
    assert rows(store, "SELECT state, lease_owner, lease_until FROM messages") == [("sent", None, None)]
    assert [e.type for e in await store.lead_events(a) if e.type in ("sent", "failed")] == ["sent"]


async def test_release_with_an_owner_hands_back_only_its_own_leases(store: SQLiteStore) -> None:
    """A draining daemon releases the messages it holds, never another daemon's under the same ids."""
    ids = await queued(store, "a@example.com", "b@example.com")
    await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="first")
    await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="second")
    await store.release(ids, now=T0, owner="first")
    assert rows(store, "SELECT state, lease_owner FROM messages ORDER BY id") == [("queued", None), ("sending", "second")]


async def test_heartbeat_refreshes_a_registration_and_reports_a_missing_one(store: SQLiteStore) -> None:
    """A heartbeat moves heartbeat_at of a registered daemon and returns False once it was forgotten."""
    await store.register_daemon(daemon("me"))
    assert await store.heartbeat("me", at=T0 + timedelta(seconds=5))
    [record] = await store.daemons()
    assert record == daemon("me", heartbeat=T0 + timedelta(seconds=5))
    await store.unregister_daemon("me")
    assert await store.daemons() == []
    assert not await store.heartbeat("me", at=T0 + timedelta(seconds=10))


async def test_upgrade_to_schema_6_makes_messages_left_sending_recoverable_at_once(tmp_path: Path) -> None:
    """A message a pre-leases daemon left in `sending` is owned by nobody alive after the upgrade, so the next start requeues it."""
    path = tmp_path / "mailer.db"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:5]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 5")
        db.execute("INSERT INTO leads (email, created_at, updated_at) VALUES ('a@example.com', 0, 0)")
        db.execute(
            "INSERT INTO messages (message_id, lead_id, scenario, step_id, state, lease_until, created_at, updated_at) "
            "VALUES ('<1@acme.example>', 1, 'nurture', 'welcome', 'sending', ?, 0, 0)",
            (ms(T0 + LEASE),),
        )
    async with SQLiteStore(path) as upgraded:
        assert await upgraded.recover_in_flight(now=T0, owner="me") == 1
        assert await upgraded.message_counts() == {"queued": 1}


async def test_claiming_and_recovering_use_their_indexes(store: SQLiteStore) -> None:
    """The claim finds due messages through messages_due and recovery reads only leased rows through messages_leased."""
    plan = " ".join(str(row[3]) for row in rows(store, "EXPLAIN QUERY PLAN SELECT id FROM messages "
                                                 "WHERE state IN ('queued', 'deferred') AND next_attempt_at <= 0 "
                                                 "ORDER BY next_attempt_at LIMIT 10"))
    assert "messages_due" in plan
    leased = " ".join(str(row[3]) for row in rows(store, "EXPLAIN QUERY PLAN SELECT id FROM messages "
                                                   "WHERE state = 'sending' AND lease_owner IS NOT 'x'"))
    assert "messages_leased" in leased


# Wake-ups


async def test_next_wakeup_is_the_earliest_due_enrollment_or_message(store: SQLiteStore) -> None:
    """The scheduler sleeps until the earliest active enrollment or claimable message is due."""
    assert await store.next_wakeup(scenarios=["nurture"]) is None
    [enrollment] = await enrolled(store, "a@example.com", due=T0 + timedelta(hours=5))
    assert await store.next_wakeup(scenarios=["nurture"]) == T0 + timedelta(hours=5)
    a = await lead_id(store, "a@example.com")
    await store.apply_updates([queue_update(enrollment, a, not_before=T0 + timedelta(hours=1))], now=T0)
    assert await store.next_wakeup(scenarios=["nurture"]) == T0 + timedelta(hours=1)  # the enrollment is now due in 2 days
    await store.claim_messages(now=T0 + timedelta(hours=1), limit=1, lease=LEASE)
    assert await store.next_wakeup(scenarios=["nurture"]) == T0 + timedelta(days=2)
    await store.apply_updates([EnrollmentUpdate(enrollment, a, "nurture", 3, "completed", None, "completed")], now=T0)
    assert await store.next_wakeup(scenarios=["nurture"]) is None


# Transactions


async def test_failing_statement_rolls_back_the_whole_transaction(store: SQLiteStore) -> None:
    """When a statement inside transaction() fails, the statements before it are undone too."""
    with pytest.raises(sqlite3.IntegrityError):
        async with store.transaction() as db:
            await db.execute("INSERT INTO lists (name, created_at) VALUES ('a', 0)")
            await db.execute("INSERT INTO lists (name, created_at) VALUES ('a', 0)")
    assert rows(store, "SELECT count(*) FROM lists") == [(0,)]
    async with store.transaction() as db:
        await db.execute("INSERT INTO lists (name, created_at) VALUES ('b', 0)")
    assert rows(store, "SELECT name FROM lists") == [("b",)]


async def test_python_error_inside_a_transaction_rolls_back(store: SQLiteStore) -> None:
    """An exception raised by our own code between statements also rolls the transaction back."""
    with pytest.raises(RuntimeError):
        async with store.transaction() as db:
            await db.execute("INSERT INTO lists (name, created_at) VALUES ('a', 0)")
            raise RuntimeError("boom")
    assert rows(store, "SELECT count(*) FROM lists") == [(0,)]


async def test_suppress_twice_keeps_the_first_reason(store: SQLiteStore) -> None:
    """Suppressing an address again for the same list keeps the original suppression."""
    await store.suppress([Suppression("a@example.com", "hard-bounce")], now=T0)
    await store.suppress([Suppression("a@example.com", "manual")], now=T0)
    assert rows(store, "SELECT email, list, reason FROM suppressions") == [("a@example.com", "", "hard-bounce")]


async def test_due_enrollments_are_found_through_the_index_not_a_scan(tmp_path: Path) -> None:
    """The scheduler's query uses the partial index on due_at; it never scans all enrollments."""
    async with SQLiteStore(tmp_path / "plan.db"):
        pass
    with sqlite3.connect(tmp_path / "plan.db") as db:
        plan = " ".join(
            str(row[-1])
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT e.id FROM enrollments e JOIN leads l ON l.id = e.lead_id "
                "WHERE e.state = 'active' AND e.due_at <= ? ORDER BY e.due_at, e.id LIMIT 500",
                (0,),
            )
        )
        assert "enrollments_due" in plan, plan
        plan = " ".join(
            str(row[-1])
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE state IN ('queued', 'deferred') "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT 10",
                (0,),
            )
        )
        assert "messages_due" in plan, plan


async def test_a_paused_scenarios_enrollments_are_neither_due_nor_a_wakeup(store: SQLiteStore) -> None:
    """Enrollments of a scenario that is not loaded (broken file) wait; they do not keep the daemon awake."""
    await enrolled(store, "a@example.com", due=T0 - timedelta(hours=1))
    assert await store.due_enrollments(now=T0, limit=10, scenarios=["other"]) == []
    assert await store.next_wakeup(scenarios=["other"]) is None
    assert await store.next_wakeup(scenarios=[]) is None


async def test_a_due_enrollment_knows_its_previous_message_is_still_pending(store: SQLiteStore) -> None:
    """While the earlier step's message is deferred, the due enrollment carries when it is next tried."""
    [enrollment] = await enrolled(store, "a@example.com", due=T0)
    a = await lead_id(store, "a@example.com")
    await store.apply_updates([queue_update(enrollment, a, not_before=T0 + timedelta(hours=2))], now=T0)
    await store.db.execute("UPDATE enrollments SET due_at = ? WHERE id = ?", (ms(T0), enrollment))
    [due] = await store.due_enrollments(now=T0, limit=10, scenarios=["nurture"])
    assert due.previous_pending_until == T0 + timedelta(hours=2)


async def test_entry_candidates_stop_at_through_lead_id(store: SQLiteStore) -> None:
    """`through_lead_id` bounds the ids one query looks through, so a pass can go window by window."""
    await store.upsert_leads(leads("a@example.com", "b@example.com", "c@example.com"), list_name="signups", now=T0)
    a, b = await lead_id(store, "a@example.com"), await lead_id(store, "b@example.com")
    found = await store.entry_candidates(
        scenario="nurture", list_name="signups", reentry_after=None, now=T0, after_lead_id=a, through_lead_id=b, limit=10
    )
    assert [lead.email for lead in found] == ["b@example.com"]
    assert await store.last_lead_id() == await lead_id(store, "c@example.com")
