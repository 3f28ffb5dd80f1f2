"""DMARC (RFC 7489) as pure functions: the record, the organizational domain, alignment.

A receiver applies DMARC to the domain of the From header. It looks for a record at
`_dmarc.FROM-DOMAIN`, then at `_dmarc.ORGANIZATIONAL-DOMAIN` (RFC 7489 6.6.3), and a message
passes when SPF or DKIM passes for a domain *aligned* with the From domain (3.1). This module
decides all of that over plain strings; `mailer.domaincheck` does the DNS look-ups.

The organizational domain comes from the Public Suffix List (RFC 7489 3.2), bundled offline by
the `publicsuffixlist` package: the check never fetches the list at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from publicsuffixlist import PublicSuffixList

Policy = Literal["none", "quarantine", "reject"]
AlignmentMode = Literal["r", "s"]

POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")
MODES: tuple[AlignmentMode, ...] = ("r", "s")
DEFAULT_PCT = 100  # RFC 7489 6.3: pct defaults to 100
DEFAULT_REPORT_INTERVAL = 86400  # RFC 7489 6.3: ri defaults to 86400 seconds (one day)

# RFC 7489 6.4: dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ], the URI per RFC 3986
# (a scheme, then anything but the comma that separates URIs and whitespace).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?")
# RFC 7489 6.3: fo = 0 / 1 / d / s, several joined by ":".
_FAILURE_OPTIONS = re.compile(r"[01ds](?::[01ds])*", re.IGNORECASE)
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # RFC 7489 6.4 via RFC 6376 3.2 tag-name


class InvalidDMARCRecord(ValueError):
    """A TXT record at _dmarc that is not a valid DMARC record, and why."""


@dataclass(frozen=True)
class DMARCRecord:
    """A parsed DMARC record; tags that were absent hold their RFC 7489 6.3 defaults."""

    p: Policy
    sp: Policy | None = None  # None: subdomains get p (RFC 7489 6.3)
    pct: int = DEFAULT_PCT
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    adkim: AlignmentMode = "r"
    aspf: AlignmentMode = "r"
    fo: str = "0"
    ri: int = DEFAULT_REPORT_INTERVAL
    # What a receiver tolerates but an operator should know (ignored unknown tags, a p= the
    # receiver had to assume); they do not make the record invalid.
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def subdomain_policy(self) -> Policy:
        return self.sp or self.p


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT string claims to be a DMARC record (RFC 7489 6.6.3 step 4's filter)."""
    first = text.split(";", 1)[0]
    name, equals, value = first.partition("=")
    # RFC 7489 6.4: "v" is case-insensitive ABNF, "DMARC1" is given in %x codes: exact.
    return bool(equals) and name.strip(" \t").lower() == "v" and value.strip(" \t") == "DMARC1"


def select_record(texts: list[str]) -> str | None:
    """The one DMARC record among a name's TXT strings, None when there is none.

    RFC 7489 6.6.3 step 5: several DMARC records at one name mean no policy at all.
    """
    records = [text for text in texts if is_dmarc_record(text)]
    if len(records) > 1:
        raise InvalidDMARCRecord(f"{len(records)} DMARC records at one name; receivers ignore them all")
    return records[0] if records else None


