"""Tests for mailer.csvimport: reading and cleansing a marketer's CSV of leads."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import email_validator
from email_validator import EmailNotValidError, EmailUndeliverableError, ValidatedEmail
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer import csvimport
from mailer.csvimport import ImportPlan, Rejection, normalize_email, read_leads_csv
from mailer.errors import LeadImportError


def write(tmp_path: Path, text: str, *, encoding: str = "utf-8", name: str = "leads.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def read(tmp_path: Path, text: str, **options: Any) -> ImportPlan:
    return read_leads_csv(write(tmp_path, text), **options)


# Headers


def test_english_aliases_map_to_lead_fields(tmp_path: Path) -> None:
    """Common header spellings, in any case and with spaces, hyphens or underscores, map to lead fields."""
    plan = read(
        tmp_path,
        "E-Mail,First Name,SURNAME,Organization,Title,Time Zone,Source\n"
        "jane@example.com,Jane,Doe,Acme,CTO,Europe/Paris,webinar\n",
    )
    (lead,) = plan.leads
    assert (lead.email, lead.first_name, lead.last_name) == ("jane@example.com", "Jane", "Doe")
    assert (lead.company, lead.job_title, lead.timezone, lead.source) == ("Acme", "CTO", "Europe/Paris", "webinar")
    assert dict(lead.attributes) == {}


def test_japanese_headers_map_to_lead_fields(tmp_path: Path) -> None:
    """Japanese Excel headers (メールアドレス, 姓, 名, 会社名, 役職, 流入元) map to lead fields."""
    plan = read(
        tmp_path,
        "メールアドレス,姓,名,会社名,役職,流入元\n"
        "taro@example.co.jp,山田,太郎,株式会社サンプル,部長,展示会\n",
    )
    (lead,) = plan.leads
    assert (lead.email, lead.last_name, lead.first_name) == ("taro@example.co.jp", "山田", "太郎")
    assert (lead.company, lead.job_title, lead.source) == ("株式会社サンプル", "部長", "展示会")


def test_full_width_header_letters_match_aliases(tmp_path: Path) -> None:
    """A header typed with a Japanese IME in full-width letters (ＥＭＡＩＬ) still names the address column."""
    plan = read(tmp_path, "ＥＭＡＩＬ\njane@example.com\n")
    assert [lead.email for lead in plan.leads] == ["jane@example.com"]


def test_other_columns_become_attributes_and_empty_cells_are_omitted(tmp_path: Path) -> None:
    """Unmapped columns are free attributes keyed by the stripped header, and empty cells are left out."""
    plan = read(tmp_path, "email, Plan ,Seats\na@example.com,Pro,\nb@example.com,,12\n")
    assert [dict(lead.attributes) for lead in plan.leads] == [{"Plan": "Pro"}, {"Seats": "12"}]


def test_missing_email_column_is_an_import_error(tmp_path: Path) -> None:
    """A header without an address column fails the import, naming file, line 1, field and accepted names."""
    path = write(tmp_path, "name,company\nJane,Acme\n")
    with pytest.raises(LeadImportError) as caught:
        read_leads_csv(path)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(path), 1, "email")
    assert error.hint is not None and "e-mail" in error.hint and "メールアドレス" in error.hint


def test_duplicate_header_names_are_an_import_error(tmp_path: Path) -> None:
    """The same header twice fails the import rather than silently dropping one column."""
    with pytest.raises(LeadImportError, match="twice"):
        read(tmp_path, "email,plan,plan\na@example.com,x,y\n")


def test_two_aliases_of_one_field_are_an_import_error(tmp_path: Path) -> None:
    """Two columns that both mean the same lead field (Email and E-mail) fail the import."""
    with pytest.raises(LeadImportError, match="both mean email"):
        read(tmp_path, "Email,E-mail\na@example.com,b@example.com\n")


def test_empty_header_cell_in_the_middle_is_an_import_error(tmp_path: Path) -> None:
    """A nameless column between named ones fails the import, since its values could not be kept."""
    with pytest.raises(LeadImportError, match="column 2 has no name"):
        read(tmp_path, "email,,plan\na@example.com,x,y\n")


def test_empty_file_is_an_import_error(tmp_path: Path) -> None:
    """A file with no header row fails the import with a hint showing a header."""
    with pytest.raises(LeadImportError, match="no header row"):
        read(tmp_path, "\n\n")


def test_missing_file_is_an_import_error(tmp_path: Path) -> None:
    """A path that does not exist is a user error, not a traceback."""
    with pytest.raises(LeadImportError, match="cannot read"):
        read_leads_csv(tmp_path / "nope.csv")


# Encodings and delimiters


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    """Excel's UTF-8 BOM does not become part of the first header name."""
    path = write(tmp_path, "email,first_name\r\njane@example.com,Zoë\r\n", encoding="utf-8-sig")
    plan = read_leads_csv(path)
    assert [(lead.email, lead.first_name) for lead in plan.leads] == [("jane@example.com", "Zoë")]


