"""The one condition language of step conditions, exit goals and entry rules.

A condition is written in YAML as a mapping and compiled once into a small tree of frozen
dataclasses, each of which can `evaluate` a lead and what the lead did in this scenario:

    all: [COND, ...]     any: [COND, ...]     not: COND      [COND, ...]  (a list: all of it)
    attribute: NAME, OPERATOR: VALUE          attribute: {NAME: VALUE, ...}  (all equal)
    sent: STEP_ID        opened: STEP_ID|any  clicked: STEP_ID|any
    "score >= 50 and grade >= B"              (the short form: mailer.conditiontext)

`grade` and `stage` compare by rank with the ordered operators: `grade >= B` holds for A and
B, `stage >= SQL` for SQL and customer (mailer.scoremodel.GRADES and STAGE_RANK).

Comparisons are forgiving the way lead data needs: text compares without regard to case or
surrounding spaces, and text that reads as a number compares as that number, because CSV
imports turn every value into text ("42" must equal 42).
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from mailer.conditiontext import READS, ShortFormError, parse_short_form, shown
from mailer.errors import ScenarioError
from mailer.leads import LEAD_FIELDS, Lead
from mailer.scoremodel import GRADES, STAGE_RANK, STAGES, canonical_stage
from mailer.yamlfile import Section, describe, did_you_mean, item_line, key_line, line_of, subfield

Scalar = str | int | float | bool
Expected = Scalar | tuple[Scalar, ...]
# read from the Lead; any other name is a free attribute
CONDITION_FIELDS = (*LEAD_FIELDS, "stage", "score", "product_score", "grade")
_HINT = 'write a mapping such as {attribute: industry, equals: SaaS}, {opened: STEP_ID} or {all: [...]}, or "score >= 50"'
ORDERED = frozenset({"gt", "gte", "lt", "lte"})


def grade_rank(value: object) -> int | None:
    """How good a grade is (A highest), or None for anything that is not a grade."""
    text = str(value).strip().upper() if isinstance(value, str) else ""
    return len(GRADES) - GRADES.index(text) if text in GRADES else None


def stage_rank(value: object) -> int | None:
    """How far along the lifecycle a stage is (mailer.scoremodel.STAGE_RANK), or None."""
    stage = canonical_stage(value) if isinstance(value, str) else None
    return None if stage is None else STAGE_RANK[stage]


# Fields whose values have an order of their own, used by gt/gte/lt/lte instead of numbers.
RANKS: Mapping[str, Callable[[object], int | None]] = {"grade": grade_rank, "stage": stage_rank}


@dataclass(frozen=True)
class Engagement:
    """The ids of the steps of one scenario that were sent to, opened and clicked by a lead."""

    sent: frozenset[str] = frozenset()
    opened: frozenset[str] = frozenset()
    clicked: frozenset[str] = frozenset()


class Condition(ABC):
    """A compiled condition."""

    @abstractmethod
    def evaluate(self, lead: Lead, engagement: Engagement) -> bool:
        """Whether the condition holds for `lead` with `engagement`."""

    @abstractmethod
    def engagement_tests(self) -> Iterator[EngagementTest]:
        """Every sent/opened/clicked test in the tree, to check the step ids they name."""

    @abstractmethod
    def explain(self, lead: Lead, engagement: Engagement) -> str:
        """The facts that make the condition hold, or fail, for `lead`, in a salesperson's words.

        "score 55 ≥ 50 and grade B ≥ B" when it holds; "grade C < B" when it fails there.
        """

    def step_refs(self) -> frozenset[str]:
        """The step ids this condition refers to (`any` refers to none in particular)."""
        return frozenset(test.step_id for test in self.engagement_tests() if test.step_id is not None)


def tested_attributes(condition: Condition) -> Iterator[str]:
    """The name of every lead field or attribute `condition` tests, in the order written."""
    if isinstance(condition, (AllOf, AnyOf)):
        for part in condition.conditions:
            yield from tested_attributes(part)
    elif isinstance(condition, Not):
        yield from tested_attributes(condition.condition)
    elif isinstance(condition, AttributeTest):
        yield condition.attribute


def refuse_engagement(condition: Condition, rule: str, *, at: Section, key: str, hint: str, point_at_test: bool = True) -> None:
    """Refuse `condition`, written under `key` of `at`, when it tests what a lead did in a scenario.

    Entry, list, stage and grading rules are read outside any one scenario, where sent, opened
    and clicked mean nothing. `rule` names the rule ("a list rule"); the error points at the
    first such test, or at `key` when not `point_at_test`.
    """
    for test in condition.engagement_tests():
        problem = f"{rule} cannot test what a lead opened, clicked or was sent"
        raise at.error(key, problem, hint, line=test.line if point_at_test else None)


@dataclass(frozen=True)
class AllOf(Condition):
    """True when every condition holds; true when there are none."""

    conditions: tuple[Condition, ...]

    def evaluate(self, lead: Lead, engagement: Engagement) -> bool:
        return all(condition.evaluate(lead, engagement) for condition in self.conditions)

    def engagement_tests(self) -> Iterator[EngagementTest]:
        for condition in self.conditions:
            yield from condition.engagement_tests()

    def explain(self, lead: Lead, engagement: Engagement) -> str:
        failing = [part for part in self.conditions if not part.evaluate(lead, engagement)]
        return " and ".join(part.explain(lead, engagement) for part in failing or self.conditions) or "always"


@dataclass(frozen=True)
class AnyOf(Condition):
    """True when at least one condition holds; false when there are none."""

    conditions: tuple[Condition, ...]

    def evaluate(self, lead: Lead, engagement: Engagement) -> bool:
        return any(condition.evaluate(lead, engagement) for condition in self.conditions)

    def engagement_tests(self) -> Iterator[EngagementTest]:
        for condition in self.conditions:
            yield from condition.engagement_tests()

    def explain(self, lead: Lead, engagement: Engagement) -> str:
        holding = next((part for part in self.conditions if part.evaluate(lead, engagement)), None)
        if holding is not None:
            return holding.explain(lead, engagement)
        return " and ".join(part.explain(lead, engagement) for part in self.conditions) or "never"


@dataclass(frozen=True)
class Not(Condition):
    """True when the condition does not hold."""

    condition: Condition

    def evaluate(self, lead: Lead, engagement: Engagement) -> bool:
        return not self.condition.evaluate(lead, engagement)

    def engagement_tests(self) -> Iterator[EngagementTest]:
        return self.condition.engagement_tests()

    def explain(self, lead: Lead, engagement: Engagement) -> str:
        return self.condition.explain(lead, engagement)  # the inner facts are why `not` holds or fails


@dataclass(frozen=True)
class AttributeTest(Condition):
    """A test of one lead field or free attribute; a missing or blank value is absent."""

    attribute: str
    operator: str
    expected: Expected

    def evaluate(self, lead: Lead, engagement: Engagement) -> bool:
        actual = self.actual(lead)
        rank = RANKS.get(self.attribute) if self.operator in ORDERED else None
        if rank is not None:  # "grade >= B": compare ranks; "" or an unknown value never passes
            return OPERATORS[self.operator](rank(actual), rank(self.expected))
        return OPERATORS[self.operator](actual, self.expected)

    def actual(self, lead: Lead) -> object:
        """The lead's value of the attribute; None when it is missing or blank."""
        if self.attribute in CONDITION_FIELDS:
            actual = getattr(lead, self.attribute)
        else:
            actual = lead.attributes.get(self.attribute)
        if actual is None or (isinstance(actual, str) and not actual.strip()):
            return None
        return actual

    def engagement_tests(self) -> Iterator[EngagementTest]:
        return iter(())

    def explain(self, lead: Lead, engagement: Engagement) -> str:
        holds, actual = self.evaluate(lead, engagement), self.actual(lead)
        if self.operator == "exists":
            return f"{self.attribute} is {'' if actual is not None else 'not '}set"
        if actual is None:
            return f"{self.attribute} has no value"
        symbol = READS[self.operator][0 if holds else 1]
        expected = f"[{shown(self.expected)}]" if isinstance(self.expected, tuple) else shown(self.expected)
        return f"{self.attribute} {shown(actual)} {symbol} {expected}"


