"""Tests for mailer.yamlfile: safe YAML loading that keeps line numbers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mailer.errors import ScenarioError, ScoringError, UserError
from mailer.yamlfile import (
    MAX_BYTES, Section, YamlList, YamlMap, check_keys, did_you_mean, item_line, key_line, load_yaml, parse_yaml,
    subfield,
)


def refused(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_yaml(text, file="s.yaml")
    return caught.value


def test_mappings_and_lists_remember_their_lines() -> None:
    """Every key and list item carries the 1-based line it is written on."""
    document = parse_yaml("name: Welcome\n\nsteps:\n  - id: a\n    wait: 2d\n  - id: b\n", file="s.yaml")
    assert document == {"name": "Welcome", "steps": [{"id": "a", "wait": "2d"}, {"id": "b"}]}
    assert isinstance(document, YamlMap) and document.line == 1
    assert document.key_lines == {"name": 1, "steps": 3}
    steps = document["steps"]
    assert isinstance(steps, YamlList) and steps.item_lines == [4, 6]
    assert steps[0].line == 4 and steps[0].key_lines == {"id": 4, "wait": 5}


def test_scalars_follow_safe_loader_semantics() -> None:
    """Plain values become what SafeLoader makes of them, YAML 1.1 booleans included."""
    document = parse_yaml(
        "n: 3\nf: 1.5\nt: yes\no: off\nz: ~\nd: 2024-04-01\ns: '3'\nq: !!str 4\n", file="s.yaml"
    )
    assert document == {
        "n": 3, "f": 1.5, "t": True, "o": False, "z": None, "d": dt.date(2024, 4, 1), "s": "3", "q": "4",
    }


def test_line_helpers_fall_back_for_plain_values() -> None:
    """key_line and item_line give None for values that did not come from a file."""
    document = parse_yaml("a:\n  - x\n  - y\n", file="s.yaml")
    assert key_line(document, "a") == 1 and key_line(document, "missing") == 1
    assert item_line(document["a"], 1) == 3
    assert key_line({"a": 1}, "a") is None and item_line(["x"], 0) is None


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: &x 1\nb: *x\n", 1), ("a: 1\nb: *x\n", 2), ("a: 1\nb: &big [1, 2]\n", 2)],
)
def test_anchors_and_aliases_are_refused(text: str, line: int) -> None:
    """An anchor or alias is refused where it appears, before any alias could expand."""
    error = refused(text)
    assert str(error) == f"s.yaml:{line}: anchors and aliases are not supported in scenario files — write the value out"


def test_alias_bomb_is_refused_quickly() -> None:
    """A billion-laughs document is refused at its first anchor, not expanded."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    assert refused(bomb).line == 1


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("a: !!python/object:os.system x\n", "!!python/object:os.system"),
        ("a: !!python/name:os.system ''\n", "!!python/name:os.system"),
        ("a: !!set {x}\n", "!!set"),
        ("a: !!binary aGk=\n", "!!binary"),
        ("a: !custom 1\n", "!custom"),
    ],
)
def test_non_standard_tags_are_refused(text: str, tag: str) -> None:
    """Tags outside plain YAML values are refused with the tag named."""
    error = refused(text)
    assert (error.line, error.problem) == (1, f"the tag {tag} is not supported")
    assert error.hint == "remove the tag and write a plain value"


def test_merge_keys_are_refused() -> None:
    """A `<<` merge key is refused like the aliases it exists for."""
    assert refused("a: 1\n<<: {b: 2}\n").line == 2


def test_duplicate_keys_are_refused_at_the_second() -> None:
    """A repeated key is reported on its second line with the first one in the hint."""
    error = refused("name: a\nsteps: []\nname: b\n")
    assert str(error) == "s.yaml:3: duplicate key 'name' — it is already set on line 1"


@pytest.mark.parametrize(("text", "key"), [("yes: 1\n", "yes"), ("a: 1\n2: x\n", "2"), ("~: 1\n", "~")])
def test_non_string_keys_are_refused(text: str, key: str) -> None:
    """Keys YAML reads as booleans, numbers or null are refused with a hint to quote them."""
    error = refused(text)
    assert error.problem == f"key {key!r} is not text"
    assert error.hint is not None and f'"{key}":' in error.hint