def test_cp932_file_is_decoded(tmp_path: Path) -> None:
    """A Shift_JIS (cp932) file saved by Japanese Excel is read with its Japanese intact."""
    path = write(tmp_path, "メールアドレス,姓,名\r\ntaro@example.jp,山田,太郎\r\n", encoding="cp932")
    (lead,) = read_leads_csv(path).leads
    assert (lead.email, lead.last_name, lead.first_name) == ("taro@example.jp", "山田", "太郎")


def test_undecodable_file_asks_for_utf8(tmp_path: Path) -> None:
    """Bytes that are neither UTF-8 nor cp932 fail the import with the hint to save as UTF-8."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"email,first_name\na@example.com,Zo\xeb\n")
    with pytest.raises(LeadImportError) as caught:
        read_leads_csv(path)
    assert (caught.value.file, caught.value.hint) == (str(path), "save the file as UTF-8")


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_delimiters_are_detected(tmp_path: Path, delimiter: str) -> None:
    """A header separated by semicolons (European Excel) or tabs is read with that delimiter."""
    text = f"email{delimiter}company\na@example.com{delimiter}Acme, Inc.\n"
    plan = read(tmp_path, text)
    assert [(lead.email, lead.company) for lead in plan.leads] == [("a@example.com", "Acme, Inc.")]


def test_comma_header_keeps_comma_even_with_semicolons_in_data(tmp_path: Path) -> None:
    """Semicolons in data cells do not switch the delimiter away from the header's comma."""
    plan = read(tmp_path, "email,notes\na@example.com,x;y;z\n")
    assert [dict(lead.attributes) for lead in plan.leads] == [{"notes": "x;y;z"}]


# Addresses


def test_invalid_addresses_are_rejected_with_their_lines_and_valid_rows_kept(tmp_path: Path) -> None:
    """Invalid and empty addresses become rejections at their exact physical lines; valid rows still import."""
    plan = read(
        tmp_path,
        "email,first_name\n"  # line 1
        "good@example.com,A\n"  # line 2
        "not-an-address,B\n"  # line 3
        "\n"  # line 4: blank, skipped
        ",C\n"  # line 5
        "other@example.com,D\n",  # line 6
    )
    assert [lead.email for lead in plan.leads] == ["good@example.com", "other@example.com"]
    assert plan.rejected == (
        Rejection(line=3, email="not-an-address", reason="An email address must have an @-sign."),
        Rejection(line=5, email="", reason="The email address is empty."),
    )
    assert plan.rows == 4


def test_multiline_cells_keep_physical_line_numbers(tmp_path: Path) -> None:
    """A quoted cell spanning lines does not shift the line reported for later rows."""
    plan = read(
        tmp_path,
        'email,notes\r\n'  # line 1
        'a@example.com,"first\r\nsecond\r\nthird"\r\n'  # lines 2-4
        'bad@,x\r\n'  # line 5
        '"b@example.com","one\ntwo"\r\n'  # lines 6-7
        'worse,y\r\n',  # line 8
    )
    assert [rejection.line for rejection in plan.rejected] == [5, 8]
    assert plan.leads[0].attributes["notes"] == "first\r\nsecond\r\nthird"
    assert plan.leads[1].attributes["notes"] == "one\ntwo"


def test_rejection_of_multiline_row_reports_its_first_line(tmp_path: Path) -> None:
    """A rejected row that spans lines is reported at the line where it starts."""
    plan = read(tmp_path, 'email,notes\nok@example.com,x\nbroken,"a\nb\nc"\n')
    assert [rejection.line for rejection in plan.rejected] == [3]


