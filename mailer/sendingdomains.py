"""Which sending domains may send now: refused at start by their DNS, or braked by complaints.

Both are judged per From domain, because that is what receivers judge: DMARC aligns on it and
Gmail's spam rate is the rate of the domain. A refused or braked domain's messages are held
(not attempted, so they never expire for it) and its scenarios stop planning new steps;
every other domain keeps sending.

- At start (`check`), each identity's From domain goes through `mailer.domaincheck` from every
  sending IP. A hard failure (see that module) refuses the domain until the records are fixed
  and the daemon restarted, unless `[delivery] allow_failing_domains` names it. A temporary
  DNS error, or a check that does not finish in time, never refuses: nothing is known yet.
- While running (`refresh`), each domain's complaints (ARF feedback reports) over the last 24
  hours against the messages it sent go through `mailer.warmup.complaint_brake`: a warning is
  logged once an hour, a stop holds the domain until its rate is back under the line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import dns.asyncresolver

from mailer.config import Config
from mailer.domaincheck import DomainReport, check_domain, format_report
from mailer.errors import UserError
from mailer.outbound import Hold
from mailer.store import Store
from mailer.warmup import Brake, complaint_brake
from mailer.wording import counted

log = logging.getLogger("mailer.daemon")

CHECK_SECONDS = 20.0  # real time the start-up check may take; then sending starts without it
REFUSED_RETRY = timedelta(minutes=15)  # a refused domain's messages look again this often (clock)
BRAKE_RETRY = timedelta(minutes=30)  # a braked domain's messages wait at least this long
COMPLAINT_WINDOW = timedelta(hours=24)  # Gmail's Postmaster Tools spam rate is a daily rate
COMPLAINT_CHECK = timedelta(minutes=10)  # how often the complaint counts are read (clock)
WARN_EVERY = timedelta(hours=1)
# Below this many messages in the window a rate means little (two complaints in 500 are 0.4%):
# the brake warns but does not stop. Gmail's bulk-sender rules start at 5,000 messages a day
# (support.google.com/mail/answer/81126); this stops well before that.
MIN_SENT_FOR_STOP = 500
HOUR = 3600  # seconds

DomainOf = Callable[[str, str], "str | None"]  # (scenario, step id) → its From domain


def domain_of_address(address: str) -> str:
    return address.rpartition("@")[2].lower()


class SendingDomains:
    """The standing of each From domain: checked at start, braked by complaints while running."""

    def __init__(self, *, thresholds: tuple[float, float], allow_failing: Iterable[str] = ()) -> None:
        self.thresholds = thresholds
        self.allow_failing = frozenset(domain.lower() for domain in allow_failing)
        self.reports: dict[str, list[DomainReport]] = {}  # of the start-up check, per domain
        self.refused: dict[str, str] = {}  # domain → the hard failures, in words
        self.brakes: dict[str, Brake] = {}
        self._sent: dict[str, Counter[int]] = {}  # domain → hour number → messages sent
        self._complaints: dict[str, int] = {}
        self._warned: dict[str, datetime] = {}
        self._next_refresh: datetime | None = None

    # -- the answer the daemon asks for ----------------------------------------------------

    def hold(self, domain: str, now: datetime) -> Hold | None:
        """Why and until when a message from `domain` waits; None when it may go."""
        domain = domain.lower()
        if domain in self.refused:
            return Hold(now + REFUSED_RETRY, f"sending domain {domain} refused at start: {self.refused[domain]}")
        if self.brakes.get(domain) == "stop":
            return Hold(now + BRAKE_RETRY, f"sending domain {domain} stopped by its complaint rate ({self._rate(domain, now)})")
        return None

    # -- at start --------------------------------------------------------------------------

    async def check(
        self, config: Config, resolver: dns.asyncresolver.Resolver, *, scenarios: Mapping[str, list[str]]
    ) -> None:
        """Check every identity's From domain from every sending IP; refuse the hard failures.

        `scenarios` names each domain's scenarios, for the report of what is paused.
        """
        domains = dict.fromkeys(domain_of_address(identity.from_address) for identity in config.identities.values())

        async def one(domain: str) -> None:
            try:
                self.reports[domain] = [await _check(config, resolver, domain, sender) for sender in _senders(config)]
            except UserError as error:
                log.error("sending domain %s cannot be checked: %s", domain, error)

        try:
            await asyncio.wait_for(asyncio.gather(*(one(domain) for domain in domains)), CHECK_SECONDS)
        except TimeoutError:
            log.warning("the sending domain check did not finish in %.0f s; sending without its verdict", CHECK_SECONDS)
        for domain, reports in self.reports.items():
            self._judge(domain, reports, scenarios.get(domain, []))

    def _judge(self, domain: str, reports: list[DomainReport], scenarios: list[str]) -> None:
        failures = list(dict.fromkeys(f.check for report in reports for f in report.hard_failures))
        shown = "\n".join(format_report(report) for report in reports)
        if not failures:
            if all(report.ready for report in reports):
                log.info("sending domain %s is ready for bulk sending", domain)
            else:
                unmet = ", ".join(dict.fromkeys(u for report in reports for u in report.unmet))
                log.warning("sending domain %s is not ready for bulk sending (%s); sending anyway:\n%s", domain, unmet, shown)
            return
        if domain in self.allow_failing:
            log.warning(
                "sending domain %s fails %s, sent from anyway ([delivery] allow_failing_domains):\n%s",
                domain, ", ".join(failures), shown,
            )  # fmt: skip
            return
        self.refused[domain] = "hard failure of " + ", ".join(failures)
        paused = ", ".join(scenarios) or "none"
        log.error(
            "sending domain %s refused: hard failure of %s. Its scenarios are paused (%s); other domains keep sending. "
            'Publish the records below and restart, or list it in [delivery] allow_failing_domains to send anyway.\n%s',
            domain, ", ".join(failures), paused, shown,
        )  # fmt: skip

    # -- while running: the complaint brake ------------------------------------------------

    def count_sent(self, domain: str, at: datetime) -> None:
        """One message of `domain` accepted by a receiver at `at`."""
        self._sent.setdefault(domain.lower(), Counter())[int(at.timestamp()) // HOUR] += 1

    async def load(self, store: Store, now: datetime, domain_of: DomainOf) -> None:
        """What each domain sent over the window, from the store: once, at start."""
        for scenario, step_id, hour, count in await store.sent_per_hour(since=now - COMPLAINT_WINDOW):
            domain = domain_of(scenario, step_id)
            if domain is not None:
                self._sent.setdefault(domain, Counter())[hour] += count

    async def refresh(self, store: Store, now: datetime, domain_of: DomainOf) -> None:
        """Read the complaints of the window (at most every COMPLAINT_CHECK) and judge each domain."""
        if self._next_refresh is not None and now < self._next_refresh:
            return
        self._next_refresh = now + COMPLAINT_CHECK
        complaints: Counter[str] = Counter()
        for scenario, step_id, count in await store.complaints_since(since=now - COMPLAINT_WINDOW):
            domain = domain_of(scenario, step_id)
            if domain is not None:
                complaints[domain] += count
        self._complaints = dict(complaints)
        for domain in set(self._sent) | set(complaints) | set(self.brakes):
            self._brake(domain, now)

    def _window_sent(self, domain: str, now: datetime) -> int:
        hours = self._sent.get(domain)
        if not hours:
            return 0
        first = (int(now.timestamp()) - int(COMPLAINT_WINDOW.total_seconds())) // HOUR + 1
        for hour in [hour for hour in hours if hour < first]:
            del hours[hour]
        return sum(hours.values())

    def _rate(self, domain: str, now: datetime) -> str:
        complaints, sent = self._complaints.get(domain, 0), self._window_sent(domain, now)
        rate = f"{complaints / sent:.2%}" if sent else "no messages"
        return f"{counted(complaints, 'complaint')} for {counted(sent, 'message')} in 24 h: {rate}"

    def _brake(self, domain: str, now: datetime) -> None:
        before = self.brakes.get(domain, "ok")
        sent = self._window_sent(domain, now)
        brake = complaint_brake(self._complaints.get(domain, 0), sent, self.thresholds, min_delivered=MIN_SENT_FOR_STOP)
        self.brakes[domain] = brake
        warn, stop = self.thresholds
        if brake == "stop" and before != "stop":
            log.error(
                "complaint brake: sending from %s stops: %s, at or above %.2f%% (Gmail's line). Its messages wait "
                "until the rate is back under it; find the cause (list source, consent, content) first.",
                domain, self._rate(domain, now), stop * 100,
            )  # fmt: skip
        elif brake != "stop" and before == "stop":
            log.warning("complaint brake: sending from %s resumes: %s", domain, self._rate(domain, now))
        if brake == "warn" and now - self._warned.get(domain, now - WARN_EVERY) >= WARN_EVERY:
            self._warned[domain] = now
            log.warning(
                "complaint warning for %s: %s, at or above %.2f%%; at %.2f%% sending stops",
                domain, self._rate(domain, now), warn * 100, stop * 100,
            )  # fmt: skip


@dataclass(frozen=True)
class _Sender:
    ip: str | None  # None: not known here (a relay's, or the system's choice)
    helo: str
    relay_tls: bool | None  # None: direct delivery, TLS is each receiver's


def _senders(config: Config) -> list[_Sender]:
    """Where mail leaves from, as receivers see it: each sending IP, or the relay.

    With a relay the IP that receivers see is the relay's, not ours: SPF and reverse DNS are
    then not checked (never hard failures); DKIM, DMARC and alignment still are.
    """
    if config.delivery.mode != "direct":
        return [_Sender(None, config.relay.helo, config.relay.tls != "none")]
    found = dict.fromkeys((ip.address or None, ip.helo or config.delivery.helo) for ip in config.ips.values())
    return [_Sender(ip, helo, None) for ip, helo in found]


async def _check(config: Config, resolver: dns.asyncresolver.Resolver, domain: str, sender: _Sender) -> DomainReport:
    identity = next(i for i in config.identities.values() if domain_of_address(i.from_address) == domain)
    dkim = config.dkim
    return await check_domain(
        domain, resolver=resolver, ip=sender.ip, helo=sender.helo, relay_tls=sender.relay_tls,
        selector=dkim.selector if dkim.private_key_file else None,
        dkim_key=Path(dkim.private_key_file) if dkim.private_key_file else None,
        ed25519_selector=dkim.selector_for("ed25519") if dkim.private_key_file and dkim.ed25519_key_file else None,
        ed25519_key=Path(dkim.ed25519_key_file) if dkim.private_key_file and dkim.ed25519_key_file else None,
        return_path_domain=config.bounces.domain or domain_of_address(identity.envelope_sender),
        dkim_domain=dkim.domain or None,
    )  # fmt: skip
