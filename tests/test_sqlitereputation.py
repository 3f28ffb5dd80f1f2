"""The reputation queries (sent per hour, complaints, engagement) against a real SQLite file."""

from __future__ import annotations

from datetime import datetime, timedelta



from mailer.lifecycle import MessageState
from mailer.sqlitestore import SQLiteStore
from mailer.store import BounceRecord, Outcome, TrackingEvent
from test_sqlitestore import LEASE, T0, lead_id, queued



async def sent(store: SQLiteStore, *emails: str, at: datetime = T0) -> list[int]:
    """Queue one message per lead and record each as sent at `at`; their row ids in email order."""
    ids = await queued(store, *emails)
    claimed = await store.claim_messages(now=T0, limit=100, lease=LEASE)
    await store.record_outcomes([Outcome(m.id, m.lead.id or 0, MessageState.SENT, at) for m in claimed])
    return ids


def feedback(message: int, at: datetime, *, kind: str = "feedback", action: str = "complaint") -> BounceRecord:
    return BounceRecord(
        at=at, source="dsn", email="x@example.com", kind=kind, reason="feedback", bounce_class="none",
        action=action, message=message,
    )  # fmt: skip


async def test_sent_messages_are_counted_per_scenario_step_and_hour_since_the_instant(store: SQLiteStore) -> None:
    """Sends group by (scenario, step, hour); those before `since` are left out."""
    await sent(store, "a@example.com", "b@example.com", at=T0 + timedelta(minutes=30))
    hour = int((T0 + timedelta(minutes=30)).timestamp()) // 3600
    assert await store.sent_per_hour(since=T0) == [("nurture", "welcome", hour, 2)]
    assert await store.sent_per_hour(since=T0 + timedelta(hours=1)) == []


async def test_complaints_count_feedback_reports_matched_to_messages(store: SQLiteStore) -> None:
    """Feedback reports taken as complaints count per scenario and step; bounces, not-spam or auth-failure reports, undone reports and older ones do not."""
    first, second, third = await sent(store, "a@example.com", "b@example.com", "c@example.com")
    await store.record_bounce(feedback(first, T0 + timedelta(hours=1)))
    await store.record_bounce(feedback(second, T0 + timedelta(hours=2)))
    await store.record_bounce(feedback(third, T0 + timedelta(hours=1), kind="bounce"))
    undone = await store.record_bounce(feedback(third, T0 + timedelta(hours=1)))
    await store.undo_bounce(undone, now=T0 + timedelta(hours=3))
    await store.record_bounce(feedback(third, T0 + timedelta(hours=1), action="record"))  # Feedback-Type: not-spam
    await store.record_bounce(feedback(third, T0 + timedelta(hours=1), action="sender-alert"))  # auth-failure
    assert await store.complaints_since(since=T0) == [("nurture", "welcome", 2)]
    assert await store.complaints_since(since=T0 + timedelta(minutes=90)) == [("nurture", "welcome", 1)]


async def test_engagement_scores_weigh_human_clicks_above_opens(store: SQLiteStore) -> None:
    """A human click is worth 3, a human open 1; machine events, older ones and silent leads score 0."""
    first, second, third = await sent(store, "a@example.com", "b@example.com", "c@example.com")
    later = T0 + timedelta(hours=1)
    await store.record_tracking_events([
        TrackingEvent(later, "opened", first, machine=False),
        TrackingEvent(later, "clicked", first, machine=False),
        TrackingEvent(later, "opened", second, machine=False),
        TrackingEvent(later, "clicked", second, machine=True, reason="scanner"),
        TrackingEvent(T0 - timedelta(days=200), "clicked", third, machine=False),
    ])  # fmt: skip
    ids = [await lead_id(store, email) for email in ("a@example.com", "b@example.com", "c@example.com")]
    scores = await store.engagement_scores([*ids, 999], since=T0 - timedelta(days=90))
    assert scores == {ids[0]: 4, ids[1]: 1, ids[2]: 0, 999: 0}
