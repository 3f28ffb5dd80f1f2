"""Tests for mailer.mime: every message is parsed back by the stdlib and compared with intent."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailer import mime
from mailer.errors import HeaderInjectionError
from mailer.mime import (
    Mailbox,
    MessageLayout,
    make_message_id,
    reference_assemble,
    wire_address,
)

SENDER = Mailbox("news@acme.example", "Acme Webinars")
REPLY_TO = Mailbox("sales@acme.example", "Acme Sales")
TO = Mailbox("taro@example.jp", "山田 太郎")
DATE = datetime(2024, 5, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=9)))
MESSAGE_ID = "<18ea55e186784259.20c7946a7315d154@acme.example>"
JA_SUBJECT = "【ご案内】ウェビナーのお知らせ — 第3回 マーケティング自動化の実践セミナー（オンライン開催）"
JA_LONG_NAME = "株式会社サンプルマーケティング 営業本部 山田 太郎"
TEXT = "Hi Taro,\n\nThanks for signing up.\n\n-- \nAcme\n"
HTML = (
    '<p style="color:#333">Hi Taro,</p>\n'
    '<p>Thanks for <a href="https://acme.example/?a=1&amp;b=2">signing up</a>.</p>\n'
)

# Unicode domains and what IDNA makes of them (RFC 5890), from the idna package's own tests.
PUNYCODE = {
    "例え.jp": "xn--r8jz45g.jp",
    "bücher.example": "xn--bcher-kva.example",
    "пример.испытание": "xn--e1afmkfd.xn--80akhbyknj4f",
}
ENCODED_WORD = re.compile(r"=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=")
QP_LINE = re.compile(rb"(?:[\t !-<>-~]|=[0-9A-F]{2})*=?")

# CPython's policy.default keeps the white space between adjacent encoded-words of a display
# name (python/cpython#128110), though RFC 2047 6.2 says readers drop it.
CPYTHON_SPLITS_DISPLAY_NAMES = (
    email.message_from_bytes(
        b"To: =?utf-8?b?YQ==?= =?utf-8?b?Yg==?= <a@b.example>\r\n\r\n",
        policy=email.policy.default,
    )["To"].addresses[0].display_name
    != "ab"
)


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _assemble(
    *,
    sender: Mailbox = SENDER,
    reply_to: Mailbox | None = REPLY_TO,
    layout_headers: Sequence[tuple[str, str]] = (),
    to: Mailbox = TO,
    subject: str = JA_SUBJECT,
    message_id: str = MESSAGE_ID,
    date: datetime = DATE,
    text: str = TEXT,
    html: str = HTML,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    layout = MessageLayout(sender=sender, reply_to=reply_to, headers=layout_headers)
    return layout.assemble(
        to=to,
        subject=subject,
        message_id=message_id,
        date=date,
        text=text,
        html=html,
        headers=headers,
    )


def _raw_field(raw: bytes, name: str) -> str:
    """The unfolded value of header `name` as it is on the wire."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    match = re.search(rf"^{re.escape(name)}: ?(.*?)\r\n(?![ \t])", head + "\r\n", re.M | re.S)
    assert match is not None, name
    return match.group(1).replace("\r\n", "")


def _decode_encoded_words(words: str) -> str:
    """Adjacent encoded-words decoded as RFC 2047 6.2 says, dropping the white space between."""
    decoded = b""
    for word in words.split():
        match = ENCODED_WORD.fullmatch(word)
        assert match is not None, word
        octets = base64.b64decode(match.group(1))
        octets.decode("utf-8")  # each word holds whole characters (RFC 2047 5)
        decoded += octets
    return decoded.decode("utf-8")


