"""Scoring, grading and stage rules: what `scenarios/scoring.yaml` says, read and checked once.

The file has four optional sections (see the commented example in scenarios/scoring.yaml):

    scoring:  [RULE, ...]   points per event, with daily caps and decay (mailer.scoring)
    grading:  [RULE, ...]   points per profile condition that holds (mailer.grading)
    grades:   {A: 80, B: 60, C: 40, D: 20}   the least grading points of each grade
    stages:   {...}         lifecycle entry rules, read by mailer.stages.parse_stage_rules

`load_scoring` reports the first problem as one `file:line: field: problem — hint` line
(a ScoringError), like mailer.scenario does for scenario files. A missing file is no
rules at all: no scoring, no grading, the default stage rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

from mailer.conditions import Condition, parse_condition, refuse_engagement, tested_attributes
from mailer.errors import ScoringError, UserError
from mailer.scoremodel import EVENT_TYPES, GRADES
from mailer.stages import DEFAULT_STAGE_RULES, StageRules, parse_stage_rules
from mailer.yamlfile import (
    Section, YamlMap, check_keys, describe, did_you_mean, item_line, key_line, line_of, load_yaml, subfield,
)

_TOP_KEYS = ("scoring", "grading", "grades", "stages")
_RULE_KEYS = ("event", "name", "tag", "points", "daily_cap", "decay")
_DECAY_KEYS = ("half_life", "expires_after")
_GRADE_RULE_KEYS = ("name", "when", "points")
# Events that carry a name of their own (the form, the page path, the product event): for
# these `name:` picks which events the rule counts. For the others `name:` names the rule.
NAMED_EVENTS = ("form_submitted", "page_visit", "product_event")
# Far beyond any sensible rule (scores sit in the tens and hundreds), and small enough that no
# sum of them can overflow a float or the store's INTEGER column: a typo such as 1e9 is refused.
MAX_POINTS = 10_000
# The letters that take a threshold; F is whatever falls below D.
BANDED_GRADES = tuple(grade for grade in GRADES if grade != "F")
DEFAULT_BANDS: tuple[tuple[str, float], ...] = (("A", 80), ("B", 60), ("C", 40), ("D", 20))
# Grading measures fit from the profile. These lead fields are behaviour and lifecycle, which
# the stage rules combine with the grade (`MQL: "score >= 50 and grade >= B"`).
_NOT_FIT = frozenset({"score", "product_score", "grade", "stage"})
# Names a marketer may reach for that the rules file spells differently (the events table's
# own words among them), so the hint says more than difflib can guess.
_ALIASES = {
    "open": "opened", "opens": "opened", "click": "clicked", "clicks": "clicked",
    "subscribed": "form_submitted", "subscribe": "form_submitted", "form": "form_submitted",
    "form_submit": "form_submitted", "submitted": "form_submitted", "signup": "form_submitted",
    "page_view": "page_visit", "pageview": "page_visit", "visit": "page_visit", "visited": "page_visit",
    "product": "product_event", "product_usage": "product_event",
    "unsubscribe": "unsubscribed", "bounce": "bounced", "failed": "bounced", "hard_bounce": "bounced",
    "complaint": "complained", "spam": "complained", "confirm": "confirmed", "optin": "confirmed",
}
_RULE_HINT = "each rule is a mapping such as {event: clicked, points: 5}"
_POINTS_HINT = "e.g. points: 5 (negative for bad signs: points: -30)"
_DECAY_HINT = "write decay: {half_life: 30d} or decay: {expires_after: 90d}"
_GRADES_HINT = "give the least points of each grade, e.g. grades: {A: 80, B: 60, C: 40, D: 20}"


@dataclass(frozen=True)
class ScoreRule:
    """Points for each of a lead's events of one type (and name), with an optional cap and decay."""

    name: str  # as written, or derived: "opened", "clicked pricing", "form_submitted demo-request"
    event: str  # one of EVENT_TYPES
    points: float  # negative for bad signs
    match: str | None = None  # a glob over the event's name (click tag, form, page, product event)
    daily_cap: float | None = None  # at most this many points (absolute) from this rule per UTC day
    half_life: timedelta | None = None  # the points halve every half_life of the event's age
    expires_after: timedelta | None = None  # the points drop to 0 once the event is this old
    line: int | None = None


@dataclass(frozen=True)
class GradeRule:
    """Points for a lead whose profile meets a condition (profile fit)."""

    name: str
    when: Condition
    points: float
    line: int | None = None


@dataclass(frozen=True)
class ScoringConfig:
    """Everything scenarios/scoring.yaml says; the defaults are what a missing file means."""

    rules: tuple[ScoreRule, ...] = ()
    grading: tuple[GradeRule, ...] = ()
    bands: tuple[tuple[str, float], ...] = DEFAULT_BANDS  # best grade first
    stages: StageRules = DEFAULT_STAGE_RULES
    file: str | None = None


