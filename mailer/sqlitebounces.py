"""The SQLite store's suppression and bounce tables: evidence, decisions, and their undoing.

A mixin of `SQLiteStore`, kept apart because bounces are their own concept: what came back,
the rule that read it, the action taken, and the suppression that points back at it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any


from mailer.lifecycle import CORRECTIONS, MessageState
from mailer.store import BounceRecord, MessageRef, Suppression
from mailer.timestamps import from_ms, ms
from mailer.sqlitescoring import QUEUE_LEAD
from mailer.sqlitetables import StoreTables


_BOUNCE_COLUMNS = (
    "id, at, source, email, kind, reason, bounce_class, action, status, reply_code, diagnostic, "
    "rule, remote_host, message_id, lead_id, evidence, suppression, undone_at, evidence_key"
)
# The events a bounce wrote (record_bounce) that scoring reads; an undone bounce's are marked
# `undone` in their data, and mailer.sqlitescoring leaves such rows out.
_BOUNCE_EVENTS = "('bounce', 'complained', 'feedback', 'delayed', 'delivered', 'vacation')"


def _bounce(r: Sequence[Any]) -> BounceRecord:
    return BounceRecord(
        id=r[0], at=from_ms(r[1]), source=r[2], email=r[3], kind=r[4], reason=r[5], bounce_class=r[6],
        action=r[7], status=r[8], reply_code=r[9], diagnostic=r[10], rule=r[11], remote_host=r[12],
        message=r[13], lead_id=r[14], evidence=bytes(r[15]), suppression=r[16],
        undone_at=from_ms(r[17]) if r[17] is not None else None, evidence_key=r[18],
    )


class BounceTables(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    async def _insert_bounce(self, bounce: BounceRecord) -> int:
        """Insert a bounce and the suppression it causes; inside the caller's transaction."""
        cursor = await self.db.execute(
            """
            INSERT INTO bounces (at, source, email, kind, reason, bounce_class, action, status,
                reply_code, diagnostic, rule, remote_host, message_id, lead_id, evidence, suppression, evidence_key)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                ms(bounce.at), bounce.source, bounce.email, bounce.kind, bounce.reason, bounce.bounce_class,
                bounce.action, bounce.status, bounce.reply_code, bounce.diagnostic, bounce.rule,
                bounce.remote_host, bounce.message, bounce.lead_id, bounce.evidence, bounce.suppression,
                bounce.evidence_key,
            ),
        )
        bounce_id = int(cursor.lastrowid or 0)
        if bounce.suppression:
            await self.db.execute(
                "INSERT OR IGNORE INTO suppressions (email, list, reason, detail, created_at, bounce_id) "
                "VALUES (?, '', ?, ?, ?, ?)",
                (bounce.email, bounce.suppression, f"{bounce.reason}: {bounce.diagnostic}"[:500], ms(bounce.at), bounce_id),
            )
        return bounce_id

    async def record_bounce(self, bounce: BounceRecord) -> int:
        """Store a bounce that arrived as a message: evidence, suppression, sent → bounced, event.

        A bounce whose `evidence_key` is stored already is not stored again: its id is returned.
        """
        async with self.transaction():
            if bounce.evidence_key is not None:
                rows = await self._fetchall("SELECT id FROM bounces WHERE evidence_key = ?", (bounce.evidence_key,))
                if rows:
                    return int(rows[0][0])
            bounce_id = await self._insert_bounce(bounce)
            if bounce.message is not None and bounce.kind == "bounce" and bounce.action != "record":
                await self.db.execute(
                    "UPDATE messages SET state = 'bounced', updated_at = ? WHERE id = ? AND state = 'sent'",
                    (ms(bounce.at), bounce.message),
                )
            # only a complaint is "complained" (scored, counted in the complaint rate); a
            # not-spam or auth-failure report is kept as "feedback"
            event = "complained" if bounce.action == "complaint" else bounce.kind
            await self.db.execute(
                "INSERT INTO events (at, type, lead_id, message_id, scenario, step_id, data) "
                "VALUES (?, ?, ?, ?, (SELECT scenario FROM messages WHERE id = ?), "
                "(SELECT step_id FROM messages WHERE id = ?), ?)",
                (
                    ms(bounce.at), event, bounce.lead_id, bounce.message, bounce.message, bounce.message,
                    json.dumps({"bounce": bounce_id, "reason": bounce.reason, "action": bounce.action}),
                ),
            )
        return bounce_id

    async def seen_bounce(self, evidence_key: str, *, email: str, evidence: bytes) -> BounceRecord | None:
        """The stored bounce with this evidence key, if any.

        A bounce stored before keys existed (schema 8) is found by its address and evidence
        bytes instead, and is given the key, so the next look finds it by key.
        """
        rows = await self._fetchall(f"SELECT {_BOUNCE_COLUMNS} FROM bounces WHERE evidence_key = ?", (evidence_key,))
        if rows:
            return _bounce(rows[0])
        rows = await self._fetchall(
            f"SELECT {_BOUNCE_COLUMNS} FROM bounces WHERE email = ? AND evidence_key IS NULL "
            "AND source IN ('dsn', 'ingest') AND evidence = ? ORDER BY id LIMIT 1",
            (email, evidence),
        )
        if not rows:
            return None
        async with self.transaction():
            await self.db.execute("UPDATE bounces SET evidence_key = ? WHERE id = ?", (evidence_key, rows[0][0]))
        return _bounce(rows[0])

    async def soft_bounces_since(self, email: str, since: datetime) -> int:
        """The address's soft bounces in the window that count toward escalation.

        Only bounces matched to a message of ours count: anyone can mail the bounce domain a
        report naming any address (README: a bounce that names no message of ours suppresses
        nobody).
        """
        rows = await self._fetchall(
            "SELECT count(*) FROM bounces WHERE email = ? AND at >= ? AND bounce_class = 'soft' "
            "AND action IN ('retry', 'soft-bounce-escalation') AND undone_at IS NULL AND message_id IS NOT NULL",
            (email, ms(since)),
        )
        return int(rows[0][0])

    async def find_message(self, *, row_id: int | None = None, message_id: str | None = None) -> MessageRef | None:
        column, value = ("m.id", row_id) if row_id is not None else ("m.message_id", message_id)
        rows = await self._fetchall(
            f"SELECT m.id, m.message_id, m.lead_id, l.email, m.scenario, m.step_id, m.state "
            f"FROM messages m JOIN leads l ON l.id = m.lead_id WHERE {column} = ?",
            (value,),
        )
        if not rows:
            return None
        r = rows[0]
        return MessageRef(id=r[0], message_id=r[1], lead_id=r[2], email=r[3], scenario=r[4], step_id=r[5], state=MessageState(r[6]))

    async def bounces(self, *, email: str | None = None, limit: int = 50) -> list[BounceRecord]:
        where, params = ("WHERE email = ?", [email]) if email else ("", [])
        rows = await self._fetchall(
            f"SELECT {_BOUNCE_COLUMNS} FROM bounces {where} ORDER BY at DESC, id DESC LIMIT ?", [*params, limit]
        )
        return [_bounce(row) for row in rows]

    async def bounce(self, bounce_id: int) -> BounceRecord | None:
        rows = await self._fetchall(f"SELECT {_BOUNCE_COLUMNS} FROM bounces WHERE id = ?", (bounce_id,))
        return _bounce(rows[0]) if rows else None

    async def undo_bounce(self, bounce_id: int, *, now: datetime) -> BounceRecord | None:
        """Reverse a bounce (an operator's correction), keeping the evidence.

        Its suppression is lifted, unless another live bounce suppresses the address too (the
        suppression then rests on that one); it stops counting toward soft-bounce escalation and in the
        lead's score (its events are marked undone and the lead is queued for re-scoring);
        a message it moved from sent to bounced is sent again, unless another live bounce
        holds it. A bounce undone already is returned as it is, its undone_at unchanged.
        """
        found = await self.bounce(bounce_id)
        if found is None or found.undone_at is not None:
            return found
        stamp = ms(now)
        async with self.transaction():
            await self.db.execute("UPDATE bounces SET undone_at = ? WHERE id = ?", (stamp, bounce_id))
            lifted = await self.db.execute("DELETE FROM suppressions WHERE bounce_id = ?", (bounce_id,))
            if lifted.rowcount:
                # the address's suppression rested on this bounce: another live bounce that
                # suppresses it (a second hard bounce, a complaint) keeps it suppressed
                await self.db.execute(
                    "INSERT OR IGNORE INTO suppressions (email, list, reason, detail, created_at, bounce_id) "
                    "SELECT email, '', suppression, substr(reason || ': ' || coalesce(diagnostic, ''), 1, 500), at, id "
                    "FROM bounces WHERE email = ? AND id != ? AND undone_at IS NULL AND suppression IS NOT NULL "
                    "ORDER BY at DESC, id DESC LIMIT 1",
                    (found.email, bounce_id),
                )
            await self.db.execute(
                "INSERT INTO events (at, type, lead_id, data) VALUES (?, 'unsuppressed', ?, ?)",
                (stamp, found.lead_id, json.dumps({"bounce": bounce_id, "reason": found.reason})),
            )
            if found.lead_id is not None:
                await self._undo_bounce_events(found, stamp)
            if found.message is not None and found.source != "smtp":
                assert (MessageState.BOUNCED, MessageState.SENT) in CORRECTIONS  # mailer.lifecycle
                await self.db.execute(
                    "UPDATE messages SET state = 'sent', updated_at = ? WHERE id = ? AND state = 'bounced' "
                    "AND NOT EXISTS (SELECT 1 FROM bounces WHERE message_id = ? AND undone_at IS NULL "
                    "AND kind = 'bounce' AND action != 'record' AND source != 'smtp')",
                    (stamp, found.message, found.message),
                )
        return await self.bounce(bounce_id)

    async def _undo_bounce_events(self, found: BounceRecord, stamp: int) -> None:
        """Mark the scored events `found` wrote as undone and queue its lead for re-scoring."""
        assert found.id is not None and found.lead_id is not None
        await self.db.execute(
            f"UPDATE events SET data = json_set(data, '$.undone', ?) WHERE lead_id = ? AND type IN {_BOUNCE_EVENTS} "
            "AND json_extract(data, '$.bounce') = ?",
            (stamp, found.lead_id, found.id),
        )
        if found.source == "smtp" and found.message is not None:
            # a refusal during delivery is scored from the message's "failed" event, written
            # with the bounce at the same instant (mailer.sqlitestore.record_outcomes)
            await self.db.execute(
                "UPDATE events SET data = json_set(data, '$.undone', ?) WHERE lead_id = ? AND message_id = ? "
                "AND type = 'failed' AND at = ?",
                (stamp, found.lead_id, found.message, ms(found.at)),
            )
        await self.db.execute(QUEUE_LEAD, (found.lead_id,))

    async def suppressions_of(self, email: str) -> list[tuple[str, str, str]]:
        """(list, reason, detail) of every suppression of an address."""
        rows = await self._fetchall("SELECT list, reason, detail FROM suppressions WHERE email = ?", (email,))
        return [(r[0], r[1], r[2]) for r in rows]

    async def suppress(self, suppressions: Sequence[Suppression], *, now: datetime) -> None:
        async with self.transaction():
            await self.db.executemany(
                "INSERT OR IGNORE INTO suppressions (email, list, reason, detail, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(s.email, s.list_name, s.reason, s.detail, ms(now)) for s in suppressions],
            )

    async def bounce_summary(self, since: datetime) -> dict[str, int]:
        """Bounce decisions since an instant, by action (undone ones left out)."""
        rows = await self._fetchall(
            "SELECT action, count(*) FROM bounces WHERE at >= ? AND undone_at IS NULL GROUP BY action", (ms(since),)
        )
        return {action: count for action, count in rows}

    async def sent_since(self, since: datetime) -> int:
        rows = await self._fetchall("SELECT count(*) FROM events WHERE type = 'sent' AND at >= ?", (ms(since),))
        return int(rows[0][0])
