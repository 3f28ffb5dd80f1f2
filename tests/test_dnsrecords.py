"""Reading DKIM key records and writing the SPF and TXT records a sending domain publishes."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from mailer.dkim import public_key_record
from mailer.dnsrecords import (
    InvalidDKIMRecord,
    parse_dkim_key_record,
    same_public_key,
    spf_record_for,
    zone_txt,
)

RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
ED25519 = ed25519.Ed25519PrivateKey.generate()


def test_zone_txt_splits_long_values_into_255_octet_strings() -> None:
    """A value over 255 octets becomes several quoted strings of one record (RFC 1035 3.3)."""
    line = zone_txt("s._domainkey.acme.example", "x" * 600)
    assert line.startswith("s._domainkey.acme.example. TXT ")
    strings = line.split(" TXT ", 1)[1].split(" ")
    assert [len(string) for string in strings] == [257, 257, 92]
    assert "".join(string.strip('"') for string in strings) == "x" * 600


@given(st.text(alphabet='ab\\" ;=', max_size=700))
def test_zone_txt_strings_join_back_to_the_value(value: str) -> None:
    """However a value is split and escaped, unescaping and joining its strings gives it back."""
    strings = zone_txt("acme.example", value).split(" TXT ", 1)[1]
    joined = ""
    index = 0
    while index < len(strings):
        assert strings[index] == '"'
        index += 1
        octets = 0
        while strings[index] != '"':
            if strings[index] == "\\":
                index += 1
            joined += strings[index]
            index += 1
            octets += 1
        assert octets <= 255
        index += 2  # the closing quote and the separating space
    assert joined == value


def test_spf_record_for_a_domain_without_one_softfails_the_rest() -> None:
    """With nothing published, the record to publish authorizes the IP and ends in ~all."""
    assert spf_record_for("192.0.2.10", []) == "v=spf1 ip4:192.0.2.10 ~all"
    assert spf_record_for("2001:DB8::0:1", []) == "v=spf1 ip6:2001:db8::1 ~all"


def test_spf_record_for_keeps_the_published_terms_after_the_ip() -> None:
    """The IP goes first; the published mechanisms, modifiers and ending are kept in order."""
    published = ["v=spf1 include:_spf.mailhost.example a mx -all"]
    assert spf_record_for("192.0.2.10", published) == "v=spf1 ip4:192.0.2.10 include:_spf.mailhost.example a mx -all"
    assert spf_record_for("192.0.2.10", ["v=spf1 ip4:192.0.2.10 a"]) == "v=spf1 ip4:192.0.2.10 a"


def test_spf_record_for_drops_the_broken_term_and_merges_several_records() -> None:
    """A term that caused a permerror is left out, and two records become one (RFC 7208 4.5)."""
    published = ["v=spf1 include:nowhere.example ~all", "v=spf1 mx -all"]
    assert spf_record_for("192.0.2.10", published, drop="include:nowhere.example") == "v=spf1 ip4:192.0.2.10 mx ~all"


def test_dkim_records_written_by_the_signer_parse_to_the_same_key() -> None:
    """What mailer.dkim tells the operator to publish reads back as the same public key."""
    for private_key in (RSA_1024, ED25519):
        record = parse_dkim_key_record(public_key_record(private_key))
        assert record.public_key is not None
        assert same_public_key(record.public_key, private_key.public_key())
        assert not same_public_key(record.public_key, rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())
    assert parse_dkim_key_record(public_key_record(RSA_1024)).bits == 1024
    assert parse_dkim_key_record(public_key_record(ED25519)).key_type == "ed25519"


def test_dkim_record_defaults_and_folding_whitespace() -> None:
    """k= defaults to rsa, v= is optional, and whitespace inside p= is ignored (RFC 6376 3.6.1)."""
    der = RSA_1024.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    encoded = base64.b64encode(der).decode()
    record = parse_dkim_key_record(f"p={encoded[:40]} \t {encoded[40:]}; t=y:s")
    assert record.key_type == "rsa" and record.bits == 1024 and record.testing


def test_an_empty_p_is_a_revoked_key() -> None:
    """p= with no value means the key was revoked (RFC 6376 3.6.1)."""
    record = parse_dkim_key_record("v=DKIM1; k=rsa; p=")
    assert record.revoked and record.bits == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("v=DKIM1; k=rsa", "no p="),
        ("k=rsa; v=DKIM1; p=", "come first"),
        ("v=DKIM2; p=", "DKIM1"),
        ("v=DKIM1; k=dsa; p=AAAA", "rsa or ed25519"),
        ("v=DKIM1; p=not base64!", "base64"),
        ("v=DKIM1; p=AAAA", "DER"),
        ("v=DKIM1; k=ed25519; p=AAAA", "32"),
        ("v=DKIM1; s=tlsrpt; p=", "email"),
        ("v=DKIM1; p=; p=", "twice"),
        ("v=DKIM1; garbage", "tag=value"),
    ],
)
def test_invalid_dkim_records_name_their_problem(text: str, problem: str) -> None:
    """An unusable DKIM key record raises InvalidDKIMRecord saying what is wrong."""
    with pytest.raises(InvalidDKIMRecord, match=problem):
        parse_dkim_key_record(text)


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_invalid_dkim_record(text: str) -> None:
    """Whatever a TXT record holds, parsing returns a record or raises InvalidDKIMRecord only."""
    try:
        parse_dkim_key_record(text)
    except InvalidDKIMRecord:
        pass