def load_scoring(path: Path) -> ScoringConfig:
    """Read and check `path`; a missing file means no rules. Errors are ScoringError naming `path`."""
    file = str(path)
    if not path.exists():
        return ScoringConfig()
    try:
        return _load(path, file)
    except ScoringError:
        raise
    except UserError as error:  # from the YAML reader, the condition and stage parsers
        hint = error.hint
        if hint is not None and "`name: ...`" in hint:  # the YAML reader's advice for scenarios
            hint = "start with `scoring:`"
        raise ScoringError(error.problem, file=error.file, line=error.line, field=error.field, hint=hint) from None


def _load(path: Path, file: str) -> ScoringConfig:
    try:
        document = load_yaml(path, file=file)
    except UserError as error:
        if error.problem == "the file is empty":  # only comments: the marketer switched it all off
            return ScoringConfig(file=file)
        raise
    check_keys(document, _TOP_KEYS, file=file, field="")
    return ScoringConfig(
        rules=_score_rules(document, file),
        grading=_grade_rules(document, file),
        bands=_bands(document, file),
        stages=_stages(document, file),
        file=file,
    )


def _stages(document: YamlMap, file: str) -> StageRules:
    node = document.get("stages")
    if node is None:
        return DEFAULT_STAGE_RULES
    try:
        return parse_stage_rules(node, file=file, field="stages")
    except UserError as error:
        if error.line is None:  # a plain value knows no line of its own: the `stages:` key's
            error.line = key_line(document, "stages")
        raise


