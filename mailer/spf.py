"""SPF evaluation: RFC 7208 check_host() over dnspython's async resolver.

    result = await check_host("192.0.2.10", "acme.example", "news@acme.example", resolver=resolver)

The resolver is the one DNS seam: production passes a configured
``dns.asyncresolver.Resolver``, tests pass `mailer.dnstest.ZoneServer.resolver()`. Record
syntax and macros live in `mailer.spfrecord`, pure; this module only walks the record and
asks DNS. Limits follow RFC 7208 4.6.4: at most 10 DNS-querying terms, 2 void lookups,
10 MX names and 10 PTR names per evaluation.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from mailer.spfrecord import (
    MacroContext,
    Mechanism,
    SPFSyntaxError,
    expand,
    is_spf_record,
    parse_record,
    truncate_domain,
    uses_letter,
)

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists and redirect, all told
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: the RECOMMENDED default
MAX_NAMES = 10  # RFC 7208 4.6.4: MX names per mx, PTR names per ptr and %{p}
TIME_LIMIT = 20.0  # RFC 7208 4.6.4: a whole evaluation SHOULD be allowed at least 20 seconds
MAX_LABEL, MAX_NAME = 63, 253  # RFC 1035 2.3.4, in presentation form without the final dot


@dataclass(frozen=True)
class SPFResult:
    result: str  # "none"|"neutral"|"pass"|"fail"|"softfail"|"temperror"|"permerror"
    explanation: str = ""  # the exp= text on fail, else ""
    mechanism: str = ""  # the term that matched, e.g. "ip4:192.0.2.0/24", or the reason for an error
    lookups: int = 0  # DNS-querying terms evaluated (RFC 7208 4.6.4)


class _PermError(Exception):
    """Ends the whole evaluation with permerror."""


class _TempError(Exception):
    """Ends the whole evaluation with temperror."""


@dataclass(frozen=True)
class _Outcome:
    result: str
    mechanism: str = ""
    exp_spec: str | None = None  # exp= of the record that decided, used only on fail
    domain: str = ""


def mail_from_identity(mail_from: str, helo: str) -> tuple[str, str]:
    """The (sender, domain) to check for an SMTP session: the MAIL FROM address, or
    postmaster@<HELO name> when the reverse-path is null (RFC 7208 2.4)."""
    if not mail_from:
        return f"postmaster@{helo}", helo
    return mail_from, mail_from.rpartition("@")[2]


def _valid_domain(domain: str) -> bool:
    # RFC 7208 4.3: a malformed domain or one that is not multi-label gives "none"
    name = domain[:-1] if domain.endswith(".") else domain
    labels = name.split(".")
    return (
        len(labels) > 1
        and len(name) <= MAX_NAME
        and not name.startswith("[")
        and all(0 < len(label.encode("utf-8")) <= MAX_LABEL for label in labels)
    )


def _query_name(domain: str) -> dns.name.Name | None:
    """The DNS name for `domain`, labels taken literally; None when DNS cannot carry it."""
    name = domain[:-1] if domain.endswith(".") else domain
    labels = name.split(".")
    if not name or "" in labels:
        return None
    try:
        return dns.name.Name([label.encode("utf-8") for label in labels] + [b""])
    except (dns.name.NameTooLong, dns.name.LabelTooLong):
        return None


def _name_text(name: dns.name.Name) -> str:
    return ".".join(label.decode("utf-8", "replace") for label in name.labels if label)


def _is_within(name: str, domain: str) -> bool:
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    return name == domain or name.endswith("." + domain)


class _Evaluation:
    """The state one check_host() call shares across include and redirect: counters,
    the macro context and the validated names of the client."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, context: MacroContext) -> None:
        self.resolver = resolver
        self.context = context
        self.lookups = 0
        self.voids = 0
        self._validated: list[str] | None = None

    async def query(self, domain: str, rdtype: str) -> list[Any] | None:
        """Records of `rdtype` at `domain` ([] for NXDOMAIN or no data), None when the name
        is not valid in DNS; a timeout or server failure is a temperror (RFC 7208 5)."""
        name = _query_name(domain)
        if name is None:
            return None
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as error:
            raise _TempError(f"DNS {rdtype} lookup of {domain} failed: {type(error).__name__}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    async def lookup(self, domain: str, rdtype: str) -> list[Any]:
        """A mechanism's own query, counting it as void when it finds nothing (4.6.4)."""
        records = await self.query(domain, rdtype)
        if records is None:
            return []  # RFC 7208 4.8/5: a name that cannot exist matches nothing
        if not records:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void DNS lookups")
        return records

    def count_term(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    async def addresses(self, domain: str, *, counted: bool) -> list[IPv4Address | IPv6Address]:
        rdtype = "A" if self.context.ip.version == 4 else "AAAA"
        records = await (self.lookup(domain, rdtype) if counted else self.query(domain, rdtype))
        return [ip_address(record.address) for record in records or ()]

    async def validated_names(self) -> list[str]:
        """RFC 7208 5.5: names from the client's PTR records whose addresses include it.
        Errors on the way skip a name, or give no names at all; they never fail the check."""
        if self._validated is None:
            names: list[str] = []
            try:
                pointers = await self.query(self.context.ip.reverse_pointer, "PTR") or []
            except _TempError:
                pointers = []
            for pointer in pointers[:MAX_NAMES]:  # 4.6.4: ignore names past the tenth
                name = _name_text(pointer.target)
                try:
                    if self.context.ip in await self.addresses(name, counted=False):
                        names.append(name)
                except _TempError:
                    continue
            self._validated = names
        return self._validated

    async def macro_context(self, text: str, domain: str) -> MacroContext:
        """The context to expand `text` in for `domain`, with %{p} looked up only if used."""
        context = replace(self.context, domain=domain)
        if uses_letter(text, "p"):
            names = await self.validated_names()
            # 7.3: prefer the domain itself, then a subdomain of it, then any validated name
            ranked = sorted(names, key=lambda name: (name.lower() != domain.lower(), not _is_within(name, domain)))
            context = replace(context, validated_name=ranked[0] if ranked else "unknown")
        return context

    async def target(self, domain_spec: str | None, domain: str) -> str:
        """The <target-name> of a term: its domain-spec expanded (7.3), or the current domain."""
        if domain_spec is None:
            return domain
        return truncate_domain(expand(domain_spec, await self.macro_context(domain_spec, domain)))

    async def check(self, domain: str) -> _Outcome:
        """check_host() for `domain` (RFC 7208 4), sharing this evaluation's limits."""
        domain = domain[:-1] if domain.endswith(".") else domain
        if not _valid_domain(domain):
            return _Outcome("none", f"malformed domain {domain!r}")
        records = await self.query(domain, "TXT")
        texts = [b"".join(record.strings).decode("latin-1") for record in records or ()]
        spf = [text for text in texts if is_spf_record(text)]
        if not spf:
            return _Outcome("none", f"no SPF record at {domain}")
        if len(spf) > 1:
            raise _PermError(f"{len(spf)} SPF records at {domain}")  # 4.5
        try:
            record = parse_record(spf[0])
        except SPFSyntaxError as error:
            raise _PermError(f"{domain}: {error}") from None
        for mechanism in record.mechanisms:
            if await self.matches(mechanism, domain):
                return _Outcome(mechanism.result, mechanism.text, record.explanation, domain)
        if record.redirect is None:
            return _Outcome("neutral", "", None, domain)  # 4.7: no match and no redirect
        self.count_term()
        target = await self.target(record.redirect, domain)
        outcome = await self.check(target)
        if outcome.result == "none":
            raise _PermError(f"redirect={target} has no SPF record")  # 6.1
        return outcome  # 6.2: the redirected record's exp=, never this one's

    async def matches(self, mechanism: Mechanism, domain: str) -> bool:
        ip, kind = self.context.ip, mechanism.kind
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            network = mechanism.network
            return network is not None and network.version == ip.version and ip in network
        self.count_term()
        target = await self.target(mechanism.domain_spec, domain)
        if kind == "include":
            outcome = await self.check(target)
            if outcome.result == "none":
                raise _PermError(f"include:{target} has no SPF record")  # 5.2
            return outcome.result == "pass"
        if kind == "exists":  # 5.7: always an A query, whatever the client's family
            return bool(await self.lookup(target, "A"))
        if kind == "ptr":
            return any(_is_within(name, target) for name in await self.validated_names())
        cidr = mechanism.cidr4 if ip.version == 4 else mechanism.cidr6
        if kind == "a":
            return any(ip in ip_network(f"{found}/{cidr}", strict=False) for found in await self.addresses(target, counted=True))
        exchanges = await self.lookup(target, "MX")
        if len(exchanges) > MAX_NAMES:
            raise _PermError(f"mx:{target} has more than {MAX_NAMES} MX records")  # 4.6.4
        for exchange in exchanges:
            host = _name_text(exchange.exchange)
            if host:  # a null MX (RFC 7505) names no host
                for found in await self.addresses(host, counted=False):
                    if ip in ip_network(f"{found}/{cidr}", strict=False):
                        return True
        return False

    async def explain(self, outcome: _Outcome) -> str:
        """RFC 7208 6.2: the exp= text; any problem fetching or expanding it means none."""
        if outcome.exp_spec is None:
            return ""
        try:
            records = await self.query(await self.target(outcome.exp_spec, outcome.domain), "TXT")
            if records is None or len(records) != 1:
                return ""
            text = b"".join(records[0].strings).decode("ascii")
            return expand(text, await self.macro_context(text, outcome.domain), explanation=True)
        except (_TempError, SPFSyntaxError, UnicodeDecodeError):
            return ""


def _client(ip: str) -> IPv4Address | IPv6Address:
    address = ip_address(ip)
    # RFC 7208 5/9/2: an IPv4-mapped IPv6 client is checked as IPv4
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    helo: str = "",
    receiver: str = "unknown",
    now: float | None = None,
) -> SPFResult:
    """RFC 7208 check_host(): may `ip` send mail for `domain`, on behalf of `sender`?

    `sender` without a local-part stands for postmaster@domain (4.3). `helo`, `receiver`
    and `now` only feed the h, r and t macros. Raises ValueError when `ip` is no address.
    """
    local, _, sender_domain = sender.rpartition("@")
    local, sender_domain = local or "postmaster", sender_domain or domain
    context = MacroContext(
        sender=f"{local}@{sender_domain}",
        local_part=local,
        sender_domain=sender_domain,
        domain=domain,
        ip=_client(ip),
        helo=helo,
        receiver=receiver,
        timestamp=int(time.time() if now is None else now),
    )
    evaluation = _Evaluation(resolver, context)
    try:
        async with asyncio.timeout(TIME_LIMIT):
            outcome = await evaluation.check(domain)
            explanation = await evaluation.explain(outcome) if outcome.result == "fail" else ""
    except _PermError as error:
        return SPFResult("permerror", mechanism=str(error), lookups=evaluation.lookups)
    except _TempError as error:
        return SPFResult("temperror", mechanism=str(error), lookups=evaluation.lookups)
    except TimeoutError:
        return SPFResult("temperror", mechanism=f"no result within {TIME_LIMIT:g} s", lookups=evaluation.lookups)
    return SPFResult(outcome.result, explanation, outcome.mechanism, evaluation.lookups)
