"""Reading a marketer's CSV of leads: decoding, header aliases, address cleansing, dedup.

Pure parsing: the result is an `ImportPlan` that the CLI shows and the store writes. A row
that cannot become a lead is a `Rejection` with its physical line; only a file that cannot
be read at all raises `LeadImportError`.
"""

from __future__ import annotations

import codecs
import csv
import re
import unicodedata
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from itertools import chain
from pathlib import Path
from types import MappingProxyType

from email_validator import EmailNotValidError, EmailUndeliverableError, validate_email

from mailer.errors import LeadImportError
from mailer.leads import LEAD_FIELDS, Lead

# Excel writes UTF-8 with a BOM ("CSV UTF-8"); Japanese Excel's plain "CSV" is cp932, the
# Windows superset of Shift_JIS. UTF-8 goes first because cp932 text is almost never valid
# UTF-8, while UTF-8 text often decodes as cp932 mojibake without an error.
ENCODINGS = ("utf-8-sig", "cp932")

# Header names accepted for each lead field, in the marketer's words. Compared after
# `_header_key`, so "First Name", "first_name", "FIRST-NAME" and full-width "ＥＭＡＩＬ" all
# match.
FIELD_ALIASES: Mapping[str, tuple[str, ...]] = {
    "email": ("email", "e-mail", "email address", "mail", "メールアドレス"),
    "first_name": ("first_name", "first name", "firstname", "given name", "名"),
    "last_name": ("last_name", "last name", "lastname", "surname", "family name", "姓"),
    "company": ("company", "company name", "organization", "会社名"),
    "job_title": ("job_title", "title", "job title", "役職"),
    "timezone": ("timezone", "time zone", "tz"),
    "source": ("source", "流入元"),
}

# The fields a later duplicate row may update; the address is the dedup key itself.
_PROFILE_FIELDS = tuple(name for name in LEAD_FIELDS if name != "email")

_ALTERNATE_DELIMITERS = (";", "\t")


def _header_key(name: str) -> str:
    # NFKC folds the full-width Latin letters Japanese IMEs produce; spaces, "_" and "-" are
    # how the same header differs between tools.
    return re.sub(r"[\s_\-]+", "", unicodedata.normalize("NFKC", name).casefold())


_FIELD_BY_HEADER: Mapping[str, str] = {
    _header_key(alias): field for field, aliases in FIELD_ALIASES.items() for alias in aliases
}


@dataclass(frozen=True)
class Rejection:
    """A row that did not become a lead, and why, in words the marketer can act on."""

    line: int  # 1-based physical line where the row starts
    email: str  # the address cell as written (stripped), "" when absent
    reason: str


@dataclass(frozen=True)
class ImportPlan:
    """What importing a CSV file would do."""

    leads: tuple[Lead, ...]  # one per distinct normalized address, in first-seen order
    rejected: tuple[Rejection, ...]
    merged_duplicates: int  # rows whose address repeated an earlier row (merged into it)
    rows: int  # data rows read, blank rows not counted


@dataclass(frozen=True)
class _Column:
    name: str  # the header as written, stripped: the attribute key
    field: str | None  # the lead field it maps to, or None for a free attribute


def normalize_email(address: str, *, check_deliverability: bool = False) -> str:
    """The address as the engine stores and dedups it; raises `EmailNotValidError`."""
    return _normalize_email(address, verdicts={} if check_deliverability else None)


def lookup_email(address: str) -> str:
    """An address to look up as stored: normalised as imports store it, or, when it is not a
    valid address (a bounce may name a broken one, stored as it came), trimmed and lower-cased."""
    try:
        return normalize_email(address)
    except EmailNotValidError:
        return address.strip().lower()


def _normalize_email(address: str, *, verdicts: dict[str, str | None] | None) -> str:
    """Normalize `address`; with `verdicts`, check deliverability once per domain.

    `verdicts` maps a domain to the undeliverable message, or None when it accepts mail, so
    a file of 10,000 leads at one company costs one DNS lookup instead of 10,000.
    """
    validated = validate_email(address.strip(), check_deliverability=False)
    if verdicts is not None:
        domain = validated.ascii_domain
        if domain not in verdicts:
            try:
                validate_email(validated.normalized, check_deliverability=True)
            except EmailUndeliverableError as error:
                verdicts[domain] = str(error)
            else:
                verdicts[domain] = None
        if (undeliverable := verdicts[domain]) is not None:
            raise EmailUndeliverableError(undeliverable)
    # Lower-case the local part as well as the domain. RFC 5321 2.4 lets a server treat local
    # parts case-sensitively, but mailbox providers do not in practice, and marketing tools
    # dedup and suppress "Jane@x.com" and "jane@x.com" as one person; so do we.
    return validated.normalized.lower()


