"""Direct delivery: each message goes to its recipient domain's MX hosts, no relay between.

For one message: the route (`mailer.mxroute`, cached for its TTL), the domain's MTA-STS
policy (`mailer.mtasts`), then the hosts in order. A host that does not answer, refuses the
connection, or refuses the session (a 421 or 5xx greeting, EHLO, STARTTLS) passes the
message to the next one (RFC 5321 5.1: "the SMTP client SHOULD try at least two addresses");
once MAIL FROM has been answered, that host's reply decides. Sessions are pooled by sending
IP and MX host, so a burst to one provider travels over one connection.
"""

from __future__ import annotations

import ipaddress
import random
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.resolver

from mailer.config import TimeoutsConfig
from mailer.mtasts import Mode, Policy, PolicyCache
from mailer.mxroute import MXHost, RouteCache
from mailer.reply import SMTPReply
from mailer.transport import IDLE_SECONDS, ConnectionPool, Endpoint, Envelope, TLSMode

if TYPE_CHECKING:
    from mailer.config import Config

SMTP_PORT = 25  # RFC 5321 4.5.4.1: MX hosts listen on port 25
# Postfix's smtp_mx_address_limit: addresses tried per message before waiting for a retry,
# so a domain with ten dead MX hosts cannot hold a worker for ten connect timeouts.
MAX_ADDRESSES_PER_ATTEMPT = 5
SETUP_COMMANDS = frozenset({"CONNECT", "EHLO", "STARTTLS", "AUTH"})


class DirectTransport:
    """Delivers to MX hosts; `send` returns the reply that decided, like `SMTPConnection.send`."""

    def __init__(
        self,
        *,
        resolver: dns.asyncresolver.Resolver,
        timeouts: TimeoutsConfig,
        helo: str = "",
        source_address: str = "",
        require_tls: bool = False,
        mta_sts: bool = True,
        port: int = SMTP_PORT,
        tls_context: ssl.SSLContext | None = None,
        https_port: int = 443,
        messages_per_connection: int = 100,
        idle_seconds: float = IDLE_SECONDS,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`port`, `tls_context` (the CA trusted for MX and policy certificates; default the
        system's) and `https_port` exist for tests on loopback; production keeps the defaults."""
        self.timeouts = timeouts
        self.helo = helo
        self.source_address = source_address
        self.require_tls = require_tls
        self.port = port
        self.tls_context = tls_context or ssl.create_default_context()
        self.routes = RouteCache(resolver, rng=rng, clock=clock)
        self.policies = (
            PolicyCache(resolver, port=https_port, ssl_context=self.tls_context, clock=clock) if mta_sts else None
        )
        self.pool = ConnectionPool(messages_per_connection=messages_per_connection, idle_seconds=idle_seconds)

    @classmethod
    def from_config(cls, config: Config) -> DirectTransport:
        resolver = dns.asyncresolver.Resolver()
        resolver.cache = dns.resolver.LRUCache()  # MX, A and TXT answers kept for their TTL
        delivery = config.delivery
        return cls(
            resolver=resolver, timeouts=config.timeouts, helo=delivery.helo, require_tls=delivery.require_tls,
            mta_sts=delivery.mta_sts, messages_per_connection=delivery.messages_per_connection,
        )

    async def mx_names(self, domain: str) -> tuple[str, ...]:
        """The MX host names of `domain`, best first (empty when it has no route), from the
        same cache `send` uses: what provider recognition by MX host needs."""
        return tuple(host.name for host in (await self.routes.lookup(domain)).hosts)

    async def send(
        self, envelope: Envelope, message: bytes, *, source_address: str | None = None, helo: str | None = None,
        per_connection: int | None = None,
    ) -> SMTPReply:
        """One attempt for one recipient, over the first MX host that takes the session.

        `source_address` and `helo` are the sending IP's (each IP greets with the name its PTR
        record gives, which FCrDNS checks); `per_connection` is the receiving provider's
        messages-per-connection limit (mailer.providers).
        """
        source = self.source_address if source_address is None else source_address
        name = helo or self.helo
        domain = envelope.recipient.rpartition("@")[2]
        route = await self.routes.lookup(domain)
        if route.failure is not None:
            return route.failure
        policy = await self.policies.policy(route.domain) if self.policies is not None else None
        hosts, enforce = list(route.hosts), False
        if policy is not None and policy.mode is Mode.ENFORCE:
            # RFC 8461 4.1: only the MX hosts the policy names
            hosts, enforce = [host for host in hosts if policy.allows(host.name)], True
            if not hosts:
                return _no_valid_mx(route.domain, policy)
        reply: SMTPReply | None = None
        tried = 0
        for host in hosts:
            for address in _usable(host.addresses, source):
                if tried == MAX_ADDRESSES_PER_ATTEMPT:
                    return reply or _unreachable(host)
                tried += 1
                endpoint = self._endpoint(host, address, source, name, enforce=enforce)
                key = (source, name, host.name, enforce)
                reply = await self.pool.send(key, endpoint, self.timeouts, envelope, message, per_connection=per_connection)
                if reply.command not in SETUP_COMMANDS:
                    return reply
                # no session at this address: RFC 5321 5.1 moves on to the next one
        return reply or _unreachable(hosts[0], source)

    def _endpoint(self, host: MXHost, address: str, source: str, helo: str, *, enforce: bool) -> Endpoint:
        if enforce:
            # RFC 8461 4.2: STARTTLS, and a certificate valid for the MX host's name
            tls, verify, context = TLSMode.STARTTLS, True, self.tls_context
        else:
            # RFC 3207 4.1 leaves believing a certificate to local policy; without MTA-STS
            # asking for it, TLS with any certificate still beats clear text (RFC 7435)
            tls = TLSMode.STARTTLS if self.require_tls else TLSMode.OPPORTUNISTIC
            verify, context = False, None
        return Endpoint(
            host=host.name, port=self.port, address=address, tls=tls, verify_certificate=verify,
            tls_context=context, helo=helo, source_address=source,
        )

    async def close(self) -> None:
        await self.pool.close()


def _usable(addresses: tuple[str, ...], source: str) -> list[str]:
    """The addresses reachable from `source`: the same IP version, or any without a source."""
    if not source:
        return list(addresses)
    version = ipaddress.ip_address(source).version
    return [address for address in addresses if ipaddress.ip_address(address).version == version]


def _no_valid_mx(domain: str, policy: Policy) -> SMTPReply:
    # RFC 8461 5.1: with no MX matching an enforced policy the message is not delivered,
    # and the failure is temporary (the policy or the MX records may be fixed)
    patterns = ", ".join(policy.mx)
    return SMTPReply(
        code=None, enhanced="4.7.5", command="CONNECT", host=domain,
        text=f"no MX host of {domain} matches its MTA-STS policy (mx: {patterns})",
    )


def _unreachable(host: MXHost, source: str = "") -> SMTPReply:
    family = f" over IPv{ipaddress.ip_address(source).version} from {source}" if source else ""
    return SMTPReply(code=None, text=f"no address of {host.name} is reachable{family}", command="CONNECT", host=host.name)

