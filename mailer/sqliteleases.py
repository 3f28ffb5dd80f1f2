"""Leases on messages and the daemons that hold them, in SQLite (rules in mailer.daemons).

A claim moves due messages to `sending` and writes the claimer's owner id in `lease_owner`;
recovery moves `sending` back to `queued` only for owners that are gone. The partial index
`messages_leased` holds only the rows in `sending` (a few batches), so recovery reads those
and never the whole queue.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from mailer.daemons import DaemonRecord
from mailer.lifecycle import CLAIMABLE, MessageState
from mailer.sqliteconsent import SUPPRESSIONS_OF_LEAD, suppressions_column
from mailer.sqlitescoring import LEAD_COLUMNS, lead_from_row
from mailer.sqlitetables import StoreTables
from mailer.store import ClaimedMessage
from mailer.timestamps import from_ms, ms


class LeaseTables(StoreTables):
    async def claim_messages(
        self, *, now: datetime, limit: int, lease: timedelta, owner: str | None = None
    ) -> list[ClaimedMessage]:
        """Lease due messages for one attempt each: queued or deferred → sending, held by `owner`.

        A claim naming no owner (a tool, a benchmark) is recovered only once `lease` has passed.
        """
        stamp = ms(now)
        # Written exactly as the partial index's WHERE, so SQLite can prove it applies.
        claimable = "'queued', 'deferred'"
        assert {MessageState(x.strip(" '")) for x in claimable.split(",")} == CLAIMABLE
        async with self.transaction():
            rows = await self._fetchall(
                f"""
                UPDATE messages SET state = 'sending', lease_owner = ?, lease_until = ?, updated_at = ?
                WHERE id IN (
                    SELECT id FROM messages
                    WHERE state IN ({claimable}) AND next_attempt_at <= ?
                    ORDER BY next_attempt_at LIMIT ?)
                RETURNING id
                """,
                (owner, ms(now + lease), stamp, stamp, limit),
            )
            ids = [row[0] for row in rows]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = await self._fetchall(
                f"""
                SELECT m.id, m.message_id, m.scenario, m.step_id, m.attempts, m.created_at, m.first_attempt_at,
                       {SUPPRESSIONS_OF_LEAD}, {LEAD_COLUMNS}
                FROM messages m JOIN leads l ON l.id = m.lead_id
                WHERE m.id IN ({marks}) ORDER BY m.next_attempt_at, m.id
                """,
                ids,
            )
        return [
            ClaimedMessage(
                id=r[0],
                message_id=r[1],
                scenario=r[2],
                step_id=r[3],
                attempts=r[4],
                created_at=from_ms(r[5]),
                first_attempt_at=from_ms(r[6]) if r[6] is not None else None,
                suppressions=suppressions_column(r[7]),
                lead=lead_from_row(r, 8),
            )
            for r in rows
        ]

    async def release(self, message_ids: Sequence[int], *, now: datetime, owner: str | None = None) -> None:
        """Hand leased messages back unsent (shutdown): sending → queued; with `owner`, only
        those it still holds."""
        if not message_ids:
            return
        held, params = held_by(owner)
        async with self.transaction():
            await self.db.executemany(
                "UPDATE messages SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = ? "
                f"WHERE id = ? AND state = 'sending' {held}",
                [(ms(now), message_id, *params) for message_id in message_ids],
            )

    async def recover_in_flight(self, *, now: datetime, owner: str | None = None, dead: Sequence[str] = ()) -> int:
        """Requeue the messages whose lease is lost: they may repeat (they may have been sent).

        Lost: held by a daemon in `dead` (whose registration goes too) or by one not
        registered, or held by nobody past its lease_until. Never those of `owner`, the caller,
        nor of a registered daemon not in `dead`: it is alive and may be sending them.
        """
        stamp = ms(now)
        async with self.transaction():
            gone = [name for name in dead if name != owner]
            if gone:
                marks = ",".join("?" * len(gone))
                await self.db.execute(f"DELETE FROM daemons WHERE owner IN ({marks})", gone)
            rows = await self._fetchall(
                """
                SELECT id, lead_id, lease_owner FROM messages INDEXED BY messages_leased
                WHERE state = 'sending' AND (
                    (lease_owner IS NULL AND coalesce(lease_until <= ?, 1))
                    OR (lease_owner IS NOT NULL AND lease_owner IS NOT ?
                        AND lease_owner NOT IN (SELECT owner FROM daemons)))
                """,
                (stamp, owner),
            )
            await self.db.executemany(
                "UPDATE messages SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ?",
                [(stamp, row[0]) for row in rows],
            )
            await self.db.executemany(
                "INSERT INTO events (at, type, lead_id, message_id, data) VALUES (?, 'recovered', ?, ?, ?)",
                [(stamp, row[1], row[0], json.dumps({"owner": row[2]})) for row in rows],
            )
        return len(rows)

    # -- the daemons holding leases ----------------------------------------------------

    async def register_daemon(self, record: DaemonRecord) -> None:
        async with self.transaction():
            await self.db.execute(
                "INSERT OR REPLACE INTO daemons (owner, pid, host, pid_scope, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (record.owner, record.pid, record.host, record.pid_scope, ms(record.started_at), ms(record.heartbeat_at)),
            )

    async def heartbeat(self, owner: str, *, at: datetime) -> bool:
        """Note `owner` alive at `at`; False if it is not registered (taken for dead meanwhile)."""
        async with self.transaction():
            rows = await self._fetchall(
                "UPDATE daemons SET heartbeat_at = ? WHERE owner = ? RETURNING owner", (ms(at), owner)
            )
        return bool(rows)

    async def unregister_daemon(self, owner: str) -> None:
        async with self.transaction():
            await self.db.execute("DELETE FROM daemons WHERE owner = ?", (owner,))

    async def daemons(self) -> list[DaemonRecord]:
        rows = await self._fetchall(
            "SELECT owner, pid, host, pid_scope, started_at, heartbeat_at FROM daemons ORDER BY started_at"
        )
        return [DaemonRecord(r[0], r[1], r[2], r[3], from_ms(r[4]), from_ms(r[5])) for r in rows]


def held_by(owner: str | None) -> tuple[str, tuple[str, ...]]:
    """The extra WHERE (and its parameter) that limits a write to `owner`'s leases; none for None."""
    return ("AND lease_owner = ?", (owner,)) if owner is not None else ("", ())
