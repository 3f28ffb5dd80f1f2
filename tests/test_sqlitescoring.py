"""Scoring storage against a real SQLite file: the re-scoring queue, decisions, history, accounts, API, outbox."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import rows
from test_tracking import NOW, make_messages

from mailer.apiinput import EventInput
from mailer.errors import UserError
from mailer.leads import Lead
from mailer.schema import MIGRATIONS
from mailer.scoremodel import (
    SCORED_ROW_TYPES,
    AccountChange,
    Contribution,
    GradeResult,
    LeadChange,
    NewDelivery,
    ScoreResult,
    StageChange,
    Trigger,
)
from mailer.sqlitestore import SQLiteStore
from mailer.store import BounceRecord, Reclassification, TrackingEvent

LATER = NOW + timedelta(hours=1)




def queued(store: SQLiteStore) -> set[int]:
    return {r[0] for r in rows(store, "SELECT lead_id FROM scoring_queue")}


def clear_queue(store: SQLiteStore) -> None:
    rows(store, "DELETE FROM scoring_queue")


async def add_leads(store: SQLiteStore, *emails: str, **fields: Any) -> list[int]:
    await store.upsert_leads([Lead(email=e, **fields) for e in emails], list_name=None, now=NOW)
    found = [await store.get_lead(e) for e in emails]
    return [lead.id for lead in found if lead is not None and lead.id is not None]


def change(
    lead_id: int,
    score: int,
    *,
    grade: str = "",
    stage: StageChange | None = None,
    product: int = 0,
    account: str | None = None,
    engaged: datetime | None = None,
    at: datetime = LATER,
) -> LeadChange:
    return LeadChange(
        lead_id=lead_id,
        score=ScoreResult(
            score=score, product_score=product, contributions=(Contribution("clicked pricing", 2, float(score)),),
            last_engaged_at=engaged,
        ),
        grade=GradeResult(grade=grade, points=30.0 if grade else 0.0, matched=(("decision maker", 30.0),) if grade else ()),
        stage=stage,
        at=at,
        account=account,
    )


async def apply(store: SQLiteStore, *changes: LeadChange, **kwargs: Any) -> int:
    arguments: dict[str, Any] = {"done": (), "triggers": (), "deliveries": (), "now": LATER, **kwargs}
    return await store.apply_scoring(list(changes), **arguments)


def delivery(event_id: str, webhook: str = "crm") -> NewDelivery:
    return NewDelivery(webhook=webhook, event_type="stage_changed", event_id=event_id, body=b'{"id": "%s"}' % event_id.encode())


# The queue: every writer re-scores through the triggers


async def test_every_writer_queues_the_lead(store: SQLiteStore) -> None:
    """Tracking events, consent changes, bounces, failures, profile updates and machine re-judging each queue their lead."""
    [message] = await make_messages(store, 1)
    [lead_id] = [r[0] for r in rows(store, "SELECT lead_id FROM messages WHERE id = ?", (message,))]
    assert queued(store) == {lead_id}  # a new lead is scored once

    async def queues(write: Any) -> bool:
        clear_queue(store)
        await write
        return lead_id in queued(store)

    click = TrackingEvent(at=NOW, type="clicked", message=message, machine=False, data={"link": 1, "tag": "pricing"})
    assert await queues(store.record_tracking_events([click]))
    assert await queues(store.reclassify_tracking_events([Reclassification(message, ((1, NOW),), "all-links")]))
    assert await queues(
        store.subscribe(
            email="lead0@example.com", first_name="", last_name="", list_name="news", source="pricing-form",
            consent_text="Yes", ip="::1", user_agent="test", double_opt_in=False, confirm_message_id="<c@x>", now=NOW,
        )
    )
    assert await queues(
        store.unsubscribe(
            message=message, email=None, list_name="news", everything=False, method="one-click", ip="", user_agent="",
            now=NOW,
        )
    )
    bounce = BounceRecord(
        at=NOW, source="dsn", email="lead0@example.com", kind="bounce", reason="userunknown", bounce_class="hard",
        action="suppress", message=message, lead_id=lead_id,
    )
    assert await queues(store.record_bounce(bounce))
    assert await queues(
        store.upsert_leads([Lead(email="lead0@example.com", job_title="Director")], list_name=None, now=NOW)
    )
    assert await queues(store.record_api_event(
        email="lead0@example.com", type="page_visit", at=NOW, name="/pricing", data={}, key=None, now=NOW
    ))


async def test_unchanged_profiles_machine_events_and_history_do_not_queue(store: SQLiteStore) -> None:
    """A re-import changing nothing, machine events, unscored events and the engine's own history leave the queue empty."""
    [message] = await make_messages(store, 1)
    [lead_id] = [r[0] for r in rows(store, "SELECT lead_id FROM messages WHERE id = ?", (message,))]
    clear_queue(store)
    await store.upsert_leads([Lead(email="lead0@example.com")], list_name="news", now=NOW)
    await store.record_tracking_events([TrackingEvent(at=NOW, type="opened", message=message, machine=True)])
    await store.enroll(scenario="other", lead_ids=[lead_id], due_at=NOW, now=NOW)  # an 'entered' event
    await apply(store, change(lead_id, 40, grade="B", stage=StageChange("lead", "MQL", "score 40")))
    assert queued(store) == set()
    assert rows(store, "SELECT count(*) FROM events WHERE type IN ('score_changed', 'grade_changed', 'stage_changed')") == [(3,)]


