"""The fault server of mailer.testing, seen from a real SMTP client (aiosmtplib) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiosmtplib
import pytest

from mailer.testing import (
    REPLY_451,
    REPLY_550_NO_SUCH_USER,
    Fault,
    FaultServer,
    delay_reply,
    disconnect_after_354,
    drop_after_dot,
    fail_starttls,
    malformed_reply,
    oversized_reply,
    reply_421_and_close,
    reply_with,
)

MESSAGE = "From: a@acme.example\r\nTo: b@example.com\r\nMessage-ID: <{n}@acme.example>\r\n\r\nHello\r\n.\r\n"


async def send(server: FaultServer, n: int = 1, *, recipient: str = "b@example.com", timeout: float = 5) -> str:
    """One message over a fresh session; what the client saw, as a short word or the reply code."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=timeout, start_tls=False)
    try:
        await client.connect()
        errors, _ = await client.sendmail("a@acme.example", [recipient], MESSAGE.format(n=n))
        return "250" if not errors else str(errors[recipient][0])
    except aiosmtplib.SMTPRecipientsRefused as error:
        return str(error.recipients[0].code)
    except aiosmtplib.SMTPResponseException as error:
        return "malformed" if error.code == -1 else str(error.code)
    except aiosmtplib.SMTPServerDisconnected:
        return "disconnected"
    except aiosmtplib.SMTPTimeoutError:
        return "timeout"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("fault", "seen", "accepted"),
    [
        (reply_with("RCPT", REPLY_550_NO_SUCH_USER), "550", 0),
        (reply_with("DOT", REPLY_451), "451", 0),
        (reply_421_and_close("MAIL"), "421", 0),
        (malformed_reply("RCPT"), "malformed", 0),
        (oversized_reply("MAIL"), "malformed", 0),
        (disconnect_after_354(), "disconnected", 0),
        (drop_after_dot(), "disconnected", 1),
        (delay_reply("DOT", 2), "timeout", 1),
        (reply_421_and_close("CONNECT"), "421", 0),
    ],
)
async def test_each_fault_is_what_the_client_sees(fault: Fault, seen: str, accepted: int) -> None:
    """Each fault reaches the client as that reply, hang-up or silence, and accepts the message only when it says so."""
    async with FaultServer() as server:
        server.inject(fault)
        assert await send(server, timeout=0.5) == seen
        await asyncio.sleep(0.05)
    assert len(server.messages) == accepted and len(server.fired) == 1
    assert server.fired[0].accepted == bool(accepted)


async def test_selectors_pick_the_nth_a_recipient_a_seeded_fraction_and_a_number_of_times() -> None:
    """nth, recipient, times and a seeded fraction choose the same transactions on every run."""
    async with FaultServer(seed=1) as server:
        server.inject(
            reply_with("RCPT", REPLY_451, nth=2),
            reply_with("RCPT", REPLY_550_NO_SUCH_USER, recipient="@blocked.example", times=1),
        )
        seen = [await send(server, n, recipient=f"x{n}@{'blocked' if n in (4, 5) else 'ok'}.example") for n in range(1, 7)]
    assert seen == ["250", "451", "250", "550", "250", "250"]

    picks = []
    for _ in range(2):
        async with FaultServer(seed=42) as server:
            server.inject(reply_with("RCPT", REPLY_451, fraction=0.5))
            picks.append([await send(server, n) for n in range(1, 13)])
    assert picks[0] == picks[1] and 2 <= picks[0].count("451") <= 10


async def test_it_records_every_command_and_counts_each_message_id() -> None:
    """The transcript holds every command per session; a repeated Message-ID counts as a duplicate."""
    async with FaultServer() as server:
        for n in (1, 2, 2):
            await send(server, n)
    assert [line.command for line in server.lines_of(1)] == ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "DOT"]
    assert server.message_ids == {"<1@acme.example>": 1, "<2@acme.example>": 2} and server.duplicates == 1


async def test_a_client_that_goes_on_after_a_timeout_is_caught_reusing_the_session() -> None:
    """A command sent while a delayed reply is still due counts as reusing a broken session."""
    async with FaultServer() as server:
        server.inject(delay_reply("MAIL", 0.5))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.readline()
        writer.write(b"EHLO client.example\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        writer.write(b"MAIL FROM:<a@acme.example>\r\n")
        await asyncio.sleep(0.1)  # a careless client gives up waiting, and goes on anyway
        writer.write(b"RSET\r\n")
        await asyncio.sleep(0.6)
        writer.close()
        await asyncio.sleep(0.05)
    assert server.reused_after_fault() == 1


async def test_starttls_is_offered_and_then_broken() -> None:
    """advertise_starttls offers STARTTLS without a certificate; fail_starttls breaks the handshake."""
    async with FaultServer(advertise_starttls=True) as server:
        server.inject(fail_starttls())
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=2, start_tls=False)
        await client.connect()
        await client.ehlo()
        assert client.supports_extension("starttls")
        with pytest.raises((aiosmtplib.SMTPException, OSError)):
            await client.starttls(validate_certs=False)
        client.close()
    assert [f.fault.action for f in server.fired] == ["break_tls"]


def test_a_fault_that_cannot_happen_is_refused() -> None:
    """Unknown commands or actions, and actions at a command where they make no sense, raise at once."""
    impossible: list[Callable[[], Fault]] = [
        lambda: Fault("HELLO", "disconnect"),
        lambda: Fault("RCPT", "explode"),
        lambda: Fault("RCPT", "reply"),
        lambda: Fault("RCPT", "accept_and_disconnect"),
        lambda: Fault("MAIL", "disconnect_after_354"),
    ]
    for bad in impossible:
        with pytest.raises(ValueError):
            bad()