def _mailbox(message: EmailMessage, raw: bytes, name: str) -> tuple[str, str] | None:
    """(display name, addr-spec) of header `name` as a reader sees them.

    A display name in encoded-words is decoded here as RFC 2047 says, and CPython's reading is
    checked against it allowing for two quirks: it reads a space or tab inside a word, with
    any Unicode white space after it (str.lstrip), as one space, as if it were folding white
    space (RFC 5322 3.2.2), and it keeps the white space between adjacent words
    (python/cpython#128110).
    """
    header = message[name]
    if header is None:
        return None
    (address,) = header.addresses
    # A non-ASCII local part arrives as surrogate escapes of its UTF-8 octets.
    addr_spec = address.addr_spec.encode("utf-8", "surrogateescape").decode("utf-8")
    raw_name = _raw_field(raw, name).rpartition(" <")[0]
    if not ENCODED_WORD.search(raw_name):
        return address.display_name, addr_spec
    words = [re.sub(r"[ \t]\s*", " ", _decode_encoded_words(word)) for word in raw_name.split()]
    between_words = " " if CPYTHON_SPLITS_DISPLAY_NAMES else ""
    assert address.display_name == between_words.join(words)
    return _decode_encoded_words(raw_name), addr_spec


def _semantics(raw: bytes, extra_names: Sequence[str] = ()) -> dict[str, Any]:
    """What a reader of `raw` sees, as read by email.message_from_bytes with policy.default."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/alternative"
    return {
        "From": _mailbox(message, raw, "From"),
        "Reply-To": _mailbox(message, raw, "Reply-To"),
        "To": _mailbox(message, raw, "To"),
        "Subject": str(message["Subject"]),
        "Date": _instant_and_offset(message["Date"].datetime),
        "Message-ID": str(message["Message-ID"]),
        "extra": [(name, [str(v) for v in message.get_all(name, [])]) for name in extra_names],
        "parts": [
            (part.get_content_type(), part.get_content_charset(), _lf(part.get_content()))
            for part in message.iter_parts()
        ],
    }


def _instant_and_offset(date: datetime) -> tuple[datetime, timedelta | None]:
    # Compared in UTC: PEP 495 makes a time in a DST fold unequal to any other zone's.
    offset = date.utcoffset()
    if offset is not None and offset % timedelta(minutes=1):
        offset = timedelta(0)  # written as UTC, see mailer.mime._rfc5322_date
    return date.astimezone(timezone.utc), offset


def _expected_mailbox(mailbox: Mailbox | None) -> tuple[str, str] | None:
    if mailbox is None:
        return None
    local_part, _, domain = mailbox.address.rpartition("@")
    return mailbox.display_name, f"{local_part}@{PUNYCODE.get(domain, domain)}"


def _verbatim(value: str) -> bool:
    """Whether an extra header value goes out as is: printable ASCII and tabs."""
    return value.isascii() and value.replace("\t", " ").isprintable()


def _expected_value(value: str) -> str:
    # Readers drop the white space after the colon of a verbatim value.
    return value.lstrip(" \t") if _verbatim(value) else value


def _intended(
    *,
    sender: Mailbox = SENDER,
    reply_to: Mailbox | None = REPLY_TO,
    layout_headers: Sequence[tuple[str, str]] = (),
    to: Mailbox = TO,
    subject: str = JA_SUBJECT,
    message_id: str = MESSAGE_ID,
    date: datetime = DATE,
    text: str = TEXT,
    html: str = HTML,
    headers: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    extra: dict[str, list[str]] = {}
    for name, value in [*headers, *layout_headers]:
        extra.setdefault(name, []).append(_expected_value(value))
    return {
        "From": _expected_mailbox(sender),
        "Reply-To": _expected_mailbox(reply_to),
        "To": _expected_mailbox(to),
        "Subject": subject,
        "Date": _instant_and_offset(date.replace(microsecond=0)),
        "Message-ID": message_id,
        "extra": list(extra.items()),
        "parts": [("text/plain", "utf-8", _lf(text)), ("text/html", "utf-8", _lf(html))],
    }


def _check_wire(raw: bytes) -> None:
    """CRLF everywhere, no line over 998 octets, and valid quoted-printable bodies."""
    assert raw.endswith(b"\r\n")
    lines = raw.split(b"\r\n")[:-1]
    for line in lines:
        assert b"\r" not in line and b"\n" not in line and b"\0" not in line
        assert len(line) <= mime.MAX_LINE
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["MIME-Version"] == "1.0"
    for part in message.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        payload = part.get_payload()
        assert isinstance(payload, str)
        for line in payload.encode("ascii").split(b"\r\n"):
            assert len(line) <= 76  # RFC 2045 6.7 rule 5
            assert QP_LINE.fullmatch(line), line
            assert not line.endswith((b" ", b"\t"))  # RFC 2045 6.7 rule 3


def _check(**fields: Any) -> bytes:
    """Assemble a message from `fields`, check its wire form and that it reads back as meant."""
    raw = _assemble(**fields)
    _check_wire(raw)
    headers = [*fields.get("headers", ()), *fields.get("layout_headers", ())]
    extra_names = list(dict.fromkeys(name for name, _ in headers))
    assert _semantics(raw, extra_names) == _intended(**fields)
    return raw


HOSTILE_BODIES = [
    "x" * 5000,
    "." + "x" * 200 + "\n.\n..\n. leading dot\n",
    "From the desk of Acme\nFrom: evil@example.com\n>From quoted\n",
    "trailing spaces   \ntrailing tab\t\n \n\t\nends with space ",
    "\r\n.\r\nMAIL FROM:<evil@example.com>\r\n",
    "Subject: injected\r\n\r\nContent-Type: text/html\n",
    "--=_ boundary look-alike\n--=_\n=_=_\n==\n=\n=3D\n",
    "NUL \0 and controls \x01\x07\x0b\x0c\x1b\x7f",
    "old Mac\rline\rbreaks\r\rand mixed\r\n\n",
    "日本語の本文です。ウェビナーのお知らせ🎉🚀" * 40,
    "",
    "\n\n\n",
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_bodies_are_carried_intact(body: str) -> None:
    """Long lines, dots, "From ", trailing white space, CR, NUL and look-alikes all read back."""
    _check(text=body, html=body)


@pytest.mark.parametrize(
    ("subject", "name"),
    [
        ("Your webinar recording", "Taro Yamada"),
        (JA_SUBJECT, "山田 太郎"),
        ("ウェビナー", JA_LONG_NAME),
        ("🎉 Spring sale — 50% off 🚀", "🎉 Party 🚀"),
        ("  leading and trailing  ", " spaced  out "),
        ("looks =?utf-8?b?ZXZpbA==?= encoded", "=?utf-8?b?ZXZpbA==?="),
        ("tabs\tand\x01controls\x7f", "tab\tname"),
        ("x" * 2000, "y" * 2000),
        ("word " * 400, "Smith, John \"JJ\" \\ Jr."),
        ("", "Ünïcödé 名前 with ASCII"),
    ],
)
def test_subjects_and_names_read_back_exactly(subject: str, name: str) -> None:
    """Subjects and display names, ASCII, Japanese, emoji, hostile or very long, read back."""
    _check(
        subject=subject,
        to=Mailbox("taro@example.jp", name),
        sender=Mailbox(SENDER.address, name),
    )


def test_japanese_subject_is_several_short_encoded_words() -> None:
    """A long Japanese subject becomes several UTF-8 "B" encoded-words of at most 75 characters."""
    raw = _check(subject=JA_SUBJECT)
    field = raw.split(b"\r\nDate:")[0].split(b"Subject: ")[1].decode("ascii")
    words = field.split()
    assert len(words) >= 3
    for word in words:
        assert ENCODED_WORD.fullmatch(word) and len(word) <= 75
    assert _decode_encoded_words(field) == JA_SUBJECT


def test_encoded_words_split_only_between_characters() -> None:
    """No encoded-word ends in the middle of a UTF-8 sequence, for characters of 1 to 4 octets."""
    for text in ["aé日🎉" * 30, "🎉" * 40, "é" * 80, "a" + "日" * 50]:
        words = mime._encoded_words(text, 60)
        for word in words:
            match = ENCODED_WORD.fullmatch(word)
            assert match is not None and len(word) <= 75
            base64.b64decode(match.group(1)).decode("utf-8")
        assert _decode_encoded_words(" ".join(words)) == text


def test_header_lines_fold_within_78_characters() -> None:
    """Encoded and long plain headers are folded into lines of at most 78 characters."""
    raw = _check(
        subject="A plain subject that goes on and on " * 5,
        to=Mailbox("taro@example.jp", JA_LONG_NAME * 2),
        headers=[("X-Note", "several words of note " * 10), ("X-Ja", "日本語のメモ" * 10)],
    )
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert len(line) <= 78, line
        assert line.strip(b" \t"), "a folded line holding only white space"


def test_parts_are_text_then_html_in_multipart_alternative() -> None:
    """The text part comes first and the HTML part last, the preferred one (RFC 2046 5.1.4)."""
    raw = _check()
    content_type = _raw_field(raw, "Content-Type")
    assert re.fullmatch(r'multipart/alternative; boundary="=_[0-9a-f]+"', content_type)
    assert raw.index(b'text/plain; charset="utf-8"') < raw.index(b'text/html; charset="utf-8"')


def test_a_body_holding_the_boundary_itself_cannot_end_its_part() -> None:
    """A body quoting the layout's own boundary line is encoded, so the message keeps two parts."""
    layout = MessageLayout(sender=SENDER)
    probe = layout.assemble(to=TO, subject="s", message_id=MESSAGE_ID, date=DATE, text="", html="")
    boundary = re.search(rb'boundary="([^"]+)"', probe)
    assert boundary is not None
    delimiter = f"--{boundary.group(1).decode()}"
    hostile = f"{delimiter}\r\nContent-Type: text/html\r\n\r\nevil\r\n{delimiter}--\r\n"
    raw = layout.assemble(
        to=TO, subject="s", message_id=MESSAGE_ID, date=DATE, text=hostile, html=hostile
    )
    _check_wire(raw)
    parts = _semantics(raw)["parts"]
    assert parts == [("text/plain", "utf-8", _lf(hostile)), ("text/html", "utf-8", _lf(hostile))]


