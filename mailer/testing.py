"""Helpers for tests that users want too: a capturing SMTP server and a scripted fault server.

`CaptureServer` is an aiosmtpd server running in the current event loop. It records every
message it accepts (and how often each Message-ID arrived) and can be scripted, per
recipient, to answer a phase with chosen replies
(`server.script("a@x.example", "RCPT", "550 5.1.1 No such user")`) or to be slow.

`FaultServer` adds faults by name, per command, in the manner of aiosmtplib's test server
and Postfix's `smtp-sink` options: reply 421 and hang up, refuse with any reply, answer with
a malformed or an oversized reply, hang up after 354, accept the message and hang up before
the final reply (the lost acknowledgement), hold a reply past the client's timeout, or offer
STARTTLS and then break it. A fault may fire for the Nth session or transaction, for a seeded
fraction of them, for one recipient, a limited number of times. Every command line is kept in
`transcript`, every fault that fired in `fired`::

    server = FaultServer(seed=7)
    server.inject(drop_after_dot(fraction=0.1), reply_with("RCPT", REPLY_550_NO_SUCH_USER, recipient="x@y.example"))
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import ssl
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AnyStr, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
_PATH = re.compile(r"<([^>]*)>")


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

    @property
    def message_id(self) -> str | None:
        found = _MESSAGE_ID.search(self.data)
        return found.group(1).decode("ascii", "replace") if found else None


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
        self.message_ids: Counter[str] = Counter()  # how many times each Message-ID was accepted
        self.commands: list[tuple[str, str]] = []  # (phase, argument) of MAIL, RCPT and DATA
        self.connections = 0  # SMTP sessions opened
        self.data_delay = 0.0  # seconds to wait before answering the final dot
        self._scripts: dict[tuple[str, str], deque[str]] = defaultdict(deque)
        self._server: asyncio.base_events.Server | None = None
        self._serial = itertools.count(1)
        self.arrived = asyncio.Event()

    @property
    def duplicates(self) -> int:
        """Copies accepted beyond the first, over all Message-IDs."""
        return sum(count - 1 for count in self.message_ids.values())

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

    def _protocol(self) -> SMTP:
        """The aiosmtpd protocol for one session, with this server as its handler."""
        return SMTP(self, **self._smtp_options())

    def _smtp_options(self) -> dict[str, Any]:
        return {
            "hostname": "capture.test",
            "enable_SMTPUTF8": True,
            "data_size_limit": None,
            "tls_context": self.starttls,
            "auth_required": self.logins is not None,
            "auth_require_tls": self.starttls is not None,
            "authenticator": self._authenticate if self.logins is not None else None,
        }

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        if self.save_to is not None:
            self.save_to.mkdir(parents=True, exist_ok=True)
        self._server = await loop.create_server(
            lambda: self._session(self._protocol()), self.host, self.port, ssl=self.implicit_tls
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

    async def __aenter__(self) -> Self:
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

    def _accept(self, session: Session, envelope: Envelope) -> Received:
        """Record the message of this transaction as accepted."""
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
        message_id = received.message_id
        if message_id is not None:
            self.by_message_id[message_id] = received
            self.message_ids[message_id] += 1
        self.arrived.set()
        return received

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
        self._accept(session, envelope)
        serial = len(self.messages)
        for address in envelope.rcpt_tos:
            stall = self._scripted(address, "STALL")
            if stall is not None:  # accepted and recorded, but the reply comes late
                await asyncio.sleep(float(stall))
        return f"250 2.0.0 OK queued as C{serial:05d}"


# -- the fault server --------------------------------------------------------------------

# Replies for the faults the reliability suite plays, with RFC 3463 enhanced codes.
REPLY_421 = "421 4.3.2 Service shutting down, closing transmission channel"  # RFC 5321 3.8
REPLY_451 = "451 4.3.0 Local error in processing, try again later"
REPLY_452_MAILBOX_FULL = "452 4.2.2 Mailbox full"
REPLY_452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
REPLY_550_NO_SUCH_USER = "550 5.1.1 No such user here"
REPLY_554_POLICY = "554 5.7.1 Message rejected due to content restrictions"

# Commands answered once per session; the others belong to a transaction (MAIL … final dot).
SESSION_COMMANDS = frozenset({"CONNECT", "EHLO", "HELO", "STARTTLS", "AUTH", "NOOP", "QUIT", "RSET"})
# "DOT" is the end of the message data (Postfix's smtp-sink calls it "dot" too).
COMMANDS = SESSION_COMMANDS | {"MAIL", "RCPT", "DATA", "DOT"}
ACTIONS = frozenset({
    "reply",  # answer with `reply` instead of the real answer
    "reply_and_close",  # answer with `reply`, then hang up (421)
    "disconnect",  # hang up without a word
    "malformed",  # a reply line without a code
    "oversized",  # a reply line longer than any client accepts
    "delay",  # wait `seconds`, then answer as usual (at DOT: accept first, answer late)
    "disconnect_after_354",  # DATA: 354, then hang up before any data
    "accept_and_disconnect",  # DOT: accept the message, hang up before the reply
    "break_tls",  # STARTTLS: 220, then bytes that are no TLS handshake, then hang up
})
MALFORMED = b"hello, this is not an SMTP reply\r\n"
# aiosmtplib refuses reply lines over 8192 bytes; RFC 5321 4.5.3.1.5 allows 512.
OVERSIZED = b"250 " + b"x" * 20_000 + b"\r\n"


@dataclass(frozen=True)
class Fault:
    """What the server does at `command` instead of answering it normally, and when.

    `nth` picks one session (for session commands) or one transaction (1-based, counted in
    MAIL commands); `fraction` picks each session or transaction with that probability,
    drawn from the server's seed; `recipient` only transactions to that address, or to any
    address of a domain given as "@domain" (from RCPT on); `sender` only transactions from
    that address (from MAIL on); `times` caps how often the fault fires. Unset selectors
    match everything.
    """

    command: str
    action: str
    reply: str = ""
    seconds: float = 0.0
    nth: int | None = None
    fraction: float | None = None
    recipient: str | None = None
    sender: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(f"unknown command {self.command!r}; one of {sorted(COMMANDS)}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {sorted(ACTIONS)}")
        if self.action in ("reply", "reply_and_close") and not self.reply:
            raise ValueError(f"{self.action} needs a reply")
        if self.action == "disconnect_after_354" and self.command != "DATA":
            raise ValueError("disconnect_after_354 happens at DATA")
        if self.action == "accept_and_disconnect" and self.command != "DOT":
            raise ValueError("accept_and_disconnect happens at DOT")
        if self.action == "break_tls" and self.command != "STARTTLS":
            raise ValueError("break_tls happens at STARTTLS")


def reply_with(command: str, reply: str, **select: Any) -> Fault:
    """Answer `command` with `reply` (e.g. REPLY_451 at RCPT)."""
    return Fault(command, "reply", reply=reply, **select)


def reply_421_and_close(command: str, **select: Any) -> Fault:
    return Fault(command, "reply_and_close", reply=REPLY_421, **select)


def malformed_reply(command: str, **select: Any) -> Fault:
    return Fault(command, "malformed", **select)


def oversized_reply(command: str, **select: Any) -> Fault:
    return Fault(command, "oversized", **select)


def hang_up(command: str, **select: Any) -> Fault:
    return Fault(command, "disconnect", **select)


def disconnect_after_354(**select: Any) -> Fault:
    return Fault("DATA", "disconnect_after_354", **select)


def drop_after_dot(**select: Any) -> Fault:
    """Accept the message, then hang up before the 250: the lost acknowledgement."""
    return Fault("DOT", "accept_and_disconnect", **select)


def delay_reply(command: str, seconds: float, **select: Any) -> Fault:
    return Fault(command, "delay", seconds=seconds, **select)


def fail_starttls(**select: Any) -> Fault:
    """Offer STARTTLS (see FaultServer(advertise_starttls=True)), then break the handshake."""
    return Fault("STARTTLS", "break_tls", **select)


def _addressed(address: str, selector: str) -> bool:
    address, selector = address.lower(), selector.lower()
    return address.endswith(selector) if selector.startswith("@") else address == selector


@dataclass(frozen=True)
class Line:
    """One command as the server saw it, on which session and transaction."""

    connection: int
    transaction: int  # 0 outside a transaction
    command: str
    argument: str
    at: float  # time.monotonic()


@dataclass(frozen=True)
class Fired:
    fault: Fault
    connection: int
    transaction: int
    recipients: tuple[str, ...]
    accepted: bool  # the message was accepted before its reply went out (if it ever did)


class FaultServer(CaptureServer):
    """A CaptureServer that plays scripted faults (see the module docstring)."""

    def __init__(self, *, seed: int = 0, advertise_starttls: bool = False, **options: Any) -> None:
        """`advertise_starttls` offers STARTTLS even without a TLS context (to fail it)."""
        super().__init__(**options)
        self.seed = seed
        self.advertise_starttls = advertise_starttls
        self.faults: list[Fault] = []
        self.fired: list[Fired] = []
        self.transcript: list[Line] = []
        self.transactions = 0
        self.spoke_while_waiting: set[tuple[int, int]] = set()  # (session, transaction)
        self._fired_counts: Counter[int] = Counter()

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def clear(self) -> None:
        """Stop playing faults; what fired stays recorded."""
        self.faults.clear()
        self._fired_counts.clear()

    def fired_at(self, command: str | None = None, action: str | None = None) -> list[Fired]:
        return [
            f for f in self.fired
            if (command is None or f.fault.command == command) and (action is None or f.fault.action == action)
        ]

    def lines_of(self, connection: int) -> list[Line]:
        return [line for line in self.transcript if line.connection == connection]

    def reused_after_fault(self) -> int:
        """Sessions a client went on using after a fault that broke them.

        Only a refusal (`reply`) leaves a session in a known state. After a hang-up or a
        malformed or oversized reply, a new transaction (MAIL) on the session counts; after
        a delayed reply, any command the client sent before the reply came (it timed out and
        carried on instead of dropping the session).
        """
        broken = {
            (f.connection, f.transaction) for f in self.fired if f.fault.action not in ("reply", "delay")
        }
        reused = len(self.spoke_while_waiting)
        for connection, transaction in broken:
            if any(
                line.command == "MAIL" and line.transaction > transaction
                for line in self.lines_of(connection)
            ):
                reused += 1
        return reused

    def _protocol(self) -> SMTP:
        return _FaultSMTP(self, self._smtp_options())

    def _pick(self, session: _FaultSMTP, command: str, recipients: tuple[str, ...]) -> Fault | None:
        per_session = command in SESSION_COMMANDS
        unit = session.number if per_session else session.transaction
        for index, fault in enumerate(self.faults):
            if fault.command != command:
                continue
            if fault.nth is not None and fault.nth != unit:
                continue
            if fault.recipient is not None and not any(_addressed(r, fault.recipient) for r in recipients):
                continue
            if fault.sender is not None and (per_session or fault.sender.lower() != session.sender.lower()):
                continue
            if fault.fraction is not None:
                # Drawn per (fault, unit) so that the same transaction always gets the same
                # answer, whatever order concurrent sessions reach the server in.
                draw = random.Random(f"{self.seed}:{index}:{'s' if per_session else 't'}{unit}").random()
                if draw >= fault.fraction:
                    continue
            if fault.times is not None and self._fired_counts[index] >= fault.times:
                continue
            self._fired_counts[index] += 1
            return fault
        return None

    def _record(self, session: _FaultSMTP, fault: Fault, recipients: tuple[str, ...], *, accepted: bool = False) -> None:
        self.fired.append(Fired(fault, session.number, session.transaction, recipients, accepted))

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.advertise_starttls and not any("STARTTLS" in r for r in responses):
            responses.insert(-1, "250-STARTTLS")
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _FaultSMTP)
        recipients = tuple(envelope.rcpt_tos)
        server.log("DOT", "")
        fault = self._pick(server, "DOT", recipients)
        if fault is None:
            return await super().handle_DATA(server, session, envelope)
        self.commands.append(("DATA", ",".join(recipients)))
        accepted = fault.action in ("accept_and_disconnect", "delay")
        self._record(server, fault, recipients, accepted=accepted)
        if accepted:
            received = self._accept(session, envelope)
            if fault.action == "delay":
                await server.hold(fault.seconds)
                return f"250 2.0.0 OK queued as C{len(self.messages):05d} ({received.message_id})"
            server.hang_up()
            return ""
        if fault.action == "reply":
            return fault.reply
        await server.play(fault)
        server.hang_up()  # the rest of this session is unknown ground
        return ""


class _FaultSMTP(SMTP):
    """An aiosmtpd session whose every command first asks the server for a fault."""

    def __init__(self, server: FaultServer, options: dict[str, Any]) -> None:
        super().__init__(server, **options)
        self.server = server
        self.number = server.connections + 1  # CaptureServer._session counts it right after
        self.transaction = 0
        self.sender = ""
        self.recipients: list[str] = []
        self._hung_up = False
        self._smtp_methods = {name: self._faulty(name, method) for name, method in self._smtp_methods.items()}

    def log(self, command: str, argument: str) -> None:
        self.server.transcript.append(Line(self.number, self.transaction, command, argument, time.monotonic()))

    def _faulty(self, command: str, method: Any) -> Any:
        async def run(argument: str | None) -> None:
            if command == "MAIL":
                self.server.transactions += 1
                self.transaction = self.server.transactions
                found = _PATH.search(argument or "")
                self.sender = found.group(1) if found else ""
                self.recipients = []
            self.log(command, argument or "")
            recipients: tuple[str, ...] = tuple(self.recipients)
            if command == "RCPT":
                found = _PATH.search(argument or "")
                recipients = (found.group(1),) if found else ()
            fault = self.server._pick(self, command, recipients)
            if fault is None:
                await method(argument)
            else:
                self.server._record(self, fault, recipients)
                if fault.action == "delay":
                    await self.hold(fault.seconds)
                    await method(argument)
                else:
                    await self.play(fault)
            if command == "RCPT" and self.envelope is not None:
                self.recipients = list(self.envelope.rcpt_tos)
            if command in ("RSET", "EHLO", "HELO"):
                self.transaction = 0

        return run

    async def _handle_client(self) -> None:
        self.log("CONNECT", "")
        fault = self.server._pick(self, "CONNECT", ())
        if fault is not None:
            self.server._record(self, fault, ())
            if fault.action == "delay":
                await self.hold(fault.seconds)
            else:
                await self.play(fault)
                return
        await super()._handle_client()

    async def hold(self, seconds: float) -> None:
        """Wait before replying, and note a client that did not wait for the reply."""
        await asyncio.sleep(seconds)
        if self._reader._buffer:  # type: ignore[attr-defined]  # bytes sent while the reply was due
            self.server.spoke_while_waiting.add((self.number, self.transaction))

    async def play(self, fault: Fault) -> None:
        """Answer as `fault` says (every action but `delay`)."""
        if fault.action == "reply":
            await self.push(fault.reply)
        elif fault.action == "reply_and_close":
            await self.push(fault.reply)
            self.hang_up()
        elif fault.action == "disconnect":
            self.hang_up()
        elif fault.action in ("malformed", "oversized"):
            await self._write(MALFORMED if fault.action == "malformed" else OVERSIZED)
        elif fault.action == "disconnect_after_354":
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self.hang_up()
        elif fault.action == "break_tls":
            await self.push("220 2.0.0 Ready to start TLS")
            await self._write(b"\x15\x03\x03\x00\x02\x02\x28")  # a TLS alert, not a ServerHello
            self.hang_up()
        else:  # accept_and_disconnect outside DOT is refused by Fault itself
            raise AssertionError(fault.action)

    async def _write(self, raw: bytes) -> None:
        if not self._hung_up:
            self._writer.write(raw)
            await self._writer.drain()

    def hang_up(self) -> None:
        self._hung_up = True
        if self.transport is not None:
            self.transport.close()

    async def push(self, status: AnyStr) -> None:
        if not self._hung_up:  # nothing more goes out once the server hung up
            await super().push(status)
