"""SPF record parsing and macro expansion (pure), and check_host's own reporting over loopback DNS."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.dnstest import ZoneServer
from mailer.spf import MAX_DNS_TERMS, check_host, mail_from_identity
from mailer.spfrecord import (
    MacroContext,
    SPFSyntaxError,
    check_domain_spec,
    expand,
    is_spf_record,
    parse_macro_string,
    parse_record,
    truncate_domain,
)


def rfc_context(ip: str = "192.0.2.3") -> MacroContext:
    """The context of the examples in RFC 7208 7.4."""
    return MacroContext(
        sender="strong-bad@email.example.com",
        local_part="strong-bad",
        sender_domain="email.example.com",
        domain="email.example.com",
        ip=ip_address(ip),
        helo="mx.example.org",
        receiver="mx.receiver.example",
        timestamp=1_700_000_000,
    )


@pytest.mark.parametrize(
    ("text", "chosen"),
    [
        ("v=spf1", True),
        ("v=spf1 -all", True),
        ("V=SpF1 ~all", True),
        ("v=spf10", False),
        ("v=spf1mx", False),
        ("spf1 -all", False),
        ("", False),
    ],
)
def test_record_selection_needs_version_then_space_or_end(text: str, chosen: bool) -> None:
    """Only "v=spf1" followed by a space or the end, in any case, marks an SPF record (RFC 7208 4.5)."""
    assert is_spf_record(text) is chosen


def test_parse_record_reads_every_mechanism_and_qualifier() -> None:
    """Each mechanism keeps its qualifier's result, its text, its domain-spec and its CIDR lengths."""
    record = parse_record(
        "v=spf1 +a -mx:mail.%{d}/24//64 ~ip4:192.0.2.0/24 ?ip6:2001:db8::/32 include:_spf.example.com"
        " exists:%{ir}.bl.example.net ptr all redirect=other.example.com exp=why.example.com"
    )
    summary = [(m.kind, m.result, m.text, m.domain_spec, m.cidr4, m.cidr6) for m in record.mechanisms]
    assert summary == [
        ("a", "pass", "a", None, 32, 128),
        ("mx", "fail", "mx:mail.%{d}/24//64", "mail.%{d}", 24, 64),
        ("ip4", "softfail", "ip4:192.0.2.0/24", None, 32, 128),
        ("ip6", "neutral", "ip6:2001:db8::/32", None, 32, 128),
        ("include", "pass", "include:_spf.example.com", "_spf.example.com", 32, 128),
        ("exists", "pass", "exists:%{ir}.bl.example.net", "%{ir}.bl.example.net", 32, 128),
        ("ptr", "pass", "ptr", None, 32, 128),
        ("all", "pass", "all", None, 32, 128),
    ]
    assert record.mechanisms[2].network == ip_network("192.0.2.0/24")
    assert record.mechanisms[3].network == ip_network("2001:db8::/32")
    assert (record.redirect, record.explanation) == ("other.example.com", "why.example.com")


def test_terms_split_on_runs_of_spaces_and_unknown_modifiers_are_kept_out() -> None:
    """Several or trailing spaces separate terms; a well-formed unknown modifier is ignored (RFC 7208 6)."""
    record = parse_record("v=spf1  a   moo.cow-far_out=man:dog/cat -all ")
    assert [m.text for m in record.mechanisms] == ["a", "all"]
    assert record.redirect is None and record.explanation is None


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1 -all moo",  # unknown mechanism, even after all
        "v=spf1 -all.",
        "v=spf1 -all:foobar",
        "v=spf1 -all/8",
        "v=spf1 ptr/0",
        "v=spf1 ptr:",
        "v=spf1 include",
        "v=spf1 include:example.com/24",
        "v=spf1 exists",
        "v=spf1 exists:mail.example.com/24",
        "v=spf1 a:",
        "v=spf1 a/33",
        "v=spf1 a//129",
        "v=spf1 a/24/64",
        "v=spf1 a:foo-bar",  # no top-level label
        "v=spf1 a:museum.",
        "v=spf1 a:111.222.33.44",  # numeric top-level label
        "v=spf1 a:example.-com",
        "v=spf1 a:example.com:8080",
        "v=spf1 a:foo.example.com\x00",
        "v=spf1 a:ctrl.example.com\rptr",
        "v=spf1 ip4",
        "v=spf1 ip4:1.2.3",
        "v=spf1 ip4:1.2.3.4/33",
        "v=spf1 ip4:1.2.3.4/032",
        "v=spf1 ip4:1.2.3.4//32",
        "v=spf1 ip4:1.2.3.4:8080",
        "v=spf1 ip4:::1",
        "v=spf1 ip6:1.2.3.4",
        "v=spf1 ip6::CAFE::BABE",
        "v=spf1 ip6:::1/129",
        "v=spf1 ip6:::1//33",
        "v=spf1 ip6:fe80::1%eth0",
        "v=spf1 redirect:example.com",  # redirect is a modifier
        "v=spf1 redirect=",
        "v=spf1 redirect=-all",
        "v=spf1 redirect=a.example.com redirect=b.example.com",
        "v=spf1 exp=",
        "v=spf1 exp=a.example.com exp=b.example.com",
        "v=spf1 exp=%{r}.example.com",  # c, r, t only in explanation text
        "v=spf1 moo.cow/far_out=man:dog/cat",
        "v=spf1 1up=foo",
        "v=spf1 =all",
        "v=spf1 foo=%abc",
        "v=spf1 a:%{a}.example.com",
        "v=spf1 exists:%{d0}.example.com",
        "v=spf1 exists:foo%.sbl.example.com",
        "v=spf1 a:\u00efgarbage.example.net",
        "v=spf1 -all\tptr",
        "spf2.0/pra -all",
    ],
)
def test_syntax_errors_anywhere_are_detected(text: str) -> None:
    """Every malformed term raises SPFSyntaxError, the permerror of RFC 7208 4.6."""
    with pytest.raises(SPFSyntaxError):
        parse_record(text)