@dataclass(frozen=True)
class EngagementTest(Condition):
    """Whether a step (or, with `step_id` None, any step) was sent, opened or clicked.

    A click counts as an open: mail clients that block the tracking pixel still follow links.
    """

    event: str  # "sent", "opened" or "clicked"
    step_id: str | None
    line: int | None = field(default=None, compare=False)

    def evaluate(self, lead: Lead, engagement: Engagement) -> bool:
        steps = getattr(engagement, self.event)
        if self.event == "opened":
            steps = steps | engagement.clicked
        return bool(steps) if self.step_id is None else self.step_id in steps

    def engagement_tests(self) -> Iterator[EngagementTest]:
        yield self

    def explain(self, lead: Lead, engagement: Engagement) -> str:
        verb = {"sent": "was sent", "opened": "opened", "clicked": "clicked"}[self.event]
        what = "an email of this scenario" if self.step_id is None else self.step_id
        return f"{verb} {what}" if self.evaluate(lead, engagement) else f"not {verb} {what}"


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return " ".join(str(value).split()).casefold()


def _same(actual: object, expected: object) -> bool:
    if actual is None:
        return False
    numbers = _number(actual), _number(expected)
    if numbers[0] is not None and numbers[1] is not None:
        return numbers[0] == numbers[1]
    return _text(actual) == _text(expected)


