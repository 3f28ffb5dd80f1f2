"""Direct MX delivery against real aiosmtpd servers on loopback aliases, routed by a real DNS server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailer.config import TimeoutsConfig
from mailer.direct import DirectTransport
from mailer.dnstest import ZoneServer
from mailer.errors import ConfigError
from mailer.reply import SMTPReply, Verdict
from mailer.testing import CaptureServer
from mailer.transport import Envelope, SMTPTransport, make_transport
from conftest import make_config
from test_mtasts import PolicyServer

MESSAGE = (
    b"From: news@acme.example\r\nTo: lead@shop.test\r\nSubject: =?utf-8?b?5pel5pys?=\r\n"
    b"Message-ID: <1@acme.example>\r\n\r\nHello\r\n.leading dot\r\n..two dots\r\n" + b"x" * 990 + b"\r\n"
)
TIMEOUTS = TimeoutsConfig(connect=1, mail=5, rcpt=5, data=5)

SHOP: dict[str, list[Any]] = {
    "shop.test": [{"MX": [10, "mx1.shop.test"]}, {"MX": [20, "mx2.shop.test"]}],
    "mx1.shop.test": [{"A": "127.0.0.2"}],
    "mx2.shop.test": [{"A": "127.0.0.3"}],
    "plain.test": [{"A": "127.0.0.2"}],
    "nomail.test": [{"MX": [0, "."]}],
    "slow.test": ["TIMEOUT"],
}


def envelope(recipient: str = "lead@shop.test") -> Envelope:
    return Envelope("bounces@acme.example", recipient)


@asynccontextmanager
async def mx_servers(*options: dict[str, Any]) -> AsyncIterator[tuple[int, list[CaptureServer]]]:
    """Capture servers on 127.0.0.2, 127.0.0.3, … all on one port, as MX hosts all listen on 25."""
    for _ in range(10):
        async with AsyncExitStack() as stack:
            servers: list[CaptureServer] = []
            port = 0
            try:
                for number, option in enumerate(options, start=2):
                    server = await stack.enter_async_context(CaptureServer(host=f"127.0.0.{number}", port=port, **option))
                    servers.append(server)
                    port = server.port
            except OSError:
                continue  # that port was taken on a later alias: try another one
            yield port, servers
            return
    raise OSError("no port free on every loopback alias")


async def listen(address: str, port: int, greet: bytes | None) -> asyncio.Server:
    """A raw TCP listener that greets with `greet` and hangs up, or (None) never says a word."""
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if greet is not None:
            writer.write(greet)
            await writer.drain()
            writer.close()
        else:
            await reader.read()

    return await asyncio.start_server(session, address, port)


def direct(dns: ZoneServer, port: int, **options: Any) -> DirectTransport:
    return DirectTransport(resolver=dns.resolver(timeout=0.5), timeouts=TIMEOUTS, port=port, helo="mail.acme.example", **options)


async def send_all(transport: DirectTransport, *recipients: str) -> list[SMTPReply]:
    try:
        return [await transport.send(envelope(recipient), MESSAGE) for recipient in recipients]
    finally:
        await transport.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def trusted(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def serving(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


# -- routing -------------------------------------------------------------------------------


async def test_the_preferred_mx_gets_the_message_byte_for_byte() -> None:
    """The lowest-preference MX receives it, the bytes equal what was sent, the reply names the host."""
    async with ZoneServer(SHOP) as dns, mx_servers({}, {}) as (port, (mx1, mx2)):
        (reply,) = await send_all(direct(dns, port), "lead@shop.test")
    assert reply.verdict is Verdict.ACCEPTED and reply.host.startswith("mx1.shop.test ")
    assert [m.data for m in mx1.messages] == [MESSAGE] and mx2.connections == 0
    assert mx1.commands[:2] == [("MAIL", "bounces@acme.example"), ("RCPT", "lead@shop.test")]


async def test_a_refused_connection_falls_over_to_the_next_mx() -> None:
    """Nobody listening on the first MX: the second one gets the message."""
    async with ZoneServer(SHOP) as dns, mx_servers({}, {}) as (port, (mx1, mx2)):
        await mx1.stop()
        (reply,) = await send_all(direct(dns, port), "lead@shop.test")
    assert reply.verdict is Verdict.ACCEPTED and reply.host.startswith("mx2.shop.test ")
    assert len(mx2.messages) == 1


@pytest.mark.parametrize("greeting", [b"421 4.3.2 mx1.shop.test busy, try later\r\n", None], ids=["421-greeting", "silent"])
async def test_a_host_that_refuses_or_never_greets_falls_over(greeting: bytes | None) -> None:
    """A 421 greeting (RFC 5321 3.8) or no greeting within the timeout: the next MX is tried."""
    async with ZoneServer(SHOP) as dns, mx_servers({}, {}) as (port, (mx1, mx2)):
        await mx1.stop()
        fake = await listen("127.0.0.2", port, greeting)
        try:
            (reply,) = await send_all(direct(dns, port), "lead@shop.test")
        finally:
            fake.close()
    assert reply.verdict is Verdict.ACCEPTED and len(mx2.messages) == 1


async def test_every_mx_down_is_temporary_with_the_last_reason() -> None:
    """When no MX takes the session the message waits for a retry; nothing is lost or bounced."""
    async with ZoneServer(SHOP) as dns, mx_servers({}) as (port, (mx1,)):
        await mx1.stop()
        (reply,) = await send_all(direct(dns, port), "lead@shop.test")
    assert reply.verdict is Verdict.TEMPORARY and reply.code is None and reply.host.startswith("mx2.shop.test")


async def test_a_refusal_after_mail_from_decides_without_failover() -> None:
    """A 550 at RCPT is the domain's answer: it is returned, the backup MX is not asked."""
    async with ZoneServer(SHOP) as dns, mx_servers({}, {}) as (port, (mx1, mx2)):
        mx1.script("lead@shop.test", "RCPT", "550 5.1.1 no such user")
        (reply,) = await send_all(direct(dns, port), "lead@shop.test")
    assert (reply.code, reply.enhanced, reply.verdict) == (550, "5.1.1", Verdict.PERMANENT)
    assert mx2.connections == 0


