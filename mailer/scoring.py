"""A lead's behaviour score: a pure function of its events and the scoring rules.

    score(events, rules, now) -> ScoreResult

Replaying the same events gives the same score in any arrival order: events are
de-duplicated by key and put in (at, key) order before anything is counted, so daily caps
always spend their allowance on the same events. Every rule whose event type (and name
pattern) matches an event adds its points: a click on a link tagged `pricing` earns both
`clicked` and `clicked pricing`. Then, per counted event:

- the daily cap: a rule yields at most `daily_cap` points (absolute) per UTC day, spent on the
  day's events in order; the event that crosses the cap counts for what is left of it;
- decay by the event's age at `now`: `points * 0.5 ** (age / half_life)`, and nothing once
  `age >= expires_after`; an event stamped after `now` (a clock ahead) counts as brand new.

The total is rounded half away from zero. `scoring_event` turns a row of the events table
into what scoring reads; machine opens and clicks, soft bounces and our own delivery
failures become nothing.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

from mailer.classify import classify_reply
from mailer.reasons import ALWAYS_HARD, SENDER_PROBLEMS, BounceClass
from mailer.scoremodel import ENGAGEMENT_TYPES, Contribution, ScoreResult, ScoringEvent
from mailer.scoringrules import ScoreRule

_DAY = 86_400.0
_BY_TIME = attrgetter("at", "key")
_SENDER_PROBLEMS = frozenset(reason.value for reason in SENDER_PROBLEMS)
_ALWAYS_HARD = frozenset(reason.value for reason in ALWAYS_HARD)
# mailer.bouncepolicy.Action.SUPPRESS: a hard bounce that is the address's fault, not ours
_SUPPRESS = "suppress"


def scoring_event(row_id: int, type: str, at: datetime, machine: bool, data: Mapping[str, Any]) -> ScoringEvent | None:
    """What a row of the events table means to scoring, or None when it means nothing.

    The rows are written by mailer.sqlitetracking (opened, clicked: data.tag is the link's
    data-tag), mailer.sqliteconsent (subscribed: data.source or data.list; confirmed;
    unsubscribed), mailer.sqlitebounces (bounce: data.reason and data.action; complained),
    mailer.sqlitestore's record_outcomes (failed: the SMTP reply in data.code, enhanced,
    text, command, host) and the API (form_submitted, page_visit, product_event: data.name,
    data.key).
    """
    if machine:
        return None
    key = data.get("key")
    key = key if isinstance(key, str) and key else f"e{row_id}"
    if type in ("opened", "confirmed", "unsubscribed", "complained"):
        return ScoringEvent(key, type, at, _name(data.get("list")))
    if type == "clicked":
        return ScoringEvent(key, type, at, _name(data.get("tag")))
    if type == "subscribed":  # a sign-up form; its `source` field names the form when it has one
        return ScoringEvent(key, "form_submitted", at, _name(data.get("source")) or _name(data.get("list")))
    if type in ("form_submitted", "page_visit", "product_event"):
        return ScoringEvent(key, type, at, _name(data.get("name")))
    if type in ("bounce", "failed") and _hard_bounce(data):
        return ScoringEvent(key, "bounced", at)
    return None


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _hard_bounce(data: Mapping[str, Any]) -> bool:
    """Whether a bounce or failed row says the address itself is bad (the lead's fault).

    A bounce row carries the reason and the bounce policy's action; a failed row only the
    SMTP reply, which is classified again (mailer.classify is deterministic). A refusal
    that is the sender's problem (a block, a bad reputation) says nothing about the lead
    (nor does a protocol error at DATA: recorded as a sender alert, never hard);
    a failure with no reply at all (a template that did not build) is no bounce.
    """
    reason, bounce_class = data.get("reason"), data.get("bounce_class")
    if reason is None and isinstance(data.get("code"), int):
        reason, bounce_class = _classified(
            data["code"], _text(data.get("enhanced")), _text(data.get("text")), _text(data.get("command")),
            _text(data.get("host")),
        )
    if reason in _SENDER_PROBLEMS:
        return False
    return data.get("action") == _SUPPRESS or bounce_class == BounceClass.HARD.value or reason in _ALWAYS_HARD


# A rescore reads every failed row again; providers repeat their refusal texts word for word,
# and classifying one (tens of regular expressions) costs ~30 µs.
@functools.lru_cache(maxsize=4096)
def _classified(code: int, enhanced: str, text: str, command: str, host: str) -> tuple[str, str]:
    found = classify_reply(code=code, enhanced=enhanced or None, text=text, command=command, host=host)
    return found.reason.value, found.bounce_class.value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One rule ready for the scoring loop: plain floats, a name test compiled once."""

    index: int  # position in the rules, to add up per rule
    points: float
    test: Callable[[str | None], bool] | None  # None: every event of the type
    cap: float | None
    half_life: float | None  # seconds
    expires_after: float | None  # seconds


_Plan = tuple[dict[str, tuple[_Compiled, ...]], tuple[bool, ...]]  # rules by event type; which are product rules
# Compiled plans of the rule tuples seen lately, by identity: the engine passes the same
# ScoringConfig.rules tuple for every lead until the file changes, so each lead's score
# costs one dict lookup rather than a re-compile. The tuple is kept with its plan, so its id
# cannot be reused while cached; tuples of frozen rules cannot change under us.
_PLANS: dict[int, tuple[tuple[ScoreRule, ...], _Plan]] = {}
_MAX_PLANS = 16


def _plan(rules: Sequence[ScoreRule]) -> _Plan:
    if not isinstance(rules, tuple):
        return _compile(rules)
    cached = _PLANS.get(id(rules))
    if cached is not None and cached[0] is rules:
        return cached[1]
    plan = _compile(rules)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[id(rules)] = (rules, plan)
    return plan


def _compile(rules: Sequence[ScoreRule]) -> _Plan:
    by_event: dict[str, list[_Compiled]] = {}
    for index, rule in enumerate(rules):
        by_event.setdefault(rule.event, []).append(_Compiled(
            index=index,
            points=float(rule.points),
            test=None if rule.match is None else _name_test(rule.match),
            cap=rule.daily_cap,
            half_life=None if rule.half_life is None else rule.half_life.total_seconds(),
            expires_after=None if rule.expires_after is None else rule.expires_after.total_seconds(),
        ))
    product = tuple(rule.event == "product_event" for rule in rules)
    return {event: tuple(found) for event, found in by_event.items()}, product


def _name_test(pattern: str) -> Callable[[str | None], bool]:
    """A test of an event's name against a rule's pattern: fnmatch globs, any case."""
    wanted = pattern.casefold()
    if not any(char in wanted for char in "*?["):
        return lambda name: name is not None and name.casefold() == wanted
    regex = re.compile(fnmatch.translate(wanted))
    return lambda name: name is not None and regex.match(name.casefold()) is not None


def score(events: Iterable[ScoringEvent], rules: Sequence[ScoreRule], now: datetime) -> ScoreResult:
    """The lead's score from its events under `rules` at `now` (see the module docstring)."""
    by_event, product = _plan(rules)
    unique: dict[str, ScoringEvent] = {}
    for event in events:
        seen = unique.setdefault(event.key, event)
        if seen is not event and seen != event and _identity(event) < _identity(seen):
            unique[event.key] = event  # one key, two versions: the same one wins in any order
    totals = [0.0] * len(rules)
    counts = [0] * len(rules)
    spent: dict[tuple[int, int], float] = {}
    last_engaged: datetime | None = None
    for event in sorted(unique.values(), key=_BY_TIME):
        if event.type in ENGAGEMENT_TYPES:
            last_engaged = event.at  # in time order: the last one seen is the latest
        compiled = by_event.get(event.type)
        if compiled is None:
            continue
        age = max((now - event.at).total_seconds(), 0.0)
        day = -1
        for rule in compiled:
            if rule.test is not None and not rule.test(event.name):
                continue
            points = rule.points
            if rule.cap is not None:
                if day < 0:
                    day = int(event.at.timestamp() // _DAY)
                used = spent.get((rule.index, day), 0.0)
                room = rule.cap - used
                if room <= 0.0:
                    continue
                if abs(points) > room:
                    points = math.copysign(room, points)
                spent[rule.index, day] = used + abs(points)
            if rule.expires_after is not None and age >= rule.expires_after:
                continue
            if rule.half_life is not None:
                points *= 0.5 ** (age / rule.half_life)
            totals[rule.index] += points
            counts[rule.index] += 1
    contributions = sorted(
        (Contribution(rules[index].name, counts[index], round(totals[index], 2)) for index in range(len(rules)) if counts[index]),
        key=lambda contribution: -abs(contribution.points),
    )
    return ScoreResult(
        score=_round(sum(totals)),
        product_score=_round(sum(total for total, is_product in zip(totals, product) if is_product)),
        contributions=tuple(contributions),
        last_engaged_at=last_engaged,
    )


def _identity(event: ScoringEvent) -> tuple[datetime, str, str]:
    return event.at, event.type, event.name or ""


def _round(value: float) -> int:
    """Half away from zero (2.5 → 3, -2.5 → -3), unlike round()'s half to even."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))
