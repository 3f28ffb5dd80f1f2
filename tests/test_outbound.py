"""Outbound: provider keys from MX hosts, holds when the budget is spent, connection slots, budget returned."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from conftest import make_config
from mailer.config import Config, TimeoutsConfig
from mailer.direct import DirectTransport
from mailer.dnstest import ZoneServer
from mailer.breaker import PATIENCE_SECONDS
from mailer.outbound import CAP_JITTER, PACE_JITTER, PAUSE_JITTER, Hold, Outbound
from mailer.reply import SMTPReply
from mailer.testing import CaptureServer
from mailer.transport import Envelope
from mailer.warmup import WarmupPlan

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
ZONES: dict[str, list[Any]] = {
    "acme-corp.test": [{"MX": [10, "aspmx.l.google.com"]}],
    "aspmx.l.google.com": [{"A": "127.0.0.2"}],
    "shop.test": [{"MX": [10, "mx1.shop.test"]}],
    "mx1.shop.test": [{"A": "127.0.0.3"}],
}
MESSAGE = b"From: news@acme.example\r\nTo: x@example.com\r\nSubject: hi\r\n\r\nHello\r\n"


def outbound(config: Config, **options: Any) -> Outbound:
    return Outbound(config=config, plan=WarmupPlan.from_config(config), rng=random.Random(3), **options)


def warming(tmp_path: Path, port: int = 25, **sections: Any) -> Config:
    """One IP on day 1 of a 100-a-day ramp: Gmail may take 40 a day, 10 an hour, 1 a minute."""
    return make_config(
        tmp_path, port,
        warmup={"enabled": True, "schedule": [100], "spread_hours": 4, "min_hourly": 1},
        ips={"main": {"warmup_start": "2026-01-05"}},
        **sections,
    )  # fmt: skip


async def test_providers_are_known_by_mx_host_and_other_receivers_by_site(tmp_path: Path) -> None:
    """Direct: a company on Google's MX is gmail, an unknown receiver is other:<its MX's domain>; relay: by domain only."""
    async with ZoneServer(ZONES) as dns:
        timeouts = TimeoutsConfig(connect=1, mail=1, rcpt=1, data=1)
        direct = outbound(make_config(tmp_path, 25), transport=DirectTransport(resolver=dns.resolver(timeout=0.5), timeouts=timeouts))
        assert await direct.receiver("a@acme-corp.test") == "gmail"
        assert await direct.receiver("a@shop.test") == "other:shop.test"
        assert await direct.receiver("a@nowhere.test") == "other:nowhere.test"  # no MX: the domain itself
        await direct.close()
    relay = outbound(make_config(tmp_path, 25), transport=None)
    assert await relay.receiver("a@gmail.com") == "gmail"
    assert await relay.receiver("a@acme-corp.test") == "other:acme-corp.test"
    assert await relay.receiver("b@mail.Example.co.uk") == "other:example.co.uk"
    await relay.close()


async def test_a_spent_budget_holds_with_jitter_by_what_holds_it(tmp_path: Path) -> None:
    """Pace: back within a minute plus up to 10; the hourly cap: after the hour plus up to 30; a pause: its end plus up to 5."""
    sender = outbound(warming(tmp_path), transport=None)
    assert sender.pick("gmail", T0) == "main"
    sender.reserve("main", "gmail", T0)
    paced = sender.pick("gmail", T0)
    assert isinstance(paced, Hold) and "rate of 1/min" in paced.reason
    assert T0 < paced.until <= T0 + timedelta(minutes=1) + PACE_JITTER
    for minute in range(1, 10):
        assert sender.reserve("main", "gmail", T0 + timedelta(minutes=minute)) is not None
    capped = sender.pick("gmail", T0 + timedelta(minutes=20))
    assert isinstance(capped, Hold) and "hourly cap 10" in capped.reason
    assert T0 + timedelta(hours=1) <= capped.until <= T0 + timedelta(hours=1) + CAP_JITTER
    grant = sender.reserve("main", "microsoft", T0)
    assert grant is not None
    sender.record(grant, SMTPReply.parse(554, "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org", command="RCPT"), T0)
    paused = sender.pick("microsoft", T0)
    assert isinstance(paused, Hold) and "microsoft paused" in paused.reason
    assert T0 + timedelta(minutes=30) <= paused.until <= T0 + timedelta(minutes=30) + PAUSE_JITTER
    await sender.close()


async def test_an_attempt_that_reached_no_server_gives_its_budget_back(tmp_path: Path) -> None:
    """No route in DNS or nobody listening takes nothing from the day's budget; a 421 greeting does."""
    sender = outbound(warming(tmp_path), transport=None)
    budget = sender.budget

    def used_today() -> int:
        [row] = [row for row in budget.status(T0) if row.provider == "gmail"]
        return row.day_used

    for minute, reply in enumerate((
        SMTPReply(code=None, text="no MX", command="DNS", host="x.test"),
        SMTPReply(code=None, text="ConnectionRefusedError", command="CONNECT", host="mx.x.test"),
    )):  # fmt: skip
        grant = sender.reserve("main", "gmail", T0 + timedelta(minutes=minute))
        assert grant is not None
        sender.record(grant, reply, T0)
        assert used_today() == 0
    grant = sender.reserve("main", "gmail", T0 + timedelta(minutes=2))
    assert grant is not None
    sender.record(grant, SMTPReply.parse(421, "4.7.0 Try again later, closing connection", command="CONNECT"), T0)
    assert used_today() == 1 and budget.throttle("main", "gmail", T0).multiplier == 0.5
    await sender.close()