class _At(Section):
    """A mapping of scoring.yaml, whose mistakes are ScoringErrors."""

    error_class: ClassVar[type[UserError]] = ScoringError

    def label(self, key: str, hint: str) -> str | None:
        """A rule's name or tag: a number is its text (`name: 404` is the page named "404")."""
        return self.text(key, hint=hint, required=key in self.mapping, numbers=True, empty="must be text, not empty text")

    def number(self, key: str, hint: str, *, positive: bool = False) -> float:
        value = self.mapping[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, not {describe(value)}", hint)
        if not math.isfinite(value) or abs(value) > MAX_POINTS:
            raise self.error(key, f"must be between -{MAX_POINTS} and {MAX_POINTS}, not {value}", hint)
        if positive and value <= 0:
            raise self.error(key, f"must be more than 0, not {value}", hint)
        return float(value)

    def decay_length(self, key: str) -> timedelta:
        length = self.duration(key, expected="a duration such as 30d")
        if length <= timedelta(0):
            raise self.error(key, "must be longer than 0", f"e.g. {key}: 30d; leave decay out for points that never fade")
        return length


def _items(document: YamlMap, key: str, file: str, hint: str) -> Iterator[_At]:
    """Each mapping of the list under `key` (nothing when the key is absent or empty)."""
    items = document.get(key)
    if items is None:
        return
    if not isinstance(items, list):
        raise _At(document, file, "").error(key, f"must be a list of rules, not {describe(items)}", hint)
    for index, item in enumerate(items):
        where = subfield(key, index)
        if not isinstance(item, Mapping) or not item:
            problem = f"must be a rule, not {describe(item)}"
            raise ScoringError(problem, file=file, line=item_line(items, index), field=where, hint=hint)
        yield _At(item, file, where)


def _score_rules(document: YamlMap, file: str) -> tuple[ScoreRule, ...]:
    rules: list[ScoreRule] = []
    lines: dict[str, int | None] = {}
    for at in _items(document, "scoring", file, _RULE_HINT):
        check_keys(at.mapping, _RULE_KEYS, file=file, field=at.field)
        rule = _score_rule(at)
        if rule.name in lines:
            hint = f"the rule on line {lines[rule.name]} has it"
            hint += "; merge the two rules" if rule.event in NAMED_EVENTS else "; give one of them its own `name:`"
            raise at.error("name" if "name" in at.mapping else "event", f"rule name {rule.name!r} is already used", hint)
        lines[rule.name] = rule.line
        rules.append(rule)
    return tuple(rules)


def _score_rule(at: _At) -> ScoreRule:
    event_hint = "one of: " + ", ".join(EVENT_TYPES)
    if "event" not in at.mapping:
        raise at.error(None, "missing required key 'event'", "say what the rule counts, e.g. event: opened")
    event = at.mapping["event"]
    if not isinstance(event, str) or not event.strip():
        raise at.error("event", f"must be an event type, not {describe(event)}", event_hint)
    event = event.strip()
    if event not in EVENT_TYPES:
        alias = _ALIASES.get(event.casefold())
        hint = f"did you mean {alias!r}?" if alias is not None else did_you_mean(event, EVENT_TYPES)
        raise at.error("event", f"unknown event type {event!r}", hint)
    if "points" not in at.mapping:
        raise at.error(None, "missing required key 'points'", _POINTS_HINT)
    tag = at.label("tag", "name the link's data-tag, e.g. tag: pricing")
    if tag is not None and event != "clicked":
        raise at.error("tag", f"tag is only for clicked rules, not {event}", "a tag names a link: data-tag=\"pricing\" in a template")
    name = at.label("name", "e.g. name: demo-request" if event in NAMED_EVENTS else "e.g. name: pricing page clicks")
    match = tag if event == "clicked" else name if event in NAMED_EVENTS else None
    if event in NAMED_EVENTS or name is None:
        name = event if match is None else f"{event} {match}"
    cap = at.number("daily_cap", "e.g. daily_cap: 10", positive=True) if at.mapping.get("daily_cap") is not None else None
    half_life, expires_after = _decay(at)
    return ScoreRule(
        name=name,
        event=event,
        points=at.number("points", _POINTS_HINT),
        match=match,
        daily_cap=cap,
        half_life=half_life,
        expires_after=expires_after,
        line=line_of(at.mapping),
    )


def _decay(at: _At) -> tuple[timedelta | None, timedelta | None]:
    value = at.mapping.get("decay")
    if value is None:
        return None, None
    if not isinstance(value, Mapping) or not value:
        raise at.error("decay", f"must be a mapping, not {describe(value)}", _DECAY_HINT)
    check_keys(value, _DECAY_KEYS, file=at.file, field=subfield(at.field, "decay"))
    decay = at.inner("decay")
    half_life = decay.decay_length("half_life") if "half_life" in value else None
    expires_after = decay.decay_length("expires_after") if "expires_after" in value else None
    return half_life, expires_after


def _grade_rules(document: YamlMap, file: str) -> tuple[GradeRule, ...]:
    rules: list[GradeRule] = []
    lines: dict[str, int | None] = {}
    hint = "each rule is a mapping such as {name: decision maker, when: {attribute: job_title, contains: director}, points: 30}"
    for at in _items(document, "grading", file, hint):
        check_keys(at.mapping, _GRADE_RULE_KEYS, file=file, field=at.field)
        for key, example in (("name", "name: decision maker"), ("when", "when: {attribute: job_title, contains: director}"),
                             ("points", "points: 30")):
            if key not in at.mapping:
                raise at.error(None, f"missing required key {key!r}", f"e.g. {example}")
        name = at.label("name", "e.g. name: decision maker") or ""
        if name in lines:
            raise at.error("name", f"rule name {name!r} is already used", f"the rule on line {lines[name]} has it")
        lines[name] = line_of(at.mapping)
        when = parse_condition(at.mapping["when"], file=file, field=subfield(at.field, "when"), line=key_line(at.mapping, "when"))
        _check_fit(at, when)
        rules.append(GradeRule(name=name, when=when, points=at.number("points", _POINTS_HINT), line=line_of(at.mapping)))
    return tuple(rules)


def _check_fit(at: _At, when: Condition) -> None:
    """Refuse what a grade cannot depend on: engagement in a scenario, behaviour, the lifecycle."""
    refuse_engagement(when, "a grading rule", at=at, key="when", point_at_test=False,
                      hint="grading measures fit from the profile; give points for behaviour under scoring:")
    for attribute in tested_attributes(when):
        if attribute in _NOT_FIT:
            raise at.error("when", f"a grading rule cannot test {attribute}",
                           "grading measures fit from the profile; combine score and grade in stages:, e.g. "
                           'MQL: "score >= 50 and grade >= B"')


def _bands(document: YamlMap, file: str) -> tuple[tuple[str, float], ...]:
    value = document.get("grades")
    if value is None:
        return DEFAULT_BANDS
    top = _At(document, file, "")
    if not isinstance(value, Mapping):
        raise top.error("grades", f"must be a mapping, not {describe(value)}", _GRADES_HINT)
    at = top.inner("grades")
    if "F" in value:
        raise at.error("F", "F takes no points", "F is every grade below D; give points for A, B, C and D")
    check_keys(value, BANDED_GRADES, file=file, field="grades")
    bands: list[tuple[str, float]] = []
    for grade in BANDED_GRADES:
        if grade not in value:
            raise top.error("grades", f"missing the least points for grade {grade}", _GRADES_HINT)
        least = at.number(grade, _GRADES_HINT)
        if bands and least >= bands[-1][1]:
            better, above = bands[-1]
            raise at.error(grade, f"{grade} needs fewer points than {better} ({least:g} is not below {above:g})", _GRADES_HINT)
        bands.append((grade, least))
    return tuple(bands)

