"""The deliverability world on loopback: a DNS server, providers' MX hosts, the daemon sending.

A `ZoneServer` holds two sending domains (good.test: SPF passes for the sending IP, the DKIM key
is the configured one, DMARC p=none aligned; bad.test: no DMARC and an SPF include that does
not cover the IP) and three recipient domains whose MX records name Gmail's, Outlook's and
Yahoo's real host names, pointed at aiosmtpd servers on 127.0.0.2, .3 and .4 (one port, as
MX hosts share port 25). Yahoo answers 421 after a few messages. The daemon delivers directly
to the MX hosts from 127.0.0.1, warming that IP up, on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import make_config, write_workspace
from mailer.clock import FakeClock
from mailer.config import Config, TimeoutsConfig
from mailer.daemon import Daemon
from mailer.direct import DirectTransport
from mailer.dkim import public_key_record
from mailer.dnstest import ZoneServer
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.testing import CaptureServer, Received
from mailer.warmup import WarmupPlan

START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)  # a Monday, the sending IP's first warm-up day
SENDING_IP = "127.0.0.1"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TIMEOUTS = TimeoutsConfig(connect=2, mail=5, rcpt=5, data=5)
# Yahoo's deferral for an IP sending more than it likes (senders.yahooinc.com/smtp-error-codes/)
YAHOO_421 = "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or user complaints"
ACCEPTED_BEFORE_421 = 3
REFUSALS = 2

ZONES: dict[str, list[Any]] = {
    "good.test": [{"TXT": f"v=spf1 ip4:{SENDING_IP} -all"}, {"MX": [10, "mx.good.test"]}],
    "mx.good.test": [{"A": "127.0.0.9"}],
    "mailer._domainkey.good.test": [{"TXT": public_key_record(KEY)}],
    "_dmarc.good.test": [{"TXT": "v=DMARC1; p=none; rua=mailto:dmarc@good.test"}],
    "1.0.0.127.in-addr.arpa": [{"PTR": "mail.good.test"}],
    "mail.good.test": [{"A": SENDING_IP}],
    # the include names the provider the domain used to send through, not this IP
    "bad.test": [{"TXT": "v=spf1 include:_spf.oldesp.test -all"}, {"MX": [10, "mx.good.test"]}],
    "_spf.oldesp.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "mailer._domainkey.bad.test": [{"TXT": public_key_record(KEY)}],
    # recipients: recognised by their MX host names, whatever the domain is called
    "gmail-users.test": [{"MX": [10, "gmail-smtp-in.l.google.com"]}],
    "gmail-smtp-in.l.google.com": [{"A": "127.0.0.2"}],
    "outlook-users.test": [{"MX": [10, "outlook-users-test.mail.protection.outlook.com"]}],
    "outlook-users-test.mail.protection.outlook.com": [{"A": "127.0.0.3"}],
    "yahoo-users.test": [{"MX": [1, "mta5.am0.yahoodns.net"]}],
    "mta5.am0.yahoodns.net": [{"A": "127.0.0.4"}],
}
PROVIDERS = {"gmail": "gmail-users.test", "microsoft": "outlook-users.test", "yahoo": "yahoo-users.test"}
LEADS = {"gmail": 12, "microsoft": 9, "yahoo": 9}
BAD_LEADS = 5
SCENARIO = """
name: {name}
sender: {sender}
entry:
  list: {list}
timezone: UTC
steps:
  - id: welcome
    wait: 0m
    subject: "ようこそ {{{{ lead.first_name }}}}、{name}"
    template: one.html
