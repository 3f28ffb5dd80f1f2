"""The daemon's inbound SMTP listener for the bounce domain (aiosmtpd, in the daemon's loop).

It accepts mail only for the bounce domain (it is no relay), hands each message to the
bounce pipeline, and answers 250 once the evidence is stored, or 451 if it could not be,
so the sending MTA tries again rather than the bounce being lost.

Mail to `unsubscribe+<token>@<bounce domain>` is the mailto form of List-Unsubscribe
(RFC 2369): mailbox providers send it when a recipient clicks their "unsubscribe" button.
The signed token names the message and list, so the address unsubscribes at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.bouncing import BounceIntake, IntakeReport
from mailer.clock import Clock
from mailer.config import binding, listen_address

log = logging.getLogger("mailer.inbound")

# RFC 3461/3464 DSNs are small; a returned original can be large, and only a part is kept.
MAX_BOUNCE_BYTES = 10 * 1024 * 1024
UNSUBSCRIBE_PREFIX = "unsubscribe+"


class _BounceSMTP(SMTP):
    # RFC 5321 4.5.3.1.6 caps a line at 1,000 octets, but bounce generators quote long
    # diagnostic lines and headers of the original; losing a bounce over it helps nobody
    # (Postel's principle for a receiver of machine-written reports).
    line_length_limit = 64 * 1024


class BounceListener:
    def __init__(
        self,
        *,
        intake: BounceIntake,
        domain: str,
        clock: Clock,
        listen: str,
        unsubscribe: Callable[[str], Awaitable[bool]] | None = None,
        config_file: Path | None = None,
    ) -> None:
        self.intake = intake
        self.unsubscribe = unsubscribe  # reads an unsubscribe+<token> address; True when it was one
        self.domain = domain.lower()
        self.clock = clock
        self.listen = listen
        self.config_file = config_file  # named in a bind error (mailer.toml)
        self.host, self.port = listen_address(listen, field="bounces.listen", example="127.0.0.1:2525")
        self.report = IntakeReport()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with binding(self.listen, field="bounces.listen", file=self.config_file):
            self._server = await loop.create_server(
                lambda: _BounceSMTP(self, hostname=self.domain, data_size_limit=MAX_BOUNCE_BYTES, enable_SMTPUTF8=True),
                self.host,
                self.port,
            )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("receiving bounces for %s on %s:%d", self.domain, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address.rpartition("@")[2].lower() != self.domain:
            return "550 5.7.1 Relaying denied: this host only receives bounces"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: Any = envelope.original_content or envelope.content
        if self.unsubscribe is not None and any(a.lower().startswith(UNSUBSCRIBE_PREFIX) for a in envelope.rcpt_tos):
            try:
                done = [await self.unsubscribe(a) for a in envelope.rcpt_tos if a.lower().startswith(UNSUBSCRIBE_PREFIX)]
            except Exception:
                log.exception("an unsubscribe request could not be stored; asking the sender to try again")
                return "451 4.3.0 Could not store the request, try again later"
            # A forged or mangled token unsubscribes nobody; the mail is accepted either way
            # so nothing learns which tokens are genuine.
            log.info("mailto unsubscribe: %d of %d addresses genuine", sum(done), len(done))
            return "250 2.0.0 Unsubscribe request received"
        try:
            records = await self.intake.take(
                bytes(raw), envelope_recipients=list(envelope.rcpt_tos), source="dsn", now=self.clock.now(), report=self.report
            )
        except Exception:
            log.exception("a bounce could not be stored; asking the sender to try again")
            return "451 4.3.0 Could not store the bounce, try again later"
        for record in records:
            log.info("bounce for %s: %s (%s) → %s", record.email, record.reason, record.bounce_class, record.action)
        return "250 2.0.0 Bounce received"
