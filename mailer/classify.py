"""Classify one SMTP reply (or DSN diagnostic) into a bounce reason and class. Pure.

The order is the policy; the tables it walks live in `mailer.bounce_rules`:

1. a 2xx reply (or 2.X.X status) is a delivery, RFC 5321 4.2.1;
2. a receiving service's own error label or catalogue phrase (`mailer.mta.providers`), then
   provider rules (Gmail, Microsoft, Yahoo/AOL, Apple, Japanese carriers, block lists), because
   providers send precise texts with vague codes (5.7.1, 5.0.0);
3. the first pass: for each reason in `FIRST_PASS`, an RFC 3463 status code naming it, or one of
   its phrases, under the conditions below (who is "unknown" depends on the command);
4. the second pass: phrases only, in `SECOND_PASS` order;
5. the RFC 3463 table for any other code, then the code's subject (X.6 content, X.7 security);
6. the command refused (RFC 5321 3.3: a refusal of EHLO refuses the client host) and the basic
   reply code; then "onhold" if there was any text to go on, else "undefined".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.bounce_rules import (
    BEFORE_DATA,
    FIRST_PASS,
    PHRASES,
    PROVIDER_RULES,
    REPLY_CODE_REASONS,
    SECOND_PASS,
    STATUS_REASONS,
)
from mailer.mta.providers import service_reason
from mailer.reasons import BounceClass, Reason, bounce_class

# RFC 3463 3.3 subjects: when the detail is unknown to the table, the subject still tells.
_SUBJECT_REASONS = {"6": Reason.CONTENTERROR, "7": Reason.SECURITYERROR}
# A refusal of these commands refuses the connecting host, not any recipient.
_SESSION_COMMANDS = frozenset({"CONNECT", "HELO", "EHLO"})
# A "user unknown" code whose text names another cause is about that cause (Sisimai ReUSER).
_NOT_REALLY_UNKNOWN = (Reason.AUTHFAILURE, Reason.BLOCKED, Reason.MAILBOXFULL, Reason.HASMOVED, Reason.REJECTED, Reason.NOTACCEPT)
_SPACES = re.compile(r"\s+")
_LOCAL_AGENT = re.compile(r"\bmail\.local: |\bvdeliver(?:mail)?: |\blocal delivery agent\b|\(delivery to mailbox\)")


@dataclass(frozen=True)
class Classification:
    """A reason with its hard/soft class and the id of the rule that decided it."""

    reason: Reason
    bounce_class: BounceClass
    rule: str


def _says(reason: Reason, text: str) -> bool:
    rule = PHRASES.get(reason)
    return rule is not None and rule.pattern.search(text) is not None


def _first_pass(reason: Reason, named: Reason | None, enhanced: str, text: str, command: str, code: int | None) -> bool:
    """Sisimai's ProbesInto for one reason: does the status or the text point at it?"""
    if reason is Reason.USERUNKNOWN:
        # RFC 3463 X.1.1 names the recipient; a text alone only counts when it answered RCPT.
        if named is Reason.USERUNKNOWN:
            return not any(_says(other, text) for other in _NOT_REALLY_UNKNOWN)
        # a text alone counts only when it answered RCPT: after DATA (or when the command is
        # unknown) the recipient was accepted and a content filter spoke (Sisimai ReUSER)
        # a local delivery agent (Sendmail's mail.local, qmail's vdelivermail, Postfix local)
        # speaks for the mailbox itself, with no SMTP command involved
        return (command == "RCPT" or _LOCAL_AGENT.search(text) is not None) and _says(reason, text)
    if reason is Reason.FILTERED:
        # After DATA the recipient was already accepted: a "no such user" then is a filter.
        if named is Reason.FILTERED:
            return _says(Reason.USERUNKNOWN, text) or _says(reason, text)
        if command in BEFORE_DATA:
            return False
        return _says(reason, text) or _says(Reason.USERUNKNOWN, text)
    if reason is Reason.REJECTED:
        # the sender's address is refused at MAIL FROM (RFC 5321 3.3), or the code says so
        if named is Reason.REJECTED:
            return True
        if command == "MAIL" or (command == "DATA" and named is not Reason.USERUNKNOWN):
            return _says(reason, text)
        return named in (None, Reason.SECURITYERROR, Reason.SYSTEMERROR) and _says(reason, text)
    if reason is Reason.MESGTOOBIG and (named is Reason.EXCEEDLIMIT or enhanced == "5.2.3"):
        return False
    if reason is Reason.CONTENTERROR:  # X.6 is too broad ("scored as spam" comes as 5.6.0)
        return _says(reason, text)
    if reason is Reason.SUSPEND and code == 525:  # RFC 4954 6: user account disabled
        return True
    if reason is Reason.HOSTUNKNOWN and named is Reason.HOSTUNKNOWN:
        return not _says(Reason.NETWORKERROR, text)
    if reason is Reason.SPAMDETECTED and named is not Reason.SPAMDETECTED:
        return command not in BEFORE_DATA and _says(reason, text)
    return named is reason or _says(reason, text)


def _decide(code: int | None, enhanced: str | None, text: str, command: str, host: str) -> tuple[Reason, str]:
    if (enhanced or "").startswith("2.") or (code is not None and 200 <= code < 300):
        return Reason.DELIVERED, "code.2xx"
    hosts = tuple(host.split())
    service = service_reason(text, hosts)
    if service is not None:
        return service
    for rule in PROVIDER_RULES:
        if rule.host is not None and not any(rule.host.search(name) for name in hosts):
            continue
        if rule.pattern.search(text):
            return rule.reason, rule.id
    named = STATUS_REASONS.get(enhanced or "")
    if (enhanced or "")[1:] == ".4.7":
        # RFC 3463 X.4.7 "delivery time expired": the queue gave up; the last error quoted
        # with it (a refused connection, a full disk) is why it kept retrying, not the verdict
        return Reason.EXPIRED, "status.X.4.7"
    for reason in FIRST_PASS:
        if _first_pass(reason, named, enhanced or "", text, command, code):
            how = "status" if named is reason else "phrase"
            return reason, f"first.{reason.value}.{how}"
    for reason in SECOND_PASS:
        if _says(reason, text):
            return reason, PHRASES[reason].id
    if named is not None:
        return named, f"status.{enhanced}"
    if enhanced:
        subject = enhanced.split(".")[1]
        if subject in _SUBJECT_REASONS:
            return _SUBJECT_REASONS[subject], f"status.X.{subject}"
    if _says(Reason.SYNTAXERROR, text):
        return Reason.SYNTAXERROR, PHRASES[Reason.SYNTAXERROR].id
    if command in _SESSION_COMMANDS:
        return Reason.BLOCKED, f"command.{command}"
    if code in REPLY_CODE_REASONS:
        return REPLY_CODE_REASONS[code], f"code.{code}"
    if text:
        return Reason.ONHOLD, "text.undecided"
    return Reason.UNDEFINED, "nothing"


def classify_reply(
    *, code: int | None, enhanced: str | None, text: str, command: str = "", host: str = ""
) -> Classification:
    """Map a reply (basic code, RFC 3463 code, text, command answered, remote host) to a reason."""
    folded = _SPACES.sub(" ", text).strip().lower()
    reason, rule = _decide(code, enhanced, folded, command.upper(), host.lower())
    klass = bounce_class(reason, status=enhanced, reply_code=code, text=folded)
    return Classification(reason=reason, bounce_class=klass, rule=rule)
