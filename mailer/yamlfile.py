"""Read a YAML file written by a marketer, safely, remembering the line of every value.

PyYAML's loaders throw line numbers away once values are built, and we need them to say
``scenarios/welcome.yaml:12: steps[1].wait: ...``. So we let PyYAML compose the node graph
(with SafeLoader's resolver) and build the values ourselves: mappings become `YamlMap`,
sequences `YamlList`, both carrying the 1-based lines of their keys and items.

Anything beyond plain data is refused rather than interpreted: anchors and aliases (an alias
bomb expands a few hundred bytes into gigabytes), tags outside the core schema (`!!python/…`
would construct arbitrary objects under an unsafe loader), merge keys, duplicate keys (YAML
silently keeps the last one, so a marketer's first value would vanish) and non-string keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml

from mailer import durations
from mailer.errors import ScenarioError, UserError

# A scenario is a few kilobytes; a megabyte is already absurd and caps parse time and memory.
MAX_BYTES = 1024 * 1024
# A scenario nests a handful of levels (steps, a step, a condition, its any/all); refusing
# far deeper input on its line beats PyYAML's composer running out of recursion.
MAX_DEPTH = 64

_CORE = "tag:yaml.org,2002:"
# The tags SafeLoader resolves plain YAML values to, plus `map` and `seq`. Everything else
# (`!!set`, `!!omap`, `!!binary`, `!!python/object`, custom `!tags`) is refused.
_SCALAR_TAGS = frozenset(_CORE + name for name in ("str", "int", "float", "bool", "null", "timestamp"))
_MAP_TAG = _CORE + "map"
_SEQ_TAG = _CORE + "seq"
_ANCHOR_HINT = "write the value out"


class YamlMap(dict[str, Any]):
    """A YAML mapping that remembers its own line and the line of each of its keys."""

    def __init__(self, *, line: int = 0, key_lines: dict[str, int] | None = None) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {} if key_lines is None else key_lines


class YamlList(list[Any]):
    """A YAML sequence that remembers its own line and the line of each item."""

    def __init__(self, *, line: int = 0, item_lines: list[int] | None = None) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = [] if item_lines is None else item_lines


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases while composing, before any expansion."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            problem = "anchors and aliases are not supported in scenario files"
            raise _Refused(problem, _line(event.start_mark), _ANCHOR_HINT)
        if self.depth >= MAX_DEPTH:
            raise _Refused("invalid YAML: nested too deeply", _line(event.start_mark), "flatten the structure")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Refused(Exception):
    """Carries a refusal out of PyYAML's composer to `parse_yaml`, which adds the file."""

    def __init__(self, problem: str, line: int, hint: str) -> None:
        super().__init__(problem)
        self.problem, self.line, self.hint = problem, line, hint


def load_yaml(path: Path, *, file: str | None = None) -> YamlMap:
    """Read and parse the YAML mapping in `path`; errors name `file` (default: the path)."""
    name = str(path) if file is None else file
    try:
        if path.stat().st_size > MAX_BYTES:
            raise _too_big(name)
        raw = path.read_bytes()
    except OSError as error:
        raise ScenarioError(f"cannot read the file: {error.strerror or error}", file=name) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ScenarioError(
            "the file is not UTF-8 text", file=name, line=line, hint="save it as UTF-8"
        ) from None
    return parse_yaml(text, file=name)