"""
WARMUP = {
    "enabled": True,
    "schedule": [120, 180],  # day 1: 120 for the IP, 10 an hour over 12 hours
    "spread_hours": 12,
    "min_hourly": 1,
    "shares": {"gmail": 0.4, "microsoft": 0.3, "yahoo": 0.3},  # 48, 36, 36 a day: 4, 3, 3 an hour
    "clean_period": "30m",
    "repeat_window": "30m",
}


class RateLimitingServer(CaptureServer):
    """Accepts `after` messages, then answers the next `refusals` recipients with Yahoo's 421."""

    def __init__(self, *, after: int, refusals: int, **options: Any) -> None:
        super().__init__(**options)
        self.after = after
        self.refusals = refusals
        self.refused: list[str] = []
        self.refused_at: list[datetime] = []  # clock times, once `clock` is set
        self.clock: FakeClock | None = None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if len(self.messages) >= self.after and len(self.refused) < self.refusals:
            self.refused.append(address)
            if self.clock is not None:
                self.refused_at.append(self.clock.now())
            return YAHOO_421
        return await super().handle_RCPT(server, session, envelope, address, options)


@asynccontextmanager
async def provider_servers() -> AsyncIterator[tuple[int, dict[str, CaptureServer]]]:
    """Gmail, Outlook and Yahoo stand-ins on 127.0.0.2, .3 and .4, all on one port."""
    for _ in range(10):
        async with AsyncExitStack() as stack:
            servers: dict[str, CaptureServer] = {}
            port = 0
            try:
                for number, provider in enumerate(PROVIDERS, start=2):
                    host = f"127.0.0.{number}"
                    server = (
                        RateLimitingServer(after=ACCEPTED_BEFORE_421, refusals=REFUSALS, host=host, port=port)
                        if provider == "yahoo" else CaptureServer(host=host, port=port)
                    )
                    servers[provider] = await stack.enter_async_context(server)
                    port = server.port
            except OSError:
                continue  # that port was taken on a later alias: try another
            yield port, servers
            return
    raise OSError("no port free on every loopback alias")


def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
    """dkimpy's DNS, answered from the zone data: the same records the daemon's DNS serves."""
    for record in ZONES.get(name.decode().rstrip("."), []):
        if "TXT" in record:
            return str(record["TXT"]).encode()
    return None


def workspace(root: Path, **sections: Any) -> Config:
    write_workspace(root, SCENARIO.format(name="good-news", sender="good", list="good"))
    (root / "scenarios" / "bad.yaml").write_text(SCENARIO.format(name="bad-news", sender="bad", list="bad"), encoding="utf-8")
    key = root / "dkim.pem"
    key.write_bytes(KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    options: dict[str, Any] = {
        "identities": {
            "good": {"from": "Good News <news@good.test>", "return_path": "bounces@good.test"},
            "bad": {"from": "Bad News <news@bad.test>", "return_path": "bounces@bad.test"},
        },
        "delivery": {"mode": "direct", "concurrency": 4, "helo": "mail.good.test"},
        "dkim": {"selector": "mailer", "private_key_file": "dkim.pem"},
        "warmup": WARMUP,
        "ips": {"main": {"address": SENDING_IP, "helo": "mail.good.test", "warmup_start": START.date().isoformat()}},
    }
    options.update(sections)
    return make_config(root, 25, **options)


def leads() -> tuple[list[Lead], list[Lead]]:
    good = [
        Lead(email=f"{provider}{n}@{domain}", first_name=f"{provider.title()}{n}", company="Co")
        for provider, domain in PROVIDERS.items() for n in range(LEADS[provider])
    ]
    bad = [Lead(email=f"bad{n}@gmail-users.test", first_name=f"Bad{n}", company="Co") for n in range(BAD_LEADS)]
    return good, bad


@dataclass
class World:
    daemon: Daemon
    store: SQLiteStore
    clock: FakeClock
    servers: dict[str, CaptureServer]

    async def settle(self) -> None:
        """Real time for the daemon to act on what is due now: until nothing is in flight for a while."""
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0.02)
            busy = self.daemon._in_flight or not self.daemon._queue.empty() or self.daemon._pending
            quiet = 0 if busy else quiet + 1
        await self.daemon.flush()

    async def run(self, until: Callable[[], Awaitable[bool]], *, step: timedelta, limit: timedelta) -> None:
        """Advance the clock a step at a time, letting the daemon act after each, until `until()`."""
        began = self.clock.now()
        while not await until():
            if self.clock.now() - began > limit:
                raise AssertionError(f"not done after {limit}: {await self.store.message_counts()}")
            await self.clock.advance(step)
            await self.settle()


