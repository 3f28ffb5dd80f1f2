"""SPF record syntax, pure: choose the record (RFC 7208 4.5), parse it into terms (4.6, 5, 6,
ABNF in section 12) and expand macros (section 7). No DNS here: `mailer.spf` does the lookups.

Anything that breaks the grammar raises `SPFSyntaxError`, which check_host() turns into the
result "permerror" (RFC 7208 4.6: syntax errors anywhere in the record MUST be detected).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from urllib.parse import quote

from mailer.errors import MailerError

VERSION = "v=spf1"
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}  # RFC 7208 4.6.2
MAX_DOMAIN_LENGTH = 253  # RFC 7208 7.3: expanded names are cut from the left to fit
_DOMAIN_LETTERS = frozenset("slodiphv")  # RFC 7208 7.2
_EXPLANATION_LETTERS = _DOMAIN_LETTERS | frozenset("crt")  # 7.2: c, r, t only in exp text
_DELIMITERS = ".-+,/_="  # RFC 7208 7.1 delimiter
_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.DOTALL)  # 4.6.1: name "=" ...
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(?::(.*?))?(?:/([0-9]+))?(?://([0-9]+))?", re.DOTALL)  # 5.3, 5.4
_IP_NETWORK = re.compile(r":([^/]*)(?:/([0-9]+))?", re.DOTALL)  # 5.6
# RFC 7208 7.1: toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9]")


class SPFSyntaxError(MailerError):
    """An SPF record, term or macro that breaks the RFC 7208 grammar (result: permerror)."""


@dataclass(frozen=True)
class Macro:
    """One macro-expand: %{letter digits r delimiters}, or an escape when letter is %, _ or -."""

    letter: str
    keep: int | None = None  # the DIGIT transformer: how many right-hand parts to keep
    reverse: bool = False
    delimiters: str = "."


@dataclass(frozen=True)
class Mechanism:
    kind: str  # all, include, a, mx, ptr, ip4, ip6 or exists
    result: str  # what a match yields: pass, fail, softfail or neutral
    text: str  # the term as written, without its qualifier
    domain_spec: str | None = None
    cidr4: int = 32
    cidr6: int = 128
    network: IPv4Network | IPv6Network | None = None  # ip4 and ip6 only


@dataclass(frozen=True)
class Record:
    mechanisms: tuple[Mechanism, ...]
    redirect: str | None = None  # domain-spec of redirect=
    explanation: str | None = None  # domain-spec of exp=


@dataclass(frozen=True)
class MacroContext:
    """The values macros expand to (RFC 7208 7.2), for one check_host() call."""

    sender: str
    local_part: str
    sender_domain: str
    domain: str
    ip: IPv4Address | IPv6Address
    helo: str = ""
    validated_name: str = "unknown"  # %{p}: found by DNS before expanding, see mailer.spf
    receiver: str = "unknown"
    timestamp: int = 0


def is_spf_record(text: str) -> bool:
    """RFC 7208 4.5: a record is SPF when it starts with "v=spf1" then a space or its end."""
    head = text[: len(VERSION) + 1].lower()
    return head == VERSION or head == VERSION + " "


def parse_macro_string(text: str, *, explanation: bool = False) -> tuple[str | Macro, ...]:
    """Split a macro-string (7.1) into literal runs and macros; explanation text may also hold
    spaces and the letters c, r and t."""
    letters = _EXPLANATION_LETTERS if explanation else _DOMAIN_LETTERS
    tokens: list[str | Macro] = []
    literal: list[str] = []
    at = 0
    while at < len(text):
        char = text[at]
        if char == "%":
            after = text[at + 1 : at + 2]
            if after in ("%", "_", "-"):
                macro = Macro(after)
                at += 2
            elif (match := _MACRO.match(text, at)) is not None:
                letter, digits, reverse, delimiters = match.groups()
                if letter.lower() not in letters:
                    raise SPFSyntaxError(f"macro letter {letter!r} is not allowed here: {text!r}")
                keep = None
                if digits:
                    significant = digits.lstrip("0")
                    if not significant:
                        raise SPFSyntaxError(f"macro transformer must keep at least one part: {text!r}")  # 7.3
                    # a name has at most 127 labels (RFC 1035), so any larger count keeps them all
                    keep = int(significant) if len(significant) < 4 else 1000
                macro = Macro(letter, keep, bool(reverse), delimiters or ".")
                at = match.end()
            else:
                raise SPFSyntaxError(f"'%' must start %{{...}}, %%, %_ or %-: {text!r}")  # 7.1
            if literal:
                tokens.append("".join(literal))
                literal = []
            tokens.append(macro)
            continue
        # macro-literal = %x21-24 / %x26-7E; explain-string also allows SP (7.1, 6.2)
        if not ("\x21" <= char <= "\x7e" or (explanation and char == " ")):
            raise SPFSyntaxError(f"character {char!r} is not allowed in {text!r}")
        literal.append(char)
        at += 1
    if literal:
        tokens.append("".join(literal))
    return tuple(tokens)


def check_domain_spec(text: str) -> None:
    """RFC 7208 7.1: domain-spec = macro-string domain-end, where domain-end is
    "." toplabel ["."] or a macro-expand; checked before expansion, never after."""
    tokens = parse_macro_string(text)
    if not tokens:
        raise SPFSyntaxError("empty domain-spec")
    last = tokens[-1]
    if isinstance(last, Macro):
        return
    tail = last[:-1] if last.endswith(".") else last
    dot = tail.rfind(".")
    if dot < 0 or not _TOPLABEL.fullmatch(tail[dot + 1 :]):
        raise SPFSyntaxError(f"domain-spec {text!r} must end in a macro or a valid top-level label")


def _cidr(digits: str | None, maximum: int, default: int) -> int:
    if digits is None:
        return default
    # ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT): no leading zeros (5.6)
    if (digits.startswith("0") and digits != "0") or len(digits) > 3 or int(digits) > maximum:
        raise SPFSyntaxError(f"invalid CIDR length /{digits} (at most /{maximum})")
    return int(digits)


def parse_mechanism(term: str) -> Mechanism:
    """One directive (4.6.1): [qualifier] mechanism, checked against the grammar of section 5."""
    match = _MECHANISM.fullmatch(term)
    if match is None:
        raise SPFSyntaxError(f"unknown term {term!r}")
    qualifier, name, rest = match.groups()
    kind, text, result = name.lower(), term[len(qualifier) :], QUALIFIERS[qualifier or "+"]
    if kind == "all" and not rest:
        return Mechanism(kind, result, text)
    if kind in ("include", "exists", "ptr") and (rest.startswith(":") or (kind == "ptr" and not rest)):
        spec = rest[1:] if rest else None
        if spec is not None:
            check_domain_spec(spec)
        return Mechanism(kind, result, text, spec)
    if kind in ("a", "mx") and (cidrs := _DUAL_CIDR.fullmatch(rest)) is not None:
        spec, cidr4, cidr6 = cidrs.groups()
        if spec is not None:
            check_domain_spec(spec)
        return Mechanism(kind, result, text, spec, _cidr(cidr4, 32, 32), _cidr(cidr6, 128, 128))
    if kind in ("ip4", "ip6") and (parts := _IP_NETWORK.fullmatch(rest)) is not None:
        address, length = parts.groups()
        bits = 32 if kind == "ip4" else 128
        try:
            if "%" in address:  # ipaddress would take it as an IPv6 scope id
                raise ValueError(address)
            network = ip_network(f"{address}/{_cidr(length, bits, bits)}", strict=False)
        except ValueError:
            raise SPFSyntaxError(f"invalid {kind} network in {term!r}") from None
        if network.version != (4 if kind == "ip4" else 6):
            raise SPFSyntaxError(f"{kind} network of the wrong family in {term!r}")
        return Mechanism(kind, result, text, network=network)
    if kind in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
        raise SPFSyntaxError(f"malformed {kind} mechanism {term!r}")
    raise SPFSyntaxError(f"unknown mechanism {name!r} in {term!r}")


def parse_record(text: str) -> Record:
    """Parse a whole record; every term is checked before anything is evaluated (4.6)."""
    if not is_spf_record(text):
        raise SPFSyntaxError(f"not an SPF record: {text[:40]!r}")
    if not text.isascii():
        raise SPFSyntaxError("SPF records are 7-bit ASCII")  # RFC 7208 3.1
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, str] = {}
    # 4.6.1: terms are separated by one or more spaces, and only by spaces
    for term in text[len(VERSION) :].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier is None:
            mechanisms.append(parse_mechanism(term))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name in ("redirect", "exp"):
            if name in modifiers:
                raise SPFSyntaxError(f"{name}= appears more than once")  # RFC 7208 6
            check_domain_spec(value)
            modifiers[name] = value
        else:
            parse_macro_string(value)  # unknown modifiers are ignored but must parse (6)
    return Record(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


def _letter_value(letter: str, context: MacroContext) -> str:
    ip = context.ip
    if letter == "i":
        if ip.version == 4:
            return str(ip)
        # 7.3: dot-separated nibbles; upper case as the openspf suite expects (DNS ignores case)
        return ".".join(ip.exploded.replace(":", "").upper())
    values = {
        "s": context.sender,
        "l": context.local_part,
        "o": context.sender_domain,
        "d": context.domain,
        "p": context.validated_name,
        "v": "in-addr" if ip.version == 4 else "ip6",
        "h": context.helo,
        "c": str(ip),  # RFC 5952 compressed form for IPv6
        "r": context.receiver,
        "t": str(context.timestamp),
    }
    return values[letter]


def _expand_macro(macro: Macro, context: MacroContext) -> str:
    if macro.letter in ("%", "_", "-"):
        return {"%": "%", "_": " ", "-": "%20"}[macro.letter]
    value = _letter_value(macro.letter.lower(), context)
    if macro.keep is not None or macro.reverse or macro.delimiters != ".":
        parts = re.split("[" + re.escape(macro.delimiters) + "]", value)
        if macro.reverse:
            parts.reverse()
        if macro.keep is not None:
            parts = parts[-macro.keep :]
        value = ".".join(parts)
    if macro.letter.isupper():
        return quote(value, safe="")  # 7.3: upper-case macros are URL-escaped (RFC 3986 unreserved kept)
    return value


def expand(text: str, context: MacroContext, *, explanation: bool = False) -> str:
    """Expand every macro in `text` (RFC 7208 7.3)."""
    tokens = parse_macro_string(text, explanation=explanation)
    return "".join(token if isinstance(token, str) else _expand_macro(token, context) for token in tokens)


def uses_letter(text: str, letter: str) -> bool:
    """Whether `text` holds a macro of `letter` (lets the caller fetch %{p} only when needed)."""
    return any(isinstance(token, Macro) and token.letter.lower() == letter for token in parse_macro_string(text, explanation=True))


def truncate_domain(name: str) -> str:
    """RFC 7208 7.3: drop labels from the left until the name is at most 253 characters."""
    name = name[:-1] if name.endswith(".") else name
    while len(name) > MAX_DOMAIN_LENGTH and "." in name:
        name = name.split(".", 1)[1]
    return name
