"""DMARC records, organizational domains and alignment (RFC 7489), as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.dmarc import (
    POLICIES,
    DMARCRecord,
    InvalidDMARCRecord,
    alignment,
    aligned,
    format_record,
    is_dmarc_record,
    organizational_domain,
    parse_record,
    select_record,
)


def test_a_full_record_parses_every_tag() -> None:
    """Every RFC 7489 6.3 tag is read, with case and whitespace as receivers accept them."""
    record = parse_record(
        "v=DMARC1 ; P=Quarantine; sp=reject;pct=50; rua=mailto:agg@acme.example,mailto:x@y.example!10m;"
        " ruf=mailto:forensic@acme.example; adkim=s; aspf=S; fo=1:d; ri=3600;"
    )
    assert record == DMARCRecord(
        p="quarantine",
        sp="reject",
        pct=50,
        rua=("mailto:agg@acme.example", "mailto:x@y.example!10m"),
        ruf=("mailto:forensic@acme.example",),
        adkim="s",
        aspf="s",
        fo="1:d",
        ri=3600,
    )
    assert record.subdomain_policy == "reject"


def test_absent_tags_take_the_rfc_defaults() -> None:
    """A minimal record gets pct=100, relaxed alignment and sp equal to p (RFC 7489 6.3)."""
    record = parse_record("v=DMARC1; p=none")
    assert (record.pct, record.adkim, record.aspf, record.sp, record.subdomain_policy) == (100, "r", "r", None, "none")
    assert record.rua == () and record.notes == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("p=none; v=DMARC1", "must begin"),
        ("v=DMARC2; p=none", "must begin"),
        ("v=dmarc1; p=none", "must begin"),
        ("v=DMARC1", "p= tag is required"),
        ("v=DMARC1; p=block", "not none, quarantine or reject"),
        ("v=DMARC1; p=none; sp=maybe", "sp="),
        ("v=DMARC1; p=none; pct=150", "percentage"),
        ("v=DMARC1; p=none; pct=half", "whole number"),
        ("v=DMARC1; p=none; rua=dmarc@acme.example", "not a URI"),
        ("v=DMARC1; p=none; adkim=relaxed", "adkim="),
        ("v=DMARC1; p=none; p=reject", "twice"),
        ("v=DMARC1; p=none; fo=2", "fo="),
        ("v=DMARC1; p none", "tag=value"),
        ("", "must begin"),
    ],
)
def test_invalid_records_name_their_problem(text: str, problem: str) -> None:
    """An invalid record raises InvalidDMARCRecord whose message names what is wrong."""
    with pytest.raises(InvalidDMARCRecord, match=problem):
        parse_record(text)


def test_a_record_without_p_but_with_rua_is_read_as_p_none() -> None:
    """RFC 7489 6.6.3: a missing p= with a valid rua= means p=none, with a note saying so."""
    record = parse_record("v=DMARC1; rua=mailto:d@acme.example")
    assert record.p == "none"
    assert "p=none" in record.notes[0]


def test_unknown_tags_are_ignored_with_a_note() -> None:
    """Unknown tags do not invalidate a record (RFC 7489 6.3) but are reported."""
    record = parse_record("v=DMARC1; p=reject; np=reject; psd=n")
    assert record.p == "reject"
    assert record.notes == ("unknown tags ignored (RFC 7489 6.3): np, psd",)


def test_only_one_dmarc_record_may_stand_at_a_name() -> None:
    """Other TXT strings are skipped and two DMARC records are an error (RFC 7489 6.6.3 step 5)."""
    assert select_record(["google-site-verification=abc", "v=DMARC1; p=none"]) == "v=DMARC1; p=none"
    assert select_record(["v=spf1 -all"]) is None
    with pytest.raises(InvalidDMARCRecord, match="2 DMARC records"):
        select_record(["v=DMARC1; p=none", "v=DMARC1; p=reject"])
    assert is_dmarc_record("V = DMARC1;p=none") and not is_dmarc_record("v=DMARC10; p=none")


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("acme.example", "acme.example"),
        ("bounce.mail.acme.example", "acme.example"),
        ("News.Acme.CO.UK.", "acme.co.uk"),
        ("co.uk", "co.uk"),
        ("someone.github.io", "someone.github.io"),
        ("mail.someone.github.io", "someone.github.io"),
    ],
)
def test_organizational_domain_follows_the_public_suffix_list(domain: str, organizational: str) -> None:
    """The organizational domain is one label under the longest public suffix (RFC 7489 3.2)."""
    assert organizational_domain(domain) == organizational


def test_relaxed_alignment_compares_organizational_domains_and_strict_whole_names() -> None:
    """Relaxed alignment accepts a subdomain of the same organization; strict needs the same name."""
    assert aligned("acme.example", "bounce.acme.example", "r")
    assert not aligned("acme.example", "bounce.acme.example", "s")
    assert aligned("ACME.example.", "acme.example", "s")
    assert not aligned("acme.co.uk", "other.co.uk", "r")
    assert not aligned("a.github.io", "b.github.io", "r")


def test_alignment_uses_the_records_modes_and_relaxed_without_a_record() -> None:
    """adkim/aspf decide each identifier's alignment; a missing identifier never aligns."""
    strict_spf = parse_record("v=DMARC1; p=none; aspf=s")
    result = alignment(strict_spf, from_domain="acme.example", dkim_domain=None, spf_domain="bounce.acme.example")
    assert not result.possible
    relaxed = alignment(None, from_domain="acme.example", dkim_domain=None, spf_domain="bounce.acme.example")
    assert relaxed.spf and not relaxed.dkim and relaxed.possible
    both = alignment(strict_spf, from_domain="acme.example", dkim_domain="acme.example", spf_domain="acme.example")
    assert both.dkim and both.spf