async def test_the_triggers_cover_exactly_the_scored_row_types(store: SQLiteStore) -> None:
    """Each of SCORED_ROW_TYPES queues its lead when written by hand; other types and lead-less rows do not."""
    [lead_id] = await add_leads(store, "a@example.com")
    for kind in [*SCORED_ROW_TYPES, "sent", "entered", "score_changed", "deferred", "unsuppressed"]:
        clear_queue(store)
        rows(store, "INSERT INTO events (at, type, lead_id) VALUES (0, ?, ?)", (kind, lead_id))
        rows(store, "INSERT INTO events (at, type, lead_id) VALUES (0, ?, NULL)", (kind,))
        assert (queued(store) == {lead_id}) == (kind in SCORED_ROW_TYPES), kind


async def test_a_touch_while_scoring_is_not_lost(store: SQLiteStore) -> None:
    """An event written between taking a lead and applying its score keeps the lead queued for the next batch."""
    [message] = await make_messages(store, 1)
    [(work, stamp)] = await store.take_scoring_work(limit=10)
    assert work.lead.id is not None and work.events == ()
    click = TrackingEvent(at=NOW, type="clicked", message=message, machine=False, data={"link": 1})
    await store.record_tracking_events([click])
    await apply(store, change(work.lead.id, 0), done=[(work.lead.id, stamp)])
    assert await store.scoring_backlog() == 1
    [(again, second)] = await store.take_scoring_work(limit=10)
    assert second != stamp and [e.type for e in again.events] == ["clicked"]
    await apply(store, change(work.lead.id, 5), done=[(work.lead.id, second)])
    assert await store.scoring_backlog() == 0
    assert await store.take_scoring_work(limit=10) == []


async def test_work_carries_the_lead_its_human_events_and_stage_since(store: SQLiteStore) -> None:
    """Taken work holds the stored lead, only its human scoring events (API keys kept), stage_since and account."""
    [message] = await make_messages(store, 1)
    [lead_id] = [r[0] for r in rows(store, "SELECT lead_id FROM messages WHERE id = ?", (message,))]
    await store.record_tracking_events([
        TrackingEvent(at=NOW, type="opened", message=message, machine=True),
        TrackingEvent(at=NOW, type="clicked", message=message, machine=False, data={"link": 1, "tag": "pricing"}),
    ])
    await store.record_api_event(
        email="lead0@example.com", type="product_event", at=NOW, name="invited_teammate", data={}, key="k-1", now=NOW
    )
    await apply(store, change(lead_id, 20, grade="C", stage=StageChange("lead", "MQL", "r"), account="example.com",
                              engaged=NOW))
    [(work, _)] = await store.take_scoring_work(limit=10)
    [(click_id,)] = rows(store, "SELECT id FROM events WHERE type = 'clicked'")
    assert (work.lead.score, work.lead.grade, work.lead.stage) == (20, "C", "MQL")
    assert work.stage_since == LATER and work.account == "example.com" and work.last_engaged_at == NOW
    assert sorted((e.type, e.name, e.key) for e in work.events) == [
        ("clicked", "pricing", f"e{click_id}"),
        ("product_event", "invited_teammate", "k-1"),
    ]


