"""SMTP transactions over mailer.smtpsession: PIPELINING (RFC 2920) when offered, one command at a time otherwise.

Against real servers on loopback: aiosmtpd (mailer.testing's CaptureServer and FaultServer,
offering PIPELINING here) and, for replies aiosmtpd never sends (a 354 after a refused RCPT,
replies held until DATA, split a byte at a time, malformed), a bare scripted server.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import defaultdict, deque
from typing import Any, Self

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as ServerEnvelope
from aiosmtplib import SMTPResponseException
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import TimeoutsConfig
from mailer.reply import SMTPReply, Verdict
from mailer.smtpsession import (
    MAX_LINE_LENGTH,
    PLAIN_MAILBOX,
    ReplyParser,
    envelope_commands,
    wire_body,
)
from mailer.testing import (
    REPLY_550_NO_SUCH_USER,
    CaptureServer,
    FaultServer,
    delay_reply,
    disconnect_after_354,
    drop_after_dot,
    malformed_reply,
    oversized_reply,
    reply_421_and_close,
    reply_with,
)
from mailer.transport import ConnectionPool, Endpoint, Envelope, SMTPConnection, TLSMode

MESSAGE = b"From: a@acme.example\r\nTo: b@example.com\r\nSubject: hi\r\nMessage-ID: <1@acme.example>\r\n\r\nHello\r\n.leading dot\r\n.\r\n"
TIMEOUTS = TimeoutsConfig(connect=5, mail=5, rcpt=5, data=5)
ENVELOPE = Envelope("bounces@acme.example", "b@example.com")


def connect(port: int, timeouts: TimeoutsConfig = TIMEOUTS, **options: Any) -> SMTPConnection:
    return SMTPConnection(Endpoint(host="127.0.0.1", port=port, **options), timeouts)


# -- servers ---------------------------------------------------------------------------


class Pipelining(CaptureServer):
    """A CaptureServer offering PIPELINING (or not) that notes, at each MAIL, whether RCPT and
    DATA had already arrived: aiosmtpd reads ahead, so they had if the client pipelined."""

    def __init__(self, *, advertise: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.advertise = advertise
        self.read_ahead: list[bool] = []

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: ServerEnvelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.advertise:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: ServerEnvelope, address: str, options: list[str]) -> str:
        waiting = bytes(server._reader._buffer)  # type: ignore[attr-defined]
        self.read_ahead.append(b"RCPT TO:" in waiting and b"DATA\r\n" in waiting)
        return await super().handle_MAIL(server, session, envelope, address, options)


class PipeliningFaults(FaultServer):
    """The fault server, offering PIPELINING."""

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: ServerEnvelope, hostname: str, responses: list[str]) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        responses.insert(-1, "250-PIPELINING")
        return responses


EHLO_PIPELINING = "250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME"
DEFAULTS = {
    "EHLO": EHLO_PIPELINING, "HELO": "250 raw.test", "MAIL": "250 2.1.0 Ok", "RCPT": "250 2.1.5 Ok",
    "DATA": "354 End data with <CR><LF>.<CR><LF>", "DOT": "250 2.0.0 Ok: queued", "RSET": "250 2.0.0 Ok",
    "NOOP": "250 2.0.0 Ok", "QUIT": "221 2.0.0 Bye",
}
TRANSACTION = ("MAIL", "RCPT", "DATA", "DOT")


class ScriptedServer:
    """A bare SMTP server on 127.0.0.1 answering each verb from a script, else as DEFAULTS.

    `hold_until_data`: the replies to MAIL and RCPT wait until DATA arrives, then all three
    go out in one write, so only a pipelining client ever gets them. `split`: transaction
    replies go out a byte at a time. Keeps every line and every message body as sent.
    """

    def __init__(self, *, hold_until_data: bool = False, split: bool = False) -> None:
        self.hold_until_data = hold_until_data
        self.split = split
        self.lines: list[bytes] = []
        self.bodies: list[bytes] = []  # still dot-stuffed, without the final dot
        self.connections = 0
        self._scripts: dict[str, deque[bytes]] = defaultdict(deque)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def script(self, verb: str, *replies: str | bytes) -> None:
        """Answer `verb` with these, one per use; text gets CRLF, bytes go out as they are."""
        self._scripts[verb].extend(r if isinstance(r, bytes) else r.encode() + b"\r\n" for r in replies)

    def verbs(self) -> list[str]:
        return [line[:4].decode().upper() for line in self.lines]

    def _answer(self, verb: str) -> bytes:
        queue = self._scripts.get(verb)
        return queue.popleft() if queue else DEFAULTS.get(verb, "500 5.5.2 What?").encode() + b"\r\n"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # Python 3.11's Server.close leaves sessions open
            writer.close()
        await self._server.wait_closed()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, verb: str) -> None:
        if not (self.split and verb in TRANSACTION):
            writer.write(data)
            return
        for index in range(len(data)):
            writer.write(data[index : index + 1])
            await writer.drain()
            await asyncio.sleep(0.001)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        writer.write(b"220 raw.test ESMTP\r\n")
        held = b""
        try:
            while line := await reader.readline():
                self.lines.append(line)
                verb = line[:4].decode("ascii", "replace").upper()
                answer = self._answer(verb)
                if self.hold_until_data and verb in ("MAIL", "RCPT"):
                    held += answer
                    continue
                await self._write(writer, held + answer, verb)
                held = b""
                if verb == "QUIT":
                    break
                if verb == "DATA" and answer.startswith(b"354"):
                    body = b""
                    while (data := await reader.readline()) not in (b".\r\n", b""):
                        body += data
                    self.bodies.append(body)
                    await self._write(writer, self._answer("DOT"), "DOT")
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return context, str(path)


# -- bytes on the wire -----------------------------------------------------------------

LINE_PIECES = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b" ", b"\x00"]), max_size=40).map(b"".join)


@given(st.one_of(LINE_PIECES, st.binary(max_size=200)))
def test_the_message_goes_out_byte_for_byte_as_aiosmtplib_sent_it(message: bytes) -> None:
    """Line endings, dot-stuffing and the final dot are exactly aiosmtplib's, for any bytes."""
    assert wire_body(message) == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@given(st.from_regex(PLAIN_MAILBOX, fullmatch=True))
