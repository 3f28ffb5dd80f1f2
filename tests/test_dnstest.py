"""The loopback DNS server answers from zone data as an authoritative server would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import dns.exception
import dns.name
import dns.resolver
import pytest

from mailer.dnstest import ZoneServer

ZONES = {
    "Mixed.Example.com": [{"A": "192.0.2.1"}, {"AAAA": "2001:db8::1"}],
    "split.example.com": [{"TXT": ["v=spf1 ", "ip4:192.0.2.1 -all"]}, {"TXT": "second record"}],
    "long.example.com": [{"TXT": "x" * 700}],
    "mx.example.com": [{"MX": [10, "mail.example.com"]}, {"MX": [20, "backup.example.com."]}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mixed.example.com"}],
    "alias.example.com": [{"CNAME": "mixed.example.com."}],
    "silent.example.com": ["TIMEOUT"],
    "half.example.com": [{"TXT": "answered"}, "TIMEOUT"],
    "spfonly.example.com": [{"SPF": "v=spf1 -all"}],
    "spfnotxt.example.com": [{"SPF": "v=spf1 -all"}, {"TXT": "NONE"}],
    "odd name%20.example.com": [{"A": "192.0.2.9"}],
}


@pytest.fixture
async def server() -> AsyncIterator[ZoneServer]:
    async with ZoneServer(ZONES) as running:
        yield running


def texts(answer: dns.resolver.Answer) -> list[bytes]:
    return [b"".join(record.strings) for record in answer]


async def test_answers_names_case_insensitively(server: ZoneServer) -> None:
    """A and AAAA records come back whatever the case of the name asked or configured."""
    resolver = server.resolver()
    assert [r.address for r in await resolver.resolve("mixed.EXAMPLE.com", "A")] == ["192.0.2.1"]
    assert [r.address for r in await resolver.resolve("MIXED.example.COM.", "AAAA")] == ["2001:db8::1"]
    assert server.port > 0 and server.host == "127.0.0.1"


async def test_unknown_name_is_nxdomain_and_missing_type_is_nodata(server: ZoneServer) -> None:
    """A name absent from the zones is NXDOMAIN; a present name without the type is NODATA."""
    resolver = server.resolver()
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("nowhere.example.com", "A")
    answer = await resolver.resolve("mixed.example.com", "MX", raise_on_no_answer=False)
    assert answer.rrset is None and answer.response.rcode() == 0


async def test_multi_string_txt_keeps_strings_and_records_apart(server: ZoneServer) -> None:
    """A list value is one record of several strings; two entries are two records."""
    answer = await server.resolver().resolve("split.example.com", "TXT")
    strings = sorted(tuple(record.strings) for record in answer)
    assert strings == [(b"second record",), (b"v=spf1 ", b"ip4:192.0.2.1 -all")]


async def test_long_txt_is_split_and_fetched_over_tcp(server: ZoneServer) -> None:
    """A 700-byte string becomes 255-byte strings, and the too-big UDP answer is retried over TCP."""
    answer = await server.resolver().resolve("long.example.com", "TXT")
    (record,) = answer
    assert [len(part) for part in record.strings] == [255, 255, 190]
    assert texts(answer) == [b"x" * 700]
    assert server.queries.count(("long.example.com", "TXT")) == 2  # truncated UDP, then TCP


async def test_mx_and_ptr_records(server: ZoneServer) -> None:
    """MX answers carry preference and exchange; PTR answers the in-addr.arpa name."""
    resolver = server.resolver()
    exchanges = sorted((r.preference, r.exchange.to_text()) for r in await resolver.resolve("mx.example.com", "MX"))
    assert exchanges == [(10, "mail.example.com."), (20, "backup.example.com.")]
    (pointer,) = await resolver.resolve_address("192.0.2.1")
    assert pointer.target.to_text() == "mixed.example.com."


async def test_cname_is_followed_within_the_zones(server: ZoneServer) -> None:
    """A query on an alias returns the target's records through the CNAME."""
    answer = await server.resolver().resolve("alias.example.com", "A")
    assert [r.address for r in answer] == ["192.0.2.1"]
    assert answer.canonical_name.to_text() == "mixed.example.com."


async def test_timeout_names_are_never_answered(server: ZoneServer) -> None:
    """A bare TIMEOUT name makes the resolver time out after its own timeout."""
    resolver = server.resolver(timeout=0.3)
    started = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        await resolver.resolve("silent.example.com", "TXT")
    assert 0.25 < time.monotonic() - started < 2.0


async def test_types_listed_before_timeout_are_still_answered(server: ZoneServer) -> None:
    """Records listed before TIMEOUT answer their type; every other type times out (suite convention)."""
    resolver = server.resolver(timeout=0.3)
    assert texts(await resolver.resolve("half.example.com", "TXT")) == [b"answered"]
    with pytest.raises(dns.exception.Timeout):
        await resolver.resolve("half.example.com", "A")


async def test_spf_records_are_served_as_txt_unless_txt_is_listed(server: ZoneServer) -> None:
    """SPF strings are copied to TXT for names without TXT entries; TXT: NONE means none at all."""
    resolver = server.resolver()
    assert texts(await resolver.resolve("spfonly.example.com", "TXT")) == [b"v=spf1 -all"]
    assert texts(await resolver.resolve("spfnotxt.example.com", "SPF")) == [b"v=spf1 -all"]
    empty = await resolver.resolve("spfnotxt.example.com", "TXT", raise_on_no_answer=False)
    assert empty.rrset is None


async def test_set_zones_replaces_the_data(server: ZoneServer) -> None:
    """After set_zones the old names are gone and the new ones answer."""
    server.set_zones({"new.example.com": [{"A": "198.51.100.7"}]})
    resolver = server.resolver()
    assert [r.address for r in await resolver.resolve("new.example.com", "A")] == ["198.51.100.7"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("mixed.example.com", "A")


async def test_names_with_spaces_and_percent_signs(server: ZoneServer) -> None:
    """Any octets are legal in a DNS label, so names the SPF macros produce can be served."""
    name = dns.name.Name([b"odd name%20", b"example", b"com", b""])
    assert [r.address for r in await server.resolver().resolve(name, "A")] == ["192.0.2.9"]


def test_bad_zone_data_is_refused() -> None:
    """An unknown record type or a malformed record is a ValueError when the zones are set."""
    with pytest.raises(ValueError, match="unsupported"):
        ZoneServer({"x.example.com": [{"HINFO": "pc linux"}]})
    with pytest.raises(ValueError, match="one"):
        ZoneServer({"x.example.com": [{"A": "192.0.2.1", "AAAA": "::1"}]})


def test_resolver_needs_a_started_server() -> None:
    """Asking for a resolver before start() is an error, not a resolver aimed at port 0."""
    with pytest.raises(RuntimeError):
        ZoneServer({}).resolver()