async def test_batches_go_round_the_queue(store: SQLiteStore) -> None:
    """Leads touched again and again cannot starve later ones: each batch starts after the last."""
    ids = await add_leads(store, *(f"l{n}@example.com" for n in range(5)))
    first = await store.take_scoring_work(limit=2)
    rows(store, "UPDATE scoring_queue SET stamp = stamp + 1 WHERE lead_id IN (?, ?)", tuple(ids[:2]))  # touched again
    second = await store.take_scoring_work(limit=2)
    third = await store.take_scoring_work(limit=2)
    assert [w.lead.id for w, _ in first] == ids[:2]
    assert [w.lead.id for w, _ in second] == ids[2:4]
    assert [w.lead.id for w, _ in third] == [ids[4], ids[0]]


async def test_scoring_inputs_page_every_lead(store: SQLiteStore) -> None:
    """Rebuild input pages through every lead by id, each with its own events."""
    ids = await add_leads(store, "a@example.com", "b@example.com", "c@example.com")
    for lead_id in ids:
        await store.record_api_event(
            email=f"{'abc'[ids.index(lead_id)]}@example.com", type="page_visit", at=NOW, name=f"/p{lead_id}", data={},
            key=None, now=NOW,
        )
    first = await store.scoring_inputs(after_lead_id=0, limit=2)
    rest = await store.scoring_inputs(after_lead_id=ids[1], limit=2)
    assert [i.lead.id for i in first + rest] == ids
    assert [[e.name for e in i.events] for i in first + rest] == [[f"/p{i}"] for i in ids]
    assert await store.scoring_inputs(after_lead_id=ids[2], limit=2) == []


# Applying decisions


async def test_apply_writes_only_what_differs_with_one_history_event_per_change(store: SQLiteStore) -> None:
    """Unchanged decisions write nothing; a changed score, grade and stage each log one event with its reason."""
    [lead_id] = await add_leads(store, "a@example.com")
    rows(store, "CREATE TABLE lead_writes (id INTEGER)")
    rows(store, "CREATE TRIGGER count_writes AFTER UPDATE ON leads BEGIN INSERT INTO lead_writes VALUES (NEW.id); END")
    await apply(store, change(lead_id, 0))
    assert rows(store, "SELECT count(*) FROM lead_writes") == [(0,)]
    assert await store.lead_history(lead_id) == []

    await apply(store, change(lead_id, 55, grade="B", stage=StageChange("lead", "MQL", "score 55 ≥ 50 and grade B ≥ B")))
    await apply(store, change(lead_id, 55, grade="B"))  # the same decision again
    await apply(store, change(lead_id, 60, grade="B"))
    assert rows(store, "SELECT count(*) FROM lead_writes") == [(2,)]
    history = await store.lead_history(lead_id)
    assert [(h.type, h.data["from"], h.data["to"]) for h in history] == [
        ("score_changed", 0, 55), ("grade_changed", "", "B"), ("stage_changed", "lead", "MQL"), ("score_changed", 55, 60),
    ]
    assert history[0].data["contributions"] == [["clicked pricing", 2, 55.0]]
    assert history[0].data["reason"] == "clicked pricing ×2 +55"
    assert history[1].data["matched"] == [["decision maker", 30.0]]
    assert history[2].data == {"from": "lead", "to": "MQL", "reason": "score 55 ≥ 50 and grade B ≥ B", "by": "rules"}
    lead = await store.get_lead("a@example.com")
    assert lead is not None and (lead.score, lead.grade, lead.stage) == (60, "B", "MQL")
    assert rows(store, "SELECT stage_since FROM leads") == [(int(LATER.timestamp() * 1000),)]
    assert [h.type for h in await store.lead_history(lead_id, limit=2)] == ["stage_changed", "score_changed"]