def test_soft_line_breaks_are_crlf_and_long_lines_wrap() -> None:
    """A 5,000-character line wraps with "=" CRLF soft breaks into lines of at most 76."""
    raw = _check(text="x" * 5000, html="é" * 3000)
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert b"=\r\n" in body
    assert re.search(rb"=\n|[^\r]\n|\r[^\n]", body) is None


def test_quoted_printable_lines_match_the_whole_body_encoding() -> None:
    """Encoding line by line gives what b2a_qp gives for the whole body."""
    for body in HOSTILE_BODIES:
        lf = _lf(body)
        whole = binascii.b2a_qp(lf.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
        assert MessageLayout(sender=SENDER)._quoted_printable(body) == whole


@pytest.mark.parametrize(
    ("address", "wire"),
    [(f"taro@{domain}", f"taro@{punycode}") for domain, punycode in PUNYCODE.items()],
)
def test_unicode_domains_go_out_in_idna(address: str, wire: str) -> None:
    """A Unicode domain is written as IDNA punycode in headers and in wire_address."""
    raw = _check(to=Mailbox(address, "山田 太郎"), sender=Mailbox(f"news@{address.split('@')[1]}"))
    assert wire_address(address) == wire
    assert raw.isascii()


def test_non_ascii_local_part_is_raw_utf8_and_needs_smtputf8() -> None:
    """A UTF-8 local part stays raw UTF-8 (RFC 6532) and is reported as needing SMTPUTF8."""
    to = Mailbox("タロウ@例え.jp", "山田 太郎")
    raw = _check(to=to)
    assert "タロウ@xn--r8jz45g.jp".encode() in raw
    assert to.needs_smtputf8 and not TO.needs_smtputf8
    assert not MessageLayout(sender=SENDER, reply_to=REPLY_TO).needs_smtputf8
    assert MessageLayout(sender=Mailbox("ニュース@acme.example")).needs_smtputf8
    assert MessageLayout(sender=SENDER, reply_to=Mailbox("josé@acme.example")).needs_smtputf8
    assert _assemble().isascii()


def test_display_names_with_specials_are_quoted() -> None:
    """An ASCII name with specials is a quoted-string, its quotes and backslashes escaped."""
    raw = _check(to=Mailbox("j@example.com", 'Smith, John "JJ" \\ Jr.'))
    assert b'To: "Smith, John \\"JJ\\" \\\\ Jr." <j@example.com>\r\n' in raw
    raw = _check(to=Mailbox("j@example.com", "John Smith"))
    assert b"To: John Smith <j@example.com>\r\n" in raw


def test_empty_display_name_gives_a_bare_address() -> None:
    """A mailbox without a display name is written as its bare addr-spec."""
    raw = _check(to=Mailbox("j@example.com"), reply_to=None)
    assert b"To: j@example.com\r\n" in raw and b"Reply-To" not in raw


def test_extra_headers_of_layout_and_message_are_written() -> None:
    """Constant and per-message extra headers are both written, ASCII ones verbatim."""
    unsubscribe = "<https://acme.example/u/abc?x=1>, <mailto:u@acme.example?subject=unsubscribe>"
    raw = _check(
        layout_headers=[
            ("X-Campaign", "spring"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ],
        headers=[("List-Unsubscribe", unsubscribe), ("X-Lead-Note", "会社名: サンプル")],
    )
    assert _raw_field(raw, "List-Unsubscribe") == unsubscribe
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw


INJECTIONS = ["\r", "\n", "\r\n", "\0", "x\r\nBcc: evil@example.com", "x\nBcc: evil@example.com"]
Build = Callable[[str], object]
INJECTION_SITES: list[tuple[str, Build]] = [
    ("Subject", lambda bad: _assemble(subject=f"Hello{bad}")),
    ("To", lambda bad: _assemble(to=Mailbox("taro@example.jp", f"Taro{bad}"))),
    ("To", lambda bad: _assemble(to=Mailbox(f"taro{bad}@example.jp", "Taro"))),
    ("To", lambda bad: _assemble(to=Mailbox(f"taro@example.jp{bad}", "Taro"))),
    ("From", lambda bad: MessageLayout(sender=Mailbox(SENDER.address, f"Acme{bad}"))),
    ("From", lambda bad: MessageLayout(sender=Mailbox(f"news{bad}@acme.example"))),
    ("Reply-To", lambda bad: MessageLayout(sender=SENDER, reply_to=Mailbox("r@a.jp", f"R{bad}"))),
    ("X-Step", lambda bad: MessageLayout(sender=SENDER, headers=[("X-Step", f"one{bad}")])),
    ("X-Lead", lambda bad: _assemble(headers=[("X-Lead", f"7{bad}")])),
    ("X-Lead", lambda bad: _assemble(headers=[("X-Lead", f"日本{bad}")])),
    ("Message-ID", lambda bad: _assemble(message_id=f"<a@b.example>{bad}")),
    ("Message-ID", lambda bad: make_message_id(f"acme.example{bad}")),
]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize(("header", "build"), INJECTION_SITES)
def test_cr_lf_or_nul_in_any_header_value_is_refused(header: str, build: Build, bad: str) -> None:
    """CR, LF or NUL in a subject, name, address or header value raises HeaderInjectionError."""
    with pytest.raises(HeaderInjectionError) as caught:
        build(bad)
    assert caught.value.header == header
    assert bad in caught.value.value


@pytest.mark.parametrize("bad", INJECTIONS)
def test_cr_lf_or_nul_in_a_header_name_is_refused(bad: str) -> None:
    """A header name carrying CR, LF or NUL raises HeaderInjectionError too."""
    with pytest.raises(HeaderInjectionError):
        _assemble(headers=[(f"X-Lead{bad}", "7")])


@pytest.mark.parametrize(
    "name", ["", "X Lead", "X-Lead:", "X-Lëad", "X" * 77, "Subject", "content-type", "FROM"]
)
def test_names_that_are_not_free_field_names_are_refused(name: str) -> None:
    """A header name that is not a field name, or one the layout writes, raises ValueError."""
    with pytest.raises(ValueError):
        _assemble(headers=[(name, "7")])
    with pytest.raises(ValueError):
        MessageLayout(sender=SENDER, headers=[(name, "7")])


@pytest.mark.parametrize(
    "address",
    ["taro", "taro@", "@example.jp", "ta ro@example.jp", "taro@example.jp>, evil@example.com",
     "<taro@example.jp>", "ta..ro@example.jp", "taro@exa mple.jp", "x" * 250 + "@example.jp"],
)
def test_malformed_addresses_are_refused(address: str) -> None:
    """An address that is not a dot-atom addr-spec of at most 254 octets raises ValueError."""
    with pytest.raises(ValueError):
        _assemble(to=Mailbox(address, "Taro"))


@pytest.mark.parametrize(
    "message_id", ["", "a@b", "<a>", "<a b@c>", "<a@b@c>", "<a@b>x", "<日本@b>"]
)
def test_malformed_message_ids_are_refused(message_id: str) -> None:
    """A Message-ID that is not <id-left@id-right> raises ValueError."""
    with pytest.raises(ValueError):
        _assemble(message_id=message_id)


def test_message_ids_are_unique_and_well_formed() -> None:
    """make_message_id gives distinct <time.random@domain> IDs, the domain in IDNA."""
    ids = {make_message_id("acme.example") for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"<[0-9a-f]+\.[0-9a-f]{16}@acme\.example>", i) for i in ids)
    assert make_message_id("例え.jp").endswith("@xn--r8jz45g.jp>")
    _check(message_id=make_message_id("acme.example"))


def test_naive_dates_are_refused() -> None:
    """A date without a time zone raises ValueError rather than guess one."""
    with pytest.raises(ValueError):
        _assemble(date=datetime(2024, 5, 1, 9, 30))


@pytest.mark.parametrize(
    ("date", "written"),
    [
        (DATE, "Wed, 01 May 2024 09:30:15 +0900"),
        (
            datetime(2024, 1, 7, 23, 0, tzinfo=timezone(-timedelta(hours=3, minutes=30))),
            "Sun, 07 Jan 2024 23:00:00 -0330",
        ),
        (
            datetime(2024, 1, 1, 0, 0, tzinfo=timezone(timedelta(seconds=555))),
            "Sun, 31 Dec 2023 23:50:45 +0000",
        ),
    ],
)
def test_dates_are_rfc5322(date: datetime, written: str) -> None:
    """Dates are RFC 5322 3.3 date-times; a zone with seconds goes out as UTC."""
    raw = _check(date=date)
    assert _raw_field(raw, "Date") == written


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"subject": "Your webinar recording", "to": Mailbox("john@example.com", "John Smith")},
        {"subject": "🎉 Spring sale — 50% off", "to": Mailbox("j@example.com", 'Smith, John "JJ"')},
        {"text": HOSTILE_BODIES[0], "html": HOSTILE_BODIES[9], "reply_to": None},
        {"headers": [("List-Unsubscribe", "<https://acme.example/u/abc>"), ("X-Note", "メモ")]},
    ],
)
def test_reads_back_like_the_stdlib_reference(fields: dict[str, Any]) -> None:
    """The fast assembler and the EmailMessage reference give messages that read back the same."""
    arguments: dict[str, Any] = {
        "sender": SENDER,
        "reply_to": REPLY_TO,
        "to": TO,
        "subject": JA_SUBJECT,
        "message_id": MESSAGE_ID,
        "date": DATE,
        "text": TEXT,
        "html": HTML,
        "headers": (),
    } | fields
    names = [name for name, _ in arguments["headers"]]
    ours = _assemble(**arguments)
    reference = reference_assemble(**arguments)
    expected = _semantics(reference, names)
    ours_read = _semantics(ours, names)
    # EmailMessage.set_content ends every body with a line break; the layout keeps it as given.
    ours_read["parts"] = [
        (kind, charset, content if content.endswith("\n") else content + "\n")
        for kind, charset, content in ours_read["parts"]
    ]
    assert ours_read == expected