# -- properties ------------------------------------------------------------------------------

_uri = st.builds(
    lambda local, domain, size: f"mailto:{local}@{domain}.example{size}",
    st.from_regex(r"[a-z0-9.]{1,12}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
    st.sampled_from(["", "!10m", "!5"]),
)
_records = st.builds(
    DMARCRecord,
    p=st.sampled_from(POLICIES),
    sp=st.none() | st.sampled_from(POLICIES),
    pct=st.integers(0, 100),
    rua=st.lists(_uri, max_size=3).map(tuple),
    ruf=st.lists(_uri, max_size=2).map(tuple),
    adkim=st.sampled_from(["r", "s"]),
    aspf=st.sampled_from(["r", "s"]),
    fo=st.sampled_from(["0", "1", "d", "s", "0:1:d:s"]),
    ri=st.integers(0, 10**7),
)


@given(_records)
def test_formatting_then_parsing_gives_back_the_record(record: DMARCRecord) -> None:
    """format_record writes a record that parse_record reads back unchanged."""
    assert parse_record(format_record(record)) == record


@given(_records, st.lists(st.sampled_from(["", " ", "\t", "  "]), min_size=8, max_size=8), st.booleans())
def test_whitespace_around_tags_and_a_trailing_semicolon_change_nothing(
    record: DMARCRecord, spaces: list[str], trailing: bool
) -> None:
    """Whitespace around names, '=' and ';' and a final ';' do not change the meaning (RFC 7489 6.4)."""
    parts = format_record(record).split("; ")
    padded = []
    for index, part in enumerate(parts):
        name, _, value = part.partition("=")
        space = spaces[index % len(spaces)]
        padded.append(f"{space}{name}{space}={space}{value}{space}")
    text = ";".join(padded) + (";" if trailing else "")
    assert parse_record(text) == record


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_invalid_record(text: str) -> None:
    """Whatever a TXT record holds, parsing returns a record or raises InvalidDMARCRecord only."""
    try:
        record = parse_record(text)
    except InvalidDMARCRecord:
        return
    assert record.p in POLICIES and 0 <= record.pct <= 100


@given(st.text(alphabet="v=DMARC1;p nonequarantinrjctsuaf:mailto@.,!0123456789", max_size=80))
def test_near_miss_records_parse_or_raise_invalid_record(text: str) -> None:
    """Text built from a record's own characters parses or raises InvalidDMARCRecord, nothing else."""
    try:
        parse_record("v=DMARC1;" + text)
    except InvalidDMARCRecord:
        pass
