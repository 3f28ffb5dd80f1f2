"""MTA-STS (RFC 8461): a recipient domain's promise that its MX hosts speak TLS with valid
certificates, and our duty to refuse anything less when the promise is enforced.

Discovery asks the `_mta-sts.DOMAIN` TXT record for the policy id (3.1); the policy itself
comes from `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (3.3), over HTTPS with a valid
certificate, never through a redirect. In mode "enforce" only MX hosts the policy names are
used, and only over STARTTLS with a certificate valid for the MX name (4, 5); "testing" and
"none" change nothing in delivery. The record, the policy text and MX matching are parsed by
pure functions; `PolicyCache` does the fetching and keeps policies for their max_age.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import aiohttp
import aiohttp.abc
import dns.asyncresolver
import dns.exception
import dns.rdtypes.ANY.TXT

from mailer.mxroute import BoundedCache

log = logging.getLogger("mailer.mtasts")

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3: senders may limit policy bodies to 64 KB
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: max_age is at most 31557600 seconds (a year)
FETCH_TIMEOUT = 60.0  # RFC 8461 3.3 suggests a timeout of about a minute
TXT_RECHECK = 60.0  # the TXT record is asked at most once a minute per domain
FAILED_FETCH_PAUSE = 300.0  # after a failed fetch, wait before trying the same id again
DEFAULT_CACHE_SIZE = 10_000

# RFC 8461 3.1: sts-id = 1*32(ALPHA / DIGIT); extension keys and values as in its ABNF
_RECORD_FIELD = re.compile(r"([A-Za-z0-9_.-]{1,32})=([\x21-\x3a\x3c\x3e-\x7e]+)")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_WSP = " \t"


class PolicyError(ValueError):
    """A policy that cannot be fetched or does not parse: the domain is treated as having none."""


class Mode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True)
class Policy:
    mode: Mode
    mx: tuple[str, ...]  # patterns: "mx.example.com" or "*.example.com"
    max_age: int  # seconds
    id: str = ""  # the TXT record's id it was fetched under

    def allows(self, host: str) -> bool:
        """Whether MX host `host` matches one of the policy's mx patterns (RFC 8461 4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: an exact name, or "*." matching exactly one leftmost label."""
    pattern = pattern.strip().rstrip(".").lower()
    host = host.strip().rstrip(".").lower()
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return host == pattern