def test_line_cache_never_changes_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout reused for many messages, its caches emptied as they fill, writes each right."""
    monkeypatch.setattr(mime, "_QP_CACHE_CHARS", 50)
    monkeypatch.setattr(mime, "_SUBJECT_CACHE_SIZE", 3)
    layout = MessageLayout(sender=SENDER, reply_to=REPLY_TO)
    first = None
    for i in range(40):
        subject = f"Hello {i % 5}"
        text = f"Hi lead {i},\n{TEXT}" + "é" * i
        html = f"<p>lead {i}</p>\n{HTML}"
        raw = layout.assemble(
            to=TO, subject=subject, message_id=MESSAGE_ID, date=DATE, text=text, html=html
        )
        if i == 0:
            first = raw
        _check_wire(raw)
        assert _semantics(raw) == _intended(subject=subject, text=text, html=html)
    again = layout.assemble(
        to=TO,
        subject="Hello 0",
        message_id=MESSAGE_ID,
        date=DATE,
        text=f"Hi lead 0,\n{TEXT}",
        html=f"<p>lead 0</p>\n{HTML}",
    )
    assert again == first


# Header text: anything but CR, LF and NUL, which are refused (tested above).
HEADER_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"))
# Bodies: anything at all. CRLF, CR and LF all end a line and are compared after mapping to LF.
BODY_TEXT = st.text(st.characters(codec="utf-8"))
ADDRESSES = st.one_of(
    st.emails().filter(lambda address: len(address) <= 254),
    st.builds(
        "{}@{}".format,
        st.sampled_from(["taro", "タロウ", "josé", "a.b+tag"]),
        st.sampled_from([*PUNYCODE, "example.jp"]),
    ),
)
MAILBOXES = st.builds(Mailbox, address=ADDRESSES, display_name=HEADER_TEXT)
EXTRA_HEADERS = st.lists(
    st.tuples(st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True), HEADER_TEXT),
    max_size=3,
    unique_by=lambda header: header[0].lower(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sender=MAILBOXES,
    reply_to=st.none() | MAILBOXES,
    to=MAILBOXES,
    subject=HEADER_TEXT,
    date=st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    ),
    text=BODY_TEXT,
    html=BODY_TEXT,
    headers=EXTRA_HEADERS,
)
def test_any_message_reads_back_as_meant(
    sender: Mailbox,
    reply_to: Mailbox | None,
    to: Mailbox,
    subject: str,
    date: datetime,
    text: str,
    html: str,
    headers: list[tuple[str, str]],
) -> None:
    """Random subjects, names, addresses, dates, bodies and extra headers all read back exactly."""
    # A verbatim extra value that looks like an encoded-word is decoded by readers.
    assume(not any(_verbatim(value) and "=?" in value for _, value in headers))
    _check(
        sender=sender,
        reply_to=reply_to,
        to=to,
        subject=subject,
        date=date,
        text=text,
        html=html,
        headers=headers,
    )
