"""parse_bounce on real bounces of each format, and on anything else without raising."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.dsn import parse_bounce
from mailer.reasons import BounceClass, Reason

CORPUS = Path("/work/shared/corpora/bounces/public")


def _load(name: str) -> bytes:
    path = CORPUS / name
    if not path.exists():
        pytest.skip("bounce corpus not present")
    return path.read_bytes()


def _expected(name: str) -> list[dict[str, str]]:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    return next(entry["expected"] for entry in manifest["files"] if entry["file"] == name)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("lhost-postfix-13.eml", "rfc3464"),
        ("lhost-sendmail-31.eml", "rfc3464"),
        ("lhost-exim-01.eml", "text"),
        ("lhost-dragonfly-05.eml", "text"),
        ("rhost-outlook-01.eml", "rfc3464"),
        ("lhost-amazonses-12.eml", "amazonses-json"),
    ],
)
def test_corpus_bounce_matches_sisimai(name: str, fmt: str) -> None:
    """A real bounce of each format yields Sisimai's recipients, reasons and classes in order."""
    report = parse_bounce(_load(name))
    assert report.format == fmt
    expected = _expected(name)
    assert len(report.recipients) >= len(expected)
    for got, want in zip(report.recipients, expected):
        assert (got.reason.value, got.bounce_class.value) == (want["reason"], want["bounce_class"])


def test_rfc3464_fields_are_read_per_recipient() -> None:
    """Status, reply code and the original's Message-ID come out of a Postfix DSN."""
    report = parse_bounce(_load("lhost-postfix-13.eml"))
    assert report.kind == "bounce"
    assert [r.status for r in report.recipients] == [w["status"] for w in _expected("lhost-postfix-13.eml")]
    assert report.recipients[0].reply_code == 550
    assert report.original_message_id is not None


def test_arf_is_feedback() -> None:
    """An RFC 5965 abuse report is "feedback" with its Feedback-Type, one row per Original-Rcpt-To."""
    report = parse_bounce(_load("arf-17.eml"))
    assert report.kind == "feedback"
    assert report.feedback_type == "abuse"
    assert [r.reason for r in report.recipients] == [Reason.FEEDBACK, Reason.FEEDBACK]
    assert all(r.bounce_class is BounceClass.NONE for r in report.recipients)


def test_auto_reply_is_vacation_not_bounce() -> None:
    """An RFC 3834 out-of-office reply is "vacation" and condemns nobody."""
    report = parse_bounce(_load("rfc3834-01.eml"))
    assert report.kind == "vacation"
    assert report.recipients[0].bounce_class is BounceClass.NONE


def test_ordinary_mail_is_not_a_bounce() -> None:
    """A plain personal email is "not-bounce" with no recipients."""
    report = parse_bounce(_load("is-not-bounce-01.eml"))
    assert (report.kind, report.recipients) == ("not-bounce", ())


def test_crlf_line_endings_parse_the_same() -> None:
    """The same bounce with CRLF line endings gives the same verdicts."""
    raw = _load("lhost-postfix-13.eml")
    lf = parse_bounce(raw)
    crlf = parse_bounce(raw.replace(b"\n", b"\r\n"))
    assert [(r.address, r.reason) for r in crlf.recipients] == [(r.address, r.reason) for r in lf.recipients]


def test_garbage_is_not_a_bounce() -> None:
    """Bytes that are no email at all are "not-bounce"."""
    assert parse_bounce(b"\x00\xff\xfe garbage").kind == "not-bounce"


@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    """parse_bounce returns a report for any bytes at all."""
    assert parse_bounce(raw).kind in {"bounce", "feedback", "vacation", "delivered", "not-bounce"}


_SEEDS = ["lhost-postfix-13.eml", "lhost-exim-01.eml", "arf-17.eml", "lhost-amazonses-12.eml", "rfc3834-01.eml"]


@given(
    name=st.sampled_from(_SEEDS),
    cuts=st.lists(st.tuples(st.integers(min_value=0, max_value=20000), st.binary(max_size=40)), max_size=8),
)
def test_mutated_corpus_bounces_never_raise(name: str, cuts: list[tuple[int, bytes]]) -> None:
    """Real bounces with random bytes spliced in still parse without raising."""
    raw = bytearray(_load(name))
    for at, junk in cuts:
        at %= max(len(raw), 1)
        raw[at : at + len(junk)] = junk
    assert parse_bounce(bytes(raw)).kind in {"bounce", "feedback", "vacation", "delivered", "not-bounce"}


def test_imail_unknown_user_is_hard() -> None:
    """An iMail Server "Unknown user:" line condemns the address, whatever command it answered."""
    raw = (
        b"From: Postmaster <postmaster@example.org>\nTo: <a@example.org>\nSubject: Undeliverable Mail\n"
        b"X-Mailer: <SMTP32 v8.22>\n\nUnknown user: b@example.net\n\nOriginal message follows.\n\nTo: b@example.net\n"
    )
    report = parse_bounce(raw)
    assert [(r.address, r.reason, r.bounce_class) for r in report.recipients] == [
        ("b@example.net", Reason.USERUNKNOWN, BounceClass.HARD)
    ]


def test_dsn_groups_without_blank_line_are_two_recipients() -> None:
    """A second Final-Recipient starts a new per-recipient group even without the blank line."""
    raw = (
        b"From: MAILER-DAEMON@example.org\nTo: a@example.org\nSubject: Undeliverable\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nfailed\n"
        b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
        b"Final-Recipient: rfc822; x@example.net\nAction: failed\nStatus: 5.2.2\nDiagnostic-Code: smtp; 552 5.2.2 Mailbox full\n"
        b"Final-Recipient: rfc822; y@example.net\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\n"
        b"--b--\n"
    )
    report = parse_bounce(raw)
    assert [(r.address, r.reason) for r in report.recipients] == [
        ("x@example.net", Reason.MAILBOXFULL), ("y@example.net", Reason.USERUNKNOWN)
    ]


def test_boundary_folded_without_indent_is_repaired() -> None:
    """A nested multipart whose boundary parameter fell into its body still yields its text."""
    raw = (
        b"From: post_master@vtext.com\nTo: a@example.org\nSubject: Re: hi\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="outer"\n\n'
        b'--outer\nContent-Type: multipart/alternative;\nboundary="inner"\n\n'
        b"--inner\nContent-Type: text/plain\n\nError: Invalid user address\nError message below:\n"
        b"550 - Requested action not taken: no such user here\nMessage details:\n  RCPT TO: b@vtext.com\n--inner--\n--outer--\n"
    )
    report = parse_bounce(raw)
    assert [(r.address, r.reason) for r in report.recipients] == [("b@vtext.com", Reason.USERUNKNOWN)]