async def test_a_stage_move_made_meanwhile_wins(store: SQLiteStore) -> None:
    """A rules move judged from a stage sales have since changed is not written, and its triggers do not fire."""
    [lead_id] = await add_leads(store, "a@example.com")
    await store.set_stage(lead_id, StageChange("lead", "SGL", "created by sales", by="sales"), now=NOW)
    made = await apply(
        store, change(lead_id, 70, stage=StageChange("lead", "MQL", "score 70")), triggers=[Trigger("mql-follow-up", lead_id)]
    )
    lead = await store.get_lead("a@example.com")
    assert made == 0 and lead is not None and (lead.stage, lead.score) == ("SGL", 70)
    assert rows(store, "SELECT count(*) FROM enrollments") == [(0,)]


async def test_triggers_enroll_once_then_in_a_new_cycle(store: SQLiteStore) -> None:
    """A trigger enrolls a lead due now; again while active it does nothing; after the lead left it starts cycle 2."""
    [a, b] = await add_leads(store, "a@example.com", "b@example.com")
    made = await apply(store, triggers=[Trigger("follow-up", a), Trigger("follow-up", a), Trigger("follow-up", b)])
    assert made == 2
    assert await apply(store, triggers=[Trigger("follow-up", a)]) == 0
    rows(store, "UPDATE enrollments SET state = 'completed' WHERE lead_id = ?", (a,))
    assert await apply(store, triggers=[Trigger("follow-up", a), Trigger("follow-up", 999)]) == 1
    assert rows(store, "SELECT lead_id, cycle, state, due_at FROM enrollments ORDER BY id") == [
        (a, 1, "completed", int(LATER.timestamp() * 1000)),
        (b, 1, "active", int(LATER.timestamp() * 1000)),
        (a, 2, "active", int(LATER.timestamp() * 1000)),
    ]
    assert rows(store, "SELECT lead_id, scenario, data FROM events WHERE type = 'entered' ORDER BY id") == [
        (a, "follow-up", '{"cycle": 1}'), (b, "follow-up", '{"cycle": 1}'), (a, "follow-up", '{"cycle": 2}'),
    ]
    due = await store.due_enrollments(now=LATER, limit=10, scenarios=["follow-up"])
    assert sorted(d.lead.email for d in due) == ["a@example.com", "b@example.com"]


async def test_the_outbox_keeps_each_delivery_once(store: SQLiteStore) -> None:
    """A delivery written twice (a retried batch) is stored once, due at once."""
    [lead_id] = await add_leads(store, "a@example.com")
    await apply(store, change(lead_id, 1), deliveries=[delivery("ev-1"), delivery("ev-1"), delivery("ev-1", "slack")])
    await apply(store, change(lead_id, 1), deliveries=[delivery("ev-1")])
    due = await store.due_deliveries(now=LATER, limit=10)
    assert [(d.webhook, d.event_id, d.body, d.state, d.attempts) for d in due] == [
        ("crm", "ev-1", b'{"id": "ev-1"}', "pending", 0), ("slack", "ev-1", b'{"id": "ev-1"}', "pending", 0),
    ]


async def test_a_trigger_waits_its_first_step_and_keeps_the_reentry_rule(store: SQLiteStore) -> None:
    """The first step is due after the scenario's first wait; no re-entry ever without it, and only after `after` with it."""
    [a, b] = await add_leads(store, "a@example.com", "b@example.com")
    once = Trigger("handoff", a, wait=timedelta(days=1), reentry_after=None)
    monthly = Trigger("handoff", b, reentry_after=timedelta(days=30))
    assert await apply(store, triggers=[once, monthly]) == 2
    assert rows(store, "SELECT lead_id, due_at FROM enrollments ORDER BY lead_id") == [
        (a, int((LATER + timedelta(days=1)).timestamp() * 1000)), (b, int(LATER.timestamp() * 1000)),
    ]
    rows(store, "UPDATE enrollments SET state = 'completed', updated_at = ?", (int(LATER.timestamp() * 1000),))
    assert await apply(store, triggers=[once, monthly]) == 0  # a: never again; b: not within 30 days
    rows(store, "UPDATE enrollments SET updated_at = ?", (int((LATER - timedelta(days=31)).timestamp() * 1000),))
    assert await apply(store, triggers=[once, monthly]) == 1
    assert rows(store, "SELECT lead_id, cycle FROM enrollments WHERE state = 'active'") == [(b, 2)]


