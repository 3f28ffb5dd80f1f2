"""Tests for mailer.segments: dynamic lists in lists.yaml, how scenarios enter by them and leave them."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

import pytest

from conftest import make_config, write_workspace
from mailer.clock import FakeClock
from mailer.conditions import AllOf, AttributeTest, Engagement
from mailer.daemon import Daemon
from mailer.errors import ScenarioError
from mailer.leads import Lead
from mailer.scenario import load_scenarios
from mailer.segments import declared_lists, load_segments
from mailer.sqlitestore import SQLiteStore

SHIPPED = Path(__file__).parent.parent / "scenarios" / "lists.yaml"
MONDAY_8AM = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def write(directory: Path, text: str, name: str = "lists.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_rules_compile_in_the_condition_language(tmp_path: Path) -> None:
    """Each list's where: compiles to the same tree a scenario condition would, short form and list form included."""
    path = write(tmp_path, """\
        lists:
          hot:
            description: Engaged and a good fit
            where: "score >= 50 and grade >= B"
          japan:
            where:
              - {attribute: country, equals: JP}
              - "company_size >= 50"
        """)
    assert load_segments(path) == {
        "hot": AllOf((AttributeTest("score", "gte", 50), AttributeTest("grade", "gte", "B"))),
        "japan": AllOf((AttributeTest("country", "equals", "JP"), AttributeTest("company_size", "gte", 50))),
    }


def test_the_shipped_lists_load_and_mean_what_they_say() -> None:
    """scenarios/lists.yaml loads, and its engaged-trials rule takes score and grade together."""
    segments = load_segments(SHIPPED)
    assert set(segments) == {"engaged-trials", "sales-ready", "japan-mid-market"}
    engaged = segments["engaged-trials"]
    assert engaged.evaluate(Lead(email="a@b.example", score=25, grade="B"), Engagement())
    assert not engaged.evaluate(Lead(email="a@b.example", score=25, grade="D"), Engagement())
    assert segments["sales-ready"].evaluate(Lead(email="a@b.example", stage="SQL"), Engagement())


def test_no_file_or_no_lists_means_no_dynamic_lists(tmp_path: Path) -> None:
    """A missing lists.yaml, or one with an empty lists:, defines nothing."""
    assert load_segments(tmp_path / "lists.yaml") == {}
    assert load_segments(write(tmp_path, "lists:\n")) == {}


@pytest.mark.parametrize(
    ("text", "line", "field", "problem", "hint"),
    [
        ("list:\n  a: {where: 'x = 1'}\n", 1, "list", "unknown key 'list'", "did you mean 'lists'?"),
        ("lists: [a, b]\n", 1, "lists", "must be a mapping of list names, not a list", None),
        ("lists:\n  'two words': {where: 'x = 1'}\n", 2, "lists.two words", "'two words' is not a valid list name", None),
        ("lists:\n  hot: 'score >= 50'\n", 2, "lists.hot", "must be a mapping with where, not text", None),
        ("lists:\n  hot:\n    description: x\n", 2, "lists.hot.where", "missing required key 'where'", None),
        ("lists:\n  hot:\n    wher: 'x = 1'\n", 3, "lists.hot.wher", "unknown key 'wher'", "did you mean 'where'?"),
        ("lists:\n  hot:\n    where: 'score >> 50'\n", 3, "lists.hot.where", "'score >> 50': expected a value after '>'", None),
        ("lists:\n  hot:\n    where: {opened: any}\n", 3, "lists.hot.where", "a list rule cannot test what a lead opened, clicked or was sent", None),
        ("lists:\n  hot:\n    where: 'x = 1'\n    description: [a]\n", 4, "lists.hot.description", "must be text, not a list", None),
    ],
)
def test_mistakes_name_line_field_and_hint(
    tmp_path: Path, text: str, line: int, field: str, problem: str, hint: str | None
) -> None:
    """Each mistake in lists.yaml names the file, line and field, like a scenario's."""
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_segments(path)
    error = caught.value
    assert (error.file, error.line, error.field, error.problem) == (str(path), line, field, problem)
    if hint is not None:
        assert error.hint == hint


def test_declared_lists_survive_a_broken_rule(tmp_path: Path) -> None:
    """The names in lists.yaml are known even when one rule is broken; not when the YAML is."""
    assert declared_lists(write(tmp_path, "lists:\n  hot: {where: 'score >'}\n  cold: {where: 'x = 1'}\n")) == frozenset({"hot", "cold"})
    assert declared_lists(write(tmp_path, "lists: [\n")) is None


# Scenarios entering by a dynamic list

SCENARIO = """\
name: {name}
sender: default
entry: {{list: {list}}}
steps:
  - {{id: a, subject: Hi, template: a.html}}
"""


def test_a_scenario_entering_by_a_dynamic_list_gets_its_rule(tmp_path: Path) -> None:
    """load_scenarios reads lists.yaml beside the scenarios: a dynamic list carries its rule, a static one none."""
    write(tmp_path, "lists:\n  japan: {where: 'country = JP'}\n")
    write(tmp_path, SCENARIO.format(name="dynamic", list="japan"), "a.yaml")
    write(tmp_path, SCENARIO.format(name="static", list="signups"), "b.yaml")
    scenarios, errors = load_scenarios(tmp_path)
    assert errors == []
    assert [(s.name, s.entry.segment) for s in scenarios] == [
        ("dynamic", AttributeTest("country", "equals", "JP")), ("static", None),
    ]


