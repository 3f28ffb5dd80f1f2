"""Tests for mailer.reply: SMTP replies as values, and what they mean for a message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.reply import SMTPReply, Verdict


def test_enhanced_code_is_lifted_out_of_the_text() -> None:
    """A 550 reply starting "5.1.1" carries enhanced code 5.1.1 and the text after it."""
    reply = SMTPReply.parse(550, "5.1.1 <a@x.example>: Recipient address rejected", command="RCPT", host="mx")
    assert reply.code == 550
    assert reply.enhanced == "5.1.1"
    assert reply.text == "<a@x.example>: Recipient address rejected"
    assert (reply.command, reply.host) == ("RCPT", "mx")


@pytest.mark.parametrize(
    ("code", "text", "enhanced"),
    [
        (250, "2.0.0 Ok: queued as 4F2", "2.0.0"),
        (451, "4.7.1 Greylisted, try again", "4.7.1"),
        (421, "4.7.650 The mail server has been temporarily rate limited", "4.7.650"),
        (554, "5.7.1", "5.7.1"),
    ],
)
def test_enhanced_code_of_the_same_class_is_recognised(code: int, text: str, enhanced: str) -> None:
    """Enhanced codes with one- to three-digit parts are lifted when their class matches."""
    assert SMTPReply.parse(code, text).enhanced == enhanced


def test_enhanced_code_of_another_class_stays_in_the_text() -> None:
    """A 450 whose text starts "5.1.1" is not given a permanent enhanced code (RFC 3463 3.1)."""
    reply = SMTPReply.parse(450, "5.1.1 Mailbox busy")
    assert reply.enhanced is None
    assert reply.text == "5.1.1 Mailbox busy"


@pytest.mark.parametrize("text", ["5.1 Bad", "5.1.1234 Bad", "5.1.1x Bad", "x 5.1.1 Bad", "5.a.1 Bad", "3.1.1 Bad"])
def test_malformed_enhanced_codes_are_not_lifted(text: str) -> None:
    """Only a well-formed class.subject.detail at the very start counts as an enhanced code."""
    reply = SMTPReply.parse(550, text)
    assert reply.enhanced is None
    assert reply.text == text


def test_no_reply_has_no_enhanced_code() -> None:
    """A connection that failed before any reply has code None and keeps its text whole."""
    reply = SMTPReply.parse(None, "4.4.1 Connection timed out")
    assert reply.code is None and reply.enhanced is None
    assert reply.text == "4.4.1 Connection timed out"


def test_multi_line_text_is_joined_into_one_line() -> None:
    """Lines of a multi-line reply are joined with single spaces."""
    reply = SMTPReply.parse(250, "mx.example greets you\nSIZE 35882577\n  8BITMIME  ")
    assert reply.text == "mx.example greets you SIZE 35882577 8BITMIME"


def test_enhanced_code_repeated_on_every_line_is_kept_once() -> None:
    """Gmail repeats "5.1.1" on each line of a multi-line 550; the joined text has it only once, lifted."""
    text = (
        "5.1.1 The email account that you tried to reach does not exist. Please try\n"
        "5.1.1 double-checking the recipient's email address for typos or\n"
        "5.1.1  unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
    )
    reply = SMTPReply.parse(550, text)
    assert reply.enhanced == "5.1.1"
    assert reply.text == (
        "The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or "
        "unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
    )


def test_enhanced_code_after_leading_whitespace_is_lifted() -> None:
    """Whitespace before the enhanced code does not hide it."""
    assert SMTPReply.parse(550, "\n  5.1.1 No such user").enhanced == "5.1.1"


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (250, Verdict.ACCEPTED),
        (251, Verdict.ACCEPTED),
        (421, Verdict.TEMPORARY),
        (450, Verdict.TEMPORARY),
        (452, Verdict.TEMPORARY),
        (None, Verdict.TEMPORARY),
        (500, Verdict.PERMANENT),
        (550, Verdict.PERMANENT),
        (554, Verdict.PERMANENT),
    ],
)
def test_verdict_follows_the_basic_code_class(code: int | None, verdict: Verdict) -> None:
    """2xx is accepted, 4xx or no reply is temporary, 5xx is permanent."""
    assert SMTPReply.parse(code, "text").verdict is verdict


def test_str_shows_code_enhanced_code_and_text() -> None:
    """A reply prints as it was on the wire, and says "no reply:" when there was none."""
    assert str(SMTPReply.parse(550, "5.1.1 No such user")) == "550 5.1.1 No such user"
    assert str(SMTPReply.parse(421, "Try later")) == "421 Try later"
    assert str(SMTPReply.parse(None, "timed out")) == "no reply: timed out"


@given(code=st.one_of(st.none(), st.integers(min_value=200, max_value=599)), text=st.text())
def test_parse_accepts_any_text(code: int | None, text: str) -> None:
    """Any reply text parses to one line; a lifted enhanced code always matches the reply's class."""
    reply = SMTPReply.parse(code, text)
    assert "\n" not in reply.text and "\r" not in reply.text
    assert reply.text == reply.text.strip()
    if reply.enhanced is not None:
        assert code is not None and reply.enhanced[0] == str(code)[0]


@given(
    code=st.sampled_from([250, 421, 451, 550, 554]),
    subject=st.integers(min_value=0, max_value=999),
    detail=st.integers(min_value=0, max_value=999),
    words=st.text(alphabet="abcdefghij <>@.:", min_size=1).map(str.strip).filter(bool),
)
def test_well_formed_enhanced_code_round_trips(code: int, subject: int, detail: int, words: str) -> None:
    """Any class-matching enhanced code is lifted exactly, leaving the rest of the text."""
    enhanced = f"{str(code)[0]}.{subject}.{detail}"
    reply = SMTPReply.parse(code, f"{enhanced} {words}")
    assert reply.enhanced == enhanced
    assert reply.text == " ".join(words.split())


def test_a_different_code_on_a_later_line_is_kept() -> None:
    """Only a repeat of the lifted code is dropped from later lines, not a longer or different one."""
    reply = SMTPReply.parse(550, "5.1.1 First line\n5.1.10 second\n5.7.1 third")
    assert reply.text == "First line 5.1.10 second 5.7.1 third"
