"""The SQLite store's side of the HTTP API and webhooks: API events, API keys, the outbox.

A mixin of `SQLiteStore`. Webhook calls are written to `webhook_deliveries` (an outbox) in
the same transaction as the change they announce, so a change is never announced without
being stored, nor stored without being announced; mailer.webhooks sends them later and logs
each try in `webhook_attempts`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import aiosqlite

from mailer.apiinput import EventInput
from mailer.errors import UserError
from mailer.scoremodel import API_EVENT_TYPES, NewDelivery, WebhookDelivery
from mailer.sqlitetables import StoreTables
from mailer.timestamps import from_ms, ms

# `last_used_at` is kept to the minute: an API client posting events all day must not turn
# every request into a write transaction.
_LAST_USED_GRANULARITY_MS = 60_000

_DELIVERY_COLUMNS = (
    "id, webhook, event_type, event_id, body, attempts, state, next_attempt_at, last_status, last_error, created_at"
)


async def insert_deliveries(db: aiosqlite.Connection, deliveries: Sequence[NewDelivery], *, now: datetime) -> None:
    """Add webhook calls to the outbox, due at once; inside the caller's transaction.

    (webhook, event_id) is unique: a delivery written twice (a retried batch) is kept once.
    """
    stamp = ms(now)
    await db.executemany(
        "INSERT OR IGNORE INTO webhook_deliveries (webhook, event_type, event_id, body, state, attempts, "
        "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
        [(d.webhook, d.event_type, d.event_id, d.body, stamp, stamp, stamp) for d in deliveries],
    )


def _delivery(r: Sequence[Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=r[0], webhook=r[1], event_type=r[2], event_id=r[3], body=bytes(r[4]), attempts=r[5], state=r[6],
        next_attempt_at=from_ms(r[7]) if r[7] is not None else None, last_status=r[8], last_error=r[9],
        created_at=from_ms(r[10]),
    )


class ApiTables(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    # -- events from other systems -----------------------------------------------------

    async def record_api_event(
        self,
        *,
        email: str,
        type: str,
        at: datetime,
        name: str | None,
        data: Mapping[str, Any],
        key: str | None,
        now: datetime,
    ) -> bool:
        """Store an event posted through the API; False (nothing written) when `key` was seen before.

        An unknown address becomes a new lead with just the address. The event's row keeps
        `name` and `key` in its data, where mailer.scoring.scoring_event reads them.
        """
        async with self.transaction():
            return await self._insert_api_event(email=email, type=type, at=at, name=name, data=data, key=key, now=now)

    async def record_api_events(
        self, events: Sequence[EventInput], *, now: datetime, deliveries: Callable[[EventInput], Sequence[NewDelivery]]
    ) -> list[EventInput]:
        """Store a batch of posted events and the webhook calls of each new one, in one
        transaction; returns the new ones (an event whose key was seen before writes nothing)."""
        async with self.transaction():
            new = [
                event for event in events
                if await self._insert_api_event(
                    email=event.email, type=event.type, at=event.at, name=event.name, data=event.data, key=event.key, now=now,
                )
            ]
            await insert_deliveries(self.db, [d for event in new for d in deliveries(event)], now=now)
        return new

    async def _insert_api_event(
        self, *, email: str, type: str, at: datetime, name: str | None, data: Mapping[str, Any], key: str | None,
        now: datetime,
    ) -> bool:
        """record_api_event's writes, inside the caller's transaction."""
        if type not in API_EVENT_TYPES:
            raise UserError(f"unknown event type {type!r}", field="type", hint=f"use one of {', '.join(API_EVENT_TYPES)}")
        address = email.strip().lower()
        payload = dict(data)
        if name is not None:
            payload["name"] = name
        if key is not None:
            payload["key"] = key
        stamp = ms(now)
        if key is not None and await self._fetchall("SELECT 1 FROM event_keys WHERE key = ?", (key,)):
            return False
        await self.db.execute(
            "INSERT INTO leads (email, created_at, updated_at) VALUES (?, ?, ?) ON CONFLICT (email) DO NOTHING",
            (address, stamp, stamp),
        )
        cursor = await self.db.execute(
            "INSERT INTO events (at, type, lead_id, data) SELECT ?, ?, id, ? FROM leads WHERE email = ?",
            (ms(at), type, json.dumps(payload, ensure_ascii=False), address),
        )
        if key is not None:
            await self.db.execute("INSERT INTO event_keys (key, event_id) VALUES (?, ?)", (key, cursor.lastrowid))
        return True

    # -- API keys ----------------------------------------------------------------------

    async def add_api_key(self, name: str, key_hash: bytes, *, now: datetime) -> None:
        """Store a new key's hash under a name (the key itself is never stored)."""
        async with self.transaction():
            if await self._fetchall("SELECT 1 FROM api_keys WHERE name = ?", (name,)):
                raise UserError(
                    f"an API key named {name!r} exists", field="name",
                    hint="choose another name (a revoked key keeps its name)",
                )
            await self.db.execute(
                "INSERT INTO api_keys (name, hash, created_at) VALUES (?, ?, ?)", (name, key_hash, ms(now))
            )

    async def api_keys(self) -> list[tuple[str, datetime, datetime | None, datetime | None]]:
        """(name, created, revoked, last used) of every key, oldest first."""
        rows = await self._fetchall("SELECT name, created_at, revoked_at, last_used_at FROM api_keys ORDER BY id")
        return [
            (r[0], from_ms(r[1]), from_ms(r[2]) if r[2] is not None else None, from_ms(r[3]) if r[3] is not None else None)
            for r in rows
        ]

    async def revoke_api_key(self, name: str, *, now: datetime) -> bool:
        """Revoke a live key; False when no live key has that name."""
        async with self.transaction():
            before = self.db.total_changes
            await self.db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (ms(now), name)
            )
            return self.db.total_changes > before

    async def api_key_name(self, key_hash: bytes, *, now: datetime) -> str | None:
        """The name of the live key with this hash (noting its use), None when unknown or revoked."""
        rows = await self._fetchall(
            "SELECT name, last_used_at FROM api_keys WHERE hash = ? AND revoked_at IS NULL", (key_hash,)
        )
        if not rows:
            return None
        name, last_used = rows[0]
        if last_used is None or ms(now) - last_used >= _LAST_USED_GRANULARITY_MS:
            async with self.transaction():
                await self.db.execute("UPDATE api_keys SET last_used_at = ? WHERE hash = ?", (ms(now), key_hash))
        return str(name)

    # -- the webhook outbox ------------------------------------------------------------

    async def due_deliveries(self, *, now: datetime, limit: int, exclude: Collection[int] = ()) -> list[WebhookDelivery]:
        """Pending deliveries due by `now`, earliest first, but for those in `exclude` (in flight)."""
        skip = f"AND id NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        # written as the partial index's WHERE, so SQLite can prove webhook_deliveries_due applies
        rows = await self._fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries "
            f"WHERE state = 'pending' AND next_attempt_at <= ? {skip} ORDER BY next_attempt_at, id LIMIT ?",
            (ms(now), *exclude, limit),
        )
        return [_delivery(r) for r in rows]

    async def record_delivery_attempt(
        self,
        delivery_id: int,
        *,
        at: datetime,
        status: int | None,
        error: str,
        duration_ms: int,
        delivered: bool,
        next_attempt_at: datetime | None,
    ) -> None:
        """Log one try and move the delivery on: delivered, pending until `next_attempt_at`, or failed.

        A try recorded for a delivery that is no longer pending (delivered by an earlier try
        that answered late) is logged but changes nothing.
        """
        state = "delivered" if delivered else "pending" if next_attempt_at is not None else "failed"
        async with self.transaction():
            await self.db.execute(
                "INSERT INTO webhook_attempts (delivery_id, at, status, error, duration_ms) VALUES (?, ?, ?, ?, ?)",
                (delivery_id, ms(at), status, error, duration_ms),
            )
            await self.db.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, "
                "last_status = ?, last_error = ?, updated_at = ? WHERE id = ? AND state = 'pending'",
                (
                    state, ms(next_attempt_at) if state == "pending" and next_attempt_at else None, status, error,
                    ms(at), delivery_id,
                ),
            )

    async def requeue_deliveries(self, *, now: datetime, webhook: str | None = None, ids: Collection[int] = ()) -> int:
        """Given-up deliveries (of `webhook`, or these ids) pending again, due at `now`, with a
        new series of tries: the receiver was mended. Their earlier attempts stay in the log."""
        where, params = "", list[object]()
        if webhook is not None:
            where, params = "AND webhook = ?", [webhook]
        if ids:
            where += f" AND id IN ({','.join('?' * len(ids))})"
            params += list(ids)
        async with self.transaction():
            cursor = await self.db.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? "
                f"WHERE state = 'failed' {where}",
                [ms(now), ms(now), *params],
            )
        return cursor.rowcount

    async def deliveries(self, *, webhook: str | None = None, limit: int = 50) -> list[WebhookDelivery]:
        """The latest deliveries, newest first; of one webhook when given."""
        where, params = ("WHERE webhook = ?", [webhook]) if webhook is not None else ("", [])
        rows = await self._fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries {where} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [_delivery(r) for r in rows]

    async def delivery_attempts(self, delivery_id: int) -> list[tuple[datetime, int | None, str, int]]:
        """(when, HTTP status or None, error, duration in ms) of each try of a delivery, oldest first."""
        rows = await self._fetchall(
            "SELECT at, status, error, duration_ms FROM webhook_attempts WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
        return [(from_ms(r[0]), r[1], r[2], int(r[3])) for r in rows]
