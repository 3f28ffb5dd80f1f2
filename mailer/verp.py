"""VERP addresses: the envelope sender that names its message, so a bounce maps without guessing.

Every message goes out with `MAIL FROM:<bounces+TOKEN@bounce.example>`, TOKEN a signed token
for the message's row. Whatever a remote MTA does to the bounce, its envelope recipient (or
the Return-Path quoted in the DSN) names the message; a forged or mangled token names none.
"""

from __future__ import annotations

from mailer.tokens import Signer

PURPOSE = "verp"


def verp_address(signer: Signer, *, message: int, local_part: str, domain: str) -> str:
    return f"{local_part}+{signer.sign_int(PURPOSE, message)}@{domain}"


def message_of(signer: Signer, address: str, *, local_part: str, domain: str) -> int | None:
    """The message row a VERP address names, or None when it is not a genuine one of ours."""
    local, at, address_domain = address.strip().strip("<>").rpartition("@")
    if not at or address_domain.lower() != domain.lower():
        return None
    prefix, plus, token = local.partition("+")
    if not plus or prefix.lower() != local_part.lower():
        return None
    return signer.verify_int(PURPOSE, token)
