"""Tests for mailer.conditions: the condition language of steps, goals and entry rules."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.conditions import (
    OPERATORS, AllOf, AnyOf, AttributeTest, Condition, Engagement, EngagementTest, Not, parse_condition,
    refuse_engagement,
)
from mailer.errors import ScenarioError
from mailer.leads import Lead
from mailer.yamlfile import Section, parse_yaml

NOBODY = Engagement()


def lead(**attributes: Any) -> Lead:
    return Lead(email="ada@example.com", attributes=MappingProxyType(attributes))


def condition(text: str) -> Condition:
    return parse_condition(parse_yaml(f"c: {text}\n", file="s.yaml")["c"], file="s.yaml", field="c")


def holds(text: str, subject: Lead, engagement: Engagement = NOBODY) -> bool:
    return condition(text).evaluate(subject, engagement)


# Compiling


def test_parse_builds_the_tree() -> None:
    """A nested condition compiles into the matching dataclasses."""
    parsed = condition("{all: [{attribute: industry, equals: SaaS}, {not: {opened: welcome}}, {any: []}]}")
    assert parsed == AllOf((
        AttributeTest("industry", "equals", "SaaS"),
        Not(EngagementTest("opened", "welcome")),
        AnyOf(()),
    ))


def test_shorthand_means_all_equal() -> None:
    """`attribute: {NAME: VALUE, ...}` is every attribute equal (a list means one of)."""
    assert condition("{attribute: {industry: SaaS, country: [JP, US]}}") == AllOf((
        AttributeTest("industry", "equals", "SaaS"),
        AttributeTest("country", "in", ("JP", "US")),
    ))
    assert condition("{attribute: {industry: SaaS}}") == AttributeTest("industry", "equals", "SaaS")


def test_dates_are_compared_as_iso_text() -> None:
    """A YAML date value compiles to its ISO text, the way leads store dates."""
    assert condition("{attribute: signup, equals: 2024-04-01}") == AttributeTest("signup", "equals", "2024-04-01")


def test_step_refs_collects_named_steps() -> None:
    """step_refs lists each step id named anywhere in the tree, but not `any`."""
    parsed = condition("{any: [{opened: a}, {not: {clicked: b}}, {sent: a}, {clicked: any}, {attribute: x, exists: true}]}")
    assert parsed.step_refs() == frozenset({"a", "b"})
    assert [test.line for test in parsed.engagement_tests()] == [1, 1, 1, 1]


def test_numeric_step_ids_read_as_text() -> None:
    """`opened: 1` refers to the step whose id is "1"."""
    assert condition("{opened: 1}") == EngagementTest("opened", "1")


@pytest.mark.parametrize(
    ("text", "line", "field", "problem", "hint"),
    [
        ("c:\n  attribute: industry\n  equal: SaaS\n", 3, "c.equal", "unknown operator 'equal'", "did you mean 'equals'?"),
        ("c:\n  attribute: industry\n", 2, "c", "attribute test has no operator", "add one of: " + ", ".join(OPERATORS)),
        ("c:\n  attribute: n\n  gt: 1\n  lt: 5\n", 4, "c.lt", "one attribute test holds two operators (gt, lt)", "combine two tests with all: [...]"),
        ("c:\n  attribute: n\n  gt: many\n", 3, "c.gt", "gt needs a number, not 'many'", "e.g. gt: 100"),
        ("c:\n  attribute: n\n  in: JP\n", 3, "c.in", "in needs a list, not text", "e.g. in: [JP, US]"),
        ("c:\n  attribute: n\n  exists: maybe\n", 3, "c.exists", "exists needs true or false, not text", "e.g. exists: true"),
        ("c:\n  attribute: n\n  equals:\n", 3, "c.equals", "equals needs a value, not nothing", "to test for a missing value use exists: false"),
        ("c:\n  attribute: n\n  contains: yes\n", 3, "c.contains", "contains needs text, not true/false", "e.g. contains: manager"),
        ("c:\n  attribute: [a]\n  equals: 1\n", 2, "c.attribute", "attribute needs a name, not a list", "e.g. attribute: industry"),
        ("c:\n  attribute: {a: 1}\n  equals: 1\n", 2, "c.attribute", "the shorthand `attribute: {NAME: VALUE}` takes no operator", None),
        ("c:\n  opend: welcome\n", 2, "c.opend", "unknown condition 'opend'", "did you mean 'opened'?"),
        ("c:\n  equals: 1\n", 2, "c.equals", "unknown condition 'equals'", "equals needs `attribute: NAME` beside it"),
        ("c:\n  opened: a\n  clicked: b\n", 3, "c.clicked", "'opened' and 'clicked' cannot share a condition", "combine them with all: [...] or any: [...]"),
        ("c:\n  all: {opened: a}\n", 2, "c.all", "all needs a list of conditions, not a mapping", None),
        ("c:\n  all:\n    - opened: a\n    - welcome\n", 4, "c.all[1]", "'welcome': one word is not a condition", None),
        ("c:\n  not: welcome\n", 2, "c.not", "'welcome': one word is not a condition", None),
        ("c:\n  not: 3\n", 2, "c.not", "must be a condition, not a number", None),
        ("c: []\n", 1, "c", "must be a condition, not a list", None),
        ("c:\n  clicked: [a]\n", 2, "c.clicked", "clicked needs a step id or `any`, not a list", "e.g. clicked: welcome"),
        ("c: {}\n", 1, "c", "must be a condition, not a mapping", None),
    ],
)
def test_parse_errors_name_line_field_and_hint(
    text: str, line: int, field: str, problem: str, hint: str | None
) -> None:
    """Each kind of mistake is reported on its line, with its dotted field and a hint."""
    node = parse_yaml(text, file="s.yaml")["c"]
    with pytest.raises(ScenarioError) as caught:
        parse_condition(node, file="s.yaml", field="c")
    error = caught.value
    assert (error.file, error.line, error.field, error.problem) == ("s.yaml", line, field, problem)
    assert error.hint
    if hint is not None:
        assert error.hint == hint


# Evaluating


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{attribute: industry, equals: saas}", True),
        ("{attribute: industry, equals: ' SaaS '}", True),
        ("{attribute: industry, not_equals: SaaS}", False),
        ("{attribute: employees, equals: 250}", True),
        ("{attribute: employees, equals: '250.0'}", True),
        ("{attribute: employees, gt: 100}", True),
        ("{attribute: employees, gte: 250}", True),
        ("{attribute: employees, lt: '1e3'}", True),
        ("{attribute: employees, lte: 249}", False),
        ("{attribute: industry, gt: 1}", False),
        ("{attribute: country, in: [jp, us]}", True),
        ("{attribute: country, not_in: [JP]}", False),
        ("{attribute: job_title, contains: MANAGER}", True),
        ("{attribute: company, contains: example}", True),
        ("{attribute: stage, equals: mql}", True),
        ("{attribute: tags, contains: beta}", True),
        ("{attribute: tags, contains: bet}", False),
        ("{attribute: newsletter, equals: true}", True),
        ("{attribute: industry, exists: true}", True),
        ("{attribute: blank, exists: false}", True),
        ("{attribute: unknown, exists: false}", True),
        ("{attribute: last_name, exists: false}", True),
        ("{attribute: unknown, equals: ''}", False),
        ("{attribute: unknown, not_equals: SaaS}", True),
        ("{attribute: unknown, gt: 0}", False),
        ("{attribute: unknown, not_in: [a]}", True),
        ("{attribute: {industry: saas, country: JP}}", True),
        ("{attribute: {industry: saas, country: US}}", False),
    ],
)
def test_attribute_tests(text: str, expected: bool) -> None:
    """Text compares without case, numeric text as numbers, and blank values are absent."""
    subject = Lead(
        email="ada@example.com",
        job_title="Marketing Manager",
        company="Example KK",
        stage="MQL",
        attributes=MappingProxyType(
            {"industry": "SaaS", "employees": "250", "country": "JP", "tags": ["Beta", "vip"], "newsletter": "True",
             "blank": "  "}
        ),
    )
    assert holds(text, subject) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{sent: welcome}", True),
        ("{sent: tips}", False),
        ("{opened: welcome}", True),
        ("{opened: tips}", True),  # clicked without a recorded open
        ("{clicked: welcome}", False),
        ("{clicked: tips}", True),
        ("{opened: any}", True),
        ("{clicked: any}", True),
    ],
)
def test_engagement_tests(text: str, expected: bool) -> None:
    """sent/opened/clicked look at the scenario's engagement, and a click counts as an open."""
    engagement = Engagement(sent=frozenset({"welcome"}), opened=frozenset({"welcome"}), clicked=frozenset({"tips"}))
    assert holds(text, lead(), engagement) is expected


