"""The SQLite store's reputation queries: complaints against messages sent, and engaged leads.

A mixin of `SQLiteStore`, read by the daemon's complaint brake (`mailer.sendingdomains`) and
its engaged-first ordering while an IP warms up. Results are per scenario and step: the daemon
knows which sending domain each one mails from, the store does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mailer.timestamps import ms
from mailer.sqlitetables import StoreTables

HOUR_MS = 3_600_000
# A click says more about a reader than an open (which privacy proxies and image blocking
# blur); both count only when judged human (mailer.machine).
CLICK_WEIGHT = 3


class ReputationQueries(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    async def sent_per_hour(self, *, since: datetime) -> list[tuple[str, str, int, int]]:
        """(scenario, step id, hour number since the epoch, messages sent) from `since` on.

        Reads every event of the period once: the daemon asks at start, then counts itself.
        """
        rows = await self._fetchall(
            "SELECT scenario, step_id, at / ?, count(*) FROM events "
            "WHERE type = 'sent' AND at >= ? AND scenario IS NOT NULL GROUP BY 1, 2, 3",
            (HOUR_MS, ms(since)),
        )
        return [(r[0], r[1] or "", int(r[2]), int(r[3])) for r in rows]

    async def complaints_since(self, *, since: datetime) -> list[tuple[str, str, int]]:
        """(scenario, step id, complaints) of the complaints matched to a message since `since`:
        feedback reports taken as complaints (a not-spam or auth-failure report is not one)."""
        rows = await self._fetchall(
            "SELECT m.scenario, m.step_id, count(*) FROM bounces b JOIN messages m ON m.id = b.message_id "
            "WHERE b.kind = 'feedback' AND b.action = 'complaint' AND b.at >= ? AND b.undone_at IS NULL GROUP BY 1, 2",
            (ms(since),),
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def engagement_scores(self, lead_ids: Sequence[int], *, since: datetime) -> dict[int, int]:
        """Each lead's human opens and clicks since `since` (a click weighs CLICK_WEIGHT); 0 when none."""
        scores = dict.fromkeys(lead_ids, 0)
        for start in range(0, len(lead_ids), 500):
            chunk = lead_ids[start : start + 500]
            rows = await self._fetchall(
                f"SELECT lead_id, sum(CASE type WHEN 'clicked' THEN {CLICK_WEIGHT} ELSE 1 END) FROM events "
                f"WHERE lead_id IN ({','.join('?' * len(chunk))}) AND at >= ? "
                "AND type IN ('opened', 'clicked') AND machine = 0 GROUP BY lead_id",
                [*chunk, ms(since)],
            )
            scores.update({int(r[0]): int(r[1]) for r in rows})
        return scores