async def test_mx_names_come_from_the_route_for_provider_recognition() -> None:
    """mx_names gives a domain's MX hosts best first, and nothing for a domain without a route."""
    async with ZoneServer(SHOP) as dns:
        transport = direct(dns, 25)
        assert await transport.mx_names("shop.test") == ("mx1.shop.test", "mx2.shop.test")
        assert await transport.mx_names("nomail.test") == ()
        await transport.close()


async def test_a_domain_without_mx_is_delivered_to_its_address() -> None:
    """The implicit MX (RFC 5321 5.1): plain.test's own A record receives the message."""
    async with ZoneServer(SHOP) as dns, mx_servers({}) as (port, (host,)):
        (reply,) = await send_all(direct(dns, port), "lead@plain.test")
    assert reply.verdict is Verdict.ACCEPTED and len(host.messages) == 1


@pytest.mark.parametrize(
    ("recipient", "code", "enhanced", "verdict"),
    [
        ("lead@nomail.test", 556, "5.1.10", Verdict.PERMANENT),  # RFC 7505 null MX
        ("lead@missing.test", 550, "5.1.2", Verdict.PERMANENT),  # NXDOMAIN
        ("lead@slow.test", None, "4.4.3", Verdict.TEMPORARY),  # DNS timeout
    ],
)
async def test_dns_verdicts_come_back_without_any_connection(recipient: str, code: int | None, enhanced: str, verdict: Verdict) -> None:
    """Null MX and NXDOMAIN bounce, a DNS timeout defers, and no server is contacted for any."""
    async with ZoneServer(SHOP) as dns, mx_servers({}, {}) as (port, servers):
        (reply,) = await send_all(direct(dns, port), recipient)
    assert (reply.code, reply.enhanced, reply.verdict) == (code, enhanced, verdict)
    assert sum(server.connections for server in servers) == 0


# -- sessions ------------------------------------------------------------------------------


async def test_messages_to_one_mx_host_share_one_connection() -> None:
    """Five messages to one MX host travel over one SMTP session."""
    async with ZoneServer(SHOP) as dns, mx_servers({}) as (port, (mx1,)):
        replies = await send_all(direct(dns, port), *(f"lead{n}@shop.test" for n in range(5)))
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 5
    assert mx1.connections == 1 and len(mx1.messages) == 5


async def test_an_idle_connection_is_closed_and_replaced() -> None:
    """After idle_seconds the session is closed (QUIT); the next message opens a new one."""
    async with ZoneServer(SHOP) as dns, mx_servers({}) as (port, (mx1,)):
        transport = direct(dns, port, idle_seconds=0.2)
        await transport.send(envelope(), MESSAGE)
        await asyncio.sleep(0.5)
        assert not transport.pool._idle
        await send_all(transport, "lead@shop.test")
    assert mx1.connections == 2 and len(mx1.messages) == 2