def test_any_engagement_is_false_before_anything_happened() -> None:
    """`opened: any` is false while nothing has been opened."""
    assert not holds("{opened: any}", lead(), Engagement(sent=frozenset({"welcome"})))


# Properties

names = st.sampled_from(["industry", "employees", "country", "company", "stage", "missing"])
scalars = st.one_of(st.sampled_from(["SaaS", "saas", "JP", "250", "1e2", "", "Example"]), st.integers(-5, 300), st.booleans())
attribute_tests = st.one_of(
    st.builds(AttributeTest, names, st.sampled_from(["equals", "not_equals"]), scalars),
    st.builds(AttributeTest, names, st.just("contains"), st.sampled_from(["S", "a", "2", "Ex"])),
    st.builds(AttributeTest, names, st.sampled_from(["in", "not_in"]), st.lists(scalars, max_size=3).map(tuple)),
    st.builds(AttributeTest, names, st.sampled_from(["gt", "gte", "lt", "lte"]), st.integers(-5, 300)),
    st.builds(AttributeTest, names, st.just("exists"), st.booleans()),
)
engagement_tests = st.builds(
    EngagementTest, st.sampled_from(["sent", "opened", "clicked"]), st.sampled_from(["a", "b", None])
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    attribute_tests | engagement_tests,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.lists(children, max_size=3).map(lambda parts: AllOf(tuple(parts))),
        st.lists(children, max_size=3).map(lambda parts: AnyOf(tuple(parts))),
    ),
    max_leaves=8,
)
values = st.one_of(st.none(), scalars, st.text(max_size=5), st.floats(allow_nan=True))
leads = st.builds(
    lambda attributes, company, stage: Lead(
        email="x@example.com", company=company, stage=stage, attributes=MappingProxyType(attributes)
    ),
    st.dictionaries(names, values, max_size=4),
    st.sampled_from(["", "Example", "SaaS"]),
    st.sampled_from(["lead", "MQL"]),
)
step_sets = st.frozensets(st.sampled_from(["a", "b", "c"]))
engagements = st.builds(Engagement, step_sets, step_sets, step_sets)