def _contains(actual: object, expected: object) -> bool:
    if isinstance(actual, (list, tuple)):  # a JSON list attribute such as tags
        return any(_same(item, expected) for item in actual)
    return actual is not None and _text(expected) in _text(actual)


def _ordered(compare: Callable[[Decimal, Decimal], bool]) -> Callable[[object, Any], bool]:
    def test(actual: object, expected: Any) -> bool:
        left, right = _number(actual), _number(expected)
        return left is not None and right is not None and compare(left, right)

    return test


# Each operator is a predicate over (the lead's value or None when absent, the expected value).
OPERATORS: Mapping[str, Callable[[object, Any], bool]] = {
    "equals": _same,
    "not_equals": lambda actual, expected: not _same(actual, expected),
    "in": lambda actual, expected: any(_same(actual, choice) for choice in expected),
    "not_in": lambda actual, expected: not any(_same(actual, choice) for choice in expected),
    "contains": _contains,
    "gt": _ordered(operator.gt),
    "gte": _ordered(operator.ge),
    "lt": _ordered(operator.lt),
    "lte": _ordered(operator.le),
    "exists": lambda actual, expected: (actual is not None) == expected,
}
_KINDS = ("all", "any", "not", "attribute", "sent", "opened", "clicked")


def parse_condition(node: object, *, file: str | None, field: str, line: int | None = None) -> Condition:
    """Compile the YAML condition `node`, raising ScenarioError at the offending line.

    `line` is where `node` is written when it is a plain value that does not know its line.
    """
    return _parse(_At(node, file, field, line_of(node) or line))


@dataclass(frozen=True)
class _At:
    """A condition node being compiled and where it is written, to report errors."""

    node: Any
    file: str | None
    field: str
    line: int | None

    def error(self, problem: str, key: str | None = None, hint: str = _HINT) -> ScenarioError:
        line = self.line if key is None else key_line(self.node, key)
        field = self.field if key is None else subfield(self.field, key)
        return ScenarioError(problem, file=self.file, line=line, field=field, hint=hint)

    def inner(self, node: Any, key: str | int, line: int | None) -> _At:
        return _At(node, self.file, subfield(self.field, key), line_of(node) or line)


def _parse(at: _At) -> Condition:
    node = at.node
    if isinstance(node, str) and node.strip():
        return _parse_text(at, node)
    if isinstance(node, list) and node:  # a list of conditions: all of them
        return AllOf(tuple(_parse(at.inner(item, index, item_line(node, index))) for index, item in enumerate(node)))
    if not isinstance(node, Mapping) or not node:
        raise at.error(f"must be a condition, not {describe(node)}")
    if "attribute" in node:
        return _parse_attribute(at)
    key = next(iter(node))
    if key not in _KINDS:
        hint = f"{key} needs `attribute: NAME` beside it" if key in OPERATORS else did_you_mean(key, _KINDS)
        raise at.error(f"unknown condition {key!r}", key, hint)
    if len(node) > 1:
        other = list(node)[1]
        hint = "combine them with all: [...] or any: [...]"
        raise at.error(f"{key!r} and {other!r} cannot share a condition", other, hint)
    value = node[key]
    if key == "not":
        return Not(_parse(at.inner(value, key, key_line(node, key))))
    if key in ("all", "any"):
        if not isinstance(value, list):
            raise at.error(f"{key} needs a list of conditions, not {describe(value)}", key)
        items = at.inner(value, key, key_line(node, key))
        parts = tuple(_parse(items.inner(item, index, item_line(value, index))) for index, item in enumerate(value))
        return AllOf(parts) if key == "all" else AnyOf(parts)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `opened: 1` means the step whose id is "1"
    if not isinstance(value, str) or not value.strip():
        raise at.error(f"{key} needs a step id or `any`, not {describe(value)}", key, f"e.g. {key}: welcome")
    step_id = None if value.strip() == "any" else value.strip()
    return EngagementTest(key, step_id, line=key_line(node, key))