def test_uppercase_address_is_lowercased(tmp_path: Path) -> None:
    """Upper-case local parts and domains are lower-cased so they dedup as one lead."""
    plan = read(tmp_path, "email\n  Jane.Doe@EXAMPLE.COM \n")
    assert [lead.email for lead in plan.leads] == ["jane.doe@example.com"]


@pytest.mark.parametrize(
    ("written", "normalized"),
    [
        ("User@Bücher.Example.com", "user@bücher.example.com"),
        ("user@xn--bcher-kva.example.com", "user@bücher.example.com"),
        ("user@例え.テスト", "user@例え.テスト"),
        ("user@xn--r8jz45g.xn--zckzah", "user@例え.テスト"),
    ],
)
def test_internationalized_domains_are_normalized_to_unicode(written: str, normalized: str) -> None:
    """IDNA domains, whether written in Unicode or punycode, normalize to one lower-case Unicode form."""
    assert normalize_email(written) == normalized


def test_normalize_email_raises_email_not_valid_error() -> None:
    """normalize_email raises email-validator's own error for an invalid address."""
    with pytest.raises(EmailNotValidError):
        normalize_email("two@@signs.example.com")


def test_deliverability_is_checked_once_per_domain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With check_deliverability, each domain is looked up once and its verdict reused for every row."""
    lookups: list[str] = []
    real_validate_email = email_validator.validate_email

    def fake_validate_email(address: str, *, check_deliverability: bool) -> ValidatedEmail:
        validated = real_validate_email(address, check_deliverability=False)
        if check_deliverability:
            lookups.append(validated.ascii_domain)
            if validated.ascii_domain == "nomx.example.com":
                raise EmailUndeliverableError("The domain name nomx.example.com does not accept email.")
        return validated

    monkeypatch.setattr(csvimport, "validate_email", fake_validate_email)
    rows = [f"lead{n}@example.com" for n in range(50)] + ["a@nomx.example.com", "b@NOMX.example.com"]
    plan = read(tmp_path, "email\n" + "\n".join(rows) + "\n", check_deliverability=True)
    assert sorted(lookups) == ["example.com", "nomx.example.com"]
    assert len(plan.leads) == 50
    assert [(r.line, r.reason) for r in plan.rejected] == [
        (52, "The domain name nomx.example.com does not accept email."),
        (53, "The domain name nomx.example.com does not accept email."),
    ]


# Other cells


def test_unknown_timezone_is_rejected(tmp_path: Path) -> None:
    """A timezone zoneinfo does not know rejects the row; a known one is kept in its canonical spelling."""
    plan = read(tmp_path, "email,tz\na@example.com,Asia/Tokio\nb@example.com,asia/tokyo\nc@example.com,\n")
    assert plan.rejected == (
        Rejection(
            line=2,
            email="a@example.com",
            reason="Unknown time zone 'Asia/Tokio'; use an IANA name such as Asia/Tokyo.",
        ),
    )
    assert [lead.timezone for lead in plan.leads] == ["Asia/Tokyo", None]


def test_wrong_number_of_cells_is_rejected(tmp_path: Path) -> None:
    """Extra non-empty cells are rejected; missing trailing cells are empty values, as spreadsheets write them."""
    plan = read(
        tmp_path,
        "email,first_name,\n"  # a trailing empty header cell is padding
        "a@example.com\n"
        "b@example.com,B,,,\n"
        "c@example.com,C,surprise\n",
    )
    assert [lead.email for lead in plan.leads] == ["a@example.com", "b@example.com"]
    assert plan.rejected == (
        Rejection(line=4, email="c@example.com", reason="The row has 3 cells but the header has 2 columns."),
    )


def test_names_are_stripped_and_nfc_normalized_keeping_non_ascii(tmp_path: Path) -> None:
    """Names lose surrounding whitespace (including ideographic spaces) and are NFC, with non-ASCII kept exactly."""
    plan = read(
        tmp_path,
        "email,first_name,last_name\n"
        "a@example.com, Zoe\u0308 ,\u3000Łukasz\u3000\n"
        "b@example.com,太郎,山田 \n",
    )
    assert [(lead.first_name, lead.last_name) for lead in plan.leads] == [("Zoë", "Łukasz"), ("太郎", "山田")]
    assert plan.leads[0].first_name == "Zo\u00eb"


def test_source_parameter_applies_unless_the_row_has_its_own(tmp_path: Path) -> None:
    """The source argument fills in every lead whose row leaves the source column empty."""
    plan = read(tmp_path, "email,source\na@example.com,webinar\nb@example.com,\n", source="expo-2024")
    assert [lead.source for lead in plan.leads] == ["webinar", "expo-2024"]


# Duplicates


def test_duplicate_addresses_merge_into_the_first_lead(tmp_path: Path) -> None:
    """A repeated normalized address is one lead in first-seen place, updated by later non-empty values."""
    plan = read(
        tmp_path,
        "email,first_name,company,plan,seats,source\n"
        "jane@example.com,Jane,Acme,Pro,,fair\n"
        "bob@example.com,Bob,,,,\n"
        "JANE@Example.com,,Acme Corp,,12,\n",
        source="import",
    )
    assert plan.merged_duplicates == 1
    assert plan.rows == 3
    jane, bob = plan.leads
    assert (jane.email, jane.first_name, jane.company) == ("jane@example.com", "Jane", "Acme Corp")
    assert jane.source == "fair"
    assert dict(jane.attributes) == {"plan": "Pro", "seats": "12"}
    assert (bob.email, bob.source) == ("bob@example.com", "import")


def test_on_row_is_called_with_the_running_row_count(tmp_path: Path) -> None:
    """on_row is called once per data row, rejected ones included, with the number of rows read so far."""
    seen: list[int] = []
    read(tmp_path, "email\na@example.com\n\nbad\nc@example.com\n", on_row=seen.append)
    assert seen == [1, 2, 3]


# Fuzzing

_cell = st.text(st.characters(codec="utf-8"), max_size=30)  # utf-8 rules out lone surrogates
_address = st.one_of(
    _cell, st.emails().map(str), st.sampled_from(["", " A@Example.com ", "bad@", "x@例え.テスト"])
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.lists(st.sampled_from(["notes", "first_name", "tz", "姓", "company", "plan"]), unique=True, max_size=4),
    rows=st.lists(st.tuples(_address, st.lists(_cell, max_size=6)), max_size=12),
)
def test_arbitrary_cells_end_as_leads_or_rejections(
    tmp_path: Path, header: list[str], rows: list[tuple[str, list[str]]]
) -> None:
    """Any cell contents written as CSV end as leads, merges or rejections, never another exception."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["email", *header])
    for address, cells in rows:
        writer.writerow([address, *cells])
    path = tmp_path / "fuzz.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    plan = read_leads_csv(path)
    assert len(plan.leads) + plan.merged_duplicates + len(plan.rejected) == plan.rows
    assert len({lead.email for lead in plan.leads}) == len(plan.leads)
    assert all(lead.email == normalize_email(lead.email) for lead in plan.leads)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=300)
    | st.text(alphabet=st.sampled_from('ab@.,;\t"\r\n é名\x00'), max_size=200).map(str.encode)
)
def test_arbitrary_bytes_end_as_a_plan_or_an_import_error(tmp_path: Path, body: bytes) -> None:
    """Any bytes after a valid header produce a plan or a LeadImportError, never another exception."""
    path = tmp_path / "fuzz.csv"
    path.write_bytes(b"email,name\n" + body)
    try:
        plan = read_leads_csv(path)
    except LeadImportError:
        return
    assert len(plan.leads) + plan.merged_duplicates + len(plan.rejected) == plan.rows


@given(address=_address)
def test_normalize_email_is_idempotent(address: str) -> None:
    """A normalized address normalizes to itself, so dedup keys are stable across imports."""
    try:
        normalized = normalize_email(address)
    except EmailNotValidError:
        return
    assert normalize_email(normalized) == normalized


def test_an_address_is_looked_up_as_it_was_stored() -> None:
    """A valid address is normalised as imports store it; a broken one (as a bounce may name it) is trimmed and lower-cased."""
    from mailer.csvimport import lookup_email

    assert lookup_email(" Ann@Example.COM ") == lookup_email("ann@example.com") == "ann@example.com"
    assert lookup_email(" Broken@@Example.com ") == "broken@@example.com"
