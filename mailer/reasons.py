"""Why a message bounced: Sisimai's reason vocabulary and its hard/soft rule.

The vocabulary is Sisimai 5.x's (go-sisimai ed142ded ``reason/lib.go``), so our verdicts can be
measured against its public corpus; ``hard`` means the address itself is bad and may be
suppressed, ``soft`` that a later attempt (or the sender fixing something) may succeed.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Reason(StrEnum):
    """One bounce reason; the values are Sisimai's lower-case reason names."""

    AUTHFAILURE = "authfailure"  # SPF, DKIM or DMARC failed
    BADREPUTATION = "badreputation"  # the sending IP address has a poor reputation
    BLOCKED = "blocked"  # the client IP address or host name is refused
    CONTENTERROR = "contenterror"  # a header or the MIME structure is malformed
    DELIVERED = "delivered"  # a positive DSN (RFC 3464 Action: delivered)
    EXCEEDLIMIT = "exceedlimit"  # the message exceeds the mailbox's size limit
    EXPIRED = "expired"  # the queue gave up after retrying
    FAILEDSTARTTLS = "failedstarttls"  # STARTTLS could not be negotiated
    FEEDBACK = "feedback"  # an RFC 5965 complaint report, not a bounce
    FILTERED = "filtered"  # the recipient's filters refused the message
    HASMOVED = "hasmoved"  # the mailbox moved and is not forwarded
    HOSTUNKNOWN = "hostunknown"  # the recipient's domain does not exist
    MAILBOXFULL = "mailboxfull"  # over quota
    MAILERERROR = "mailererror"  # a local delivery program failed
    MESGTOOBIG = "mesgtoobig"  # larger than the system accepts
    NETWORKERROR = "networkerror"  # DNS or routing trouble
    NORELAYING = "norelaying"  # relaying denied
    NOTACCEPT = "notaccept"  # the host accepts no mail at all (null MX, RFC 7505)
    NOTCOMPLIANTRFC = "notcompliantrfc"  # the message breaks RFC 5322
    ONHOLD = "onhold"  # there is an error text, but too little to decide
    POLICYVIOLATION = "policyviolation"  # the receiver's local policy refused it
    REJECTED = "rejected"  # the envelope sender was refused
    REQUIREPTR = "requireptr"  # the sending IP has no (matching) PTR record
    SECURITYERROR = "securityerror"  # a security or authentication requirement failed
    SPAMDETECTED = "spamdetected"  # a spam filter refused the content
    SPEEDING = "speeding"  # sending too fast (rate limit)
    SUPPRESSED = "suppressed"  # the sending service's own suppression list
    SUSPEND = "suspend"  # the recipient's account is suspended or disabled
    SYNTAXERROR = "syntaxerror"  # an SMTP command was malformed
    SYSTEMERROR = "systemerror"  # the remote system failed
    SYSTEMFULL = "systemfull"  # the remote system's disk is full
    TOOMANYCONN = "toomanyconn"  # too many connections or recipients
    UNDEFINED = "undefined"  # nothing to go on
    USERUNKNOWN = "userunknown"  # the local part does not exist
    VACATION = "vacation"  # an RFC 3834 auto-reply, not a bounce
    VIRUSDETECTED = "virusdetected"  # a virus scanner refused the content


class BounceClass(StrEnum):
    """Whether a bounce condemns the address (hard), may pass (soft) or is no bounce (none)."""

    HARD = "hard"
    SOFT = "soft"
    NONE = "none"


# Sisimai 5.2 SMTP::Failure.is_hardbounce: these three say the address itself does not exist,
# and stay hard even when a server (wrongly) used a 4xx code for them.
ALWAYS_HARD = frozenset({Reason.USERUNKNOWN, Reason.HOSTUNKNOWN, Reason.HASMOVED})

# Not bounces at all: a delivery report, a complaint, an out-of-office reply.
NOT_BOUNCES = frozenset({Reason.DELIVERED, Reason.FEEDBACK, Reason.VACATION})

# The sender's (our) fault: an IP, a DNS record, an authentication setup or the sending pace.
# Such a bounce says nothing about the recipient, so it must never suppress the lead.
SENDER_PROBLEMS = frozenset(
    {
        Reason.BLOCKED,
        Reason.BADREPUTATION,
        Reason.REQUIREPTR,
        Reason.POLICYVIOLATION,
        Reason.AUTHFAILURE,
        Reason.SPAMDETECTED,
        Reason.TOOMANYCONN,
        Reason.SPEEDING,
        Reason.SECURITYERROR,
    }
)

# A syntax or command-sequence error (RFC 5321 4.2.2: 500-504) after the recipient was taken,
# at DATA or the final dot, is the SMTP conversation going wrong, ours or a broken server's
# (a relay answering 500 to the data because its own mail store failed): nothing about the
# recipient. The same reason at RCPT (504 5.5.2 "need fully-qualified address") or in a DSN
# may well be about the address, so only the send path, which knows the command, exempts it
# (mailer.daemon): retried and alerted, never suppressing nor counted toward escalation.
PROTOCOL_PROBLEMS = frozenset({Reason.SYNTAXERROR})


def about_the_session(reason: Reason, command: str | None) -> bool:
    """Whether a refusal at `command` says nothing about the recipient: the sender's problem,
    or a protocol error once the recipient was accepted."""
    return reason in SENDER_PROBLEMS or (reason in PROTOCOL_PROBLEMS and command in ("DATA", "DOT"))


# Sisimai 5.2 SMTP::Failure.is_softbounce: a null-MX style refusal is temporary only when it
# says so, in its code or in its text.
_TEMPORARY_TEXT = re.compile(r"temporar|persistent", re.IGNORECASE)


def bounce_class(reason: Reason, *, status: str | None, reply_code: int | None, text: str) -> BounceClass:
    """Sisimai's hard/soft rule (p5-sisimai 21cfb932 lib/Sisimai/SMTP/Failure.pm, v5.2.0)."""
    if reason in NOT_BOUNCES:
        return BounceClass.NONE
    if reason in ALWAYS_HARD:
        return BounceClass.HARD
    if reason is Reason.NOTACCEPT:
        temporary = (status or "").startswith("4") or str(reply_code or "").startswith("4")
        if temporary or _TEMPORARY_TEXT.search(text):
            return BounceClass.SOFT
        return BounceClass.HARD
    return BounceClass.SOFT
