"""Tests for mailer.scoringrules: reading and checking scenarios/scoring.yaml."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from mailer.conditions import AttributeTest
from mailer.errors import ScoringError, UserError
from mailer.scoringrules import DEFAULT_BANDS, GradeRule, ScoreRule, ScoringConfig, load_scoring
from mailer.stages import DEFAULT_STAGE_RULES

SHIPPED = Path(__file__).parent.parent / "scenarios" / "scoring.yaml"


def write(directory: Path, text: str) -> Path:
    path = directory / "scoring.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(directory: Path, text: str) -> ScoringError:
    path = write(directory, text)
    with pytest.raises(ScoringError) as caught:
        load_scoring(path)
    assert caught.value.file == str(path)
    return caught.value


def test_rules_parse_into_dataclasses_with_derived_names(tmp_path: Path) -> None:
    """Every key of a rule lands in ScoreRule; unnamed rules are named by event and tag or form name."""
    path = write(tmp_path, """\
        scoring:
          - event: opened
            points: 1
            daily_cap: 3
            decay: {half_life: 30d}
          - name: pricing page clicks
            event: clicked
            tag: pricing
            points: 15
          - event: clicked
            tag: webinar
            points: 10.5
            decay: {half_life: 7d, expires_after: 90d}
          - event: form_submitted
            name: demo-request
            points: 30
          - event: page_visit
            name: "/pricing*"
            points: 5
          - event: unsubscribed
            name: left us
            points: -30
        """)
    config = load_scoring(path)
    assert config.rules == (
        ScoreRule("opened", "opened", 1.0, None, 3.0, timedelta(days=30), None, line=2),
        ScoreRule("pricing page clicks", "clicked", 15.0, "pricing", line=6),
        ScoreRule("clicked webinar", "clicked", 10.5, "webinar", None, timedelta(days=7), timedelta(days=90), line=10),
        ScoreRule("form_submitted demo-request", "form_submitted", 30.0, "demo-request", line=14),
        ScoreRule("page_visit /pricing*", "page_visit", 5.0, "/pricing*", line=17),
        ScoreRule("left us", "unsubscribed", -30.0, line=20),
    )
    assert (config.grading, config.bands, config.stages, config.file) == ((), DEFAULT_BANDS, DEFAULT_STAGE_RULES, str(path))


def test_grading_rules_and_bands_parse(tmp_path: Path) -> None:
    """Grading rules compile their conditions (mapping or short form) and grades become best-first bands."""
    path = write(tmp_path, """\
        grading:
          - name: decision maker
            when: {attribute: job_title, contains: director}
            points: 30
          - name: mid-size or larger
            when: "company_size >= 50"
            points: 20
        grades: {A: 90, B: 70, C: 50, D: 10}
        """)
    config = load_scoring(path)
    assert config.grading == (
        GradeRule("decision maker", AttributeTest("job_title", "contains", "director"), 30.0, line=2),
        GradeRule("mid-size or larger", AttributeTest("company_size", "gte", 50), 20.0, line=5),
    )
    assert config.bands == (("A", 90.0), ("B", 70.0), ("C", 50.0), ("D", 10.0))
    assert config.rules == ()


def test_missing_file_means_no_rules_and_default_stages(tmp_path: Path) -> None:
    """Without scoring.yaml there is no scoring, no grading and the default stage rules."""
    assert load_scoring(tmp_path / "scoring.yaml") == ScoringConfig()
    assert ScoringConfig().stages == DEFAULT_STAGE_RULES


def test_a_file_of_comments_only_means_no_rules(tmp_path: Path) -> None:
    """A file whose rules are all commented out switches scoring off rather than failing."""
    path = write(tmp_path, "# scoring:\n#   - event: opened\n")
    assert load_scoring(path) == ScoringConfig(file=str(path))
    assert load_scoring(write(tmp_path, "scoring:\ngrading:\n")) == ScoringConfig(file=str(tmp_path / "scoring.yaml"))


def test_the_shipped_file_loads_with_rules_grading_and_stages() -> None:
    """scenarios/scoring.yaml is valid and sets rules, grading and its own stage rules."""
    config = load_scoring(SHIPPED)
    assert len(config.rules) >= 10 and len(config.grading) >= 4
    assert config.stages != DEFAULT_STAGE_RULES
    assert {rule.event for rule in config.rules} >= {"opened", "clicked", "form_submitted", "unsubscribed", "bounced"}


def test_errors_render_as_one_line_with_file_line_and_field(tmp_path: Path) -> None:
    """A ScoringError is a UserError that prints as `file:line: field: problem — hint`."""
    error = refused(tmp_path, "scoring:\n  - event: opened\n    points: lots\n")
    assert isinstance(error, UserError)
    assert str(error) == f"{tmp_path / 'scoring.yaml'}:3: scoring[0].points: must be a number, not text — " \
        "e.g. points: 5 (negative for bad signs: points: -30)"


@pytest.mark.parametrize(("text", "line", "field", "problem", "hint"), [
    ("scorng: []\n", 1, "scorng", "unknown key 'scorng'", "did you mean 'scoring'?"),
    ("scoring:\n  - event: opened\n    point: 5\n", 3, "scoring[0].point", "unknown key 'point'", "did you mean 'points'?"),
    ("scoring:\n  - event: clicked\n    points: 5\n    decay: {halflife: 30d}\n", 4, "scoring[0].decay.halflife",
     "unknown key 'halflife'", "did you mean 'half_life'?"),
    ("grading:\n  - name: x\n    when: {attribute: a, equals: b}\n    point: 5\n", 4, "grading[0].point",
     "unknown key 'point'", "did you mean 'points'?"),
])
def test_unknown_keys_are_refused_with_a_suggestion(
    tmp_path: Path, text: str, line: int, field: str, problem: str, hint: str
) -> None:
    """A mistyped key anywhere is named with its line and the key it probably meant."""
    error = refused(tmp_path, text)
    assert (error.line, error.field, error.problem, error.hint) == (line, field, problem, hint)


@pytest.mark.parametrize(("event", "hint"), [
    ("click", "did you mean 'clicked'?"),
    ("opend", "did you mean 'opened'?"),
    ("subscribed", "did you mean 'form_submitted'?"),
    ("bounce", "did you mean 'bounced'?"),
    ("Page_Visit", "did you mean 'page_visit'?"),
])
def test_unknown_event_types_suggest_the_right_one(tmp_path: Path, event: str, hint: str) -> None:
    """An event type the rules do not know is refused, suggesting the likely one (events-table words too)."""
    error = refused(tmp_path, f"scoring:\n  - event: {event}\n    points: 5\n")
    assert (error.line, error.field, error.problem, error.hint) == (2, "scoring[0].event", f"unknown event type {event!r}", hint)


def test_an_unguessable_event_type_lists_the_known_ones(tmp_path: Path) -> None:
    """With nothing close, the hint lists every event type."""
    error = refused(tmp_path, "scoring:\n  - event: xyzzy\n    points: 5\n")
    assert error.hint is not None and "form_submitted" in error.hint and "complained" in error.hint


def test_a_tag_is_only_for_click_rules(tmp_path: Path) -> None:
    """`tag:` on anything but a clicked rule is refused at its line."""
    error = refused(tmp_path, "scoring:\n  - event: opened\n    tag: pricing\n    points: 5\n")
    assert (error.line, error.field, error.problem) == (3, "scoring[0].tag", "tag is only for clicked rules, not opened")


@pytest.mark.parametrize(("points", "problem"), [
    ("lots", "must be a number, not text"),
    ("true", "must be a number, not true/false"),
    ("", "must be a number, not nothing"),
    ("[5]", "must be a number, not a list"),
    (".nan", "must be between -10000 and 10000, not nan"),
    ("100000", "must be between -10000 and 10000, not 100000"),
])
def test_bad_points_are_refused(tmp_path: Path, points: str, problem: str) -> None:
    """Points must be a finite number of sensible size."""
    error = refused(tmp_path, f"scoring:\n  - event: opened\n    points: {points}\n")
    assert (error.line, error.field, error.problem) == (3, "scoring[0].points", problem)


def test_missing_points_and_event_are_refused(tmp_path: Path) -> None:
    """A rule without points or without an event says which key is missing, at the rule's line."""
    error = refused(tmp_path, "scoring:\n  - event: opened\n  - event: clicked\n    points: 1\n")
    assert (error.line, error.field, error.problem) == (2, "scoring[0]", "missing required key 'points'")
    error = refused(tmp_path, "scoring:\n  - points: 3\n")
    assert (error.line, error.field, error.problem) == (2, "scoring[0]", "missing required key 'event'")


