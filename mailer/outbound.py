"""Where a message leaves from, and when: its receiving provider, a sending IP with budget left,
a connection slot, and the transport bound to that IP.

The decisions are pure and live elsewhere: `mailer.providers` names the provider from the MX
hosts, `mailer.warmupbudget` counts against the warm-up caps and adapts to the replies. This is
the shell the daemon asks before an attempt (`receiver`, `pick`, `reserve`) and tells after it
(`record`). A message without budget is not attempted: it gets a `Hold`, a time to come back,
which is not a delivery attempt and never makes a message expire.

Unrecognised receivers are one provider, `other`, for the warm-up shares and limits, but each
site (the organizational domain of its first MX host, or of the recipient domain with a relay)
is throttled on its own: a company gateway that refuses us must not pause mail to every other
company, as Postfix keeps its per-destination concurrency and backoff per domain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from contextvars import ContextVar
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from mailer.breaker import PATIENCE_SECONDS, Admission, DestinationBreakers
from mailer.config import Config
from mailer.direct import DirectTransport
from mailer.dmarc import organizational_domain
from mailer.providers import OTHER, provider_for
from mailer.reply import SMTPReply
from mailer.transport import Envelope, SMTPTransport, Transport, make_transport
from mailer.warmup import SendingIP, WarmupPlan
from mailer.warmupbudget import Grant, WarmupBudget

# How far past the opening a held message comes back, drawn at random so the held messages
# return spread out rather than all at the opening (the retry schedule's jitter does the same).
PACE_JITTER = timedelta(minutes=10)  # the per-minute rate: opens again within a minute
CAP_JITTER = timedelta(minutes=30)  # an hourly or daily cap: opens at the top of an hour
PAUSE_JITTER = timedelta(minutes=5)  # a paused provider: the throttle lets few through at first
SendFunction = Callable[[Envelope, bytes], Awaitable[SMTPReply]]
log = logging.getLogger(__name__)
@dataclass
class Attempt:
    """What the daemon's worker knows of one attempt, set as the attempt task's context.

    `detach` is resolved when the attempt starts waiting on a receiver not heard from yet (a
    probe, or a wait for one), so the worker need not wait with it. An attempt holds one of the
    [delivery] concurrency session slots while it sends, and gives it back when its worker
    stops waiting for it (it then counts among the slow attempts, at most `concurrency`)."""

    detach: asyncio.Future[None] | None = None
    detached: bool = False
    holds_session: bool = False

    async def take_session(self, sessions: asyncio.Semaphore) -> None:
        if not self.detached:
            await sessions.acquire()
            if self.detached:  # detached while waiting: the slow attempts have room of their own
                sessions.release()
            else:
                self.holds_session = True

    def stop_waiting(self, sessions: asyncio.Semaphore) -> None:
        """The worker moves on without it: its session slot is given back."""
        self.detached = True
        self.end(sessions)

    def end(self, sessions: asyncio.Semaphore) -> None:
        if self.holds_session:
            self.holds_session = False
            sessions.release()


current_attempt: ContextVar[Attempt | None] = ContextVar("current_attempt", default=None)


@dataclass(frozen=True)
class Hold:
    """No attempt now: when to come back, and why (for the log and the message's event)."""

    until: datetime
    reason: str


def _detach() -> None:
    attempt = current_attempt.get()
    if attempt is not None and attempt.detach is not None and not attempt.detach.done():
        attempt.detach.set_result(None)


@dataclass
class _Probe:
    """The first attempt to a destination not heard from: the others wait PATIENCE_SECONDS of
    its SMTP attempt for its reply, then are held."""

    started: float | None = None  # monotonic time its SMTP attempt began
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    sending: asyncio.Event = field(default_factory=asyncio.Event)  # set by end() too: never waited on in vain

    def end(self) -> None:
        self.sending.set()
        self.ended.set()

    def overdue(self) -> bool:
        return self.started is not None and time.monotonic() - self.started > PATIENCE_SECONDS

    async def wait(self) -> None:
        """Until it ends, or its patience runs out (counted once it is sending)."""
        await self.sending.wait()
        if self.ended.is_set() or self.started is None:
            return
        try:
            async with asyncio.timeout(max(0.001, self.started + PATIENCE_SECONDS - time.monotonic())):
                await self.ended.wait()
        except TimeoutError:
            pass


@lru_cache(maxsize=4096)
def _site(name: str) -> str:
    return organizational_domain(name)


class Outbound:
    """The sending IPs' budget, connection slots and transports, shared by the daemon's workers."""

    def __init__(self, *, config: Config, plan: WarmupPlan, transport: Transport | None, rng: random.Random) -> None:
        """`transport` None: built from the config, one relay session source per sending IP
        (direct mode: one `DirectTransport`, told each IP's source address per message)."""
        self.plan = plan
        self.budget = WarmupBudget(plan)
        self.rng = rng
        self.transport = transport or make_transport(config)
        self._senders: dict[str, SendFunction] = {}
        self._built: list[SMTPTransport] = []
        if transport is None and isinstance(self.transport, SMTPTransport):
            base = self.transport
            for ip in plan.ips:
                if ip.address or ip.helo:
                    relay = dataclasses.replace(config.relay, helo=ip.helo or config.relay.helo)
                    own = SMTPTransport(relay, config.timeouts, messages_per_connection=config.delivery.messages_per_connection)
                    own.endpoint = dataclasses.replace(own.endpoint, source_address=ip.address)
                    self._built.append(own)
                    self._senders[ip.name] = own.send
                else:
                    self._senders[ip.name] = base.send
        self._busy: Counter[tuple[str, str]] = Counter()
        self._freed = asyncio.Condition()
        self.breakers = DestinationBreakers()
        self.stopping = False  # set by the daemon's drain: attempts waiting on a probe give up
        self._probes: dict[str, _Probe] = {}  # provider → its probe under way

    # -- before an attempt ----------------------------------------------------------------

    async def receiver(self, email: str) -> str:
        """The budget key of the recipient's provider: `gmail`, `microsoft`, …, or `other:<site>`.

        In direct mode the MX hosts come from the transport's route cache, the same lookup its
        `send` uses; with a relay none are known and the well-known domains decide.
        """
        domain = email.rpartition("@")[2].lower()
        mx: tuple[str, ...] = ()
        if isinstance(self.transport, DirectTransport):
            mx = await self.transport.mx_names(domain)
        provider = provider_for(mx, domain)
        if provider != OTHER:
            return provider
        return f"{OTHER}:{_site(mx[0] if mx else domain)}"

    async def admit(self, provider: str, now: datetime) -> Admission:
        """Whether the receiver's circuit breaker (mailer.breaker) lets an attempt start now.

        While the first attempt to a destination is under way the others wait for its reply,
        but only PATIENCE_SECONDS in all: one that has not answered by then looks stuck, and
        the rest are held rather than each holding a worker for a whole timeout. A caller
        given a probe must end it with `record` or `abandon`.
        """
        while True:
            if self.stopping:  # shutting down: what has not started goes back to the queue
                return Admission(go=False, reason="released at shutdown")
            probe = self._probes.get(provider)
            overdue = probe is not None and probe.overdue()
            admission = self.breakers.admit(provider, now, probe_overdue=overdue)
            if admission.probe:
                self._probes[provider] = _Probe()
            if admission.probe or admission.wait:
                _detach()  # it may take a whole timeout: the worker moves on without it
            if not admission.wait or probe is None:
                return admission
            await probe.wait()

    def stop_waiting(self) -> None:
        """At shutdown: every attempt waiting on a probe stops waiting (and is released)."""
        self.stopping = True
        for probe in self._probes.values():
            probe.end()

    def abandon(self, provider: str, admission: Admission) -> None:
        """A probe that ended without an SMTP reply (held, or not buildable): the next may try."""
        if admission.probe and provider in self._probes:
            self.breakers.abandon(provider)
            self._end_probe(provider)

    def _end_probe(self, provider: str) -> None:
        probe = self._probes.pop(provider, None)
        if probe is not None:
            probe.end()

    def probe_sending(self, provider: str) -> None:
        """The probe to `provider` starts its SMTP attempt: the others' patience counts from now
        (building it, in a busy process, is not the receiver's silence)."""
        probe = self._probes.get(provider)
        if probe is not None and probe.started is None:
            probe.started = time.monotonic()
            probe.sending.set()

    def warming(self, now: datetime) -> bool:
        """Whether any sending IP is within its warm-up schedule today."""
        return any(self.budget.warming(ip.name, now) for ip in self.plan.ips)

    def pick(self, provider: str, now: datetime) -> str | Hold:
        """The sending IP with budget left for `provider`, or when the first one opens again."""
        name = self.budget.pick_ip(provider, now)
        if name is not None:
            return name
        openings = [(*self.budget.next_opening(ip.name, provider, now), ip.name) for ip in self.plan.ips]
        at, why, name = min(openings)
        if self.budget.throttle(name, provider, now).state(now) == "paused":
            spread = PAUSE_JITTER
        elif at - now <= timedelta(minutes=1):
            spread = PACE_JITTER
        else:
            spread = CAP_JITTER
        until = max(at, now + timedelta(seconds=1)) + spread * self.rng.random()
        return Hold(until, f"warm-up budget: {why}")

    def reserve(self, ip: str, provider: str, now: datetime) -> Grant | None:
        return self.budget.reserve(ip, provider, now)

    def release(self, grant: Grant) -> None:
        self.budget.release(grant)

    # -- the attempt ----------------------------------------------------------------------

    async def send(self, grant: Grant, envelope: Envelope, message: bytes, *, now: Callable[[], datetime]) -> SMTPReply:
        """Send from the grant's IP once a connection slot of (IP, provider) is free.

        The slots follow the provider's concurrency scaled by its throttle (`limits`), read
        again whenever a slot frees, so a slowed provider gets fewer connections at once.
        """
        key = (grant.ip, grant.provider)

        def free() -> bool:
            return self._busy[key] < self.budget.limits(grant.ip, grant.provider, now()).concurrency

        async with self._freed:
            await self._freed.wait_for(free)
            self._busy[key] += 1
        try:
            ip = self.plan.ip(grant.ip)
            if isinstance(self.transport, DirectTransport):
                # straight to the provider: its sessions carry its own messages-per-connection
                per_connection = self.budget.limits(grant.ip, grant.provider, now()).per_connection
                return await self.transport.send(
                    envelope, message, source_address=ip.address, helo=ip.helo or None, per_connection=per_connection
                )
            return await self._sender(ip)(envelope, message)
        finally:
            async with self._freed:
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]
                self._freed.notify_all()

    def _sender(self, ip: SendingIP) -> SendFunction:
        found = self._senders.get(ip.name)
        if found is not None:
            return found
        found = self.transport.send  # a transport given by the caller sends from wherever it does
        self._senders[ip.name] = found
        return found

    def record(self, grant: Grant, reply: SMTPReply, now: datetime, *, probe: bool = False) -> None:
        """Tell the budget and the receiver's breaker how the attempt ended; one that never
        reached a server gives its budget back.

        No connection at all (no route in DNS, nobody listening) is no message the provider
        counted, so it takes nothing from the warm-up budget; a 421 greeting is a reply, and the
        strongest signal there is (RFC 5321 3.8: the server will not serve us now).
        """
        if reply.command == "DNS" or (reply.code is None and reply.command == "CONNECT"):
            self.budget.record_reply(grant, None, now)
        else:
            self.budget.record_reply(grant, reply, now)
        # silence: no reply within the timeout. A refusal or a hang-up answers at once and
        # costs no worker a timeout, so it is the throttle's business, not the breaker's.
        decision = self.breakers.record(grant.provider, silent=reply.timed_out, now=now, probe=probe)
        if probe:
            self._end_probe(grant.provider)
        if decision is not None:
            log.warning("destination breaker: %s", decision)

    async def close(self) -> None:
        await asyncio.gather(self.transport.close(), *(transport.close() for transport in self._built))
