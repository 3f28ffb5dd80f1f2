"""Bounce formats of particular MTAs and gateways that write no (or too little) RFC 3464.

Each format is recognised by its headers and carries the message table its vendor uses: a
fixed sentence in the explanation decides the reason, as the MTA's own wording is narrower
than any generic phrase list (iMail's "Unknown user:" is a mailbox that does not exist,
whatever command it answered). Some formats also say where their error text stands, when it
is not next to the recipient's address.

The formats and their sentences follow Sisimai's lhost decoders (``lhost/via-*.go`` in
sisimai/go-sisimai, BSD 2-Clause, © azumakuniyuki and the sisimai development team); the
code and the tables' shape are ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

from mailer.mta.parts import header
from mailer.reasons import Reason

R = Reason

Sign = tuple[tuple[str, re.Pattern[str]], ...]


@dataclass(frozen=True)
class MTAFormat:
    """One MTA's bounce layout: how to recognise it and what its sentences mean."""

    name: str
    # any one group recognises the format when every (header, pattern) in it matches
    signs: tuple[Sign, ...]
    # sentences of the explanation (lower-case patterns) and the reason each one gives
    messages: tuple[tuple[Reason, re.Pattern[str]], ...] = ()
    # header values that decide the reason on their own
    header_reasons: tuple[tuple[str, re.Pattern[str], Reason], ...] = ()
    # where the error text stands in the explanation (group 1), when not next to the address
    error: re.Pattern[str] | None = field(default=None)


def _signs(*groups: dict[str, str]) -> tuple[Sign, ...]:
    return tuple(tuple((name, re.compile(p, re.IGNORECASE)) for name, p in group.items()) for group in groups)


def _messages(*entries: tuple[Reason, str]) -> tuple[tuple[Reason, re.Pattern[str]], ...]:
    return tuple((reason, re.compile(p)) for reason, p in entries)


_EZWEB_FROM = r"postmaster@(?:ezweb\.ne\.jp|au\.com)"
_EZWEB_SUBJECT = r"^mail system error - returned mail$"
_EZWEB_ID = r"\.(?:ezweb\.ne\.jp|au\.com)>"

FORMATS: tuple[MTAFormat, ...] = (
    # Progress iMail Server (X-Mailer: <SMTP32 vN>), lhost/via-imailserver.go
    MTAFormat("imailserver", _signs({"x-mailer": r"^<smtp32 v"}, {"subject": r"^undeliverable mail\s*$"}), _messages(
        (R.HOSTUNKNOWN, r"unknown host"),
        (R.USERUNKNOWN, r"unknown user|invalid final delivery userid"),
        (R.MAILBOXFULL, r"user mailbox exceeds allowed size"),
        (R.VIRUSDETECTED, r"requested action not taken: virus detected"),
        (R.SPAMDETECTED, r"blacklisted url in message"),
        (R.EXPIRED, r"delivery failed "),
    )),
    # Trend Micro InterScan Messaging Security Suite, lhost/via-trendmicro.go: its only own
    # sentence, "Unable to deliver message to <a@b>", is written for refused recipients
    MTAFormat("trendmicro", _signs({"from": r'^"?interscan'}, {"content-type": r"interscan"},
                                   {"received": r"with interscan messaging security"}),
              _messages((R.USERUNKNOWN, r"unable to deliver message to <"))),
    # Trustwave MailMarshal SMTP, lhost/via-mailmarshal.go: the reply stands between
    # "Could not be delivered because of" and the list of recipients
    MTAFormat("mailmarshal", _signs({"subject": r'^undeliverable mail: "'}, {"received": r"\bmailmarshal\b"}),
              error=re.compile(r"could not be delivered because of\s+(.+?)\s+the following recipients were affected", re.I | re.S)),
    # fml mailing list manager, lhost/via-fml.go: the subject names loops and refusals
    MTAFormat("fml", _signs({"x-mlserver": r".", "from": r"-admin@", "message-id": r"\.fml"}), _messages(
        (R.REJECTED, r" are not member|not member article from |reject mail |spam mail from a spammer is rejected"
                     r"| header may cause mail loop|reject spammers:|you are not a member of this mailing list"),
        (R.SECURITYERROR, r"security alert"),
        # fml tells a loop by a Message-ID it has already seen, and says so in a "Loop Alert"
        (R.SYSTEMERROR, r"fml system error message|loop alert: |loop back warning|warning: unix from loop"
                        r"| has detected a loop condition|duplicated message-id"),
    )),
    # Verizon Wireless SMS/MMS gateways (vtext.com, vzwpix.com), lhost/via-verizon.go
    MTAFormat("verizon", _signs({"from": r"@vtext\.com|@vzwpix\.com"}), _messages(
        (R.USERUNKNOWN, r"no such user here|invalid user address"),
    ), error=re.compile(r"error message below:\s*(.+?)\s*message details:", re.I | re.S)),
    # KDDI au (ezweb.ne.jp), lhost/via-ezweb.go: two of its three header signs; X-SPASIGN: NG
    # marks a message its content filter refused
    MTAFormat("ezweb", _signs({"from": _EZWEB_FROM, "subject": _EZWEB_SUBJECT}, {"from": _EZWEB_FROM, "message-id": _EZWEB_ID},
                              {"subject": _EZWEB_SUBJECT, "message-id": _EZWEB_ID}), _messages(
        (R.EXPIRED, r"your message was not delivered within "),
        (R.MAILBOXFULL, r"the user\(s\) account is temporarily over quota"),
        (R.SUSPEND, r"the user\(s\) account is (?:disabled|temporarily limited)"),
    ), header_reasons=(("x-spasign", re.compile(r"^ng$", re.I), R.FILTERED),)),
    # Zoho Mail, lhost/via-zoho.go: a warning that it keeps retrying is a delivery that expired
    MTAFormat("zoho", _signs({"x-mailer": r"^zoho mail"}), _messages(
        (R.EXPIRED, r"message will be retried for "),
    )),
)


def _matches(message: Message, sign: Sign) -> bool:
    for name, pattern in sign:
        values = message.get_all(name) if name == "received" else [header(message, name)]
        if not any(pattern.search(str(value)) for value in values or []):
            return False
    return True


def identify(message: Message) -> MTAFormat | None:
    """The MTA format whose header signs the email carries, if any."""
    for fmt in FORMATS:
        if any(_matches(message, sign) for sign in fmt.signs):
            return fmt
    return None


def table_reason(fmt: MTAFormat, message: Message, *texts: str) -> tuple[Reason, str] | None:
    """The reason the format's own table gives, reading `texts` in order (most specific first)."""
    for name, pattern, reason in fmt.header_reasons:
        if pattern.search(header(message, name)):
            return reason, f"{fmt.name}.header"
    for text in texts:
        folded = " ".join(text.split()).lower()
        for reason, pattern in fmt.messages:
            if pattern.search(folded):
                return reason, f"{fmt.name}.message"
    return None


def error_text(fmt: MTAFormat, region: str) -> str | None:
    """The error text where the format writes it apart from the recipients, else None."""
    if fmt.error is None:
        return None
    match = fmt.error.search(region)
    return " ".join(match.group(1).split()) if match else None
