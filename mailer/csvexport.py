"""CSV files that are safe to open in a spreadsheet: no cell can run as a formula.

Exports carry text that outsiders wrote (an address, a bounce diagnostic, a form's source).
A cell starting with ``=``, ``+``, ``-`` or ``@`` is read by Excel, LibreOffice and Google
Sheets as a formula, and one starting with a tab or carriage return can hide such a start;
OWASP's "CSV Injection" guidance is to prefix every such cell with a single quote, which the
spreadsheet shows as text. A value that merely contains those characters later is harmless.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import TextIO

# OWASP, CSV Injection: the characters that make a cell a formula when they start it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(value: object) -> str:
    """The cell's text, with a leading single quote when a spreadsheet would run it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_csv(stream: TextIO, header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    """Write a header and rows with every cell made formula-safe; returns the rows written."""
    writer = csv.writer(stream, lineterminator="\r\n")  # RFC 4180 2.1: CRLF ends a record
    writer.writerow([formula_safe(name) for name in header])
    count = 0
    for row in rows:
        writer.writerow([formula_safe(cell) for cell in row])
        count += 1
    return count
