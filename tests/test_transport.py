"""SMTP delivery to a real aiosmtpd relay on loopback: TLS as configured, AUTH, faults as replies."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailer.config import RelayConfig, TimeoutsConfig
from mailer.reply import Verdict
from mailer.testing import CaptureServer
from mailer.transport import Endpoint, Envelope, SMTPConnection, SMTPTransport, TLSMode

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


async def test_an_smtputf8_address_goes_out_on_a_fresh_plain_session() -> None:
    """The server's EHLO is read before the SMTPUTF8 check, so a UTF-8 address is sent, not refused."""
    async with CaptureServer() as server:
        connection = SMTPTransport(RelayConfig(port=server.port), TIMEOUTS).connection()
        reply = await connection.send(Envelope("bounces@acme.example", "josé@example.com", smtputf8=True), MESSAGE)
        await connection.close()
    assert reply.verdict is Verdict.ACCEPTED
    assert server.messages[0].rcpt_tos == ("josé@example.com",)


async def test_the_relay_transport_pools_sessions_up_to_messages_per_connection() -> None:
    """send() reuses an idle session, and a session that carried its quota is closed for a new one."""
    async with CaptureServer() as server:
        transport = SMTPTransport(RelayConfig(port=server.port), TIMEOUTS, messages_per_connection=2)
        replies = [await transport.send(ENVELOPE, MESSAGE) for _ in range(5)]
        await transport.close()
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 5
    assert server.connections == 3 and len(server.messages) == 5


async def test_concurrent_sends_use_separate_sessions_then_share_them() -> None:
    """Two messages at once need two sessions; afterwards both wait in the pool and are reused."""
    async with CaptureServer() as server:
        transport = SMTPTransport(RelayConfig(port=server.port), TIMEOUTS)
        first = await asyncio.gather(*(transport.send(ENVELOPE, MESSAGE) for _ in range(2)))
        second = await asyncio.gather(*(transport.send(ENVELOPE, MESSAGE) for _ in range(2)))
        await transport.close()
    assert [r.verdict for r in first + second] == [Verdict.ACCEPTED] * 4
    assert server.connections == 2


async def test_opportunistic_tls_falls_back_to_clear_text_when_the_handshake_fails(ca: trustme.CA) -> None:
    """RFC 7435: a STARTTLS handshake that fails is retried in clear rather than not delivered."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.minimum_version = ssl.TLSVersion.TLSv1_3  # no version in common: the handshake fails
    async with CaptureServer(starttls=context) as server:
        endpoint = Endpoint(host="127.0.0.1", port=server.port, tls=TLSMode.OPPORTUNISTIC, tls_context=client)
        connection = SMTPConnection(endpoint, TIMEOUTS)
        reply = await connection.send(ENVELOPE, MESSAGE)
        await connection.close()
    assert reply.verdict is Verdict.ACCEPTED and not connection.encrypted
    assert server.connections == 2 and not server.messages[0].tls


async def test_a_pooled_session_answering_421_at_mail_is_replaced_at_once() -> None:
    """A server that hangs up an idle session with a 421 costs no retry: a fresh session takes the message."""
    class HangsUp(CaptureServer):
        hang_up = False

        async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
            if self.hang_up:
                self.hang_up = False
                return "421 4.4.2 capture.test Error: timeout exceeded"
            return await super().handle_MAIL(server, session, envelope, address, options)

    server = HangsUp()
    async with server:
        transport = SMTPTransport(RelayConfig(port=server.port), TIMEOUTS)
        first = await transport.send(ENVELOPE, MESSAGE)
        server.hang_up = True
        second = await transport.send(ENVELOPE, MESSAGE)
        await transport.close()
    assert first.verdict is Verdict.ACCEPTED and second.verdict is Verdict.ACCEPTED
    assert server.connections == 2 and len(server.messages) == 2