@asynccontextmanager
async def world(tmp_path: Path, config: Config | None = None, *, start: datetime = START, seed: int = 7) -> AsyncIterator[World]:
    config = config or workspace(tmp_path)
    async with ZoneServer(ZONES) as dns, provider_servers() as (port, servers), SQLiteStore(config.store) as store:
        good, bad = leads()
        await store.upsert_leads(good, list_name="good", now=start)
        await store.upsert_leads(bad, list_name="bad", now=start)
        transport = DirectTransport(resolver=dns.resolver(timeout=1.0), timeouts=TIMEOUTS, port=port, helo="mail.good.test", mta_sts=False)
        clock = FakeClock(start)
        for server in servers.values():
            if isinstance(server, RateLimitingServer):
                server.clock = clock
        daemon = Daemon(
            config=config, store=store, clock=clock, transport=transport, resolver=dns.resolver(timeout=1.0), rng=random.Random(seed)
        )
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        try:
            yield World(daemon, store, clock, servers)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


def arrivals_per_hour(messages: list[Received]) -> Counter[datetime]:
    """Messages per clock hour, by their Date header (the clock's time of the attempt)."""
    hours: Counter[datetime] = Counter()
    for message in messages:
        sent = parsedate_to_datetime(str(message.parsed()["Date"]))
        hours[sent.astimezone(timezone.utc).replace(minute=0, second=0)] += 1
    return hours


async def test_the_world_refuses_the_bad_domain_respects_caps_slows_for_421s_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """bad.test is refused with its report; every provider stays within its hourly cap; Yahoo's 421s slow it and it recovers; every good.test message arrives once, DKIM-valid."""
    caplog.set_level(logging.INFO, logger="mailer")
    config = workspace(tmp_path)
    good, _ = leads()
    async with world(tmp_path, config) as w:

        async def all_sent_and_recovered() -> bool:
            yahoo = w.daemon.outbound.budget.throttle("main", "yahoo", w.clock.now())  # as each attempt asks
            return await w.store.message_counts() == {"sent": len(good)} and yahoo.multiplier == 1.0

        await w.run(all_sent_and_recovered, step=timedelta(minutes=5), limit=timedelta(hours=16))
        await w.daemon.flush()
        throttles = await w.store.warmup_throttles()
        enrollments = await w.store.enrollment_counts()

    # the bad domain: refused at start with the failures named and the records to publish
    assert set(w.daemon.domains.refused) == {"bad.test"}
    [refusal] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "bad.test refused" in r.getMessage()]
    assert "hard failure of spf" in refusal and "bad-news" in refusal
    assert 'bad.test. TXT "v=spf1 ip4:127.0.0.1' in refusal  # the SPF record to publish
    assert '_dmarc.bad.test. TXT "v=DMARC1; p=none' in refusal  # and the missing DMARC record
    every = [m for server in w.servers.values() for m in server.messages]
    assert not [m for m in every if m.mail_from.endswith("@bad.test")]
    assert enrollments == {"completed": len(good)}, "bad-news enrolled nobody while paused"

    # caps: no provider above its hourly cap, the IP above its own, in any clock hour
    plan = WarmupPlan.from_config(config)
    ip = plan.ip("main")
    caps = {provider: plan.caps(ip, provider, START.date()) for provider in PROVIDERS}
    hours = {provider: arrivals_per_hour(server.messages) for provider, server in w.servers.items()}
    for provider, counted in hours.items():
        cap = caps[provider].hour
        assert cap is not None and max(counted.values()) <= cap, (provider, counted, cap)
    assert max((sum(hours[p][h] for p in hours) for h in hours["gmail"]), default=0) <= (caps["gmail"].ip_hour or 0)
    assert max(hours["gmail"].values()) == caps["gmail"].hour, "the cap was reached, so it is what held Gmail back"

    # Yahoo: slowed by its 421s, recovered afterwards; nobody else was touched
    yahoo = w.servers["yahoo"]
    assert isinstance(yahoo, RateLimitingServer) and len(yahoo.refused) == REFUSALS
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm-up: main → ")]
    assert any(d.startswith("warm-up: main → yahoo: slowed to ×0.50") and "TSS04" in d for d in decisions)
    assert decisions[-1].startswith("warm-up: main → yahoo: back to the schedule (×1.00)")
    assert {d.split(":")[1].split("→ ")[1] for d in decisions} == {"yahoo"}
    assert throttles[("main", "yahoo")].multiplier == 1.0
    after_refusal = yahoo.refused_at[0].replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert hours["yahoo"][after_refusal] < (caps["yahoo"].hour or 0), "slowed below its cap in the hour after the 421"
    assert sum(n for h, n in hours["yahoo"].items() if h > after_refusal) > 0, "and sending again later"

    # nothing lost or doubled: every good lead got its one message, each verified by dkimpy
    assert sorted(r for m in every for r in m.rcpt_tos) == sorted(lead.email for lead in good)
    assert sum(server.duplicates for server in w.servers.values()) == 0
    for message in every:
        assert dkim.verify(message.data, dnsfunc=dnsfunc), message.rcpt_tos
        assert message.mail_from == "bounces@good.test"