def read_leads_csv(
    path: Path,
    *,
    source: str | None = None,
    check_deliverability: bool = False,
    on_row: Callable[[int], None] | None = None,
) -> ImportPlan:
    """Parse and cleanse the leads in the CSV file at `path`.

    `source` applies to every lead whose row has no source of its own. `on_row` is called
    with the number of data rows read so far, after each row. Raises `LeadImportError` when
    the file cannot be imported at all.
    """
    file = str(path)
    encoding = _detect_encoding(path)
    verdicts: dict[str, str | None] | None = {} if check_deliverability else None
    leads: dict[str, Lead] = {}
    rejected: list[Rejection] = []
    merged_duplicates = 0
    rows = 0
    try:
        stream = path.open(encoding=encoding, newline="")
    except OSError as error:
        raise _unreadable(file, error) from error
    with stream:
        rows_in_file = _numbered_rows(stream, file=file)
        columns = _read_header(rows_in_file, file=file)
        for line, cells in rows_in_file:
            rows += 1
            outcome = _parse_row(cells, columns, verdicts=verdicts)
            if isinstance(outcome, str):
                rejected.append(Rejection(line=line, email=_email_cell(cells, columns), reason=outcome))
            elif (earlier := leads.get(outcome.email)) is None:
                leads[outcome.email] = outcome
            else:
                leads[outcome.email] = _merge(earlier, outcome)
                merged_duplicates += 1
            if on_row is not None:
                on_row(rows)
    return ImportPlan(
        leads=tuple(replace(lead, source=lead.source or source) for lead in leads.values()),
        rejected=tuple(rejected),
        merged_duplicates=merged_duplicates,
        rows=rows,
    )


def _unreadable(file: str, error: OSError) -> LeadImportError:
    return LeadImportError(f"cannot read the file: {error.strerror or error}", file=file)


def _detect_encoding(path: Path) -> str:
    """The first of `ENCODINGS` that decodes the whole file, read in chunks to bound memory."""
    for encoding in ENCODINGS:
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            with path.open("rb") as raw:
                while chunk := raw.read(1 << 16):
                    decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        except OSError as error:
            raise _unreadable(str(path), error) from error
        return encoding
    raise LeadImportError(
        "the file is neither UTF-8 nor Shift_JIS (cp932) text",
        file=str(path),
        hint="save the file as UTF-8",
    )


def _numbered_rows(stream: Iterator[str], *, file: str) -> Iterator[tuple[int, list[str]]]:
    """The non-blank rows of the CSV text in `stream`, each with the physical line it starts on."""
    # The delimiter is decided on the first non-blank line, the header, and only switches
    # from comma when the comma reading gives one column and another gives several: a guess
    # from data rows (csv.Sniffer's approach) is thrown off by commas and semicolons in names.
    leading: list[str] = []
    for physical_line in stream:
        leading.append(physical_line)
        if physical_line.strip():
            break
    header_line = leading[-1] if leading else ""
    delimiter = ","
    if len(_split(header_line, ",")) <= 1:
        delimiter = next((d for d in _ALTERNATE_DELIMITERS if len(_split(header_line, d)) > 1), ",")
    reader = csv.reader(chain(leading, stream), delimiter=delimiter)
    # reader.line_num counts the physical lines consumed so far, so a row that spans lines
    # (a quoted cell with line breaks) starts one line after the previous row ended.
    row_end = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise LeadImportError(
                f"the CSV cannot be parsed: {error}",
                file=file,
                line=row_end + 1,
                hint="check the quotes in this row, or save the file again from a spreadsheet",
            ) from error
        row_start, row_end = row_end + 1, reader.line_num
        if not _is_blank(cells):
            yield row_start, cells


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _is_blank(cells: Sequence[str]) -> bool:
    # Spreadsheets leave rows of bare delimiters (",,,,") after the data.
    return not any(cell.strip() for cell in cells)


