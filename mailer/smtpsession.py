"""The transaction phase of an SMTP client session: MAIL, RCPT, DATA, the message, RSET, QUIT.

aiosmtplib sets the session up (greeting, EHLO, STARTTLS, AUTH); `SMTPSession.take_over` then
moves the connection, plain or TLS, to the protocol below. It is hand-written because
aiosmtplib cannot pipeline: its protocol parses one reply per waiting command and drops what
arrives while none waits. When the server offers PIPELINING (RFC 2920), MAIL, RCPT and DATA
leave in one write and their replies are read in order, then the message and its final dot
in one more write: two round trips a message instead of four. Without PIPELINING the same
code sends one command at a time.

Faults are aiosmtplib's own exceptions (`SMTPReadTimeoutError`, `SMTPServerDisconnected`,
`SMTPResponseException` with code -1 for a reply that breaks the protocol), so the replies
made of them read as when aiosmtplib ran the whole session: `SMTPReply.timed_out` reads the
error's name from the text.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass, replace
from typing import NamedTuple

import aiosmtplib
from aiosmtplib.email import quote_address

from mailer.config import TimeoutsConfig

# aiosmtplib's limits, kept so that a server's reply is refused exactly when it was before:
# a line over 8192 bytes (RFC 5321 4.5.3.1.5 allows 512), a reply over four such lines.
MAX_LINE_LENGTH = 8192
MAX_REPLY_LENGTH = MAX_LINE_LENGTH * 4
QUOTED_LINE = 512  # of a malformed line, quoted in the error (RFC 5321 4.5.3.1.5's reply line)
NO_REPLY = -1  # aiosmtplib's code for "no valid reply" (SMTPStatus.invalid_response)

# The replies that let a transaction go on (RFC 5321 4.3.2); any other one decides it.
GOING_ON = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}
CLOSING = 421  # RFC 5321 3.8: the server is closing the channel

# A mailbox whose local part is a dot-atom and whose domain is a plain name (RFC 5321
# 4.1.2): aiosmtplib's quote_address would return it unchanged inside <>, at 10 µs a call.
PLAIN_MAILBOX = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # aiosmtplib refuses them on a command line too
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


class Reply(NamedTuple):
    code: int
    text: str  # the lines of a multi-line reply joined with "\n", as aiosmtplib joins them


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a transaction ended: the reply that decided it, or the fault that left none."""

    command: str  # MAIL, RCPT or DATA: what the deciding reply answered
    code: int | None  # None: no usable reply, `text` names the fault
    text: str
    body_sent: bool = False  # the message and its final dot went out
    session_over: bool = False  # a 421 or a fault: the session's state is unknown or ended

    @property
    def delivered(self) -> bool:
        return self.body_sent and self.code is not None and 200 <= self.code < 300


def describe(error: BaseException) -> str:
    """An error as reply text, "<Name>: <detail>", as the rest of the code reads it."""
    if isinstance(error, aiosmtplib.SMTPResponseException) and error.code == NO_REPLY:
        return error.message
    return f"{type(error).__name__}: {error}".strip()


def _address(address: str, encoding: str) -> bytes:
    if PLAIN_MAILBOX.fullmatch(address):
        return f"<{address}>".encode("ascii")
    quoted = quote_address(address).encode(encoding)  # may raise ValueError, as before
    if _CONTROL.search(quoted):
        raise ValueError("Command arg contains a prohibited control character")
    return quoted


def envelope_commands(sender: str, recipient: str, *, smtputf8: bool = False) -> tuple[bytes, bytes]:
    """The MAIL and RCPT command lines, byte for byte as aiosmtplib writes them."""
    encoding = "utf-8" if smtputf8 else "ascii"
    option = b" SMTPUTF8" if smtputf8 else b""  # RFC 6531 3.4
    return (
        b"MAIL FROM:" + _address(sender, encoding) + option + b"\r\n",
        b"RCPT TO:" + _address(recipient, encoding) + b"\r\n",
    )


