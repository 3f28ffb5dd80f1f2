"""Read a returned email into per-recipient bounce verdicts. Pure: bytes in, values out.

Recognised, in this order: RFC 5965 ARF feedback reports, RFC 3464 delivery status
notifications (``multipart/report; report-type=delivery-status``, also RFC 6533's
``message/global-delivery-status``), the plain-text layouts of MTAs that do not send RFC 3464
(`mailer.mta.text`), and RFC 3834 automatic replies. Anything else is "not-bounce". MIME
walking and the header signs of bounces and auto-replies live in `mailer.mta.parts`; an MTA
recognised by `mailer.mta.lhost` has its own message table decide the reason first.
`parse_bounce` never raises: a bounce is outside input and may be anything.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, replace
from email.message import Message
from email.policy import compat32

from mailer.classify import classify_reply
from mailer.mta import lhost, ses
from mailer.mta import text as textual
from mailer.mta.commands import refused_command
from mailer.mta.parts import kind as part_type
from mailer.mta.parts import (
    BOUNCE_BODY, ORIGINAL_TYPES, body_text, decode, header, is_auto_reply, is_bounce_mail, original, original_to, walk,
)
from mailer.reasons import BounceClass, Reason, bounce_class


@dataclass(frozen=True)
class BouncedRecipient:
    """One recipient of a returned message and why it failed."""

    address: str
    status: str | None  # RFC 3463 enhanced status code
    reply_code: int | None  # RFC 5321 basic reply code
    diagnostic: str
    action: str  # RFC 3464 2.3.3: failed, delayed, delivered, relayed, expanded
    remote_mta: str
    command: str  # the SMTP command the remote host refused (RCPT, DATA, ...)
    reason: Reason
    bounce_class: BounceClass
    rule: str
    # RFC 3464 2.3.1 / RFC 3461 4.2: the address as the sender gave it in RCPT TO, when the
    # report keeps it; Final-Recipient may be an alias or a forward's rewritten address.
    original: str = ""

    def names(self, address: str) -> bool:
        """Whether this recipient's Final- or Original-Recipient is `address` (any case: leads
        are stored lower-cased, mailer.csvimport.normalize_email)."""
        wanted = address.strip().lower()
        return bool(wanted) and wanted in (self.address.lower(), self.original.lower())


@dataclass(frozen=True)
class BounceReport:
    """What a returned email says: its kind, recipients and the message it returns."""

    kind: str  # "bounce" | "feedback" | "vacation" | "delivered" | "not-bounce"
    recipients: tuple[BouncedRecipient, ...]
    format: str
    original_message_id: str | None
    original_return_path: str | None
    feedback_type: str | None


NOT_BOUNCE = BounceReport("not-bounce", (), "none", None, None, None)

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status", "text/delivery-status"})
_ARF_TYPES = frozenset({"message/feedback-report"})

# RFC 3463 2: class.subject.detail; not part of a dotted IP address or a version number.
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")
# RFC 5321 4.2: a three-digit reply code where MTAs quote one: at a line start, after "said:",
# "SMTP;", an error label or a colon, and followed by a space, hyphen or end.
_REPLY_CODE = re.compile(r"(?:^|[\s:;(\[\"'=])([245][0-5]\d)(?=[\s\-]|$)")
# RFC 3464 2.2 / 2.3: the first field of the per-message and the per-recipient groups
# A warning that delivery is late, not that it failed, in a report with no RFC 3464 Action to
# say so: Sendmail's "Warning: could not send message for past 4 hours" / "THIS IS A WARNING
# MESSAGE ONLY", Exim's "Warning: message … delayed 24 hours" / "has not yet been delivered",
# Gmail's and Zoho's "Delivery Status Notification (Delay)", Postfix's "Delayed Mail (still
# being retried)". The remote MTA is still trying: read as Action: delayed (mailer.bouncepolicy).
DELAY_SUBJECT = re.compile(
    r"^\s*(?:warning:\s*(?:could not send message for past|message \S+ delayed)|delayed mail\b"
    r"|(?:mail )?delivery status notification \(delay\))",
    re.IGNORECASE,
)
DELAY_BODY = re.compile(
    r"this is a warning (?:message )?only|you do not need to resend your message"
    r"|has not yet been delivered to one or more of its\s+recipients",
    re.IGNORECASE,
)
_INLINE_DSN = re.compile(r"^(?:reporting-mta|final-recipient)[ \t]*:", re.IGNORECASE | re.MULTILINE)
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9\-]*)[ \t]*:[ \t]*(.*)$")
_RECIPIENT_FIELDS = frozenset({"final-recipient", "original-recipient"})
# RFC 5965 3.1 (Feedback-Type, User-Agent) and 3.2 (optional fields naming the reporter and
# the source): what a feedback report's decision quotes about it.
_ARF_SUMMARY = ("Feedback-Type", "User-Agent", "Reporting-MTA", "Reported-Domain", "Source-IP", "Arrival-Date")


def _field_blocks(part: Message) -> list[dict[str, str]]:
    """The field groups of a delivery-status or feedback-report part (RFC 3464 2.1)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        text = "\n\n".join("\n".join(f"{k}: {v}" for k, v in block.items()) for block in payload if isinstance(block, Message))
    else:
        text = decode(part)
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
                current, last = {}, ""
            continue
        if line[:1] in " \t" and last:
            current[last] += " " + line.strip()
            continue
        match = _FIELD.match(line)
        if match:
            last = match.group(1).lower()
            if last in _RECIPIENT_FIELDS and last in current:
                # the next recipient's group, written without the blank line RFC 3464 2.1 asks for
                blocks.append(current)
                current = {}
            current[last] = (current.get(last, "") + " " + match.group(2).strip()).strip() if last in current else match.group(2).strip()
    if current:
        blocks.append(current)
    return blocks


