"""Tracking events in the SQLite store: batch insert from message rows, and burst reclassification."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from typing import Any



from mailer.sqlitestore import SQLiteStore
from mailer.store import Reclassification, TrackingEvent
from test_tracking import NOW, make_messages



def rows(store: SQLiteStore, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(store.path) as db:
        return list(db.execute(sql))


def click(message: int, link: int, seconds: int = 0, **data: Any) -> TrackingEvent:
    return TrackingEvent(
        at=NOW + timedelta(seconds=seconds), type="clicked", message=message, machine=False, data={"link": link, **data}
    )


async def test_events_take_lead_scenario_and_step_from_their_message_in_order(store: SQLiteStore) -> None:
    """Each event is stored with its message's lead, scenario and step, in batch order, with typed columns."""
    first, second = await make_messages(store, 2)
    stored = await store.record_tracking_events(
        [
            TrackingEvent(at=NOW, type="opened", message=second, machine=True, reason="prefetch",
                          data={"ip": "::1", "user_agent": "Mozilla/5.0 (日本語)"}),
            click(first, 1, seconds=1, url="https://acme.example/?q=\"x\"", tag="pricing"),
        ]
    )
    assert stored == 2
    found = rows(store, "SELECT type, message_id, lead_id = (SELECT m.lead_id FROM messages m WHERE m.id = events.message_id), "
                        "scenario, step_id, machine, typeof(at), typeof(machine), data FROM events "
                        "WHERE type IN ('opened', 'clicked') ORDER BY id")
    assert [r[:8] for r in found] == [
        ("opened", second, 1, "nurture", "welcome", 1, "integer", "integer"),
        ("clicked", first, 1, "nurture", "welcome", 0, "integer", "integer"),
    ]
    assert json.loads(found[0][8]) == {"ip": "::1", "user_agent": "Mozilla/5.0 (日本語)", "reason": "prefetch"}
    assert json.loads(found[1][8])["url"] == "https://acme.example/?q=\"x\""


async def test_events_of_unknown_messages_are_skipped(store: SQLiteStore) -> None:
    """An event naming no stored message inserts nothing; the rest of the batch is stored."""
    [message] = await make_messages(store, 1)
    assert await store.record_tracking_events([click(424242, 1), click(message, 1)]) == 1
    assert await store.record_tracking_events([]) == 0
    assert rows(store, "SELECT message_id FROM events WHERE type = 'clicked'") == [(message,)]


async def test_reclassification_marks_only_the_named_clicks(store: SQLiteStore) -> None:
    """A burst marks the named (link, time) clicks machine with the reason; other clicks stay human."""
    [message] = await make_messages(store, 1)
    await store.record_tracking_events([click(message, 1), click(message, 2), click(message, 3, seconds=60)])
    changed = await store.reclassify_tracking_events(
        [Reclassification(message, ((1, NOW), (2, NOW + timedelta(seconds=5))), "all-links")]
    )
    assert changed == 1  # link 2 was clicked at NOW, not NOW + 5 s
    found = rows(store, "SELECT json_extract(data, '$.link'), machine, json_extract(data, '$.reason') "
                        "FROM events WHERE type = 'clicked' ORDER BY id")
    assert found == [(1, 1, "all-links"), (2, 0, None), (3, 0, None)]