def test_a_plain_mailbox_is_quoted_as_aiosmtplib_quotes_it(address: str) -> None:
    """The shortcut for dot-atom@domain mailboxes writes what aiosmtplib's quote_address writes."""
    mail, rcpt = envelope_commands(address, address)
    assert mail == f"MAIL FROM:{quote_address(address)}\r\n".encode()
    assert rcpt == f"RCPT TO:{quote_address(address)}\r\n".encode()


def test_other_mailboxes_go_through_aiosmtplib_and_control_characters_never_reach_the_wire() -> None:
    """Quoted local parts, UTF-8 (with SMTPUTF8) and the null sender as aiosmtplib wrote them; no second command line, ever."""
    assert envelope_commands("", '"john doe"@example.com') == (b"MAIL FROM:<>\r\n", b'RCPT TO:<"john doe"@example.com>\r\n')
    assert envelope_commands("b@acme.example", "josé@example.com", smtputf8=True) == (
        b"MAIL FROM:<b@acme.example> SMTPUTF8\r\n", "RCPT TO:<josé@example.com>\r\n".encode(),
    )
    # aiosmtplib's parseaddr keeps the first mailbox of an injection attempt, and so do we
    assert envelope_commands("b@acme.example", "a@b.example\r\nRCPT TO:<x@evil.example>")[1] == b"RCPT TO:<a@b.example>\r\n"
    for address in ('"a\x00"@b.example', '"a\x7f"@b.example', "a b@c.example"):
        with pytest.raises(ValueError):
            envelope_commands("b@acme.example", address)
    with pytest.raises(UnicodeEncodeError):
        envelope_commands("b@acme.example", "josé@example.com")  # not without SMTPUTF8


# -- the reply parser ---------------------------------------------------------------------

REPLY_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\r\n"), max_size=30)
REPLIES = st.lists(st.tuples(st.integers(200, 599), st.lists(REPLY_TEXT, min_size=1, max_size=4)), min_size=1, max_size=5)


def _wire(replies: list[tuple[int, list[str]]]) -> bytes:
    return b"".join(
        f"{code}{'-' if number < len(lines) - 1 else ' '}{line}\r\n".encode()
        for code, lines in replies
        for number, line in enumerate(lines)
    )