def _typed(value: str) -> str:
    """The value of a typed RFC 3464 field (``rfc822; a@b``, ``dns; mx``, ``smtp; 550 ...``)."""
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"\s*[\w\-]+\s*", kind):
        return rest.strip()
    return value.strip()


def _address(value: str) -> str:
    found = textual.addresses(_typed(value))
    return found[0] if found else _typed(value).strip("<> ").lower()


def _status_in(text: str) -> str | None:
    match = _STATUS.search(text)
    return ".".join(match.groups()) if match else None


def _reply_code_in(text: str, status: str | None) -> int | None:
    for match in _REPLY_CODE.finditer(text):
        code = match.group(1)
        if status is None or code[0] == status[0]:
            return int(code)
    return None


def _pick_status(field: str | None, diagnostic: str) -> str | None:
    """The Status field, unless it is a bare X.0.0 or X.4.7 and the diagnostic quotes a precise code."""
    quoted = _status_in(diagnostic)
    if field is None:
        return quoted
    # Sendmail writes 4.4.7 (queue expired) over the last reply it got, which it quotes
    if quoted and field.endswith((".0.0", ".4.7")) and quoted[0] == field[0] and not quoted.endswith(".0.0"):
        return quoted
    return field


def _recipient(
    address: str,
    *,
    status: str | None,
    diagnostic: str,
    action: str,
    remote_mta: str,
    command: str = "",
    decided: tuple[Reason, str] | None = None,
) -> BouncedRecipient:
    """One recipient's verdict; `decided` is the reason an MTA's own message table gave."""
    diagnostic = " ".join(diagnostic.split())
    status = _pick_status(status, diagnostic)
    code = _reply_code_in(diagnostic, status)
    if code is not None:
        # RFC 5321 4.2.1: every line of a multi-line reply repeats the code; keep the first only
        repeated = re.compile(rf"(?<=\S)\s{code}[- ](?:{re.escape(status)}\s)?" if status else rf"(?<=\S)\s{code}-")
        diagnostic = repeated.sub(" ", diagnostic)
    command = command or refused_command(diagnostic)
    # the remote MTA and the recipient's domain both name the receiving service
    host = f"{remote_mta} {address.rpartition('@')[2]}"
    verdict = classify_reply(code=code, enhanced=status, text=diagnostic, command=command, host=host)
    reason, rule = decided if decided is not None and verdict.reason is not Reason.DELIVERED else (verdict.reason, verdict.rule)
    action = action.lower()
    if action in ("delivered", "relayed", "expanded") and not (status or "").startswith(("4", "5")):
        reason, rule = Reason.DELIVERED, f"action.{action}"
    elif action == "delayed" and reason in (Reason.ONHOLD, Reason.UNDEFINED):
        # RFC 3464 2.3.3: "delayed" means the MTA is still retrying; when the queue gives up
        # the message has expired.
        reason, rule = Reason.EXPIRED, "action.delayed"
    klass = bounce_class(reason, status=status, reply_code=code, text=diagnostic)
    return BouncedRecipient(address, status, code, diagnostic, action, remote_mta, command, reason, klass, rule)


