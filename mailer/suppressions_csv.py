"""Suppression lists as CSV files: reading an import, writing a spreadsheet-safe export.

Pure file work; `mailer.suppressing` runs the commands. An import needs one column of
addresses: a header naming it (any of the lead import's names for the email column), or no
header at all when the first row already holds an address. A header may also name the
columns our export writes, `list`, `reason`, `detail` and `created_at`: each row then keeps
its own scope (an empty list is every list), reason, evidence and date, so an export reads
back as it was written (the formula-guarding quote comes off). Other columns are ignored. A
row whose address or reason is not valid is a `Rejection` with its line, like a lead import's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from email_validator import EmailNotValidError

from mailer.consent import REASONS
from mailer.csvexport import FORMULA_STARTS, write_csv
from mailer.csvimport import FIELD_ALIASES, Rejection, _detect_encoding, _header_key, _numbered_rows, normalize_email
from mailer.errors import LeadImportError
from mailer.store import Suppression
from mailer.timestamps import ms
from mailer.yamlfile import closest

EXPORT_COLUMNS = ("email", "list", "reason", "detail", "created_at")
# The export's columns besides the address, each of which a row may give for itself.
OWN_COLUMNS = EXPORT_COLUMNS[1:]

_EMAIL_HEADERS = frozenset(_header_key(alias) for alias in FIELD_ALIASES["email"])


@dataclass(frozen=True)
class SuppressionFile:
    """The suppressions an import file holds, in file order, and its bad rows."""

    suppressions: tuple[Suppression, ...]  # one per (address, list): the first row's
    rejected: tuple[Rejection, ...]
    rows: int  # data rows read, blank rows not counted
    columns: frozenset[str]  # which of OWN_COLUMNS the header names: those come from each row
    undated: tuple[int, ...] = ()  # lines whose created_at is not an ISO 8601 time with a zone


def read_suppressions_csv(path: Path, *, list_name: str = "", reason: str = "manual", detail: str = "") -> SuppressionFile:
    """Read the suppressions of `path`; raises `LeadImportError` for an unusable file.

    `list_name`, `reason` and `detail` are for the rows of a file without that column; a
    row without a usable `created_at` gets None (the store dates it with the import time).
    """
    file = str(path)
    try:
        stream = path.open(encoding=_detect_encoding(path), newline="")
    except OSError as error:
        raise LeadImportError(f"cannot read the file: {error.strerror or error}", file=file) from error
    found: dict[tuple[str, str], Suppression] = {}
    rejected: list[Rejection] = []
    undated: list[int] = []
    rows = 0
    with stream:
        numbered = _numbered_rows(stream, file=file)
        first = next(numbered, None)
        if first is None:
            raise LeadImportError("the file is empty", file=file, hint="put one address per row, under a header `email`")
        line, cells = first
        column = _email_column(cells)
        own: dict[str, int] = {}
        pending: Iterable[tuple[int, list[str]]] = numbered
        if column is None:
            column = next((i for i, cell in enumerate(cells) if "@" in cell), None)
            if column is None:
                raise LeadImportError(
                    "no column holds the email address", file=file, line=line, field="email",
                    hint="name the address column one of: " + ", ".join(FIELD_ALIASES["email"]),
                )
            pending = [first, *numbered]  # no header: the first row is an address already
        else:
            keys = [_header_key(cell) for cell in cells]
            own = {name: keys.index(_header_key(name)) for name in OWN_COLUMNS if _header_key(name) in keys}
        for line, cells in pending:
            rows += 1
            address = _cell(cells, column).strip()
            if not address:
                rejected.append(Rejection(line=line, email="", reason="The email address is empty."))
                continue
            try:
                email = normalize_email(address)
            except EmailNotValidError as error:
                rejected.append(Rejection(line=line, email=address, reason=str(error)))
                continue
            # An empty cell means what leaving out the option means: every list, manual.
            row_reason = (_cell(cells, own["reason"]).strip() or "manual") if "reason" in own else reason
            if row_reason not in REASONS:
                rejected.append(Rejection(line=line, email=address, reason=_bad_reason(row_reason)))
                continue
            row_list = _cell(cells, own["list"]).strip() if "list" in own else list_name
            row_detail = _cell(cells, own["detail"]) if "detail" in own else detail
            created_at = None
            if "created_at" in own and (written := _cell(cells, own["created_at"]).strip()):
                created_at = _timestamp(written)
                if created_at is None:
                    undated.append(line)
            found.setdefault((email, row_list), Suppression(email, row_reason, row_list, row_detail, created_at))
    return SuppressionFile(
        suppressions=tuple(found.values()), rejected=tuple(rejected), rows=rows,
        columns=frozenset(own), undated=tuple(undated),
    )


def _email_column(cells: Sequence[str]) -> int | None:
    return next((i for i, cell in enumerate(cells) if _header_key(cell) in _EMAIL_HEADERS), None)


def _cell(cells: Sequence[str], index: int) -> str:
    """The row's cell at `index` ("" past a short row's end), without the quote our own export
    put before a formula start (mailer.csvexport)."""
    cell = cells[index] if index < len(cells) else ""
    # A cell written as `'=…` by a person reads back as `=…` too: the export cannot tell them apart.
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def _bad_reason(reason: str) -> str:
    close = closest(reason, REASONS)
    guess = f"did you mean {close!r}? " if close else ""
    return f"The reason {reason!r} is not one we know: {guess}one of: " + ", ".join(REASONS)


def _timestamp(text: str) -> datetime | None:
    """An ISO 8601 time with its zone, as the export writes it; None for anything else."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def write_suppressions_csv(stream: TextIO, suppressions: Iterable[Suppression]) -> int:
    """Export suppressions as email,list,reason,detail,created_at; returns the rows written.

    `created_at` is ISO 8601 in UTC to the millisecond, the store's precision, so an import keeps
    it exactly (and the export order); every cell is formula-safe (mailer.csvexport).
    """
    return write_csv(
        stream,
        EXPORT_COLUMNS,
        (
            (
                s.email, s.list_name, s.reason, s.detail,
                s.created_at.isoformat(timespec="milliseconds") if s.created_at is not None else "",
            )
            for s in suppressions
        ),
    )


def created_order(suppressions: Iterable[Suppression]) -> list[Suppression]:
    """Oldest first, the order an export is easiest to diff in."""
    return sorted(suppressions, key=lambda s: (ms(s.created_at) if s.created_at else 0, s.email, s.list_name))