def test_complex_keys_are_refused() -> None:
    """A `? [a]` complex key is refused."""
    assert refused("? [a]\n: 1\n").problem == "a key must be plain text"


@pytest.mark.parametrize(("text", "line"), [("- a\n- b\n", 1), ("hello\n", 1), ("\n\n[1]\n", 3)])
def test_a_document_that_is_not_a_mapping_is_refused(text: str, line: int) -> None:
    """A list or a bare value at the top is refused where it starts."""
    error = refused(text)
    assert (error.line, error.problem) == (line, "the file must hold a mapping of `key: value` lines")


def test_an_empty_file_is_refused() -> None:
    """An empty file (or only comments) is refused."""
    assert refused("# nothing\n").problem == "the file is empty"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("a: 1\nb: c: d\n", 2, "invalid YAML: mapping values are not allowed here"),
        ("a: 'open\nb: 2\n", 3, "invalid YAML: found unexpected end of stream"),
        ("a:\n\tb: 1\n", 2, "invalid YAML: found character '\\t' that cannot start any token"),
    ],
)
def test_broken_yaml_reports_the_problem_line(text: str, line: int, problem: str) -> None:
    """A syntax error is reported on the line of YAML's problem mark."""
    error = refused(text)
    assert (error.file, error.line, error.problem) == ("s.yaml", line, problem)


def test_tabs_get_their_own_hint() -> None:
    """Indenting with a tab gets a hint to use spaces."""
    assert refused("a:\n\tb: 1\n").hint == "indent with spaces, not tabs"


def test_multiple_documents_are_refused() -> None:
    """A second `---` document is refused at the line that starts it."""
    assert str(refused("a: 1\n---\nb: 2\n")) == (
        "s.yaml:2: invalid YAML: the file holds more than one YAML document — remove the `---` line; one scenario per file"
    )


def test_control_characters_are_refused_on_their_line() -> None:
    """A control character is refused on its line rather than crashing the reader."""
    error = refused("a: 1\nb: \x07\n")
    assert (error.line, error.problem) == (2, "invalid YAML: the character U+0007 is not allowed")


def test_deep_nesting_is_refused() -> None:
    """Nesting deep enough to exhaust the parser's recursion is a ScenarioError."""
    assert refused("a: " + "[" * 5000 + "]" * 5000 + "\n").problem == "invalid YAML: nested too deeply"


def test_files_over_one_mebibyte_are_refused(tmp_path: Path) -> None:
    """A file over 1 MiB is refused before it is parsed."""
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ScenarioError, match="larger than 1 MiB") as caught:
        load_yaml(path)
    assert caught.value.file == str(path)


def test_load_yaml_reports_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    """A missing file and a file that is not UTF-8 are ScenarioErrors naming the file."""
    with pytest.raises(ScenarioError, match="cannot read the file"):
        load_yaml(tmp_path / "missing.yaml")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(ScenarioError) as caught:
        load_yaml(path, file="shown.yaml")
    assert str(caught.value) == "shown.yaml:2: the file is not UTF-8 text — save it as UTF-8"


def test_check_keys_suggests_the_closest_key() -> None:
    """An unknown key is reported on its line with the closest valid key suggested."""
    document = parse_yaml("name: a\nsubjet: b\n", file="s.yaml")
    with pytest.raises(ScenarioError) as caught:
        check_keys(document, ("name", "subject"), file="s.yaml", field="steps[0]")
    assert str(caught.value) == "s.yaml:2: steps[0].subjet: unknown key 'subjet' — did you mean 'subject'?"


def test_did_you_mean_lists_choices_when_nothing_is_close() -> None:
    """With no close match the hint lists every valid choice."""
    assert did_you_mean("zzz", ["b", "a"]) == "expected one of: a, b"


def test_subfield_builds_dotted_paths() -> None:
    """Paths read like `steps[2].wait`."""
    assert subfield(subfield(subfield("", "steps"), 2), "wait") == "steps[2].wait"