async def test_a_session_closed_by_the_server_is_replaced_without_a_failure() -> None:
    """A pooled session the server dropped is noticed and the message goes over a new one."""
    sessions: list[Any] = []

    class Dropping(CaptureServer):
        def _session(self, session: Any) -> Any:
            sessions.append(session)
            return super()._session(session)

    async with ZoneServer(SHOP) as dns, Dropping(host="127.0.0.2") as mx1:
        transport = direct(dns, mx1.port)
        await transport.send(envelope(), MESSAGE)
        sessions[0].transport.close()  # the server hangs up on the idle session
        await asyncio.sleep(0.05)
        replies = await send_all(transport, "lead@shop.test", "lead2@shop.test")
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 2
    assert mx1.connections == 2 and len(mx1.messages) == 3


async def test_the_sending_address_is_the_configured_source() -> None:
    """source_address binds the connection to that local IP (the warm-up's sending IP)."""
    peers: list[str] = []

    class Recording(CaptureServer):
        async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
            peers.append(session.peer[0])
            return await super().handle_MAIL(server, session, envelope, address, options)

    async with ZoneServer(SHOP) as dns:
        async with Recording(host="127.0.0.2") as mx1:
            (reply,) = await send_all(direct(dns, mx1.port, source_address="127.0.0.9"), "lead@shop.test")
    assert reply.verdict is Verdict.ACCEPTED and peers == ["127.0.0.9"]


async def test_a_provider_limit_on_messages_per_connection_opens_new_sessions() -> None:
    """per_connection=2 (the receiving provider's limit) closes each session after two messages."""
    async with ZoneServer(SHOP) as dns, mx_servers({}) as (port, (mx1,)):
        transport = direct(dns, port)
        try:
            replies = [await transport.send(envelope(f"lead{n}@shop.test"), MESSAGE, per_connection=2) for n in range(5)]
        finally:
            await transport.close()
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 5
    assert mx1.connections == 3 and len(mx1.messages) == 5


async def test_each_sending_ip_greets_with_its_own_helo_name() -> None:
    """Two IPs with their own HELO names each open their own session and greet with their name."""
    greetings: list[tuple[str, str]] = []

    class Recording(CaptureServer):
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
            greetings.append((session.peer[0], hostname))
            session.host_name = hostname
            return responses

    async with ZoneServer(SHOP) as dns:
        async with Recording(host="127.0.0.2") as mx1:
            transport = direct(dns, mx1.port)
            try:
                for source, helo in [("127.0.0.9", "out1.acme.example"), ("127.0.0.10", "out2.acme.example")] * 2:
                    reply = await transport.send(envelope(), MESSAGE, source_address=source, helo=helo)
                    assert reply.verdict is Verdict.ACCEPTED
            finally:
                await transport.close()
    assert sorted(greetings) == [("127.0.0.10", "out2.acme.example"), ("127.0.0.9", "out1.acme.example")]
    assert mx1.connections == 2 and len(mx1.messages) == 4


# -- TLS -----------------------------------------------------------------------------------


async def test_opportunistic_starttls_is_used_when_offered_even_with_an_unknown_certificate(ca: trustme.CA) -> None:
    """STARTTLS offered: the session is upgraded, even though no trusted CA signed the certificate."""
    async with ZoneServer(SHOP) as dns, mx_servers({"starttls": serving(ca, "elsewhere.test")}) as (port, (mx1,)):
        (reply,) = await send_all(direct(dns, port), "lead@shop.test")
    assert reply.verdict is Verdict.ACCEPTED and mx1.messages[0].tls


async def test_without_starttls_the_message_goes_in_clear_unless_tls_is_required() -> None:
    """No STARTTLS offered: delivered in clear; with require_tls the message waits instead."""
    async with ZoneServer(SHOP) as dns, mx_servers({}, {}) as (port, (mx1, mx2)):
        (clear,) = await send_all(direct(dns, port), "lead@shop.test")
        (refused,) = await send_all(direct(dns, port, require_tls=True), "lead@shop.test")
    assert clear.verdict is Verdict.ACCEPTED and not mx1.messages[0].tls
    assert refused.verdict is Verdict.TEMPORARY and "STARTTLS" in refused.text
    assert len(mx1.messages) + len(mx2.messages) == 1


def sts_world(mode: str = "enforce") -> tuple[dict[str, list[Any]], str]:
    zones: dict[str, list[Any]] = {
        "sts.test": [{"MX": [10, "rogue.sts.test"]}, {"MX": [20, "mx.sts.test"]}],
        "rogue.sts.test": [{"A": "127.0.0.2"}],
        "mx.sts.test": [{"A": "127.0.0.3"}],
        "_mta-sts.sts.test": [{"TXT": "v=STSv1; id=1;"}],
        "mta-sts.sts.test": [{"A": "127.0.0.1"}],
    }
    return zones, f"version: STSv1\nmode: {mode}\nmx: mx.sts.test\nmax_age: 604800\n"


