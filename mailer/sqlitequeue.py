"""The SQLite store's queue queries: which messages wait, for whom, and why; and "retry now".

A mixin of `SQLiteStore`, read by `mailer queue` (mailer.queueshell). Why a message waits is
told by two facts: the last SMTP reply kept on its row (`messages.last_*`) and its newest
outcome event, found through the index `events_message (message_id, type)` by primary key
(`max(id)`), one seek per message, so the events' other rows (opens, clicks) are never read.
A listing looks up the events of the rows it shows only.

A retry moves nothing but `next_attempt_at`, and only of deferred messages: `sending` is a
daemon's lease, failed and expired are final. Attempts and the first attempt's time stay, so
the give-up age (RFC 5321 4.5.4.1) still counts from the first attempt.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from mailer.lifecycle import MessageState
from mailer.reply import SMTPReply
from mailer.sqlitetables import StoreTables, chunks
from mailer.store import LastOutcome, QueuedMessage, QueueGroup
from mailer.timestamps import from_ms, ms

# The events that record what last happened to a message on its way (mailer.lifecycle's
# outcome states, and a requeue after its daemon died); a `made_due` is the operator's.
OUTCOME_EVENTS = ("deferred", "queued", "failed", "expired", "recovered")
_OUTCOMES = ", ".join(f"'{kind}'" for kind in OUTCOME_EVENTS)
# The part of an address after its last "@" (a quoted local part may hold one too):
# rtrim strips every character but "@" from the right, leaving the local part and its "@".
DOMAIN_OF_EMAIL = "substr({0}, length(rtrim({0}, replace({0}, '@', ''))) + 1)"
# What of an outcome event's data differs from message to message without saying why it
# waits: left out, so that `mailer queue` groups messages waiting for the same reason.
_PER_MESSAGE = "'$.next_attempt_at', '$.host'"
_FINAL = "('failed', 'expired')"
# Messages a retry moves per transaction: about a tenth of a second of writing here, so the
# daemon's own writes wait that long at most, not the whole retry of a large queue.
RETRY_BATCH = 2000


def _reply(code: int | None, enhanced: str | None, text: str | None) -> SMTPReply | None:
    if code is None and not text:
        return None
    return SMTPReply(code=code, text=text or "", enhanced=enhanced)


def _outcome(kind: str | None, at: int | None, data: str | None) -> LastOutcome | None:
    """An outcome event as `mailer queue` reads it; one reading for the summary and the list."""
    if kind is None or at is None or data is None:
        return None
    facts = json.loads(data)
    reply = None
    if "command" in facts:  # mailer.sqlitestore writes it with every reply, a null "code" included
        reply = SMTPReply(
            code=facts.get("code"), text=facts.get("text") or "", enhanced=facts.get("enhanced"),
            command=facts.get("command") or "", host=facts.get("host") or "",
        )
    return LastOutcome(type=kind, at=from_ms(at), reply=reply, detail=str(facts.get("detail") or facts.get("owner") or ""))


def _like_domain(domain: str) -> str:
    """A LIKE pattern (escape character "\\") for the addresses at `domain`."""
    escaped = domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%@{escaped}"


def _filters(domain: str | None, scenario: str | None) -> tuple[str, list[Any]]:
    """SQL conditions on messages `m` joined to leads `l`, and their parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if domain is not None:
        # LIKE ignores ASCII case, as domains do; the domain has no "@", so the match is the last one
        clauses.append("AND l.email LIKE ? ESCAPE '\\'")
        params.append(_like_domain(domain))
    if scenario is not None:
        clauses.append("AND m.scenario = ?")
        params.append(scenario)
    return " ".join(clauses), params