def _reclassified(recipient: BouncedRecipient, reason: Reason, rule: str) -> BouncedRecipient:
    klass = bounce_class(reason, status=recipient.status, reply_code=recipient.reply_code, text=recipient.diagnostic)
    return replace(recipient, reason=reason, bounce_class=klass, rule=rule)


def _arf(message: Message, parts: list[Message], report: Message) -> BounceReport:
    blocks = _field_blocks(report)
    fields: dict[str, str] = {}
    for block in blocks:
        fields.update(block)
    feedback_type = fields.get("feedback-type", "").strip().lower() or None
    address = fields.get("original-rcpt-to") or fields.get("removal-recipient") or ""
    if not address:
        for part in parts:
            if part_type(part) in ORIGINAL_TYPES:
                payload = part.get_payload()
                inner = payload[0] if isinstance(payload, list) and payload else None
                if isinstance(inner, Message):
                    address = str(inner.get("To", ""))
                else:
                    to_line = re.search(r"(?im)^to:\s*(.+)$", decode(part))
                    address = to_line.group(1) if to_line else ""
                break
    found = textual.addresses(address) or [""]
    # what the report says about itself, kept as the decision's diagnostic (and so in the
    # suppression's detail): the type and who reported it (RFC 5965 3.1, 3.2)
    summary = "; ".join(f"{name}: {fields[name.lower()]}" for name in _ARF_SUMMARY if fields.get(name.lower()))
    reporter = _typed(fields.get("reporting-mta", ""))
    recipients = tuple(
        BouncedRecipient(a, None, None, summary, "", reporter, "", Reason.FEEDBACK, BounceClass.NONE, "arf") for a in found
    )
    mid, path = original(parts, "")
    return BounceReport("feedback", recipients, "arf", mid, path, feedback_type)


def _rfc3464(
    message: Message, parts: list[Message], report: Message, body: str, fmt: lhost.MTAFormat | None
) -> BounceReport | None:
    blocks = _field_blocks(report)
    per_message: dict[str, str] = blocks[0] if blocks and not ({"final-recipient", "original-recipient"} & blocks[0].keys()) else {}
    region = textual.error_region(body)
    from_text = {r.address: r for r in textual.recipients(region)}
    failed = textual.addresses(header(message, "X-Failed-Recipients"))
    recipients: list[BouncedRecipient] = []
    for block in blocks:
        raw = block.get("final-recipient") or block.get("original-recipient")
        if not raw:
            continue
        address = _address(raw)
        if not address or "@" not in address and block.get("original-recipient"):
            address = _address(block.get("original-recipient", raw))
        if "@" not in address and len(failed) > len(recipients):
            address = failed[len(recipients)]  # Exim names a file or pipe there; the header has the address
        diagnostic = _typed(block.get("diagnostic-code", ""))
        in_body = from_text.get(address)
        if in_body and (not diagnostic or len(diagnostic) < 12):
            diagnostic = (diagnostic + " " + in_body.diagnostic).strip()
        if not diagnostic:
            diagnostic = " ".join(region.split())[:2000]
        command = refused_command(diagnostic) or (refused_command(in_body.diagnostic) if in_body else "")
        mailer = block.get("diagnostic-code", "").lower().startswith("x-unix")
        status_field = _status_in(block.get("status", ""))
        remote = _typed(block.get("remote-mta", "") or per_message.get("reporting-mta", ""))
        decided = lhost.table_reason(fmt, message, diagnostic, region) if fmt else None
        found = _recipient(
            address, status=status_field, diagnostic=diagnostic, action=block.get("action", ""), remote_mta=remote,
            command=command, decided=decided,
        )
        if mailer and found.reason is not Reason.DELIVERED and ".phrase" not in found.rule and not found.rule.startswith("phrase."):
            # RFC 3464 2.3.6 diagnostic type X-Unix: a local delivery program failed
            found = _reclassified(found, Reason.MAILERERROR, "diagnostic-type.x-unix")
        if block.get("original-recipient"):
            found = replace(found, original=_address(block["original-recipient"]))
        recipients.append(found)
    if not recipients:
        return None
    mid, path = original(parts, body)
    kind = "delivered" if all(r.reason is Reason.DELIVERED for r in recipients) else "bounce"
    return BounceReport(kind, tuple(recipients), "rfc3464", mid, path, None)


