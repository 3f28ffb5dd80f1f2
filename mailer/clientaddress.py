"""Who is asking: a visitor's address when the tracking server sits behind a reverse proxy.

Behind nginx or Caddy every connection comes from the proxy, so the connection's peer says
nothing about the visitor. The proxy names the address it received the request from by
appending it to `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, Caddy's default),
after whatever the request already carried. Only that last hop is the proxy's word; anything
to its left came from the client, or from proxies further out, and may be forged.

So the header is believed only when the peer is one of the operator's `trusted_proxies`, and
then read from the right: trusted proxies are skipped, and the first address that is not one
of them is the client (when every hop is a trusted proxy, the leftmost is). A hop that is not
an address, met before the client is found, means the header cannot be read: the peer is
the answer then, never an error page. What lies left of the client is never read, so a
client's own forgery there is harmless.

Only X-Forwarded-For is read, not RFC 7239's `Forwarded`: nginx and Caddy maintain the former
but pass a client's `Forwarded` header through untouched, so believing it behind them would
be believing whatever the visitor wrote.

Why not aiohttp-remotes (aio-libs), which does this as middleware: its `XForwardedFiltered`
believes the header whatever the peer (a direct client forges its address at will), its
`XForwardedStrict` wants one trusted set per hop in order and answers 400 to a malformed
header, and both clone every request, a cost the open pixel would pay even when no proxy is
configured. The rules above are a page of code.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 4291 2.5.5.2: ::ffff:0:0/96 holds IPv4-mapped addresses; a dual-stack socket reports an
# IPv4 peer as ::ffff:a.b.c.d, which must match the IPv4 entry the operator wrote.
_MAPPED_PREFIX = 96


def trusted_network(entry: str) -> Network:
    """One `trusted_proxies` entry (an address or a CIDR network, IPv4 or IPv6) as a network;
    ValueError saying what is wrong with it."""
    text = entry.strip()
    try:
        network = ipaddress.ip_network(text)
    except ValueError as error:
        raise ValueError(_problem(text, error)) from None
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= _MAPPED_PREFIX:
        network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - _MAPPED_PREFIX}")
    if network.prefixlen == 0:  # after the mapping: ::ffff:0:0/96 is every IPv4 address
        raise ValueError(f"{text!r} is every address: any visitor could then choose the address recorded")
    return network


def _problem(text: str, error: ValueError) -> str:
    address, slash, prefix = text.partition("/")
    try:
        bits = ipaddress.ip_address(address).max_prefixlen
    except ValueError:
        return f"not an IP address or network: {text!r}"
    if slash and prefix.isascii() and prefix.isdigit() and int(prefix) > bits:
        return f"{text!r}: a prefix of /{prefix} is longer than the address ({bits} bits)"
    if "host bits set" in str(error):
        network = ipaddress.ip_network(text, strict=False)
        return f"{text!r} has bits set beyond its prefix: the network is {network}, the address alone is {address}"
    return f"not an IP address or network: {text!r}"


def hop_address(hop: str) -> Address | None:
    """One X-Forwarded-For element as an address, IPv4-mapped ones as IPv4; None if it is none.

    Some proxies add a port ("192.0.2.7:5678", "[2001:db8::7]:443", RFC 7239 6's node
    syntax); it is dropped.
    """
    text = hop.strip()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else "?"
        if rest and not (rest[0] == ":" and _is_port(rest[1:])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not _is_port(port):
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# Cached: parsing and printing an address cost about 2 µs, and the same visitors and proxies
# come back all day (a pixel request takes about 80 µs in all, bench/tracking.py).
@lru_cache(maxsize=4096)
def _hop(hop: str) -> tuple[Address, str] | None:
    address = hop_address(hop)
    return None if address is None else (address, str(address))


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


class TrustedProxies:
    """The proxies whose X-Forwarded-For is believed, parsed once at start-up."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(trusted_network(entry) for entry in entries)
        # The same few proxy addresses connect all day: each is parsed and matched once.
        self.trusts_peer = lru_cache(maxsize=1024)(self._trusts_peer)

    def trusts(self, address: Address) -> bool:
        for network in self.networks:  # a loop: any() over a generator costs twice as much here
            if address in network:
                return True
        return False

    def _trusts_peer(self, peer: str) -> bool:
        hop = _hop(peer)
        return hop is not None and self.trusts(hop[0])

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The visitor's address, given the connection's peer and every X-Forwarded-For value
        in the order received (RFC 9110 5.3: several field lines are one comma-separated list)."""
        if not self.networks or not self.trusts_peer(peer):
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        leftmost = peer
        for text in reversed(hops):
            if not text or text.isspace():
                continue  # RFC 9110 5.6.1: empty list elements are ignored
            hop = _hop(text)
            if hop is None:
                return peer
            if not self.trusts(hop[0]):
                return hop[1]
            leftmost = hop[1]
        return leftmost