@given(REPLIES, st.data())
def test_replies_come_out_whole_and_in_order_however_the_bytes_are_cut(replies: list[tuple[int, list[str]]], data: st.DataObject) -> None:
    """Several (multi-line) replies cut anywhere, in one piece or many, parse as aiosmtplib joined them, in order."""
    wire = _wire(replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    parser = ReplyParser()
    parser.owed = len(replies)
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        parser.feed(wire[start:end])
    assert list(parser.replies) == [(code, "\n".join(line.strip(" \t") for line in lines)) for code, lines in replies]
    assert parser.owed == 0


def test_a_reply_beyond_those_owed_is_refused_after_the_ones_owed() -> None:
    """One reply owed, two arrive together: the first is kept, the second is a protocol error."""
    parser = ReplyParser()
    parser.owed = 1
    with pytest.raises(SMTPResponseException, match="Unexpected reply, no command was sent: 421"):
        parser.feed(b"250 2.0.0 Ok\r\n421 4.4.2 timeout exceeded\r\n")
    assert list(parser.replies) == [(250, "2.0.0 Ok")]


@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_any_bytes_parse_or_end_in_a_protocol_error(pieces: list[bytes]) -> None:
    """Whatever a server sends, the parser yields three-digit replies or raises a code -1 error, nothing else."""
    parser = ReplyParser()
    parser.owed = 10_000
    try:
        for piece in pieces:
            parser.feed(piece)
    except SMTPResponseException as error:
        assert error.code == -1
    assert all(0 <= code <= 999 for code, _ in parser.replies)


# -- pipelining on and off, over real sessions --------------------------------------------


@pytest.mark.parametrize("advertise", [True, False], ids=["offered", "not-offered"])
async def test_mail_rcpt_and_data_go_out_together_only_when_pipelining_is_offered(advertise: bool) -> None:
    """Offered, RCPT and DATA have arrived before MAIL is answered; not offered, each waits; bytes intact either way."""
    async with Pipelining(advertise=advertise) as server:
        connection = connect(server.port)
        replies = [await connection.send(ENVELOPE, MESSAGE) for _ in range(3)]
        await connection.close()
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 3 and replies[0].command == "DATA"
    assert server.read_ahead == [advertise] * 3
    assert [m.data for m in server.messages] == [MESSAGE] * 3
    assert server.connections == 1


async def test_a_pipelined_session_carries_many_messages() -> None:
    """Fifty messages in a row over one pipelined session, each accepted once, each body intact."""
    async with Pipelining() as server:
        connection = connect(server.port)
        for number in range(50):
            body = MESSAGE.replace(b"<1@", f"<{number}@".encode())
            reply = await connection.send(Envelope("bounces@acme.example", f"lead{number}@example.com"), body)
            assert reply.verdict is Verdict.ACCEPTED, str(reply)
        assert connection.is_open and connection.usable and connection.delivered == 50
        await connection.close()
    assert server.connections == 1 and all(server.read_ahead) and len(server.read_ahead) == 50
    assert [m.rcpt_tos for m in server.messages] == [(f"lead{n}@example.com",) for n in range(50)]
    assert all(copies == 1 for copies in server.message_ids.values()) and len(server.message_ids) == 50


@pytest.mark.parametrize("mode", [TLSMode.STARTTLS, TLSMode.IMPLICIT])
async def test_tls_sessions_pipeline_after_the_handover(mode: TLSMode, tls: tuple[ssl.SSLContext, str]) -> None:
    """Over STARTTLS and implicit TLS the handed-over transport still pipelines, message after message."""
    context, ca_file = tls
    options: dict[str, Any] = {"starttls": context} if mode is TLSMode.STARTTLS else {"implicit_tls": context}
    async with Pipelining(**options) as server:
        connection = connect(server.port, tls=mode, ca_file=ca_file)
        replies = [await connection.send(ENVELOPE, MESSAGE) for _ in range(3)]
        assert connection.encrypted and connection.is_open
        await connection.close()
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 3
    assert all(m.tls for m in server.messages) and [m.data for m in server.messages] == [MESSAGE] * 3
    assert server.read_ahead == [True] * 3 and server.connections == 1


async def test_replies_held_until_data_arrive_in_one_segment_and_are_read_in_order() -> None:
    """A server that answers MAIL, RCPT and DATA in one write only after DATA: pipelined, delivered; not, MAIL times out."""
    async with ScriptedServer(hold_until_data=True) as server:
        server.script("MAIL", "250-2.1.0 Sender\r\n250 2.1.0 Ok")
        connection = connect(server.port)
        reply = await connection.send(ENVELOPE, MESSAGE)
        await connection.close()
    assert reply.verdict is Verdict.ACCEPTED and reply.text == "Ok: queued"
    assert server.bodies == [wire_body(MESSAGE)[:-3]]  # dot-stuffed on the wire
    assert b"\r\n..leading dot\r\n..\r\n" in server.bodies[0]

    async with ScriptedServer(hold_until_data=True) as server:
        server.script("EHLO", "250-raw.test\r\n250 8BITMIME")  # no PIPELINING
        connection = connect(server.port, TimeoutsConfig(connect=5, mail=0.3, rcpt=5, data=5))
        began = time.monotonic()
        reply = await connection.send(ENVELOPE, MESSAGE)
        waited = time.monotonic() - began
    assert reply.code is None and reply.command == "MAIL" and reply.timed_out and 0.3 <= waited < 2
    assert server.verbs() == ["EHLO", "MAIL"], "one command at a time: RCPT waited for MAIL's reply"


async def test_replies_split_a_byte_at_a_time_are_put_back_together() -> None:
    """Multi-line replies arriving a byte per segment parse as whole replies, the refusal's lines joined."""
    async with ScriptedServer(split=True) as server:
        server.script("MAIL", "250-2.1.0 first line\r\n250 2.1.0 Ok")
        server.script("RCPT", "550-5.1.1 The email account that you tried to reach\r\n550 5.1.1 does not exist.")
        server.script("DATA", "503 5.5.1 No valid recipients")
        connection = connect(server.port)
        refused = await connection.send(ENVELOPE, MESSAGE)
        accepted = await connection.send(ENVELOPE, MESSAGE)
        await connection.close()
    assert (refused.code, refused.enhanced, refused.command) == (550, "5.1.1", "RCPT")
    assert refused.text == "The email account that you tried to reach does not exist."
    assert accepted.verdict is Verdict.ACCEPTED and server.connections == 1
    assert server.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]