@given(conditions, leads, engagements)
def test_not_inverts(tested: Condition, subject: Lead, engagement: Engagement) -> None:
    """`not` is true exactly when its condition is false."""
    assert Not(tested).evaluate(subject, engagement) is not tested.evaluate(subject, engagement)


@given(leads, engagements)
def test_empty_all_is_true_and_empty_any_is_false(subject: Lead, engagement: Engagement) -> None:
    """all of nothing holds and any of nothing does not."""
    assert AllOf(()).evaluate(subject, engagement) and not AnyOf(()).evaluate(subject, engagement)


@given(st.lists(conditions, max_size=4), leads, engagements)
def test_de_morgan(parts: list[Condition], subject: Lead, engagement: Engagement) -> None:
    """not all(x) is any(not x), and not any(x) is all(not x)."""
    negated = tuple(Not(part) for part in parts)
    assert Not(AllOf(tuple(parts))).evaluate(subject, engagement) == AnyOf(negated).evaluate(subject, engagement)
    assert Not(AnyOf(tuple(parts))).evaluate(subject, engagement) == AllOf(negated).evaluate(subject, engagement)


@given(names, values, st.sampled_from(["equals", "in", "exists"]), scalars)
def test_negated_operators_are_complements(name: str, value: object, op: str, expected: object) -> None:
    """not_equals and not_in are exactly the negation of equals and in, also for absent values."""
    subject = Lead(email="x@example.com", attributes=MappingProxyType({name: value}))
    if op == "exists":
        assert AttributeTest(name, "exists", True).evaluate(subject, NOBODY) is not AttributeTest(
            name, "exists", False).evaluate(subject, NOBODY)
        return
    pair = (expected,) if op == "in" else expected
    positive = AttributeTest(name, op, pair).evaluate(subject, NOBODY)  # type: ignore[arg-type]
    assert AttributeTest(name, f"not_{op}", pair).evaluate(subject, NOBODY) is not positive  # type: ignore[arg-type]


