"""Conditions as one line of text: the short form a marketer writes, the words a salesperson reads.

The short form reads like ``"score >= 50 and grade >= B"``:

    CONDITION := TEST (and TEST)* (or TEST (and TEST)*)*
    TEST      := NAME OP VALUE        OP: >= > <= < = == !=

`and` binds tighter than `or`, as in SQL and Python; there are no parentheses (a mapping with
`all:`/`any:` groups anything longer). A VALUE is one word, or any text in quotes. This module
only reads the syntax; mailer.conditions checks the values and builds the condition tree, so
both forms share every rule about names and values.

Explanations (`Condition.explain`) write a test with the lead's own value, in `READS`'s
symbols: "score 55 ≥ 50 and grade B ≥ B".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SYMBOLS: Mapping[str, str] = {
    ">=": "gte", ">": "gt", "<=": "lte", "<": "lt", "=": "equals", "==": "equals", "!=": "not_equals",
}
_TOKEN = re.compile(
    r"""\s*(?:(?P<quoted>"[^"]*"|'[^']*')|(?P<symbol>>=|<=|==|!=|=|>|<)|(?P<word>[^\s<>=!"'()]+)|(?P<other>\S))"""
)
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,18}\.[0-9]{0,18}|\.[0-9]{1,18})")
# How an attribute test reads when it holds and when it fails.
READS: Mapping[str, tuple[str, str]] = {
    "equals": ("=", "≠"), "not_equals": ("≠", "="), "gt": (">", "≤"), "gte": ("≥", "<"), "lt": ("<", "≥"),
    "lte": ("≤", ">"), "in": ("in", "not in"), "not_in": ("not in", "in"), "contains": ("contains", "does not contain"),
}
HINT = 'write NAME OP VALUE joined by and/or, e.g. "score >= 50 and grade >= B"; quote values with spaces'


class ShortFormError(Exception):
    """The text is not a short-form condition; mailer.conditions adds where it is written."""

    def __init__(self, problem: str, hint: str = HINT) -> None:
        super().__init__(problem)
        self.problem, self.hint = problem, hint


@dataclass(frozen=True)
class Clause:
    """One NAME OP VALUE test as written."""

    name: str
    symbol: str  # as written: ">="
    value: str | int | float  # a quoted value stays text; a bare number is read as one

    @property
    def op(self) -> str:
        """The operator's name in the mapping form (">=" → "gte")."""
        return SYMBOLS[self.symbol]


@dataclass(frozen=True)
class _Token:
    kind: str  # quoted | symbol | word | other
    text: str

    def keyword(self) -> str | None:
        folded = self.text.casefold()
        return folded if self.kind == "word" and folded in ("and", "or", "not") else None


def parse_short_form(text: str) -> list[list[Clause]]:
    """The alternatives (joined by `or`) of `text`, each a list of clauses joined by `and`."""
    tokens = [_Token(match.lastgroup or "", match.group(match.lastgroup or 0)) for match in _TOKEN.finditer(text)]
    if len(tokens) == 1 and tokens[0].kind == "word":
        hint = 'write NAME OP VALUE such as "score >= 50", or a mapping such as {opened: STEP_ID}'
        raise ShortFormError("one word is not a condition", hint)
    alternatives: list[list[Clause]] = [[]]
    position = 0
    while True:
        clause, position = _clause(tokens, position)
        alternatives[-1].append(clause)
        if position == len(tokens):
            return alternatives
        joiner = tokens[position].keyword()
        if joiner not in ("and", "or"):
            raise ShortFormError(f"expected `and` or `or` before {tokens[position].text!r}")
        if joiner == "or":
            alternatives.append([])
        position += 1


def _clause(tokens: list[_Token], position: int) -> tuple[Clause, int]:
    """The clause starting at `position`, and the position after it."""
    where = f"after {tokens[position - 1].text!r}" if position else "at the start"
    if position == len(tokens):
        raise ShortFormError(f"expected a field name {where}")
    name = tokens[position]
    for token in tokens[position:position + 3]:
        if token.kind == "other":
            raise _misplaced(token.text)
    if name.keyword() == "not":
        raise ShortFormError("`not` has no short form", "write {not: CONDITION}")
    if name.kind != "word" or name.keyword() is not None:
        raise ShortFormError(f"expected a field name {where}, not {name.text!r}")
    if name.text in ("sent", "opened", "clicked"):
        raise ShortFormError(f"{name.text!r} has no short form", f"write {{{name.text}: STEP_ID}}")
    if position + 1 == len(tokens) or tokens[position + 1].kind != "symbol":
        found = "nothing" if position + 1 == len(tokens) else repr(tokens[position + 1].text)
        raise ShortFormError(f"expected an operator after {name.text!r}, found {found}", "operators: " + " ".join(SYMBOLS))
    symbol = tokens[position + 1].text
    if position + 2 == len(tokens) or tokens[position + 2].kind not in ("word", "quoted") or tokens[position + 2].keyword():
        raise ShortFormError(f"expected a value after {symbol!r}")
    token = tokens[position + 2]
    value: str | int | float = token.text
    if token.kind == "quoted":
        value = token.text[1:-1]
    elif _INTEGER.fullmatch(token.text):
        value = int(token.text)
    elif _DECIMAL.fullmatch(token.text):
        value = float(token.text)
    return Clause(name.text, symbol, value), position + 3


def _misplaced(character: str) -> ShortFormError:
    if character in "()":
        return ShortFormError("parentheses are not supported", "group tests with a mapping: {any: [...]} or {all: [...]}")
    if character in "\"'":
        return ShortFormError(f"a {character} quote is not closed", "end the quoted value with the same quote")
    if character == "!":
        return ShortFormError("'!' is not an operator", "write != for not equal")
    return ShortFormError(f"{character!r} is not allowed here")


def shown(value: object) -> str:
    """A value as an explanation shows it: 50.0 as 50, true/false, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(map(shown, value))
    return str(value)
