"""API keys: random bearer tokens, shown once when made and stored only as a SHA-256 hash.

A key is `mk_` and 256 random bits (from `secrets`, PEP 506) in URL-safe base64. The store
keeps sha256(key) and finds a key by that hash through an index. That lookup is safe against
timing attacks without a constant-time comparison: what an attacker could learn from timing
is how much of the *hash* of their guess matches a stored hash, and with a preimage-resistant
hash that tells nothing about any key (the argument GitHub and Stripe tokens rest on). A slow
salted hash (bcrypt, argon2) protects guessable passwords; 256 random bits are not guessable,
so a plain hash costs nothing per request and loses nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "mk_"  # says what a leaked string is (secret scanners key on prefixes)
KEY_BYTES = 32  # 256 bits
MAX_KEY_LENGTH = 256  # far above a real key; longer tokens are refused before hashing
# RFC 6750 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def new_api_key() -> tuple[str, bytes]:
    """A new key (to show once) and the hash to store."""
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    return key, key_hash(key)


def key_hash(key: str) -> bytes:
    """What the store keeps of `key` and looks it up by."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750 2.1), or None."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.casefold() != "bearer" or len(token) > MAX_KEY_LENGTH or not _B64TOKEN.fullmatch(token):
        return None
    return token