def test_a_broken_lists_file_pauses_only_the_scenarios_using_its_lists(tmp_path: Path) -> None:
    """While lists.yaml has a mistake, scenarios entering by a list it names are refused; the others load."""
    lists = write(tmp_path, "lists:\n  japan: {where: 'country = '}\n")
    write(tmp_path, SCENARIO.format(name="dynamic", list="japan"), "a.yaml")
    write(tmp_path, SCENARIO.format(name="static", list="signups"), "b.yaml")
    scenarios, errors = load_scenarios(tmp_path)
    assert [s.name for s in scenarios] == ["static"]
    assert [(e.file, e.line) for e in errors] == [(str(lists), 2), (str(tmp_path / "a.yaml"), 3)]
    assert errors[1].problem == f"list 'japan' cannot be used while {lists} has a mistake"


def test_unreadable_lists_file_pauses_every_list_scenario(tmp_path: Path) -> None:
    """When lists.yaml cannot be parsed at all, no list can be told static, so every list scenario waits."""
    write(tmp_path, "lists: [\n")
    write(tmp_path, SCENARIO.format(name="static", list="signups"), "b.yaml")
    write(tmp_path, "name: everyone\nsender: default\nentry: {where: 'country = JP'}\nsteps:\n  - {id: a, subject: Hi, template: a.html}\n", "c.yaml")
    scenarios, errors = load_scenarios(tmp_path)
    assert [s.name for s in scenarios] == ["everyone"]
    assert len(errors) == 2


# Through the daemon and a real SQLite store

DYNAMIC = """
name: japan-news
sender: default
entry:
  list: japan
steps:
  - id: one
    subject: "One"
    template: one.html
  - id: two
    wait: 2d
    subject: "Two"
    template: two.html
"""
TRIGGERED = """
name: mql-follow-up
sender: default
entry:
  trigger: became_MQL
steps:
  - id: one
    subject: "Welcome, MQL"
    template: one.html
"""


def lead(number: int, country: str) -> Lead:
    return Lead(email=f"lead{number}@example.com", attributes=MappingProxyType({"country": country}))


async def test_dynamic_list_entry_and_exit_through_the_daemon(tmp_path: Path) -> None:
    """The daemon enters every lead the rule matches (no static membership needed), never enters trigger scenarios
    on its pass, and a lead whose data stops matching exits before its next step."""
    write_workspace(tmp_path, DYNAMIC)
    (tmp_path / "scenarios" / "trigger.yaml").write_text(TRIGGERED, encoding="utf-8")
    write(tmp_path / "scenarios", "lists:\n  japan:\n    where: 'country = JP'\n")
    config = make_config(tmp_path, 2525)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads([lead(1, "JP"), lead(2, "US"), lead(3, "jp")], list_name=None, now=MONDAY_8AM)
        daemon = Daemon(config=config, store=store, clock=FakeClock(MONDAY_8AM))
        assert daemon.load_scenarios() == []
        assert await daemon.enter_leads(MONDAY_8AM) == 2
        assert await daemon.schedule_due(MONDAY_8AM)  # step one queued for both
        await store.upsert_leads([lead(3, "DE")], list_name=None, now=MONDAY_8AM)
        later = datetime(2026, 1, 7, 9, 0, tzinfo=timezone.utc)
        assert await daemon.schedule_due(later)
    with sqlite3.connect(config.store) as db:
        entered = db.execute("SELECT scenario, COUNT(*) FROM enrollments GROUP BY scenario").fetchall()
        exits = db.execute(
            "SELECT l.email, e.data FROM events e JOIN leads l ON l.id = e.lead_id WHERE e.type = 'exited'"
        ).fetchall()
        states = db.execute(
            "SELECT l.email, e.state FROM enrollments e JOIN leads l ON l.id = e.lead_id ORDER BY l.email"
        ).fetchall()
    assert entered == [("japan-news", 2)]
    assert [(email, json.loads(data)["reason"]) for email, data in exits] == [("lead3@example.com", "no longer in list japan")]
    assert states == [("lead1@example.com", "active"), ("lead3@example.com", "exited")]


def test_a_fresh_workspace_validates_with_its_lists_and_reports_a_broken_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mailer init` ships lists.yaml and `mailer validate` passes; a mistake in it is one line naming file:line, exit 2."""
    from mailer.cli import main

    assert main(["init", str(tmp_path)]) == 0
    monkeypatch.chdir(tmp_path)
    assert (tmp_path / "scenarios" / "lists.yaml").is_file()
    capsys.readouterr()
    assert main(["validate"]) == 0, capsys.readouterr().err
    lists = tmp_path / "scenarios" / "lists.yaml"
    lists.write_text(lists.read_text(encoding="utf-8").replace("grade >= C", "grade >= E"), encoding="utf-8")
    assert main(["validate"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mailer: error:")]
    assert len(errors) == 1 and "lists.yaml:8: lists.engaged-trials.where:" in errors[0] and "grades are A, B, C, D, F" in errors[0]
