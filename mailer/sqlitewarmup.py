"""The SQLite store's warm-up tables: attempts per (IP, provider, UTC hour) and the throttles.

A mixin of `SQLiteStore`. The daemon's `WarmupBudget` counts in memory and hands its changes
over in batches (`record_warmup`): usage as increments, added to what is stored, so two
writers never overwrite each other's counts; throttles whole, the latest winning.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any


from mailer.throttle import Throttle
from mailer.timestamps import from_ms, ms
from mailer.warmupbudget import UsageCount, WarmupChanges
from mailer.sqlitetables import StoreTables

_THROTTLE_COLUMNS = (
    "ip, provider, multiplier, paused_until, pause_seconds, strikes, last_strike, clean_since, "
    "clean_accepted, reason, changed_at"
)


def _at(value: int | None) -> Any:
    return from_ms(value) if value is not None else None


def _throttle(r: Sequence[Any]) -> Throttle:
    return Throttle(
        multiplier=float(r[2]), paused_until=_at(r[3]), pause_length=timedelta(seconds=r[4]), strikes=r[5],
        last_strike=_at(r[6]), clean_since=_at(r[7]), clean_accepted=r[8], reason=r[9], changed_at=_at(r[10]),
    )


class WarmupTables(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    async def record_warmup(self, changes: WarmupChanges) -> None:
        """Add usage increments and store changed throttles, in one transaction."""
        if not changes:
            return
        async with self.transaction():
            await self.db.executemany(
                """
                INSERT INTO warmup_usage (ip, provider, day, hour, attempts, accepted, deferred)
                VALUES (?, ?, ?, ?, max(?, 0), max(?, 0), max(?, 0))
                ON CONFLICT (day, ip, provider, hour) DO UPDATE SET
                    attempts = max(attempts + ?, 0),
                    accepted = max(accepted + ?, 0),
                    deferred = max(deferred + ?, 0)
                """,
                [
                    (u.ip, u.provider, u.day.isoformat(), u.hour, u.attempts, u.accepted, u.deferred,
                     u.attempts, u.accepted, u.deferred)
                    for u in changes.usage
                ],
            )
            await self.db.executemany(
                f"INSERT OR REPLACE INTO warmup_throttles ({_THROTTLE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        ip, provider, t.multiplier, ms(t.paused_until) if t.paused_until else None,
                        int(t.pause_length.total_seconds()), t.strikes, ms(t.last_strike) if t.last_strike else None,
                        ms(t.clean_since) if t.clean_since else None, t.clean_accepted, t.reason,
                        ms(t.changed_at) if t.changed_at else None,
                    )
                    for (ip, provider), t in changes.throttles.items()
                ],
            )

    async def warmup_usage(self, *, since: date) -> list[UsageCount]:
        """Stored usage from the day `since` on (UTC days)."""
        rows = await self._fetchall(
            "SELECT ip, provider, day, hour, attempts, accepted, deferred FROM warmup_usage WHERE day >= ? "
            "ORDER BY day, ip, provider, hour",
            (since.isoformat(),),
        )
        return [UsageCount(r[0], r[1], date.fromisoformat(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    async def warmup_throttles(self) -> dict[tuple[str, str], Throttle]:
        rows = await self._fetchall(f"SELECT {_THROTTLE_COLUMNS} FROM warmup_throttles ORDER BY ip, provider")
        return {(r[0], r[1]): _throttle(r) for r in rows}
