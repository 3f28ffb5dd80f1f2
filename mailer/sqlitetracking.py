"""The SQLite store's tracking events: opens and clicks, written in batches by mailer.eventqueue.

A mixin of `SQLiteStore`. One statement per batch inserts every event with the lead,
scenario and step of its message, read by the same statement (`INSERT … SELECT … JOIN
messages`), so the tracking server never reads the database per request; an event whose
message row does not exist (a token for a deleted message) inserts nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


from mailer.store import Reclassification, TrackingEvent
from mailer.timestamps import ms
from mailer.sqlitetables import StoreTables


class TrackingTables(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    async def record_tracking_events(self, events: Sequence[TrackingEvent]) -> int:
        """Insert opens and clicks in one transaction; returns how many were stored."""
        if not events:
            return 0
        batch = json.dumps(
            [[ms(e.at), e.type, int(e.machine), e.message, _data(e)] for e in events],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        async with self.transaction():
            # rowcount, not total_changes: the latter also counts the rows the scoring
            # triggers (schema 5) write into scoring_queue
            cursor = await self.db.execute(_INSERT_EVENTS, (batch,))
            return cursor.rowcount

    async def reclassify_tracking_events(self, changes: Sequence[Reclassification]) -> int:
        """Mark clicks stored as human as a machine's (a burst seen only at its second click)."""
        rows = [
            (change.reason, change.message, ms(at), link)
            for change in changes
            for link, at in change.clicks
        ]
        if not rows:
            return 0
        async with self.transaction():
            # events_message (message_id, type) finds the message's few clicks
            cursor = await self.db.executemany(
                """
                UPDATE events SET machine = 1, data = json_set(data, '$.reason', ?)
                WHERE message_id = ? AND type = 'clicked' AND machine = 0
                  AND at = ? AND json_extract(data, '$.link') = ?
                """,
                rows,
            )
            return cursor.rowcount  # the events changed, not the queue rows their trigger wrote


def _data(event: TrackingEvent) -> dict[str, Any]:
    return {**event.data, "reason": event.reason} if event.reason else event.data


# The whole batch is one JSON array bound as one parameter, unpacked by SQLite (json_each):
# one statement runs in C with the GIL released throughout. `executemany` binds each row in
# Python and takes the GIL back after each row, and on a busy server that hand-over costs
# more than the insert itself (bench/tracking.py: ~20 µs of CPU per event, a quarter of a
# pixel request's time).
_INSERT_EVENTS = """
    INSERT INTO events (at, type, lead_id, message_id, scenario, step_id, machine, data)
    SELECT json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'), m.lead_id, m.id, m.scenario,
           m.step_id, json_extract(e.value, '$[2]'), json_extract(e.value, '$[4]')
    FROM json_each(?) e JOIN messages m ON m.id = json_extract(e.value, '$[3]')
    ORDER BY e.key
"""
