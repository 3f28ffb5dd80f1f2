"""SMTP delivery through aiosmtplib: one connection per worker, several messages each.

Every attempt ends as an `SMTPReply`, never as an exception: a refusal carries the server's
code and text; a connection that failed, timed out or broke the protocol yields a reply with
`code=None` and the connection is discarded, never reused (its state is unknown). A timeout
or disconnect after the final dot is an unknown outcome: the caller retries, and the receiver
may get the message twice, under the same Message-ID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import aiosmtplib

from mailer.config import RelayConfig, TimeoutsConfig
from mailer.reply import SMTPReply


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    smtputf8: bool = False  # the address or headers hold UTF-8 (RFC 6531)


class SMTPConnection:
    """One SMTP session to the relay; `usable` turns False for good after any fault."""

    def __init__(self, relay: RelayConfig, timeouts: TimeoutsConfig) -> None:
        self.relay = relay
        self.timeouts = timeouts
        self.usable = True
        self.delivered = 0
        self._client: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        password = os.environ.get(self.relay.password_env, "") if self.relay.username else None
        client = aiosmtplib.SMTP(
            hostname=self.relay.host,
            port=self.relay.port,
            use_tls=self.relay.tls == "implicit",
            start_tls=True if self.relay.tls == "starttls" else False,
            validate_certs=self.relay.verify_certificate,
            cert_bundle=self.relay.ca_file or None,
            local_hostname=self.relay.helo or None,
            username=self.relay.username or None,
            password=password,
            timeout=self.timeouts.connect,
        )
        await client.connect()
        return client

    async def send(self, envelope: Envelope, message: bytes) -> SMTPReply:
        """One transaction: MAIL, RCPT, DATA; returns the reply that decided it."""
        host = f"{self.relay.host}:{self.relay.port}"
        phase = "CONNECT"
        try:
            if self._client is None:
                self._client = await self._connect()
            client = self._client
            options: list[str] = []
            if envelope.smtputf8:
                if not client.supports_extension("smtputf8"):
                    return SMTPReply(
                        code=550,
                        text="the relay does not offer SMTPUTF8, which this address needs",
                        enhanced="5.6.7",  # RFC 6531 3.6: non-ASCII address, no SMTPUTF8
                        command="MAIL",
                        host=host,
                    )
                options.append("SMTPUTF8")
            encoding = "utf-8" if envelope.smtputf8 else "ascii"
            phase = "MAIL"
            await client.mail(envelope.sender, options=options, encoding=encoding, timeout=self.timeouts.mail)
            phase = "RCPT"
            await client.rcpt(envelope.recipient, encoding=encoding, timeout=self.timeouts.rcpt)
            phase = "DATA"
            response = await client.data(message, timeout=self.timeouts.data)
        except aiosmtplib.SMTPResponseException as error:
            # A refused greeting or a 421 (RFC 5321 3.8: the server closes the channel) ends
            # the session; any other refusal leaves it usable after RSET.
            if isinstance(error, aiosmtplib.SMTPConnectResponseError) or error.code == 421:
                await self.discard()
            elif self._client is not None:
                await self._reset()
            if error.code < 0:  # aiosmtplib uses -1 for "no reply"
                return SMTPReply(code=None, text=error.message, command=phase, host=host)
            return SMTPReply.parse(error.code, error.message, command=phase, host=host)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            await self.discard()
            what = "outcome unknown: " if phase == "DATA" else ""
            return SMTPReply(code=None, text=f"{what}{type(error).__name__}: {error}".strip(), command=phase, host=host)
        self.delivered += 1
        return SMTPReply.parse(response.code, response.message, command="DATA", host=host)

    async def _reset(self) -> None:
        """RSET after a refused transaction, so the next one starts clean (RFC 5321 4.1.1.5)."""
        assert self._client is not None
        try:
            await self._client.rset(timeout=self.timeouts.mail)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await self.discard()

    async def discard(self) -> None:
        """Drop the connection without a QUIT: after a fault its state is unknown."""
        self.usable = False
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        """QUIT politely, then close."""
        client, self._client = self._client, None
        self.usable = False
        if client is None:
            return
        try:
            if client.is_connected:
                await client.quit(timeout=10)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            client.close()


class SMTPTransport:
    """Makes connections to the configured relay."""

    def __init__(self, relay: RelayConfig, timeouts: TimeoutsConfig) -> None:
        self.relay = relay
        self.timeouts = timeouts

    def connection(self) -> SMTPConnection:
        return SMTPConnection(self.relay, self.timeouts)