yaml_nodes = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.sampled_from(["any", "a", "industry"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from([*OPERATORS, "all", "any", "not", "attribute", "opened", "clicked", "sent", "bogus"]),
        children, max_size=3,
    ),
    max_leaves=10,
)


@given(yaml_nodes)
def test_parse_only_raises_scenario_errors(node: object) -> None:
    """Any YAML-shaped value either compiles or raises ScenarioError."""
    try:
        compiled = parse_condition(node, file="s.yaml", field="c")
    except ScenarioError as error:
        assert error.field is not None and error.field.startswith("c")
    else:
        compiled.evaluate(lead(), NOBODY)


# Score, grade and stage

def scored(**fields: Any) -> Lead:
    return Lead(email="ada@example.com", **fields)


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("{attribute: score, gte: 50}", {"score": 50}, True),
        ("{attribute: score, gt: 50}", {"score": 50}, False),
        ("{attribute: product_score, lt: 10}", {"product_score": 3}, True),
        ("{attribute: grade, gte: B}", {"grade": "A"}, True),
        ("{attribute: grade, gte: B}", {"grade": "B"}, True),
        ("{attribute: grade, gte: b}", {"grade": "C"}, False),
        ("{attribute: grade, gte: D}", {"grade": "F"}, False),
        ("{attribute: grade, gte: F}", {"grade": ""}, False),
        ("{attribute: grade, lt: B}", {"grade": ""}, False),
        ("{attribute: grade, lte: C}", {"grade": "F"}, True),
        ("{attribute: grade, equals: a}", {"grade": "A"}, True),
        ("{attribute: stage, gte: SQL}", {"stage": "SQL"}, True),
        ("{attribute: stage, gte: SQL}", {"stage": "customer"}, True),
        ("{attribute: stage, gte: SQL}", {"stage": "SAL"}, False),
        ("{attribute: stage, gte: sal}", {"stage": "SGL"}, True),
        ("{attribute: stage, gt: lead}", {"stage": "PQL"}, True),
        ("{attribute: stage, lt: MQL}", {"stage": "recycled"}, True),
        ("{attribute: stage, lte: MQL}", {"stage": "PQL"}, True),
        ("{attribute: stage, gte: lead}", {"stage": "prospect"}, False),
        ("{attribute: stage, in: [mql, pql]}", {"stage": "PQL"}, True),
    ],
)
def test_score_grade_and_stage_compare_by_their_own_order(text: str, fields: dict[str, Any], expected: bool) -> None:
    """Scores compare as numbers, grades with A best, stages along the lifecycle; no grade passes no grade test."""
    assert holds(text, scored(**fields)) is expected