# -- RFC 2920 3.1: refusals inside a pipelined group ---------------------------------------


@pytest.mark.parametrize(
    ("mail", "rcpt", "data", "decided"),
    [
        ("550 5.7.1 Sender refused", "503 5.5.1 Need MAIL", "354 Go ahead", ("MAIL", 550)),
        ("250 2.1.0 Ok", "550 5.1.1 No such user", "354 Go ahead", ("RCPT", 550)),
        ("250 2.1.0 Ok", "550 5.1.1 No such user", "554 5.5.1 No valid recipients", ("RCPT", 550)),
        ("250 2.1.0 Ok", "250 2.1.5 Ok", "554 5.7.1 Not now", ("DATA", 554)),
    ],
    ids=["mail-refused-354-anyway", "rcpt-refused-354-anyway", "rcpt-and-data-refused", "data-refused"],
)
async def test_the_first_refusal_in_a_pipelined_group_decides(mail: str, rcpt: str, data: str, decided: tuple[str, int]) -> None:
    """The first refusal is reported; a 354 after it gets a lone dot, no message; the session goes on after RSET."""
    async with ScriptedServer() as server:
        server.script("MAIL", mail)
        server.script("RCPT", rcpt)
        server.script("DATA", data)
        lone_dot = data.startswith("354")
        if lone_dot:
            server.script("DOT", "554 5.5.1 Error: no valid recipients")
        connection = connect(server.port)
        refused = await connection.send(ENVELOPE, MESSAGE)
        after = await connection.send(ENVELOPE, MESSAGE)
        await connection.close()
    assert (refused.command, refused.code) == decided
    assert server.bodies == ([b""] if lone_dot else []) + [wire_body(MESSAGE)[:-3]], "a lone dot, never the message"
    assert server.verbs()[:5] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET"]
    assert after.verdict is Verdict.ACCEPTED and connection.delivered == 1 and server.connections == 1