Send = Callable[..., Awaitable[SMTPReply]]


@asynccontextmanager
async def sts_delivery(ca: trustme.CA, trusted: ssl.SSLContext, mode: str, *options: dict[str, Any]) -> AsyncIterator[tuple[Send, list[CaptureServer]]]:
    zones, policy = sts_world(mode)
    async with ZoneServer(zones) as dns, PolicyServer(ca, "sts.test", policy) as web, mx_servers(*options) as (port, servers):
        transport = direct(dns, port, tls_context=trusted, https_port=web.port)

        async def send() -> SMTPReply:
            return (await send_all(transport, "lead@sts.test"))[0]

        yield send, servers


async def test_mta_sts_enforce_skips_an_mx_outside_the_policy(ca: trustme.CA, trusted: ssl.SSLContext) -> None:
    """enforce: the preferred but unlisted MX is never contacted; the listed one gets it over verified TLS."""
    good = serving(ca, "mx.sts.test")
    async with sts_delivery(ca, trusted, "enforce", {}, {"starttls": good}) as (send, (rogue, mx)):
        reply = await send()
    assert reply.verdict is Verdict.ACCEPTED and rogue.connections == 0
    assert len(mx.messages) == 1 and mx.messages[0].tls


@pytest.mark.parametrize(
    "server",
    [{"starttls": "wrong-name"}, {"starttls": "untrusted"}, {}],
    ids=["certificate-for-another-name", "untrusted-ca", "no-starttls"],
)
async def test_mta_sts_enforce_never_delivers_without_a_valid_certificate(ca: trustme.CA, trusted: ssl.SSLContext, server: dict[str, Any]) -> None:
    """enforce: a certificate not valid for the MX name, or no STARTTLS at all, defers the message."""
    if server.get("starttls") == "wrong-name":
        server = {"starttls": serving(ca, "other.test")}
    elif server.get("starttls") == "untrusted":
        server = {"starttls": serving(trustme.CA(), "mx.sts.test")}
    async with sts_delivery(ca, trusted, "enforce", {}, server) as (send, (rogue, mx)):
        reply = await send()
    assert reply.verdict is Verdict.TEMPORARY and reply.code is None
    assert rogue.connections == 0 and mx.messages == []


async def test_mta_sts_testing_mode_delivers_as_before(ca: trustme.CA, trusted: ssl.SSLContext) -> None:
    """testing: the policy is not enforced, the preferred MX gets the message in clear."""
    async with sts_delivery(ca, trusted, "testing", {}, {}) as (send, (rogue, mx)):
        reply = await send()
    assert reply.verdict is Verdict.ACCEPTED and len(rogue.messages) == 1


async def test_mta_sts_enforce_with_no_matching_mx_is_temporary(ca: trustme.CA, trusted: ssl.SSLContext) -> None:
    """enforce with no listed MX among the domain's hosts: no connection, a 4.7.5 deferral."""
    zones, _ = sts_world()
    policy = "version: STSv1\nmode: enforce\nmx: *.elsewhere.test\nmax_age: 600\n"
    async with ZoneServer(zones) as dns, PolicyServer(ca, "sts.test", policy) as web, mx_servers({}, {}) as (port, servers):
        (reply,) = await send_all(direct(dns, port, tls_context=trusted, https_port=web.port), "lead@sts.test")
    assert reply.verdict is Verdict.TEMPORARY and reply.enhanced == "4.7.5"
    assert sum(s.connections for s in servers) == 0


# -- configuration -------------------------------------------------------------------------


def test_delivery_mode_chooses_the_transport(tmp_path: Path) -> None:
    """[delivery] mode = "direct" builds a DirectTransport; the default stays the relay."""
    assert isinstance(make_transport(make_config(tmp_path, 25)), SMTPTransport)
    config = make_config(tmp_path, 25, delivery={"mode": "direct", "helo": "mail.acme.example", "require_tls": True})
    transport = make_transport(config)
    assert isinstance(transport, DirectTransport) and transport.require_tls and transport.helo == "mail.acme.example"


@pytest.mark.parametrize(
    ("delivery", "problem"),
    [({"mode": "mx"}, "delivery.mode"), ({"helo": "mail acme"}, "delivery.helo"), ({"require_tls": "yes"}, "delivery.require_tls")],
)
def test_bad_delivery_settings_are_named(tmp_path: Path, delivery: dict[str, Any], problem: str) -> None:
    """A wrong mode, an EHLO name that is no host name, or a non-boolean flag is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=problem):
        make_config(tmp_path, 25, delivery=delivery)
