"""The embedded store: SQLite through aiosqlite, WAL journal, schema versioned by migrations.

Durability (written in the README too): the journal is WAL and `synchronous` is FULL, so a
transaction that has committed survives a process crash and a power loss; one that has not
committed leaves no trace. Both settings are read back at start, and a database that cannot
run in WAL mode (a network file system, say) is refused rather than silently weakened.

Hot-path writes go through `executemany` inside one explicit transaction per batch: one
await per row costs about thirty times as much.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from mailer.conditions import Engagement
from mailer.errors import MailerError
from mailer.leads import Lead
from mailer.lifecycle import MessageState, check_transition
from mailer.schema import MIGRATIONS
from mailer.sqlitebounces import BounceTables
from mailer.sqlitecheckpoint import Checkpointer
from mailer.sqliteconsent import SUPPRESSIONS_OF_LEAD, ConsentTables, suppressions_column
from mailer.sqlitereport import ReportQueries
from mailer.sqlitereputation import ReputationQueries
from mailer.sqliteapi import ApiTables
from mailer.sqliteleases import LeaseTables, held_by
from mailer.sqlitequeue import QueueQueries
from mailer.sqlitetables import chunks
from mailer.sqlitescoring import LEAD_COLUMNS as _LEAD_COLUMNS
from mailer.sqlitescoring import ScoringTables
from mailer.sqlitescoring import lead_from_row as _lead
from mailer.sqlitetracking import TrackingTables
from mailer.sqlitewarmup import WarmupTables
from mailer.timestamps import from_ms, ms
from mailer.store import (
    DueEnrollment,
    EnrollmentUpdate,
    EventRecord,
    Outcome,
    UpsertCounts,
)

_GLOBALLY_SUPPRESSED = "EXISTS (SELECT 1 FROM suppressions s WHERE s.email = l.email AND s.list = '')"


class StoreError(MailerError):
    """The database cannot be used as it is (newer schema, no WAL)."""


class SQLiteStore(
    BounceTables, TrackingTables, ConsentTables, ReportQueries, WarmupTables, ReputationQueries, ScoringTables,
    ApiTables, LeaseTables, QueueQueries,
):
    """`Store` on one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout  # seconds to wait for another writer before failing
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self.db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await self.db.execute("PRAGMA foreign_keys = ON")
            mode = await self._pragma("PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); use a local disk")
            await self.db.execute("PRAGMA synchronous = FULL")
            if await self._pragma("PRAGMA synchronous") != 2:  # 2 is FULL
                raise StoreError(f"{self.path}: SQLite did not accept synchronous = FULL")
            await self._migrate()
        except BaseException:
            await self.close()  # a refused store must not leave its connection thread behind
            raise

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def checkpointing(self) -> AsyncIterator[None]:
        """While open, a connection of its own writes the log back into the database file, so
        the writers' commits never do (mailer.sqlitecheckpoint): the daemon serves in one."""
        checkpointer = Checkpointer(self.path, self.db, busy_timeout=self.busy_timeout)
        await checkpointer.start()
        try:
            yield
        finally:
            await checkpointer.stop()

    async def _pragma(self, sql: str) -> Any:
        async with self.db.execute(sql) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def _migrate(self) -> None:
        version = int(await self._pragma("PRAGMA user_version"))
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this mailer knows "
                f"({len(MIGRATIONS)}); upgrade mailer"
            )
        for number in range(version, len(MIGRATIONS)):
            async with self.transaction():
                for statement in _statements(MIGRATIONS[number]):
                    await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version = {number + 1}")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error: all of a batch or none of it.

        The daemon's tasks share one connection, so transactions take turns under a lock.
        """
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                await self.db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a busy database) leaves the transaction open: close it, or
                # every later BEGIN on this connection fails.
                if self.db.in_transaction:
                    await self.db.execute("ROLLBACK")
                raise

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # One call on the connection's thread, not execute then fetch: between those two, a
        # task sharing the connection could run BEGIN IMMEDIATE while this SELECT holds a read
        # snapshot open, and once another process (a second daemon) has written, SQLite
        # answers SQLITE_BUSY at once, without waiting out the busy timeout.
        return list(await self.db.execute_fetchall(sql, tuple(params)))

    # -- leads and lists ---------------------------------------------------------------

    async def upsert_leads(
        self, leads: Sequence[Lead], *, list_name: str | None, now: datetime, consent_source: str = ""
    ) -> UpsertCounts:
        """Create or update leads by address, all in one transaction; empty values never erase.

        Members added to a list are confirmed, with an 'imported' consent record naming
        `consent_source` (the file): whoever imports them vouches for their consent.
        """
        stamp = ms(now)
        added = 0
        async with self.transaction():
            existing: set[str] = set()
            emails = [lead.email for lead in leads]
            for chunk in chunks(emails, 500):
                marks = ",".join("?" * len(chunk))
                rows = await self._fetchall(f"SELECT email FROM leads WHERE email IN ({marks})", chunk)
                existing.update(row[0] for row in rows)
            await self.db.executemany(
                """
                INSERT INTO leads (email, first_name, last_name, company, job_title, timezone,
                                   source, attributes, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (email) DO UPDATE SET
                    first_name = coalesce(nullif(excluded.first_name, ''), first_name),
                    last_name = coalesce(nullif(excluded.last_name, ''), last_name),
                    company = coalesce(nullif(excluded.company, ''), company),
                    job_title = coalesce(nullif(excluded.job_title, ''), job_title),
                    timezone = coalesce(nullif(excluded.timezone, ''), timezone),
                    source = coalesce(source, excluded.source),
                    attributes = json_patch(attributes, excluded.attributes),
                    updated_at = excluded.updated_at
                """,
                [
                    (
                        lead.email,
                        lead.first_name,
                        lead.last_name,
                        lead.company,
                        lead.job_title,
                        lead.timezone,
                        lead.source,
                        # an empty value must not erase a stored one; None (an API null) does: json_patch
                        # deletes a key patched with null (RFC 7396). CSV imports never hold None.
                        json.dumps({k: v for k, v in lead.attributes.items() if v != ""}, ensure_ascii=False),
                        stamp,
                        stamp,
                    )
                    for lead in leads
                ],
            )
            if list_name:
                await self.db.execute(
                    "INSERT OR IGNORE INTO lists (name, created_at) VALUES (?, ?)", (list_name, stamp)
                )
                before = self.db.total_changes
                await self.db.executemany(
                    """
                    INSERT OR IGNORE INTO list_members (list_id, lead_id, added_at, status)
                    SELECT lists.id, leads.id, ?, 'confirmed' FROM lists, leads
                    WHERE lists.name = ? AND leads.email = ?
                    """,
                    [(stamp, list_name, email) for email in emails],
                )
                added = self.db.total_changes - before
                await self._confirm_imported(list_name=list_name, emails=emails, source=consent_source, stamp=stamp)
        created = len(set(emails) - existing)
        return UpsertCounts(created=created, updated=len(set(emails)) - created, added_to_list=added)

    async def get_lead(self, email: str) -> Lead | None:
        rows = await self._fetchall(f"SELECT {_LEAD_COLUMNS} FROM leads l WHERE l.email = ?", (email,))
        return _lead(rows[0]) if rows else None

    async def sample_leads(self, limit: int) -> list[Lead]:
        rows = await self._fetchall(f"SELECT {_LEAD_COLUMNS} FROM leads l ORDER BY l.id LIMIT ?", (limit,))
        return [_lead(row) for row in rows]

    async def list_names(self) -> list[str]:
        """The lists leads were imported or subscribed to."""
        return [str(row[0]) for row in await self._fetchall("SELECT name FROM lists ORDER BY name")]

    async def attribute_names(self, wanted: Collection[str], *, first: int) -> set[str]:
        """Which of `wanted` an attribute of any of the `first` leads (by id) is called."""
        if not wanted:
            return set()
        marks = ",".join("?" * len(wanted))
        rows = await self._fetchall(
            f"SELECT DISTINCT j.key FROM (SELECT attributes FROM leads ORDER BY id LIMIT ?) AS l, "
            f"json_each(l.attributes) AS j WHERE j.key IN ({marks})",
            (first, *wanted),
        )
        return {str(row[0]) for row in rows}

    async def lead_count(self) -> int:
        rows = await self._fetchall("SELECT count(*) FROM leads")
        return int(rows[0][0])

    async def last_lead_id(self) -> int:
        rows = await self._fetchall("SELECT max(id) FROM leads")
        return int(rows[0][0] or 0)

    async def lead_events(self, lead_id: int) -> list[EventRecord]:
        rows = await self._fetchall(
            "SELECT at, type, scenario, step_id, data FROM events WHERE lead_id = ? ORDER BY at, id",
            (lead_id,),
        )
        return [EventRecord(from_ms(r[0]), r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # -- enrollments -------------------------------------------------------------------

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
    ) -> list[Lead]:
        """Leads that may enter: confirmed in the list (if any), not suppressed, not already in it.

        A lead that went through the scenario may enter again only when re-entry is allowed
        and its last enrollment ended at least `reentry_after` ago. Lead ids after
        `after_lead_id`, and up to `through_lead_id` when given.
        """
        source = "leads l"
        params: list[Any] = []
        list_clause = ""
        if list_name is not None:
            source = "list_members m JOIN lists li ON li.id = m.list_id JOIN leads l ON l.id = m.lead_id"
            list_clause = (
                "AND li.name = ? AND m.status = 'confirmed' AND NOT EXISTS (SELECT 1 FROM suppressions s2"
                " WHERE s2.email = l.email AND s2.list = li.name)"
            )
            params.append(list_name)
        if reentry_after is None:
            enrolled = "e.scenario = ? AND e.lead_id = l.id"
            enrolled_params: list[Any] = [scenario]
        else:
            enrolled = "e.scenario = ? AND e.lead_id = l.id AND (e.state = 'active' OR e.updated_at > ?)"
            enrolled_params = [scenario, ms(now - reentry_after)]
        rows = await self._fetchall(
            f"""
            SELECT {_LEAD_COLUMNS} FROM {source}
            WHERE l.id > ? AND l.id <= ? {list_clause}
              AND NOT {_GLOBALLY_SUPPRESSED}
              AND NOT EXISTS (SELECT 1 FROM enrollments e WHERE {enrolled})
            ORDER BY l.id LIMIT ?
            """,
            [after_lead_id, through_lead_id if through_lead_id is not None else 2**63 - 1, *params, *enrolled_params, limit],
        )
        return [_lead(row) for row in rows]

    async def enroll(
        self, *, scenario: str, lead_ids: Sequence[int], due_at: datetime, now: datetime
    ) -> int:
        if not lead_ids:
            return 0
        stamp = ms(now)
        async with self.transaction():
            before = self.db.total_changes
            await self.db.executemany(
                """
                INSERT OR IGNORE INTO enrollments
                    (scenario, lead_id, cycle, state, step_index, due_at, entered_at, updated_at)
                SELECT ?, ?, coalesce(max(cycle), 0) + 1, 'active', 0, ?, ?, ?
                FROM enrollments WHERE scenario = ? AND lead_id = ?
                """,
                [(scenario, lead_id, ms(due_at), stamp, stamp, scenario, lead_id) for lead_id in lead_ids],
            )
            entered = self.db.total_changes - before
            await self.db.executemany(
                """
                INSERT INTO events (at, type, lead_id, scenario, data)
                SELECT entered_at, 'entered', lead_id, scenario, json_object('cycle', cycle)
                FROM enrollments WHERE scenario = ? AND lead_id = ? AND entered_at = ?
                """,
                [(scenario, lead_id, stamp) for lead_id in lead_ids],
            )
        return entered

    async def due_enrollments(self, *, now: datetime, limit: int, scenarios: Sequence[str]) -> list[DueEnrollment]:
        """Due enrollments of the loaded scenarios (a paused scenario's wait where they are)."""
        if not scenarios:
            return []
        marks = ",".join("?" * len(scenarios))
        # `+e.scenario`: the unary plus keeps SQLite from walking UNIQUE(scenario, lead_id,
        # cycle) (every enrollment of the scenario) instead of the partial `enrollments_due`
        # index; with a million leads that was 2.6 s a tick instead of a few ms (bench/scale.py).
        rows = await self._fetchall(
            f"""
            SELECT e.id, e.scenario, e.cycle, e.step_index, e.due_at, {SUPPRESSIONS_OF_LEAD},
                   (SELECT max(CASE m.state WHEN 'sending' THEN ? ELSE m.next_attempt_at END)
                    FROM messages m WHERE m.enrollment_id = e.id
                      AND m.state IN ('queued', 'sending', 'deferred')),
                   {_LEAD_COLUMNS}
            FROM enrollments e JOIN leads l ON l.id = e.lead_id
            WHERE e.state = 'active' AND e.due_at <= ? AND +e.scenario IN ({marks})
            ORDER BY e.due_at, e.id LIMIT ?
            """,
            (ms(now), ms(now), *scenarios, limit),
        )
        return [
            DueEnrollment(
                id=r[0],
                scenario=r[1],
                cycle=r[2],
                step_index=r[3],
                due_at=from_ms(r[4]),
                suppressions=suppressions_column(r[5]),
                previous_pending_until=from_ms(r[6]) if r[6] is not None else None,
                lead=_lead(r, 7),
            )
            for r in rows
        ]

    async def engagement(self, enrollment_ids: Sequence[int]) -> dict[int, Engagement]:
        """Which steps of each enrollment were sent, and opened or clicked by a human."""
        found: dict[int, dict[str, set[str]]] = {
            i: {"sent": set(), "opened": set(), "clicked": set()} for i in enrollment_ids
        }
        for chunk in chunks(list(enrollment_ids), 500):
            marks = ",".join("?" * len(chunk))
            rows = await self._fetchall(
                f"""
                SELECT enrollment_id, step_id, 'sent' FROM messages
                WHERE enrollment_id IN ({marks}) AND state = 'sent'
                UNION
                SELECT m.enrollment_id, m.step_id, ev.type
                FROM messages m JOIN events ev ON ev.message_id = m.id
                WHERE m.enrollment_id IN ({marks}) AND ev.type IN ('opened', 'clicked')
                  AND ev.machine = 0
                """,
                [*chunk, *chunk],
            )
            for enrollment_id, step_id, kind in rows:
                found[enrollment_id][kind].add(step_id)
        return {
            i: Engagement(
                sent=frozenset(f["sent"]), opened=frozenset(f["opened"]), clicked=frozenset(f["clicked"])
            )
            for i, f in found.items()
        }

    async def apply_updates(self, updates: Sequence[EnrollmentUpdate], *, now: datetime) -> None:
        """Advance enrollments and queue their messages: one transaction for the batch."""
        if not updates:
            return
        stamp = ms(now)
        # Written in the order of the rows' keys, not the order they fell due: with many
        # leads each due enrollment sits on its own page, and walking the pages in key order
        # cut the writes of a 10,000-step tick among 1,000,000 leads by a third (bench/scale.py).
        by_enrollment = sorted(updates, key=lambda u: u.enrollment_id)
        async with self.transaction():
            await self.db.executemany(
                "UPDATE enrollments SET step_index = ?, state = ?, due_at = ?, updated_at = ? WHERE id = ?",
                [
                    (u.step_index, u.state, ms(u.due_at) if u.due_at else None, stamp, u.enrollment_id)
                    for u in by_enrollment
                ],
            )
            await self.db.executemany(
                """
                INSERT OR IGNORE INTO messages
                    (message_id, enrollment_id, lead_id, scenario, step_id, state,
                     next_attempt_at, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)
                """,
                [
                    (
                        u.message.message_id,
                        u.enrollment_id,
                        u.lead_id,
                        u.scenario,
                        u.message.step_id,
                        ms(u.message.not_before),
                        stamp,
                        stamp,
                    )
                    for u in updates
                    if u.message is not None
                ],
            )
            await self.db.executemany(
                "INSERT INTO events (at, type, lead_id, scenario, step_id, data) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        stamp,
                        u.event,
                        u.lead_id,
                        u.scenario,
                        u.message.step_id if u.message else u.detail.get("step"),
                        json.dumps(u.detail, ensure_ascii=False),
                    )
                    for u in sorted(updates, key=lambda u: u.lead_id)  # events_lead's order
                ],
            )

    # -- messages ----------------------------------------------------------------------

    async def record_outcomes(self, outcomes: Sequence[Outcome], *, owner: str | None = None) -> None:
        """Write attempt outcomes and their events in one transaction (sending → outcome).

        With `owner`, only for messages it still holds: a lease recovered meanwhile (this daemon
        was taken for dead) belongs to whoever claimed it next, and its outcome is theirs to write.
        """
        if not outcomes:
            return
        held, holder = held_by(owner)
        for outcome in outcomes:
            check_transition(MessageState.SENDING, outcome.state)
        attempted = (MessageState.SENT, MessageState.DEFERRED, MessageState.FAILED, MessageState.EXPIRED)
        async with self.transaction():
            # events first, and only for messages still in flight: an outcome recorded twice
            # (or after a release) must not log an event the state change below will not make
            for outcome in outcomes:
                if outcome.bounce is not None:
                    await self._insert_bounce(outcome.bounce)
            await self.db.executemany(
                f"""
                INSERT INTO events (at, type, lead_id, message_id, scenario, step_id, data)
                SELECT ?, ?, ?, id, scenario, step_id, ? FROM messages WHERE id = ? AND state = 'sending' {held}
                """,
                [(ms(o.at), o.state.value, o.lead_id, _outcome_data(o), o.message, *holder) for o in outcomes],
            )
            await self.db.executemany(
                f"""
                UPDATE messages SET state = ?, attempts = attempts + ?, next_attempt_at = ?,
                    lease_owner = NULL, lease_until = NULL, last_code = coalesce(?, last_code),
                    last_enhanced = coalesce(?, last_enhanced), last_text = coalesce(?, last_text),
                    first_attempt_at = coalesce(first_attempt_at, ?), updated_at = ?
                WHERE id = ? AND state = 'sending' {held}
                """,
                [
                    (
                        o.state.value,
                        1 if o.state in attempted and o.attempted else 0,
                        ms(o.next_attempt_at) if o.next_attempt_at else None,
                        o.reply.code if o.reply else None,
                        o.reply.enhanced if o.reply else None,
                        o.reply.text if o.reply else None,
                        ms(o.at) if o.state in attempted and o.attempted else None,
                        ms(o.at),
                        o.message,
                        *holder,
                    )
                    for o in outcomes
                ],
            )

    async def next_wakeup(self, *, scenarios: Sequence[str]) -> datetime | None:
        """The earliest instant at which a loaded scenario's enrollment or a message is due."""
        marks = ",".join("?" * len(scenarios)) or "NULL"
        rows = await self._fetchall(
            f"""
            SELECT min(t) FROM (
                SELECT min(due_at) AS t FROM enrollments
                WHERE state = 'active' AND +scenario IN ({marks})
                UNION ALL
                SELECT min(next_attempt_at) FROM messages WHERE state IN ('queued', 'deferred'))
            """,
            tuple(scenarios),
        )
        value = rows[0][0]
        return from_ms(value) if value is not None else None

    async def message_counts(self) -> dict[str, int]:
        rows = await self._fetchall("SELECT state, count(*) FROM messages GROUP BY state")
        return {state: count for state, count in rows}

    async def step_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Per (scenario, step): how many messages were sent, failed, or steps skipped."""
        rows = await self._fetchall(
            "SELECT scenario, step_id, type, count(*) FROM events "
            "WHERE step_id IS NOT NULL AND type IN ('sent', 'skipped', 'failed', 'expired', 'suppressed') "
            "GROUP BY scenario, step_id, type"
        )
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for scenario, step, kind, count in rows:
            counts.setdefault((scenario, step), {})[kind] = count
        return counts

    async def enrollment_counts(self) -> dict[str, int]:
        rows = await self._fetchall("SELECT state, count(*) FROM enrollments GROUP BY state")
        return {state: count for state, count in rows}

def _outcome_data(outcome: Outcome) -> str:
    data: dict[str, Any] = {}
    if outcome.reply is not None:
        data = {
            "code": outcome.reply.code,
            "enhanced": outcome.reply.enhanced,
            "text": outcome.reply.text,
            "command": outcome.reply.command,
            "host": outcome.reply.host,
        }
    if outcome.next_attempt_at is not None:
        data["next_attempt_at"] = outcome.next_attempt_at.isoformat()
    if outcome.detail:
        data["detail"] = outcome.detail
    return json.dumps(data, ensure_ascii=False)


def _statements(script: str) -> list[str]:
    """A migration's statements; a trigger's body has semicolons of its own, so split where
    SQLite says a statement is complete."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements
