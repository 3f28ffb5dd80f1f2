"""SMTP delivery to a real aiosmtpd relay on loopback: TLS as configured, AUTH, faults as replies."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailer.config import RelayConfig, TimeoutsConfig
from mailer.reply import Verdict
from mailer.testing import CaptureServer
from mailer.transport import Envelope, SMTPTransport

MESSAGE = b"From: a@acme.example\r\nTo: b@example.com\r\nSubject: hi\r\nMessage-ID: <1@acme.example>\r\n\r\nHello\r\n.leading dot\r\n"
TIMEOUTS = TimeoutsConfig(connect=5, mail=5, rcpt=5, data=5)
ENVELOPE = Envelope("bounces@acme.example", "b@example.com")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    yield str(path)


async def send(relay: RelayConfig, count: int = 1) -> list[tuple[Verdict, str]]:
    connection = SMTPTransport(relay, TIMEOUTS).connection()
    results = []
    try:
        for _ in range(count):
            reply = await connection.send(ENVELOPE, MESSAGE)
            results.append((reply.verdict, str(reply)))
    finally:
        await connection.close()
    return results


async def test_several_messages_share_one_connection() -> None:
    """Three messages go over one SMTP session, each accepted, bodies intact (dot-stuffing)."""
    async with CaptureServer() as server:
        results = await send(RelayConfig(port=server.port), count=3)
    assert [verdict for verdict, _ in results] == [Verdict.ACCEPTED] * 3
    assert len(server.messages) == 3
    assert all(m.data.replace(b"\r\n", b"\n").endswith(b"Hello\n.leading dot\n") for m in server.messages)
    assert server.connections == 1


async def test_starttls_upgrades_and_verifies_the_relay_certificate(server_context: ssl.SSLContext, ca_file: str) -> None:
    """tls = "starttls" upgrades the session, trusting the configured CA bundle."""
    async with CaptureServer(starttls=server_context) as server:
        results = await send(RelayConfig(port=server.port, tls="starttls", ca_file=ca_file))
    assert results[0][0] is Verdict.ACCEPTED
    assert server.messages[0].tls


async def test_implicit_tls_speaks_tls_from_the_first_byte(server_context: ssl.SSLContext, ca_file: str) -> None:
    """tls = "implicit" (port 465 style) delivers over TLS."""
    async with CaptureServer(implicit_tls=server_context) as server:
        results = await send(RelayConfig(port=server.port, tls="implicit", ca_file=ca_file))
    assert results[0][0] is Verdict.ACCEPTED
    assert server.messages[0].tls


async def test_an_untrusted_certificate_defers_instead_of_sending_in_clear(server_context: ssl.SSLContext) -> None:
    """A relay certificate the system does not trust stops delivery: temporary, nothing sent."""
    async with CaptureServer(starttls=server_context) as server:
        results = await send(RelayConfig(port=server.port, tls="starttls"))
    assert results[0][0] is Verdict.TEMPORARY
    assert "CERTIFICATE" in results[0][1].upper()
    assert server.messages == []


async def test_starttls_required_but_not_offered_is_temporary() -> None:
    """tls = "starttls" against a relay without STARTTLS never falls back to plain text."""
    async with CaptureServer() as server:
        results = await send(RelayConfig(port=server.port, tls="starttls"))
    assert results[0][0] is Verdict.TEMPORARY
    assert server.messages == []


async def test_auth_uses_the_password_from_the_environment(monkeypatch: pytest.MonkeyPatch, server_context: ssl.SSLContext, ca_file: str) -> None:
    """AUTH logs in with the user from mailer.toml and the password from the named variable."""
    monkeypatch.setenv("RELAY_SECRET", "s3cret")
    async with CaptureServer(starttls=server_context, logins={"mailer": "s3cret"}) as server:
        relay = RelayConfig(port=server.port, tls="starttls", ca_file=ca_file, username="mailer", password_env="RELAY_SECRET")
        results = await send(relay)
    assert results[0][0] is Verdict.ACCEPTED
    assert server.messages[0].login == "mailer"


async def test_a_wrong_password_never_fails_a_message(monkeypatch: pytest.MonkeyPatch, server_context: ssl.SSLContext, ca_file: str) -> None:
    """A 535 at AUTH refuses the sender, not the recipient: the message waits (temporary)."""
    monkeypatch.setenv("RELAY_SECRET", "wrong")
    async with CaptureServer(starttls=server_context, logins={"mailer": "s3cret"}) as server:
        relay = RelayConfig(port=server.port, tls="starttls", ca_file=ca_file, username="mailer", password_env="RELAY_SECRET")
        results = await send(relay)
    assert results[0][0] is Verdict.TEMPORARY
    assert "535" in results[0][1]


async def test_connection_refused_is_temporary(tmp_path: Path) -> None:
    """Nobody listening: a temporary outcome with the reason, not an exception."""
    async with CaptureServer() as server:
        port = server.port
    results = await send(RelayConfig(port=port))
    assert results[0][0] is Verdict.TEMPORARY
    assert "connect" in results[0][1].lower()


async def test_a_refused_recipient_leaves_the_session_usable() -> None:
    """After a 550 at RCPT the session is reset and the next message goes through it."""
    async with CaptureServer() as server:
        server.script("b@example.com", "RCPT", "550 5.1.1 No such user")
        results = await send(RelayConfig(port=server.port), count=2)
    assert results[0][0] is Verdict.PERMANENT and "5.1.1" in results[0][1]
    assert results[1][0] is Verdict.ACCEPTED
    assert server.connections == 1


async def test_a_421_closes_the_session_and_the_next_message_reconnects() -> None:
    """A 421 means the server is closing: the connection is discarded, never reused."""
    async with CaptureServer() as server:
        server.script("b@example.com", "RCPT", "421 4.7.0 Too many errors, closing")
        connection = SMTPTransport(RelayConfig(port=server.port), TIMEOUTS).connection()
        first = await connection.send(ENVELOPE, MESSAGE)
        assert first.verdict is Verdict.TEMPORARY and not connection.usable
        second = await connection.send(ENVELOPE, MESSAGE) if connection.usable else None
        fresh = SMTPTransport(RelayConfig(port=server.port), TIMEOUTS).connection()
        second = await fresh.send(ENVELOPE, MESSAGE)
        await fresh.close()
    assert second.verdict is Verdict.ACCEPTED
    assert server.connections == 2
