"""Who enters a scenario: members of a list, leads matching a rule, or leads that just changed.

    entry: {list: trial-signups}                       members of a static list
    entry: {list: hot-trials}                          everyone a dynamic list's rule matches (lists.yaml)
    entry: {where: "country = JP"}                     every lead matching the condition
    entry: {trigger: became_MQL}                       a lead the moment it becomes MQL
    entry: {trigger: form_submitted, form: demo-*}     a lead the moment it submits that form

`list` and `where` together mean list members matching the condition; `where` beside a
trigger is an extra filter. List and rule entries are found by the daemon's entry pass;
trigger entries by the scoring engine when the change happens (mailer.stages.triggered_by).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from mailer.conditions import Condition, parse_condition
from mailer.errors import ScenarioError
from mailer.scoremodel import STAGES, StageChange, canonical_stage
from mailer.yamlfile import check_keys, describe, did_you_mean, key_line, subfield

_KEYS = ("list", "where", "trigger", "form")
_HINT = "write entry: {list: NAME}, entry: {where: CONDITION}, both, or entry: {trigger: became_MQL}"
_Error = Callable[[str, str, str], ScenarioError]  # (key, problem, hint) → the error to raise
# Every trigger name, as written in the docs; input is read without regard to case.
TRIGGERS = (*(f"became_{stage}" for stage in STAGES if stage != "lead"), "recycled", "form_submitted")


@dataclass(frozen=True)
class EntryTrigger:
    """An entry on a lead's change rather than on membership."""

    event: str  # "stage_changed" or "form_submitted"
    stage: str | None = None  # stage_changed: the stage the lead became, as in STAGES
    form: str | None = None  # form_submitted: the form's name, globs allowed; None for any form

    def fires(self, *, stage_change: StageChange | None = None, form: str | None = None) -> bool:
        """Whether this change (a stage move, a submitted form's name) enters the lead."""
        if self.event == "stage_changed":
            return (
                stage_change is not None
                and stage_change.from_stage != stage_change.to_stage
                and canonical_stage(stage_change.to_stage) == self.stage
            )
        if form is None:
            return False
        return self.form is None or fnmatchcase(form.casefold(), self.form.casefold())

    def __str__(self) -> str:
        if self.event == "stage_changed":
            return f"became_{self.stage}"
        return "form_submitted" + ("" if self.form is None else f" ({self.form})")


@dataclass(frozen=True)
class Entry:
    """Who enters: members of a list, leads matching a condition, both, or a trigger."""

    list_name: str | None
    where: Condition | None
    trigger: EntryTrigger | None = None
    segment: Condition | None = None  # list_name's rule when it is a dynamic list (lists.yaml)


def parse_entry(value: object, *, file: str, line: int | None, segments: Mapping[str, Condition]) -> Entry:
    """Compile a scenario's `entry:` mapping; `segments` are the dynamic lists by name."""
    if not isinstance(value, Mapping) or not value:
        raise ScenarioError(f"must be a mapping with list or where, not {describe(value)}", file=file, line=line,
                            field="entry", hint=_HINT)
    check_keys(value, _KEYS, file=file, field="entry")

    def error(key: str, problem: str, hint: str) -> ScenarioError:
        return ScenarioError(problem, file=file, line=key_line(value, key), field=subfield("entry", key), hint=hint)

    where = None
    if "where" in value:
        where = parse_condition(value["where"], file=file, field="entry.where", line=key_line(value, "where"))
        for test in where.engagement_tests():
            raise ScenarioError(
                "an entry rule cannot test what a lead opened, clicked or was sent", file=file,
                line=test.line, field="entry.where",
                hint="a lead has done nothing in a scenario before entering it; test attributes instead",
            )
    list_name = _text(value, "list", error, "e.g. list: newsletter")
    trigger = _trigger(value, error) if "trigger" in value else None
    if "form" in value and (trigger is None or trigger.event != "form_submitted"):
        raise error("form", "form goes with trigger: form_submitted", "e.g. entry: {trigger: form_submitted, form: demo-request}")
    if trigger is not None and list_name is not None:
        hint = "a trigger scenario enters each lead when it changes; filter them with where: instead"
        raise error("list", "a trigger scenario takes no list", hint)
    return Entry(list_name=list_name, where=where, trigger=trigger, segment=segments.get(list_name or ""))


def _trigger(value: Mapping[str, object], error: _Error) -> EntryTrigger:
    written = _text(value, "trigger", error, "e.g. trigger: became_MQL")
    if written is None:
        raise error("trigger", "has no value", "e.g. trigger: became_MQL")
    folded = written.casefold()
    if folded == "form_submitted":
        return EntryTrigger("form_submitted", form=_text(value, "form", error, "e.g. form: demo-request"))
    stage = "recycled" if folded == "recycled" else canonical_stage(folded.removeprefix("became_"))
    if not folded.startswith("became_") and folded != "recycled" or stage in (None, "lead"):
        raise error("trigger", f"unknown trigger {written!r}", did_you_mean(written, TRIGGERS))
    return EntryTrigger("stage_changed", stage=stage)


def _text(value: Mapping[str, object], key: str, error: _Error, hint: str) -> str | None:
    text = value.get(key)
    if text is None:
        return None
    if not isinstance(text, str):
        raise error(key, f"must be text, not {describe(text)}", hint)
    if not text.strip():
        raise error(key, "is empty", hint)
    if "\n" in text.strip():
        raise error(key, "must be one line", hint)
    return text.strip()