@pytest.mark.parametrize(("cap", "problem"), [("0", "must be more than 0, not 0"), ("-3", "must be more than 0, not -3"),
                                              ("three", "must be a number, not text")])
def test_bad_daily_caps_are_refused(tmp_path: Path, cap: str, problem: str) -> None:
    """A daily cap must be a positive number."""
    error = refused(tmp_path, f"scoring:\n  - event: opened\n    points: 1\n    daily_cap: {cap}\n")
    assert (error.line, error.field, error.problem) == (4, "scoring[0].daily_cap", problem)


@pytest.mark.parametrize(("decay", "line", "field", "problem"), [
    ("30d", 4, "scoring[0].decay", "must be a mapping, not text"),
    ("{}", 4, "scoring[0].decay", "must be a mapping, not a mapping"),
    ("{half_life: 30 days}", 4, "scoring[0].decay.half_life", "'30 days' is not a duration"),
    ("{half_life: 30}", 4, "scoring[0].decay.half_life", "must be a duration such as 30d, not a number"),
    ("{expires_after: 0}", 4, "scoring[0].decay.expires_after", "must be a duration such as 30d, not a number"),
    ("{expires_after: '0'}", 4, "scoring[0].decay.expires_after", "must be longer than 0"),
    ("{half_life: 1M}", 4, "scoring[0].decay.half_life", "'1M' is not a duration"),
])
def test_bad_decay_and_durations_are_refused(tmp_path: Path, decay: str, line: int, field: str, problem: str) -> None:
    """Decay is a mapping of half_life and/or expires_after, each a positive duration."""
    error = refused(tmp_path, f"scoring:\n  - event: opened\n    points: 1\n    decay: {decay}\n")
    assert (error.line, error.field, error.problem) == (line, field, problem)