class QueueQueries(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    async def queue_groups(self) -> list[QueueGroup]:
        """Every message waiting (queued, deferred, sending) counted by recipient domain, state
        and reason, with the earliest next attempt of each group."""
        domain = DOMAIN_OF_EMAIL.format("l.email")
        rows = await self._fetchall(
            f"""
            WITH waiting AS MATERIALIZED (
                SELECT m.state, m.next_attempt_at, m.last_code, m.last_enhanced, m.last_text, lower({domain}) AS domain,
                       (SELECT max(e.id) FROM events e WHERE e.message_id = m.id AND e.type IN ({_OUTCOMES})) AS newest
                FROM messages m JOIN leads l ON l.id = m.lead_id
                WHERE m.state IN ('queued', 'deferred', 'sending'))
            SELECT w.domain, w.state, count(*), min(w.next_attempt_at), w.last_code, w.last_enhanced, w.last_text,
                   e.type, max(e.at), json_remove(e.data, {_PER_MESSAGE})
            FROM waiting w LEFT JOIN events e ON e.id = w.newest
            GROUP BY w.domain, w.state, w.last_code, w.last_enhanced, w.last_text, e.type, 10
            """
        )
        return [
            QueueGroup(
                domain=r[0],
                state=MessageState(r[1]),
                count=r[2],
                next_attempt_at=from_ms(r[3]) if r[3] is not None else None,
                last_reply=_reply(r[4], r[5], r[6]),
                last_outcome=_outcome(r[7], r[8], r[9]),
            )
            for r in rows
        ]

    async def queued_messages(
        self, *, states: Collection[MessageState], domain: str | None = None, scenario: str | None = None, limit: int = 50,
    ) -> tuple[list[QueuedMessage], int]:
        """The first `limit` messages in `states` (at `domain`, of `scenario`), and how many match.

        Waiting ones first, soonest next attempt first; then failed and expired, newest first.
        """
        if not states:
            return [], 0
        marks = ",".join("?" * len(states))
        where, params = _filters(domain, scenario)
        source = f"FROM messages m JOIN leads l ON l.id = m.lead_id WHERE m.state IN ({marks}) {where}"
        chosen = [str(state) for state in states]
        rows = await self._fetchall(
            f"""
            SELECT m.id, m.message_id, l.email, m.scenario, m.step_id, m.state, m.attempts, m.created_at, m.updated_at,
                   m.next_attempt_at, m.last_code, m.last_enhanced, m.last_text
            {source}
            ORDER BY m.state IN {_FINAL},
                     CASE WHEN m.state IN {_FINAL} THEN -m.updated_at ELSE m.next_attempt_at END, m.id
            LIMIT ?
            """,
            [*chosen, *params, limit],
        )
        total = (await self._fetchall(f"SELECT count(*) {source}", [*chosen, *params]))[0][0]
        outcomes = await self._last_outcomes([r[0] for r in rows])
        messages = [
            QueuedMessage(
                id=r[0], message_id=r[1], email=r[2], scenario=r[3], step_id=r[4], state=MessageState(r[5]),
                attempts=r[6], created_at=from_ms(r[7]), updated_at=from_ms(r[8]),
                next_attempt_at=from_ms(r[9]) if r[9] is not None else None,
                last_reply=_reply(r[10], r[11], r[12]), last_outcome=outcomes.get(r[0]),
            )
            for r in rows
        ]
        return messages, int(total)

    async def _last_outcomes(self, message_ids: Sequence[int]) -> dict[int, LastOutcome]:
        """The newest outcome event of each of these messages (those that have one)."""
        found: dict[int, LastOutcome] = {}
        for chunk in chunks(message_ids, 500):
            marks = ",".join("?" * len(chunk))
            rows = await self._fetchall(
                f"""
                SELECT e.message_id, e.type, e.at, e.data FROM events e
                WHERE e.id IN (SELECT max(id) FROM events WHERE message_id IN ({marks}) AND type IN ({_OUTCOMES})
                               GROUP BY message_id)
                """,
                chunk,
            )
            for message, kind, at, data in rows:
                outcome = _outcome(kind, at, data)
                if outcome is not None:
                    found[message] = outcome
        return found

    async def retry_deferred(self, *, now: datetime, domain: str | None = None, scenario: str | None = None) -> int:
        """Make every deferred message (at `domain`, of `scenario`) due at `now`; returns how many are.

        Each one moved gets a `made_due` event saying when it was due before; one already due
        keeps its time (its place in the claim order). Written RETRY_BATCH messages to a
        transaction, so a running daemon's writes take turns with a retry of a large queue.
        """
        where, params = _filters(domain, scenario)
        stamp = ms(now)
        after, matched = 0, 0
        while True:
            async with self.transaction():
                rows = await self._fetchall(
                    f"""
                    SELECT m.id, m.lead_id, m.scenario, m.step_id, m.next_attempt_at
                    FROM messages m JOIN leads l ON l.id = m.lead_id
                    WHERE m.state = 'deferred' AND m.id > ? {where}
                    ORDER BY m.id LIMIT ?
                    """,
                    [after, *params, RETRY_BATCH],
                )
                later = [row for row in rows if row[4] is None or row[4] > stamp]
                await self.db.executemany(
                    "UPDATE messages SET next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'deferred'",
                    [(stamp, stamp, row[0]) for row in later],
                )
                await self.db.executemany(
                    "INSERT INTO events (at, type, lead_id, message_id, scenario, step_id, data) "
                    "VALUES (?, 'made_due', ?, ?, ?, ?, ?)",
                    [
                        (stamp, row[1], row[0], row[2], row[3],
                         json.dumps({"was_due": from_ms(row[4]).isoformat() if row[4] is not None else None}))
                        for row in later
                    ],
                )
            matched += len(rows)
            if len(rows) < RETRY_BATCH:
                return matched
            after = rows[-1][0]