async def test_set_stage_logs_enrolls_announces_and_requeues(store: SQLiteStore) -> None:
    """A manual move writes the stage, its history, its triggers and webhooks, and queues the lead; a stale one is refused."""
    [lead_id] = await add_leads(store, "a@example.com")
    clear_queue(store)
    accept = StageChange("lead", "SAL", "accepted", by="sales")
    await store.set_stage(lead_id, accept, now=NOW, triggers=[Trigger("handoff", lead_id)], deliveries=[delivery("st-1")])
    lead = await store.get_lead("a@example.com")
    assert lead is not None and lead.stage == "SAL" and queued(store) == {lead_id}
    [entry] = await store.lead_history(lead_id)
    assert entry.data == {"from": "lead", "to": "SAL", "reason": "accepted", "by": "sales"} and entry.at == NOW
    assert rows(store, "SELECT scenario, state FROM enrollments") == [("handoff", "active")]
    assert [d.event_id for d in await store.deliveries()] == ["st-1"]
    with pytest.raises(UserError, match="changed to SAL"):
        await store.set_stage(lead_id, accept, now=NOW)
    with pytest.raises(UserError, match="no lead"):
        await store.set_stage(999, accept, now=NOW)


async def test_leads_by_stage_pages_and_lead_reads_carry_scores(store: SQLiteStore) -> None:
    """Leads by stage come a page at a time with score, product score and grade, as every lead read does."""
    ids = await add_leads(store, "a@example.com", "b@example.com", "c@example.com")
    mql = StageChange("lead", "MQL", "r")
    await apply(store, *(change(i, 50 + n, grade="A", stage=mql, product=n) for n, i in enumerate(ids[:2])))
    first = await store.leads_by_stage("MQL", limit=1)
    second = await store.leads_by_stage("MQL", limit=5, after_id=ids[0])
    assert [(x.email, x.score, x.product_score, x.grade) for x in first + second] == [
        ("a@example.com", 50, 0, "A"), ("b@example.com", 51, 1, "A"),
    ]
    assert [x.email for x in await store.leads_by_stage(None)] == ["a@example.com", "b@example.com", "c@example.com"]
    [sample] = await store.sample_leads(1)
    assert (sample.score, sample.grade) == (50, "A")


# Accounts


async def test_account_rollup_sums_positive_scores_and_stages_change_with_history(store: SQLiteStore) -> None:
    """An account's roll-up adds its leads' positive scores; MQA and back are stored and logged; listings roll up live."""
    ids = await add_leads(store, "a@acme.example", "b@acme.example", "c@acme.example", "d@other.example")
    await apply(store, *(change(i, s, account=acct) for i, s, acct in zip(
        ids, (40, 45, -20, 10), ("acme.example",) * 3 + ("other.example",), strict=True
    )))
    rollup = await store.account_rollup(["acme.example", "other.example", "nobody.example"])
    assert rollup == {"acme.example": (85, ""), "other.example": (10, ""), "nobody.example": (0, "")}
    assert await store.accounts() == [("acme.example", 85, ""), ("other.example", 10, "")]
    await store.apply_account_changes(
        [AccountChange("acme.example", 85, "MQA", "", "85 ≥ 80", LATER),
         AccountChange("other.example", 10, "", "", "", LATER)],
        deliveries=[delivery("acct-1")],
    )
    assert (await store.account_rollup(["acme.example"]))["acme.example"] == (85, "MQA")
    assert await store.accounts(stage="MQA") == [("acme.example", 85, "MQA")]
    assert await store.accounts() == [("acme.example", 85, "MQA"), ("other.example", 10, "")]
    await store.apply_account_changes([AccountChange("acme.example", 30, "", "MQA", "30 < 80", LATER)], deliveries=[])
    assert await store.accounts(stage="MQA") == [] and await store.accounts(stage="", limit=1) == [("acme.example", 85, "")]
    logged = rows(store, "SELECT lead_id, data FROM events WHERE type = 'account_stage_changed' ORDER BY id")
    assert [(r[0], json.loads(r[1])) for r in logged] == [
        (None, {"account": "acme.example", "from": "", "to": "MQA", "score": 85, "reason": "85 ≥ 80"}),
        (None, {"account": "acme.example", "from": "MQA", "to": "", "score": 30, "reason": "30 < 80"}),
    ]
    assert [d.event_id for d in await store.deliveries()] == ["acct-1"]