@pytest.mark.parametrize(
    "spec",
    ["example.com", "example.com.", "%{d}", "%{d2}.trusted.example.net", "foo:bar/baz.example.com", "x.xn--zckzah", "a.123-456", "%{l}%%"],
)
def test_valid_domain_specs(spec: str) -> None:
    """A domain-spec ends in a macro or a dot and a top-level label with a letter or an inner dash."""
    check_domain_spec(spec)


@pytest.mark.parametrize(
    ("template", "expected"),
    [  # RFC 7208 7.4, for strong-bad@email.example.com from 192.0.2.3
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{h}", "mx.example.org"),
        ("%{p}", "unknown"),
        ("macro%%percent%_%_space%-url-space", "macro%percent  space%20url-space"),
        ("%{l2r+-}.user", "bad.strong.user"),
    ],
)
def test_macro_expansion_matches_rfc_examples(template: str, expected: str) -> None:
    """Macros expand with their transformers and delimiters exactly as RFC 7208 7.4 shows."""
    assert expand(template, rfc_context()) == expected


def test_ipv6_macros() -> None:
    """For IPv6, %{i} is 32 dotted nibbles, %{v} is ip6 and %{c} the compressed address (RFC 7208 7.4)."""
    context = rfc_context("2001:db8::cb01")
    # RFC 7208 7.4 prints the nibbles in lower case, the openspf suite in upper case; DNS ignores case
    assert expand("%{ir}.%{v}._spf.%{d2}", context).lower() == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )
    assert expand("%{c} %{v}", context, explanation=True) == "2001:db8::cb01 ip6"


def test_explanation_only_macros_and_url_escaping() -> None:
    """c, r and t expand in explanation text only; upper-case macros are URL-escaped (RFC 7208 7.3)."""
    context = rfc_context()
    assert expand("%{c} refused by %{r} at %{t}", context, explanation=True) == (
        "192.0.2.3 refused by mx.receiver.example at 1700000000"
    )
    odd = MacroContext(
        sender="~jack&jill=up-a_b3.c@e8.example.com",
        local_part="~jack&jill=up-a_b3.c",
        sender_domain="e8.example.com",
        domain="e8.example.com",
        ip=IPv4Address("192.0.2.3"),
    )
    assert expand("l=%{L}", odd) == "l=~jack%26jill%3Dup-a_b3.c"
    with pytest.raises(SPFSyntaxError):
        expand("%{c}.example.com", context)
    with pytest.raises(SPFSyntaxError):
        expand("The %{x}-files.", context, explanation=True)


def test_truncation_drops_whole_labels_from_the_left() -> None:
    """An expanded name over 253 characters loses labels on the left until it fits (RFC 7208 7.3)."""
    long_name = "foobar." + ".".join(["somewhat.long.exp.example.com"] * 8) + ".example.com"
    assert len(long_name) > 253
    truncated = truncate_domain(long_name)
    assert truncated == long_name.removeprefix("foobar.") and len(truncated) <= 253
    assert truncate_domain("example.com.") == "example.com"


def test_mail_from_identity_uses_postmaster_at_helo_for_null_senders() -> None:
    """A null reverse-path is checked as postmaster@<HELO> on the HELO domain (RFC 7208 2.4)."""
    assert mail_from_identity("", "mx.example.org") == ("postmaster@mx.example.org", "mx.example.org")
    assert mail_from_identity("a@b.example", "mx.example.org") == ("a@b.example", "b.example")


