"""Sending domains: the start-up check's verdicts and the complaint brake through a running daemon."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import make_config, make_leads, write_workspace
from mailer.clock import FakeClock
from mailer.config import parse_config
from mailer.daemon import Daemon
from mailer.dnstest import ZoneServer
from mailer.errors import ConfigError
from mailer.sendingdomains import SendingDomains
from mailer.sqlitestore import SQLiteStore
from mailer.store import BounceRecord
from mailer.testing import CaptureServer

MONDAY_9AM = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
TWO_STEPS = """
name: news
sender: default
entry:
  list: signups
timezone: UTC
steps:
  - id: one
    wait: 0m
    subject: "One for {{ lead.first_name }}"
    template: one.html
  - id: two
    wait: 1h
    subject: "Two for {{ lead.first_name }}"
    template: two.html
"""


def test_the_check_is_on_by_default_in_direct_mode_only() -> None:
    """Unwritten, [delivery] check_domains is true in direct mode and false with a relay; a written value wins."""
    def delivery(**keys: Any) -> Any:
        return parse_config({"delivery": keys}).delivery

    assert delivery().check_domains is False
    assert delivery(mode="direct").check_domains is True
    assert delivery(mode="direct", check_domains=False).check_domains is False
    assert delivery(check_domains=True).check_domains is True
    assert delivery(allow_failing_domains=["Acme.Example"]).allow_failing_domains == ("acme.example",)


def test_allow_failing_domains_must_be_domain_names() -> None:
    """A value that is not a list of domain names is a config error naming the key."""
    with pytest.raises(ConfigError) as error:
        parse_config({"delivery": {"allow_failing_domains": "acme.example"}})
    assert error.value.field == "delivery.allow_failing_domains"


async def test_a_dns_timeout_never_refuses_a_domain(caplog: pytest.LogCaptureFixture) -> None:
    """A sending domain whose every record times out is not known to fail: it keeps sending."""
    zones: dict[str, list[Any]] = {name: ["TIMEOUT"] for name in ("slow.test", "_dmarc.slow.test", "1.2.0.192.in-addr.arpa")}
    config = parse_config({
        "identities": {"default": {"from": "news@slow.test"}},
        "delivery": {"mode": "direct"},
        "ips": {"main": {"address": "192.0.2.1", "warmup": False}},
    })  # fmt: skip
    domains = SendingDomains(thresholds=(0.001, 0.003))
    async with ZoneServer(zones) as dns:
        await domains.check(config, dns.resolver(timeout=0.3), scenarios={})
    assert domains.refused == {}
    assert [finding.check for finding in domains.reports["slow.test"][0].findings if finding.hard] == []
    assert domains.hold("slow.test", MONDAY_9AM) is None


async def test_complaints_over_the_line_stop_the_domain_until_they_age_out(
    tmp_path: Path, smtp_server: CaptureServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complaint rate at Gmail's stop line holds the domain's next step; a day later it resumes and nothing is lost."""
    monkeypatch.setattr("mailer.sendingdomains.MIN_SENT_FOR_STOP", 10)  # a rate from 20 messages, for the test
    caplog.set_level(logging.WARNING, logger="mailer")
    write_workspace(tmp_path, TWO_STEPS)
    config = make_config(tmp_path, smtp_server.port)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(make_leads(20), list_name="signups", now=MONDAY_9AM)
        clock = FakeClock(MONDAY_9AM)
        daemon = Daemon(config=config, store=store, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        try:
            first = await smtp_server.wait_for(20, timeout=30)  # 10 s was once too short on a loaded machine
            message = await store.find_message(message_id=first[0].message_id)
            assert message is not None
            await store.record_bounce(BounceRecord(
                at=clock.now(), source="dsn", email=message.email, kind="feedback", reason="feedback",
                bounce_class="none", action="complaint", message=message.id, lead_id=message.lead_id,
            ))  # fmt: skip
            await clock.advance(minutes=15)  # the next complaint reading: 1 in 20 is 5%
            await asyncio.sleep(0.3)
            assert daemon.domains.brakes["acme.example"] == "stop"
            await clock.advance(hours=1)  # step two is due, but the domain is held
            await asyncio.sleep(0.5)
            assert len(smtp_server.messages) == 20
            await clock.advance(hours=24)  # the complaint and the sends leave the 24-hour window
            await smtp_server.wait_for(40, timeout=30)
            for _ in range(50):
                if await store.message_counts() == {"sent": 40}:
                    break
                await asyncio.sleep(0.05)
            assert await store.message_counts() == {"sent": 40}
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("complaint brake: sending from acme.example stops: 1 complaint for 20 messages") for line in logged)
    assert any(line.startswith("complaint brake: sending from acme.example resumes") for line in logged)
    assert sorted(str(m.parsed()["Subject"]).split()[0] for m in smtp_server.messages) == ["One"] * 20 + ["Two"] * 20
