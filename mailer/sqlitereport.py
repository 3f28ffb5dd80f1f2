"""The SQLite store's report queries: per scenario and step, the counts `mailer report` shows.

A mixin of `SQLiteStore`. The events are read through the covering index `events_report`
(schema v3) alone, never row by row; bounces through their own table, far smaller than the
events, joined to their messages by primary key. Rates are mailer.report's business.
"""

from __future__ import annotations

from collections import Counter

from mailer.store import StepFigures
from mailer.sqlitetables import StoreTables

REPORT_EVENTS = """
    SELECT scenario, step_id, type, machine, count(DISTINCT message_id) FROM events
    WHERE {scope} AND step_id IS NOT NULL AND type IN ('sent', 'opened', 'clicked', 'unsubscribed', 'complained')
    GROUP BY scenario, step_id, type, machine
"""
# A human click counts as an open: the message was read even if its images were blocked.
REPORT_OPENS = """
    SELECT scenario, step_id, count(DISTINCT message_id) FROM events
    WHERE {scope} AND step_id IS NOT NULL AND type IN ('opened', 'clicked') AND machine = 0
    GROUP BY scenario, step_id
"""
REPORT_BOUNCES = """
    SELECT m.scenario, m.step_id,
           count(DISTINCT CASE b.bounce_class WHEN 'soft' THEN m.id END),
           count(DISTINCT CASE b.bounce_class WHEN 'hard' THEN m.id END),
           count(DISTINCT CASE m.state WHEN 'bounced' THEN m.id END)
    FROM bounces b JOIN messages m ON m.id = b.message_id
    WHERE b.kind = 'bounce' AND b.undone_at IS NULL AND m.{scope}
    GROUP BY m.scenario, m.step_id
"""

# (event type, machine) → the StepFigures field it counts; human opens come from REPORT_OPENS.
_EVENT_FIELDS = {
    ("sent", 0): "sent",
    ("clicked", 0): "clicks",
    ("opened", 1): "machine_opens",
    ("clicked", 1): "machine_clicks",
    ("unsubscribed", 0): "unsubscribes",
    ("complained", 0): "complaints",
}


class ReportQueries(StoreTables):
    """Mixed into SQLiteStore (see mailer.sqlitetables)."""

    async def step_figures(self, scenario: str | None = None) -> list[StepFigures]:
        """Per (scenario, step) with anything recorded, of one scenario or of all."""
        scope, params = ("scenario = ?", [scenario]) if scenario is not None else ("scenario IS NOT NULL", [])
        figures: dict[tuple[str, str], Counter[str]] = {}
        for name, step, kind, machine, count in await self._fetchall(REPORT_EVENTS.format(scope=scope), params):
            if (field := _EVENT_FIELDS.get((kind, machine))) is not None:
                figures.setdefault((name, step), Counter())[field] += count
        for name, step, count in await self._fetchall(REPORT_OPENS.format(scope=scope), params):
            figures.setdefault((name, step), Counter())["opens"] += count
        for name, step, soft, hard, bounced in await self._fetchall(REPORT_BOUNCES.format(scope=scope), params):
            counts = figures.setdefault((name, step), Counter())
            counts.update(soft_bounces=soft, hard_bounces=hard, bounced_later=bounced)
        result = []
        for (name, step), counts in sorted(figures.items()):
            bounced_later = counts.pop("bounced_later", 0)
            delivered = max(counts["sent"] - bounced_later, 0)  # sent, minus those that bounced later
            result.append(StepFigures(scenario=name, step_id=step, delivered=delivered, **counts))
        return result
