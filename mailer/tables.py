"""Plain-text tables for the terminal, aligned by the columns a terminal gives each character.

`str.ljust` counts characters, but a terminal gives East Asian wide and full-width characters
(山田 太郎, 山田精機株式会社) two columns and combining marks none,
so a table padded by `len` goes out of line after a Japanese name. Widths follow Unicode
Standard Annex #11 (East Asian Width): W and F take two columns, combining marks and format
characters (zero-width joiner, soft hyphen) none, anything else one. Ambiguous (A) characters
take one, as in every terminal outside a CJK legacy setting.

The standard library's unicodedata is enough for lead data (names, companies, titles); the
emoji sequences that need wcwidth's tables are rare there, and a dependency is not worth them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Sequence

_ZERO_WIDTH_CATEGORIES = frozenset({"Mn", "Me", "Cf"})  # nonspacing and enclosing marks, format characters


def display_width(text: str) -> int:
    """The columns a terminal gives `text`: 山田 is 4, e + a combining acute accent is 1."""
    width = 0
    for char in text:
        if unicodedata.category(char) in _ZERO_WIDTH_CATEGORIES:
            continue
        width += 2 if unicodedata.east_asian_width(char) in "WF" else 1
    return width


def pad(text: str, width: int, *, right: bool = False) -> str:
    """`text` filled with spaces to `width` columns, on the left when `right` (numbers)."""
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def aligned(rows: Sequence[Sequence[str]], *, right: Collection[int] = (), ragged_last: bool = True) -> list[str]:
    """The rows as lines of columns two spaces apart, the columns in `right` right-aligned.

    The last column is left ragged unless `ragged_last` is False; trailing spaces are dropped.
    """
    if not rows:
        return []
    count = max(len(row) for row in rows)
    widths = [max((display_width(row[i]) for row in rows if i < len(row)), default=0) for i in range(count)]
    lines = []
    for row in rows:
        cells = [
            cell if ragged_last and i == count - 1 and i not in right else pad(cell, widths[i], right=i in right)
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