@pytest.mark.parametrize(
    ("text", "problem", "hint"),
    [
        ("{attribute: grade, gte: E}", "gte on grade needs a grade, not 'E'", "grades are A, B, C, D, F"),
        ("{attribute: stage, gte: SQLL}", "gte on stage needs a stage, not 'SQLL'", "did you mean 'SQL'?"),
        ("{attribute: stage, equals: costumer}", "equals on stage needs a stage, not 'costumer'", "did you mean 'customer'?"),
        ("{attribute: stage, in: [MQL, SAl, xx]}", "in on stage needs a stage, not 'xx'", None),
        ("{attribute: {grade: G}}", "equals on grade needs a grade, not 'G'", None),
    ],
)
def test_grades_and_stages_must_exist(text: str, problem: str, hint: str | None) -> None:
    """A grade or stage that does not exist is refused at load time, not silently never matched."""
    with pytest.raises(ScenarioError) as caught:
        condition(text)
    assert caught.value.problem == problem
    if hint is not None:
        assert caught.value.hint == hint


def test_stage_values_compile_to_their_canonical_names() -> None:
    """`stage >= sql` and `grade = b` compile to SQL and B, so the tree reads the same however it was written."""
    assert condition("{attribute: stage, gte: sql}") == AttributeTest("stage", "gte", "SQL")
    assert condition("{attribute: grade, equals: b}") == AttributeTest("grade", "equals", "B")


# The short form


@pytest.mark.parametrize(
    ("short", "mapping"),
    [
        ("score >= 50", "{attribute: score, gte: 50}"),
        ("score>50", "{attribute: score, gt: 50}"),
        ("score <= 2.5", "{attribute: score, lte: 2.5}"),
        ("company_size < 10", "{attribute: company_size, lt: 10}"),
        ("country = JP", "{attribute: country, equals: JP}"),
        ("country == JP", "{attribute: country, equals: JP}"),
        ("country != JP", "{attribute: country, not_equals: JP}"),
        ("stage >= SQL", "{attribute: stage, gte: SQL}"),
        ("grade >= b", "{attribute: grade, gte: B}"),
        ("job_title = 'VP Sales'", "{attribute: job_title, equals: VP Sales}"),
        ('industry = "Research and Development"', "{attribute: industry, equals: Research and Development}"),
        ("score >= 50 and grade >= B", "{all: [{attribute: score, gte: 50}, {attribute: grade, gte: B}]}"),
        ("score >= 50 AND grade >= B OR stage = PQL",
         "{any: [{all: [{attribute: score, gte: 50}, {attribute: grade, gte: B}]}, {attribute: stage, equals: PQL}]}"),
        ("a = 1 or b = 2 and c = 3 or d = 4",
         "{any: [{attribute: a, equals: 1}, {all: [{attribute: b, equals: 2}, {attribute: c, equals: 3}]}, {attribute: d, equals: 4}]}"),
    ],
)
def test_short_form_compiles_to_the_same_tree(short: str, mapping: str) -> None:
    """A short-form string means exactly what its mapping spelling means; `and` binds tighter than `or`."""
    assert parse_condition(short, file="s.yaml", field="c") == condition(mapping)


def test_a_yaml_list_is_all_of_it() -> None:
    """A list of conditions, short or long, holds when every one of them does."""
    parsed = condition("['score >= 50', {attribute: grade, gte: B}]")
    assert parsed == AllOf((AttributeTest("score", "gte", 50), AttributeTest("grade", "gte", "B")))
    assert parsed.evaluate(scored(score=60, grade="A"), NOBODY)
    assert not parsed.evaluate(scored(score=60, grade="C"), NOBODY)


