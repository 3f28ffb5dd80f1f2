"""Amazon SES event notifications delivered by email through SNS (JSON in the body).

Layout: https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html — one object with
``notificationType`` (Bounce, Complaint, Delivery) and a per-type object listing recipients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SESEvent:
    """One recipient of an SES notification."""

    kind: str  # "bounce" | "feedback" | "delivered"
    address: str
    status: str | None
    diagnostic: str
    remote_mta: str
    feedback_type: str | None
    message_id: str | None
    source: str | None


def _json_in(body: str) -> dict[str, Any] | None:
    start = body.find("{")
    if start < 0 or '"notificationType"' not in body:
        return None
    # Sendmail breaks lines longer than RFC 5322's 998 characters as "!\n " on the way
    text = body[start:].replace("!\r\n ", "").replace("!\n ", "")
    try:
        value, _ = json.JSONDecoder(strict=False).raw_decode(text)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("Message"), str):  # raw SNS envelope
        try:
            value = json.loads(value["Message"])
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def events(body: str) -> list[SESEvent]:
    """The recipients an SES notification body reports, or [] when the body is not one."""
    note = _json_in(body)
    if note is None:
        return []
    mail: dict[str, Any] = note["mail"] if isinstance(note.get("mail"), dict) else {}
    message_id = _text(mail.get("messageId")) or None
    source = _text(mail.get("source")) or None
    kind = _text(note.get("notificationType")).lower()
    found: list[SESEvent] = []
    if kind == "bounce" and isinstance(note.get("bounce"), dict):
        bounce = note["bounce"]
        for item in bounce.get("bouncedRecipients") or []:
            if isinstance(item, dict):
                found.append(SESEvent("bounce", _text(item.get("emailAddress")), _text(item.get("status")) or None,
                                      _text(item.get("diagnosticCode")), _text(bounce.get("reportingMTA")), None, message_id, source))
    elif kind == "complaint" and isinstance(note.get("complaint"), dict):
        complaint = note["complaint"]
        feedback = _text(complaint.get("complaintFeedbackType")) or "abuse"
        for item in complaint.get("complainedRecipients") or []:
            if isinstance(item, dict):
                found.append(SESEvent("feedback", _text(item.get("emailAddress")), None, "", "", feedback, message_id, source))
    elif kind == "delivery" and isinstance(note.get("delivery"), dict):
        delivery = note["delivery"]
        for address in delivery.get("recipients") or []:
            found.append(SESEvent("delivered", _text(address), None, _text(delivery.get("smtpResponse")),
                                  _text(delivery.get("reportingMTA")), None, message_id, source))
    return found
