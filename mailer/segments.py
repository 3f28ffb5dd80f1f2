"""Dynamic lists (segments): saved rules in `scenarios/lists.yaml`, evaluated when used.

    lists:
      hot-trials:
        description: Trial sign-ups who engage and fit
        where: "score >= 30 and grade >= C"

A scenario whose `entry: {list: hot-trials}` names a dynamic list enters every lead the rule
matches, and each lead leaves it before any later step once the rule stops matching (see
mailer.planner). A rule is the scenario condition language, so a segment means the same thing
in a list, an entry rule and a goal. Static lists (members added by import, API or sign-up)
need no entry here; a name defined here is dynamic wherever it is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailer.conditions import Condition, parse_condition, refuse_engagement
from mailer.errors import ScenarioError
from mailer.yamlfile import Section, check_keys, describe, key_line, load_yaml, subfield

LISTS_FILE = "lists.yaml"
# A list name ends up in reports, exit reasons and per-list suppressions: keep it plain.
_LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_HINT = 'write lists: {NAME: {where: CONDITION}}, e.g. where: "score >= 30"'


def load_segments(path: Path) -> dict[str, Condition]:
    """The rule of each dynamic list in `path` by name; no file means no dynamic lists.

    Errors are ScenarioError naming the file, line and field, like a scenario's.
    """
    if not path.is_file():
        return {}
    file = str(path)
    document = load_yaml(path, file=file)
    check_keys(document, ("lists",), file=file, field="")
    lists = document.get("lists")
    if lists is None:
        return {}
    if not isinstance(lists, Mapping):
        raise ScenarioError(f"must be a mapping of list names, not {describe(lists)}", file=file,
                            line=key_line(document, "lists"), field="lists", hint=_HINT)
    return {name: _segment(lists, name, file) for name in lists}


def _segment(lists: Mapping[str, Any], name: str, file: str) -> Condition:
    field, line = subfield("lists", name), key_line(lists, name)
    if not _LIST_NAME.fullmatch(name):
        raise ScenarioError(f"{name!r} is not a valid list name", file=file, line=line, field=field,
                            hint="use letters, digits, '.', '-' and '_' (at most 64)")
    section = lists[name]
    if not isinstance(section, Mapping):
        raise ScenarioError(f"must be a mapping with where, not {describe(section)}", file=file, line=line,
                            field=field, hint=_HINT)
    check_keys(section, ("where", "description"), file=file, field=field)
    if section.get("where") is None:
        raise ScenarioError("missing required key 'where'", file=file, line=line, field=subfield(field, "where"),
                            hint="the rule a lead must match to be in the list, e.g. where: \"grade >= B\"")
    description = section.get("description")
    if description is not None and not isinstance(description, str):
        raise ScenarioError(f"must be text, not {describe(description)}", file=file,
                            line=key_line(section, "description"), field=subfield(field, "description"))
    where_field, where_line = subfield(field, "where"), key_line(section, "where")
    rule = parse_condition(section["where"], file=file, field=where_field, line=where_line)
    refuse_engagement(rule, "a list rule", at=Section(section, file, field), key="where",
                      hint="those belong to one scenario; test score, grade, stage or attributes instead")
    return rule


def declared_lists(path: Path) -> frozenset[str] | None:
    """The list names `path` defines even when a rule in it is broken; None when unreadable.

    While lists.yaml has a mistake, only scenarios entering by these names are paused: the
    others cannot be affected by it.
    """
    try:
        lists = load_yaml(path).get("lists")
    except ScenarioError:
        return None
    return frozenset(lists) if isinstance(lists, Mapping) else None