def parse_yaml(text: str, *, file: str) -> YamlMap:
    """Parse `text` as one YAML document holding a mapping; errors name `file`."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise _too_big(file)
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise ScenarioError("the file is empty", file=file, line=1, hint="start with `name: ...`")
        if not isinstance(node, yaml.MappingNode) or node.tag != _MAP_TAG:
            raise ScenarioError(
                "the file must hold a mapping of `key: value` lines",
                file=file,
                line=_line(node.start_mark),
                hint="start with `name: ...`",
            )
        document = _build(node, loader)
        assert isinstance(document, YamlMap)
        return document
    except _Refused as refusal:
        raise ScenarioError(refusal.problem, file=file, line=refusal.line, hint=refusal.hint) from None
    except yaml.MarkedYAMLError as error:
        raise _broken(error, file) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        raise ScenarioError(
            f"invalid YAML: the character U+{error.character:04X} is not allowed",
            file=file,
            line=line,
            hint="remove it (YAML allows no control characters)",
        ) from None
    except RecursionError:
        raise ScenarioError(
            "invalid YAML: nested too deeply", file=file, hint="flatten the structure"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _build(node: yaml.Node, loader: _Loader) -> Any:
    line = _line(node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        if node.tag not in _SCALAR_TAGS:
            raise _unsupported_tag(node.tag, line)
        try:
            return loader.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError):
            problem = f"{node.value!r} is not a valid {node.tag.removeprefix(_CORE)}"
            raise _Refused(problem, line, "remove the `!!` tag or fix the value") from None
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ_TAG:
            raise _unsupported_tag(node.tag, line)
        items = YamlList(line=line)
        for item in node.value:
            items.append(_build(item, loader))
            items.item_lines.append(_line(item.start_mark))
        return items
    assert isinstance(node, yaml.MappingNode)
    if node.tag != _MAP_TAG:
        raise _unsupported_tag(node.tag, line)
    mapping = YamlMap(line=line)
    for key_node, value_node in node.value:
        key_line = _line(key_node.start_mark)
        if key_node.tag == _CORE + "merge":
            raise _Refused("merge keys (<<) are not supported in scenario files", key_line, _ANCHOR_HINT)
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Refused("a key must be plain text", key_line, "write the key as a word followed by ':'")
        key = _build(key_node, loader)
        if not isinstance(key, str):
            raise _Refused(
                f"key {key_node.value!r} is not text",
                key_line,
                f'put it in quotes: "{key_node.value}": (YAML reads yes, no, on, off and numbers as values)',
            )
        if key in mapping:
            hint = f"it is already set on line {mapping.key_lines[key]}"
            raise _Refused(f"duplicate key {key!r}", key_line, hint)
        mapping[key] = _build(value_node, loader)
        mapping.key_lines[key] = key_line
    return mapping


def _line(mark: Any) -> int:  # Any: the stubs split Mark between yaml.error and yaml._yaml
    return 1 if mark is None else mark.line + 1


def _too_big(file: str) -> ScenarioError:
    return ScenarioError(  # line 1: the file as a whole, so that every refusal reads file:line
        f"the file is larger than {MAX_BYTES // 1024 // 1024} MiB", file=file, line=1, hint="split it into several scenarios"
    )


def _unsupported_tag(tag: str, line: int) -> _Refused:
    shown = "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag
    return _Refused(f"the tag {shown} is not supported", line, "remove the tag and write a plain value")


def _broken(error: yaml.MarkedYAMLError, file: str) -> ScenarioError:
    mark = error.problem_mark or error.context_mark
    problem = error.problem or error.context or "cannot be parsed"
    hint = "check indentation and quotes here; quote values that contain ': ' or start with * & ! % @ `"
    if "another document" in problem:
        problem = "the file holds more than one YAML document"
        hint = "remove the `---` line; one scenario per file"
    elif "'\\t'" in problem:
        hint = "indent with spaces, not tabs"
    return ScenarioError(f"invalid YAML: {problem}", file=file, line=_line(mark), hint=hint)


# Helpers for the modules that turn a YamlMap into domain values.


def key_line(mapping: Mapping[str, Any], key: str) -> int | None:
    """The line of `key` in `mapping`, or of the mapping itself, when it came from a file."""
    if isinstance(mapping, YamlMap):
        return mapping.key_lines.get(key, mapping.line)
    return None


def item_line(items: Sequence[Any], index: int) -> int | None:
    """The line of item `index` in `items`, when it came from a file."""
    if isinstance(items, YamlList) and index < len(items.item_lines):
        return items.item_lines[index]
    return line_of(items)


def line_of(value: object) -> int | None:
    """The line a YamlMap or YamlList starts on; None for anything else."""
    return value.line if isinstance(value, (YamlMap, YamlList)) else None


def subfield(parent: str, key: str | int) -> str:
    """The dotted path of `key` under `parent`: ``steps[2]`` + ``wait`` → ``steps[2].wait``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def closest(word: str, choices: Collection[str]) -> str | None:
    """The one of `choices` that `word` is most likely a misspelling of, if any is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    if not close:
        folded = [choice for choice in choices if choice.casefold() == word.casefold()]
        close = folded[:1]
    return close[0] if close else None


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """A hint naming the closest of `choices` to `word`, or listing them all."""
    close = closest(word, choices)
    if close is not None:
        return f"did you mean {close!r}?"
    return "expected one of: " + ", ".join(sorted(choices))


def check_keys(
    mapping: Mapping[str, Any], valid: Collection[str], *, file: str | None, field: str
) -> None:
    """Refuse the first key of `mapping` that is not in `valid`, suggesting the closest."""
    for key in mapping:
        if key not in valid:
            raise ScenarioError(
                f"unknown key {key!r}",
                file=file,
                line=key_line(mapping, key),
                field=subfield(field, key),
                hint=did_you_mean(key, valid),
            )


def describe(value: object) -> str:
    """What kind of YAML value `value` is, in a marketer's words."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text" if value.strip() else "empty text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "a date" if hasattr(value, "isoformat") else type(value).__name__


