"""classify_reply on replies the big providers and common filters really send."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.classify import classify_reply
from mailer.reasons import SENDER_PROBLEMS, BounceClass, Reason
from mailer.reply import SMTPReply

CASES = [
    # (code, text as sent, command, expected reason, expected class)
    (550, "5.1.1 The email account that you tried to reach does not exist. Please try double-checking "
          "the recipient's email address for typos or unnecessary spaces.", "RCPT", Reason.USERUNKNOWN, BounceClass.HARD),
    (550, "5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service "
          "provider since part of their network is on our block list (S3150).", "RCPT", Reason.BLOCKED, BounceClass.SOFT),
    (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
          "complaints - 4.16.55.1", "MAIL", Reason.BADREPUTATION, BounceClass.SOFT),
    (554, "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "RCPT",
     Reason.BLOCKED, BounceClass.SOFT),
    (452, "4.2.2 The email account that you tried to reach is over quota.", "RCPT", Reason.MAILBOXFULL, BounceClass.SOFT),
    (552, "5.2.2 <a@example.org>: Recipient address rejected: Mailbox full", "RCPT", Reason.MAILBOXFULL, BounceClass.SOFT),
    (451, "4.7.1 <a@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/",
     "RCPT", Reason.BLOCKED, BounceClass.SOFT),
    (550, "5.7.26 This message does not pass authentication checks (SPF and DKIM both do not pass).", "DATA",
     Reason.AUTHFAILURE, BounceClass.SOFT),
    (550, "5.7.25 The IP address sending this message does not have a PTR record setup", "RCPT",
     Reason.REQUIREPTR, BounceClass.SOFT),
    (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281) "
          "[AM0EUR02FT013.eop-EUR02.prod.protection.outlook.com]", "RCPT", Reason.USERUNKNOWN, BounceClass.HARD),
    (550, "Unknown user", "DATA", Reason.FILTERED, BounceClass.SOFT),
    (550, "5.1.1 <a@ezweb.ne.jp>: User unknown", "RCPT", Reason.USERUNKNOWN, BounceClass.HARD),
    (550, "too much mail data", "DATA", Reason.MAILBOXFULL, BounceClass.SOFT),
    (552, "5.3.4 Error: message file too big", "DATA", Reason.MESGTOOBIG, BounceClass.SOFT),
    (554, "5.7.1 Message rejected as spam by Content Filtering.", "DATA", Reason.SPAMDETECTED, BounceClass.SOFT),
    (550, "5.1.8 <bounce@example.com>: Sender address rejected: Domain not found", "MAIL", Reason.REJECTED,
     BounceClass.SOFT),
]


@pytest.mark.parametrize(("code", "text", "command", "reason", "klass"), CASES)
def test_realistic_replies(code: int, text: str, command: str, reason: Reason, klass: BounceClass) -> None:
    """A real provider reply, parsed by SMTPReply.parse, gets the expected reason and class."""
    reply = SMTPReply.parse(code, text, command=command)
    got = classify_reply(code=reply.code, enhanced=reply.enhanced, text=reply.text, command=reply.command)
    assert (got.reason, got.bounce_class) == (reason, klass), got.rule


def test_policy_554_571_is_a_policy_refusal_not_a_user() -> None:
    """A 554 5.7.1 policy refusal is blamed on policy, and never suppresses the recipient."""
    got = classify_reply(code=554, enhanced="5.7.1", text="Message rejected for policy reasons", command="DATA")
    assert got.reason in SENDER_PROBLEMS
    assert got.bounce_class is BounceClass.SOFT


@pytest.mark.parametrize(
    "text",
    [
        "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1",
        "Mail from IP 192.0.2.1 refused due to poor reputation, user unknown to us",
        "Your IP 192.0.2.1 is blacklisted; no such user checks were made",
        "JunkMail rejected - s3150 [192.0.2.1] is in an RBL",
    ],
)
def test_ip_reputation_block_is_never_userunknown(text: str) -> None:
    """A 5.7.1 IP-reputation block is "blocked"/"badreputation" even when it mentions users."""
    got = classify_reply(code=550, enhanced="5.7.1", text=text, command="RCPT")
    assert got.reason in (Reason.BLOCKED, Reason.BADREPUTATION)
    assert got.bounce_class is BounceClass.SOFT


def test_a_2xx_is_delivered() -> None:
    """A 250 reply means the message was delivered, not bounced."""
    got = classify_reply(code=250, enhanced="2.0.0", text="OK queued as 12345")
    assert (got.reason, got.bounce_class) == (Reason.DELIVERED, BounceClass.NONE)


def test_unknown_text_with_a_code_is_on_hold() -> None:
    """A reply with text but no recognisable cause is "onhold", and soft."""
    got = classify_reply(code=None, enhanced=None, text="something odd happened")
    assert (got.reason, got.bounce_class) == (Reason.ONHOLD, BounceClass.SOFT)


def test_the_rule_is_kept_as_evidence() -> None:
    """The id of the rule that decided is returned with the reason."""
    got = classify_reply(code=550, enhanced="5.1.1", text="The email account that you tried to reach does not exist")
    assert got.rule == "gmail.user-unknown"


@given(
    code=st.one_of(st.none(), st.integers(min_value=200, max_value=599)),
    enhanced=st.one_of(st.none(), st.from_regex(r"\A[245]\.\d{1,3}\.\d{1,3}\Z")),
    text=st.text(max_size=300),
    command=st.sampled_from(["", "CONNECT", "EHLO", "MAIL", "RCPT", "DATA"]),
)
def test_any_reply_classifies(code: int | None, enhanced: str | None, text: str, command: str) -> None:
    """Any reply at all gets a reason and a class consistent with the hard/soft rule."""
    got = classify_reply(code=code, enhanced=enhanced, text=text, command=command)
    assert isinstance(got.reason, Reason)
    if got.reason in SENDER_PROBLEMS:
        assert got.bounce_class is BounceClass.SOFT


def test_user_unknown_without_a_command_is_a_filter() -> None:
    """A "user unknown" with no RCPT in sight is read as a filter after DATA (Sisimai ReFILT)."""
    verdict = classify_reply(code=550, enhanced=None, text="550 kijitora@example.com... No such user", command="")
    assert verdict.reason is Reason.FILTERED


def test_user_unknown_at_rcpt_is_hard() -> None:
    """The same words answering RCPT condemn the address."""
    verdict = classify_reply(code=550, enhanced="5.2.1", text="<a@example.jp>... User Unknown", command="RCPT")
    assert verdict.reason is Reason.USERUNKNOWN


def test_orange_label_decides() -> None:
    """An Orange/La Poste error label (LPN007_426) is read from its code table."""
    verdict = classify_reply(code=550, enhanced="5.5.0", text="550 5.5.0 The recipient account is blocked. LPN007_426", command="RCPT")
    assert verdict.reason is Reason.SUSPEND


def test_null_mx_is_notaccept() -> None:
    """An RFC 7505 null MX is notaccept, not a DNS network error."""
    verdict = classify_reply(code=None, enhanced="5.1.10", text="DNS Error: the domain returned Null MX", command="")
    assert verdict.reason is Reason.NOTACCEPT


def test_ip_blocklist_never_user_unknown() -> None:
    """A 5.7.1 block-list refusal mentioning the user is still a sender problem."""
    verdict = classify_reply(code=550, enhanced="5.7.1", text="550 5.7.1 user unknown; client ip blocked using spamhaus", command="RCPT")
    assert verdict.reason in SENDER_PROBLEMS