def wire_body(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line endings, dot-stuffed, then the final dot.

    Byte for byte what aiosmtplib sent (RFC 5321 2.3.8 line endings, 4.5.2 transparency),
    in a few C-speed passes: composed messages already end their lines with CRLF, and
    seldom have a line that starts with a dot.
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    return message + b".\r\n"


def _protocol_error(text: str) -> aiosmtplib.SMTPResponseException:
    return aiosmtplib.SMTPResponseException(NO_REPLY, text)


class ReplyParser:
    """Bytes from the server in, whole replies out, in order, however the bytes were cut.

    `owed` counts the replies the commands written so far still wait for. A malformed line,
    an oversized reply or a reply nobody asked for raises `SMTPResponseException(-1, …)`;
    the replies completed before it stay in `replies`.
    """

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()  # arrived, not yet read
        self.owed = 0
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # of a multi-line reply still arriving
        self._length = 0  # bytes of those lines

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            self._line(bytes(buffer[start : end + 1]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE_LENGTH or self._length + len(buffer) > MAX_REPLY_LENGTH:
            raise _protocol_error("Response too long")

    def _line(self, line: bytes) -> None:
        self._length += len(line)
        if len(line) > MAX_LINE_LENGTH or self._length > MAX_REPLY_LENGTH:
            raise _protocol_error("Response too long")
        code, separator = line[:3], line[3:4]
        # RFC 5321 4.2: Reply-code [ SP textstring ] CRLF, "-" instead of SP on all but the last line
        if not code.isdigit() or separator not in (b" ", b"-", b"\r", b"\n"):
            text = line[:QUOTED_LINE].decode("utf-8", "ignore").strip()
            raise _protocol_error(f"Malformed SMTP response line: {text}")
        self._lines.append(line[4:].strip(b" \t\r\n"))
        if separator == b"-":
            return
        text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
        self._lines, self._length = [], 0
        if not self.owed:
            raise _protocol_error(f"Unexpected reply, no command was sent: {code.decode()} {text[:QUOTED_LINE]}")
        self.owed -= 1
        self.replies.append(Reply(int(code), text))


class SMTPSession(asyncio.Protocol):
    """One set-up SMTP session: writes commands, queues their replies in order."""

    def __init__(self, transport: asyncio.Transport, extensions: frozenset[str]) -> None:
        self.transport = transport
        self.extensions = extensions  # lower-case EHLO keywords
        self.pipelining = "pipelining" in extensions
        self._loop = asyncio.get_running_loop()
        self._parser = ReplyParser()
        self._replies = self._parser.replies
        self._waiter: asyncio.Future[None] | None = None
        self._failure: aiosmtplib.SMTPException | None = None

    @classmethod
    def take_over(cls, client: aiosmtplib.SMTP) -> SMTPSession:
        """Move `client`'s connection to a new session; `client` is not used again."""
        protocol, transport = client.protocol, client.transport
        if protocol is None or not isinstance(transport, asyncio.Transport) or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        # aiosmtplib keeps the bytes it has not parsed in a private buffer (pinned below 6 in
        # pyproject.toml); bytes after the last reply mean a server speaking unasked.
        unread = bytes(getattr(protocol, "_buffer", b""))
        if unread:
            raise _protocol_error(f"Unexpected data after the server's reply: {unread[:80]!r}")
        session = cls(transport, frozenset(client.esmtp_extensions))
        transport.set_protocol(session)
        return session

    @property
    def is_open(self) -> bool:
        return self._failure is None and not self.transport.is_closing()

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    # -- asyncio.Protocol ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        waiting = len(self._replies)
        try:
            self._parser.feed(data)
        except aiosmtplib.SMTPResponseException as error:
            self._fail(error)
        else:
            if len(self._replies) > waiting:
                self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        error = aiosmtplib.SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)

    def _fail(self, error: aiosmtplib.SMTPException) -> None:
        """No more replies after this one fault: the session's state is unknown."""
        if self._failure is None:
            self._failure = error
            self.transport.abort()  # not close(): a server that stopped reading would hold it open
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- commands and replies -----------------------------------------------------------

    def send(self, data: bytes, *, replies: int = 1) -> None:
        """Write `data` (one command or several), which `replies` replies will answer."""
        if self._failure is not None:
            raise self._failure
        if self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._parser.owed += replies
        self.transport.write(data)

    async def reply(self, timeout: float) -> Reply:
        """The next reply in order, waiting at most `timeout` seconds for it to arrive."""
        if not self._replies and self._failure is None:
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._replies and self._failure is None:
                self._fail(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))
        if self._replies:
            return self._replies.popleft()
        assert self._failure is not None
        raise self._failure

    async def command(self, line: bytes, timeout: float) -> Reply:
        self.send(line)
        return await self.reply(timeout)

    async def transaction(self, *, mail: bytes, rcpt: bytes, message: bytes, timeouts: TimeoutsConfig) -> Outcome:
        """MAIL, RCPT, DATA and the message; the outcome names the reply that decided.

        Pipelined, the three commands go out together and every reply is read in order, each
        within its own phase's timeout; the first refusal decides (RFC 2920 3.1). Should DATA
        still get its 354 after a refused MAIL or RCPT, a lone dot ends the empty message.
        """
        steps = (("MAIL", mail, timeouts.mail), ("RCPT", rcpt, timeouts.rcpt), ("DATA", b"DATA\r\n", timeouts.data))
        decided: Outcome | None = None
        phase, body_sent, answer = "MAIL", False, Reply(0, "")
        try:
            if self.pipelining:
                self.send(mail + rcpt + b"DATA\r\n", replies=3)
            for phase, line, timeout in steps:
                if not self.pipelining:
                    if decided is not None:
                        return decided
                    self.send(line)
                answer = await self.reply(timeout)
                if answer.code == CLOSING:
                    return replace(decided or Outcome(phase, answer.code, answer.text), session_over=True)
                if decided is None and answer.code not in GOING_ON[phase]:
                    decided = Outcome(phase, answer.code, answer.text)
            if decided is not None:
                if answer.code == 354:
                    self.send(b".\r\n")
                    if (await self.reply(timeouts.data)).code == CLOSING:
                        return replace(decided, session_over=True)
                return decided
            self.send(wire_body(message))
            body_sent = True
            final = await self.reply(timeouts.data)
        except aiosmtplib.SMTPException as error:
            if decided is not None:
                return replace(decided, session_over=True)
            return Outcome(phase, None, describe(error), body_sent=body_sent, session_over=True)
        return Outcome("DATA", final.code, final.text, body_sent=True, session_over=final.code == CLOSING)

    async def reset(self, timeout: float) -> bool:
        """RSET (RFC 5321 4.1.1.5); False when the session did not come back clean."""
        try:
            return (await self.command(b"RSET\r\n", timeout)).code == 250
        except aiosmtplib.SMTPException:
            return False

    async def quit(self, timeout: float) -> None:
        """QUIT politely (RFC 5321 4.1.1.10), whatever the answer, then close."""
        try:
            if self.is_open:
                await self.command(b"QUIT\r\n", timeout)
        except aiosmtplib.SMTPException:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.transport.close()