@dataclass(frozen=True)
class Section:
    """One mapping of a rules file and its dotted path, to read its values and report errors.

    Scenario files, lists.yaml and scoring.yaml read their fields through this one class, so
    a field says "must be text" or "is not a duration" the same way in each of them; a file
    whose mistakes are another kind of UserError sets `error_class`.
    """

    mapping: Mapping[str, Any]
    file: str | None
    field: str
    error_class: ClassVar[type[UserError]] = ScenarioError

    def error(self, key: str | None, problem: str, hint: str | None = None, *, line: int | None = None) -> UserError:
        """An error about `key` (or the whole mapping), at its line unless `line` is given."""
        where = line or (line_of(self.mapping) if key is None else key_line(self.mapping, key))
        field = self.field if key is None else subfield(self.field, key)
        return self.error_class(problem, file=self.file, line=where, field=field or None, hint=hint)

    def inner(self, key: str) -> Self:
        """The mapping under `key` (checked to be one by the caller) as a section of its own."""
        return replace(self, mapping=self.mapping[key], field=subfield(self.field, key))

    def required(self, key: str, hint: str) -> Any:
        """The value under `key`, refused when the key is missing or has no value."""
        if key not in self.mapping:
            raise self.error(key, f"missing required key {key!r}", hint)
        if self.mapping[key] is None:
            raise self.error(key, "has no value", hint)
        return self.mapping[key]

    def text(
        self, key: str, *, hint: str, required: bool = False, numbers: bool = False, empty: str = "is empty"
    ) -> str | None:
        """The one line of text under `key`, stripped; None when it is absent or has no value.

        `required` refuses an absent or valueless key instead; `numbers` reads a number as its
        text (`name: 404`); `empty` is the problem told of blank text.
        """
        value = self.required(key, hint) if required else self.mapping.get(key)
        if value is None:
            return None
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(key, f"must be text, not {describe(value)}", hint)
        if not value.strip():
            raise self.error(key, empty, hint)
        if "\n" in value.strip():
            raise self.error(key, "must be one line", hint)
        return value.strip()

    def duration(
        self,
        key: str,
        *,
        hint: str = durations.HINT,
        numbers: bool = False,
        expected: str = "a duration",
        at_least: timedelta | None = None,
        at_least_hint: str | None = None,
    ) -> timedelta:
        """The duration under `key` (mailer.durations), refused when shorter than `at_least`.

        `numbers` reads a whole number as text, so `wait: 0` is a duration and `wait: 90` is
        told it has no unit; `expected` is what any other value is told it must be.
        """
        value = self.mapping.get(key)
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(key, f"must be {expected}, not {describe(value)}", hint)
        try:
            length = durations.parse_duration(value)
        except ValueError as error:
            raise self.error(key, str(error), hint) from None
        if at_least is not None and length < at_least:
            raise self.error(key, f"must be at least {durations.format_duration(at_least)}", at_least_hint)
        return length
