"""mailer.clientaddress: the visitor's address behind trusted reverse proxies, and only behind them."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.clientaddress import TrustedProxies, hop_address, trusted_network

NGINX = TrustedProxies(["127.0.0.1", "::1"])  # one proxy on the same host
LAYERED = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8:aa::/48"])  # a load balancer, then nginx
VISITOR, VISITOR6 = "203.0.113.7", "2001:db8:ff::7"


# Entries of trusted_proxies


@pytest.mark.parametrize(
    ("entry", "network"),
    [
        ("127.0.0.1", "127.0.0.1/32"),
        ("::1", "::1/128"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.0.0.0/255.0.0.0", "10.0.0.0/8"),
        (" 192.168.1.0/24 ", "192.168.1.0/24"),
        ("2001:db8:aa::/48", "2001:db8:aa::/48"),
        ("::ffff:10.0.0.1", "10.0.0.1/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
    ],
)
def test_addresses_and_networks_are_accepted_and_normalized(entry: str, network: str) -> None:
    """An address is a one-address network; IPv4-mapped IPv6 entries become the IPv4 they map."""
    assert str(trusted_network(entry)) == network


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("10.0.0.300", "not an IP address or network: '10.0.0.300'"),
        ("banana", "not an IP address or network: 'banana'"),
        ("", "not an IP address or network: ''"),
        ("010.0.0.1", "not an IP address or network: '010.0.0.1'"),  # octal or decimal? refused
        ("10.0.0.1/33", "'10.0.0.1/33': a prefix of /33 is longer than the address (32 bits)"),
        ("::1/129", "'::1/129': a prefix of /129 is longer than the address (128 bits)"),
        ("10.0.0.1/24", "'10.0.0.1/24' has bits set beyond its prefix: the network is 10.0.0.0/24, the address alone is 10.0.0.1"),
        ("0.0.0.0/0", "'0.0.0.0/0' is every address: any visitor could then choose the address recorded"),
        ("::/0", "'::/0' is every address: any visitor could then choose the address recorded"),
        ("::ffff:0:0/96", "'::ffff:0:0/96' is every address: any visitor could then choose the address recorded"),
    ],
)
def test_bad_entries_say_what_is_wrong(entry: str, problem: str) -> None:
    """A bad entry is a ValueError whose message names the entry and the mistake."""
    with pytest.raises(ValueError) as raised:
        trusted_network(entry)
    assert str(raised.value) == problem


# One X-Forwarded-For element


@pytest.mark.parametrize(
    ("hop", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("  203.0.113.7\t", "203.0.113.7"),
        ("2001:db8::7", "2001:db8::7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("203.0.113.7:5678", "203.0.113.7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
    ],
)
def test_a_hop_is_read_as_an_address_with_any_port_dropped(hop: str, address: str) -> None:
    """Whitespace, an IPv4-mapped form and a port (RFC 7239 node syntax) still give the address."""
    assert str(hop_address(hop)) == address


@pytest.mark.parametrize(
    "hop",
    ["", "banana", "unknown", "203.0.113.300", "203.0.113.7:", "203.0.113.7:http", "[2001:db8::7", "[2001:db8::7]x",
     "[]", "2001:db8::7]:443", "_hidden", "203.0.113.7 203.0.113.8", "0x7f.1"],
)
def test_anything_else_is_no_address(hop: str) -> None:
    """Garbage, RFC 7239 obfuscated names and half-written forms are not addresses."""
    assert hop_address(hop) is None


# Resolution


def test_without_trusted_proxies_a_forged_header_is_ignored() -> None:
    """The default (nothing trusted): the peer is the visitor, whatever X-Forwarded-For says."""
    assert TrustedProxies([]).client("198.51.100.9", ["1.2.3.4"]) == "198.51.100.9"


def test_a_direct_visitor_cannot_forge_its_address() -> None:
    """A peer that is not a trusted proxy is the visitor even when it sends X-Forwarded-For."""
    for forged in (["1.2.3.4"], ["127.0.0.1"], [f"1.2.3.4, {VISITOR}"]):
        assert NGINX.client("198.51.100.9", forged) == "198.51.100.9"


def test_behind_a_trusted_proxy_the_forwarded_client_is_the_visitor() -> None:
    """nginx on 127.0.0.1 appending the visitor's address: that address is the visitor's."""
    assert NGINX.client("127.0.0.1", [VISITOR]) == VISITOR
    assert NGINX.client("::1", [VISITOR6]) == VISITOR6


def test_what_the_visitor_wrote_left_of_the_proxy_s_hop_is_never_believed() -> None:
    """A visitor's own X-Forwarded-For, extended by the proxy, still resolves to the address the proxy saw."""
    for forged in ("1.2.3.4", "127.0.0.1", "10.0.0.5", "banana", "1.2.3.4, ::1"):
        assert NGINX.client("127.0.0.1", [f"{forged}, {VISITOR}"]) == VISITOR
        assert LAYERED.client("127.0.0.1", [f"{forged}, {VISITOR}, 10.1.2.3"]) == VISITOR


