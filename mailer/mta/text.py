"""Recipients and diagnostics from human-readable bounce bodies (Exim, qmail, Gmail, ...).

Most MTAs that skip RFC 3464 still follow one layout: an explanation, then each failed address
on a line of its own (bare, in angle brackets, or followed by a colon), then the error text,
then a copy of the original message after a marker line. The markers are data in `MARKERS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Where the copy of the original message starts, in the wording of the MTAs that add one.
ORIGINAL_MARKERS = re.compile(
    r"^\s*(?:"
    r"-+ ?this is a copy of the message|"  # Exim
    r"-+ ?the header of the original message|"  # Exim
    r"--- below this line is a copy of the message|"  # qmail
    r"-+ ?original message|-+ ?original message follows|original message follows|"
    r"-+ ?(?:the )?original message (?:header|headers|text|was)|"
    r"-+ ?forwarded message|"
    r"-+ ?returned message|"
    r"-+ ?undelivered message|"
    r"-+ ?message header follows|"
    r"-+ ?headers of the original message|"
    r"-+ ?the original message headers|"
    r"-+ ?original message header|"
    r"\*\*\* ?original message|"
    r"-+ ?below is a copy|"
    r"content-type: message/rfc822|content-type: text/rfc822-headers|"
    r"-+ ?unsent message (?:below|follows)|"
    r"message headers follow|"  # DragonFly
    r"-+ ?original message headers|"
    r"received: from |return-path: "  # an inline copy of the original's header
    r")",
    re.IGNORECASE | re.MULTILINE,
)

# A line that names a failed recipient: the address first, bare, <bracketed> or "quoted",
# optionally followed by a colon or "..." (Sendmail) and the error.
_RECIPIENT_LINE = re.compile(
    r"^\s*(?:[245]\d\d[ -]\s*)?(?:rcpt to:\s*|to:\s*|recipient(?: address)?:\s*|address:\s*|original-recipient:\s*|final-recipient:\s*|[-*>]+\s*|\d+\.\s*)?"
    r"[<\"(]?(?:mailto:)?([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)[>\")]?"
    r"(?=\s|:|\.\.\.|,|;|$)(.*)$",
    re.IGNORECASE,
)
_ADDRESS = re.compile(r"<?([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)>?")
# Lines that carry an address but are about the sender or the original's headers.
_BRACKETED = re.compile(r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)>")
_NOT_RECIPIENT = re.compile(
    r"^\s*(?:from|sender|return-path|reply-to|mail from|envelope-from|x-[\w-]+|message-id|by|for)\s*:",
    re.IGNORECASE,
)


# Sendmail transcripts: each SMTP session starts "While talking to HOST:"; in a transcript of
# "550 <address>... error" entries, the next unindented reply code or session line ends one.
_SESSION_START = re.compile(r"^\s*(?:\.\.\. )?while talking to ", re.IGNORECASE)
_CODE_ENTRY = re.compile(r"^[245]\d\d[ -]")
_NEXT_ENTRY = re.compile(r"^(?:[245]\d\d[ -]|>>> |<<< |(?:\.\.\. )?while talking to )", re.IGNORECASE)


@dataclass(frozen=True)
class TextRecipient:
    """A failed address read from a bounce body, with the error text that followed it."""

    address: str
    diagnostic: str


def error_region(body: str) -> str:
    """The explanation part of a bounce body, before the copy of the original message."""
    match = ORIGINAL_MARKERS.search(body)
    return body[: match.start()] if match else body


def _session_before(lines: list[str], number: int) -> list[str]:
    """The ">>> command" and "<<< reply" lines of the Sendmail session that led to line `number`."""
    session: list[str] = []
    for line in reversed(lines[max(0, number - 12) : number]):
        if _SESSION_START.match(line):
            break
        if line.startswith((">>>", "<<<")):
            session.insert(0, line.strip())
    return session


def recipients(region: str, *, sender: str = "") -> list[TextRecipient]:
    """Every failed address in a bounce's explanation, in order, each with its diagnostic."""
    lines = region.splitlines()
    found: list[tuple[str, int, str]] = []
    mailed_self: list[tuple[str, int, str]] = []  # the sender's own address: one sent to oneself
    for number, line in enumerate(lines):
        if _NOT_RECIPIENT.match(line):
            continue
        match = _RECIPIENT_LINE.match(line)
        if match:
            address = match.group(1).strip(".").lower()
            if sender and address == sender.lower():
                mailed_self.append((address, number, match.group(2)))
                continue
            if found and found[-1][0] == address and (line[:1].isspace() or found[-1][1] == number - 1):
                continue  # a wrapped diagnostic quoting the address again (Postfix, Sendmail)
            found.append((address, number, match.group(2)))
    if not found and mailed_self:
        found = mailed_self[:1]
    if not found:
        # no address on a line of its own: take the first bracketed one in a sentence
        # ("There was an error delivering your mail to <a@b>.")
        for number, line in enumerate(lines):
            if _NOT_RECIPIENT.match(line):
                continue
            for match in [*_BRACKETED.finditer(line), *_ADDRESS.finditer(line)]:
                address = match.group(1).lower()
                if address != sender.lower():
                    found.append((address, number, line))
                    break
            if found:
                break
    result: list[TextRecipient] = []
    seen: set[str] = set()
    for index, (address, number, rest) in enumerate(found):
        end = found[index + 1][1] if index + 1 < len(found) else len(lines)
        following: list[str] = []
        transcript = _CODE_ENTRY.match(lines[number]) is not None
        for line in lines[number + 1 : min(end, number + 40)]:
            if transcript and _NEXT_ENTRY.match(line):
                break  # the transcript's next entry is about another address or host
            following.append(line.strip())
        diagnostic = " ".join([*_session_before(lines, number), rest.strip(" :>\")"), *following]).strip()
        if address in seen:
            # the same address again (a second attempt): keep the longer diagnostic
            for k, item in enumerate(result):
                if item.address == address and len(diagnostic) > len(item.diagnostic):
                    result[k] = TextRecipient(address, diagnostic)
            continue
        seen.add(address)
        result.append(TextRecipient(address, diagnostic))
    return result


def addresses(text: str) -> list[str]:
    """Every address in a text, in order of appearance."""
    return [m.group(1).lower() for m in _ADDRESS.finditer(text)]