def parse_record(text: str) -> DMARCRecord:
    """Parse a DMARC record (RFC 7489 6.3/6.4), or raise InvalidDMARCRecord naming the problem."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip(" \t")
        if not part:
            continue  # RFC 7489 6.4 allows a trailing ";" and empty parts
        name, equals, value = part.partition("=")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not equals or not _TAG_NAME.fullmatch(name):
            raise InvalidDMARCRecord(f"{part!r} is not a tag=value pair")
        name = name.lower()
        if not tags and (name != "v" or value != "DMARC1"):
            raise InvalidDMARCRecord('the record must begin with "v=DMARC1" (RFC 7489 6.3)')
        if name in tags:
            raise InvalidDMARCRecord(f"the {name}= tag appears twice")
        tags[name] = value
    if "v" not in tags:
        raise InvalidDMARCRecord('the record must begin with "v=DMARC1" (RFC 7489 6.3)')
    notes: list[str] = []
    rua = _uris(tags, "rua")
    ruf = _uris(tags, "ruf")
    if "p" in tags:
        p = _policy(tags, "p")
    elif rua:
        # RFC 7489 6.6.3: a record without p= but with a valid rua= is read as p=none.
        p = "none"
        notes.append("no p= tag: receivers read the record as p=none (RFC 7489 6.6.3)")
    else:
        raise InvalidDMARCRecord("the p= tag is required (RFC 7489 6.3)")
    sp = _policy(tags, "sp") if "sp" in tags else None
    pct = _integer(tags, "pct", DEFAULT_PCT)
    if not 0 <= pct <= 100:
        raise InvalidDMARCRecord(f"pct={pct} is not a percentage from 0 to 100")
    fo = tags.get("fo", "0")
    if not _FAILURE_OPTIONS.fullmatch(fo):
        raise InvalidDMARCRecord(f"fo={fo!r} is not a list of 0, 1, d and s joined by ':'")
    unknown = sorted(set(tags) - {"v", "p", "sp", "pct", "rua", "ruf", "adkim", "aspf", "fo", "ri", "rf"})
    if unknown:
        notes.append("unknown tags ignored (RFC 7489 6.3): " + ", ".join(unknown))
    return DMARCRecord(
        p=p,
        sp=sp,
        pct=pct,
        rua=rua,
        ruf=ruf,
        adkim=_mode(tags, "adkim"),
        aspf=_mode(tags, "aspf"),
        fo=fo.lower(),
        ri=_integer(tags, "ri", DEFAULT_REPORT_INTERVAL),
        notes=tuple(notes),
    )


def format_record(record: DMARCRecord) -> str:
    """The record as TXT text, naming only the tags that differ from their defaults."""
    parts = ["v=DMARC1", f"p={record.p}"]
    if record.sp is not None:
        parts.append(f"sp={record.sp}")
    if record.pct != DEFAULT_PCT:
        parts.append(f"pct={record.pct}")
    if record.rua:
        parts.append("rua=" + ",".join(record.rua))
    if record.ruf:
        parts.append("ruf=" + ",".join(record.ruf))
    if record.adkim != "r":
        parts.append(f"adkim={record.adkim}")
    if record.aspf != "r":
        parts.append(f"aspf={record.aspf}")
    if record.fo != "0":
        parts.append(f"fo={record.fo}")
    if record.ri != DEFAULT_REPORT_INTERVAL:
        parts.append(f"ri={record.ri}")
    return "; ".join(parts)


def _policy(tags: dict[str, str], name: str) -> Policy:
    value = tags[name].lower()
    for policy in POLICIES:
        if value == policy:
            return policy
    raise InvalidDMARCRecord(f"{name}={tags[name]!r} is not none, quarantine or reject")


def _mode(tags: dict[str, str], name: str) -> AlignmentMode:
    value = tags.get(name, "r").lower()
    for mode in MODES:
        if value == mode:
            return mode
    raise InvalidDMARCRecord(f"{name}={tags[name]!r} is not r (relaxed) or s (strict)")


def _integer(tags: dict[str, str], name: str, default: int) -> int:
    value = tags.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit():
        raise InvalidDMARCRecord(f"{name}={value!r} is not a whole number")
    return int(value)


def _uris(tags: dict[str, str], name: str) -> tuple[str, ...]:
    value = tags.get(name)
    if value is None:
        return ()
    uris = tuple(uri.strip(" \t") for uri in value.split(","))
    for uri in uris:
        if not _URI.fullmatch(uri):
            raise InvalidDMARCRecord(f"{name}= holds {uri!r}, which is not a URI such as mailto:dmarc@example.com")
    return uris


# -- organizational domain and alignment -----------------------------------------------------


@cache
def _public_suffixes() -> PublicSuffixList:
    # Built once: parsing the bundled list takes tens of milliseconds.
    return PublicSuffixList()


def normalize(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def organizational_domain(domain: str) -> str:
    """The registered domain under its public suffix (RFC 7489 3.2), e.g. mail.acme.co.uk -> acme.co.uk.

    A name that is itself a public suffix is its own organizational domain. Suffixes the list
    does not know count as public, as RFC 7489 3.2's algorithm treats unlisted TLDs.
    """
    name = normalize(domain)
    return _public_suffixes().privatesuffix(name) or name


def aligned(from_domain: str, identifier_domain: str, mode: AlignmentMode) -> bool:
    """Whether an authenticated domain (DKIM d=, SPF MAIL FROM) aligns with the From domain.

    RFC 7489 3.1.1/3.1.2: strict means identical names; relaxed means the same organizational domain.
    """
    if mode == "s":
        return normalize(from_domain) == normalize(identifier_domain)
    return organizational_domain(from_domain) == organizational_domain(identifier_domain)


@dataclass(frozen=True)
class Alignment:
    """Which of the two identifiers could carry a DMARC pass for the From domain."""

    dkim: bool
    spf: bool

    @property
    def possible(self) -> bool:
        return self.dkim or self.spf


def alignment(
    record: DMARCRecord | None, *, from_domain: str, dkim_domain: str | None, spf_domain: str | None
) -> Alignment:
    """Alignment of the DKIM d= and the SPF (return-path) domain under the record's adkim/aspf.

    Without a record the RFC defaults apply (relaxed, RFC 7489 6.3), which is what receivers
    will use the day the record is published without those tags. A None identifier (no DKIM
    signing, no return path) can never align.
    """
    adkim: AlignmentMode = record.adkim if record else "r"
    aspf: AlignmentMode = record.aspf if record else "r"
    return Alignment(
        dkim=dkim_domain is not None and aligned(from_domain, dkim_domain, adkim),
        spf=spf_domain is not None and aligned(from_domain, spf_domain, aspf),
    )
