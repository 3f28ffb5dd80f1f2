"""Assemble a multipart/alternative message into wire bytes, fast.

A step sends one layout to many leads: the same sender, the same extra headers, and bodies
rendered from the same templates. `MessageLayout` encodes the constant parts once (From,
Reply-To, MIME-Version, the boundary, the part headers, the constant extra headers) and
`MessageLayout.assemble` does only what differs per lead: To, Subject, Date, Message-ID,
per-message extra headers and the two bodies. Bodies are quoted-printable, encoded line by
line with the C `binascii.b2a_qp`; the encoded lines are cached per layout, because the lines
a template contributes repeat for every lead and only the personalized ones are new.

`reference_assemble` is the naive `email.message.EmailMessage` way, kept as the benchmark
baseline and as the second opinion of the tests.

Every header value is checked for CR, LF and NUL, which would let a lead's name or a subject
start a header of its own (`HeaderInjectionError`). Other malformed input (an address that is
not an addr-spec, a naive date, a header name that is not a field name) is a programming error
and raises `ValueError`.
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from functools import lru_cache

from mailer.errors import HeaderInjectionError

# RFC 5322 2.1.1: a line "MUST be no more than 998 characters, and SHOULD be no more than
# 78 characters, excluding the CRLF".
MAX_LINE = 998
FOLD_AT = 78
# RFC 2047 2: "An 'encoded-word' may not be more than 75 characters long", delimiters
# included; "=?utf-8?b?" and "?=" take 12 of them.
_ENCODED_WORD_MAX = 75
_ENCODED_WORD_OVERHEAD = len("=?utf-8?b??=")
# RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
_MAX_ADDRESS = 254
# A field name that leaves no room for a value on its first line is not worth supporting.
_MAX_FIELD_NAME = FOLD_AT - len(": ")
# How much a layout remembers: the characters of encoded body lines and the number of
# Subject fields. A step's templates contribute a few hundred distinct lines and usually one
# subject; personalized ones never repeat, so a full cache is simply emptied rather than kept
# in LRU order.
_QP_CACHE_CHARS = 1 << 20
_SUBJECT_CACHE_SIZE = 1024

_FORBIDDEN = re.compile("[\r\n\0]")
# RFC 5322 3.6.8: field-name = 1*ftext, printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# RFC 5322 3.2.3 atext; RFC 6532 3.2 adds every non-ASCII character to it (surrogates are not
# characters and cannot be encoded).
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_UTF8_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\ud7ff\ue000-\U0010ffff]"
_LOCAL_PART = re.compile(rf"{_UTF8_ATEXT}+(?:\.{_UTF8_ATEXT}+)*")
# RFC 5322 3.4.1: dot-atom or domain-literal, checked after IDNA made it ASCII.
_DOMAIN = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*|\[[!-Z^-~]*\]")
# RFC 5322 3.6.4: msg-id = "<" id-left "@" id-right ">", neither side holding "<", ">", "@"
# or white space.
_MESSAGE_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")
# A display name of atoms separated by single spaces goes out as is (RFC 5322 3.2.5 phrase);
# runs of spaces would be collapsed by readers (RFC 5322 3.2.2), so those get quoted.
_ATOM_PHRASE = re.compile(rf"{_ATEXT}+(?: {_ATEXT}+)*")
# Fold an unstructured value before a run of white space that has text after it, so that no
# continuation line is white space only (RFC 5322 3.2.2).
_FOLD_POINT = re.compile(r"(?<=[^ \t])(?=[ \t]+[^ \t])")

# Headers the layout writes itself; another copy would make the message invalid
# (RFC 5322 3.6: at most one of each) or the MIME structure ambiguous.
_OWN_HEADERS = frozenset(
    {
        "from",
        "reply-to",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
_ONE_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Mailbox:
    """An address and the name to show with it, as a lead or the sender has them."""

    address: str  # addr-spec; the domain may be Unicode, the local part UTF-8 (RFC 6532)
    display_name: str = ""

    @property
    def needs_smtputf8(self) -> bool:
        """Whether the local part is non-ASCII, so only SMTPUTF8 (RFC 6531) can carry it."""
        return not self.address.rpartition("@")[0].isascii()


def wire_address(address: str, *, header: str = "address") -> str:
    """The addr-spec as it goes into a header or an SMTP envelope: its domain in IDNA.

    Raises `HeaderInjectionError` on CR, LF or NUL and `ValueError` when `address` is not a
    dot-atom addr-spec of at most 254 octets.
    """
    if _FORBIDDEN.search(address):
        raise HeaderInjectionError(header, address)
    local_part, at, domain = address.rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local_part):
        raise ValueError(f"{header}: {address!r} is not an addr-spec")
    wire = f"{local_part}@{_ascii_domain(header, domain)}"
    if len(wire.encode("utf-8")) > _MAX_ADDRESS:
        raise ValueError(f"{header}: {address!r} is longer than {_MAX_ADDRESS} octets")
    return wire


def make_message_id(domain: str) -> str:
    """A new Message-ID, angle brackets included, unique across processes and hosts.

    The time in nanoseconds orders the IDs and 64 random bits separate two processes that
    ask in the same nanosecond (RFC 5322 3.6.4 leaves the method to the generator).
    """
    return f"<{time.time_ns():x}.{secrets.token_hex(8)}@{_ascii_domain('Message-ID', domain)}>"


class MessageLayout:
    """The constant parts of every message of one step, prepared once.

    A message needs SMTPUTF8 when `needs_smtputf8` is true or its recipient's
    `Mailbox.needs_smtputf8` is: those raw UTF-8 local parts are the only 8-bit octets the
    layout ever writes.
    """

    __slots__ = (
        "_boundary",
        "_head",
        "_middle",
        "_tail",
        "_needs_smtputf8",
        "_qp_lines",
        "_qp_chars",
        "_subjects",
    )

    def __init__(
        self,
        *,
        sender: Mailbox,
        reply_to: Mailbox | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        # RFC 2046 5.1.1: the boundary must not occur in any part. Quoted-printable writes
        # "=" only before two hex digits or a line break (RFC 2045 6.7), so no encoded body
        # can contain "=_", and one boundary serves every message of the step. "=" is a
        # tspecial (RFC 2045 5.1), hence the quotes in Content-Type.
        self._boundary = f"=_{secrets.token_hex(12)}"  # keeps Content-Type within 78
        lines = [_mailbox_field("From", sender)]
        if reply_to is not None:
            lines.append(_mailbox_field("Reply-To", reply_to))
        lines.extend(_extra_field(name, value) for name, value in headers)
        lines.append(
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative; boundary="{self._boundary}"\r\n'
            "\r\n"
            f"--{self._boundary}\r\n"
            f"{_part_headers('plain')}\r\n"
        )
        self._head = "".join(lines).encode("utf-8")
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1), so a body
        # keeps its own last line break, or its lack of one.
        self._middle = f"\r\n--{self._boundary}\r\n{_part_headers('html')}\r\n".encode("ascii")
        self._tail = f"\r\n--{self._boundary}--\r\n".encode("ascii")
        self._needs_smtputf8 = sender.needs_smtputf8 or (
            reply_to is not None and reply_to.needs_smtputf8
        )
        self._qp_lines: dict[str, bytes] = {}
        self._qp_chars = 0
        self._subjects: dict[str, str] = {}

    @property
    def needs_smtputf8(self) -> bool:
        """Whether From or Reply-To has a non-ASCII local part (RFC 6531, RFC 6532)."""
        return self._needs_smtputf8

    def assemble(
        self,
        *,
        to: Mailbox,
        subject: str,
        message_id: str,
        date: datetime,
        text: str,
        html: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """The message to `to`, as the octets to send after DATA (before dot-stuffing).

        The text part comes first and the HTML part last: RFC 2046 5.1.4 puts the preferred
        alternative last. CRLF, CR and LF in the bodies all end a line.
        """
        lines = [
            _mailbox_field("To", to),
            self._subject_field(subject),
            f"Date: {_rfc5322_date(date)}\r\n",
            f"Message-ID: {_message_id(message_id)}\r\n",
        ]
        lines.extend(_extra_field(name, value) for name, value in headers)
        return b"".join(
            (
                "".join(lines).encode("utf-8"),
                self._head,
                self._quoted_printable(text),
                self._middle,
                self._quoted_printable(html),
                self._tail,
            )
        )

    def _subject_field(self, subject: str) -> str:
        field = self._subjects.get(subject)
        if field is None:
            field = _encode_subject(subject)
            if len(self._subjects) >= _SUBJECT_CACHE_SIZE:
                self._subjects.clear()
            self._subjects[subject] = field
        return field

    def _quoted_printable(self, body: str) -> bytes:
        """`body` in quoted-printable with CRLF line breaks, from cached lines where it can."""
        if "\r" in body:
            body = body.replace("\r\n", "\n").replace("\r", "\n")
        cache = self._qp_lines
        encoded_lines: list[bytes] = []
        for line in body.split("\n"):
            encoded = cache.get(line)
            if encoded is None:
                encoded = _quoted_printable_line(line)
                if self._qp_chars > _QP_CACHE_CHARS:
                    cache.clear()
                    self._qp_chars = 0
                cache[line] = encoded
                self._qp_chars += len(line)
            encoded_lines.append(encoded)
        return b"\r\n".join(encoded_lines)


def _quoted_printable_line(line: str) -> bytes:
    """One body line (no line break) in quoted-printable, soft line breaks as "=" CRLF.

    b2a_qp keeps lines to 76 characters (RFC 2045 6.7 rule 5), encodes "=", controls, 8-bit
    octets and white space at the end (rules 1-3) and a line holding just "." as "=2E". A line
    starting with "." needs no more, the SMTP client dot-stuffs it (RFC 5321 4.5.2). One
    starting with "From " is left alone: at worst an mbox file gains a ">" before it after
    delivery (RFC 4155 appendix A), and "=46rom" would push the line past 76.
    """
    return binascii.b2a_qp(line.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def _part_headers(subtype: str) -> str:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
    )


def _mailbox_field(name: str, mailbox: Mailbox) -> str:
    """A From, Reply-To or To field: `name`, the display name and the address, folded."""
    address = wire_address(mailbox.address, header=name)
    display_name = mailbox.display_name
    if not display_name:
        return f"{name}: {address}\r\n"
    if _FORBIDDEN.search(display_name):
        raise HeaderInjectionError(name, display_name)
    prefix = f"{name}: "
    words = _phrase_words(display_name)
    if words is not None:
        lines = _fold(prefix, [*words, f"<{address}>"])
        if max(map(len, lines)) <= MAX_LINE:
            return "\r\n".join(lines) + "\r\n"
    words = _encoded_words(display_name, FOLD_AT - len(prefix))
    return "\r\n".join(_fold(prefix, [*words, f"<{address}>"])) + "\r\n"


def _phrase_words(display_name: str) -> list[str] | None:
    """The display name as plain words, or None when it must be encoded (RFC 2047 5.3).

    "=?" is encoded too: readers decode what looks like an encoded-word even inside a
    quoted-string.
    """
    if "=?" in display_name:
        return None
    if _ATOM_PHRASE.fullmatch(display_name):
        return display_name.split(" ")
    if display_name.isascii() and display_name.isprintable():
        escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
        return [f'"{escaped}"']  # RFC 5322 3.2.4 quoted-string
    return None


def _is_plain_text(value: str) -> bool:
    """Whether an unstructured value reads back exactly when written as is.

    Readers drop white space after the colon and decode anything that looks like an
    encoded-word (RFC 2047 6.1), so those values are encoded even when they are ASCII.
    """
    return (
        value.isascii()
        and value.isprintable()
        and not value.startswith(" ")
        and "=?" not in value
    )


def _encode_subject(subject: str) -> str:
    if _FORBIDDEN.search(subject):
        raise HeaderInjectionError("Subject", subject)
    if _is_plain_text(subject):
        folded = _folded_text("Subject", subject)
        if folded is not None:
            return folded
    return _encoded_field("Subject", subject)


def _extra_field(name: str, value: str) -> str:
    """A caller's header. ASCII values go verbatim, as they may be structured (RFC 2369
    List-Unsubscribe); others are unstructured text in encoded-words."""
    if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
        raise HeaderInjectionError(name, value)
    if not _FIELD_NAME.fullmatch(name) or len(name) > _MAX_FIELD_NAME:
        raise ValueError(f"{name!r} is not a header field name (RFC 5322 3.6.8)")
    if name.lower() in _OWN_HEADERS:
        raise ValueError(f"{name} is written by the message layout itself")
    if not (value.isascii() and value.replace("\t", " ").isprintable()):
        return _encoded_field(name, value)
    folded = _folded_text(name, value)
    if folded is None:
        raise ValueError(f"{name}: value cannot be folded into {MAX_LINE}-octet lines")
    return folded


def _folded_text(name: str, value: str) -> str | None:
    """`name: value` folded at white space, or None when a line would pass 998 octets."""
    if len(name) + 2 + len(value) <= FOLD_AT:
        return f"{name}: {value}\r\n" if value else f"{name}:\r\n"
    pieces = _FOLD_POINT.split(value)
    lines = _fold_pieces(f"{name}: {pieces[0]}", pieces[1:])
    if max(map(len, lines)) > MAX_LINE:
        return None
    return "\r\n".join(lines) + "\r\n"


def _encoded_field(name: str, value: str) -> str:
    """`name: value` with `value` in RFC 2047 encoded-words, each filling a folded line."""
    prefix = f"{name}: "
    return "\r\n".join(_fold(prefix, _encoded_words(value, FOLD_AT - len(prefix)))) + "\r\n"


def _fold(prefix: str, words: list[str]) -> list[str]:
    """`prefix` and `words` separated by single spaces, in lines of at most 78 where possible."""
    return _fold_pieces(prefix + words[0], [f" {word}" for word in words[1:]])


def _fold_pieces(first: str, pieces: Iterable[str]) -> list[str]:
    """Lines from `first` and `pieces`, each piece starting with the white space to fold at."""
    lines: list[str] = []
    line = first
    for piece in pieces:
        if len(line) + len(piece) > FOLD_AT:
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    return lines


def _encoded_words(text: str, first_room: int) -> list[str]:
    """`text` as RFC 2047 "B" encoded-words of UTF-8, the first one fitting `first_room`.

    Words split only between characters, as RFC 2047 5 requires ("each 'encoded-word' MUST
    represent an integral number of characters"), so each decodes on its own; readers drop
    the white space between adjacent words (RFC 2047 6.2).
    """
    data = text.encode("utf-8")
    words: list[str] = []
    start = 0
    room = first_room
    while start < len(data):
        # Base64 turns 3 octets into 4 characters; take at least 6 octets so that the longest
        # UTF-8 character (4 octets, RFC 3629 3) always fits.
        end = start + max(2, (min(room, _ENCODED_WORD_MAX) - _ENCODED_WORD_OVERHEAD) // 4) * 3
        if end < len(data):
            while data[end] & 0xC0 == 0x80:  # a continuation octet, 10xxxxxx (RFC 3629 3)
                end -= 1
        encoded = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{encoded}?=")
        start = end
        room = FOLD_AT - 1  # a continuation line starts with one space
    return words or [""]


def _rfc5322_date(date: datetime) -> str:
    offset = date.utcoffset()
    if offset is None:
        raise ValueError(f"date {date!r} has no time zone")
    if offset % _ONE_MINUTE:
        # RFC 5322 3.3 zones are +hhmm; a zone with seconds (old LMT offsets) goes out as UTC.
        date = date.astimezone(timezone.utc)
    return format_datetime(date)


def _message_id(message_id: str) -> str:
    if _FORBIDDEN.search(message_id):
        raise HeaderInjectionError("Message-ID", message_id)
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"Message-ID: {message_id!r} is not <id-left@id-right>")
    return message_id


def _ascii_domain(header: str, domain: str) -> str:
    """`domain` as it goes on the wire: Unicode labels in IDNA (RFC 5890), checked."""
    if _FORBIDDEN.search(domain):
        raise HeaderInjectionError(header, domain)
    wire_domain = domain if domain.isascii() else _idna(domain)
    if not _DOMAIN.fullmatch(wire_domain):
        raise ValueError(f"{header}: {domain!r} is not a domain")
    return wire_domain


@lru_cache(maxsize=4096)
def _idna(domain: str) -> str:
    """Punycode for a Unicode domain; cached, since a few domains serve most leads."""
    try:
        import idna
    except ImportError:  # pragma: no cover - email-validator, a dependency, requires idna
        return domain.encode("idna").decode("ascii")  # IDNA 2003, Python's own codec
    return idna.encode(domain, uts46=True).decode("ascii")


def reference_assemble(
    *,
    sender: Mailbox,
    reply_to: Mailbox | None,
    to: Mailbox,
    subject: str,
    message_id: str,
    date: datetime,
    text: str,
    html: str,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The same message the naive way, with `EmailMessage` and policy SMTP (the baseline)."""
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(display_name=sender.display_name, addr_spec=sender.address)
    if reply_to is not None:
        message["Reply-To"] = Address(
            display_name=reply_to.display_name, addr_spec=reply_to.address
        )
    message["To"] = Address(display_name=to.display_name, addr_spec=to.address)
    message["Subject"] = subject
    message["Date"] = date
    message["Message-ID"] = message_id
    for name, value in headers:
        message[name] = value
    message.set_content(text, charset="utf-8", cte="quoted-printable")
    message.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message.as_bytes()
