"""MTA-STS (RFC 8461): record and policy parsing, and fetching from a real HTTPS server on loopback."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from mailer.dnstest import ZoneServer
from mailer.mtasts import MAX_POLICY_BYTES, Mode, Policy, PolicyCache, PolicyError, fetch_policy, mx_matches, parse_policy, parse_record

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.sts.test\r\nmx: *.backup.sts.test\r\nmax_age: 86400\r\n"


class PolicyServer:
    """HTTPS on 127.0.0.1 answering /.well-known/mta-sts.txt as `mta-sts.<domain>` would."""

    def __init__(self, ca: trustme.CA, domain: str, body: str | bytes = POLICY, **answer: Any) -> None:
        self.ca = ca
        self.domain = domain
        self.body = body
        self.cert_name = answer.pop("cert_name", f"mta-sts.{domain}")
        self.answer = {"status": 200, "content_type": "text/plain", **answer}
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _policy(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = self.body.encode() if isinstance(self.body, str) else self.body
        return web.Response(body=body, **self.answer)

    async def __aenter__(self) -> PolicyServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(self.cert_name).configure_cert(context)
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._policy)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def sts_zones(domain: str = "sts.test", record: str = "v=STSv1; id=20260105;") -> dict[str, list[Any]]:
    return {f"_mta-sts.{domain}": [{"TXT": record}], f"mta-sts.{domain}": [{"A": "127.0.0.1"}]}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def trusted(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# -- pure parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1; id=abc; ext_1=yes"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=abc;"], "abc"),  # other TXT records are discarded
        (["v=STSv1; id=abc;", "v=STSv1; id=def;"], None),  # 3.1: not exactly one record
        (["v=STSv1; id=has-dash;"], None),  # the id is letters and digits only
        (["v=STSv1; id=" + "a" * 33], None),  # at most 32 of them
        (["v=STSv1;"], None),
        (["V=STSv1; id=abc"], None),
        ([], None),
    ],
)
def test_the_txt_record_gives_the_policy_id(texts: list[str], expected: str | None) -> None:
    """RFC 8461 3.1: exactly one record starting "v=STSv1;" with a valid id, or no policy."""
    assert parse_record(texts) == expected


def test_a_policy_parses_with_every_field() -> None:
    """Version, mode, several mx lines and max_age are read; unknown keys are ignored."""
    policy = parse_policy(POLICY.replace("max_age", "future: 1\nmax_age"), policy_id="x1")
    assert policy == Policy(Mode.ENFORCE, ("mx1.sts.test", "*.backup.sts.test"), 86400, "x1")


@pytest.mark.parametrize(
    "text",
    [
        POLICY.replace("STSv1", "STSv2"),
        POLICY.replace("enforce", "strict"),
        POLICY.replace("86400", "31557601"),  # 3.2: at most a year
        POLICY.replace("86400", "-1"),
        "version: STSv1\nmode: enforce\nmax_age: 60\n",  # enforce without mx
        POLICY + "no colon here\n",
    ],
)
def test_an_invalid_policy_is_refused(text: str) -> None:
    """Anything off the RFC 8461 3.2 grammar raises PolicyError (the domain then has no policy)."""
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_mode_none_needs_no_mx() -> None:
    """A "none" policy (a domain withdrawing MTA-STS) is valid without mx lines."""
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").mode is Mode.NONE


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mx1.sts.test", "MX1.sts.test.", True),
        ("*.sts.test", "mx1.sts.test", True),
        ("*.sts.test", "sts.test", False),  # 4.1: the wildcard is one whole label
        ("*.sts.test", "a.b.sts.test", False),
        ("*.sts.test", "mx1.other.test", False),
        ("mx1.sts.test", "mx2.sts.test", False),
    ],
)
def test_mx_patterns_match_one_leftmost_label(pattern: str, host: str, matches: bool) -> None:
    """RFC 8461 4.1: exact names, or "*." standing for exactly one label."""
    assert mx_matches(pattern, host) is matches


@given(st.text(max_size=300))
def test_policy_parsing_only_ever_raises_policy_error(text: str) -> None:
    """Whatever a web server sends, parsing ends in a Policy or a PolicyError."""
    try:
        parse_policy(text)
    except PolicyError:
        pass


# -- fetching over real HTTPS ---------------------------------------------------------------


async def test_the_policy_is_fetched_over_https_from_mta_sts_host(ca: trustme.CA, trusted: ssl.SSLContext) -> None:
    """GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt, resolved through our DNS, certificate checked."""
    async with ZoneServer(sts_zones()) as dns_server, PolicyServer(ca, "sts.test") as web_server:
        policy = await fetch_policy("sts.test", resolver=dns_server.resolver(), port=web_server.port, ssl_context=trusted)
        asked = list(dns_server.queries)
    assert policy.mode is Mode.ENFORCE and policy.allows("mx1.sts.test") and policy.allows("b2.backup.sts.test")
    assert ("mta-sts.sts.test", "A") in asked


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"status": 404}, "HTTP 404"),
        ({"status": 301, "headers": {"Location": "/.well-known/mta-sts.txt"}}, "HTTP 301"),  # 3.3: no redirects
        ({"content_type": "text/html"}, "text/html"),
        ({"cert_name": "www.sts.test"}, "certificate"),  # 3.3: valid for mta-sts.DOMAIN
    ],
)
async def test_a_bad_answer_is_no_policy(ca: trustme.CA, trusted: ssl.SSLContext, answer: dict[str, Any], problem: str) -> None:
    """A status other than 200, a redirect, another media type or a wrong certificate: PolicyError."""
    async with ZoneServer(sts_zones()) as dns_server, PolicyServer(ca, "sts.test", **answer) as web_server:
        with pytest.raises(PolicyError, match=f"(?i){problem}"):
            await fetch_policy("sts.test", resolver=dns_server.resolver(), port=web_server.port, ssl_context=trusted)


async def test_an_untrusted_certificate_is_no_policy(ca: trustme.CA) -> None:
    """The policy server's certificate must chain to a trusted CA (the system's here: it does not)."""
    async with ZoneServer(sts_zones()) as dns_server, PolicyServer(ca, "sts.test") as web_server:
        with pytest.raises(PolicyError, match="(?i)certificate"):
            await fetch_policy("sts.test", resolver=dns_server.resolver(), port=web_server.port)


async def test_a_policy_over_64_kb_is_refused(ca: trustme.CA, trusted: ssl.SSLContext) -> None:
    """RFC 8461 3.3's size limit: the body is not read past 64 KB."""
    huge = POLICY + "".join(f"mx: mx{n}.sts.test\n" for n in range(MAX_POLICY_BYTES // 16))
    async with ZoneServer(sts_zones()) as dns_server, PolicyServer(ca, "sts.test", huge) as web_server:
        with pytest.raises(PolicyError, match="larger than"):
            await fetch_policy("sts.test", resolver=dns_server.resolver(), port=web_server.port, ssl_context=trusted)


async def test_the_cache_fetches_once_per_id_and_again_when_it_changes(ca: trustme.CA, trusted: ssl.SSLContext) -> None:
    """Same id: the cached policy; a new id in the TXT record: fetched again (RFC 8461 5.1)."""
    now = [0.0]
    async with ZoneServer(sts_zones()) as dns_server, PolicyServer(ca, "sts.test") as web_server:
        cache = PolicyCache(dns_server.resolver(), port=web_server.port, ssl_context=trusted, clock=lambda: now[0])
        first = await cache.policy("sts.test")
        now[0] += 120  # past the TXT recheck
        second = await cache.policy("sts.test")
        assert web_server.hits == 1 and first == second and first is not None and first.id == "20260105"
        dns_server.set_zones(sts_zones(record="v=STSv1; id=20260106;"))
        now[0] += 120
        third = await cache.policy("sts.test")
    assert web_server.hits == 2 and third is not None and third.id == "20260106"


async def test_a_cached_policy_outlives_its_txt_record(ca: trustme.CA, trusted: ssl.SSLContext) -> None:
    """RFC 8461 5.1: removing the TXT record (or blocking it) does not downgrade a fresh policy."""
    now = [0.0]
    async with ZoneServer(sts_zones()) as dns_server, PolicyServer(ca, "sts.test") as web_server:
        cache = PolicyCache(dns_server.resolver(), port=web_server.port, ssl_context=trusted, clock=lambda: now[0])
        assert await cache.policy("sts.test") is not None
        dns_server.set_zones({})
        now[0] += 3600
        kept = await cache.policy("sts.test")
        now[0] += 86400
        expired = await cache.policy("sts.test")
    assert kept is not None and kept.mode is Mode.ENFORCE
    assert expired is None


async def test_a_domain_without_the_record_has_no_policy(trusted: ssl.SSLContext) -> None:
    """No _mta-sts TXT record: no policy, and no HTTPS request is tried."""
    async with ZoneServer({"mta-sts.plain.test": [{"A": "127.0.0.1"}]}) as dns_server:
        cache = PolicyCache(dns_server.resolver(), port=1, ssl_context=trusted)
        assert await cache.policy("plain.test") is None
        asked = list(dns_server.queries)
    assert asked == [("_mta-sts.plain.test", "TXT")]