@pytest.mark.parametrize(
    ("text", "problem", "hint"),
    [
        ("score >= fifty", "'score >= fifty': >= needs a number, not 'fifty'", "e.g. score >= 100"),
        ("score is 50", "'score is 50': expected an operator after 'score', found 'is'", "operators: >= > <= < = == !="),
        ("score >=", "'score >=': expected a value after '>='", None),
        ("score >= 50 grade >= B", "'score >= 50 grade >= B': expected `and` or `or` before 'grade'", None),
        ("score >= 50 and", "'score >= 50 and': expected a field name after 'and'", None),
        ("(score >= 50)", "'(score >= 50)': parentheses are not supported", "group tests with a mapping: {any: [...]} or {all: [...]}"),
        ("industry = Financial Services", "'industry = Financial Services': expected `and` or `or` before 'Services'", None),
        ('title = "VP', "'title = \"VP': a \" quote is not closed", "end the quoted value with the same quote"),
        ("score ! 3", "'score ! 3': '!' is not an operator", "write != for not equal"),
        ("not stage = SQL", "'not stage = SQL': `not` has no short form", "write {not: CONDITION}"),
        ("opened = welcome", "'opened = welcome': 'opened' has no short form", "write {opened: STEP_ID}"),
        ("grade >= Z", "'grade >= Z': >= on grade needs a grade, not 'Z'", "grades are A, B, C, D, F"),
        ("stage = SQLL or x = 1", "'stage = SQLL or x = 1': = on stage needs a stage, not 'SQLL'", "did you mean 'SQL'?"),
        ("welcome", "'welcome': one word is not a condition", None),
    ],
)
def test_short_form_mistakes_are_reported_at_their_line(text: str, problem: str, hint: str | None) -> None:
    """A broken short form names its own text, what is wrong, the condition's line and field, and a hint."""
    node = parse_yaml(f"x: 1\nc:\n  all:\n    - {json.dumps(text)}\n", file="s.yaml")["c"]
    with pytest.raises(ScenarioError) as caught:
        parse_condition(node, file="s.yaml", field="c")
    error = caught.value
    assert (error.file, error.line, error.field, error.problem) == ("s.yaml", 4, "c.all[0]", problem)
    assert error.hint
    if hint is not None:
        assert error.hint == hint


symbols = st.sampled_from([">=", ">", "<=", "<", "=", "==", "!="])
field_names = st.sampled_from(["score", "product_score", "company_size", "country", "x_1"])
short_values = st.one_of(st.integers(-1000, 1000), st.sampled_from(["JP", "saas", "1.5", "VP Sales", "a-b"]))


@given(st.lists(st.lists(st.tuples(field_names, symbols, short_values), min_size=1, max_size=3), min_size=1, max_size=3))
def test_any_written_short_form_reads_back_as_its_clauses(alternatives: list[list[tuple[str, str, object]]]) -> None:
    """Clauses joined by and/or, written out as text, compile to the tree of AttributeTests they spell."""
    ops = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt", "=": "equals", "==": "equals", "!=": "not_equals"}

    def written(value: object) -> str:
        return f'"{value}"' if isinstance(value, str) and " " in value else str(value)

    text = " or ".join(" and ".join(f"{name} {symbol} {written(value)}" for name, symbol, value in group) for group in alternatives)
    ordered = [(name, symbol, value) for group in alternatives for name, symbol, value in group]
    if any(ops[symbol] in ("gt", "gte", "lt", "lte") and not str(value).lstrip("-").replace(".", "", 1).isdigit()
           for _, symbol, value in ordered):
        with pytest.raises(ScenarioError):
            parse_condition(text, file="s.yaml", field="c")
        return

    def expected(value: object) -> object:
        return float(value) if value == "1.5" else value

    groups: list[Condition] = []
    for group in alternatives:
        tests = tuple(AttributeTest(name, ops[symbol], expected(value)) for name, symbol, value in group)  # type: ignore[arg-type]
        groups.append(tests[0] if len(tests) == 1 else AllOf(tests))
    assert parse_condition(text, file="s.yaml", field="c") == (groups[0] if len(groups) == 1 else AnyOf(tuple(groups)))