def test_an_empty_decay_mapping_explains_what_goes_in_it(tmp_path: Path) -> None:
    """`decay: {}` is refused with the two forms it may take."""
    error = refused(tmp_path, "scoring:\n  - event: opened\n    points: 1\n    decay: {}\n")
    assert error.hint == "write decay: {half_life: 30d} or decay: {expires_after: 90d}"


@pytest.mark.parametrize(("grades", "line", "field", "problem"), [
    ("{A: 80, B: 60, D: 20}", 1, "grades", "missing the least points for grade C"),
    ("{A: 80, B: 60, C: 40, D: 20, F: 0}", 1, "grades.F", "F takes no points"),
    ("{A: 80, B: 60, C: 40, D: 20, E: 10}", 1, "grades.E", "unknown key 'E'"),
    ("{A: 80, B: 80, C: 40, D: 20}", 1, "grades.B", "B needs fewer points than A (80 is not below 80)"),
    ("{A: 80, B: 60, C: 70, D: 20}", 1, "grades.C", "C needs fewer points than B (70 is not below 60)"),
    ("{A: high, B: 60, C: 40, D: 20}", 1, "grades.A", "must be a number, not text"),
    ("[80, 60, 40, 20]", 1, "grades", "must be a mapping, not a list"),
])
def test_bad_grade_bands_are_refused(tmp_path: Path, grades: str, line: int, field: str, problem: str) -> None:
    """Grades need A, B, C and D with strictly falling least points; F is the rest."""
    error = refused(tmp_path, f"grades: {grades}\n")
    assert (error.line, error.field, error.problem) == (line, field, problem)


def test_grade_bands_on_several_lines_point_at_the_bad_one(tmp_path: Path) -> None:
    """A wrong band written on its own line is reported at that line."""
    error = refused(tmp_path, "grades:\n  A: 80\n  B: 60\n  C: 70\n  D: 20\n")
    assert (error.line, error.field) == (4, "grades.C")


@pytest.mark.parametrize(("when", "problem"), [
    ("{opened: welcome}", "a grading rule cannot test what a lead opened, clicked or was sent"),
    ('"score >= 50"', "a grading rule cannot test score"),
    ("{not: {attribute: grade, equals: A}}", "a grading rule cannot test grade"),
    ("{any: [{attribute: stage, equals: MQL}]}", "a grading rule cannot test stage"),
])
def test_grading_rules_test_the_profile_only(tmp_path: Path, when: str, problem: str) -> None:
    """A grading condition on engagement, score, grade or stage is refused (those belong in stages:)."""
    error = refused(tmp_path, f"grading:\n  - name: x\n    when: {when}\n    points: 5\n")
    assert (error.line, error.field, error.problem) == (3, "grading[0].when", problem)