# Control and line-separator characters are left out: PyYAML itself does not round-trip them.
words = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=10)
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | words,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(words, children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(words, plain, min_size=1, max_size=4))
def test_safe_dumped_data_round_trips(data: dict[str, object]) -> None:
    """Whatever yaml.safe_dump writes from plain data reads back equal."""
    assert parse_yaml(yaml.safe_dump(data, allow_unicode=True), file="s.yaml") == data


@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_mapping_or_a_scenario_error(text: str) -> None:
    """No input makes the loader raise anything but ScenarioError."""
    try:
        assert isinstance(parse_yaml(text, file="s.yaml"), YamlMap)
    except ScenarioError as error:
        assert error.file == "s.yaml"


@given(st.lists(st.sampled_from(["a", ":", " ", "\n", "-", "[", "]", "{", "}", "&", "*", "!", "'", '"', "#", "?", ",", "1", "|"]), max_size=60))
def test_yaml_shaped_text_gives_a_mapping_or_a_scenario_error(pieces: list[str]) -> None:
    """Text built from YAML's own punctuation never escapes as another exception."""
    try:
        parse_yaml("".join(pieces), file="s.yaml")
    except ScenarioError:
        pass


def section(text: str) -> Section:
    return Section(parse_yaml(text, file="s.yaml"), "s.yaml", "step")


def section_refusal(read: Callable[[], object]) -> str:
    with pytest.raises(ScenarioError) as caught:
        read()
    return str(caught.value)


def test_section_text_reads_one_stripped_line_and_refuses_the_rest() -> None:
    """A text field is one stripped line; a missing, valueless, non-text, blank or multi-line one is told apart."""
    fields = section("a: ' hi '\nnone:\nnumber: 404\nblank: ' '\nlines: |\n  x\n  y\n")
    assert fields.text("a", hint="h") == "hi" and fields.text("none", hint="h") is None
    assert fields.text("number", hint="h", numbers=True) == "404"
    assert section_refusal(lambda: fields.text("gone", hint="h", required=True)) == "s.yaml:1: step.gone: missing required key 'gone' — h"
    assert section_refusal(lambda: fields.text("none", hint="h", required=True)) == "s.yaml:2: step.none: has no value — h"
    assert section_refusal(lambda: fields.text("number", hint="h")) == "s.yaml:3: step.number: must be text, not a number — h"
    assert section_refusal(lambda: fields.text("blank", hint="h")) == "s.yaml:4: step.blank: is empty — h"
    assert section_refusal(lambda: fields.text("lines", hint="h")) == "s.yaml:5: step.lines: must be one line — h"


def test_section_duration_reads_durations_and_refuses_short_ones() -> None:
    """A duration field parses mailer.durations, reads a bare 0 only when asked, and enforces its minimum."""
    fields = section("wait: 2d\nzero: 0\nshort: 30m\nbad: 2 days\n")
    assert fields.duration("wait") == dt.timedelta(days=2) and fields.duration("zero", numbers=True) == dt.timedelta(0)
    assert section_refusal(lambda: fields.duration("zero")).startswith("s.yaml:2: step.zero: must be a duration, not a number — ")
    assert section_refusal(lambda: fields.duration("short", at_least=dt.timedelta(hours=1), at_least_hint="e.g. 1d")) == (
        "s.yaml:3: step.short: must be at least 1h — e.g. 1d"
    )
    assert section_refusal(lambda: fields.duration("bad", hint="h")) == "s.yaml:4: step.bad: '2 days' is not a duration — h"


def test_section_errors_take_the_subclass_error_class_and_nest() -> None:
    """A subclass picks the UserError its file raises, and an inner section keeps it and extends the field."""

    class Scoring(Section):
        error_class: ClassVar[type[UserError]] = ScoringError

    fields = Scoring(parse_yaml("decay:\n  half_life: soon\n", file="s.yaml"), "s.yaml", "")
    error = fields.inner("decay").error("half_life", "nope")
    assert isinstance(error, ScoringError) and str(error) == "s.yaml:2: decay.half_life: nope"
