"""Tests for mailer.stages: lifecycle moves by rule and by hand, BANT, accounts and triggers."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.conditions import AttributeTest, Engagement
from mailer.errors import ScenarioError, UserError
from mailer.leads import Lead
from mailer.scenario import Scenario, load_scenario
from mailer.scoremodel import STAGES, GradeResult, ScoreResult, StageChange
from mailer.stages import (
    DEFAULT_STAGE_RULES, StageError, StageRules, account_change, account_of, bant, next_stage, parse_stage_rules,
    request_stage, triggered_by,
)
from mailer.yamlfile import parse_yaml

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def lead(stage: str = "lead", email: str = "ada@acme.example", **attributes: Any) -> Lead:
    return Lead(email=email, stage=stage, attributes=MappingProxyType(attributes))


def rules(text: str) -> StageRules:
    return parse_stage_rules(parse_yaml(textwrap.dedent(text), file="scoring.yaml")["stages"], file="scoring.yaml")


MQL_B = rules("""\
    stages:
      MQL: "score >= 50 and grade >= B"
      PQL: "product_score >= 30"
    """)


def move(
    who: Lead,
    stage_rules: StageRules = MQL_B,
    *,
    score: int = 0,
    product_score: int = 0,
    grade: str = "",
    engaged: datetime | None = None,
    since: datetime | None = None,
    now: datetime = NOW,
) -> StageChange | None:
    return next_stage(
        who, stage_rules,
        score=ScoreResult(score=score, product_score=product_score, last_engaged_at=engaged),
        grade=GradeResult(grade=grade, points=0),
        stage_since=since,
        now=now,
    )


# Automatic moves


def test_default_rules_make_an_mql_at_50_points() -> None:
    """Without a stages: mapping a lead becomes MQL at score 50, with the score as the reason."""
    assert move(lead(), DEFAULT_STAGE_RULES, score=50) == StageChange("lead", "MQL", "score 50 ≥ 50", "rules")
    assert move(lead(), DEFAULT_STAGE_RULES, score=49) is None


def test_mql_reason_reads_well_for_sales() -> None:
    """The reason of an MQL names the lead's own score and grade against the rule's lines."""
    change = move(lead(), score=55, grade="B")
    assert change == StageChange("lead", "MQL", "score 55 ≥ 50 and grade B ≥ B", "rules")
    assert move(lead(), score=80, grade="A") == StageChange("lead", "MQL", "score 80 ≥ 50 and grade A ≥ B", "rules")


@pytest.mark.parametrize(("score", "grade"), [(55, "C"), (55, "F"), (55, ""), (49, "A")])
def test_no_mql_below_the_line_or_grade(score: int, grade: str) -> None:
    """A lead short of the score or the grade (or not graded at all) stays a lead."""
    assert move(lead(), score=score, grade=grade) is None


def test_the_new_score_counts_not_the_stored_one() -> None:
    """next_stage judges the score it is given, not the one the lead row still holds."""
    stored = Lead(email="ada@acme.example", score=90, grade="A")
    assert move(stored, score=10, grade="A") is None


def test_pql_from_product_use() -> None:
    """A lead whose product score reaches the PQL line becomes PQL, with that as the reason."""
    assert move(lead(), score=35, product_score=35) == StageChange("lead", "PQL", "product_score 35 ≥ 30", "rules")


def test_mql_is_checked_before_pql() -> None:
    """A lead that meets both rules becomes MQL."""
    change = move(lead(), score=60, product_score=40, grade="A")
    assert change is not None and change.to_stage == "MQL"


def test_a_recycled_lead_needs_new_engagement_to_requalify() -> None:
    """A recycled lead still above the line comes back only after engaging later than its recycling."""
    recycled_at = NOW - 10 * DAY
    old = move(lead("recycled"), score=60, grade="A", engaged=recycled_at - DAY, since=recycled_at)
    assert old is None
    again = move(lead("recycled"), score=60, grade="A", engaged=recycled_at + DAY, since=recycled_at)
    assert again == StageChange("recycled", "MQL", "score 60 ≥ 50 and grade A ≥ B, engaged again", "rules")
    assert move(lead("recycled"), score=60, grade="A", engaged=None, since=recycled_at) is None


@pytest.mark.parametrize("stage", ["MQL", "PQL", "lead", "SAL"])
def test_recycled_exactly_when_quiet_for_recycle_after(stage: str) -> None:
    """MQL, PQL, lead and SAL go back to nurture once the last engagement is 90 days old, not a second before."""
    quiet = lead(stage)
    assert move(quiet, engaged=NOW - 90 * DAY + timedelta(seconds=1)) is None
    change = move(quiet, engaged=NOW - 90 * DAY)
    assert change == StageChange(stage, "recycled", "no engagement for 90 days (recycle after 90d)", "rules")


def test_recycling_counts_from_the_stage_start_when_that_is_later() -> None:
    """A lead sales accepted 10 days ago is not recycled for engagement that ended 100 days ago."""
    assert move(lead("SAL"), engaged=NOW - 100 * DAY, since=NOW - 10 * DAY) is None
    change = move(lead("SAL"), engaged=NOW - 200 * DAY, since=NOW - 91 * DAY)
    assert change is not None and change.reason == "no engagement for 91 days (recycle after 90d)"


def test_a_lead_never_engaged_recycles_from_its_stage_start_only() -> None:
    """Without any engagement the stage start is the clock; without either, nothing is recycled."""
    assert move(lead("MQL"), since=NOW - 95 * DAY) is not None
    assert move(lead("MQL")) is None


@pytest.mark.parametrize("stage", ["SQL", "SGL", "customer", "recycled"])
def test_sales_owned_and_recycled_stages_are_never_recycled(stage: str) -> None:
    """SQL, SGL and customer belong to sales, and a recycled lead is already back in nurture."""
    assert move(lead(stage), engaged=NOW - 400 * DAY, since=NOW - 400 * DAY) is None


def test_short_recycle_after_and_never() -> None:
    """recycle_after is configurable (reasons spell short spans as durations) and false turns it off."""
    quick = rules("stages:\n  recycle_after: 2h\n")
    change = move(lead("MQL"), quick, engaged=NOW - timedelta(hours=2, minutes=30))
    assert change is not None and change.reason == "no engagement for 2h30m (recycle after 2h)"
    assert move(lead("MQL"), quick, engaged=NOW - DAY - timedelta(hours=1)) == StageChange(
        "MQL", "recycled", "no engagement for 1 day (recycle after 2h)", "rules")
    never = rules("stages:\n  recycle_after: false\n")
    assert move(lead("MQL"), never, engaged=NOW - 1000 * DAY) is None


def test_sal_becomes_sql_when_bant_completes() -> None:
    """A SAL with Need and one more BANT field moves to SQL on its own, naming them."""
    assert move(lead("SAL", need="reporting", budget="10k")) == StageChange("SAL", "SQL", "BANT: budget, need", "rules")
    assert move(lead("SAL", need="reporting")) is None


def test_sal_with_bant_moves_on_rather_than_recycling() -> None:
    """A quiet SAL whose BANT is complete becomes SQL, not recycled."""
    change = move(lead("SAL", need="x", timeframe="Q3"), engaged=NOW - 200 * DAY)
    assert change is not None and change.to_stage == "SQL"


def test_an_unknown_stored_stage_counts_as_lead() -> None:
    """A stage this version does not know (an old import) is treated as lead, keeping the stored name in the history."""
    assert move(lead("prospect"), score=60, grade="B") == StageChange(
        "prospect", "MQL", "score 60 ≥ 50 and grade B ≥ B", "rules")


AUTOMATIC = {
    ("lead", "MQL"), ("lead", "PQL"), ("recycled", "MQL"), ("recycled", "PQL"), ("lead", "recycled"),
    ("MQL", "recycled"), ("PQL", "recycled"), ("SAL", "recycled"), ("SAL", "SQL"),
}


@given(
    stage=st.sampled_from(STAGES),
    score=st.integers(-50, 200),
    product_score=st.integers(0, 100),
    grade=st.sampled_from(["A", "B", "C", "D", "F", ""]),
    engaged_days=st.none() | st.integers(-5, 400),
    since_days=st.none() | st.integers(0, 400),
    bant_fields=st.sets(st.sampled_from(["budget", "authority", "need", "timeframe"])),
)
def test_rules_only_ever_make_the_automatic_moves(
    stage: str, score: int, product_score: int, grade: str, engaged_days: int | None, since_days: int | None,
    bant_fields: set[str],
) -> None:
    """Whatever the scores, grade and times, next_stage makes only the moves of the automatic table."""
    who = lead(stage, **{name: "yes" for name in bant_fields})
    change = move(
        who, score=score, product_score=product_score, grade=grade,
        engaged=None if engaged_days is None else NOW - engaged_days * DAY,
        since=None if since_days is None else NOW - since_days * DAY,
    )
    if change is not None:
        assert (change.from_stage, change.to_stage) in AUTOMATIC and change.by == "rules" and change.reason


# Moves by hand

# The lifecycle as the issue describes it, written out independently of MANUAL_MOVES.
ALLOWED = {
    ("MQL", "SAL"), ("PQL", "SAL"), ("SGL", "SAL"),
    ("SAL", "SQL"), ("SGL", "SQL"),
    ("SQL", "customer"),
    ("lead", "SGL"), ("recycled", "SGL"),
    *((stage, "recycled") for stage in STAGES if stage not in ("customer", "recycled")),
}
READY = dict(need="integrations", budget="approved", authority="CTO", timeframe="Q2")


@pytest.mark.parametrize(("current", "target"), [(a, b) for a in STAGES for b in STAGES])
def test_every_manual_move_is_allowed_or_refused_by_the_table(current: str, target: str) -> None:
    """Each of the 64 (from, to) pairs is allowed exactly when the lifecycle allows it."""
    who = lead(current, **READY)
    if (current, target) in ALLOWED:
        change = request_stage(who, target, DEFAULT_STAGE_RULES, by="sales")
        assert (change.from_stage, change.to_stage, change.by) == (current, target, "sales")
        return
    with pytest.raises(StageError) as caught:
        request_stage(who, target, DEFAULT_STAGE_RULES, by="sales")
    allowed = sorted(to for (start, to) in ALLOWED if start == current)
    assert caught.value.hint is not None
    for stage in allowed:
        assert stage in caught.value.hint


def test_a_refusal_says_which_moves_are_allowed() -> None:
    """Moving an MQL straight to customer is refused, naming the moves an MQL may make."""
    with pytest.raises(StageError) as caught:
        request_stage(lead("MQL"), "customer", DEFAULT_STAGE_RULES, by="sales")
    assert str(caught.value) == "stage: ada@acme.example cannot move from MQL to customer — from MQL a lead may move to SAL, recycled"
    assert isinstance(caught.value, UserError)


def test_a_customer_cannot_be_moved_by_hand() -> None:
    """The hint for a customer says no manual move exists."""
    with pytest.raises(StageError, match="a customer cannot be moved by hand"):
        request_stage(lead("customer"), "recycled", DEFAULT_STAGE_RULES, by="sales")


def test_moving_to_the_current_stage_is_refused() -> None:
    """Accepting a lead that is already SAL is an error, not a second history entry."""
    with pytest.raises(StageError, match="is already SAL"):
        request_stage(lead("SAL"), "sal", DEFAULT_STAGE_RULES, by="api")


def test_unknown_target_stage_suggests_the_closest() -> None:
    """A misspelt stage is refused with the closest stage."""
    with pytest.raises(StageError) as caught:
        request_stage(lead("MQL"), "SAAL", DEFAULT_STAGE_RULES, by="sales")
    assert caught.value.problem == "unknown stage 'SAAL'"
    with pytest.raises(StageError) as caught:
        request_stage(lead("MQL"), "costumer", DEFAULT_STAGE_RULES, by="sales")
    assert caught.value.hint == "did you mean 'customer'?"


def test_target_stage_is_read_without_case() -> None:
    """"sal" names SAL, and the change records the canonical name."""
    assert request_stage(lead("MQL"), "sal", DEFAULT_STAGE_RULES, by="api").to_stage == "SAL"


def test_reasons_default_per_move_and_keep_what_sales_wrote() -> None:
    """A move without a reason gets a plain default; a written reason is kept as it is."""
    assert request_stage(lead("MQL"), "SAL", DEFAULT_STAGE_RULES, by="sales").reason == "accepted by sales"
    assert request_stage(lead("SQL"), "recycled", DEFAULT_STAGE_RULES, by="sales", reason="lost to a competitor").reason == "lost to a competitor"
    sql = request_stage(lead("SAL", need="x", budget="y"), "SQL", DEFAULT_STAGE_RULES, by="sales", reason="call on 3/1")
    assert sql.reason == "call on 3/1; BANT: budget, need"


@pytest.mark.parametrize(
    ("fields", "hint"),
    [
        ({}, "BANT is missing need and 1 more of budget, authority, timeframe (has none)"),
        ({"need": "x"}, "BANT is missing 1 more of budget, authority, timeframe (has need)"),
        ({"budget": "x", "authority": "y"}, "BANT is missing need (has budget, authority)"),
        ({"budget": "x", "need": "  "}, "BANT is missing need (has budget)"),
    ],
)
def test_sql_without_bant_names_what_is_missing(fields: dict[str, str], hint: str) -> None:
    """SQL by hand is refused until BANT holds, and the error names the missing fields."""
    with pytest.raises(StageError) as caught:
        request_stage(lead("SAL", **fields), "SQL", DEFAULT_STAGE_RULES, by="sales")
    assert caught.value.problem == "ada@acme.example cannot become SQL: BANT is not complete"
    assert caught.value.hint == hint + "; set them as the lead's attributes first"


def test_bant_rules_are_configurable() -> None:
    """With need optional and three fields required, any three qualify and two do not."""
    three = rules("stages:\n  SQL: {need: optional, at_least: 3}\n")
    assert bant(lead(budget="a", authority="b", timeframe="c"), three) == (True, "BANT: budget, authority, timeframe")
    assert bant(lead(budget="a", need="b"), three) == (False, "BANT is missing 1 more of authority, timeframe (has budget, need)")
    assert bant(lead(), rules("stages:\n  SQL: {need: optional, at_least: 0}\n")) == (True, "BANT: nothing required")


# Accounts


@pytest.mark.parametrize(
    ("email", "attributes", "account"),
    [
        ("ada@acme.example", {}, "acme.example"),
        ("ada@Sales.ACME.co.jp", {}, "acme.co.jp"),
        ("ada@gmail.com", {}, None),
        ("ada@yahoo.co.jp", {}, None),
        ("ada@mail.yahoo.co.jp", {}, None),
        ("ada@outlook.com", {}, None),
        ("ada@icloud.com", {}, None),
        ("ada@gmail.com", {"account": " Acme KK "}, "Acme KK"),
        ("ada@acme.example", {"account": "  "}, "acme.example"),
    ],
)
def test_account_of(email: str, attributes: dict[str, str], account: str | None) -> None:
    """The account attribute wins; else the organizational domain, except for free-mail providers."""
    assert account_of(Lead(email=email, attributes=MappingProxyType(attributes))) == account


MQA = rules("stages:\n  MQA: {account_score: 150}\n")


def test_an_account_crossing_the_line_becomes_mqa_and_drops_back() -> None:
    """An account reaching 150 becomes MQA; falling below it loses MQA; staying either side changes nothing."""
    up = account_change("acme.example", 150, "", MQA, NOW)
    assert up is not None and (up.stage, up.previous_stage, up.reason, up.score) == ("MQA", "", "account score 150 ≥ 150", 150)
    assert account_change("acme.example", 400, "MQA", MQA, NOW) is None
    assert account_change("acme.example", 149, "", MQA, NOW) is None
    down = account_change("acme.example", 149, "MQA", MQA, NOW)
    assert down is not None and (down.stage, down.previous_stage, down.reason) == ("", "MQA", "account score 149 < 150")


def test_without_an_mqa_rule_no_account_is_mqa() -> None:
    """With no MQA line nothing becomes MQA, and a stored MQA is dropped."""
    assert account_change("acme.example", 10_000, "", DEFAULT_STAGE_RULES, NOW) is None
    dropped = account_change("acme.example", 10_000, "MQA", DEFAULT_STAGE_RULES, NOW)
    assert dropped is not None and dropped.stage == ""


# Triggers


def scenario(tmp_path: Path, name: str, entry: str) -> Scenario:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nsender: default\nentry: {entry}\nsteps:\n  - {{id: a, subject: Hi, template: a.html}}\n")
    return load_scenario(path)


def test_triggered_by_picks_the_scenarios_a_change_enters(tmp_path: Path) -> None:
    """A stage change enters the scenarios triggered by that stage; a form enters form scenarios whose name matches."""
    scenarios = [
        scenario(tmp_path, "mql-follow-up", "{trigger: became_MQL}"),
        scenario(tmp_path, "japan-mql", "{trigger: Became_mql, where: {attribute: country, equals: JP}}"),
        scenario(tmp_path, "win-back", "{trigger: recycled}"),
        scenario(tmp_path, "any-form", "{trigger: form_submitted}"),
        scenario(tmp_path, "demo", "{trigger: form_submitted, form: 'demo-*'}"),
        scenario(tmp_path, "sql-only", "{trigger: became_SQL, where: 'stage = SQL'}"),
        scenario(tmp_path, "nurture", "{list: trial}"),
    ]
    to_mql = StageChange("lead", "MQL", "score 50 ≥ 50")
    assert triggered_by(scenarios, stage_change=to_mql, lead=lead()) == ["mql-follow-up"]
    assert triggered_by(scenarios, stage_change=to_mql, lead=lead(country="jp")) == ["mql-follow-up", "japan-mql"]
    assert triggered_by(scenarios, stage_change=StageChange("MQL", "recycled", "quiet"), lead=lead("MQL")) == ["win-back"]
    assert triggered_by(scenarios, form="Demo-Request", lead=lead()) == ["any-form", "demo"]
    assert triggered_by(scenarios, form="newsletter", lead=lead()) == ["any-form"]
    assert triggered_by(scenarios, form="", lead=lead()) == ["any-form"]
    # `where` sees the lead in its new stage even when handed the old row
    assert triggered_by(scenarios, stage_change=StageChange("SAL", "SQL", "BANT"), lead=lead("SAL")) == ["sql-only"]
    assert triggered_by(scenarios, lead=lead()) == []


# Reading stages:


def test_the_documented_stages_mapping() -> None:
    """Every key of the stages: mapping ends up in StageRules."""
    read = rules("""\
        stages:
          MQL: "score >= 50 and grade >= B"
          PQL: {attribute: product_score, gte: 30}
          SQL: {need: required, at_least: 3}
          recycle_after: 60d
          MQA: {account_score: 150}
        """)
    assert read.pql == AttributeTest("product_score", "gte", 30)
    assert (read.sql_need_required, read.sql_at_least, read.recycle_after, read.mqa_score) == (True, 3, 60 * DAY, 150)
    assert read.mql is not None and read.mql.evaluate(Lead(email="a@b.example", score=50, grade="A"), Engagement())


def test_missing_keys_keep_the_defaults_and_false_turns_a_rule_off() -> None:
    """Keys left out keep the default rules; MQL: false means nobody becomes MQL by rule."""
    assert parse_stage_rules(None, file="scoring.yaml") == DEFAULT_STAGE_RULES
    assert rules("stages: {}\n") == DEFAULT_STAGE_RULES
    off = rules("stages:\n  MQL: false\n  MQA: false\n")
    assert off.mql is None and off.mqa_score is None and off.recycle_after == 90 * DAY
    assert move(lead(), off, score=1000) is None


@pytest.mark.parametrize(
    ("text", "line", "field", "problem", "hint"),
    [
        ("stages:\n  mql: 'score >= 50'\n", 2, "stages.mql", "unknown key 'mql'", "did you mean 'MQL'?"),
        ("stages:\n  MQL: 'score >= fifty'\n", 2, "stages.MQL", "'score >= fifty': >= needs a number, not 'fifty'", "e.g. score >= 100"),
        ("stages:\n  MQL: 'grade >= E'\n", 2, "stages.MQL", "'grade >= E': >= on grade needs a grade, not 'E'", "grades are A, B, C, D, F"),
        ("stages:\n  MQL:\n", 2, "stages.MQL", "has no value", None),
        ("stages:\n  MQL: {clicked: any}\n", 2, "stages.MQL", "the MQL rule cannot test what a lead opened, clicked or was sent", None),
        ("stages:\n  SQL: 2\n", 2, "stages.SQL", "must be a mapping, not a number", None),
        ("stages:\n  SQL: {need: maybe}\n", 2, "stages.SQL.need", "must be required or optional, not 'maybe'", None),
        ("stages:\n  SQL:\n    at_least: 5\n", 3, "stages.SQL.at_least", "must be a whole number from 0 to 4, not 5", None),
        ("stages:\n  SQL: {atleast: 2}\n", 2, "stages.SQL.atleast", "unknown key 'atleast'", "did you mean 'at_least'?"),
        ("stages:\n  recycle_after: 90 days\n", 2, "stages.recycle_after", "'90 days' is not a duration", None),
        ("stages:\n  recycle_after: 30m\n", 2, "stages.recycle_after", "must be at least 1h", "e.g. recycle_after: 90d"),
        ("stages:\n  recycle_after: 90\n", 2, "stages.recycle_after", "must be a duration, not a number", None),
        ("stages:\n  MQA: 150\n", 2, "stages.MQA", "must be a mapping, not a number", "e.g. MQA: {account_score: 150}, or false for no MQA"),
        ("stages:\n  MQA: {}\n", 2, "stages.MQA", "missing required key 'account_score'", None),
        ("stages:\n  MQA:\n    account_score: -1\n", 3, "stages.MQA.account_score", "must be a positive whole number, not -1", None),
        ("stages: [MQL]\n", 1, "stages", "must be a mapping, not a list", None),
    ],
)
def test_stage_rule_mistakes_name_line_field_and_hint(
    text: str, line: int | None, field: str, problem: str, hint: str | None
) -> None:
    """Each mistake in stages: is reported at its line and field, with a hint."""
    with pytest.raises(ScenarioError) as caught:
        parse_stage_rules(parse_yaml(text, file="scoring.yaml")["stages"], file="scoring.yaml")
    error = caught.value
    assert (error.file, error.line, error.field, error.problem) == ("scoring.yaml", line, field, problem)
    assert error.hint
    if hint is not None:
        assert error.hint == hint


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300)
    | st.sampled_from(["score >= 50", "grade >= B", "90d", "required", "optional", "stage >= SQL", "x", ""]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["need", "at_least", "account_score", "attribute", "gte", "all", "bogus"]),
                      children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["MQL", "PQL", "SQL", "recycle_after", "MQA", "bogus"]), yaml_values, max_size=5))
def test_any_stages_mapping_reads_or_raises_scenario_error(node: dict[str, object]) -> None:
    """Whatever a stages: mapping holds, reading it gives StageRules or a ScenarioError for its field."""
    try:
        read = parse_stage_rules(node, file="scoring.yaml")
    except ScenarioError as error:
        assert error.field is not None and error.field.startswith("stages")
    else:
        move(lead(), read, score=60, grade="A")


def test_a_move_to_sgl_says_why_without_saying_who() -> None:
    """SGL's default reason names no actor (the history adds "by …"), and from recycled it says the lead is taken up again."""
    assert request_stage(lead("lead"), "SGL", DEFAULT_STAGE_RULES, by="sales").reason == "sales-generated lead"
    assert request_stage(lead("recycled"), "SGL", DEFAULT_STAGE_RULES, by="sales").reason == "taken up again from nurture"
    assert request_stage(lead("recycled"), "SGL", DEFAULT_STAGE_RULES, by="sales", reason="asked for a demo").reason == "asked for a demo"