# The API side


async def test_api_events_replayed_by_key_write_nothing(store: SQLiteStore) -> None:
    """An API event with a key seen before is refused unwritten; an unknown address becomes a lead."""
    posted: dict[str, Any] = {
        "email": " New@Example.com", "type": "form_submitted", "at": NOW, "name": "demo-request", "data": {"plan": "pro"},
        "now": NOW,
    }
    assert await store.record_api_event(**posted, key="form-42")
    assert not await store.record_api_event(**posted, key="form-42")
    assert await store.record_api_event(**posted, key=None)
    lead = await store.get_lead("new@example.com")
    assert lead is not None and lead.first_name == ""
    found = rows(store, "SELECT type, data FROM events WHERE lead_id = ? ORDER BY id", (lead.id,))
    assert [(t, json.loads(d)) for t, d in found] == [
        ("form_submitted", {"plan": "pro", "name": "demo-request", "key": "form-42"}),
        ("form_submitted", {"plan": "pro", "name": "demo-request"}),
    ]
    with pytest.raises(UserError, match="unknown event type"):
        await store.record_api_event(**{**posted, "type": "opened"}, key=None)


async def test_a_batch_of_api_events_is_written_with_the_webhook_calls_of_its_new_events(store: SQLiteStore) -> None:
    """record_api_events writes the new events and their calls together; a replayed key (even within the batch)
    writes neither, and an event refused mid-batch writes nothing of the batch."""
    def posted(key: str, type: str = "form_submitted") -> EventInput:
        return EventInput(email="buyer@example.com", type=type, at=NOW, name="demo", data={}, key=key)

    def calls(event: EventInput) -> list[NewDelivery]:
        return [NewDelivery("crm", event.type, event.key or "", b"{}")]

    new = await store.record_api_events([posted("api:1"), posted("api:2"), posted("api:1")], now=NOW, deliveries=calls)
    assert [event.key for event in new] == ["api:1", "api:2"]
    assert rows(store, "SELECT event_id FROM webhook_deliveries ORDER BY id") == [("api:1",), ("api:2",)]
    assert await store.record_api_events([posted("api:2")], now=NOW, deliveries=calls) == []
    with pytest.raises(UserError, match="unknown event type"):
        await store.record_api_events([posted("api:3"), posted("api:4", "opened")], now=NOW, deliveries=calls)
    assert rows(store, "SELECT count(*) FROM events WHERE type = 'form_submitted'") == [(2,)]
    assert rows(store, "SELECT count(*) FROM webhook_deliveries") == [(2,)]


async def test_api_keys_are_added_checked_and_revoked(store: SQLiteStore) -> None:
    """A key's hash names it until revoked; names are unique; use is noted at most once a minute."""
    await store.add_api_key("crm", b"h1" * 16, now=NOW)
    with pytest.raises(UserError, match="exists"):
        await store.add_api_key("crm", b"h2" * 16, now=NOW)
    assert await store.api_key_name(b"h1" * 16, now=NOW) == "crm"
    assert await store.api_key_name(b"h1" * 16, now=NOW + timedelta(seconds=30)) == "crm"
    assert await store.api_keys() == [("crm", NOW, None, NOW)]
    await store.api_key_name(b"h1" * 16, now=LATER)
    assert await store.api_key_name(b"unknown", now=LATER) is None
    assert await store.revoke_api_key("crm", now=LATER)
    assert not await store.revoke_api_key("crm", now=LATER)
    assert await store.api_key_name(b"h1" * 16, now=LATER) is None
    assert await store.api_keys() == [("crm", NOW, LATER, LATER)]


