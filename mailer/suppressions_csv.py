"""Suppression lists as CSV files: reading an import, writing a spreadsheet-safe export.

Pure file work; `mailer.suppressing` runs the commands. An import needs one column of
addresses: a header naming it (any of the lead import's names for the email column), or no
header at all when the first row already holds an address. Other columns are ignored, and an
export of ours reads back as it was written (the formula-guarding quote comes off). A row
whose address is not valid is a `Rejection` with its line, like a lead import's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from email_validator import EmailNotValidError

from mailer.csvexport import FORMULA_STARTS, write_csv
from mailer.csvimport import FIELD_ALIASES, Rejection, _detect_encoding, _header_key, _numbered_rows, normalize_email
from mailer.errors import LeadImportError
from mailer.store import Suppression
from mailer.timestamps import ms

EXPORT_COLUMNS = ("email", "list", "reason", "detail", "created_at")

_EMAIL_HEADERS = frozenset(_header_key(alias) for alias in FIELD_ALIASES["email"])


@dataclass(frozen=True)
class SuppressionFile:
    """The addresses an import file holds, in file order and deduplicated, and its bad rows."""

    addresses: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    rows: int  # data rows read, blank rows not counted


def read_suppressions_csv(path: Path) -> SuppressionFile:
    """Read the addresses to suppress from `path`; raises `LeadImportError` for an unusable file."""
    file = str(path)
    try:
        stream = path.open(encoding=_detect_encoding(path), newline="")
    except OSError as error:
        raise LeadImportError(f"cannot read the file: {error.strerror or error}", file=file) from error
    addresses: dict[str, None] = {}
    rejected: list[Rejection] = []
    rows = 0
    with stream:
        numbered = _numbered_rows(stream, file=file)
        first = next(numbered, None)
        if first is None:
            raise LeadImportError("the file is empty", file=file, hint="put one address per row, under a header `email`")
        line, cells = first
        column = _email_column(cells)
        pending: Iterable[tuple[int, list[str]]] = numbered
        if column is None:
            column = next((i for i, cell in enumerate(cells) if "@" in cell), None)
            if column is None:
                raise LeadImportError(
                    "no column holds the email address", file=file, line=line, field="email",
                    hint="name the address column one of: " + ", ".join(FIELD_ALIASES["email"]),
                )
            pending = [first, *numbered]  # no header: the first row is an address already
        for line, cells in pending:
            rows += 1
            cell = cells[column].strip() if column < len(cells) else ""
            if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS):
                cell = cell[1:]  # the quote our own export put there (mailer.csvexport)
            if not cell:
                rejected.append(Rejection(line=line, email="", reason="The email address is empty."))
                continue
            try:
                addresses[normalize_email(cell)] = None
            except EmailNotValidError as error:
                rejected.append(Rejection(line=line, email=cell, reason=str(error)))
    return SuppressionFile(addresses=tuple(addresses), rejected=tuple(rejected), rows=rows)


def _email_column(cells: Sequence[str]) -> int | None:
    return next((i for i, cell in enumerate(cells) if _header_key(cell) in _EMAIL_HEADERS), None)


def write_suppressions_csv(stream: TextIO, suppressions: Iterable[Suppression]) -> int:
    """Export suppressions as email,list,reason,detail,created_at; returns the rows written.

    `created_at` is ISO 8601 in UTC; every cell is formula-safe (mailer.csvexport).
    """
    return write_csv(
        stream,
        EXPORT_COLUMNS,
        (
            (
                s.email, s.list_name, s.reason, s.detail,
                s.created_at.isoformat(timespec="seconds") if s.created_at is not None else "",
            )
            for s in suppressions
        ),
    )


def created_order(suppressions: Iterable[Suppression]) -> list[Suppression]:
    """Oldest first, the order an export is easiest to diff in."""
    return sorted(suppressions, key=lambda s: (ms(s.created_at) if s.created_at else 0, s.email, s.list_name))
