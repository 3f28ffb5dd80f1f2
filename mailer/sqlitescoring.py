"""The SQLite store's scoring side: the re-scoring queue, scores and stages, history, accounts.

A mixin of `SQLiteStore`. Triggers (schema migration 5) put a lead in `scoring_queue`
whenever an event it is scored on or a profile field it is graded on is written, so no
writer has to know about scoring. The engine (mailer.scoringengine) takes a batch with
`take_scoring_work`, decides in pure functions, and hands the decisions to `apply_scoring`,
which writes them in one transaction and deletes only the (lead, stamp) pairs it was given:
a lead touched again meanwhile has a new stamp and stays queued.

Every lead row read anywhere goes through `LEAD_COLUMNS` and `lead_from_row`, so each `Lead`
carries its score, product score and grade.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from mailer.errors import UserError
from mailer.leads import Lead
from mailer.scoremodel import (
    SCORED_ROW_TYPES,
    AccountChange,
    HistoryEntry,
    LeadChange,
    LeadScoring,
    NewDelivery,
    ScoreResult,
    ScoringEvent,
    StageChange,
    Trigger,
)
from mailer.scoring import scoring_event
from mailer.sqliteapi import insert_deliveries
from mailer.sqlitetables import StoreTables, chunks
from mailer.timestamps import from_ms, ms

# The lead columns every read selects (the lead's table aliased `l`), in `lead_from_row` order.
LEAD_COLUMNS = (
    "l.id, l.email, l.first_name, l.last_name, l.company, l.job_title, l.timezone, l.source, "
    "l.attributes, l.stage, l.score, l.product_score, l.grade"
)
LEAD_WIDTH = 13

# Where the lead's columns start in the rows the scoring reads select.
_LEAD_AT = 4

HISTORY_TYPES = ("score_changed", "grade_changed", "stage_changed")

# SQLite binds at most 32,766 parameters (SQLITE_MAX_VARIABLE_NUMBER since 3.32); 500 ids
# a statement keeps each IN list small enough for the planner to probe the index per id.
_CHUNK = 500
_SCORED = ",".join(f"'{kind}'" for kind in SCORED_ROW_TYPES)
# A touch of the queue outside the triggers (a manual stage move), as the triggers write it.
QUEUE_LEAD = (
    "INSERT INTO scoring_queue (lead_id, stamp) VALUES (?, random()) "
    "ON CONFLICT (lead_id) DO UPDATE SET stamp = excluded.stamp"
)


def lead_from_row(row: Sequence[Any], offset: int = 0) -> Lead:
    """The `Lead` of the LEAD_COLUMNS that start at `offset` in `row`."""
    (id_, email, first, last, company, title, tz, source, attributes, stage, score, product, grade) = row[
        offset : offset + LEAD_WIDTH
    ]
    return Lead(
        id=id_,
        email=email,
        first_name=first,
        last_name=last,
        company=company,
        job_title=title,
        timezone=tz,
        source=source,
        attributes=json.loads(attributes),
        stage=stage,
        score=score,
        product_score=product,
        grade=grade,
    )


class _Stored(NamedTuple):
    """A lead's scoring columns as stored, read inside the writing transaction."""

    score: int
    product_score: int
    grade: str
    stage: str
    stage_since: int | None
    last_engaged_at: int | None
    account: str | None