async def test_refusals_from_aiosmtpd_leave_the_pipelined_session_usable() -> None:
    """A 550 at MAIL or at RCPT (aiosmtpd then says 503 to the rest) is reported as such; RSET, and the next goes through."""
    async with PipeliningFaults() as server:
        server.inject(reply_with("MAIL", "550 5.7.1 Sender blocked", nth=1), reply_with("RCPT", REPLY_550_NO_SUCH_USER, nth=2))
        connection = connect(server.port)
        replies = [await connection.send(ENVELOPE, MESSAGE) for _ in range(3)]
        await connection.close()
    assert [(r.command, r.code) for r in replies] == [("MAIL", 550), ("RCPT", 550), ("DATA", 250)]
    assert replies[1].enhanced == "5.1.1" and server.connections == 1 and len(server.messages) == 1


@pytest.mark.parametrize("phase", ["MAIL", "RCPT"])
async def test_a_421_in_a_pipelined_group_ends_the_session(phase: str) -> None:
    """A 421 at MAIL or RCPT is the reply (RFC 5321 3.8); the session is discarded, never reused."""
    async with PipeliningFaults() as server:
        server.inject(reply_421_and_close(phase))
        connection = connect(server.port)
        reply = await connection.send(ENVELOPE, MESSAGE)
    assert (reply.command, reply.code, reply.enhanced) == (phase, 421, "4.3.2")
    assert not connection.usable and not connection.is_open and server.messages == []


# -- replies that break the protocol ----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (b"hello, this is not an SMTP reply\r\n", "Malformed SMTP response line: hello, this is not an SMTP reply"),
        (b"25\r\n", "Malformed SMTP response line: 25"),
        (b"250x Ok\r\n", "Malformed SMTP response line: 250x Ok"),
        (b"250 " + b"x" * MAX_LINE_LENGTH + b"\r\n", "Response too long"),
        (b"250 " + b"x" * (MAX_LINE_LENGTH + 10), "Response too long"),  # no line end in sight
        ((b"250-" + b"x" * 1000 + b"\r\n") * 40 + b"250 Ok\r\n", "Response too long"),
    ],
    ids=["no-code", "short", "bad-separator", "long-line", "endless-line", "endless-reply"],
)
async def test_a_malformed_or_oversized_reply_discards_the_session(answer: bytes, text: str) -> None:
    """A reply that breaks RFC 5321 4.2 or aiosmtplib's size limits: no code, the phase named, the session dropped."""
    async with ScriptedServer() as server:
        server.script("RCPT", answer)
        connection = connect(server.port)
        reply = await connection.send(ENVELOPE, MESSAGE)
    assert (reply.code, reply.command, reply.text) == (None, "RCPT", text)
    assert reply.verdict is Verdict.TEMPORARY and not reply.timed_out
    assert not connection.usable and not connection.is_open and server.bodies == []


@pytest.mark.parametrize("fault", [malformed_reply("RCPT"), oversized_reply("MAIL")], ids=["malformed", "oversized"])
async def test_aiosmtpd_playing_a_broken_reply_mid_group(fault: Any) -> None:
    """The fault server's malformed and oversized replies inside a pipelined group: no code, session dropped."""
    async with PipeliningFaults() as server:
        server.inject(fault)
        connection = connect(server.port)
        reply = await connection.send(ENVELOPE, MESSAGE)
    assert reply.code is None and reply.command == fault.command and not connection.usable
    assert re.match(r"(Malformed SMTP response line|Response too long)", reply.text)


async def test_a_421_nobody_asked_for_ends_the_session_and_the_pool_opens_another() -> None:
    """Postfix's idle "421 4.4.2 timeout exceeded", unasked, closes the session; the next message takes a fresh one."""
    async with ScriptedServer() as server:
        server.script("DOT", "250 2.0.0 Ok: queued\r\n421 4.4.2 raw.test Error: timeout exceeded")
        pool = ConnectionPool()
        endpoint = Endpoint(host="127.0.0.1", port=server.port)
        first = await pool.send("relay", endpoint, TIMEOUTS, ENVELOPE, MESSAGE)
        second = await pool.send("relay", endpoint, TIMEOUTS, ENVELOPE, MESSAGE)
        await pool.close()
    assert first.verdict is Verdict.ACCEPTED and second.verdict is Verdict.ACCEPTED
    assert server.connections == 2 and len(server.bodies) == 2


