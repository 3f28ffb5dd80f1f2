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

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from mailer.conditions import Condition, parse_condition, refuse_engagement
from mailer.errors import ScenarioError
from mailer.scoremodel import STAGES, StageChange, canonical_stage
from mailer.yamlfile import Section, check_keys, describe, did_you_mean, key_line

_KEYS = ("list", "where", "trigger", "form")
_HINT = "write entry: {list: NAME}, entry: {where: CONDITION}, both, or entry: {trigger: became_MQL}"
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
    at = Section(value, file, "entry")
    where = None
    if "where" in value:
        where = parse_condition(value["where"], file=file, field="entry.where", line=key_line(value, "where"))
        refuse_engagement(where, "an entry rule", at=at, key="where",
                          hint="a lead has done nothing in a scenario before entering it; test attributes instead")
    list_name = at.text("list", hint="e.g. list: newsletter")
    trigger = _trigger(at) if "trigger" in value else None
    if "form" in value and (trigger is None or trigger.event != "form_submitted"):
        raise at.error("form", "form goes with trigger: form_submitted", "e.g. entry: {trigger: form_submitted, form: demo-request}")
    if trigger is not None and list_name is not None:
        hint = "a trigger scenario enters each lead when it changes; filter them with where: instead"
        raise at.error("list", "a trigger scenario takes no list", hint)
    return Entry(list_name=list_name, where=where, trigger=trigger, segment=segments.get(list_name or ""))


def _trigger(at: Section) -> EntryTrigger:
    written = at.text("trigger", hint="e.g. trigger: became_MQL", required=True) or ""
    folded = written.casefold()
    if folded == "form_submitted":
        return EntryTrigger("form_submitted", form=at.text("form", hint="e.g. form: demo-request"))
    stage = "recycled" if folded == "recycled" else canonical_stage(folded.removeprefix("became_"))
    if not folded.startswith("became_") and folded != "recycled" or stage in (None, "lead"):
        raise at.error("trigger", f"unknown trigger {written!r}", did_you_mean(written, TRIGGERS))
    return EntryTrigger("stage_changed", stage=stage)