def parse_record(texts: Sequence[str]) -> str | None:
    """The policy id from the `_mta-sts` TXT records, or None when there is no usable one.

    RFC 8461 3.1: records not starting with "v=STSv1;" are discarded; unless exactly one
    remains and it parses, the domain has no available policy.
    """
    candidates = [text for text in texts if text.startswith("v=STSv1;")]
    if len(candidates) != 1:
        return None
    fields = [field.strip(_WSP) for field in candidates[0].split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing ";" is allowed
    policy_id = None
    for field in fields[1:]:
        match = _RECORD_FIELD.fullmatch(field)
        if match is None:
            return None
        if match.group(1) == "id" and policy_id is None:
            if not _ID.fullmatch(match.group(2)):
                return None
            policy_id = match.group(2)
    return policy_id


def parse_policy(text: str, *, policy_id: str = "") -> Policy:
    """Read a policy body (RFC 8461 3.2); raises PolicyError when it is not a valid policy."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        if not line.strip(_WSP):
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"policy line without a colon: {line[:80]!r}")
        key, value = key.strip(_WSP), value.strip(_WSP)
        if key == "mx":
            mx.append(value)
        else:
            values.setdefault(key, value)  # unknown keys are ignored (3.2)
    if values.get("version") != "STSv1":
        raise PolicyError(f"policy version is {values.get('version')!r}, not 'STSv1'")
    try:
        mode = Mode(values.get("mode", ""))
    except ValueError:
        raise PolicyError(f"policy mode {values.get('mode')!r} is not enforce, testing or none") from None
    max_age = values.get("max_age", "")
    if not _MAX_AGE.fullmatch(max_age) or int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {max_age!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    if not mx and mode is not Mode.NONE:
        raise PolicyError("policy names no mx")  # 3.2: mx is required unless the mode is none
    return Policy(mode=mode, mx=tuple(mx), max_age=int(max_age), id=policy_id)


class _DNSResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's name lookups through our dnspython resolver, so the HTTPS fetch sees the
    same DNS as the MX lookup (and the tests' loopback zone)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[aiohttp.abc.ResolveResult]:
        results: list[aiohttp.abc.ResolveResult] = []
        for rdtype, kind in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            if family not in (socket.AF_UNSPEC, kind):
                continue
            try:
                answer = await self.resolver.resolve(host, rdtype, raise_on_no_answer=False, search=False)
            except dns.exception.DNSException:
                continue
            for record in answer.rrset or ():
                results.append({
                    "hostname": host, "host": record.to_text(), "port": port,
                    "family": kind, "proto": 0, "flags": socket.AI_NUMERICHOST,
                })
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        return None


async def fetch_policy(
    domain: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    policy_id: str = "",
    port: int = 443,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = FETCH_TIMEOUT,
) -> Policy:
    """GET the policy of `domain` over HTTPS (RFC 8461 3.3); raises PolicyError on any failure."""
    netloc = f"mta-sts.{domain}" if port == 443 else f"mta-sts.{domain}:{port}"
    url = f"https://{netloc}/.well-known/mta-sts.txt"
    context = ssl_context or ssl.create_default_context()
    connector = aiohttp.TCPConnector(resolver=_DNSResolver(resolver), ssl=context, use_dns_cache=False)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            # 3.3: "Policy retrieval MUST NOT follow HTTP 3xx redirects"
            async with session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise PolicyError(f"{url} answered HTTP {response.status}")
                if response.content_type != "text/plain":
                    raise PolicyError(f"{url} is {response.content_type}, not text/plain")
                body = await response.content.read(MAX_POLICY_BYTES + 1)
                if len(body) > MAX_POLICY_BYTES:
                    raise PolicyError(f"{url} is larger than {MAX_POLICY_BYTES} bytes")
    except PolicyError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise PolicyError(f"fetching {url} failed: {type(error).__name__}: {error}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{url} is not UTF-8 text") from None
    return parse_policy(text, policy_id=policy_id)


async def _policy_id(resolver: dns.asyncresolver.Resolver, domain: str) -> tuple[str | None, float]:
    """(the published id or None, seconds the answer may be reused)."""
    try:
        answer = await resolver.resolve(f"_mta-sts.{domain}", "TXT", raise_on_no_answer=False, search=False)
    except dns.exception.DNSException:
        return None, 0.0  # NXDOMAIN, timeout: no policy discovered now
    texts = []
    for record in answer.rrset or ():
        assert isinstance(record, dns.rdtypes.ANY.TXT.TXT)
        texts.append(b"".join(record.strings).decode("utf-8", "replace"))
    ttl = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
    return parse_record(texts), ttl


class PolicyCache:
    """The MTA-STS policy of each recipient domain, fetched once per id and kept for max_age.

    RFC 8461 5.1: a cached policy stays in force until it expires, even when the TXT record
    disappears or a refetch fails, so that an attacker who blocks DNS or HTTPS cannot
    downgrade a domain that once said "enforce".
    """

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        *,
        port: int = 443,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = FETCH_TIMEOUT,
        size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.port = port
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.clock = clock
        self._policies: BoundedCache[str, Policy] = BoundedCache(size)  # until max_age
        self._checked: BoundedCache[str, bool] = BoundedCache(size)  # until the next TXT check
        self._failed: BoundedCache[tuple[str, str], str] = BoundedCache(size)

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for `domain`, or None when it has none."""
        domain = domain.strip().rstrip(".").lower()
        now = self.clock()
        cached = self._policies.get(domain, now)
        if self._checked.get(domain, now):
            return cached
        policy_id, ttl = await _policy_id(self.resolver, domain)
        policy = cached
        if policy_id is not None and (cached is None or cached.id != policy_id):
            policy = await self._fetch(domain, policy_id) or cached
        self._checked.put(domain, True, now + max(ttl, TXT_RECHECK))
        return policy

    async def _fetch(self, domain: str, policy_id: str) -> Policy | None:
        now = self.clock()
        if self._failed.get((domain, policy_id), now) is not None:
            return None  # 3.3: do not hammer a policy host that just failed
        try:
            policy = await fetch_policy(
                domain, resolver=self.resolver, policy_id=policy_id, port=self.port,
                ssl_context=self.ssl_context, timeout=self.timeout,
            )
        except PolicyError as error:
            log.warning("MTA-STS policy of %s (id %s) unusable: %s", domain, policy_id, error)
            self._failed.put((domain, policy_id), str(error), now + FAILED_FETCH_PAUSE)
            return None
        if policy.max_age > 0:
            self._policies.put(domain, policy, self.clock() + policy.max_age)
        return policy
