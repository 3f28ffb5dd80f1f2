"""SMTP delivery: sessions to one endpoint, reused for several messages.

aiosmtplib sets each session up (greeting, EHLO, STARTTLS, AUTH); the transactions then run
over `mailer.smtpsession.SMTPSession`, pipelined when the server offers it (RFC 2920).

Every attempt ends as an `SMTPReply`, never as an exception: a refusal carries the server's
code and text; a connection that failed, timed out or broke the protocol yields a reply with
`code=None` and the connection is discarded, never reused (its state is unknown). A timeout
or disconnect after the final dot is an unknown outcome: the caller retries, and the receiver
may get the message twice, under the same Message-ID.

A `Transport` is what the daemon sends through: `SMTPTransport` hands everything to the
configured relay; `mailer.direct.DirectTransport` delivers to each recipient domain's MX
hosts. Both keep idle sessions in a `ConnectionPool` for a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import aiosmtplib

from mailer.config import RelayConfig, TimeoutsConfig
from mailer.reply import SMTPReply
from mailer.smtpsession import SMTPSession, describe, envelope_commands

if TYPE_CHECKING:
    from mailer.config import Config

log = logging.getLogger("mailer.transport")

IDLE_SECONDS = 2.0  # real time an idle session stays open, waiting for the next message
MAX_IDLE = 32  # idle sessions kept at most; the oldest is closed first
QUIT_TIMEOUT = 10.0
TCP_CONNECT_TIMEOUT = 30.0  # Postfix's smtp_connect_timeout; the 220 greeting then gets timeouts.connect


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    smtputf8: bool = False  # the address or headers hold UTF-8 (RFC 6531)


class TLSMode(StrEnum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, any certificate (RFC 7435)
    STARTTLS = "starttls"  # STARTTLS or no delivery
    IMPLICIT = "implicit"  # TLS from the first byte (RFC 8314, port 465)


@dataclass(frozen=True)
class Endpoint:
    """One SMTP server and how to talk to it."""

    host: str  # the server's name: certificates are checked against it
    port: int = 25
    address: str = ""  # the IP to connect to; empty: resolve `host` (always so with IMPLICIT)
    tls: TLSMode = TLSMode.NONE
    verify_certificate: bool = True
    tls_context: ssl.SSLContext | None = None  # replaces verify_certificate and ca_file
    ca_file: str = ""
    helo: str = ""  # empty: this host's FQDN
    source_address: str = ""  # the local IP to send from; empty: the system's choice
    username: str = ""
    password_env: str = ""

    @property
    def label(self) -> str:
        """The host as replies name it; a name alone as a word, for provider rules."""
        if self.address and self.address != self.host:
            return f"{self.host} [{self.address}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def relay(cls, relay: RelayConfig) -> Endpoint:
        return cls(
            host=relay.host, port=relay.port, tls=TLSMode(relay.tls), verify_certificate=relay.verify_certificate,
            ca_file=relay.ca_file, helo=relay.helo, username=relay.username, password_env=relay.password_env,
        )


class SMTPConnection:
    """One SMTP session to one endpoint; `usable` turns False for good after any fault."""

    def __init__(self, endpoint: Endpoint, timeouts: TimeoutsConfig) -> None:
        self.endpoint = endpoint
        self.timeouts = timeouts
        self.usable = True
        self.delivered = 0
        self.encrypted = False  # the session runs over TLS
        self._session: SMTPSession | None = None
        self._phase = "CONNECT"  # of setting the session up, for the reply when it fails

    @property
    def is_open(self) -> bool:
        return self._session is not None and self._session.is_open

    async def _socket(self) -> socket.socket:
        """A TCP connection to the endpoint's address, from its source address.

        Made here rather than by aiosmtplib so that a host that never answers the SYN costs
        TCP_CONNECT_TIMEOUT, not the whole greeting timeout, before the next MX is tried.
        """
        endpoint = self.endpoint
        family = socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if endpoint.source_address:
                sock.bind((endpoint.source_address, 0))
            timeout = min(TCP_CONNECT_TIMEOUT, self.timeouts.connect)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (endpoint.address, endpoint.port)), timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _client_for(self, tls: TLSMode, sock: socket.socket | None) -> aiosmtplib.SMTP:
        endpoint = self.endpoint
        return aiosmtplib.SMTP(
            hostname=None if sock else endpoint.host,
            port=None if sock else endpoint.port,
            sock=sock,
            use_tls=tls is TLSMode.IMPLICIT,
            start_tls=False,  # decided below, where the certificate name is ours to give
            validate_certs=endpoint.verify_certificate,
            tls_context=endpoint.tls_context,
            cert_bundle=endpoint.ca_file or None,
            local_hostname=endpoint.helo or None,
            source_address=(endpoint.source_address, 0) if endpoint.source_address and not sock else None,
            timeout=self.timeouts.connect,  # here: the wait for the greeting
        )

    async def _connect(self, tls: TLSMode) -> SMTPSession:
        self._phase = "CONNECT"
        sock = await self._socket() if self.endpoint.address else None
        client = self._client_for(tls, sock)
        try:
            return await self._set_up(client, tls)
        except BaseException:
            client.close()  # a session refused halfway is never reused
            raise

    async def _set_up(self, client: aiosmtplib.SMTP, tls: TLSMode) -> SMTPSession:
        await client.connect()  # AUTH comes last, after STARTTLS
        self.encrypted = tls is TLSMode.IMPLICIT
        if tls in (TLSMode.STARTTLS, TLSMode.OPPORTUNISTIC):
            await self._greet(client)
            if client.supports_extension("starttls"):
                self._phase = "STARTTLS"
                try:
                    await client.starttls(server_hostname=self.endpoint.host, timeout=self.timeouts.connect)
                    self.encrypted = True
                except aiosmtplib.SMTPResponseException as error:
                    # RFC 3207 4: after a refused STARTTLS the session goes on in clear text
                    if tls is TLSMode.STARTTLS or error.code == 421:
                        raise
                except (aiosmtplib.SMTPException, OSError) as error:
                    if tls is TLSMode.STARTTLS:
                        raise
                    # The handshake failed midway: the session is unusable. Opportunistic
                    # TLS (RFC 7435) then delivers in clear rather than not at all.
                    client.close()
                    log.info("TLS with %s failed (%s); delivering without TLS", self.endpoint.label, error)
                    return await self._connect(TLSMode.NONE)
            elif tls is TLSMode.STARTTLS:
                raise aiosmtplib.SMTPException(f"{self.endpoint.host} does not offer STARTTLS, which is required")
        await self._greet(client)  # extensions (SMTPUTF8, SIZE) are known before MAIL
        if self.endpoint.username:
            self._phase = "AUTH"
            await client.login(self.endpoint.username, os.environ.get(self.endpoint.password_env, ""))
        return SMTPSession.take_over(client)

    async def _greet(self, client: aiosmtplib.SMTP) -> None:
        if client.is_ehlo_or_helo_needed:
            self._phase = "EHLO"
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                if not client.is_connected:
                    raise
                await client.helo()  # RFC 5321 3.2: a server without EHLO gets HELO

    async def send(self, envelope: Envelope, message: bytes) -> SMTPReply:
        """One transaction: MAIL, RCPT, DATA; returns the reply that decided it."""
        host = self.endpoint.label
        if self._session is None:
            try:
                self._session = await self._connect(self.endpoint.tls)
            except aiosmtplib.SMTPResponseException as error:
                # A refused greeting, EHLO, STARTTLS or AUTH ends the session.
                await self.discard()
                if error.code < 0:  # aiosmtplib uses -1 for "no reply"
                    return SMTPReply(code=None, text=error.message, command=self._phase, host=host)
                return SMTPReply.parse(error.code, error.message, command=self._phase, host=host)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                await self.discard()
                return SMTPReply(code=None, text=describe(error), command=self._phase, host=host)
        session = self._session
        if envelope.smtputf8 and not session.supports("smtputf8"):
            return SMTPReply(
                code=550,
                text=f"{self.endpoint.host} does not offer SMTPUTF8, which this address needs",
                enhanced="5.6.7",  # RFC 6531 3.6: non-ASCII address, no SMTPUTF8
                command="MAIL",
                host=host,
            )
        mail, rcpt = envelope_commands(envelope.sender, envelope.recipient, smtputf8=envelope.smtputf8)
        outcome = await session.transaction(mail=mail, rcpt=rcpt, message=message, timeouts=self.timeouts)
        if outcome.delivered:
            self.delivered += 1
        elif outcome.code is None:
            # No reply: the session's state is unknown. After the final dot, so is the
            # message's: the receiver may have it, and gets it again on the retry.
            await self.discard()
            what = "outcome unknown: " if outcome.body_sent else ""
            return SMTPReply(code=None, text=f"{what}{outcome.text}", command=outcome.command, host=host)
        elif outcome.code < 400:
            # A 2xx or 3xx that ends a transaction before the message went out (250 to DATA,
            # 252 to RCPT) accepts nothing: a server out of step, whose session is not reused.
            await self.discard()
            text = f"protocol error: {outcome.command} answered {outcome.code} {outcome.text}".strip()
            return SMTPReply(code=None, text=text, command=outcome.command, host=host)
        elif outcome.session_over:
            await self.discard()  # a 421 (RFC 5321 3.8): the server closes the channel
        else:
            await self._reset()  # any other refusal leaves the session usable after RSET
        return SMTPReply.parse(outcome.code, outcome.text, command=outcome.command, host=host)

    async def _reset(self) -> None:
        """RSET after a refused transaction, so the next one starts clean (RFC 5321 4.1.1.5)."""
        assert self._session is not None
        if not await self._session.reset(self.timeouts.mail):
            await self.discard()

    async def discard(self) -> None:
        """Drop the connection without a QUIT: after a fault its state is unknown."""
        self.usable = False
        session, self._session = self._session, None
        if session is not None:
            session.close()

    async def close(self) -> None:
        """QUIT politely, then close."""
        session, self._session = self._session, None
        self.usable = False
        if session is not None:
            await session.quit(QUIT_TIMEOUT)


class Transport(Protocol):
    """Where the daemon hands a message: one attempt, one reply, never an exception."""

    async def send(self, envelope: Envelope, message: bytes) -> SMTPReply: ...

    async def close(self) -> None: ...


class ConnectionPool:
    """Idle sessions by key (e.g. source IP and MX host), each closed after `idle_seconds`.

    A session serves one message at a time: `take` hands it out, `give_back` returns it (or
    closes it when it is spent or broken). At most `max_idle` sessions wait, oldest closed first.
    """

    def __init__(self, *, messages_per_connection: int = 100, idle_seconds: float = IDLE_SECONDS, max_idle: int = MAX_IDLE) -> None:
        self.messages_per_connection = messages_per_connection
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle
        self._idle: OrderedDict[SMTPConnection, tuple[Hashable, float]] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    def take(self, key: Hashable) -> SMTPConnection | None:
        """The most recently used idle session for `key` (the others may then expire)."""
        while True:
            connection = next((c for c, (owner, _) in reversed(self._idle.items()) if owner == key), None)
            if connection is None:
                return None
            del self._idle[connection]
            if connection.is_open:
                return connection
            self._close_later(connection)  # the server hung up while it waited

    def give_back(self, key: Hashable, connection: SMTPConnection, *, per_connection: int | None = None) -> None:
        """Keep the session for `key`, or close it when broken or spent (`per_connection`
        messages, the receiving provider's limit; the pool's own when None)."""
        spent = connection.delivered >= (per_connection or self.messages_per_connection)
        if not connection.usable or not connection.is_open or spent:
            self._close_later(connection)
            return
        self._idle[connection] = (key, time.monotonic())
        while len(self._idle) > self.max_idle:
            oldest, _ = self._idle.popitem(last=False)
            self._close_later(oldest)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())

    def _close_later(self, connection: SMTPConnection) -> None:
        task = asyncio.create_task(connection.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reap(self) -> None:
        while self._idle:
            oldest = min(since for _, since in self._idle.values())
            await asyncio.sleep(max(0.0, oldest + self.idle_seconds - time.monotonic()))
            expired = [c for c, (_, since) in self._idle.items() if since + self.idle_seconds <= time.monotonic()]
            for connection in expired:
                del self._idle[connection]
                self._close_later(connection)

    async def send(
        self, key: Hashable, endpoint: Endpoint, timeouts: TimeoutsConfig, envelope: Envelope, message: bytes,
        *, per_connection: int | None = None,
    ) -> SMTPReply:
        """Send over an idle session for `key`, or a new one to `endpoint`."""
        connection = self.take(key)
        reused = connection is not None
        if connection is None:
            connection = SMTPConnection(endpoint, timeouts)
        try:
            reply = await connection.send(envelope, message)
            if reused and reply.command == "MAIL" and reply.code in (None, 421):
                # The server dropped the idle session (Postfix says "421 4.4.2 timeout exceeded"
                # as it hangs up): nothing was sent, so a fresh session takes the message.
                connection = SMTPConnection(endpoint, timeouts)
                reply = await connection.send(envelope, message)
        except BaseException:
            await connection.discard()  # a bug or a cancellation: its state is unknown
            raise
        self.give_back(key, connection, per_connection=per_connection)
        return reply

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        idle, self._idle = list(self._idle), OrderedDict()
        await asyncio.gather(*(connection.close() for connection in idle), *self._closing)


class SMTPTransport:
    """Hands every message to the configured relay, over pooled sessions."""

    def __init__(
        self,
        relay: RelayConfig,
        timeouts: TimeoutsConfig,
        *,
        messages_per_connection: int = 100,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.relay = relay
        self.timeouts = timeouts
        self.endpoint = Endpoint.relay(relay)
        self.pool = ConnectionPool(messages_per_connection=messages_per_connection, idle_seconds=idle_seconds)

    def connection(self) -> SMTPConnection:
        """A session of its own, outside the pool."""
        return SMTPConnection(self.endpoint, self.timeouts)

    async def send(self, envelope: Envelope, message: bytes) -> SMTPReply:
        return await self.pool.send(None, self.endpoint, self.timeouts, envelope, message)

    async def close(self) -> None:
        await self.pool.close()


def make_transport(config: Config) -> Transport:
    """The transport `[delivery] mode` asks for: the relay, or direct to the MX hosts."""
    delivery = config.delivery
    if delivery.mode == "direct":
        from mailer.direct import DirectTransport  # imports this module

        return DirectTransport.from_config(config)
    return SMTPTransport(config.relay, config.timeouts, messages_per_connection=delivery.messages_per_connection)
