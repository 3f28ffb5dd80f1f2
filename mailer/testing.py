"""Helpers for tests that users want too: a capturing SMTP server on loopback.

`CaptureServer` is an aiosmtpd server running in the current event loop. It records every
message it accepts and can be scripted, per recipient, to answer a phase with chosen replies
(`server.script("a@x.example", "RCPT", "550 5.1.1 No such user")`) or to be slow.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import ssl
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: datetime
    path: Path | None
    tls: bool = False
    login: str | None = None

    def parsed(self) -> EmailMessage:
        message = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(message, EmailMessage)
        return message


class CaptureServer:
    """Receives mail on 127.0.0.1, records it, optionally saves each as an .eml file."""

    def __init__(
        self,
        *,
        save_to: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        logins: dict[str, str] | None = None,
    ) -> None:
        """`starttls` offers STARTTLS with that context; `implicit_tls` speaks TLS from the
        first byte (port 465 style); `logins` requires AUTH with one of these user/password."""
        self.host = host
        self.port = port
        self.save_to = save_to
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.logins = logins
        self.messages: list[Received] = []
        self.by_message_id: dict[str, Received] = {}
        self.commands: list[tuple[str, str]] = []
        self.connections = 0  # SMTP sessions opened  # (phase, argument) as seen on the wire
        self.data_delay = 0.0  # seconds to wait before answering the final dot
        self._scripts: dict[tuple[str, str], deque[str]] = defaultdict(deque)
        self._server: asyncio.base_events.Server | None = None
        self._serial = itertools.count(1)
        self.arrived = asyncio.Event()

    def script(self, address: str, phase: str, *replies: str) -> None:
        """Answer `phase` (MAIL, RCPT or DATA) for `address` with these replies, one per attempt."""
        self._scripts[(address.lower(), phase.upper())].extend(replies)

    def stall(self, address: str, seconds: float) -> None:
        """Hold the reply to the final dot of `address`'s next message for `seconds`.

        The message is still accepted afterwards, as a real server would have done; a client
        that timed out meanwhile never saw the 250 (the "lost acknowledgement" case).
        """
        self._scripts[(address.lower(), "STALL")].append(str(seconds))

    def _scripted(self, address: str, phase: str) -> str | None:
        queue = self._scripts.get((address.lower(), phase))
        return queue.popleft() if queue else None

    async def start(self) -> CaptureServer:
        loop = asyncio.get_running_loop()
        if self.save_to is not None:
            self.save_to.mkdir(parents=True, exist_ok=True)
        self._server = await loop.create_server(
            lambda: self._session(SMTP(
                self,
                hostname="capture.test",
                enable_SMTPUTF8=True,
                data_size_limit=None,
                tls_context=self.starttls,
                auth_required=self.logins is not None,
                auth_require_tls=self.starttls is not None,
                authenticator=self._authenticate if self.logins is not None else None,
            )),
            self.host,
            self.port,
            ssl=self.implicit_tls,
        )

        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _session(self, session: SMTP) -> SMTP:
        self.connections += 1
        return session

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> CaptureServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` messages have arrived."""
        async def arrived() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(arrived(), timeout)
        return self.messages

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        assert self.logins is not None
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if self.logins.get(user) == password:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    # aiosmtpd handler hooks -----------------------------------------------------------

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        self.commands.append(("MAIL", address))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        self.commands.append(("RCPT", address))
        scripted = self._scripted(address, "RCPT")
        if scripted is not None:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append(("DATA", ",".join(envelope.rcpt_tos)))
        for address in envelope.rcpt_tos:
            scripted = self._scripted(address, "DATA")
            if scripted is not None:
                return scripted
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        data: Any = envelope.original_content or envelope.content
        assert isinstance(data, bytes)
        serial = next(self._serial)
        path = None
        if self.save_to is not None:
            path = self.save_to / f"{serial:05d}.eml"
            path.write_bytes(data)
        received = Received(
            tls=session.ssl is not None or self.implicit_tls is not None,
            login=session.auth_data if isinstance(session.auth_data, str) else None,
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            received_at=datetime.now(timezone.utc),
            path=path,
        )
        self.messages.append(received)
        found = _MESSAGE_ID.search(data)
        if found:
            self.by_message_id[found.group(1).decode("ascii", "replace")] = received
        self.arrived.set()
        for address in envelope.rcpt_tos:
            stall = self._scripted(address, "STALL")
            if stall is not None:  # accepted and recorded, but the reply comes late
                await asyncio.sleep(float(stall))
        return f"250 2.0.0 OK queued as C{serial:05d}"
