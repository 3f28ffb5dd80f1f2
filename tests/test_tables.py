"""Terminal tables stay in line with Japanese names: widths by East Asian Width, not by len."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from mailer.tables import aligned, display_width, pad


def test_wide_characters_take_two_columns_and_marks_none() -> None:
    """山田 太郎 is 9 columns, full-width Ａ 2, half-width ｶ 1, a decomposed ガ 2 and é with a combining accent 1."""
    assert display_width("山田 太郎") == 9
    assert display_width("山田精機株式会社") == 16
    assert display_width("Ａ") == 2 and display_width("ｶ") == 1
    assert display_width(unicodedata.normalize("NFD", "ガ")) == 2  # カ + U+3099, as a Mac writes file names
    assert display_width("e\u0301") == 1 and display_width("a\u200db") == 2  # a zero-width joiner takes nothing


def test_pad_fills_to_display_width_on_either_side() -> None:
    """Padding counts columns: 山田 in 6 columns gets two spaces, on the right for numbers."""
    assert pad("山田", 6) == "山田  " and pad("山田", 6, right=True) == "  山田"
    assert pad("toolong", 3) == "toolong"


def test_aligned_columns_start_at_the_same_display_column() -> None:
    """After a Japanese name, the next column starts where it does after an English one."""
    lines = aligned([["name", "score", "company"], ["山田 太郎", "5", "山田精機株式会社"], ["Ann Lee", "120", "Acme"]],
                    right={1})
    assert lines == ["name       score  company", "山田 太郎      5  山田精機株式会社", "Ann Lee      120  Acme"]
    starts = {display_width(line[: line.index(word)]) for line, word in zip(lines, ["company", "山田精機", "Acme"])}
    assert starts == {18}


@given(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), min_size=1, max_size=5))
def test_every_second_column_starts_at_one_column(rows: list[tuple[str, str]]) -> None:
    """Whatever the text, the first column is padded to one display width."""
    rows = [(a.replace("\n", ""), "|" + b) for a, b in rows]
    firsts = [a for a, _ in rows]
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for a in firsts for c in a):
        return  # control characters have no column width to speak of
    lines = aligned(rows)
    assert {display_width(line[: line.index("|", len(a))]) for line, (a, _) in zip(lines, rows)} == {
        max(display_width(a) for a in firsts) + 2
    }
