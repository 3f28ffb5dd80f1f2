"""Tests for mailer.report and mailer.csvexport: rates, order, table, JSON and formula-safe CSV."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given
from hypothesis import strategies as st

from mailer.csvexport import formula_safe, write_csv
from mailer.report import TOTAL_STEP, build_report, format_csv, format_json, format_table
from mailer.tables import display_width
from mailer.store import StepFigures

WELCOME = StepFigures(
    scenario="trial", step_id="welcome", sent=200, delivered=190, soft_bounces=4, hard_bounces=6, opens=76,
    clicks=19, unsubscribes=2, complaints=1, machine_opens=40, machine_clicks=12,
)
FOLLOW = StepFigures(scenario="trial", step_id="follow-up", sent=100, delivered=100, opens=25, clicks=5)


def test_rates_are_over_delivered_and_over_opens() -> None:
    """Open rate and CTR divide by delivered, CTOR by opens; machine events enter no rate."""
    [row] = build_report([WELCOME])
    assert row.open_rate == 76 / 190 and row.ctr == 19 / 190 and row.cto == 19 / 76


def test_undefined_rates_are_none_not_zero() -> None:
    """With nothing delivered (or opened) a rate is undefined, shown as '-', never 0%."""
    [row] = build_report([StepFigures(scenario="s", step_id="a", sent=3, hard_bounces=3)])
    assert (row.open_rate, row.ctr, row.cto) == (None, None, None)
    header, line = format_table([row]).splitlines()[:2]
    assert dict(zip(header.split(), line.split()))["open%"] == "-"


def test_steps_follow_the_scenario_file_and_unsent_steps_show_zeros() -> None:
    """Steps appear in the file's order, a step nothing was sent for shows zeros, and a total ends the scenario."""
    rows = build_report([FOLLOW, WELCOME], step_order={"trial": ["welcome", "follow-up", "last-call"]})
    assert [row.step for row in rows] == ["welcome", "follow-up", "last-call", TOTAL_STEP]
    assert rows[2].figures.sent == 0
    total = rows[-1]
    assert (total.figures.sent, total.figures.delivered, total.figures.opens, total.figures.clicks) == (300, 290, 101, 24)
    assert total.open_rate == 101 / 290


def test_scenarios_not_loaded_come_after_loaded_ones_and_can_be_picked() -> None:
    """Data of a scenario no longer loaded (or of confirmations) is still shown, after the loaded ones; one can be picked."""
    optin = StepFigures(scenario="@optin", step_id="news", sent=3, delivered=3)
    rows = build_report([optin, WELCOME], step_order={"trial": ["welcome"]})
    assert [(r.scenario, r.step) for r in rows] == [("trial", "welcome"), ("@optin", "news")]
    assert [r.scenario for r in build_report([optin, WELCOME], scenario="@optin")] == ["@optin"]
    assert build_report([WELCOME], scenario="nope") == []


def test_the_table_is_aligned_even_with_japanese_names_and_has_a_bilingual_legend() -> None:
    """Every table line has the same display width, and the legend names 送信数, 到達数 and 開封率."""
    rows = build_report([StepFigures(scenario="新規リード育成", step_id="welcome", sent=5, delivered=5, opens=2)])
    text = format_table(rows)
    table = text.split("\n\n")[0].splitlines()
    numbers_end = {display_width(line) for line in table}
    assert len(numbers_end) == 1, table
    assert "40.0%" in table[1]
    for word in ("送信数", "到達数", "開封率", "ソフトバウンス", "ハードバウンス"):
        assert word in text


def test_json_nests_steps_under_scenarios_with_ratios() -> None:
    """JSON has each scenario's steps and total, rates as ratios rounded to 4 places and null when undefined."""
    data = json.loads(format_json(build_report([WELCOME, FOLLOW], step_order={"trial": ["welcome", "follow-up"]})))
    [trial] = data["scenarios"]
    assert [step["step"] for step in trial["steps"]] == ["welcome", "follow-up"]
    assert trial["steps"][0]["open_rate"] == 0.4 and trial["steps"][0]["machine_opens"] == 40
    assert trial["total"]["sent"] == 300
    lone = json.loads(format_json(build_report([StepFigures(scenario="x", step_id="a")])))
    assert lone["scenarios"][0]["total"]["open_rate"] is None


def test_csv_has_one_line_per_row_and_neutralizes_formulas() -> None:
    """The CSV parses back to the same figures, and a scenario name that is a formula is prefixed with a quote."""
    evil = StepFigures(scenario='=HYPERLINK("http://evil.example","x")', step_id="+1", sent=1, delivered=1)
    text = format_csv(build_report([evil, WELCOME]))
    lines = list(csv.DictReader(io.StringIO(text)))
    assert [line["scenario"] for line in lines] == ["'=HYPERLINK(\"http://evil.example\",\"x\")", "trial"]
    assert lines[0]["step"] == "'+1" and lines[0]["cto"] == ""
    assert lines[1]["sent"] == "200" and lines[1]["open_rate"] == "0.4000"


def test_formula_safe_prefixes_every_dangerous_start() -> None:
    """=, +, -, @, tab and CR at the start get a quote; the same characters elsewhere, and plain text, do not."""
    for cell in ('=HYPERLINK("http://x")', "+1", "-1", "@SUM(A1:A2)", "\t=1", "\r=1"):
        assert formula_safe(cell) == "'" + cell
    for cell in ("a=b", "user@example.com", "1-2", "", "42"):
        assert formula_safe(cell) == cell
    assert formula_safe(None) == "" and formula_safe(7) == "7"


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_no_written_cell_can_start_a_formula(cells: list[str]) -> None:
    """Whatever text goes in, no cell read back from the CSV starts with a formula character."""
    out = io.StringIO()
    write_csv(out, ["a", "b", "c", "d"][: len(cells)], [cells])
    [_, row] = list(csv.reader(io.StringIO(out.getvalue())))
    for written, original in zip(row, cells):
        assert not written.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert written.removeprefix("'") == original or written == original