def _plain(message: Message, parts: list[Message], body: str, fmt: lhost.MTAFormat | None) -> BounceReport | None:
    region = textual.error_region(body)
    sender = textual.addresses(header(message, "To"))
    found = textual.recipients(region, sender=sender[0] if sender else "")
    failed = textual.addresses(header(message, "X-Failed-Recipients"))
    if failed:
        known = {r.address: r for r in found}
        found = [known.get(a) or textual.TextRecipient(a, " ".join(region.split())) for a in failed]
    if not found:
        # no address in the explanation (old Sendmail: "421 example.com (smtp)... Deferred"):
        # the returned original's own To: names whom it was for
        found = [textual.TextRecipient(a, " ".join(region.split())) for a in original_to(parts, body)]
    if not found:
        return None
    whole = " ".join(region.split())
    apart = lhost.error_text(fmt, region) if fmt else None
    action = "delayed" if DELAY_SUBJECT.search(header(message, "Subject")) or DELAY_BODY.search(body[:4000]) else "failed"
    recipients = []
    for item in found:
        diagnostic = apart or (item.diagnostic if len(item.diagnostic) >= 12 else whole)
        decided = lhost.table_reason(fmt, message, diagnostic, region, header(message, "Subject")) if fmt else None
        recipients.append(_recipient(item.address, status=None, diagnostic=diagnostic, action=action, remote_mta="", decided=decided))
    mid, path = original(parts, body)
    return BounceReport("bounce", tuple(recipients), "text", mid, path, None)


def _ses(events: list[ses.SESEvent]) -> BounceReport:
    recipients = []
    for event in events:
        if event.kind == "feedback":
            recipients.append(BouncedRecipient(event.address, None, None, "", "", "", "", Reason.FEEDBACK, BounceClass.NONE, "ses.complaint"))
        else:
            action = "delivered" if event.kind == "delivered" else "failed"
            recipients.append(_recipient(event.address, status=event.status, diagnostic=event.diagnostic, action=action, remote_mta=event.remote_mta))
    kinds = {e.kind for e in events}
    kind = "feedback" if kinds == {"feedback"} else "delivered" if kinds == {"delivered"} else "bounce"
    feedback = next((e.feedback_type for e in events if e.feedback_type), None)
    return BounceReport(kind, tuple(recipients), "amazonses-json", events[0].message_id, events[0].source, feedback)


def _vacation(message: Message) -> BounceReport:
    address = textual.addresses(header(message, "From"))
    recipient = BouncedRecipient(
        address[0] if address else "", None, None, header(message, "Subject"), "", "", "",
        Reason.VACATION, BounceClass.NONE, "rfc3834",
    )
    return BounceReport("vacation", (recipient,), "rfc3834", None, None, None)


def _parse(raw: bytes) -> BounceReport:
    message = email.message_from_bytes(raw, policy=compat32)
    parts = walk(message)
    types = [part_type(p) for p in parts]
    for part, kind in zip(parts, types):
        if kind in _ARF_TYPES:
            return _arf(message, parts, part)
    body = body_text(parts)
    fmt = lhost.identify(message)
    for part, kind in zip(parts, types):
        if kind in _DSN_TYPES:
            report = _rfc3464(message, parts, part, body, fmt)
            if report is not None:
                return report
    inline = _INLINE_DSN.search(body)
    if inline and not any(kind in _DSN_TYPES for kind in types):
        # a DSN whose MIME structure broke (no boundaries, or none declared): read its fields
        # where they stand in the text
        fields = Message()
        fields.set_payload(body[inline.start() :])
        report = _rfc3464(message, parts, fields, body[: inline.start()], fmt)
        if report is not None:
            return report
    events = ses.events(body) if '"notificationType"' in body else []
    if events:
        return _ses(events)
    if fmt is not None or is_bounce_mail(message) or BOUNCE_BODY.search(body[:4000]):
        report = _plain(message, parts, body, fmt)
        if report is not None:
            return report
    if is_auto_reply(message) and not is_bounce_mail(message):
        return _vacation(message)
    return NOT_BOUNCE


def parse_bounce(raw: bytes) -> BounceReport:
    """Read a returned email; garbage, or an email that is no report, is "not-bounce"."""
    try:
        return _parse(raw)
    except Exception:  # outside input must never crash the bounce mailbox loop
        return NOT_BOUNCE