@given(st.text(max_size=120))
def test_parser_only_ever_raises_its_own_error(text: str) -> None:
    """Arbitrary text after the version either parses or raises SPFSyntaxError, nothing else."""
    try:
        parse_record("v=spf1 " + text)
    except SPFSyntaxError:
        pass


@given(st.text(alphabet=st.sampled_from("%{}slodiphvcrtSLRx0123456789.-+,/_=: a"), max_size=40))
def test_macro_expansion_only_ever_raises_its_own_error(text: str) -> None:
    """Expanding macro-dense text either succeeds or raises SPFSyntaxError, nothing else."""
    for ip in ("192.0.2.3", "2001:db8::1"):
        try:
            expand(text, rfc_context(ip), explanation=True)
        except SPFSyntaxError:
            pass


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_ip4_mechanisms_round_trip(address: IPv4Address, length: int) -> None:
    """Any ip4 network written in a record parses back to the same network."""
    (mechanism,) = parse_record(f"v=spf1 -ip4:{address}/{length}").mechanisms
    assert mechanism.network == ip_network(f"{address}/{length}", strict=False)
    assert mechanism.result == "fail"


@given(st.ip_addresses(v=6))
def test_ipv6_nibbles_reverse_to_the_address(address: IPv6Address) -> None:
    """%{ir} of an IPv6 client is its ip6.arpa name (RFC 7208 7.3)."""
    expanded = expand("%{ir}.%{v}.arpa", rfc_context(str(address)))
    assert expanded.lower() == address.reverse_pointer
    assert parse_macro_string("%{ir}.%{v}.arpa")  # and it is a valid macro-string


ZONES = {
    "acme.example": [{"TXT": "v=spf1 a mx include:_spf.acme.example -all exp=why.acme.example"}, {"A": "192.0.2.1"}],
    "_spf.acme.example": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}],
    "why.acme.example": [{"TXT": "%{i} is not a sender for %{d}; asked by %{r} at %{t}"}],
    # nine misses then a hit: exactly the ten DNS-querying terms RFC 7208 4.6.4 allows
    "ten.acme.example": [{"TXT": "v=spf1 " + "a:miss.acme.example " * 9 + "a:hit.acme.example -all"}],
    "eleven.acme.example": [{"TXT": "v=spf1 " + "a:miss.acme.example " * 10 + "a:hit.acme.example -all"}],
    "miss.acme.example": [{"A": "203.0.113.1"}],
    "hit.acme.example": [{"A": "203.0.113.99"}],
    "slow.acme.example": ["TIMEOUT"],
}


async def test_check_host_reports_term_lookups_and_explanation() -> None:
    """A pass names the matching term and counts DNS terms; a fail carries the expanded exp= text."""
    async with ZoneServer(ZONES) as server:
        resolver = server.resolver(timeout=1.0)
        passed = await check_host("198.51.100.7", "acme.example", "news@acme.example", resolver=resolver)
        failed = await check_host(
            "203.0.113.9", "acme.example", "news@acme.example", resolver=resolver, receiver="mx.example.org", now=42
        )
    assert passed == type(passed)("pass", "", "include:_spf.acme.example", 3)
    assert failed.result == "fail" and failed.mechanism == "all"
    assert failed.explanation == "203.0.113.9 is not a sender for acme.example; asked by mx.example.org at 42"


async def test_check_host_limits_and_errors() -> None:
    """Ten DNS terms are allowed and the eleventh is a permerror; a silent DNS server is a temperror."""
    async with ZoneServer(ZONES) as server:
        resolver = server.resolver(timeout=0.3)
        at_limit = await check_host("203.0.113.99", "ten.acme.example", "a@ten.acme.example", resolver=resolver)
        over = await check_host("203.0.113.99", "eleven.acme.example", "a@eleven.acme.example", resolver=resolver)
        slow = await check_host("192.0.2.1", "slow.acme.example", "a@slow.acme.example", resolver=resolver)
        nothing = await check_host("192.0.2.1", "nowhere.acme.example", "a@nowhere.acme.example", resolver=resolver)
    assert (at_limit.result, at_limit.mechanism, at_limit.lookups) == ("pass", "a:hit.acme.example", MAX_DNS_TERMS)
    assert (over.result, over.lookups) == ("permerror", MAX_DNS_TERMS + 1)
    assert slow.result == "temperror" and "TXT" in slow.mechanism
    assert nothing.result == "none"


async def test_check_host_refuses_a_malformed_client_address() -> None:
    """A client address that is not an IP is a programming error, raised as ValueError."""
    async with ZoneServer(ZONES) as server:
        with pytest.raises(ValueError):
            await check_host("not-an-ip", "acme.example", "a@acme.example", resolver=server.resolver())
