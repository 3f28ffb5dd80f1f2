"""An SMTP reply as a value: basic code, RFC 3463 enhanced status code, text, and what it answered."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# RFC 3463 3.1: class "." subject "." detail, where subject and detail are 1-3 digits.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


# A refusal while setting up the session (greeting, EHLO, STARTTLS, AUTH) or of our MAIL
# FROM refuses us, the sender, not the recipient: the message waits for the operator to
# fix the relay or the identity, it never fails for it (and it expires after max_age).
SESSION_COMMANDS = frozenset({"CONNECT", "EHLO", "STARTTLS", "AUTH", "MAIL"})


class Verdict(StrEnum):
    """What a reply means for the message, before any bounce intelligence."""

    ACCEPTED = "accepted"  # 2xx: the receiver took responsibility
    TEMPORARY = "temporary"  # 4xx, or no reply at all: try again later
    PERMANENT = "permanent"  # 5xx: do not try again


def _without_code(line: str, code: str) -> str:
    again = _ENHANCED.match(line)
    return line[again.end() :] if again and again.group(0) == code else line


@dataclass(frozen=True)
class SMTPReply:
    code: int | None  # None when the connection failed or timed out before a reply
    text: str
    enhanced: str | None = None
    command: str = ""  # the phase it answered: CONNECT, EHLO, MAIL, RCPT, DATA
    host: str = ""

    @classmethod
    def parse(cls, code: int | None, text: str, *, command: str = "", host: str = "") -> SMTPReply:
        """Build a reply, lifting a leading enhanced status code out of the text."""
        # multi-line replies arrive joined with newlines
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        enhanced = None
        match = _ENHANCED.match(lines[0]) if lines else None
        if match and code is not None and str(code)[0] == match.group(1):
            enhanced = ".".join(match.groups())
            # servers repeat the code on every line of a multi-line reply (Gmail's 550 does)
            lines = [_without_code(line, match.group(0)) for line in lines]
        text = " ".join(" ".join(lines).split())
        return cls(code=code, text=text, enhanced=enhanced, command=command, host=host)

    @property
    def timed_out(self) -> bool:
        """No reply within the phase's timeout: the receiver went silent (a black hole, a stuck
        server), unlike a refusal or a hang-up, which answer at once."""
        if self.code is not None:
            return False
        error = self.text.removeprefix("outcome unknown: ").partition(":")[0]  # the transport's "<Error>: <detail>"
        return "Timeout" in error

    @property
    def verdict(self) -> Verdict:
        if self.code is None or self.command in SESSION_COMMANDS:
            return Verdict.TEMPORARY
        if 200 <= self.code < 300:
            return Verdict.ACCEPTED
        if 500 <= self.code < 600:
            return Verdict.PERMANENT
        return Verdict.TEMPORARY

    def __str__(self) -> str:
        parts = [str(self.code) if self.code is not None else "no reply:"]
        if self.enhanced:
            parts.append(self.enhanced)
        parts.append(self.text)
        return " ".join(parts)