async def test_an_operator_override_sends_from_the_failing_domain(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With bad.test in [delivery] allow_failing_domains its scenario sends, and the failures are logged as a warning."""
    caplog.set_level(logging.WARNING, logger="mailer")
    config = workspace(tmp_path, delivery={"mode": "direct", "helo": "mail.good.test", "allow_failing_domains": ["bad.test"]})
    _, bad = leads()
    async with world(tmp_path, config) as w:

        async def bad_sent() -> bool:
            return len([m for m in w.servers["gmail"].messages if m.mail_from.endswith("@bad.test")]) == len(bad)

        await w.run(bad_sent, step=timedelta(minutes=5), limit=timedelta(hours=12))
    assert w.daemon.domains.refused == {}
    assert any("bad.test fails spf, sent from anyway" in r.getMessage() for r in caplog.records)


async def test_warmup_counters_persist_across_a_restart(tmp_path: Path) -> None:
    """A daemon restarted within the day continues from the day's stored use: Gmail gets no more than its daily cap."""
    warmup = {**WARMUP, "schedule": [20, 40], "spread_hours": 1}  # Gmail: 8 a day on day 1, 16 on day 2
    config = workspace(tmp_path, warmup=warmup)
    plan = WarmupPlan.from_config(config)
    day_cap = plan.caps(plan.ip("main"), "gmail", START.date()).day
    assert day_cap == 8

    async def gmail_received(w: World) -> int:
        return len(w.servers["gmail"].messages)

    async with world(tmp_path, config) as first:
        async def capped() -> bool:
            return await gmail_received(first) == day_cap

        await first.run(capped, step=timedelta(minutes=5), limit=timedelta(hours=4))
        stopped_at = first.clock.now()
    async with world(tmp_path, config, start=stopped_at) as second:
        usage: Counter[str] = Counter()
        for row in await second.store.warmup_usage(since=START.date()):
            usage[row.provider] += row.attempts
        assert usage["gmail"] == day_cap
        for _ in range(12):  # two more hours of the same day
            await second.clock.advance(minutes=10)
            await second.settle()
        assert await gmail_received(second) == 0, "the day's Gmail budget was spent before the restart"
        assert second.daemon.outbound.budget.allowance("main", "gmail", second.clock.now()) == 0
