"""The SQLite store's consent side: list membership status, evidence, suppression management.

A mixin of `SQLiteStore`, like `BounceTables`. The rules (what a subscription does, which
suppression stops which message) are mailer.consent's; this module only reads and writes.
Every consent change is written with its evidence row in the same transaction, and is
committed before the method returns: an unsubscribe answered "done" is done (RFC 8058).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any


from mailer.consent import (
    CONFIRMED,
    LIFTED_BY_CONFIRMATION,
    OPTIN_SCENARIO,
    PENDING,
    UNCONFIRMED,
    UNSUBSCRIBE,
    subscription_outcome,
)
from mailer.store import ConsentRecord, SubscribeResult, Suppression
from mailer.timestamps import from_ms, ms
from mailer.sqlitetables import StoreTables

# A lead's suppressions as one column: NULL (the usual case, no JSON to parse) or a JSON
# array of [list, reason] pairs. Needs the lead's table aliased `l`.
SUPPRESSIONS_OF_LEAD = (
    "CASE WHEN EXISTS (SELECT 1 FROM suppressions s WHERE s.email = l.email) THEN "
    "(SELECT json_group_array(json_array(s.list, s.reason)) FROM suppressions s WHERE s.email = l.email) END"
)

# Confirmation messages still on their way: a second form post reuses one instead of
# sending another (a form flooded with someone's address must not flood their mailbox).
_ON_ITS_WAY = ("queued", "deferred", "sending")

_LIFTED = ",".join(f"'{reason}'" for reason in sorted(LIFTED_BY_CONFIRMATION))


def suppressions_column(value: str | None) -> frozenset[tuple[str, str]]:
    """The (list, reason) pairs `SUPPRESSIONS_OF_LEAD` selected."""
    if value is None:
        return frozenset()
    return frozenset((str(pair[0]), str(pair[1])) for pair in json.loads(value))


class ConsentTables(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _record_consent(self, record: ConsentRecord, *, lead_id: int | None) -> None:
        """Insert one evidence row; inside the caller's transaction."""
        await self.db.execute(
            "INSERT INTO consents (at, email, lead_id, list, action, method, ip, user_agent, text, source, message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ms(record.at), record.email, lead_id, record.list_name, record.action, record.method, record.ip,
                record.user_agent, record.text, record.source, record.message,
            ),
        )

    async def _event(
        self, *, at: datetime, type_: str, lead_id: int | None, data: dict[str, Any], message: int | None = None
    ) -> None:
        """A lead's event; tied to a message's scenario and step when `message` is given."""
        await self.db.execute(
            "INSERT INTO events (at, type, lead_id, message_id, scenario, step_id, data) "
            "VALUES (?, ?, ?, ?, (SELECT scenario FROM messages WHERE id = ?), "
            "(SELECT step_id FROM messages WHERE id = ?), ?)",
            (ms(at), type_, lead_id, message, message, message, json.dumps(data, ensure_ascii=False)),
        )

    async def _membership_row(self, lead_id: int, list_name: str) -> Any:
        return await self._one(
            "SELECT m.list_id, m.status FROM list_members m JOIN lists li ON li.id = m.list_id "
            "WHERE li.name = ? AND m.lead_id = ?",
            (list_name, lead_id),
        )

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(
        self, *, email: str, first_name: str, last_name: str, list_name: str, source: str,
        consent_text: str, ip: str, user_agent: str, double_opt_in: bool, confirm_message_id: str,
        now: datetime,
    ) -> SubscribeResult:
        """A form subscription: the lead, its membership, the evidence, and the confirmation to send.

        For a pending subscription the confirmation email is a queued message row (scenario
        "@optin", step_id the list, no enrollment), written in the same transaction, that the
        daemon sends like any message. One still on its way is reused, not doubled.
        """
        email = email.strip().lower()
        stamp = ms(now)
        async with self.transaction():
            await self.db.execute(
                """
                INSERT INTO leads (email, first_name, last_name, source, created_at, updated_at)
                VALUES (?, ?, ?, nullif(?, ''), ?, ?)
                ON CONFLICT (email) DO UPDATE SET
                    first_name = coalesce(nullif(excluded.first_name, ''), first_name),
                    last_name = coalesce(nullif(excluded.last_name, ''), last_name),
                    source = coalesce(source, excluded.source),
                    updated_at = excluded.updated_at
                """,
                (email, first_name.strip(), last_name.strip(), source, stamp, stamp),
            )
            lead_id = int((await self._one("SELECT id FROM leads WHERE email = ?", (email,)))[0])
            await self.db.execute("INSERT OR IGNORE INTO lists (name, created_at) VALUES (?, ?)", (list_name, stamp))
            member = await self._membership_row(lead_id, list_name)
            suppressions = await self._fetchall("SELECT list, reason FROM suppressions WHERE email = ?", (email,))
            outcome = subscription_outcome(
                member[1] if member else None, [(r[0], r[1]) for r in suppressions], list_name,
                double_opt_in=double_opt_in,
            )
            if outcome == "already":
                return SubscribeResult(lead_id=lead_id, status="already", confirm_message=None)
            status = CONFIRMED if outcome == "confirmed" else PENDING
            if member is None:
                await self.db.execute(
                    "INSERT INTO list_members (list_id, lead_id, added_at, status) "
                    "SELECT id, ?, ?, ? FROM lists WHERE name = ?",
                    (lead_id, stamp, status, list_name),
                )
            elif status == CONFIRMED:
                # a pending member of a list that no longer asks for confirmation
                await self.db.execute(
                    "UPDATE list_members SET status = ? WHERE list_id = ? AND lead_id = ?", (status, member[0], lead_id)
                )
            message = None
            if status == PENDING:
                message = await self._confirmation_message(
                    email=email, lead_id=lead_id, list_name=list_name, message_id=confirm_message_id, stamp=stamp
                )
            action = "subscribed" if status == CONFIRMED else "pending"
            await self._record_consent(
                ConsentRecord(
                    at=now, email=email, list_name=list_name, action=action, method="form", ip=ip,
                    user_agent=user_agent, text=consent_text, source=source, message=message,
                ),
                lead_id=lead_id,
            )
            await self._event(
                at=now, type_="subscribed", lead_id=lead_id, data={"list": list_name, "status": status, "source": source}
            )
        return SubscribeResult(lead_id=lead_id, status=outcome, confirm_message=message)

    async def _confirmation_message(self, *, email: str, lead_id: int, list_name: str, message_id: str, stamp: int) -> int:
        """The queued confirmation of this address for this list: one on its way, or a new one."""
        marks = ",".join("?" * len(_ON_ITS_WAY))
        waiting = await self._one(
            f"""
            SELECT m.id FROM consents c JOIN messages m ON m.id = c.message_id
            WHERE c.email = ? AND c.list = ? AND c.action = 'pending' AND m.state IN ({marks})
            ORDER BY c.at DESC LIMIT 1
            """,
            (email, list_name, *_ON_ITS_WAY),
        )
        if waiting is not None:
            return int(waiting[0])
        cursor = await self.db.execute(
            "INSERT INTO messages (message_id, enrollment_id, lead_id, scenario, step_id, state, next_attempt_at, "
            "created_at, updated_at) VALUES (?, NULL, ?, ?, ?, 'queued', ?, ?, ?)",
            (message_id, lead_id, OPTIN_SCENARIO, list_name, stamp, stamp, stamp),
        )
        return int(cursor.lastrowid or 0)

    async def confirm_subscription(
        self, *, lead_id: int, list_name: str, ip: str, user_agent: str, now: datetime
    ) -> bool:
        """The confirmation link was followed: the member is confirmed; False if not a member.

        Idempotent. Also lifts this list's `unsubscribe`/`unconfirmed` suppression of the
        address (mailer.consent says why only those).
        """
        async with self.transaction():
            member = await self._membership_row(lead_id, list_name)
            if member is None:
                return False
            email = (await self._one("SELECT email FROM leads WHERE id = ?", (lead_id,)))[0]
            newly = member[1] == PENDING
            if newly:
                await self.db.execute(
                    "UPDATE list_members SET status = ? WHERE list_id = ? AND lead_id = ?", (CONFIRMED, member[0], lead_id)
                )
            lifted = await self._fetchall(
                f"DELETE FROM suppressions WHERE email = ? AND list = ? AND reason IN ({_LIFTED}) RETURNING reason",
                (email, list_name),
            )
            if newly or lifted:
                await self._record_consent(
                    ConsentRecord(
                        at=now, email=email, list_name=list_name, action="confirmed", method="confirm-link",
                        ip=ip, user_agent=user_agent,
                    ),
                    lead_id=lead_id,
                )
                await self._event(
                    at=now, type_="confirmed", lead_id=lead_id,
                    data={"list": list_name, "lifted": [row[0] for row in lifted]},
                )
        return True

    async def membership(self, email: str, list_name: str) -> str | None:
        """The address's status in the list (pending or confirmed), None when not a member."""
        row = await self._one(
            "SELECT m.status FROM list_members m JOIN lists li ON li.id = m.list_id JOIN leads l ON l.id = m.lead_id "
            "WHERE li.name = ? AND l.email = ?",
            (list_name, email.strip().lower()),
        )
        return str(row[0]) if row else None

    async def _confirm_imported(self, *, list_name: str, emails: Sequence[str], source: str, stamp: int) -> None:
        """Imported members are confirmed (the importer vouches for their consent), with evidence.

        Inside the caller's transaction (`upsert_leads`). An import never lifts a suppression.
        """
        await self.db.executemany(
            "UPDATE list_members SET status = 'confirmed' WHERE status = 'pending' "
            "AND list_id = (SELECT id FROM lists WHERE name = ?) AND lead_id = (SELECT id FROM leads WHERE email = ?)",
            [(list_name, email) for email in emails],
        )
        await self.db.executemany(
            "INSERT INTO consents (at, email, lead_id, list, action, method, source) "
            "SELECT ?, email, id, ?, 'imported', 'import', ? FROM leads WHERE email = ?",
            [(stamp, list_name, source, email) for email in dict.fromkeys(emails)],
        )

    # -- unsubscribing -----------------------------------------------------------------

    async def unsubscribe(
        self, *, message: int | None, email: str | None, list_name: str, everything: bool,
        method: str, ip: str, user_agent: str, now: datetime,
    ) -> str | None:
        """Suppress an address for a list (or every list), with evidence; returns the address.

        `message` (the row an unsubscribe link names) or `email` (a mailto request) says who;
        None when the message is unknown. Committed before it returns. An existing suppression
        of the same scope is kept (a hard bounce stays a hard bounce); `unconfirmed` becomes
        `unsubscribe`, the stronger statement.
        """
        async with self.transaction():
            lead_id: int | None
            if message is not None:
                row = await self._one(
                    "SELECT l.email, l.id FROM messages m JOIN leads l ON l.id = m.lead_id WHERE m.id = ?", (message,)
                )
                if row is None:
                    return None
                address, lead_id = str(row[0]), int(row[1])
            elif email and email.strip():
                address = email.strip().lower()
                found = await self._one("SELECT id FROM leads WHERE email = ?", (address,))
                lead_id = int(found[0]) if found else None
            else:
                return None
            scope = "" if everything or not list_name else list_name
            detail = f"{method}" + (f" from message {message}" if message is not None else "")
            added = await self._fetchall(
                f"""
                INSERT INTO suppressions (email, list, reason, detail, created_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (email, list) DO UPDATE SET
                    reason = excluded.reason, detail = excluded.detail, created_at = excluded.created_at
                WHERE reason = '{UNCONFIRMED}'
                RETURNING email
                """,
                (address, scope, UNSUBSCRIBE, detail, ms(now)),
            )
            await self._record_consent(
                ConsentRecord(
                    at=now, email=address, list_name=scope, action="unsubscribed", method=method, ip=ip,
                    user_agent=user_agent, message=message,
                ),
                lead_id=lead_id,
            )
            if added:
                await self._event(
                    at=now, type_="unsubscribed", lead_id=lead_id, message=message,
                    data={"list": scope, "method": method},
                )
        return address

    async def consents_of(self, email: str) -> list[ConsentRecord]:
        """Every consent change of an address, oldest first."""
        rows = await self._fetchall(
            "SELECT at, email, list, action, method, ip, user_agent, text, source, message_id FROM consents "
            "WHERE email = ? ORDER BY at, id",
            (email.strip().lower(),),
        )
        return [
            ConsentRecord(
                at=from_ms(r[0]), email=r[1], list_name=r[2], action=r[3], method=r[4], ip=r[5], user_agent=r[6],
                text=r[7], source=r[8], message=r[9],
            )
            for r in rows
        ]

    # -- suppression management --------------------------------------------------------

    async def add_suppressions(self, suppressions: Sequence[Suppression], *, now: datetime) -> int:
        """Suppress addresses; returns how many were new (an existing suppression is kept)."""
        return sum((await self.add_suppressions_by_scope(suppressions, now=now)).values())

    async def add_suppressions_by_scope(
        self, suppressions: Sequence[Suppression], *, now: datetime
    ) -> dict[tuple[str, str], int]:
        """Suppress addresses in one transaction; how many were new per (list, reason).

        A suppression's own `created_at` (an imported export's) is kept; `now` dates the rest.
        """
        groups: dict[tuple[str, str], list[Suppression]] = {}
        for suppression in suppressions:
            groups.setdefault((suppression.list_name, suppression.reason), []).append(suppression)
        added: dict[tuple[str, str], int] = {}
        async with self.transaction():
            for scope, group in groups.items():
                before = self.db.total_changes
                await self.db.executemany(
                    "INSERT OR IGNORE INTO suppressions (email, list, reason, detail, created_at) VALUES (?, ?, ?, ?, ?)",
                    [(s.email.strip().lower(), s.list_name, s.reason, s.detail, ms(s.created_at or now)) for s in group],
                )
                added[scope] = self.db.total_changes - before
        return added

    async def unsuppress(self, email: str, *, list_name: str, now: datetime) -> Suppression | None:
        """Lift one suppression (an operator's decision), keeping an event; None if there was none."""
        address = email.strip().lower()
        async with self.transaction():
            row = await self._one(
                "DELETE FROM suppressions WHERE email = ? AND list = ? RETURNING reason, detail, created_at",
                (address, list_name),
            )
            if row is None:
                return None
            await self.db.execute(
                "INSERT INTO events (at, type, lead_id, data) "
                "VALUES (?, 'unsuppressed', (SELECT id FROM leads WHERE email = ?), ?)",
                (ms(now), address, json.dumps({"list": list_name, "reason": row[0], "by": "cli"})),
            )
        return Suppression(address, row[0], list_name, row[1], from_ms(row[2]))

    async def list_suppressions(
        self, *, reason: str | None = None, list_name: str | None = None, email: str | None = None,
        limit: int | None = None,
    ) -> list[Suppression]:
        """Suppressions, newest first, optionally of one reason, one list ("" is global) or one address."""
        clause, params = _suppression_filter(reason=reason, list_name=list_name, email=email)
        rows = await self._fetchall(
            f"SELECT email, reason, list, detail, created_at FROM suppressions {clause} "
            "ORDER BY created_at DESC, email, list LIMIT ?",
            [*params, -1 if limit is None else limit],
        )
        return [Suppression(r[0], r[1], r[2], r[3], from_ms(r[4])) for r in rows]

    async def count_suppressions(
        self, *, reason: str | None = None, list_name: str | None = None, email: str | None = None
    ) -> int:
        """How many suppressions `list_suppressions` would return without a limit."""
        clause, params = _suppression_filter(reason=reason, list_name=list_name, email=email)
        return int((await self._one(f"SELECT count(*) FROM suppressions {clause}", params))[0])


def _suppression_filter(
    *, reason: str | None, list_name: str | None, email: str | None
) -> tuple[str, list[Any]]:
    """The WHERE clause and its parameters for the filters that are not None."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("reason", reason), ("list", list_name), ("email", email)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value.strip().lower() if column == "email" else value)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params
