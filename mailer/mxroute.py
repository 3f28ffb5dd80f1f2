"""Where mail for a domain goes: its MX hosts in preference order and their addresses.

RFC 5321 5.1 is the whole algorithm: ask for the domain's MX records; with none, the domain
itself is the one mail host (the "implicit MX", preference 0); try hosts from the lowest
preference up, in random order among equal preferences. RFC 7505 adds the null MX ("0 ."):
the domain accepts no mail at all, so the message fails without any connection.

`mx_hosts` returns a `Route`, a value: the hosts with their addresses, or the reply that ends
the attempt without connecting (permanent for a domain that does not exist or accepts no
mail, temporary when DNS did not answer). `RouteCache` keeps routes for their DNS TTL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

import dns.asyncresolver
import dns.exception
import dns.rdtypes.ANY.MX
import dns.resolver

from mailer.reply import SMTPReply

K = TypeVar("K")
V = TypeVar("V")

MAX_MX_HOSTS = 10  # more than any real domain publishes; bounds the lookups one domain costs
MAX_TTL = 86_400.0  # a day: a route older than that is asked again whatever its TTL said
# A permanent failure (NXDOMAIN, null MX) is remembered briefly: the NXDOMAIN answer's SOA
# minimum (RFC 2308 5) is not at hand here, and a typo'd domain is often fixed within minutes.
NEGATIVE_TTL = 300.0
DEFAULT_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class MXHost:
    name: str  # the exchange, lower case, without the trailing dot
    preference: int
    addresses: tuple[str, ...]  # IPv4 first, then IPv6


@dataclass(frozen=True)
class Route:
    """The mail hosts of `domain`, best first, or the `failure` that stops delivery."""

    domain: str
    hosts: tuple[MXHost, ...] = ()
    failure: SMTPReply | None = None
    ttl: float = 0.0  # seconds this route may be reused
    implicit: bool = False  # no MX records: the domain's own addresses (RFC 5321 5.1)

    def ordered(self, rng: random.Random) -> Route:
        """The same route with hosts of equal preference shuffled (RFC 5321 5.1: the client
        "MUST randomize them to spread the load across multiple mail exchangers")."""
        return replace(self, hosts=_shuffled(self.hosts, rng))


def _shuffled(hosts: Sequence[MXHost], rng: random.Random) -> tuple[MXHost, ...]:
    ordered = sorted(hosts, key=lambda host: host.preference)
    result: list[MXHost] = []
    start = 0
    while start < len(ordered):
        end = start
        while end < len(ordered) and ordered[end].preference == ordered[start].preference:
            end += 1
        group = ordered[start:end]
        rng.shuffle(group)
        result.extend(group)
        start = end
    return tuple(result)


def _permanent(domain: str, code: int, enhanced: str, text: str) -> Route:
    reply = SMTPReply(code=code, text=text, enhanced=enhanced, command="DNS", host=domain)
    return Route(domain=domain, failure=reply, ttl=NEGATIVE_TTL)


def _temporary(domain: str, text: str) -> Route:
    # code None: no SMTP server answered, so the daemon retries it like a refused connection
    return Route(domain=domain, failure=SMTPReply(code=None, text=text, enhanced="4.4.3", command="DNS", host=domain))


@dataclass(frozen=True)
class _Answer:
    status: Literal["ok", "nxdomain", "temporary"]
    records: tuple[dns.rdata.Rdata, ...] = ()
    ttl: float = MAX_TTL
    detail: str = ""


async def _ask(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> _Answer:
    """One query; NODATA is an empty "ok", NXDOMAIN its own status, anything else temporary."""
    try:
        answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return _Answer("nxdomain", detail=f"{name} does not exist (NXDOMAIN)")
    except dns.exception.Timeout:
        return _Answer("temporary", detail=f"DNS timeout asking {rdtype} of {name}")
    except dns.resolver.NoNameservers as error:  # SERVFAIL or REFUSED from every server
        return _Answer("temporary", detail=f"DNS failure asking {rdtype} of {name}: {error}")
    except dns.exception.DNSException as error:
        return _Answer("temporary", detail=f"DNS error asking {rdtype} of {name}: {type(error).__name__}: {error}")
    if answer.rrset is None:
        return _Answer("ok")
    return _Answer("ok", tuple(answer.rrset), float(answer.rrset.ttl))


async def _addresses(resolver: dns.asyncresolver.Resolver, name: str) -> tuple[tuple[str, ...], float, str]:
    """A and AAAA of one host: (addresses, ttl, why none when temporary)."""
    answers = await asyncio.gather(_ask(resolver, name, "A"), _ask(resolver, name, "AAAA"))
    found = tuple(record.to_text() for answer in answers for record in answer.records)
    temporary = next((answer.detail for answer in answers if answer.status == "temporary"), "")
    ttl = min(answer.ttl for answer in answers)
    return found, ttl, temporary


def _domain_literal(domain: str) -> str | None:
    """The address in an RFC 5321 4.1.3 address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]")."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    inner = inner[5:] if inner.lower().startswith("ipv6:") else inner
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


