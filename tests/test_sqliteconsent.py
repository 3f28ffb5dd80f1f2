"""Tests for mailer.sqliteconsent (and the v3 schema) against a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import rows

from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.schema import MIGRATIONS
from mailer.sqlitereport import REPORT_BOUNCES, REPORT_EVENTS, REPORT_OPENS
from mailer.sqlitestore import SQLiteStore
from mailer.store import BounceRecord, EnrollmentUpdate, NewMessage, Outcome, Suppression
from mailer.timestamps import ms

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
LEASE = timedelta(minutes=10)




async def subscribe(store: SQLiteStore, email: str, list_name: str = "news", *, double: bool = True, n: int = 1) -> Any:
    return await store.subscribe(
        email=email, first_name="Ann", last_name="Lee", list_name=list_name, source="pricing-page",
        consent_text="Yes, send me the newsletter.", ip="192.0.2.7", user_agent="Firefox/128",
        double_opt_in=double, confirm_message_id=f"<confirm{n}.{email}@acme.example>", now=T0,
    )


async def candidates(store: SQLiteStore, list_name: str) -> list[str]:
    found = await store.entry_candidates(
        scenario="nurture", list_name=list_name, reentry_after=None, now=T0, after_lead_id=0, limit=100
    )
    return [lead.email for lead in found]


# Migration


async def test_a_version_2_database_migrates_with_its_members_confirmed(tmp_path: Path) -> None:
    """A version 2 database (before consent) migrates up, its list members confirmed and still entering."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 2")
        db.execute("INSERT INTO leads (email, created_at, updated_at) VALUES ('old@example.com', 1, 1)")
        db.execute("INSERT INTO lists (name, created_at) VALUES ('news', 1)")
        db.execute("INSERT INTO list_members (list_id, lead_id, added_at) VALUES (1, 1, 1)")
    async with SQLiteStore(path) as store:
        assert rows(store, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert rows(store, "SELECT status FROM list_members") == [("confirmed",)]
        assert await candidates(store, "news") == ["old@example.com"]
        assert await store.membership("old@example.com", "news") == "confirmed"
        assert rows(store, "SELECT count(*) FROM consents") == [(0,)]


async def test_membership_status_is_checked_by_the_schema(store: SQLiteStore) -> None:
    """A list member's status can only be pending or confirmed."""
    await store.upsert_leads([Lead(email="a@example.com")], list_name="news", now=T0)
    with pytest.raises(sqlite3.IntegrityError):
        await store.db.execute("UPDATE list_members SET status = 'maybe'")


# Subscribing and confirming


async def test_double_opt_in_subscription_is_pending_with_a_queued_confirmation_and_evidence(store: SQLiteStore) -> None:
    """Double opt-in: the lead is a pending member, a confirmation message is queued, and the consent is evidenced."""
    result = await subscribe(store, " Ann@Example.com ")
    assert result.status == "pending" and result.confirm_message is not None
    assert await store.membership("ann@example.com", "news") == "pending"
    assert rows(store, "SELECT id, enrollment_id, lead_id, scenario, step_id, state, next_attempt_at, message_id FROM messages") == [
        (result.confirm_message, None, result.lead_id, "@optin", "news", "queued", ms(T0), "<confirm1. Ann@Example.com @acme.example>")
    ]
    [record] = await store.consents_of("ann@example.com")
    assert (record.action, record.method, record.list_name, record.ip, record.user_agent) == (
        "pending", "form", "news", "192.0.2.7", "Firefox/128"
    )
    assert (record.text, record.source, record.message, record.at) == (
        "Yes, send me the newsletter.", "pricing-page", result.confirm_message, T0
    )
    lead = await store.get_lead("ann@example.com")
    assert lead is not None and (lead.first_name, lead.last_name, lead.source) == ("Ann", "Lee", "pricing-page")


async def test_pending_members_never_enter_a_scenario_until_they_confirm(store: SQLiteStore) -> None:
    """A pending member is no entry candidate; after the confirmation click it is."""
    result = await subscribe(store, "ann@example.com")
    await store.upsert_leads([Lead(email="imported@example.com")], list_name="news", now=T0)
    assert await candidates(store, "news") == ["imported@example.com"]
    assert await store.confirm_subscription(lead_id=result.lead_id, list_name="news", ip="198.51.100.1", user_agent="Mail", now=T0)
    assert await store.membership("ann@example.com", "news") == "confirmed"
    assert await candidates(store, "news") == ["ann@example.com", "imported@example.com"]
    actions = [(c.action, c.method, c.ip) for c in await store.consents_of("ann@example.com")]
    assert actions == [("pending", "form", "192.0.2.7"), ("confirmed", "confirm-link", "198.51.100.1")]


async def test_confirming_twice_is_harmless_and_an_unknown_membership_is_refused(store: SQLiteStore) -> None:
    """A second click changes nothing and adds no evidence; a lead not in the list cannot confirm it."""
    result = await subscribe(store, "ann@example.com")
    for _ in range(2):
        assert await store.confirm_subscription(lead_id=result.lead_id, list_name="news", ip="", user_agent="", now=T0)
    assert [c.action for c in await store.consents_of("ann@example.com")] == ["pending", "confirmed"]
    assert not await store.confirm_subscription(lead_id=result.lead_id, list_name="other", ip="", user_agent="", now=T0)
    assert not await store.confirm_subscription(lead_id=result.lead_id + 99, list_name="news", ip="", user_agent="", now=T0)


async def test_single_opt_in_confirms_at_once_and_a_second_post_is_already(store: SQLiteStore) -> None:
    """Without double opt-in the member is confirmed at once, no email is queued, and posting again says 'already'."""
    first = await subscribe(store, "ann@example.com", double=False)
    assert (first.status, first.confirm_message) == ("confirmed", None)
    again = await subscribe(store, "ann@example.com", double=True, n=2)
    assert (again.status, again.confirm_message, again.lead_id) == ("already", None, first.lead_id)
    assert await store.message_counts() == {}
    assert [c.action for c in await store.consents_of("ann@example.com")] == ["subscribed"]


async def test_a_second_form_post_reuses_the_confirmation_still_on_its_way(store: SQLiteStore) -> None:
    """Posting the form twice before the confirmation is sent queues one email, not two; once sent, a new one."""
    first = await subscribe(store, "ann@example.com", n=1)
    second = await subscribe(store, "ann@example.com", n=2)
    assert second.confirm_message == first.confirm_message
    assert await store.message_counts() == {"queued": 1}
    [claimed] = await store.claim_messages(now=T0, limit=10, lease=LEASE)
    await store.record_outcomes([Outcome(claimed.id, first.lead_id, MessageState.SENT, T0)])
    third = await subscribe(store, "ann@example.com", n=3)
    assert third.confirm_message not in (None, first.confirm_message)


async def test_a_confirmation_message_is_claimed_sent_and_counted_like_any_message(store: SQLiteStore) -> None:
    """The "@optin" row, with no enrollment, goes through claim, outcome, step counts and status."""
    result = await subscribe(store, "ann@example.com")
    [claimed] = await store.claim_messages(now=T0, limit=10, lease=LEASE)
    assert (claimed.id, claimed.scenario, claimed.step_id, claimed.lead.email) == (result.confirm_message, "@optin", "news", "ann@example.com")
    assert claimed.is_confirmation and not claimed.suppressed_for(None)
    await store.record_outcomes([Outcome(claimed.id, result.lead_id, MessageState.SENT, T0)])
    assert await store.message_counts() == {"sent": 1}
    assert (await store.step_counts())[("@optin", "news")] == {"sent": 1}
    assert await store.next_wakeup(scenarios=[]) is None
    assert await store.recover_in_flight(now=T0) == 0


async def test_a_confirmation_is_stopped_by_a_global_hard_bounce_but_not_by_the_lists_unsubscribe(store: SQLiteStore) -> None:
    """The sender's last check: a claimed confirmation carries the suppressions and judges them by the opt-in rules."""
    await store.add_suppressions([Suppression("ann@example.com", "unsubscribe", "news")], now=T0)
    await subscribe(store, "ann@example.com", double=False)
    [claimed] = await store.claim_messages(now=T0, limit=10, lease=LEASE)
    assert claimed.suppressions == {("news", "unsubscribe")} and not claimed.suppressed_for("news")
    await store.release([claimed.id], now=T0)
    await store.add_suppressions([Suppression("ann@example.com", "hard-bounce")], now=T0)
    [claimed] = await store.claim_messages(now=T0, limit=10, lease=LEASE)
    assert claimed.suppressed_for(None)


async def test_coming_back_after_an_unsubscribe_takes_a_confirmation_which_lifts_it(store: SQLiteStore) -> None:
    """An unsubscribed member re-subscribing on a single opt-in list gets a confirmation; the click lifts that list's unsubscribe only."""
    await store.upsert_leads([Lead(email="ann@example.com")], list_name="news", now=T0)
    await store.add_suppressions(
        [Suppression("ann@example.com", "unsubscribe", "news"), Suppression("ann@example.com", "unsubscribe", "deals")],
        now=T0,
    )
    result = await subscribe(store, "ann@example.com", double=False)
    assert result.status == "pending" and result.confirm_message is not None
    assert await store.membership("ann@example.com", "news") == "confirmed"  # a member, still suppressed
    assert await candidates(store, "news") == []
    await store.confirm_subscription(lead_id=result.lead_id, list_name="news", ip="", user_agent="", now=T0)
    assert await store.suppressions_of("ann@example.com") == [("deals", "unsubscribe", "")]
    assert await candidates(store, "news") == ["ann@example.com"]


async def test_a_confirmation_never_lifts_a_bounce_or_a_global_unsubscribe(store: SQLiteStore) -> None:
    """A confirmed opt-in leaves a global unsubscribe and a list's hard bounce in place."""
    result = await subscribe(store, "ann@example.com")
    await store.add_suppressions(
        [Suppression("ann@example.com", "unsubscribe"), Suppression("ann@example.com", "hard-bounce", "news")], now=T0
    )
    await store.confirm_subscription(lead_id=result.lead_id, list_name="news", ip="", user_agent="", now=T0)
    assert sorted(await store.suppressions_of("ann@example.com")) == [("", "unsubscribe", ""), ("news", "hard-bounce", "")]


# Imports


async def test_imported_members_are_confirmed_with_evidence_naming_the_file(store: SQLiteStore) -> None:
    """Importing into a list confirms pending members and records an 'imported' consent per lead, naming the file."""
    await subscribe(store, "ann@example.com")
    await store.upsert_leads(
        [Lead(email="ann@example.com"), Lead(email="bob@example.com")], list_name="news", now=T0, consent_source="crm.csv"
    )
    assert await store.membership("ann@example.com", "news") == "confirmed"
    assert await store.membership("bob@example.com", "news") == "confirmed"
    [imported] = await store.consents_of("bob@example.com")
    assert (imported.action, imported.method, imported.source, imported.list_name) == ("imported", "import", "crm.csv", "news")


async def test_an_import_never_lifts_a_suppression(store: SQLiteStore) -> None:
    """An unsubscribed address imported again stays suppressed and does not enter."""
    await store.upsert_leads([Lead(email="ann@example.com")], list_name="news", now=T0)
    await store.unsubscribe(message=None, email="ann@example.com", list_name="news", everything=False, method="mailto", ip="", user_agent="", now=T0)
    await store.upsert_leads([Lead(email="ann@example.com")], list_name="news", now=T0, consent_source="again.csv")
    assert await candidates(store, "news") == []


# Unsubscribing


async def queued_message(store: SQLiteStore, email: str, *, scenario: str = "nurture", step: str = "welcome") -> int:
    await store.upsert_leads([Lead(email=email)], list_name="news", now=T0)
    lead = await store.get_lead(email)
    assert lead is not None and lead.id is not None
    await store.enroll(scenario=scenario, lead_ids=[lead.id], due_at=T0, now=T0)
    [(enrollment,)] = rows(store, "SELECT id FROM enrollments WHERE lead_id = ? AND scenario = ?", (lead.id, scenario))
    await store.apply_updates(
        [EnrollmentUpdate(enrollment, lead.id, scenario, 1, "active", T0, "queued", {"step": step},
                          NewMessage(f"<{email}.{step}@acme.example>", step, T0))],
        now=T0,
    )
    [(message,)] = rows(store, "SELECT id FROM messages WHERE enrollment_id = ?", (enrollment,))
    return int(message)


async def test_unsubscribe_through_a_message_suppresses_that_list_with_evidence_and_event(store: SQLiteStore) -> None:
    """A one-click unsubscribe from a message suppresses the address for that list, logs evidence and an event on the step."""
    message = await queued_message(store, "ann@example.com")
    email = await store.unsubscribe(
        message=message, email=None, list_name="news", everything=False, method="one-click",
        ip="203.0.113.9", user_agent="Gmail", now=T0,
    )
    assert email == "ann@example.com"
    assert rows(store, "SELECT email, list, reason FROM suppressions") == [("ann@example.com", "news", "unsubscribe")]
    record = (await store.consents_of("ann@example.com"))[-1]
    assert (record.action, record.method, record.list_name, record.message, record.ip) == (
        "unsubscribed", "one-click", "news", message, "203.0.113.9"
    )
    [event] = rows(store, "SELECT type, message_id, scenario, step_id, data FROM events WHERE type = 'unsubscribed'")
    assert event[:4] == ("unsubscribed", message, "nurture", "welcome")
    assert json.loads(event[4]) == {"list": "news", "method": "one-click"}


async def test_unsubscribe_from_everything_is_global_and_repeating_it_logs_no_second_event(store: SQLiteStore) -> None:
    """`everything` writes a global suppression; the same request again (a retried POST) adds no event."""
    message = await queued_message(store, "ann@example.com")
    for _ in range(2):
        await store.unsubscribe(message=message, email=None, list_name="news", everything=True, method="unsubscribe-page", ip="", user_agent="", now=T0)
    assert rows(store, "SELECT list, reason FROM suppressions") == [("", "unsubscribe")]
    assert rows(store, "SELECT count(*) FROM events WHERE type = 'unsubscribed'") == [(1,)]


async def test_unsubscribe_keeps_a_hard_bounce_and_upgrades_unconfirmed(store: SQLiteStore) -> None:
    """An existing hard bounce stays; an 'unconfirmed' suppression becomes 'unsubscribe'."""
    await store.add_suppressions(
        [Suppression("a@example.com", "hard-bounce"), Suppression("b@example.com", "unconfirmed", "news")], now=T0
    )
    for email in ("a@example.com", "b@example.com"):
        await store.unsubscribe(message=None, email=email, list_name="news", everything=email.startswith("a"), method="mailto", ip="", user_agent="", now=T0)
    assert rows(store, "SELECT email, list, reason FROM suppressions ORDER BY email") == [
        ("a@example.com", "", "hard-bounce"), ("b@example.com", "news", "unsubscribe")
    ]


async def test_unsubscribe_of_an_unknown_message_does_nothing(store: SQLiteStore) -> None:
    """A message row that does not exist suppresses nobody and returns None."""
    assert await store.unsubscribe(message=424242, email=None, list_name="", everything=False, method="one-click", ip="", user_agent="", now=T0) is None
    assert rows(store, "SELECT count(*) FROM suppressions") == [(0,)]


async def test_unsubscribe_is_committed_when_it_returns(store: SQLiteStore) -> None:
    """Another connection sees the suppression as soon as the call returns (RFC 8058: done before the response)."""
    await store.unsubscribe(message=None, email="x@example.com", list_name="", everything=False, method="mailto", ip="", user_agent="", now=T0)
    assert rows(store, "SELECT email, list FROM suppressions") == [("x@example.com", "")]


# Suppression management


async def test_add_list_and_remove_suppressions(store: SQLiteStore) -> None:
    """Adding counts only new ones, listing filters by reason and list, removing lifts one pair and logs it."""
    added = await store.add_suppressions(
        [Suppression("A@example.com", "manual", "", "asked by phone"), Suppression("b@example.com", "manual", "news")], now=T0
    )
    assert added == 2
    assert await store.add_suppressions([Suppression("a@example.com", "complaint")], now=T0 + timedelta(hours=1)) == 0
    assert [(s.email, s.list_name) for s in await store.list_suppressions(list_name="news")] == [("b@example.com", "news")]
    assert [s.email for s in await store.list_suppressions(reason="manual")] == ["a@example.com", "b@example.com"]
    assert await store.list_suppressions(reason="complaint") == []
    assert len(await store.list_suppressions(limit=1)) == 1
    lifted = await store.unsuppress("a@example.com", list_name="", now=T0)
    assert lifted is not None and (lifted.reason, lifted.detail, lifted.created_at) == ("manual", "asked by phone", T0)
    assert await store.unsuppress("a@example.com", list_name="", now=T0) is None
    assert rows(store, "SELECT type, data FROM events") == [
        ("unsuppressed", json.dumps({"list": "", "reason": "manual", "by": "cli"}))
    ]


# The report's counts


async def send(store: SQLiteStore, message: int, lead_id: int) -> None:
    await store.claim_messages(now=T0, limit=100, lease=LEASE)
    await store.record_outcomes([Outcome(message, lead_id, MessageState.SENT, T0)])


async def tracked(store: SQLiteStore, kind: str, message: int, *, machine: int = 0) -> None:
    await store.db.execute(
        "INSERT INTO events (at, type, lead_id, message_id, scenario, step_id, machine) "
        "SELECT ?, ?, lead_id, id, scenario, step_id, ? FROM messages WHERE id = ?",
        (ms(T0), kind, machine, message),
    )


async def test_step_figures_count_unique_human_and_machine_events_and_bounces(store: SQLiteStore) -> None:
    """Sent, delivered, bounces, unique human opens (clicks included), clicks, unsubscribes, complaints and machine events per step."""
    emails = [f"l{n}@example.com" for n in range(5)]
    messages = [await queued_message(store, email) for email in emails]
    lead_ids = [r[0] for r in rows(store, "SELECT lead_id FROM messages ORDER BY id")]
    for message, lead in zip(messages, lead_ids):
        await send(store, message, lead)
    await tracked(store, "opened", messages[0])
    await tracked(store, "opened", messages[0])  # the same reader twice: one unique open
    await tracked(store, "clicked", messages[1])  # a click without a pixel load is an open too
    await tracked(store, "clicked", messages[1])
    await tracked(store, "opened", messages[2], machine=1)
    await tracked(store, "clicked", messages[2], machine=1)
    await tracked(store, "opened", messages[3], machine=1)
    await store.record_bounce(BounceRecord(at=T0, source="dsn", email=emails[4], kind="bounce", reason="userunknown",
                                           bounce_class="hard", action="suppress", message=messages[4], lead_id=lead_ids[4]))
    await store.record_bounce(BounceRecord(at=T0, source="dsn", email=emails[3], kind="feedback", reason="feedback",
                                           bounce_class="hard", action="complaint", message=messages[3], lead_id=lead_ids[3]))
    await store.unsubscribe(message=messages[2], email=None, list_name="news", everything=False, method="one-click", ip="", user_agent="", now=T0)
    [figures] = await store.step_figures()
    assert (figures.scenario, figures.step_id) == ("nurture", "welcome")
    assert (figures.sent, figures.delivered, figures.hard_bounces, figures.soft_bounces) == (5, 4, 1, 0)
    assert (figures.opens, figures.clicks, figures.machine_opens, figures.machine_clicks) == (2, 1, 2, 1)
    assert (figures.unsubscribes, figures.complaints) == (1, 1)
    assert await store.step_figures("nurture") == [figures]
    assert await store.step_figures("other") == []


async def test_step_figures_count_smtp_time_bounces_and_leave_out_undone_ones(store: SQLiteStore) -> None:
    """A refusal at RCPT is a hard bounce of a message never sent; an undone bounce no longer counts."""
    message = await queued_message(store, "a@example.com")
    lead = rows(store, "SELECT lead_id FROM messages")[0][0]
    await store.claim_messages(now=T0, limit=1, lease=LEASE)
    bounce = BounceRecord(at=T0, source="smtp", email="a@example.com", kind="bounce", reason="mailboxfull",
                          bounce_class="soft", action="retry", message=message, lead_id=lead)
    await store.record_outcomes([Outcome(message, lead, MessageState.DEFERRED, T0, next_attempt_at=T0, bounce=bounce)])
    [figures] = await store.step_figures()
    assert (figures.sent, figures.delivered, figures.soft_bounces) == (0, 0, 1)
    [record] = await store.bounces(email="a@example.com")
    assert record.id is not None
    await store.undo_bounce(record.id, now=T0)
    assert await store.step_figures() == []


async def test_the_report_queries_read_covering_indexes_only(store: SQLiteStore) -> None:
    """The report reads events from the events_report index alone, and messages by primary key, never scanning either."""
    for scope, params in (("scenario = ?", ("nurture",)), ("scenario IS NOT NULL", ())):
        for query in (REPORT_EVENTS, REPORT_OPENS):
            plan = rows(store, "EXPLAIN QUERY PLAN " + query.format(scope=scope), params)
            details = " | ".join(str(row[-1]) for row in plan)
            assert "COVERING INDEX events_report" in details, details
        plan = rows(store, "EXPLAIN QUERY PLAN " + REPORT_BOUNCES.format(scope=scope), params)
        details = " | ".join(str(row[-1]) for row in plan)
        assert "SEARCH m USING INTEGER PRIMARY KEY" in details and "SCAN m" not in details, details
