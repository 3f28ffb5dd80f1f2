"""The MIME side of a returned email: decoded headers and bodies, its parts, and the header
signs that tell a non-delivery report or an RFC 3834 automatic reply from any other email.
"""

from __future__ import annotations

import email
import re
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32

from mailer.mta import text as textual

ORIGINAL_TYPES = frozenset({"message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers", "message/partial"})

_TO_LINE = re.compile(r"^to:[ \t]*(.+)$", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID = re.compile(r"^message-id:[ \t]*(<[^>\r\n]+>|\S+)", re.IGNORECASE | re.MULTILINE)
_RETURN_PATH = re.compile(r"^return-path:[ \t]*<?([^>\s]*)>?", re.IGNORECASE | re.MULTILINE)
# A multipart header folded without indentation leaves its boundary parameter as the first
# body line ("Content-Type: multipart/alternative;\nboundary=..."), as Verizon's gateway does.
_STRAY_BOUNDARY = re.compile(r"\A\s*boundary=\"?([^\"\r\n;]+)\"?[^\n]*\n", re.IGNORECASE)

# Who sends bounces, and what they call them: the header evidence that a plain-text email
# is a non-delivery report (RFC 3464 1 calls these "non-delivery notifications").
_BOUNCE_FROM = re.compile(
    r"mailer-daemon|post_?master|mail delivery|mail ?administrator|delivery subsystem|"
    r"mail system|mmdf|mail-?router|no-?reply@.*amazonses|mailer@|smtp gateway|"
    r"notes mail router|bounce|double-bounce|daemon@|returned|root@",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|fail|failure|report|notification|problem|has failed)|"
    r"returned (?:mail|to sender)|failure notice|failed delivery|mail delivery|non.?deliver|nondeliver|"
    r"could not be delivered|delivery error|mail error|rejected|bounce|error sending|"
    r"mail system error|warning: could not send|delayed mail|message not delivered|not delivered|"
    r"fail(?:ed|ure)|could not send|returned message|permanent error|delivery problem|"
    r"problem delivering|return receipt|message you sent|unzustellbar|不達|エラー|error|"
    r"notification|delivery",
    re.IGNORECASE,
)
# Body sentences that only non-delivery reports write, for bounces whose headers say nothing
# (a carrier's "no-reply" sender and a plain subject).
BOUNCE_BODY = re.compile(
    r"could not be delivered to:|the following addresses had permanent fatal errors|"
    r"i wasn't able to deliver your message|delivery to the following recipients? failed",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"auto(?:matic|mated)?[ -]?(?:reply|response|answer)|out of (?:the )?office|vacation|away from|"
    r"\baway\b|absence|abwesen|abwesenheit|r[eé]ponse automatique|autoreply|on leave|holiday",
    re.IGNORECASE,
)


def header(message: Message, name: str) -> str:
    """A header's value with RFC 2047 words and raw 8-bit bytes decoded; "" when absent."""
    value = message.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):  # compat32 keeps raw 8-bit bytes as an "unknown-8bit" Header
        chunks = []
        for chunk, charset in decode_header(value):
            if isinstance(chunk, bytes):
                label = charset if charset and charset != "unknown-8bit" else "utf-8"
                try:
                    chunk = chunk.decode(label, "replace")
                except LookupError:
                    chunk = chunk.decode("utf-8", "replace")
            chunks.append(chunk)
        return "".join(chunks)
    if any("\udc80" <= ch <= "\udcff" for ch in value):  # raw 8-bit bytes, most often UTF-8
        value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a broken RFC 2047 word: keep the raw text
        return str(value)


