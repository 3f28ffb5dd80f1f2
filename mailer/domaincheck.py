"""Is a sending domain ready? SPF, DKIM, DMARC, MX and reverse DNS against the bulk-sender rules.

`check_domain` asks DNS (dnspython's async resolver, through the resolver it is given) and
returns a `DomainReport`: one `Finding` per check, each failing one with the exact record to
publish, and the verdict of `mailer.readiness.verdict`, a pure function over the findings.
`mailer check-domain` prints it; the daemon runs the same checks at start.

"Hard" failures are those that make the daemon refuse to send from the domain unless the
operator overrides it: every message would fail authentication or be unverifiable, which
hurts the domain's reputation with each one sent. They are an SPF fail or permerror for the
sending IP, a DKIM key record that is missing, invalid, revoked, too short or not the
configured key (when a selector is configured), an invalid DMARC record, and identifiers that
can never align with the From domain.

A missing DMARC record is *not* hard, though it fails readiness (Gmail and Yahoo require p=none
at least from bulk senders): without a record, SPF and DKIM still pass and receivers apply no
DMARC policy, so nothing sent is rejected for it; senders below the bulk threshold (Gmail: 5,000
messages a day) are not required to publish one; and an operator may need to send before the
DNS change is live. An invalid record is hard because the operator meant to publish one and
receivers silently ignore it. A temporary DNS error is never hard: nothing is known yet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
import dns.reversename
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailer.dkim import SIGNED_HEADERS, PrivateKey, load_private_key, public_key_record
from mailer.dmarc import DMARCRecord, InvalidDMARCRecord, alignment, organizational_domain, parse_record, select_record
from mailer.dnsrecords import InvalidDKIMRecord, parse_dkim_key_record, same_public_key, spf_record_for, zone_txt
from mailer.errors import UserError
from mailer.readiness import BULK_SENDER_RULES, DomainReport, Finding, Status, format_report, verdict
from mailer.spf import check_host
from mailer.spfrecord import is_spf_record

__all__ = [
    "BULK_SENDER_RULES", "DomainReport", "Finding", "check_domain", "format_report", "make_resolver", "require_answers", "verdict",
]

# -- DNS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """One DNS question's records as text; `error` set means unknown (timeout, SERVFAIL)."""

    records: tuple[str, ...] = ()
    error: str = ""


