"""MX routes (RFC 5321 5.1, RFC 7505) resolved from a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailer.dnstest import ZoneServer
from mailer.mxroute import NEGATIVE_TTL, BoundedCache, MXHost, Route, RouteCache, mx_hosts
from mailer.reply import Verdict

ZONES: dict[str, list[Any]] = {
    "shop.test": [{"MX": [20, "backup.shop.test"]}, {"MX": [10, "mx1.shop.test"]}],
    "mx1.shop.test": [{"A": "127.0.0.2"}, {"AAAA": "::1"}],
    "backup.shop.test": [{"A": "127.0.0.3"}],
    "plain.test": [{"A": "127.0.0.4"}, {"TXT": "no mail records here"}],
    "nomail.test": [{"MX": [0, "."]}, {"A": "127.0.0.5"}],
    "bare.test": [{"TXT": "v=spf1 -all"}],
    "dead.test": [{"MX": [10, "gone.dead.test"]}],
    "slow.test": ["TIMEOUT"],
    "half.test": [{"MX": [10, "slowhost.half.test"]}, {"MX": [20, "ok.half.test"]}],
    "slowhost.half.test": ["TIMEOUT"],
    "ok.half.test": [{"A": "127.0.0.6"}],
    "fair.test": [{"MX": [10, "a.fair.test"]}, {"MX": [10, "b.fair.test"]}, {"MX": [10, "c.fair.test"]}, {"MX": [50, "z.fair.test"]}],
    "a.fair.test": [{"A": "127.0.0.7"}],
    "b.fair.test": [{"A": "127.0.0.8"}],
    "c.fair.test": [{"A": "127.0.0.9"}],
    "z.fair.test": [{"A": "127.0.0.10"}],
}


async def test_mx_hosts_come_in_preference_order_with_their_addresses() -> None:
    """The lower preference comes first whatever the answer's order; A before AAAA."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("Shop.Test.", resolver=server.resolver())
    assert route.failure is None and not route.implicit
    assert route.hosts == (
        MXHost("mx1.shop.test", 10, ("127.0.0.2", "::1")),
        MXHost("backup.shop.test", 20, ("127.0.0.3",)),
    )


async def test_equal_preferences_are_shuffled_and_lower_ones_stay_first() -> None:
    """RFC 5321 5.1: hosts of equal preference are tried in random order, never after a worse one."""
    async with ZoneServer(ZONES) as server:
        resolver = server.resolver()
        rng = random.Random(7)
        orders = {tuple(h.name for h in (await mx_hosts("fair.test", resolver=resolver, rng=rng)).hosts) for _ in range(20)}
    assert len(orders) > 1
    assert all(order[-1] == "z.fair.test" and set(order[:3]) == {"a.fair.test", "b.fair.test", "c.fair.test"} for order in orders)


async def test_a_domain_without_mx_is_its_own_mail_host() -> None:
    """RFC 5321 5.1: no MX records means an implicit MX of preference 0 at the domain itself."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("plain.test", resolver=server.resolver())
    assert route.implicit and route.hosts == (MXHost("plain.test", 0, ("127.0.0.4",)),)


async def test_a_null_mx_fails_permanently_with_556_5_1_10() -> None:
    """RFC 7505: "0 ." says the domain takes no mail; its A record is not used."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("nomail.test", resolver=server.resolver())
        asked = list(server.queries)
    assert route.hosts == () and route.failure is not None
    assert (route.failure.code, route.failure.enhanced, route.failure.verdict) == (556, "5.1.10", Verdict.PERMANENT)
    assert asked == [("nomail.test", "MX")]


async def test_a_domain_that_does_not_exist_fails_permanently() -> None:
    """NXDOMAIN is a bad destination system (RFC 3463 X.1.2): a bounce, not a retry."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("missing.test", resolver=server.resolver())
    assert route.failure is not None and route.failure.verdict is Verdict.PERMANENT
    assert route.failure.enhanced == "5.1.2" and "missing.test" in route.failure.text
    assert route.ttl == NEGATIVE_TTL


async def test_no_mx_and_no_address_fails_permanently() -> None:
    """A domain that exists with neither MX nor A/AAAA cannot be delivered to."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("bare.test", resolver=server.resolver())
    assert route.failure is not None and route.failure.verdict is Verdict.PERMANENT