async def test_deliveries_come_due_log_attempts_and_give_up(store: SQLiteStore) -> None:
    """Due deliveries skip those in flight; a failed try waits for its retry, a delivered one is done, the last gives up."""
    [lead_id] = await add_leads(store, "a@example.com")
    await apply(store, change(lead_id, 1), deliveries=[delivery("a"), delivery("b"), delivery("c", "slack")])
    a, b, c = sorted(await store.due_deliveries(now=LATER, limit=10), key=lambda d: d.event_id)
    assert [d.event_id for d in await store.due_deliveries(now=LATER, limit=10, exclude=[a.id])] == ["b", "c"]
    assert await store.due_deliveries(now=NOW, limit=10) == []  # not due before they were written
    retry = LATER + timedelta(seconds=30)
    await store.record_delivery_attempt(a.id, at=LATER, status=500, error="HTTP 500", duration_ms=12, delivered=False,
                                        next_attempt_at=retry)
    await store.record_delivery_attempt(b.id, at=LATER, status=204, error="", duration_ms=8, delivered=True,
                                        next_attempt_at=None)
    await store.record_delivery_attempt(c.id, at=LATER, status=None, error="timed out", duration_ms=10000,
                                        delivered=False, next_attempt_at=None)
    assert await store.due_deliveries(now=LATER, limit=10) == []
    [again] = await store.due_deliveries(now=retry, limit=10)
    assert (again.id, again.attempts, again.last_status, again.last_error, again.next_attempt_at) == (
        a.id, 1, 500, "HTTP 500", retry,
    )
    await store.record_delivery_attempt(a.id, at=retry, status=200, error="", duration_ms=5, delivered=True,
                                        next_attempt_at=None)
    await store.record_delivery_attempt(b.id, at=retry, status=500, error="late", duration_ms=5, delivered=False,
                                        next_attempt_at=retry)  # a late answer for a delivered one changes nothing
    assert [(d.event_id, d.state, d.attempts) for d in await store.deliveries()] == [
        ("c", "failed", 1), ("b", "delivered", 1), ("a", "delivered", 2),
    ]
    assert [d.event_id for d in await store.deliveries(webhook="slack")] == ["c"]
    assert await store.delivery_attempts(a.id) == [(LATER, 500, "HTTP 500", 12), (retry, 200, "", 5)]


# Schema


async def test_a_version_4_database_migrates_with_its_data(tmp_path: Path) -> None:
    """Opening a v4 database adds the scoring schema, keeps leads and events, and queues every lead for scoring."""
    path = tmp_path / "mailer.db"
    with sqlite3.connect(path) as db:
        for migration in MIGRATIONS[:4]:
            db.executescript(migration)
        db.execute("PRAGMA user_version = 4")
        db.execute("INSERT INTO leads (email, job_title, stage, created_at, updated_at) VALUES ('old@example.com', 'CTO', 'SQL', 0, 0)")
        db.execute("INSERT INTO events (at, type, lead_id, data) VALUES (5, 'opened', 1, '{}')")
    async with SQLiteStore(path) as store:
        assert await store._pragma("PRAGMA user_version") == len(MIGRATIONS)
        lead = await store.get_lead("old@example.com")
        assert lead is not None and (lead.job_title, lead.stage, lead.score, lead.grade) == ("CTO", "SQL", 0, "")
        [(work, _)] = await store.take_scoring_work(limit=10)
        assert work.lead.email == "old@example.com" and [e.key for e in work.events] == ["e1"]


async def test_hot_queries_use_their_indexes(store: SQLiteStore) -> None:
    """take_scoring_work, due_deliveries and the account roll-up search indexes, never scan events or the outbox."""
    await add_leads(store, "a@example.com")
    statements: list[str] = []
    await store.db.set_trace_callback(statements.append)
    await store.take_scoring_work(limit=500)
    await store.due_deliveries(now=NOW, limit=10, exclude=[1, 2])
    await store.account_rollup(["acme.example"])
    await store.db.set_trace_callback(None)
    plans = {sql: " | ".join(r[3] for r in rows(store, f"EXPLAIN QUERY PLAN {sql}")) for sql in statements
             if sql.lstrip().startswith("SELECT")}
    assert len(plans) == 5, plans
    joined = " || ".join(plans.values())
    assert "USING INDEX events_lead (lead_id=?)" in joined
    assert "USING INDEX webhook_deliveries_due (next_attempt_at<?)" in joined
    assert "USING COVERING INDEX leads_account (account=?)" in joined
    assert "SEARCH q USING INTEGER PRIMARY KEY (rowid>?)" in joined
    for plan in plans.values():
        assert "SCAN events" not in plan and "SCAN webhook_deliveries" not in plan and "SCAN l" not in plan, plan
