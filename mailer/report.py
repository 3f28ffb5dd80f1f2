"""`mailer report`: per scenario and step, what was sent, what arrived, and what people did.

Pure: the store counts (`Store.step_figures`), this module computes the rates and lays the
rows out as a terminal table, JSON or CSV. Human and machine events are apart: machine opens
and clicks (privacy proxies, link scanners) are shown in their own columns and never enter a
rate.

Definitions, the ones marketers compare across tools:

- delivered (到達数) = sent − messages that bounced after they were sent;
- open rate (開封率) = unique human opens / delivered, where a human click counts as an open
  (the message was read even if its images were blocked);
- CTR (クリック率) = unique human clickers / delivered;
- click-to-open rate (CTOR, 開封後クリック率) = unique human clickers / unique human opens.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from mailer.csvexport import write_csv
from mailer.store import StepFigures
from mailer.tables import aligned

TOTAL_STEP = "(total)"


@dataclass(frozen=True)
class Column:
    key: str  # the JSON and CSV name
    header: str  # the terminal table's header
    japanese: str
    meaning: str
    rate: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("sent", "sent", "送信数", "accepted by the receiving server"),
    Column("delivered", "delivered", "到達数", "sent, minus those that bounced later"),
    Column("soft_bounces", "soft", "ソフトバウンス", "messages with a soft bounce (full mailbox, …)"),
    Column("hard_bounces", "hard", "ハードバウンス", "messages with a hard bounce (no such user, …)"),
    Column("opens", "opens", "開封数", "unique human opens; a human click counts as an open"),
    Column("open_rate", "open%", "開封率", "opens / delivered", rate=True),
    Column("clicks", "clicks", "クリック数", "unique human clickers"),
    Column("ctr", "CTR", "クリック率", "clicks / delivered", rate=True),
    Column("cto", "CTOR", "開封後クリック率", "clicks / opens", rate=True),
    Column("unsubscribes", "unsub", "配信停止", "unsubscribes through this step's messages"),
    Column("complaints", "spam", "苦情", "spam complaints (feedback reports)"),
    Column("machine_opens", "m.opens", "機械の開封", "opens by privacy proxies and scanners: in no rate"),
    Column("machine_clicks", "m.clicks", "機械のクリック", "clicks by link scanners and honeypot hits: in no rate"),
)

_COUNTS = tuple(f.name for f in fields(StepFigures) if f.name not in ("scenario", "step_id"))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class ReportRow:
    """One step's line (or a scenario's total, step `TOTAL_STEP`)."""

    scenario: str
    step: str
    figures: StepFigures

    @property
    def open_rate(self) -> float | None:
        return _rate(self.figures.opens, self.figures.delivered)

    @property
    def ctr(self) -> float | None:
        return _rate(self.figures.clicks, self.figures.delivered)

    @property
    def cto(self) -> float | None:
        return _rate(self.figures.clicks, self.figures.opens)

    def value(self, key: str) -> int | float | None:
        found: int | float | None = getattr(self, key) if key in ("open_rate", "ctr", "cto") else getattr(self.figures, key)
        return found

    def as_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"scenario": self.scenario, "step": self.step}
        for column in COLUMNS:
            value = self.value(column.key)
            values[column.key] = round(value, 4) if isinstance(value, float) else value
        return values


def build_report(
    figures: Sequence[StepFigures],
    *,
    step_order: Mapping[str, Sequence[str]] | None = None,
    scenario: str | None = None,
) -> list[ReportRow]:
    """Rows in a reader's order: scenarios as loaded (then any others), steps as written.

    `step_order` names the loaded scenarios' steps, so a step nothing was sent for yet still
    shows, with zeros. Each scenario with more than one step ends with its total.
    """
    order = dict(step_order or {})
    by_scenario: dict[str, dict[str, StepFigures]] = {name: {} for name in order}
    for figure in figures:
        by_scenario.setdefault(figure.scenario, {})[figure.step_id] = figure
    names = [*order, *sorted(name for name in by_scenario if name not in order)]
    if scenario is not None:
        names = [name for name in names if name == scenario]
    rows: list[ReportRow] = []
    for name in names:
        found = by_scenario[name]
        known = list(order.get(name, ()))
        steps = [*known, *sorted(step for step in found if step not in known)]
        step_rows = [ReportRow(name, step, found.get(step) or StepFigures(scenario=name, step_id=step)) for step in steps]
        rows.extend(step_rows)
        if len(step_rows) > 1:
            total = {count: sum(getattr(row.figures, count) for row in step_rows) for count in _COUNTS}
            rows.append(ReportRow(name, TOTAL_STEP, StepFigures(scenario=name, step_id=TOTAL_STEP, **total)))
    return rows


def _cell(value: int | float | None, *, rate: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if rate else str(value)


def format_table(rows: Sequence[ReportRow]) -> str:
    """An aligned table with a legend that names each column in English and Japanese."""
    if not rows:
        return "nothing sent yet"
    header = ["scenario", "step", *(column.header for column in COLUMNS)]
    body = [
        [row.scenario, row.step, *(_cell(row.value(c.key), rate=c.rate) for c in COLUMNS)] for row in rows
    ]
    lines = aligned([header, *body], right=range(2, len(header)))  # Japanese scenario and step names too
    lines.append("")
    lines.extend(f"{c.header}: {c.japanese}, {c.meaning}" for c in COLUMNS)
    return "\n".join(lines)


def format_json(rows: Sequence[ReportRow]) -> str:
    """{"scenarios": [{"scenario", "steps": [...], "total": {...} | null}]}; rates are ratios, null when undefined."""
    scenarios: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = scenarios.setdefault(row.scenario, {"scenario": row.scenario, "steps": [], "total": None})
        values = row.as_dict()
        del values["scenario"]
        if row.step == TOTAL_STEP:
            del values["step"]
            entry["total"] = values
        else:
            entry["steps"].append(values)
    for entry in scenarios.values():
        if entry["total"] is None and len(entry["steps"]) == 1:
            entry["total"] = {k: v for k, v in entry["steps"][0].items() if k != "step"}
    return json.dumps({"scenarios": list(scenarios.values()), "columns": [asdict(c) for c in COLUMNS]}, ensure_ascii=False, indent=2)


def format_csv(rows: Sequence[ReportRow]) -> str:
    """One line per row; rates as ratios (empty when undefined); every cell formula-safe."""
    out = io.StringIO()
    write_csv(
        out,
        ["scenario", "step", *(c.key for c in COLUMNS)],
        ([row.scenario, row.step, *(_csv_value(row.value(c.key)) for c in COLUMNS)] for row in rows),
    )
    return out.getvalue()


def _csv_value(value: int | float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