def test_a_bad_grading_condition_is_reported_as_a_scoring_error_at_its_line(tmp_path: Path) -> None:
    """Condition language mistakes inside grading keep their line and field but are ScoringErrors."""
    error = refused(tmp_path, "grading:\n  - name: x\n    when:\n      attribute: job_title\n      contain: director\n    points: 5\n")
    assert (error.line, error.field, error.problem, error.hint) == (
        5, "grading[0].when.contain", "unknown operator 'contain'", "did you mean 'contains'?"
    )


def test_grading_rules_need_a_name_a_condition_and_points(tmp_path: Path) -> None:
    """Each grading rule must say its name, its condition and its points."""
    error = refused(tmp_path, "grading:\n  - when: {attribute: a, equals: b}\n    points: 5\n")
    assert (error.line, error.field, error.problem) == (2, "grading[0]", "missing required key 'name'")
    error = refused(tmp_path, "grading:\n  - name: x\n    points: 5\n")
    assert error.problem == "missing required key 'when'"


def test_rule_names_must_be_unique(tmp_path: Path) -> None:
    """Two rules with one name (given or derived) are refused: the history could not tell them apart."""
    error = refused(tmp_path, "scoring:\n  - event: opened\n    points: 1\n  - event: opened\n    points: 2\n")
    assert (error.line, error.field, error.problem) == (4, "scoring[1].event", "rule name 'opened' is already used")
    assert error.hint == "the rule on line 2 has it; give one of them its own `name:`"
    error = refused(tmp_path, "grading:\n  - {name: a, when: {attribute: x, exists: true}, points: 1}\n"
                              "  - {name: a, when: {attribute: y, exists: true}, points: 1}\n")
    assert (error.line, error.field) == (3, "grading[1].name")


@pytest.mark.parametrize(("text", "line", "field", "problem"), [
    ("scoring: {event: opened, points: 1}\n", 1, "scoring", "must be a list of rules, not a mapping"),
    ("scoring:\n  - opened\n", 2, "scoring[0]", "must be a rule, not text"),
    ("scoring:\n  - event: [opened]\n    points: 1\n", 2, "scoring[0].event", "must be an event type, not a list"),
    ("grading: yes\n", 1, "grading", "must be a list of rules, not true/false"),
])
def test_sections_of_the_wrong_shape_are_refused(tmp_path: Path, text: str, line: int, field: str, problem: str) -> None:
    """Each section must have its own shape: lists of rule mappings, a mapping of grades."""
    error = refused(tmp_path, text)
    assert (error.line, error.field, error.problem) == (line, field, problem)


@pytest.mark.parametrize(("text", "problem"), [
    ("scoring: !!python/object/apply:os.system [echo hi]\n", "the tag !!python/object/apply:os.system is not supported"),
    ("a: &x [1]\nscoring: *x\n", "anchors and aliases are not supported in scenario files"),
    ("scoring: [\n", "invalid YAML"),
])
def test_unsafe_or_broken_yaml_is_refused_as_a_scoring_error(tmp_path: Path, text: str, problem: str) -> None:
    """The file is read by the safe YAML reader: python tags, aliases and broken syntax are ScoringErrors."""
    error = refused(tmp_path, text)
    assert error.problem.startswith(problem)
    assert error.line is not None


def test_a_file_that_is_not_a_mapping_says_how_to_start(tmp_path: Path) -> None:
    """A file holding a list is refused with advice that fits scoring.yaml, not scenario files."""
    error = refused(tmp_path, "- event: opened\n  points: 1\n")
    assert error.hint == "start with `scoring:`"


def test_stage_rule_errors_become_scoring_errors_under_stages(tmp_path: Path) -> None:
    """A broken `stages:` section is reported by mailer.stages' parser as a ScoringError in this file."""
    error = refused(tmp_path, "stages: 5\n")
    assert error.field is not None and error.field.startswith("stages")
    assert error.line == 1