async def test_mx_hosts_that_do_not_exist_fail_permanently() -> None:
    """Every MX name is NXDOMAIN: unable to route (RFC 3463 X.4.4)."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("dead.test", resolver=server.resolver())
    assert route.failure is not None and route.failure.enhanced == "5.4.4"
    assert route.failure.verdict is Verdict.PERMANENT


async def test_a_dns_timeout_is_temporary() -> None:
    """An MX query nobody answers defers the message; it never bounces it."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("slow.test", resolver=server.resolver(timeout=0.3))
    assert route.failure is not None and route.failure.code is None
    assert route.failure.verdict is Verdict.TEMPORARY and "timeout" in route.failure.text.lower()
    assert route.ttl == 0


async def test_an_mx_host_whose_address_times_out_is_skipped_for_the_others() -> None:
    """One MX host's lookup timing out leaves the route to the hosts that resolved."""
    async with ZoneServer(ZONES) as server:
        route = await mx_hosts("half.test", resolver=server.resolver(timeout=0.3))
    assert route.failure is None and [h.name for h in route.hosts] == ["ok.half.test"]


async def test_an_address_literal_routes_to_that_address() -> None:
    """RFC 5321 4.1.3: user@[192.0.2.1] goes to 192.0.2.1 without DNS."""
    async with ZoneServer({}) as server:
        route = await mx_hosts("[IPv6:::1]", resolver=server.resolver())
        assert list(server.queries) == []
    assert route.hosts == (MXHost("[ipv6:::1]", 0, ("::1",)),)


async def test_the_route_cache_shares_one_lookup_and_does_not_keep_zero_ttls() -> None:
    """Concurrent lookups of a domain cost one set of queries; a TTL of 0 is asked again."""
    async with ZoneServer(ZONES) as server:
        cache = RouteCache(server.resolver())
        routes = await asyncio.gather(*(cache.lookup("shop.test") for _ in range(5)))
        first = len(server.queries)
        await cache.lookup("shop.test")
        second = len(server.queries) - first
    assert {r.hosts[0].name for r in routes} == {"mx1.shop.test"}
    assert first == 5 and second == 5  # MX, then A and AAAA of both hosts


def test_the_route_cache_keeps_routes_for_their_ttl() -> None:
    """A cached route is served until its TTL runs out (checked on the cache itself)."""
    cache: BoundedCache[str, Route] = BoundedCache(10)
    route = Route("shop.test", hosts=(MXHost("mx1.shop.test", 10, ("127.0.0.2",)),), ttl=60)
    cache.put("shop.test", route, expires_at=1060.0)
    assert cache.get("shop.test", 1059.9) == route
    assert cache.get("shop.test", 1060.0) is None and len(cache) == 0


def test_the_bounded_cache_drops_the_least_recently_used() -> None:
    """Beyond its size the cache forgets the entry used longest ago, not the newest."""
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1, 100)
    cache.put("b", 2, 100)
    assert cache.get("a", 0) == 1
    cache.put("c", 3, 100)
    assert (cache.get("a", 0), cache.get("b", 0), cache.get("c", 0)) == (1, None, 3)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 99)), max_size=12, unique_by=lambda t: t[1]), st.integers())
def test_ordering_keeps_preference_order_and_every_host(hosts: list[tuple[int, int]], seed: int) -> None:
    """Shuffling within equal preferences never reorders preferences nor loses a host."""
    route = Route("x.test", hosts=tuple(MXHost(f"h{n}.x.test", pref, ("127.0.0.1",)) for pref, n in hosts))
    ordered = route.ordered(random.Random(seed)).hosts
    assert sorted(ordered, key=lambda h: h.name) == sorted(route.hosts, key=lambda h: h.name)
    assert [h.preference for h in ordered] == sorted(h.preference for h in route.hosts)
