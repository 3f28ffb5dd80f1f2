"""Which SMTP command a bounce's diagnostic says the remote host refused.

The answer matters to the verdict: a "no such user" answering RCPT condemns the address, the
same words after DATA come from a content filter (RFC 5321 3.3: DATA follows accepted RCPTs).
MTAs say it in words ("in reply to RCPT TO command", Exim's "after MAIL FROM"), in
transcripts (Sendmail's ">>> DATA"), or as bare command words ("SMTP:RCPT host").
"""

from __future__ import annotations

import re

_COMMAND = re.compile(
    r"\b(?:in reply to|after|at|while sending|in response to|to|like our|our)\s+(?:the\s+)?"
    r"(RCPT TO|MAIL FROM|DATA|RCPT|MAIL|HELO|EHLO|STARTTLS|AUTH|CONNECT|end of data|initial connection)\b"
    r"|(?:>>> |smtp command:?\s*)(RCPT TO|MAIL FROM|DATA|RCPT|MAIL|HELO|EHLO)\b",
    re.IGNORECASE,
)

# MTA wordings that name the refused stage without quoting the command (qmail's
# qmail-remote messages).
_COMMAND_PHRASES: tuple[tuple[str, str], ...] = (
    ("does not like recipient", "RCPT"),
    ("sender was rejected", "MAIL"),
    ("didn't like the sender", "MAIL"),
    ("failed on data command", "DATA"),
    ("failed after i sent the message", "DATA"),
    ("but my name was rejected", "HELO"),
)
_BARE_COMMAND = re.compile(r"(?<![A-Za-z0-9@.])(HELO|EHLO|STARTTLS|AUTH|MAIL(?= F)|RCPT|DATA)(?![A-Za-z0-9@=])")
_COMMAND_STAGES = (("DATA", "DATA"), ("RCPT", "RCPT"), ("MAIL", "MAIL"), ("AUTH", "AUTH"), ("STARTTLS", "STARTTLS"), ("EHLO", "EHLO"), ("HELO", "HELO"))


def refused_command(text: str) -> str:
    """The SMTP command a diagnostic says was refused (RCPT, MAIL, DATA, ...), or ""."""
    match = _COMMAND.search(text)
    if match:
        word = (match.group(1) or match.group(2)).upper()
        if word.startswith("RCPT"):
            return "RCPT"
        if word.startswith("MAIL"):
            return "MAIL"
        if word in ("END OF DATA",):
            return "DATA"
        if word == "INITIAL CONNECTION":
            return "CONNECT"
        return word
    lowered = text.lower()
    for phrase, command in _COMMAND_PHRASES:
        if phrase in lowered:
            return command
    # a bare upper-case command word, as transcripts quote it ("SMTP:RCPT host", "[RCPT_TO]");
    # the latest stage of the session wins, as in Sisimai's smtp/command Find()
    found = {m.group(1) for m in _BARE_COMMAND.finditer(text)}
    for word, command in _COMMAND_STAGES:
        if word in found:
            return command
    return ""