@given(st.text(alphabet="scoregadJP <>=!'\"()andor0123456789.-_ ", max_size=30))
def test_any_text_compiles_or_raises_scenario_error(text: str) -> None:
    """Whatever one line of text says, it compiles to a condition or is refused with a ScenarioError."""
    try:
        compiled = parse_condition(text, file="s.yaml", field="c")
    except ScenarioError as error:
        assert error.field == "c"
    else:
        compiled.evaluate(scored(score=3, grade="B"), NOBODY)


# Explaining


@pytest.mark.parametrize(
    ("text", "fields", "reason"),
    [
        ("score >= 50 and grade >= B", {"score": 55, "grade": "B"}, "score 55 ≥ 50 and grade B ≥ B"),
        ("score >= 50 and grade >= B", {"score": 55, "grade": "C"}, "grade C < B"),
        ("score >= 50 and grade >= B", {"score": 55}, "grade has no value"),
        ("score >= 50 or stage = PQL", {"score": 10, "stage": "PQL"}, "stage PQL = PQL"),
        ("score >= 50 or stage = PQL", {"score": 10}, "score 10 < 50 and stage lead ≠ PQL"),
        ("{not: {attribute: stage, in: [SQL, customer]}}", {"stage": "MQL"}, "stage MQL not in [SQL, customer]"),
        ("{attribute: job_title, contains: director}", {"job_title": "IT Director"}, "job_title IT Director contains director"),
        ("{attribute: budget, exists: true}", {"attributes": {"budget": "10k"}}, "budget is set"),
        ("{attribute: budget, exists: true}", {}, "budget is not set"),
        ("{attribute: employees, gte: 50.0}", {"attributes": {"employees": "250"}}, "employees 250 ≥ 50"),
    ],
)
def test_explain_says_why_in_a_salespersons_words(text: str, fields: dict[str, Any], reason: str) -> None:
    """explain names the lead's own values against the rule: what held when it holds, what failed when it fails."""
    node = parse_yaml(f"c: {json.dumps(text) if not text.startswith('{') else text}\n", file="s.yaml")["c"]
    assert parse_condition(node, file="s.yaml", field="c").explain(scored(**fields), NOBODY) == reason


def test_explain_engagement() -> None:
    """Engagement tests explain as what the lead did or did not do."""
    engagement = Engagement(opened=frozenset({"welcome"}))
    assert condition("{opened: welcome}").explain(lead(), engagement) == "opened welcome"
    assert condition("{clicked: any}").explain(lead(), engagement) == "not clicked an email of this scenario"


@pytest.mark.parametrize(("point_at_test", "line"), [(True, 4), (False, 2)])
def test_refuse_engagement_names_the_rule_and_points_at_the_test_or_the_key(point_at_test: bool, line: int) -> None:
    """A rule read outside a scenario is refused at its first sent/opened/clicked test, or at its key."""
    document = parse_yaml("name: x\nwhen:\n  all:\n    - opened: any\n", file="r.yaml")
    at = Section(document, "r.yaml", "rules[0]")
    rule = parse_condition(document["when"], file="r.yaml", field="rules[0].when")
    with pytest.raises(ScenarioError) as caught:
        refuse_engagement(rule, "a list rule", at=at, key="when", hint="test attributes", point_at_test=point_at_test)
    assert str(caught.value) == (
        f"r.yaml:{line}: rules[0].when: a list rule cannot test what a lead opened, clicked or was sent — test attributes"
    )


def test_refuse_engagement_lets_profile_rules_through() -> None:
    """A rule testing only attributes, score or grade passes."""
    at = Section(parse_yaml("when: x\n", file="r.yaml"), "r.yaml", "")
    refuse_engagement(condition('"score >= 5 and grade >= B"'), "a list rule", at=at, key="when", hint="h")