def _read_header(rows: Iterator[tuple[int, list[str]]], *, file: str) -> tuple[_Column, ...]:
    """The columns the header row (the first non-blank row) names."""
    header = next(rows, None)
    if header is None:
        raise LeadImportError(
            "the file has no header row",
            file=file,
            line=1,
            hint="the first row must name the columns, e.g. email,first_name,last_name",
        )
    line, cells = header
    names = [name.strip() for name in cells]
    while names and not names[-1]:
        names.pop()  # trailing empty header cells are spreadsheet padding
    columns: list[_Column] = []
    seen: dict[str, str] = {}
    for number, name in enumerate(names, start=1):
        if not name:
            raise LeadImportError(
                f"column {number} has no name",
                file=file,
                line=line,
                hint="name every column in the header row",
            )
        field = _FIELD_BY_HEADER.get(_header_key(name))
        key = field or name
        if (earlier := seen.get(key)) is not None:
            raise LeadImportError(
                f"the header names {name!r} twice"
                if earlier == name
                else f"the columns {earlier!r} and {name!r} both mean {key}",
                file=file,
                line=line,
                field=name,
                hint="rename or remove one of the columns",
            )
        seen[key] = name
        columns.append(_Column(name=name, field=field))
    if "email" not in seen:
        raise LeadImportError(
            "no column holds the email address",
            file=file,
            line=line,
            field="email",
            hint="name the address column one of: " + ", ".join(FIELD_ALIASES["email"]),
        )
    return tuple(columns)


def _email_cell(cells: Sequence[str], columns: Sequence[_Column]) -> str:
    for index, column in enumerate(columns):
        if column.field == "email":
            return cells[index].strip() if index < len(cells) else ""
    return ""


def _clean(cell: str) -> str:
    # NFC because macOS exports decomposed text: "Zoë" typed on a Mac and on Windows must be
    # the same name, in the store and in templates.
    return unicodedata.normalize("NFC", cell.strip())


@cache
def _zone_names() -> Mapping[str, str]:
    """IANA zone names by their case-folded spelling, so "asia/tokyo" means Asia/Tokyo."""
    return MappingProxyType({name.casefold(): name for name in zoneinfo.available_timezones()})


def _parse_row(
    cells: Sequence[str], columns: Sequence[_Column], *, verdicts: dict[str, str | None] | None
) -> Lead | str:
    """The lead a data row describes (its own source only), or why it cannot be one."""
    width = len(columns)
    if not _is_blank(cells[width:]):
        return f"The row has {len(cells)} cells but the header has {width} columns."
    # Spreadsheets leave out empty cells at the end of a row: they are empty values.
    cells = [*cells[:width], *[""] * (width - len(cells))]
    fields: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for column, cell in zip(columns, cells):
        value = cell.strip() if column.field == "email" else _clean(cell)
        if column.field is not None:
            fields[column.field] = value
        elif value:
            attributes[column.name] = value
    for name, value in fields.items():
        if any(char in value for char in "\r\n\x00"):
            # Names and titles end up in To and Subject headers, which are one line each.
            return f"The {name} cell spans several lines; it must be one line."
    address = fields["email"]
    if not address:
        return "The email address is empty."
    try:
        email = _normalize_email(address, verdicts=verdicts)
    except EmailNotValidError as error:
        return str(error)
    timezone: str | None = None
    if zone := fields.get("timezone", ""):
        timezone = _zone_names().get(zone.casefold())
        if timezone is None:
            return f"Unknown time zone {zone!r}; use an IANA name such as Asia/Tokyo."
    return Lead(
        email=email,
        first_name=fields.get("first_name", ""),
        last_name=fields.get("last_name", ""),
        company=fields.get("company", ""),
        job_title=fields.get("job_title", ""),
        timezone=timezone,
        source=fields.get("source") or None,
        attributes=MappingProxyType(attributes),
    )


def _merge(earlier: Lead, later: Lead) -> Lead:
    """`earlier` updated with the non-empty values of a later row for the same address."""
    updates = {name: getattr(later, name) for name in _PROFILE_FIELDS if getattr(later, name)}
    attributes = MappingProxyType({**earlier.attributes, **later.attributes})
    return replace(earlier, attributes=attributes, **updates)