class ScoringTables(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    # Where the last batch ended: batches go round the queue by lead id, so leads touched
    # again and again (low ids in a busy campaign) cannot starve the ones after them.
    _scoring_cursor: int = 0

    # -- reading work ------------------------------------------------------------------

    async def take_scoring_work(self, *, limit: int) -> list[tuple[LeadScoring, int]]:
        """Up to `limit` queued leads with everything scoring needs, and the stamp each was read at.

        The stamps are read before the events, so an event written after this read changes
        the stamp and keeps the lead queued.
        """
        select = (
            f"SELECT q.stamp, l.stage_since, l.account, l.last_engaged_at, {LEAD_COLUMNS} "
            "FROM scoring_queue q JOIN leads l ON l.id = q.lead_id "
        )
        rows = await self._fetchall(
            select + "WHERE q.lead_id > ? ORDER BY q.lead_id LIMIT ?", (self._scoring_cursor, limit)
        )
        if len(rows) < limit and self._scoring_cursor > 0:
            rows += await self._fetchall(
                select + "WHERE q.lead_id <= ? ORDER BY q.lead_id LIMIT ?",
                (self._scoring_cursor, limit - len(rows)),
            )
        if rows:
            self._scoring_cursor = int(rows[-1][_LEAD_AT])
        events = await self._scoring_events([int(r[_LEAD_AT]) for r in rows])
        return [(_lead_scoring(r, events), int(r[0])) for r in rows]

    async def scoring_inputs(self, *, after_lead_id: int, limit: int) -> list[LeadScoring]:
        """Every lead after `after_lead_id`, by id, with its events (a rebuild or a decay refresh)."""
        rows = await self._fetchall(
            f"SELECT NULL, l.stage_since, l.account, l.last_engaged_at, {LEAD_COLUMNS} FROM leads l "
            "WHERE l.id > ? ORDER BY l.id LIMIT ?",
            (after_lead_id, limit),
        )
        if not rows:
            return []
        # one range scan of events_lead for the whole page rather than an IN list
        found = await self._fetchall(
            f"SELECT lead_id, id, type, at, machine, data FROM events "
            f"WHERE lead_id > ? AND lead_id <= ? AND type IN ({_SCORED}) AND machine = 0",
            (after_lead_id, rows[-1][_LEAD_AT]),
        )
        events = _by_lead(found)
        return [_lead_scoring(r, events) for r in rows]

    async def _scoring_events(self, lead_ids: Sequence[int]) -> dict[int, list[ScoringEvent]]:
        found: list[Any] = []
        for chunk in chunks(lead_ids, _CHUNK):
            marks = ",".join("?" * len(chunk))
            found += await self._fetchall(
                f"SELECT lead_id, id, type, at, machine, data FROM events "
                f"WHERE lead_id IN ({marks}) AND type IN ({_SCORED}) AND machine = 0",
                chunk,
            )
        return _by_lead(found)

    async def scoring_backlog(self) -> int:
        """How many leads wait to be re-scored."""
        rows = await self._fetchall("SELECT count(*) FROM scoring_queue")
        return int(rows[0][0])

    # -- writing decisions -------------------------------------------------------------

    async def apply_scoring(
        self,
        changes: Sequence[LeadChange],
        *,
        done: Sequence[tuple[int, int]],
        triggers: Sequence[Trigger],
        deliveries: Sequence[NewDelivery],
        now: datetime,
    ) -> int:
        """Write what re-scoring decided, in one transaction; returns the enrollments made.

        Only leads whose score, grade, stage, engagement or account differ are updated, with
        one history event per changed score, grade or stage. A stage change is written only
        if the stored stage is still the one it moves from (sales may have moved the lead
        meanwhile; that move re-queued it), and then the lead's triggers are dropped too.
        """
        async with self.transaction():
            stored = await self._stored([change.lead_id for change in changes])
            updates: list[tuple[Any, ...]] = []
            history: list[tuple[Any, ...]] = []
            refused: set[int] = set()
            for change in changes:
                row = stored.get(change.lead_id)
                if row is None:
                    continue
                if change.stage is not None and change.stage.from_stage != row.stage:
                    refused.add(change.lead_id)
                update, events = _lead_update(change, row)
                if update is not None:
                    updates.append(update)
                history += events
            await self.db.executemany(
                "UPDATE leads SET score = ?, product_score = ?, grade = ?, stage = ?, stage_since = ?, "
                "last_engaged_at = ?, account = ? WHERE id = ?",
                updates,
            )
            await self.db.executemany("INSERT INTO events (at, type, lead_id, data) VALUES (?, ?, ?, ?)", history)
            entered = await self._enroll_triggers(
                [trigger for trigger in triggers if trigger.lead_id not in refused], now=now
            )
            await insert_deliveries(self.db, deliveries, now=now)
            await self.db.executemany("DELETE FROM scoring_queue WHERE lead_id = ? AND stamp = ?", done)
        return entered

    async def _stored(self, lead_ids: Sequence[int]) -> dict[int, _Stored]:
        stored: dict[int, _Stored] = {}
        for chunk in chunks(lead_ids, _CHUNK):
            rows = await self._fetchall(
                "SELECT id, score, product_score, grade, stage, stage_since, last_engaged_at, account "
                f"FROM leads WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            stored.update({int(r[0]): _Stored(*r[1:]) for r in rows})
        return stored

    async def _enroll_triggers(self, triggers: Iterable[Trigger], *, now: datetime) -> int:
        """Enroll each (scenario, lead), its first step due after the scenario's first wait, as
        `enroll` does for list entries, and under the scenario's re-entry rule.

        Inside the caller's transaction. A lead still active in the scenario is left alone; one
        that left it enters a new cycle only when the scenario allows re-entry and its
        `reentry_after` has passed since it left. Triggers are few (stage changes, form fills),
        so one statement each, which also says whether it entered.
        """
        stamp = ms(now)
        entered: list[tuple[Any, ...]] = []
        for trigger in dict.fromkeys(triggers):
            again = None if trigger.reentry_after is None else stamp - int(trigger.reentry_after.total_seconds() * 1000)
            rows = await self._fetchall(
                """
                INSERT INTO enrollments (scenario, lead_id, cycle, state, step_index, due_at, entered_at, updated_at)
                SELECT ?1, ?2, (SELECT coalesce(max(cycle), 0) + 1 FROM enrollments
                                WHERE scenario = ?1 AND lead_id = ?2), 'active', 0, ?5, ?3, ?3
                WHERE EXISTS (SELECT 1 FROM leads WHERE id = ?2)
                  AND NOT EXISTS (SELECT 1 FROM enrollments WHERE scenario = ?1 AND lead_id = ?2
                                  AND (state = 'active' OR ?4 IS NULL OR updated_at > ?4))
                RETURNING cycle
                """,
                (trigger.scenario, trigger.lead_id, stamp, again, stamp + int(trigger.wait.total_seconds() * 1000)),
            )
            entered += [(stamp, trigger.lead_id, trigger.scenario, json.dumps({"cycle": r[0]})) for r in rows]
        await self.db.executemany(
            "INSERT INTO events (at, type, lead_id, scenario, data) VALUES (?, 'entered', ?, ?, ?)", entered
        )
        return len(entered)

    async def set_stage(
        self,
        lead_id: int,
        change: StageChange,
        *,
        now: datetime,
        triggers: Sequence[Trigger] = (),
        deliveries: Sequence[NewDelivery] = (),
    ) -> None:
        """A manual move (sales, the API): the stage, its history event, triggers, webhooks.

        The lead is queued for re-scoring, so the rules see it in its new stage. Refused
        (UserError) when the lead's stage is no longer `change.from_stage`: the move was
        judged against a stage that has changed since.
        """
        async with self.transaction():
            rows = await self._fetchall("SELECT stage FROM leads WHERE id = ?", (lead_id,))
            if not rows:
                raise UserError(f"no lead with id {lead_id}")
            if rows[0][0] != change.from_stage:
                raise UserError(
                    f"the lead's stage changed to {rows[0][0]} meanwhile (not {change.from_stage})",
                    field="stage",
                    hint="read the lead again and retry",
                )
            await self.db.execute(
                "UPDATE leads SET stage = ?, stage_since = ? WHERE id = ?", (change.to_stage, ms(now), lead_id)
            )
            await self.db.execute(
                "INSERT INTO events (at, type, lead_id, data) VALUES (?, 'stage_changed', ?, ?)",
                (ms(now), lead_id, _stage_data(change)),
            )
            await self._enroll_triggers(triggers, now=now)
            await insert_deliveries(self.db, deliveries, now=now)
            await self.db.execute(QUEUE_LEAD, (lead_id,))

    # -- accounts ----------------------------------------------------------------------

    async def account_rollup(self, accounts: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Each account's sum of its leads' positive scores, and its stored stage ("" or MQA)."""
        rollup = dict.fromkeys(accounts, (0, ""))
        for chunk in chunks(list(rollup), _CHUNK):
            marks = ",".join("?" * len(chunk))
            # leads_account (account, score) covers this: no lead row is read
            scores = await self._fetchall(
                f"SELECT account, sum(max(score, 0)) FROM leads WHERE account IN ({marks}) GROUP BY account", chunk
            )
            stages = await self._fetchall(f"SELECT account, stage FROM accounts WHERE account IN ({marks})", chunk)
            score_of = {r[0]: int(r[1]) for r in scores}
            stage_of = {r[0]: str(r[1]) for r in stages}
            rollup.update({a: (score_of.get(a, 0), stage_of.get(a, "")) for a in chunk})
        return rollup

    async def apply_account_changes(
        self, changes: Sequence[AccountChange], *, deliveries: Sequence[NewDelivery]
    ) -> None:
        """Store accounts' scores and stages; a stage that changed gets an `account_stage_changed` event."""
        if not changes:
            if deliveries:
                raise ValueError("webhook deliveries come with the account changes that caused them")
            return
        async with self.transaction():
            stored: dict[str, tuple[str, int | None]] = {}
            for chunk in chunks([c.account for c in changes], _CHUNK):
                rows = await self._fetchall(
                    f"SELECT account, stage, stage_since FROM accounts WHERE account IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                stored.update({r[0]: (r[1], r[2]) for r in rows})
            upserts: list[tuple[Any, ...]] = []
            history: list[tuple[Any, ...]] = []
            for change in changes:
                stage, since = stored.get(change.account, ("", None))
                if change.stage != stage:
                    since = ms(change.at)
                    data = {
                        "account": change.account, "from": stage, "to": change.stage, "score": change.score,
                        "reason": change.reason,
                    }
                    history.append((ms(change.at), json.dumps(data, ensure_ascii=False)))
                upserts.append((change.account, change.score, change.stage, since, ms(change.at)))
            await self.db.executemany(
                """
                INSERT INTO accounts (account, score, stage, stage_since, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (account) DO UPDATE SET score = excluded.score, stage = excluded.stage,
                    stage_since = excluded.stage_since, updated_at = excluded.updated_at
                """,
                upserts,
            )
            await self.db.executemany(
                "INSERT INTO events (at, type, lead_id, data) VALUES (?, 'account_stage_changed', NULL, ?)", history
            )
            await insert_deliveries(self.db, deliveries, now=max(c.at for c in changes))

    async def accounts(self, *, stage: str | None = None, limit: int = 100) -> list[tuple[str, int, str]]:
        """(account, score, stage) of the accounts leads belong to, highest score first; of one stage when given.

        The score is rolled up now from the leads (the engine stores an account only when it
        crosses the MQA line); the stage is the stored one.
        """
        where, params = ("WHERE coalesce(a.stage, '') = ?", [stage]) if stage is not None else ("", [])
        rows = await self._fetchall(
            f"""
            SELECT l.account, sum(max(l.score, 0)) AS total, coalesce(a.stage, '')
            FROM leads l LEFT JOIN accounts a ON a.account = l.account
            {where} {"AND" if where else "WHERE"} l.account IS NOT NULL
            GROUP BY l.account ORDER BY total DESC, l.account LIMIT ?
            """,
            [*params, limit],
        )
        return [(r[0], int(r[1]), r[2]) for r in rows]

    # -- reading for people ------------------------------------------------------------

    async def lead_history(self, lead_id: int, *, limit: int = 200) -> list[HistoryEntry]:
        """The lead's latest `limit` changes of score, grade and stage, oldest first."""
        marks = ",".join("?" * len(HISTORY_TYPES))
        rows = await self._fetchall(
            f"SELECT at, type, data FROM events WHERE lead_id = ? AND type IN ({marks}) "
            "ORDER BY at DESC, id DESC LIMIT ?",
            (lead_id, *HISTORY_TYPES, limit),
        )
        return [HistoryEntry(at=from_ms(r[0]), type=r[1], data=json.loads(r[2])) for r in reversed(rows)]

    async def leads_by_stage(self, stage: str | None, *, limit: int = 100, after_id: int = 0) -> list[Lead]:
        """Leads in `stage` (every lead when None) by id, a page at a time."""
        where, params = ("AND l.stage = ?", [stage]) if stage is not None else ("", [])
        rows = await self._fetchall(
            f"SELECT {LEAD_COLUMNS} FROM leads l WHERE l.id > ? {where} ORDER BY l.id LIMIT ?",
            [after_id, *params, limit],
        )
        return [lead_from_row(row) for row in rows]


def _by_lead(rows: Iterable[Any]) -> dict[int, list[ScoringEvent]]:
    """Events rows as ScoringEvents per lead; rows that score nothing are left out."""
    events: dict[int, list[ScoringEvent]] = {}
    for lead_id, row_id, kind, at, machine, data in rows:
        fields = json.loads(data)
        if "undone" in fields:
            continue  # a bounce or complaint an operator undid (mailer.sqlitebounces.undo_bounce)
        event = scoring_event(row_id, kind, from_ms(at), bool(machine), fields)
        if event is not None:
            events.setdefault(lead_id, []).append(event)
    return events


def _lead_scoring(row: Sequence[Any], events: dict[int, list[ScoringEvent]]) -> LeadScoring:
    """A LeadScoring of a (stamp, stage_since, account, last_engaged_at, LEAD_COLUMNS…) row."""
    return LeadScoring(
        lead=lead_from_row(row, _LEAD_AT),
        events=tuple(events.get(int(row[_LEAD_AT]), ())),
        stage_since=from_ms(row[1]) if row[1] is not None else None,
        account=row[2],
        last_engaged_at=from_ms(row[3]) if row[3] is not None else None,
    )


def _lead_update(change: LeadChange, stored: _Stored) -> tuple[tuple[Any, ...] | None, list[tuple[Any, ...]]]:
    """The UPDATE parameters (None when nothing differs) and history rows for one decision."""
    at = ms(change.at)
    result, grade = change.score, change.grade
    history: list[tuple[Any, ...]] = []
    if (result.score, result.product_score) != (stored.score, stored.product_score):
        history.append((at, "score_changed", change.lead_id, _score_data(stored, result)))
    if grade.grade != stored.grade:
        data = {"from": stored.grade, "to": grade.grade, "matched": [[name, points] for name, points in grade.matched]}
        history.append((at, "grade_changed", change.lead_id, json.dumps(data, ensure_ascii=False)))
    stage, since = stored.stage, stored.stage_since
    move = change.stage
    if move is not None and move.from_stage == stored.stage and move.to_stage != stored.stage:
        stage, since = move.to_stage, at
        history.append((at, "stage_changed", change.lead_id, _stage_data(move)))
    engaged = ms(result.last_engaged_at) if result.last_engaged_at is not None else None
    new = (result.score, result.product_score, grade.grade, stage, since, engaged, change.account)
    if new == tuple(stored):
        return None, history
    return (*new, change.lead_id), history


def _score_data(stored: _Stored, result: ScoreResult) -> str:
    data = {
        "from": stored.score,
        "to": result.score,
        "product_from": stored.product_score,
        "product_to": result.product_score,
        "reason": _score_reason(result),
        "contributions": [[c.rule, c.events, round(c.points, 2)] for c in result.contributions],
    }
    return json.dumps(data, ensure_ascii=False)


def _score_reason(result: ScoreResult) -> str:
    """One line naming the rules that weigh most: "clicked pricing ×2 +30, opened ×3 +3"."""
    if not result.contributions:
        return "no scoring events"
    parts = [f"{c.rule} ×{c.events} {c.points:+g}" for c in result.contributions[:3]]
    more = len(result.contributions) - 3
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _stage_data(change: StageChange) -> str:
    data = {"from": change.from_stage, "to": change.to_stage, "reason": change.reason, "by": change.by}
    return json.dumps(data, ensure_ascii=False)
