"""Scenarios: the nurture sequences marketers write as `scenarios/*.yaml` (see docs/scenarios.md).

`load_scenario` checks everything it can without sending anything — keys, types, durations,
time zones, step references, sender identities, template files and subject syntax — and
reports the first problem as one `file:line: field: problem — hint` line.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from mailer.conditions import Condition, parse_condition
from mailer.entry import Entry as Entry  # re-exported: a scenario's entry rule
from mailer.entry import EntryTrigger as EntryTrigger
from mailer.entry import parse_entry
from mailer.errors import ScenarioError
from mailer.segments import LISTS_FILE, declared_lists, load_segments
from mailer.sendwindow import SendWindow, parse_send_window
from mailer.yamlfile import (
    Section, YamlMap, check_keys, closest, describe, did_you_mean, item_line, key_line, line_of, load_yaml, subfield,
)

_TOP_KEYS = (
    "name", "description", "sender", "entry", "timezone", "send_window", "exit_when", "reentry", "steps",
)
_STEP_KEYS = ("id", "wait", "subject", "template", "text_template", "send_window", "condition")
# Step ids end up in the store, in Message-IDs and in reports: keep them to plain words.
_STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
# Other features keep their own YAML files beside the scenarios.
NOT_SCENARIOS = frozenset({"scoring.yaml", "scoring.yml", LISTS_FILE})
_JINJA = SandboxedEnvironment()


@dataclass(frozen=True)
class Reentry:
    """Whether a lead who finished or left the scenario may enter again, and how long after."""

    allowed: bool = False
    after: timedelta = timedelta(0)


@dataclass(frozen=True)
class Step:
    """One email of a scenario, sent `wait` after the previous step (or after entry)."""

    id: str
    wait: timedelta
    subject: str  # a Jinja template
    template: str  # a file under templates/
    text_template: str | None
    send_window: SendWindow | None  # None: the scenario's
    condition: Condition | None
    line: int


@dataclass(frozen=True)
class Scenario:
    """A named sequence of steps with its entry rule, exit goal and re-entry rule."""

    name: str
    file: str
    sender: str  # a sending identity from mailer.toml
    entry: Entry
    steps: tuple[Step, ...]
    exit_when: Condition | None
    reentry: Reentry
    timezone: str  # for leads without one
    send_window: SendWindow | None  # None: any time
    description: str = ""

    def step(self, step_id: str) -> Step | None:
        """The step with id `step_id`, or None when the scenario has none (any more)."""
        return next((step for step in self.steps if step.id == step_id), None)

    def step_index(self, step_id: str) -> int:
        """The position of the step with id `step_id`; KeyError when there is none."""
        for index, step in enumerate(self.steps):
            if step.id == step_id:
                return index
        raise KeyError(f"scenario {self.name!r} has no step {step_id!r}")


class _Section(Section):
    """One mapping of a scenario file and its dotted path, to read values and report errors."""

    def send_window(self, key: str) -> SendWindow | None:
        if self.mapping.get(key) is None:
            return None
        field, line = subfield(self.field, key), key_line(self.mapping, key)
        return parse_send_window(self.mapping[key], file=self.file, field=field, line=line)

    def condition(self, key: str) -> Condition | None:
        if key not in self.mapping:
            return None
        field, line = subfield(self.field, key), key_line(self.mapping, key)
        return parse_condition(self.mapping[key], file=self.file, field=field, line=line)


def load_scenario(
    path: Path,
    *,
    identities: Collection[str] | None = None,
    templates_dir: Path | None = None,
    segments: Mapping[str, Condition] | None = None,
) -> Scenario:
    """Read and check one scenario file; errors are ScenarioError naming `path` as given.

    The sender is checked against `identities` (from mailer.toml) and template files against
    `templates_dir` when they are given. An entry list named in `segments` (the dynamic
    lists of lists.yaml) enters the leads its rule matches.
    """
    return _load(path, identities, templates_dir, segments or {})[0]


def load_scenarios(
    directory: Path, *, identities: Collection[str] | None = None, templates_dir: Path | None = None
) -> tuple[list[Scenario], list[ScenarioError]]:
    """Load each ``*.yaml`` and ``*.yml`` in `directory` in name order, except `NOT_SCENARIOS`.

    The dynamic lists come from the directory's lists.yaml. A bad file becomes an error and
    does not stop the others; so does a second scenario with a name already taken. While
    lists.yaml has a mistake, the scenarios entering by a list it names are refused too (with
    no way to tell, by any list): sending them by a rule that failed to load could mail the
    wrong people.
    """
    if not directory.is_dir():
        hint = "create it or fix `scenarios` in mailer.toml"
        return [], [ScenarioError("no such directory", file=str(directory), hint=hint)]
    paths = sorted(
        path for path in directory.iterdir()
        if path.suffix in (".yaml", ".yml") and path.name not in NOT_SCENARIOS and path.is_file()
    )
    scenarios: list[Scenario] = []
    errors: list[ScenarioError] = []
    lists_file = directory / LISTS_FILE
    broken_lists: frozenset[str] | None = frozenset()
    try:
        segments = load_segments(lists_file)
    except ScenarioError as error:
        errors.append(error)
        segments, broken_lists = {}, declared_lists(lists_file)
    files_by_name: dict[str, str] = {}
    for path in paths:
        try:
            scenario, document = _load(path, identities, templates_dir, segments)
        except ScenarioError as error:
            errors.append(error)
            continue
        list_name = scenario.entry.list_name
        if list_name is not None and (broken_lists is None or list_name in broken_lists):
            errors.append(ScenarioError(
                f"list {list_name!r} cannot be used while {lists_file} has a mistake", file=scenario.file,
                line=key_line(document["entry"], "list"), field="entry.list", hint=f"fix {lists_file} first",
            ))
            continue
        if scenario.name in files_by_name:  # the name keys each lead's progress in the store
            errors.append(ScenarioError(
                f"scenario name {scenario.name!r} is already used", file=scenario.file,
                line=key_line(document, "name"), field="name",
                hint=f"{files_by_name[scenario.name]} has it; give each scenario its own name",
            ))
            continue
        files_by_name[scenario.name] = scenario.file
        scenarios.append(scenario)
    return scenarios, errors


def _load(
    path: Path, identities: Collection[str] | None, templates_dir: Path | None, segments: Mapping[str, Condition]
) -> tuple[Scenario, YamlMap]:
    file = str(path)
    document = load_yaml(path, file=file)
    top = _Section(document, file, "")
    check_keys(document, _TOP_KEYS, file=file, field="")
    name = top.text("name", required=True, hint="add `name: ...`, the name reports show") or ""
    if name.startswith("@"):  # "@optin" and the like are the engine's own message kinds
        raise top.error("name", f"scenario names may not start with '@': {name!r}", "choose a name without the '@'")
    sender = top.text("sender", required=True, hint="add `sender: NAME`, an identity from mailer.toml") or ""
    if identities is not None and sender not in identities:
        known = did_you_mean(sender, identities) if identities else "mailer.toml defines no identities"
        raise top.error("sender", f"no sending identity named {sender!r}", known)
    hint = "write entry: {list: NAME}, entry: {where: CONDITION}, both, or entry: {trigger: became_MQL}"
    entry = parse_entry(top.required("entry", hint), file=file, line=key_line(document, "entry"), segments=segments)
    timezone = _timezone(top)
    send_window = top.send_window("send_window")
    steps = _steps(top, templates_dir)
    exit_when = top.condition("exit_when")
    _check_refs(top, "exit_when", exit_when, [step.id for step in steps], before=len(steps))
    scenario = Scenario(
        name=name,
        file=file,
        sender=sender,
        entry=entry,
        steps=steps,
        exit_when=exit_when,
        reentry=_reentry(top),
        timezone=timezone,
        send_window=send_window,
        description=top.text("description", required=False, hint="one line about the scenario") or "",
    )
    return scenario, document


# `reentry: true` alone: a lead that left may enter again after this long. Never at once:
# a lead still on the entry list would otherwise go round the scenario on every pass.
DEFAULT_REENTRY_AFTER = timedelta(days=30)
MIN_REENTRY_AFTER = timedelta(hours=1)


def _reentry(top: _Section) -> Reentry:
    value = top.mapping.get("reentry", False)
    if isinstance(value, bool):
        return Reentry(allowed=value, after=DEFAULT_REENTRY_AFTER if value else timedelta(0))
    if not isinstance(value, Mapping):
        problem = f"must be true, false or {{after: DURATION}}, not {describe(value)}"
        raise top.error("reentry", problem, "e.g. reentry: {after: 30d}")
    check_keys(value, ("after",), file=top.file, field="reentry")
    after = DEFAULT_REENTRY_AFTER
    if "after" in value:
        after = top.inner("reentry").duration(
            "after", numbers=True, at_least=MIN_REENTRY_AFTER,
            at_least_hint="a lead would re-enter on every pass; e.g. after: 30d",
        )
    return Reentry(allowed=True, after=after)


def _timezone(top: _Section) -> str:
    hint = "use an IANA name such as Europe/Berlin or Asia/Tokyo"
    name = top.text("timezone", required=False, hint=hint)
    if name is None:
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = closest(name, available_timezones())
        hint = hint if close is None else f"did you mean {close!r}?"
        raise top.error("timezone", f"unknown time zone {name!r}", hint) from None
    return name


def _steps(top: _Section, templates_dir: Path | None) -> tuple[Step, ...]:
    hint = "list the emails under steps:, each starting with `- id: NAME`"
    items = top.required("steps", hint)
    if not isinstance(items, list) or not items:
        problem = "needs at least one step" if items == [] else f"must be a list, not {describe(items)}"
        raise top.error("steps", problem, hint)
    sections: list[_Section] = []
    id_lines: dict[str, int | None] = {}
    for index, item in enumerate(items):
        field = subfield("steps", index)
        if not isinstance(item, Mapping):
            problem, line = f"must be a mapping, not {describe(item)}", item_line(items, index)
            raise ScenarioError(problem, file=top.file, line=line, field=field, hint=hint)
        check_keys(item, _STEP_KEYS, file=top.file, field=field)
        section = _Section(item, top.file, field)
        step_id = _step_id(section)
        if step_id in id_lines:
            hint = f"it is already used on line {id_lines[step_id]}; step ids must be unique"
            raise section.error("id", f"duplicate step id {step_id!r}", hint)
        id_lines[step_id] = key_line(item, "id")
        sections.append(section)
    ids = list(id_lines)  # all of them first, so a reference to a later step is told apart from a typo
    return tuple(_step(section, index, ids, templates_dir) for index, section in enumerate(sections))


def _step_id(section: _Section) -> str:
    value = section.required("id", "give each step a short id such as `welcome`")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `id: 1` reads as a number
    step_id = value.strip() if isinstance(value, str) else None
    if step_id is None or step_id == "any" or not _STEP_ID.fullmatch(step_id):
        shown = describe(value) if step_id is None else repr(step_id)
        hint = "use letters, digits, - and _ (at most 64)"
        if step_id == "any":
            hint = "`any` is reserved for `opened: any`"
        raise section.error("id", f"{shown} is not a valid step id", hint)
    return step_id


def _step(section: _Section, index: int, ids: list[str], templates_dir: Path | None) -> Step:
    hint = "add `subject: ...`, one line that may use {{ lead.first_name }}"
    subject = section.text("subject", required=True, hint=hint) or ""
    try:
        _JINJA.parse(subject)
    except TemplateSyntaxError as error:
        problem = f"invalid template syntax: {error.message}"
        raise section.error("subject", problem, "check the {{ }} and {% %} pairs") from None
    condition = section.condition("condition")
    _check_refs(section, "condition", condition, ids, before=index)
    return Step(
        id=ids[index],
        wait=section.duration("wait", numbers=True) if "wait" in section.mapping else timedelta(0),
        subject=subject,
        template=_template(section, "template", templates_dir, required=True) or "",
        text_template=_template(section, "text_template", templates_dir, required=False),
        send_window=section.send_window("send_window"),
        condition=condition,
        line=line_of(section.mapping) or 0,
    )


def _template(section: _Section, key: str, templates_dir: Path | None, *, required: bool) -> str | None:
    hint = f"name a file under templates/, e.g. {key}: welcome.html"
    name = section.text(key, required=required, hint=hint)
    if name is None:
        return None
    if name.startswith(("/", "~")) or "\\" in name or ".." in PurePosixPath(name).parts:
        raise section.error(key, f"{name!r} is not a file name under templates/", hint)
    if templates_dir is not None and not (templates_dir / name).is_file():
        suffix = PurePosixPath(name).suffix  # never suggest welcome.html for welcome.txt
        files = [
            path.relative_to(templates_dir).as_posix()
            for path in templates_dir.rglob("*") if path.suffix == suffix and path.is_file()
        ]
        close = closest(name, files)
        hint = f"no such file in {templates_dir}" + ("" if close is None else f"; did you mean {close!r}?")
        raise section.error(key, f"template {name!r} does not exist", hint)
    return name


def _check_refs(
    section: _Section, key: str, condition: Condition | None, ids: list[str], *, before: int
) -> None:
    """Refuse references to steps that do not exist or do not come before position `before`."""
    for test in () if condition is None else condition.engagement_tests():
        if test.step_id is None:
            continue
        if test.step_id not in ids:
            problem = f"refers to step {test.step_id!r}, which does not exist"
            raise section.error(key, problem, did_you_mean(test.step_id, ids), line=test.line)
        if ids.index(test.step_id) >= before:
            where = "is this step" if ids.index(test.step_id) == before else "comes after this step"
            problem = f"refers to step {test.step_id!r}, which {where}"
            hint = "a step's condition may only depend on earlier steps"
            raise section.error(key, problem, hint, line=test.line)
