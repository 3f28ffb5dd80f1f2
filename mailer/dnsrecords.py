"""The DNS records a sending domain publishes, as pure functions over text.

`mailer check-domain` reads DKIM key records (RFC 6376 3.6.1) and, for what is missing or
wrong, writes the exact record to publish in zone-file form: SPF records built from the
sending IP and the published record (RFC 7208), any TXT value split into strings. Reading and
writing live here; `mailer.domaincheck` asks DNS and judges.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

# RFC 1035 3.3: a TXT <character-string> holds at most 255 octets; longer values are
# published as several strings of one record, which receivers join (RFC 7208 3.3, RFC 6376
# 3.6.2.2).
TXT_STRING_OCTETS = 255

_WSP = re.compile(r"[ \t\r\n]+")  # RFC 6376 3.2: FWS may appear around and inside tag values
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # RFC 6376 3.2 tag-name


def zone_txt(name: str, value: str) -> str:
    """`name. TXT "value"` as a zone file line, the value split into 255-octet strings."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    chunks = [escaped[start : start + TXT_STRING_OCTETS] for start in range(0, len(escaped), TXT_STRING_OCTETS)]
    # A chunk must not end inside an escape ("\" then the escaped character).
    for index in range(len(chunks) - 1):
        trailing = len(chunks[index]) - len(chunks[index].rstrip("\\"))
        if trailing % 2:
            chunks[index], chunks[index + 1] = chunks[index][:-1], "\\" + chunks[index + 1]
    return f"{name.rstrip('.')}. TXT " + " ".join(f'"{chunk}"' for chunk in chunks or [""])


# -- SPF -------------------------------------------------------------------------------------


def ip_mechanism(ip: str) -> str:
    """The SPF mechanism that authorizes exactly this address (RFC 7208 5.6)."""
    address = ipaddress.ip_address(ip)
    return f"ip{address.version}:{address.compressed}"


def spf_record_for(ip: str, existing: list[str], *, drop: str = "") -> str:
    """An SPF record that passes `ip`, keeping what the published record(s) already allow.

    The IP's mechanism goes first so it matches before any include or lookup runs (RFC 7208
    4.6.2: evaluation stops at the first match). `drop` names a term to remove, such as an
    include of a domain with no SPF record, which makes the whole record a permerror (RFC
    7208 5.2). Several published records (a permerror by RFC 7208 4.5) are merged into one.
    No record yet gives `v=spf1 IP ~all`: softfail for the rest while the sender is new; a
    published record keeps its own ending (or none, which means neutral: RFC 7208 4.7).
    """
    mechanism = ip_mechanism(ip)
    terms: list[str] = []
    final = ""
    for record in existing:
        for term in record.split()[1:]:
            lowered = term.lower()
            if lowered == drop.lower() or lowered == mechanism or term in terms:
                continue
            if lowered.lstrip("+-~?") == "all" or lowered.startswith("redirect="):
                final = final or term  # RFC 7208 6.1: redirect is ignored when "all" is present
                continue
            terms.append(term)
    if not existing:
        final = "~all"
    return " ".join(["v=spf1", mechanism, *terms, *([final] if final else [])])


# -- DKIM ------------------------------------------------------------------------------------


class InvalidDKIMRecord(ValueError):
    """A TXT record at <selector>._domainkey that is not a usable DKIM key record, and why."""


@dataclass(frozen=True)
class DKIMKeyRecord:
    """A parsed DKIM key record (RFC 6376 3.6.1); `public_key` is None when revoked (empty p=)."""

    key_type: str  # "rsa" or "ed25519" (RFC 8463)
    public_key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey | None
    testing: bool = False  # t=y: verifiers treat signed mail as unsigned (RFC 6376 3.6.1)

    @property
    def revoked(self) -> bool:
        return self.public_key is None

    @property
    def bits(self) -> int:
        """The key's size: RSA modulus bits, or 256 for Ed25519 (RFC 8032 5.1.5)."""
        if isinstance(self.public_key, rsa.RSAPublicKey):
            return self.public_key.key_size
        return 256 if self.public_key is not None else 0


def parse_dkim_key_record(text: str) -> DKIMKeyRecord:
    """Parse a DKIM key record, or raise InvalidDKIMRecord naming the problem.

    RFC 6376 3.6.1: v= is optional but first when present; k= defaults to rsa; p= is
    required and empty means revoked; s= must allow email; unknown tags are ignored.
    RFC 6376 3.2: a tag appearing twice makes the record invalid.
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip(" \t\r\n")
        if not part:
            continue
        name, equals, value = part.partition("=")
        name, value = name.strip(" \t\r\n"), value.strip(" \t\r\n")
        if not equals or not _TAG_NAME.fullmatch(name):
            raise InvalidDKIMRecord(f"{part!r} is not a tag=value pair")
        if name in tags:
            raise InvalidDKIMRecord(f"the {name}= tag appears twice")
        if name == "v" and (tags or value != "DKIM1"):
            raise InvalidDKIMRecord('v= must be "DKIM1" and come first (RFC 6376 3.6.1)')
        tags[name] = value
    if "p" not in tags:
        raise InvalidDKIMRecord("no p= tag: the record has no public key (RFC 6376 3.6.1)")
    services = {service.strip() for service in tags.get("s", "*").split(":")}
    if not services & {"*", "email"}:
        raise InvalidDKIMRecord(f"s={tags['s']} does not allow the key for email (RFC 6376 3.6.1)")
    key_type = tags.get("k", "rsa")
    if key_type not in ("rsa", "ed25519"):
        raise InvalidDKIMRecord(f"k={key_type} is not rsa or ed25519 (RFC 6376 3.6.1, RFC 8463)")
    testing = "y" in tags.get("t", "").split(":")
    encoded = _WSP.sub("", tags["p"])
    if not encoded:
        return DKIMKeyRecord(key_type=key_type, public_key=None, testing=testing)
    try:
        octets = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDKIMRecord("p= is not base64") from None
    if key_type == "ed25519":
        # RFC 8463 4: the 32 raw octets of the Ed25519 public key.
        if len(octets) != 32:
            raise InvalidDKIMRecord(f"p= holds {len(octets)} octets; an Ed25519 key has 32 (RFC 8463 4)")
        return DKIMKeyRecord(key_type=key_type, public_key=ed25519.Ed25519PublicKey.from_public_bytes(octets), testing=testing)
    try:
        # SubjectPublicKeyInfo, as verifiers read it (RFC 6376 errata 3017); a bare PKCS#1
        # RSAPublicKey is accepted too, as OpenSSL does.
        public_key = serialization.load_der_public_key(octets)
    except (ValueError, TypeError):
        raise InvalidDKIMRecord("p= is not a DER-encoded RSA public key") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise InvalidDKIMRecord("k=rsa but p= holds another kind of key")
    return DKIMKeyRecord(key_type=key_type, public_key=public_key, testing=testing)


def same_public_key(
    first: rsa.RSAPublicKey | ed25519.Ed25519PublicKey, second: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
) -> bool:
    """Whether two public keys are the same key (compared in one canonical encoding)."""
    if isinstance(first, rsa.RSAPublicKey) and isinstance(second, rsa.RSAPublicKey):
        return first.public_numbers() == second.public_numbers()
    if isinstance(first, ed25519.Ed25519PublicKey) and isinstance(second, ed25519.Ed25519PublicKey):
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return first.public_bytes(*raw) == second.public_bytes(*raw)
    return False