def test_several_trusted_hops_are_skipped_from_the_right() -> None:
    """A load balancer in 10/8 and a proxy on 127.0.0.1: the first untrusted address from the right is the visitor."""
    assert LAYERED.client("127.0.0.1", [f"{VISITOR}, 10.1.2.3"]) == VISITOR
    assert LAYERED.client("10.9.9.9", [f"{VISITOR6}, 2001:db8:aa::1, 10.1.2.3"]) == VISITOR6


def test_when_every_hop_is_trusted_the_leftmost_is_the_visitor() -> None:
    """A request from inside the trusted network: the leftmost hop is the client."""
    assert LAYERED.client("127.0.0.1", ["10.0.0.1, 10.0.0.2"]) == "10.0.0.1"


def test_several_header_lines_are_one_list_in_order() -> None:
    """Two X-Forwarded-For field lines read as one comma-separated list (RFC 9110 5.3)."""
    assert LAYERED.client("127.0.0.1", ["1.2.3.4", f"{VISITOR}, 10.1.2.3"]) == VISITOR
    assert LAYERED.client("127.0.0.1", [VISITOR, "10.1.2.3"]) == VISITOR


def test_ipv4_mapped_peers_and_hops_match_ipv4_entries() -> None:
    """A dual-stack socket's ::ffff:127.0.0.1 is the trusted 127.0.0.1; a mapped hop in 10/8 is skipped."""
    assert LAYERED.client("::ffff:127.0.0.1", [f"{VISITOR}, ::ffff:10.1.2.3"]) == VISITOR
    assert NGINX.client("127.0.0.1", ["::ffff:203.0.113.7"]) == VISITOR


def test_whitespace_empty_elements_and_ports_are_tolerated() -> None:
    """Spaces, tabs, empty list elements (RFC 9110 5.6.1) and ports around addresses do not matter."""
    assert NGINX.client("127.0.0.1", [f" ,\t{VISITOR} , ,"]) == VISITOR
    assert NGINX.client("127.0.0.1", [f"{VISITOR}:5678"]) == VISITOR
    assert NGINX.client("127.0.0.1", [f"[{VISITOR6}]:443"]) == VISITOR6


def test_a_missing_or_empty_header_leaves_the_peer() -> None:
    """A trusted proxy that forwarded nothing: the peer is all there is."""
    for header in ([], [""], [" , ,"]):
        assert NGINX.client("127.0.0.1", header) == "127.0.0.1"


def test_garbage_before_the_client_is_found_falls_back_to_the_peer() -> None:
    """A hop that is no address, met while walking from the right, gives the peer: never an error."""
    for header in ("banana", f"{VISITOR}, banana", f"{VISITOR}, unknown", f"{VISITOR}, 10.0.0.300"):
        assert NGINX.client("127.0.0.1", [header]) == "127.0.0.1"
    assert LAYERED.client("127.0.0.1", [f"{VISITOR}, 10.1.2.3, _hidden"]) == "127.0.0.1"


def test_a_peer_that_is_no_address_is_kept_as_it_is() -> None:
    """A server on a Unix socket has no peer address: the header is not believed, the empty peer stays."""
    assert NGINX.client("", [VISITOR]) == ""


@given(peer=st.sampled_from(["127.0.0.1", "::1", "10.1.2.3", "198.51.100.9", ""]), header=st.text(max_size=80))
def test_any_header_gives_the_peer_or_an_address_written_in_it(peer: str, header: str) -> None:
    """Fuzz: resolution never raises, and answers the peer or a valid address taken from the header."""
    resolved = LAYERED.client(peer, [header])
    if resolved != peer:
        assert LAYERED.trusts_peer(peer)
        assert ipaddress.ip_address(resolved)
        assert any(str(hop_address(hop)) == resolved for hop in header.split(","))


@given(hops=st.lists(st.ip_addresses().map(str), min_size=1, max_size=6), forged=st.text(max_size=40))
def test_the_address_the_outermost_trusted_proxy_saw_is_never_overridden(hops: list[str], forged: str) -> None:
    """Fuzz: whatever a visitor prepends, the answer is never left of the rightmost untrusted hop."""
    header = ", ".join([forged, *hops])
    resolved = LAYERED.client("127.0.0.1", [header])
    addresses = [hop_address(hop) for hop in hops]
    untrusted = [str(address) for address in addresses if address is not None and not LAYERED.trusts(address)]
    assert None not in addresses
    if untrusted:
        assert resolved == untrusted[-1]