def decode(part: Message) -> str:
    """A part's body as text: the declared charset, then UTF-8, then Latin-1."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    # the declared charset first, then UTF-8 (often sent under a wrong label), then anything
    for charset in (part.get_content_charset() or "utf-8", "utf-8"):
        try:
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")


def kind(part: Message) -> str:
    """The content type, also when a broken header folds its parameters without a ";"."""
    found = part.get_content_type()
    return found.split(None, 1)[0] if " " in found or "\n" in found else found


def _repaired(part: Message) -> Message:
    """A multipart part whose boundary parameter fell into its body, parsed again with it."""
    payload = part.get_payload()
    if part.get_content_maintype() != "multipart" or not isinstance(payload, str):
        return part
    match = _STRAY_BOUNDARY.match(payload)
    if match is None:
        return part
    head = f"Content-Type: {part.get_content_type()}; boundary=\"{match.group(1)}\"\n\n"
    return email.message_from_string(head + payload[match.end() :], policy=compat32)


def walk(message: Message) -> list[Message]:
    """Every part of the report, depth first, without descending into the returned original."""
    parts: list[Message] = []
    stack = [message]
    while stack and len(parts) < 200:  # a hostile nesting depth must not exhaust us
        part = _repaired(stack.pop(0))
        parts.append(part)
        if kind(part) in ORIGINAL_TYPES:
            continue  # the returned original: its own parts are not the report
        payload = part.get_payload()
        if isinstance(payload, list):
            stack[0:0] = [p for p in payload if isinstance(p, Message)]
    return parts


def body_text(parts: list[Message]) -> str:
    """The human-readable explanation: text/plain parts, else de-tagged HTML, else the body."""
    texts = [decode(p) for p in parts if kind(p) == "text/plain" and p.get_content_disposition() != "attachment"]
    if not texts:
        html = [decode(p) for p in parts if kind(p) == "text/html"]
        texts = [re.sub(r"<[^>]+>", " ", re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", h)) for h in html]
    if not texts and not parts[0].is_multipart():
        # a multipart/report without any boundary in its body: the body is all we have
        texts = [decode(parts[0])]
    return "\n".join(texts)


def original(parts: list[Message], body: str) -> tuple[str | None, str | None]:
    """Message-ID and Return-Path of the returned original, from its attached copy or inline."""
    for part in parts:
        if kind(part) not in ORIGINAL_TYPES:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            inner = payload[0]
            path = inner.get("Return-Path")
            mid = inner.get("Message-ID")
            return (str(mid).strip() if mid else None, str(path).strip().strip("<>") if path else None)
        text = decode(part)
        mid_match, path_match = _MESSAGE_ID.search(text), _RETURN_PATH.search(text)
        return (mid_match.group(1) if mid_match else None, path_match.group(1) if path_match else None)
    marker = textual.ORIGINAL_MARKERS.search(body)
    tail = body[marker.start() :] if marker else ""
    mid_match, path_match = _MESSAGE_ID.search(tail), _RETURN_PATH.search(tail)
    return (mid_match.group(1) if mid_match else None, path_match.group(1) if path_match else None)


def original_to(parts: list[Message], body: str) -> list[str]:
    """The To: addresses of the returned original, from its attached copy or inline."""
    for part in parts:
        if kind(part) in ORIGINAL_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return textual.addresses(header(payload[0], "To"))
            match = _TO_LINE.search(decode(part))
            return textual.addresses(match.group(1)) if match else []
    marker = textual.ORIGINAL_MARKERS.search(body)
    match = _TO_LINE.search(body[marker.start() :]) if marker else None
    return textual.addresses(match.group(1)) if match else []


def is_bounce_mail(message: Message) -> bool:
    """Do the headers say a mail system returned this email (sender, subject, X-Failed-Recipients)?"""
    sender = header(message, "From") + " " + header(message, "Return-Path")
    return bool(
        message.get("X-Failed-Recipients")
        or _BOUNCE_FROM.search(sender)
        or _BOUNCE_SUBJECT.search(header(message, "Subject"))
    )


def is_auto_reply(message: Message) -> bool:
    """RFC 3834 3.1.7 Auto-Submitted: auto-replied, the common X- headers, or a vacation subject."""
    auto = header(message, "Auto-Submitted").lower()
    return bool(
        auto.startswith("auto-replied")
        or message.get("X-Autoreply")
        or message.get("X-Autorespond")
        or header(message, "Precedence").lower() == "auto_reply"
        or _AUTO_REPLY_SUBJECT.search(header(message, "Subject"))
    )