async def test_bytes_after_the_ehlo_reply_refuse_the_handover() -> None:
    """Anything left unread after the last set-up reply (nobody sends that unasked) refuses the session, nothing sent."""
    async with ScriptedServer() as server:
        server.script("EHLO", EHLO_PIPELINING + "\r\n250 2.1.0 Ok")
        connection = connect(server.port)
        reply = await connection.send(ENVELOPE, MESSAGE)
    assert reply.code is None and reply.command == "EHLO" and reply.text.startswith("Unexpected data after the server's reply")
    assert not connection.usable and server.verbs() == ["EHLO"]


async def test_a_server_without_ehlo_gets_helo_and_one_command_at_a_time() -> None:
    """RFC 5321 3.2: a 502 to EHLO falls back to HELO; with no extensions, nothing is pipelined."""
    async with ScriptedServer(hold_until_data=False) as server:
        server.script("EHLO", "502 5.5.2 Command not recognized")
        connection = connect(server.port)
        reply = await connection.send(ENVELOPE, MESSAGE)
        await connection.close()
    assert reply.verdict is Verdict.ACCEPTED
    assert server.verbs() == ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "QUIT"]


# -- timeouts and hang-ups --------------------------------------------------------------------

PHASE_TIMEOUTS = TimeoutsConfig(connect=5, mail=0.4, rcpt=0.8, data=1.2)
SLACK = 0.35


async def test_each_pipelined_phase_times_out_after_its_own_timeout() -> None:
    """Pipelined, a stall at MAIL, RCPT, DATA or the dot ends after that phase's timeout; only the dot's is unknown."""
    stalls = {"MAIL": ("MAIL", PHASE_TIMEOUTS.mail), "RCPT": ("RCPT", PHASE_TIMEOUTS.rcpt),
              "DATA": ("DATA", PHASE_TIMEOUTS.data), "DOT": ("DATA", PHASE_TIMEOUTS.data)}
    async with PipeliningFaults() as server:
        for phase in stalls:
            server.inject(delay_reply(phase, 3.0, sender=f"bounces+{phase.lower()}@acme.example"))

        async def stalled(phase: str) -> tuple[SMTPReply, float, SMTPConnection]:
            connection = connect(server.port, PHASE_TIMEOUTS)
            began = time.monotonic()
            reply = await connection.send(Envelope(f"bounces+{phase.lower()}@acme.example", f"{phase.lower()}@example.com"), MESSAGE)
            return reply, time.monotonic() - began, connection

        results = dict(zip(stalls, await asyncio.gather(*(stalled(phase) for phase in stalls))))
    for phase, (named, timeout) in stalls.items():
        reply, waited, connection = results[phase]
        assert (reply.code, reply.command) == (None, named) and reply.timed_out, (phase, str(reply))
        assert timeout <= waited < timeout + SLACK, f"{phase}: gave up after {waited:.2f} s, not {timeout} s"
        assert reply.text.startswith("outcome unknown: ") == (phase == "DOT"), str(reply)
        assert "SMTPReadTimeoutError" in reply.text and not connection.usable and not connection.is_open
    assert [m.rcpt_tos for m in server.messages] == [("dot@example.com",)], "the stalled dot's message did arrive"


@pytest.mark.parametrize(
    ("fault", "accepted"), [(disconnect_after_354(), 0), (drop_after_dot(), 1)], ids=["after-354", "after-dot"]
)
async def test_a_hang_up_once_the_message_went_out_is_an_unknown_outcome(fault: Any, accepted: int) -> None:
    """A hang-up after the 354 or after the final dot: no code, DATA, "outcome unknown", the session dropped."""
    async with PipeliningFaults() as server:
        server.inject(fault)
        connection = connect(server.port)
        reply = await connection.send(ENVELOPE, MESSAGE)
    assert (reply.code, reply.command) == (None, "DATA") and "SMTPServerDisconnected" in reply.text
    # After the dot the client cannot know; after a 354 only if the message went out before
    # the hang-up was seen (the two may arrive together, and then nothing was sent).
    assert reply.text.startswith("outcome unknown: ") or not accepted
    assert not reply.timed_out and not connection.usable and len(server.messages) == accepted
