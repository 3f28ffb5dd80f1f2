"""mailer.suppressions_csv: what an import file says about each row, and the export read back."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.consent import REASONS
from mailer.csvexport import FORMULA_STARTS
from mailer.store import Suppression
from mailer.suppressions_csv import read_suppressions_csv, write_suppressions_csv

T0 = datetime(2026, 1, 5, 9, 0, 0, 123000, tzinfo=timezone.utc)


def test_a_plain_address_list_gets_the_commands_list_reason_and_detail(tmp_path: Path) -> None:
    """A file of addresses only gives every row the options' scope, reason and detail, and no date."""
    source = tmp_path / "plain.csv"
    source.write_text("E-mail,name\nAnn@Example.com,Ann\nbob@example.com,Bob\n")
    plan = read_suppressions_csv(source, list_name="news", reason="unsubscribe", detail="imported from plain.csv")
    assert plan.columns == frozenset() and plan.rows == 2 and plan.rejected == ()
    assert plan.suppressions == (
        Suppression("ann@example.com", "unsubscribe", "news", "imported from plain.csv"),
        Suppression("bob@example.com", "unsubscribe", "news", "imported from plain.csv"),
    )


def test_an_exports_columns_give_each_row_its_own_scope_reason_detail_and_date(tmp_path: Path) -> None:
    """list, reason, detail and created_at come from the row, formula quotes off; an empty list is every list."""
    source = tmp_path / "export.csv"
    source.write_text(
        "email,list,reason,detail,created_at\n"
        "a@example.com,,hard-bounce,550 5.1.1 no such user,2026-01-05T09:00:00.123+00:00\n"
        "a@example.com,'@SUM(A1:A9),unsubscribe,'=1+1,2026-01-05T10:00:00+00:00\n"
        "b@example.com,news,,,\n"
    )
    plan = read_suppressions_csv(source, list_name="ignored", reason="complaint", detail="ignored")
    assert plan.columns == frozenset({"list", "reason", "detail", "created_at"})
    assert plan.suppressions == (
        Suppression("a@example.com", "hard-bounce", "", "550 5.1.1 no such user", T0),
        Suppression("a@example.com", "unsubscribe", "@SUM(A1:A9)", "=1+1", T0 + timedelta(minutes=59, seconds=59.877)),
        Suppression("b@example.com", "manual", "news", "", None),
    )


def test_the_first_row_of_an_address_and_list_wins_and_bad_rows_are_rejected_by_line(tmp_path: Path) -> None:
    """A second row for the same (address, list) is dropped; a bad reason or address is a rejection with its line."""
    source = tmp_path / "mixed.csv"
    source.write_text(
        "Email,List,Reason\n"
        "a@example.com,news,complaint\n"
        "A@example.com,news,manual\n"
        "a@example.com,deals,manual\n"
        "c@example.com,news,bounced\n"
        "not-an-address,news,manual\n"
    )
    plan = read_suppressions_csv(source)
    assert [(s.email, s.list_name, s.reason) for s in plan.suppressions] == [
        ("a@example.com", "news", "complaint"), ("a@example.com", "deals", "manual")
    ]
    assert [(r.line, r.email) for r in plan.rejected] == [(5, "c@example.com"), (6, "not-an-address")]
    assert "'bounced' is not one we know" in plan.rejected[0].reason and ", ".join(REASONS) in plan.rejected[0].reason


def test_a_created_at_a_spreadsheet_rewrote_is_dated_at_import_and_its_line_kept(tmp_path: Path) -> None:
    """A created_at without a zone, or not a time at all, leaves the row undated (the store dates it) and names its line."""
    source = tmp_path / "resaved.csv"
    source.write_text("email,created_at\na@example.com,2026/01/05 9:00\nb@example.com,2026-01-05T09:00:00\nc@example.com,\n")
    plan = read_suppressions_csv(source)
    assert [s.created_at for s in plan.suppressions] == [None, None, None]
    assert plan.undated == (2, 3), "an empty cell is not a date that was lost"


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
# Cells starting like a formula (each gets a quote on export), or with a quote or a space.
_cell_text = st.tuples(st.sampled_from(["", "=", "+", "-", "@", "\t", "\r", " ", "'", " '="]), _text).map("".join)


def _unambiguous(text: str) -> bool:
    """A person's own `'=…` reads back without its quote: the export cannot tell it from ours."""
    return not (text.startswith("'") and text[1:].startswith(FORMULA_STARTS))


_suppression = st.builds(
    Suppression,
    email=st.sampled_from(["a@example.com", "b@example.com", "x.y@example.jp"]),
    reason=st.sampled_from(REASONS),
    list_name=st.one_of(st.just(""), _cell_text.map(str.strip).filter(_unambiguous)),
    detail=_cell_text.filter(_unambiguous),
    created_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
    ).map(lambda when: when.replace(microsecond=when.microsecond // 1000 * 1000)),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_suppression, max_size=8, unique_by=lambda s: (s.email, s.list_name)))
def test_every_export_reads_back_as_it_was_written(tmp_path: Path, suppressions: list[Suppression]) -> None:
    """Whatever the details and list names hold (formula starts, commas, quotes, line breaks), an export reads back unchanged."""
    buffer = io.StringIO()
    write_suppressions_csv(buffer, suppressions)
    source = tmp_path / "export.csv"
    source.write_text(buffer.getvalue(), encoding="utf-8-sig", newline="")
    plan = read_suppressions_csv(source, list_name="other", reason="complaint", detail="other")
    assert plan.rejected == () and plan.undated == ()
    assert list(plan.suppressions) == suppressions
