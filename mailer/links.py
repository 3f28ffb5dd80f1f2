"""The signed links a message carries: open pixel, click redirect, unsubscribe, opt-in confirm.

Every link is `<base_url>/<kind>/<token>`; the token (see `mailer.tokens`) is signed for its
purpose, so an open token is no click token. What each one carries:

| link | path | payload | signed apart |
| --- | --- | --- | --- |
| open pixel | `/o/<token>` | message row, send time | |
| click | `/c/<token>?u=<url>` | message row, send time, link number, tag | the destination URL |
| honeypot | `/c/<token>` | message row, send time | |
| unsubscribe | `/u/<token>` | message row, list name | |
| confirm | `/confirm/<token>` | lead id, expiry, list name | |

The send time rides in the token so the tracking endpoint can tell a click seconds after
delivery (a link scanner) from a human one without a database read. The click URL travels
in the query string in the clear, as the recipient sees it, and is covered by the tag: the
redirect goes only to the URL the signature covers, so there is no open redirect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

from mailer.tokens import Signer

OPEN, CLICK, TRAP, UNSUBSCRIBE, CONFIRM = "open", "click", "trap", "unsub", "confirm"
_QUOTE_CACHE_SIZE = 4096  # distinct destination URLs kept encoded; personalized ones churn it
MAX_TAG_BYTES = 40  # a tag names a link for scoring ("pricing"); it rides in every click token


@dataclass(frozen=True)
class OpenToken:
    message: int  # messages.id
    sent_at: datetime


@dataclass(frozen=True)
class ClickToken:
    message: int
    sent_at: datetime
    link: int  # the link's number in the message, from 1; 0 is the honeypot
    tag: str
    url: str  # "" for the honeypot

    @property
    def honeypot(self) -> bool:
        return self.link == 0


@dataclass(frozen=True)
class UnsubscribeToken:
    message: int
    list_name: str  # the list the message was sent for; "" when it came from no list


@dataclass(frozen=True)
class ConfirmToken:
    lead_id: int
    list_name: str
    expires_at: datetime


class Links:
    """Makes and reads the signed links of one workspace (one secret, one public base URL)."""

    def __init__(self, signer: Signer, base_url: str) -> None:
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self._quotes: dict[str, str] = {}

    # -- making links (per message, on the hot path: a few µs each) -----------------------

    def open_url(self, message: int, sent_at: datetime) -> str:
        token = self.signer.sign(OPEN, _uvarint(message) + _uvarint(_seconds(sent_at)))
        return f"{self.base_url}/o/{token}"

    def click_url(self, message: int, sent_at: datetime, *, url: str, link: int, tag: str = "") -> str:
        """The tracked form of `url`, the message's `link`-th tracked link (from 1)."""
        if link < 1:
            raise ValueError("links are numbered from 1; 0 is the honeypot")
        payload = _uvarint(message) + _uvarint(_seconds(sent_at)) + _uvarint(link) + _tag_bytes(tag)
        token = self.signer.sign(CLICK, payload, associated=url.encode("utf-8"))
        return f"{self.base_url}/c/{token}?u={self._quoted(url)}"

    def _quoted(self, url: str) -> str:
        """`url` percent-encoded for the query; cached, as most links are the same for everyone."""
        quoted = self._quotes.get(url)
        if quoted is None:
            if len(self._quotes) >= _QUOTE_CACHE_SIZE:
                self._quotes.clear()
            quoted = self._quotes[url] = quote(url, safe="")
        return quoted

    def honeypot_url(self, message: int, sent_at: datetime) -> str:
        """A link hidden from people: whatever follows it is a machine."""
        token = self.signer.sign(TRAP, _uvarint(message) + _uvarint(_seconds(sent_at)))
        return f"{self.base_url}/c/{token}"

    def unsubscribe_url(self, message: int, list_name: str = "") -> str:
        token = self.signer.sign(UNSUBSCRIBE, _uvarint(message) + list_name.encode("utf-8"))
        return f"{self.base_url}/u/{token}"

    def confirm_url(self, lead_id: int, list_name: str, *, expires_at: datetime) -> str:
        payload = _uvarint(lead_id) + _uvarint(_seconds(expires_at)) + list_name.encode("utf-8")
        return f"{self.base_url}/confirm/{self.signer.sign(CONFIRM, payload)}"

    # -- reading tokens (None for anything not genuine) ------------------------------------

    def read_open(self, token: str) -> OpenToken | None:
        fields = _read(self.signer.verify(OPEN, token), 2)
        if fields is None or fields[1]:
            return None
        return OpenToken(message=fields[0][0], sent_at=_instant(fields[0][1]))

    def read_click(self, token: str, url: str | None) -> ClickToken | None:
        """A click token and the URL it signs; a honeypot token when `url` is None."""
        if url is None:
            fields = _read(self.signer.verify(TRAP, token), 2)
            if fields is None or fields[1]:
                return None
            (message, sent), _ = fields
            return ClickToken(message=message, sent_at=_instant(sent), link=0, tag="", url="")
        fields = _read(self.signer.verify(CLICK, token, associated=url.encode("utf-8")), 3)
        if fields is None:
            return None
        (message, sent, link), rest = fields
        try:
            tag = rest.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return ClickToken(message=message, sent_at=_instant(sent), link=link, tag=tag, url=url)

    def read_unsubscribe(self, token: str) -> UnsubscribeToken | None:
        fields = _read(self.signer.verify(UNSUBSCRIBE, token), 1)
        if fields is None:
            return None
        (message,), rest = fields
        try:
            return UnsubscribeToken(message=message, list_name=rest.decode("utf-8"))
        except UnicodeDecodeError:
            return None

    def read_confirm(self, token: str, *, now: datetime) -> ConfirmToken | None:
        """A confirm token that has not expired at `now`."""
        fields = _read(self.signer.verify(CONFIRM, token), 2)
        if fields is None:
            return None
        (lead_id, expires), rest = fields
        if _seconds(now) > expires:
            return None
        try:
            return ConfirmToken(lead_id=lead_id, list_name=rest.decode("utf-8"), expires_at=_instant(expires))
        except UnicodeDecodeError:
            return None


def _seconds(instant: datetime) -> int:
    return max(0, int(instant.timestamp()))


def _instant(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _tag_bytes(tag: str) -> bytes:
    raw = tag.encode("utf-8")
    if len(raw) > MAX_TAG_BYTES:
        raise ValueError(f"a link tag is at most {MAX_TAG_BYTES} bytes: {tag!r}")
    return raw


# Unsigned LEB128 varints: a message row id of a million takes 3 bytes, not 8, and every
# byte saved is 1.6 characters less in each link.
def _uvarint(number: int) -> bytes:
    if number < 0:
        raise ValueError("negative")
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read(payload: bytes | None, count: int) -> tuple[tuple[int, ...], bytes] | None:
    """`count` varints from the front of a verified payload, and the bytes after them."""
    if payload is None:
        return None
    numbers: list[int] = []
    position = 0
    for _ in range(count):
        number = shift = 0
        while True:
            if position >= len(payload) or shift > 63:
                return None
            byte = payload[position]
            position += 1
            number |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        numbers.append(number)
    return tuple(numbers), payload[position:]
