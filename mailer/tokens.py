"""Compact signed tokens: HMAC-SHA256 under the workspace secret, with a key id for rotation.

A token is `base32(key id ‖ payload ‖ tag)`, lower case and unpadded, so it survives in an
email local part (receivers and bounce generators may change its case) and in a URL path.
The tag is HMAC-SHA256 over the purpose and the payload, truncated to 80 bits (NIST SP
800-107 5.3.4: a truncated HMAC tag of λ bits gives λ bits of forgery resistance; 80 is
plenty for links whose worst forgery is a fake open or bounce). The purpose binds a token to
its use: a VERP token is no click token.

The key file holds one key a line, the current one first; older lines keep verifying links
and bounce addresses already sent. The key id is the first byte of SHA-256 of the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

TAG_BYTES = 10  # 80-bit tags, see the module docstring


class Signer:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._current = keys[0]
        self._by_id: dict[int, list[bytes]] = {}
        for key in keys:
            self._by_id.setdefault(_key_id(key), []).append(key)

    def sign(self, purpose: str, payload: bytes, *, associated: bytes = b"") -> str:
        """A token carrying `payload`; the tag also covers `associated`, which travels apart.

        A click token signs its destination URL as associated data: the URL stays readable
        in the link's query string, and a swapped URL no longer verifies.
        """
        body = bytes([_key_id(self._current)]) + payload
        return _encode(body + _tag(self._current, purpose, payload, associated))

    def verify(self, purpose: str, token: str, *, associated: bytes = b"") -> bytes | None:
        """The payload of a genuine token for `purpose`, or None for anything else."""
        raw = _decode(token)
        if raw is None or len(raw) < 1 + TAG_BYTES:
            return None
        key_id, payload, tag = raw[0], raw[1:-TAG_BYTES], raw[-TAG_BYTES:]
        for key in self._by_id.get(key_id, ()):
            if hmac.compare_digest(tag, _tag(key, purpose, payload, associated)):
                return payload
        return None

    def sign_int(self, purpose: str, number: int) -> str:
        return self.sign(purpose, number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big"))

    def verify_int(self, purpose: str, token: str) -> int | None:
        payload = self.verify(purpose, token)
        return int.from_bytes(payload, "big") if payload else None


def _key_id(key: bytes) -> int:
    return hashlib.sha256(key).digest()[0]


def _tag(key: bytes, purpose: str, payload: bytes, associated: bytes = b"") -> bytes:
    # The payload's length is fixed by the token, so payload ‖ associated is unambiguous.
    message = purpose.encode() + b"\x00" + len(payload).to_bytes(2, "big") + payload + associated
    return hmac.new(key, message, hashlib.sha256).digest()[:TAG_BYTES]


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _decode(token: str) -> bytes | None:
    if not token or len(token) > 200 or not token.isascii() or not token.isalnum():
        return None
    padded = token.upper() + "=" * (-len(token) % 8)
    try:
        raw = base64.b32decode(padded)
    except ValueError:
        return None
    # One token, one spelling: the last character's unused bits must be zero.
    return raw if _encode(raw) == token.lower() else None