async def _ask(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> _Answer:
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
        return _Answer()  # a name DNS cannot carry (from a PTR record, say) has no records either
    except dns.exception.Timeout:
        return _Answer(error=f"no answer in time for {name} {rdtype}")
    except dns.resolver.NoNameservers:
        return _Answer(error=f"server failure for {name} {rdtype}")
    except dns.exception.DNSException as error:
        return _Answer(error=f"{name} {rdtype}: {error}")
    records = []
    for rdata in answer:
        if rdtype == "TXT":
            records.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        elif rdtype == "MX":
            exchange = "." if rdata.exchange == dns.name.root else rdata.exchange.to_text(omit_final_dot=True)
            records.append(f"{rdata.preference} {exchange}")
        elif rdtype == "PTR":
            records.append(rdata.target.to_text(omit_final_dot=True))
        else:
            records.append(rdata.to_text())
    return _Answer(tuple(records))


def _temporary(check: str, answer: _Answer) -> Finding:
    return Finding(check, "fail", f"temporary DNS error ({answer.error}); not known, try again")


# -- the checks ------------------------------------------------------------------------------


async def _check_spf(resolver: dns.asyncresolver.Resolver, domain: str, ip: str | None, helo: str) -> Finding:
    txt = await _ask(resolver, domain, "TXT")
    published = [text for text in txt.records if is_spf_record(text)]
    shown = " + ".join(repr(text) for text in published) or "no SPF record"
    if ip is None:
        return Finding("spf", "fail", f"not evaluated without the sending IP (--ip); {domain} has {shown}")
    result = await check_host(ip, domain, f"postmaster@{domain}", resolver=resolver, helo=helo)
    about = f"{ip} for {domain}: {result.result}"
    if result.mechanism:
        about += f" ({result.mechanism})"
    if result.result == "pass":
        return Finding("spf", "pass", about)
    if result.result == "temperror":
        return Finding("spf", "fail", f"{about}: a temporary DNS error, not known yet; try again")
    # A term that makes the record a permerror (an include of a domain without SPF, a
    # syntax error) is left out of the record to publish.
    drop = result.mechanism.split()[0] if result.result == "permerror" and result.mechanism else ""
    reason = f"; {result.explanation}" if result.explanation else ""
    fix = zone_txt(domain, spf_record_for(ip, published, drop=drop))
    return Finding("spf", "fail", f"{about}{reason}; published: {shown}", fix, hard=result.result in ("fail", "permerror"))


async def _check_dkim(
    resolver: dns.asyncresolver.Resolver,
    domain: str,
    selector: str | None,
    key: PrivateKey | None,
    key_file: Path | None,
    *,
    check: str = "dkim",
    key_type: str | None = None,
) -> Finding:
    """The key record at the selector; `key_type` ("rsa", "ed25519") when it must be of that type."""
    if selector is None:
        return Finding(
            "dkim", "fail", "no DKIM selector configured: messages go out unsigned",
            "set [dkim] private_key_file in mailer.toml, then run"
            f" `mailer check-domain {domain} --selector mailer --dkim-key FILE` for the record to publish",
        )  # fmt: skip
    name = f"{selector}._domainkey.{domain}"
    if key is not None:
        publish = zone_txt(name, public_key_record(key))
    else:
        kind = key_type or "rsa"
        publish = f'{name}. TXT "v=DKIM1; k={kind}; p=<public key>"  (pass the key file for the exact record)'
    answer = await _ask(resolver, name, "TXT")
    if answer.error:
        return _temporary(check, answer)
    if not answer.records:
        return Finding(check, "fail", f"no key record at {name}", publish, hard=True)
    if len(answer.records) > 1:
        # RFC 6376 3.6.2.2: with several TXT records at the name, verification results are undefined.
        return Finding(check, "fail", f"{len(answer.records)} TXT records at {name}; publish exactly one", publish, hard=True)
    try:
        record = parse_dkim_key_record(answer.records[0])
    except InvalidDKIMRecord as error:
        return Finding(check, "fail", f"the record at {name} is invalid: {error}", publish, hard=True)
    if record.public_key is None:
        return Finding(check, "fail", f"the key at {name} is revoked (empty p=)", publish, hard=True)
    about = f"{name}: {record.key_type} key, {record.bits} bits"
    if key_type is not None and record.key_type != key_type:
        return Finding(check, "fail", f"{about}, but this selector signs with {key_type}", publish, hard=True)
    if key is not None:
        if not same_public_key(record.public_key, key.public_key()):
            return Finding(check, "fail", f"{about}, but not the public half of {key_file}", publish, hard=True)
        about += f", matches {key_file}"
    if record.key_type == "rsa" and record.bits < 1024:
        # RFC 8301 3.2: verifiers MUST NOT accept signatures made with RSA keys under 1024 bits.
        return Finding(check, "fail", f"{about}: under 1024 bits, verifiers ignore it", publish, hard=True)
    if record.key_type == "rsa" and record.bits < 2048:
        # RFC 8301 3.2: signers SHOULD use RSA keys of at least 2048 bits.
        return Finding(check, "warn", f"{about}: RFC 8301 asks for 2048 bits", "generate a 2048-bit key and publish it under a new selector")
    if record.testing:
        # RFC 6376 3.6.1: receivers treat mail signed with a t=y key as unsigned.
        return Finding(check, "warn", f"{about}, but t=y (testing): receivers treat the mail as unsigned", publish)
    return Finding(check, "pass", about)


async def _check_ed25519(
    resolver: dns.asyncresolver.Resolver, domain: str, selector: str, key: PrivateKey | None, key_file: Path | None
) -> Finding:
    """The key of the second signature (RFC 8463). A missing or wrong one only warns: receivers
    treat a signature that does not verify as absent (RFC 6376 6.1), and the RSA signature,
    which every receiver verifies, still carries the mail."""
    found = await _check_dkim(resolver, domain, selector, key, key_file, check="dkim-ed25519", key_type="ed25519")
    if found.status != "fail":
        return found
    detail = f"{found.detail}; receivers ignore an Ed25519 signature they cannot verify (RFC 6376 6.1), so this never stops sending"
    return Finding(found.check, "warn", detail, found.fix)


async def _check_dmarc(resolver: dns.asyncresolver.Resolver, domain: str) -> tuple[Finding, DMARCRecord | None]:
    """RFC 7489 6.6.3: the record at _dmarc.DOMAIN, else at _dmarc.ORGANIZATIONAL-DOMAIN."""
    organization = organizational_domain(domain)
    suggested = f"v=DMARC1; p=none; rua=mailto:dmarc@{organization}"
    for owner in dict.fromkeys((domain, organization)):
        name = f"_dmarc.{owner}"
        answer = await _ask(resolver, name, "TXT")
        if answer.error:
            return _temporary("dmarc", answer), None
        try:
            text = select_record(list(answer.records))
            if text is None:
                continue
            record = parse_record(text)
        except InvalidDMARCRecord as error:
            return Finding("dmarc", "fail", f"{name} is invalid: {error}", zone_txt(name, suggested), hard=True), None
        policy = f"p={record.p}" if owner == domain else f"p={record.subdomain_policy} (from {name})"
        about = f"{name}: {policy}, pct={record.pct}, adkim={record.adkim}, aspf={record.aspf}"
        about += f", reports to {', '.join(record.rua)}" if record.rua else ", no aggregate reports (rua=)"
        if record.notes:
            return Finding("dmarc", "warn", f"{about}; {'; '.join(record.notes)}"), record
        return Finding("dmarc", "pass", about), record
    return Finding("dmarc", "fail", f"no DMARC record at _dmarc.{domain}", zone_txt(f"_dmarc.{domain}", suggested)), None


def _judge_alignment(
    record: DMARCRecord | None, *, domain: str, dkim_domain: str | None, spf_domain: str, dkim: Finding, spf: Finding
) -> Finding:
    found = alignment(record, from_domain=domain, dkim_domain=dkim_domain, spf_domain=spf_domain)
    modes = f"adkim={record.adkim if record else 'r'}, aspf={record.aspf if record else 'r'}"
    if not found.possible:
        return Finding(
            "alignment", "fail",
            f"neither DKIM d={dkim_domain or '(unsigned)'} nor the return path domain {spf_domain} aligns with {domain} ({modes})",
            f"sign with DKIM as d={domain}, or send with a return path under {organizational_domain(domain)} and aspf=r",
            hard=True,
        )  # fmt: skip
    passing = []
    if found.dkim and dkim.status != "fail":
        passing.append(f"DKIM d={dkim_domain}")
    if found.spf and spf.status == "pass":
        passing.append(f"SPF {spf_domain}")
    if passing:
        return Finding("alignment", "pass", f"aligned with {domain} ({modes}): {' and '.join(passing)}")
    return Finding("alignment", "fail", f"the identifiers that align with {domain} ({modes}) do not pass: fix spf/dkim above")


async def _check_mx(resolver: dns.asyncresolver.Resolver, check: str, domain: str, *, role: str, bounces: bool) -> Finding:
    mx = await _ask(resolver, domain, "MX")
    if mx.error:
        return _temporary(check, mx)
    publish = f"{domain}. MX 10 <your inbound mail server>."
    if mx.records == ("0 .",):
        # RFC 7505: a null MX says the domain accepts no mail; RFC 7505 4.2 lets
        # receivers refuse mail whose envelope sender has one.
        status: Status = "fail" if bounces else "warn"
        return Finding(check, status, f"{role} {domain} has a null MX: it accepts no mail (RFC 7505)", publish)
    if mx.records:
        return Finding(check, "pass", f"{role} {domain}: MX {', '.join(sorted(mx.records, key=_preference))}")
    addresses = [await _ask(resolver, domain, rdtype) for rdtype in ("A", "AAAA")]
    if any(answer.records for answer in addresses):
        # RFC 5321 5.1: without MX, mail goes to the domain's own address (implicit MX).
        return Finding(check, "warn", f"{role} {domain} has no MX; mail goes to its A/AAAA record (RFC 5321 5.1)", publish)
    return Finding(check, "fail", f"{role} {domain} has no MX and no address: it cannot receive mail", publish)


def _preference(record: str) -> int:
    return int(record.split()[0])


async def _check_fcrdns(resolver: dns.asyncresolver.Resolver, ip: str | None, domain: str) -> Finding:
    """Forward-confirmed reverse DNS: a PTR name of the IP whose A/AAAA holds the IP again."""
    if ip is None:
        return Finding("fcrdns", "fail", "not checked without the sending IP (--ip)")
    address = ipaddress.ip_address(ip)
    rdtype = "A" if address.version == 4 else "AAAA"
    reverse = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
    ptr = await _ask(resolver, reverse, "PTR")
    if ptr.error:
        return _temporary("fcrdns", ptr)
    if not ptr.records:
        return Finding(
            "fcrdns", "fail", f"{ip} has no PTR record",
            f"{reverse}. PTR mail.{domain}.   (set by whoever owns {ip}: the hosting provider)\n"
            f"mail.{domain}. {rdtype} {ip}",
        )  # fmt: skip
    errors = []
    for name in ptr.records:
        forward = await _ask(resolver, name, rdtype)
        errors += [forward.error] if forward.error else []
        if any(ipaddress.ip_address(record) == address for record in forward.records):
            return Finding("fcrdns", "pass", f"{ip} → {name} → {ip}")
    if errors:
        return Finding("fcrdns", "fail", f"temporary DNS error ({errors[0]}); not known, try again")
    name = ptr.records[0]
    return Finding("fcrdns", "fail", f"{ip} → {name}, but {name} has no {rdtype} record for {ip}", f"{name}. {rdtype} {ip}")


def _judge_tls(relay_tls: bool | None) -> Finding:
    if relay_tls is None:
        return Finding("tls", "warn", "not known here: the daemon checks [relay] tls in mailer.toml")
    if relay_tls:
        return Finding("tls", "pass", "the relay connection is encrypted")
    return Finding("tls", "fail", "the relay connection is not encrypted", 'set [relay] tls = "starttls" (or "implicit" for port 465)')


def _judge_unsubscribe(signed: bool) -> Finding:
    # RFC 8058 4: List-Unsubscribe and List-Unsubscribe-Post must be covered by a valid DKIM signature.
    headers = {"list-unsubscribe", "list-unsubscribe-post"}
    if signed and headers <= set(SIGNED_HEADERS):
        return Finding("unsubscribe", "pass", "List-Unsubscribe and List-Unsubscribe-Post are in the DKIM signature (RFC 8058)")
    return Finding("unsubscribe", "fail", "one-click unsubscribe headers are not DKIM-signed (RFC 8058 4)", "configure DKIM signing ([dkim] in mailer.toml)")


# -- the entry point -------------------------------------------------------------------------

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")  # RFC 6376 3.1: selectors are sub-domains


def _domain_name(value: str, field: str) -> str:
    name = value.strip().rstrip(".").lower()
    if not name.isascii():
        import idna  # a dependency of email-validator; IDNA 2008 with UTS 46 mapping

        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            pass  # the pattern below refuses it
    # RFC 1035 2.3.4: at most 253 characters of text (255 octets on the wire).
    if not _DOMAIN.fullmatch(name) or len(name) > 253:
        raise UserError(f"{value!r} is not a domain name", field=field, hint="for example acme.example")
    return name


def _ip_address(value: str) -> str:
    try:
        return ipaddress.ip_address(value.strip()).compressed
    except ValueError:
        raise UserError(f"{value!r} is not an IPv4 or IPv6 address", field="--ip", hint="for example 192.0.2.10") from None


async def check_domain(
    domain: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    ip: str | None,
    selector: str | None,
    dkim_key: Path | None = None,
    return_path_domain: str | None = None,
    relay_tls: bool | None = None,
    helo: str = "",
    dkim_domain: str | None = None,
    ed25519_selector: str | None = None,
    ed25519_key: Path | None = None,
) -> DomainReport:
    """Check a sending domain in DNS and judge it against the bulk-sender rules.

    `ip` is the address mail leaves from; `selector` the DKIM selector (None: unsigned);
    `dkim_key` the PEM private key to compare with the published one; `return_path_domain`
    the envelope sender's domain (default: `domain`); `dkim_domain` the d= (default:
    `domain`); `relay_tls` whether the relay connection is encrypted (None: unknown);
    `ed25519_selector` and `ed25519_key` the second signature's (RFC 8463), when there is one.
    Raises `UserError` for a malformed domain, IP, selector or key file.
    """
    domain = _domain_name(domain, "domain")
    address = _ip_address(ip) if ip is not None else None
    spf_domain = _domain_name(return_path_domain, "return_path_domain") if return_path_domain else domain
    signing_domain = _domain_name(dkim_domain, "dkim_domain") if dkim_domain else domain
    if selector is not None and not _SELECTOR.fullmatch(selector.strip().lower()):
        raise UserError(f"{selector!r} is not a DKIM selector", field="selector", hint="for example mailer or s2025")
    if dkim_key is not None and selector is None:
        raise UserError("a DKIM key needs its selector", field="selector", hint="pass --selector too")
    if ed25519_selector is not None and not _SELECTOR.fullmatch(ed25519_selector.strip().lower()):
        raise UserError(f"{ed25519_selector!r} is not a DKIM selector", field="ed25519_selector", hint="for example mailer-ed25519")
    if ed25519_key is not None and ed25519_selector is None:
        raise UserError("an Ed25519 key needs its selector", field="ed25519_selector", hint="pass --ed25519-selector too")
    key = load_private_key(dkim_key) if dkim_key is not None else None
    second_key = load_private_key(ed25519_key) if ed25519_key is not None else None
    if second_key is not None and not isinstance(second_key, Ed25519PrivateKey):
        raise UserError(f"{ed25519_key} is not an Ed25519 key", field="ed25519_key", hint="pass the Ed25519 key's PEM file")
    selector = selector.strip().lower() if selector is not None else None
    second = [] if ed25519_selector is None else [
        _check_ed25519(resolver, signing_domain, ed25519_selector.strip().lower(), second_key, ed25519_key)
    ]  # fmt: skip

    checks = asyncio.gather(
        _check_spf(resolver, spf_domain, address, helo),
        _check_dkim(resolver, signing_domain, selector, key, dkim_key),
        _check_dmarc(resolver, domain),
        _check_fcrdns(resolver, address, domain),
    )
    if spf_domain == domain:
        mx_checks = [_check_mx(resolver, "mx", domain, role="From and bounce domain", bounces=True)]
    else:
        mx_checks = [
            _check_mx(resolver, "mx", domain, role="From domain", bounces=False),
            _check_mx(resolver, "bounce-mx", spf_domain, role="bounce domain", bounces=True),
        ]
    (spf, dkim, (dmarc, record), fcrdns), mx, ed25519 = await asyncio.gather(
        checks, asyncio.gather(*mx_checks), asyncio.gather(*second)
    )
    aligned = _judge_alignment(
        record, domain=domain, dkim_domain=signing_domain if selector else None, spf_domain=spf_domain, dkim=dkim, spf=spf
    )
    findings = (
        spf, dkim, *ed25519, dmarc, aligned, *mx, fcrdns, _judge_tls(relay_tls), _judge_unsubscribe(selector is not None)
    )  # fmt: skip
    result = verdict(findings)
    return DomainReport(domain, findings, result.ready, result.hard_failures, result.unmet)


def make_resolver(nameserver: str | None, *, timeout: float = 5.0) -> dns.asyncresolver.Resolver:
    """The system's resolver, or one that asks only `nameserver` ("HOST", "HOST:PORT", "[V6]:PORT")."""
    if nameserver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise UserError("this machine has no DNS resolver configured", field="--nameserver", hint="pass --nameserver 9.9.9.9") from None
    else:
        host, port = _host_port(nameserver)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


# How long `mailer check-domain` waits for any answer before saying the server is silent: a
# resolver answers the root's NS from its cache (RFC 1035 7.1), or at least refuses, at once.
SILENCE_SECONDS = 2.0


async def require_answers(resolver: dns.asyncresolver.Resolver, nameserver: str | None, domain: str) -> None:
    """A UserError when the DNS server does not answer at all: every check would then end,
    after its timeout, as a temporary error, and the report would say nothing true.

    The root's NS first (any resolver answers it), then the domain's SOA: an authoritative-only
    server may drop questions outside its zones (tinydns does) and still serve the domain.
    """
    failure: BaseException | None = None
    for name, rdtype in ((".", "NS"), (domain, "SOA")):
        try:
            await resolver.resolve(name, rdtype, search=False, lifetime=SILENCE_SECONDS)
            return
        except (dns.exception.Timeout, OSError) as error:
            failure = error
        except dns.exception.DNSException:
            return  # an answer, even a refusal: the server is there, and each check reads its own
    asked = f"the DNS server {nameserver}" if nameserver else "this machine's DNS resolver"
    raise UserError(
        f"{asked} did not answer in {SILENCE_SECONDS:g} s ({type(failure).__name__}): nothing was checked",
        field="--nameserver" if nameserver else None,
        hint="check that it runs and is reachable, or name another with --nameserver",
    )


def _host_port(value: str) -> tuple[str, int]:
    host, port = value.strip(), "53"  # RFC 1035 4.2: DNS is served on port 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    hint = "for example 127.0.0.1:5353 or [::1]:53"
    try:
        address = ipaddress.ip_address(host).compressed
    except ValueError:
        raise UserError(f"{value!r} is not an IP address of a DNS server", field="--nameserver", hint=hint) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{value!r} has no valid port", field="--nameserver", hint=hint)
    return address, int(port)