async def test_a_provider_gets_no_more_connections_at_once_than_its_limit(tmp_path: Path) -> None:
    """With [providers.other] concurrency = 1, three messages sent together share one SMTP session."""
    async with CaptureServer() as server:
        server.data_delay = 0.1
        sender = outbound(make_config(tmp_path, server.port, providers={"other": {"concurrency": 1}}), transport=None)
        grants = [sender.reserve("default", "other:example.com", T0) for _ in range(3)]
        envelope = Envelope("bounces@acme.example", "x@example.com")
        replies = await asyncio.gather(*(sender.send(g, envelope, MESSAGE, now=lambda: T0) for g in grants if g is not None))
        await sender.close()
    assert [reply.code for reply in replies] == [250, 250, 250]
    assert server.connections == 1 and len(server.messages) == 3


class GreetingRecorder(CaptureServer):
    """Records each session's EHLO name and the address it came from."""

    def __init__(self) -> None:
        super().__init__()
        self.greetings: list[tuple[str, str]] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.greetings.append((hostname, session.peer[0]))
        return responses


async def test_with_a_relay_each_sending_ip_connects_from_its_address_with_its_name(tmp_path: Path) -> None:
    """[ips.NAME] address and helo are the relay session's source address and EHLO name."""
    async with GreetingRecorder() as server:
        ips = {
            "a": {"address": "127.0.0.1", "helo": "a.acme.example", "warmup": False},
            "b": {"address": "127.0.0.5", "helo": "b.acme.example", "warmup": False},
        }
        sender = outbound(make_config(tmp_path, server.port, ips=ips), transport=None)
        envelope = Envelope("bounces@acme.example", "x@example.com")
        for ip in ("a", "b"):
            grant = sender.reserve(ip, "other:example.com", T0)
            assert grant is not None
            assert (await sender.send(grant, envelope, MESSAGE, now=lambda: T0)).code == 250
        await sender.close()
    assert sorted(server.greetings) == [("a.acme.example", "127.0.0.1"), ("b.acme.example", "127.0.0.5")]


async def test_direct_each_ip_greets_with_its_name_and_sessions_follow_the_provider_limit(tmp_path: Path) -> None:
    """Direct mode: each [ips.NAME] greets the MX with its own helo, and [providers.NAME] per_connection closes sessions."""
    async with GreetingRecorder() as server:
        zones: dict[str, list[Any]] = {"shop.test": [{"MX": [10, "mx1.shop.test"]}], "mx1.shop.test": [{"A": "127.0.0.1"}]}
        async with ZoneServer(zones) as dns:
            ips = {
                "a": {"address": "127.0.0.1", "helo": "a.acme.example", "warmup": False},
                "b": {"address": "127.0.0.5", "helo": "b.acme.example", "warmup": False},
            }
            config = make_config(tmp_path, server.port, ips=ips, providers={"other": {"per_connection": 2}})
            timeouts = TimeoutsConfig(connect=2, mail=2, rcpt=2, data=2)
            transport = DirectTransport(resolver=dns.resolver(timeout=0.5), timeouts=timeouts, port=server.port, helo="fallback.example")
            sender = outbound(config, transport=transport)
            for ip in ("a", "a", "a", "b"):
                provider = await sender.receiver("x@shop.test")
                grant = sender.reserve(ip, provider, T0)
                assert grant is not None
                reply = await sender.send(grant, Envelope("bounces@acme.example", "x@shop.test"), MESSAGE, now=lambda: T0)
                assert reply.code == 250
            await sender.close()
    # three messages from a: two over its first session, the third over a new one; b its own
    assert sorted(server.greetings) == [
        ("a.acme.example", "127.0.0.1"), ("a.acme.example", "127.0.0.1"), ("b.acme.example", "127.0.0.5"),
    ]
    assert len(server.messages) == 4


async def test_followers_of_a_probe_wait_for_its_smtp_attempt_not_for_its_build(tmp_path: Path) -> None:
    """While the first message to a new destination is still being built, the next ones wait; once
    it is sending, they wait PATIENCE_SECONDS for its reply and are then held, not sooner."""
    out = outbound(make_config(tmp_path, 25), transport=None)
    first = await out.admit("other:new.example", T0)
    assert first.probe
    follower = asyncio.ensure_future(out.admit("other:new.example", T0))
    await asyncio.sleep(3 * PATIENCE_SECONDS)  # a slow build: the receiver has not even been asked
    assert not follower.done()
    out.probe_sending("other:new.example")
    await asyncio.sleep(PATIENCE_SECONDS / 2)
    assert not follower.done()
    admission = await asyncio.wait_for(follower, 2 * PATIENCE_SECONDS)
    assert not admission.go and not admission.probe  # silent past its patience: held
    out.abandon("other:new.example", first)