async def mx_hosts(domain: str, *, resolver: dns.asyncresolver.Resolver, rng: random.Random | None = None) -> Route:
    """Resolve where mail for `domain` goes (RFC 5321 5.1, RFC 7505)."""
    domain = domain.strip().rstrip(".").lower()
    literal = _domain_literal(domain)
    if literal is not None:
        return Route(domain=domain, hosts=(MXHost(domain, 0, (literal,)),), ttl=MAX_TTL, implicit=True)
    mx = await _ask(resolver, domain, "MX")
    if mx.status == "nxdomain":
        # RFC 3463 X.1.2: "bad destination system address"
        return _permanent(domain, 550, "5.1.2", f"recipient domain {domain} does not exist (NXDOMAIN)")
    if mx.status == "temporary":
        return _temporary(domain, mx.detail)
    exchanges: dict[str, int] = {}
    null_mx = False
    for record in mx.records:
        assert isinstance(record, dns.rdtypes.ANY.MX.MX)
        name = record.exchange.to_text(omit_final_dot=True).lower()
        if name in ("", "."):
            null_mx = True  # RFC 7505 3: the root name as exchange
            continue
        exchanges[name] = min(record.preference, exchanges.get(name, record.preference))
    if null_mx and not exchanges:
        # RFC 7505 4.1: fail without connecting, with 556 and RFC 7505's 5.1.10
        return _permanent(domain, 556, "5.1.10", f"recipient domain {domain} accepts no mail (null MX, RFC 7505)")
    implicit = not exchanges
    if implicit:
        exchanges = {domain: 0}
    chosen = sorted(exchanges.items(), key=lambda item: (item[1], item[0]))[:MAX_MX_HOSTS]
    resolved = await asyncio.gather(*(_addresses(resolver, name) for name, _ in chosen))
    hosts = tuple(
        MXHost(name, preference, addresses)
        for (name, preference), (addresses, _, _) in zip(chosen, resolved)
        if addresses
    )
    if not hosts:
        temporary = next((why for _, _, why in resolved if why), "")
        if temporary:
            return _temporary(domain, temporary)
        if implicit:
            return _permanent(domain, 550, "5.1.2", f"recipient domain {domain} has no MX and no address records")
        # RFC 3463 X.4.4 "unable to route": every MX host name is dead
        return _permanent(domain, 550, "5.4.4", f"no MX host of {domain} has an address ({', '.join(n for n, _ in chosen)})")
    ttl = min([mx.ttl, MAX_TTL, *(ttl for addresses, ttl, _ in resolved if addresses)])
    return Route(domain=domain, hosts=_shuffled(hosts, rng or random.Random()), ttl=ttl, implicit=implicit)


class BoundedCache(Generic[K, V]):
    """Values that expire, at most `size` of them; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, expires_at: float) -> None:
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class RouteCache:
    """Routes by domain, each kept for its TTL; concurrent lookups of a domain share one."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        *,
        size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.rng = rng or random.Random()
        self._routes: BoundedCache[str, Route] = BoundedCache(size)
        self._pending: dict[str, asyncio.Future[Route]] = {}

    async def lookup(self, domain: str) -> Route:
        key = domain.strip().rstrip(".").lower()
        cached = self._routes.get(key, self.clock())
        if cached is not None:
            return cached.ordered(self.rng)
        pending = self._pending.get(key)
        if pending is not None:
            return (await asyncio.shield(pending)).ordered(self.rng)
        future: asyncio.Future[Route] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            route = await mx_hosts(key, resolver=self.resolver, rng=self.rng)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # marked as retrieved: the waiters get it, nobody else needs it
            raise
        finally:
            del self._pending[key]
        future.set_result(route)
        if route.ttl > 0:
            self._routes.put(key, route, self.clock() + route.ttl)
        return route