def _parse_attribute(at: _At) -> Condition:
    node, name = at.node, at.node["attribute"]
    if isinstance(name, Mapping):  # shorthand: {attribute: {industry: SaaS, country: [JP, US]}}
        if len(node) > 1 or not name:
            hint = "write attribute: NAME with an operator, or only attribute: {NAME: VALUE, ...}"
            raise at.error("the shorthand `attribute: {NAME: VALUE}` takes no operator", "attribute", hint)
        tests: list[Condition] = []
        for attribute, value in name.items():
            op = "in" if isinstance(value, list) else "equals"
            tests.append(AttributeTest(attribute, op, _expected(op, value, at, "attribute", attribute=attribute)))
        return tests[0] if len(tests) == 1 else AllOf(tuple(tests))
    if not isinstance(name, str) or not name.strip():
        raise at.error(f"attribute needs a name, not {describe(name)}", "attribute", "e.g. attribute: industry")
    operators = [key for key in node if key != "attribute"]
    if not operators:
        raise at.error("attribute test has no operator", None, "add one of: " + ", ".join(OPERATORS))
    for key in operators:
        if key not in OPERATORS:
            raise at.error(f"unknown operator {key!r}", key, did_you_mean(key, OPERATORS))
    if len(operators) > 1:
        problem = f"one attribute test holds two operators ({operators[0]}, {operators[1]})"
        raise at.error(problem, operators[1], "combine two tests with all: [...]")
    op = operators[0]
    return AttributeTest(name.strip(), op, _expected(op, node[op], at, op, attribute=name.strip()))


def _expected(op: str, value: object, at: _At, key: str | None, *, attribute: str, shown: str | None = None) -> Expected:
    """The value `op` compares `attribute` with, checked; errors point at `key`.

    `shown` is how the operator was written, when not by its name (">=" in the short form).
    """
    label = shown or op
    if op == "exists":
        if not isinstance(value, bool):
            raise at.error(f"exists needs true or false, not {describe(value)}", key, "e.g. exists: true")
        return value
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise at.error(f"{op} needs a list, not {describe(value)}", key, f"e.g. {op}: [JP, US]")
        return tuple(_named(attribute, _scalar(op, item, at, key), at, key, label) for item in value)
    scalar = _scalar(op, value, at, key)
    if attribute in RANKS and op in (*ORDERED, "equals", "not_equals"):
        return _named(attribute, scalar, at, key, label)
    if op in ORDERED and _number(scalar) is None:
        raise at.error(f"{label} needs a number, not {scalar!r}", key, f"e.g. {attribute} {shown} 100" if shown else f"e.g. {op}: 100")
    if op == "contains" and isinstance(scalar, bool):
        raise at.error("contains needs text, not true/false", key, "e.g. contains: manager")
    return scalar


def _named(attribute: str, value: Scalar, at: _At, key: str | None, label: str) -> Scalar:
    """A grade or stage as written canonically ("b" → "B", "sql" → "SQL"); a typo is refused."""
    if attribute == "grade":
        if grade_rank(value) is None:
            raise at.error(f"{label} on grade needs a grade, not {value!r}", key, "grades are " + ", ".join(GRADES))
        return str(value).strip().upper()
    if attribute == "stage":
        stage = canonical_stage(value) if isinstance(value, str) else None
        if stage is None:
            raise at.error(f"{label} on stage needs a stage, not {value!r}", key, did_you_mean(str(value), STAGES))
        return stage
    return value


def _scalar(op: str, value: object, at: _At, key: str | None) -> Scalar:
    if isinstance(value, date):  # YAML reads 2024-04-01 as a date; leads hold dates as text
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)):
        return value
    hint = "to test for a missing value use exists: false" if value is None else "write a single value"
    raise at.error(f"{op} needs a value, not {describe(value)}", key, hint)


def _parse_text(at: _At, text: str) -> Condition:
    """Compile the short form `text`; every mistake is reported at the condition's own line."""
    groups: list[Condition] = []
    try:
        for clauses in parse_short_form(text):
            tests = tuple(
                AttributeTest(clause.name, clause.op, _expected(clause.op, clause.value, at, None, attribute=clause.name, shown=clause.symbol))
                for clause in clauses
            )
            groups.append(tests[0] if len(tests) == 1 else AllOf(tests))
    except (ShortFormError, ScenarioError) as error:
        raise at.error(f"{text.strip()!r}: {error.problem}", None, error.hint or _HINT) from None
    return groups[0] if len(groups) == 1 else AnyOf(tuple(groups))
