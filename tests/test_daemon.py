"""The real daemon against a real aiosmtpd server and a real SQLite file, on a fake clock."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import make_config, make_leads, write_workspace
from mailer.clock import FakeClock
from mailer.daemon import Daemon, Report
from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.sqlitestore import SQLiteStore
from mailer.store import Outcome
from mailer.testing import CaptureServer

MONDAY_8AM = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


@dataclass
class Running:
    daemon: Daemon
    store: SQLiteStore
    clock: FakeClock
    server: CaptureServer
    stop: asyncio.Event
    task: asyncio.Task[object]

    async def counts_become(self, expected: dict[str, int], timeout: float = 10.0) -> None:
        """Wait (real time) until the messages' state counts are `expected`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (counts := await self.store.message_counts()) != expected:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"message states {counts}, expected {expected}")
            await asyncio.sleep(0.05)

    async def settle(self) -> None:
        """Give the daemon real time to act on what is due now."""
        for _ in range(3):
            await asyncio.sleep(0.15)
            await self.daemon.flush()


@pytest.fixture
async def running(tmp_path: Path, smtp_server: CaptureServer) -> AsyncIterator[Running]:
    async with run_daemon(tmp_path, smtp_server) as daemon:
        yield daemon


@asynccontextmanager
async def run_daemon(
    tmp_path: Path, smtp_server: CaptureServer, *, busy_timeout: float = 10.0, **sections: dict[str, object]
) -> AsyncIterator[Running]:
    write_workspace(tmp_path)
    config = make_config(tmp_path, smtp_server.port, **sections)
    async with SQLiteStore(config.store, busy_timeout=busy_timeout) as store:
        await store.upsert_leads(make_leads(50), list_name="signups", now=MONDAY_8AM)
        clock = FakeClock(MONDAY_8AM)
        daemon = Daemon(config=config, store=store, clock=clock)
        stop = asyncio.Event()
        task: asyncio.Task[object] = asyncio.create_task(daemon.serve(stop))
        try:
            yield Running(daemon, store, clock, smtp_server, stop, task)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


def _date(message: EmailMessage) -> datetime:
    return parsedate_to_datetime(str(message["Date"]))


async def test_three_steps_arrive_step_by_step_with_waits_and_windows(running: Running) -> None:
    """Fifty leads get three personalized steps, each after its wait and inside the window."""
    await running.settle()
    assert running.server.messages == [], "08:00 is before the 09:00 window opens"

    await running.clock.advance(hours=1)
    first = await running.server.wait_for(50)
    assert {str(m.parsed()["Subject"]).split()[0] for m in first} == {"One"}

    await running.clock.advance(days=1, hours=23)  # Wednesday 08:00: step two not due until 09:00
    await running.settle()
    assert len(running.server.messages) == 50
    await running.clock.advance(hours=1)
    await running.server.wait_for(100)

    await running.clock.advance(days=3)  # Saturday 09:00: due, but the window is weekdays only
    await running.settle()
    assert len(running.server.messages) == 100
    await running.clock.advance(days=2)  # Monday 09:00
    received = await running.server.wait_for(150)

    by_step: dict[str, list[EmailMessage]] = {}
    for item in received:
        message = item.parsed()
        by_step.setdefault(str(message["Subject"]).split()[0], []).append(message)
    assert {k: len(v) for k, v in by_step.items()} == {"One": 50, "Two": 50, "Three": 50}
    expected_days = {"One": MONDAY_8AM.date(), "Two": MONDAY_8AM.date() + timedelta(days=2), "Three": MONDAY_8AM.date() + timedelta(days=7)}
    for step, messages in by_step.items():
        for message in messages:
            sent_at = _date(message)
            assert sent_at.date() == expected_days[step]
            assert 9 <= sent_at.hour < 17 and sent_at.weekday() < 5
    await running.counts_become({"sent": 150})
    assert await running.store.enrollment_counts() == {"completed": 50}


async def test_every_received_message_parses_with_both_parts_and_is_personalized(running: Running) -> None:
    """Each message is multipart/alternative, text then HTML, with the lead's own name in both."""
    await running.clock.advance(hours=1)
    received = await running.server.wait_for(50)
    leads = {lead.email: lead for lead in make_leads(50)}
    message_ids = set()
    for item in received:
        message = item.parsed()
        lead = leads[item.rcpt_tos[0]]
        assert message.get_content_type() == "multipart/alternative"
        parts = [part.get_content_type() for part in message.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert lead.first_name in text and lead.first_name in html
        assert lead.company in html
        assert str(message["Subject"]) == f"One for {lead.first_name}"
        assert message["To"].addresses[0].addr_spec == lead.email
        assert message["To"].addresses[0].display_name == lead.display_name
        assert message["From"].addresses[0].addr_spec == "news@acme.example"
        assert 'style="' in html, "CSS is inlined"
        assert item.mail_from == "bounces@acme.example"
        message_ids.add(str(message["Message-ID"]))
    assert len(message_ids) == 50


async def test_a_451_is_retried_and_then_succeeds(running: Running) -> None:
    """A 451 at RCPT defers the message; the retry after the backoff delivers it."""
    running.server.script("lead007@example.com", "RCPT", "451 4.3.0 Try again later")
    await running.clock.advance(hours=1)
    await running.server.wait_for(49)
    await running.counts_become({"sent": 49, "deferred": 1})

    await running.clock.advance(minutes=25)  # first retry: 20 minutes ±20%
    await running.server.wait_for(50)
    await running.counts_become({"sent": 50})
    lead = await running.store.get_lead("lead007@example.com")
    assert lead is not None and lead.id is not None
    kinds = [event.type for event in await running.store.lead_events(lead.id)]
    assert kinds[-2:] == ["deferred", "sent"]
    deferred = [e for e in await running.store.lead_events(lead.id) if e.type == "deferred"][0]
    assert deferred.data["code"] == 451 and deferred.data["enhanced"] == "4.3.0"


async def test_a_550_ends_as_failed_and_is_never_retried(running: Running) -> None:
    """A 550 5.1.1 at RCPT fails the message at once, with the reply recorded."""
    running.server.script("lead003@example.com", "RCPT", "550 5.1.1 No such user")
    await running.clock.advance(hours=1)
    await running.server.wait_for(49)
    await running.counts_become({"sent": 49, "failed": 1})
    await running.clock.advance(hours=6)
    await running.counts_become({"sent": 49, "failed": 1})
    assert [c for c in running.server.commands if c == ("RCPT", "lead003@example.com")] == [("RCPT", "lead003@example.com")]
    lead = await running.store.get_lead("lead003@example.com")
    assert lead is not None and lead.id is not None
    failed = [e for e in await running.store.lead_events(lead.id) if e.type == "failed"]
    assert failed[0].data["code"] == 550 and failed[0].data["enhanced"] == "5.1.1"
    assert failed[0].data["text"] == "No such user"


async def test_a_deferred_message_expires_after_the_maximum_age(running: Running) -> None:
    """A recipient that answers 4xx for more than four days ends as expired, not retried forever."""
    running.server.script("lead001@example.com", "RCPT", *["451 4.3.0 Temporary local problem, try later"] * 100)
    await running.clock.advance(hours=1)
    await running.server.wait_for(49)
    for _ in range(30):  # 4 hours apart at most: 30 rounds pass 4 days
        await running.clock.advance(hours=4, minutes=50)
        await running.settle()
        if (await running.store.message_counts()).get("expired"):
            break
    lead = await running.store.get_lead("lead001@example.com")
    assert lead is not None and lead.id is not None
    events = [e.type for e in await running.store.lead_events(lead.id) if e.step_id == "one"]
    assert events[-1] == "expired"
    attempts = [e for e in events if e in ("deferred", "expired")]
    assert 8 <= len(attempts) <= 30, "doubling from 20 minutes to a 4 hour cap over 4 days"
    assert (await running.store.message_counts()).get("expired", 0) >= 1


async def test_a_timeout_after_the_final_dot_is_retried_under_the_same_message_id(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """No reply to the final dot within the timeout: deferred as unknown, retried, same Message-ID."""
    timeouts = {"connect": 5, "mail": 5, "rcpt": 5, "data": 0.5}
    async with run_daemon(tmp_path, smtp_server, timeouts=timeouts) as running:
        smtp_server.stall("lead005@example.com", 1.5)
        await running.clock.advance(hours=1)
        await smtp_server.wait_for(50)  # the stalled one is accepted, its reply comes too late
        await running.counts_become({"sent": 49, "deferred": 1})
        lead = await running.store.get_lead("lead005@example.com")
        assert lead is not None and lead.id is not None
        deferred = [e for e in await running.store.lead_events(lead.id) if e.type == "deferred"]
        assert deferred[0].data["code"] is None and "outcome unknown" in deferred[0].data["text"]

        await running.clock.advance(minutes=25)
        await smtp_server.wait_for(51)
        await running.counts_become({"sent": 50})
    copies = [m.parsed()["Message-ID"] for m in smtp_server.messages if m.rcpt_tos == ("lead005@example.com",)]
    assert len(copies) == 2 and copies[0] == copies[1]


async def test_a_locked_database_delays_but_never_loses_or_repeats(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """Another process holding the write lock longer than busy_timeout: rounds fail, retry, and every message is sent once."""
    async with run_daemon(tmp_path, smtp_server, busy_timeout=0.2) as running:
        smtp_server.data_delay = 0.02
        blocker = sqlite3.connect(tmp_path / "mailer.db", isolation_level=None, timeout=30, check_same_thread=False)
        await running.clock.advance(hours=1)
        await smtp_server.wait_for(5)
        # in a thread: waiting for the lock on the event loop would stop the daemon from
        # ever committing the transaction it holds
        await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")  # outcomes and claims now fail for a while
        await asyncio.sleep(1.5)
        blocker.execute("ROLLBACK")
        blocker.close()
        await smtp_server.wait_for(50, timeout=30)
        await running.counts_become({"sent": 50}, timeout=30)
    ids = [m.parsed()["Message-ID"] for m in smtp_server.messages]
    assert len(ids) == len(set(ids)) == 50


async def test_a_550_unknown_user_suppresses_the_address_and_its_later_steps_exit(running: Running) -> None:
    """550 5.1.1 at RCPT: failed, the address suppressed with the reply as evidence, no later step sent."""
    running.server.script("lead003@example.com", "RCPT", "550 5.1.1 The email account that you tried to reach does not exist")
    await running.clock.advance(hours=1)
    await running.counts_become({"sent": 49, "failed": 1})
    assert await running.store.suppressions_of("lead003@example.com") == [
        ("", "hard-bounce", "userunknown: The email account that you tried to reach does not exist")
    ]
    [bounce] = await running.store.bounces(email="lead003@example.com")
    assert (bounce.reason, bounce.bounce_class, bounce.action, bounce.source) == ("userunknown", "hard", "suppress", "smtp")
    assert bounce.evidence.startswith(b"550 5.1.1")
    await running.clock.advance(days=2)
    await running.server.wait_for(98)
    await running.settle()
    assert not [m for m in running.server.messages if m.rcpt_tos == ("lead003@example.com",) and "Two" in str(m.parsed()["Subject"])]


async def test_a_blocklisting_refusal_suppresses_nobody_and_pauses_that_provider(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """554 5.7.1 'blocked using Spamhaus': nobody suppressed, the provider's other messages wait, all retried later."""
    async with run_daemon(tmp_path, smtp_server, delivery={"concurrency": 1}) as running:
        blocked = [Lead(email=f"b{n}@blocked.example", first_name=f"B{n}", company="Blocked") for n in range(3)]
        await running.store.upsert_leads(blocked, list_name="signups", now=MONDAY_8AM)
        smtp_server.script("b0@blocked.example", "RCPT", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org")
        await running.clock.advance(hours=1)
        await running.counts_become({"sent": 50, "deferred": 3})
        assert [c for c in smtp_server.commands if c[0] == "RCPT" and "blocked.example" in c[1]] == [("RCPT", "b0@blocked.example")]
        assert [await running.store.suppressions_of(lead.email) for lead in blocked] == [[], [], []]
        [bounce] = await running.store.bounces(email="b0@blocked.example")
        assert bounce.action == "sender-alert" and bounce.suppression is None
        await running.clock.advance(minutes=35)  # past the 30-minute pause and the 20-minute retry
        await running.counts_become({"sent": 53})


async def test_greylisting_is_a_plain_deferral(running: Running) -> None:
    """451 4.7.1 greylisted: retried, no bounce recorded, no alert, nobody paused."""
    running.server.script("lead006@example.com", "RCPT", "451 4.7.1 Greylisted, please try again later")
    await running.clock.advance(hours=1)
    await running.counts_become({"sent": 49, "deferred": 1})
    assert await running.store.bounces(email="lead006@example.com") == []


async def test_a_full_mailbox_is_retried_then_escalated_to_a_suppression(running: Running) -> None:
    """452 4.2.2 mailbox full three times within the window: the third suppresses (soft-bounce escalation)."""
    running.server.script("lead006@example.com", "RCPT", *["452 4.2.2 Mailbox full"] * 3)
    await running.clock.advance(hours=1)
    await running.counts_become({"sent": 49, "deferred": 1})
    await running.clock.advance(minutes=25)
    await running.server.wait_for(49)
    for _ in range(20):
        if (await running.store.message_counts()).get("failed"):
            break
        await running.clock.advance(minutes=25)
        await running.settle()
    await running.counts_become({"sent": 49, "failed": 1})
    [(_, reason, _)] = await running.store.suppressions_of("lead006@example.com")
    assert reason == "soft-bounce-escalation"
    actions = [b.action for b in await running.store.bounces(email="lead006@example.com")]
    assert sorted(actions) == ["retry", "retry", "soft-bounce-escalation"]


async def test_with_a_bounce_domain_every_message_has_its_own_signed_verp_sender(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """MAIL FROM is bounces+<signed token>@bounce domain, and the token names that message."""
    from mailer.tokens import Signer
    from mailer.verp import message_of

    (tmp_path / "mailer.key").write_text("k" * 48 + "\n")
    async with run_daemon(tmp_path, smtp_server, bounces={"domain": "bounce.acme.example"}) as running:
        await running.clock.advance(hours=1)
        received = await smtp_server.wait_for(50)
        await running.counts_become({"sent": 50})
        signer = Signer([b"k" * 48])
        found = set()
        for item in received:
            row = message_of(signer, item.mail_from, local_part="bounces", domain="bounce.acme.example")
            assert row is not None
            ref = await running.store.find_message(row_id=row)
            assert ref is not None and ref.email == item.rcpt_tos[0]
            assert ref.message_id == str(item.parsed()["Message-ID"])
            found.add(row)
    assert len(found) == 50


async def test_the_entry_pass_goes_window_by_window_and_misses_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With windows of 7 lead ids and pages of 3, every one of 52 list members enters, once, with leads
    outside the list in between (a window without members, short pages), each query within its window."""
    import mailer.daemon

    monkeypatch.setattr(mailer.daemon, "ENTRY_WINDOW", 7)
    monkeypatch.setattr(mailer.daemon, "ENTRY_PAGE", 3)
    write_workspace(tmp_path)
    config = make_config(tmp_path, 2525)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(make_leads(20), list_name="signups", now=MONDAY_8AM)
        await store.upsert_leads([Lead(email="outsider@example.com")], list_name=None, now=MONDAY_8AM)
        await store.upsert_leads(make_leads(50), list_name="signups", now=MONDAY_8AM)  # 30 more after it
        await store.upsert_leads(
            [Lead(email=f"outsider{n}@example.com") for n in range(20)], list_name=None, now=MONDAY_8AM
        )  # a whole window without a member
        await store.upsert_leads(make_leads(52)[50:], list_name="signups", now=MONDAY_8AM)
        daemon = Daemon(config=config, store=store, clock=FakeClock(MONDAY_8AM))
        asked: list[tuple[int, int | None, int]] = []
        ask = store.entry_candidates

        async def spy(**arguments: Any) -> list[Lead]:
            found = await ask(**arguments)
            asked.append((arguments["after_lead_id"], arguments["through_lead_id"], len(found)))
            return found

        monkeypatch.setattr(store, "entry_candidates", spy)
        assert await daemon.enter_leads(MONDAY_8AM) == 52
        last = await store.last_lead_id()
        assert all(through is not None and 0 < through - after <= 7 for after, through, _ in asked), asked
        assert asked[-1][1] == last
        assert any(found == 0 for _, _, found in asked), "a window without members"
        assert any(0 < found < 3 for _, _, found in asked), "a short page"
        assert await daemon.enter_leads(MONDAY_8AM) == 0
    with sqlite3.connect(config.store) as db:
        assert db.execute("SELECT count(DISTINCT lead_id), count(*) FROM enrollments").fetchone() == (52, 52)


async def test_serving_checkpoints_in_the_background(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """While `serve` runs, the store's connection leaves checkpoints to the background task (mailer.sqlitecheckpoint);
    once it returns, the connection checkpoints in its commits again."""

    async def autocheckpoint(store: SQLiteStore) -> int:
        async with store.db.execute("PRAGMA wal_autocheckpoint") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async with run_daemon(tmp_path, smtp_server) as running:
        for _ in range(100):  # serve's first step; up to 5 s on a loaded machine
            if await autocheckpoint(running.store) == 0:
                break
            await asyncio.sleep(0.05)
        assert await autocheckpoint(running.store) == 0
        running.stop.set()
        await asyncio.wait_for(running.task, 10)
        assert await autocheckpoint(running.store) == 1000


def test_the_report_counts_holds_apart_from_deferrals() -> None:
    """A hold is counted as held, a message kept for its template as kept, one handed back at a stop as handed back, attempts by their state; and said in words."""
    at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    report = Report()
    assert report.summary() == "no message attempted"
    for state, attempted, held in [
        (MessageState.DEFERRED, False, True), (MessageState.DEFERRED, False, True), (MessageState.DEFERRED, True, False),
        (MessageState.DEFERRED, False, False), (MessageState.QUEUED, False, False), (MessageState.SENT, True, False),
    ]:
        report.count(Outcome(1, 1, state, at, attempted=attempted, held=held))
    assert report.outcomes == {"held": 2, "deferred": 1, "kept": 1, "handed back": 1, "sent": 1}
    assert report.summary() == "1 sent, 1 deferred, 2 held, 1 kept for a template or scenario fix, 1 handed back"


async def test_a_broken_scenario_is_logged_once_and_again_when_mended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Scenarios are read again at every entry pass: a mistake is logged once, not at each pass, and its mending once."""
    caplog.set_level("INFO", logger="mailer")
    write_workspace(tmp_path)
    good = (tmp_path / "scenarios" / "main.yaml").read_text(encoding="utf-8")
    (tmp_path / "scenarios" / "main.yaml").write_text(good.replace("steps:", "stepz:"), encoding="utf-8")
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        daemon = Daemon(config=make_config(tmp_path, 9), store=store, clock=FakeClock(datetime(2026, 1, 5, tzinfo=timezone.utc)))
        for _ in range(3):
            assert daemon.load_scenarios()
        assert caplog.text.count("(this scenario is paused)") == 1
        (tmp_path / "scenarios" / "main.yaml").write_text(good, encoding="utf-8")
        for _ in range(2):
            assert daemon.load_scenarios() == []
        assert caplog.text.count("read again without errors") == 1 and "main.yaml" in caplog.text
        assert list(daemon.scenarios)


async def test_a_relay_that_is_down_is_said_once_not_once_per_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With nobody listening on the relay port, one warning names the relay and what to do; each message is deferred, logged at debug only."""
    caplog.set_level(logging.DEBUG, logger="mailer")
    with socket.socket() as probe:  # a loopback port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_workspace(tmp_path)
    config = make_config(tmp_path, port)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(make_leads(50), list_name="signups", now=MONDAY_8AM)
        clock = FakeClock(MONDAY_8AM)
        daemon = Daemon(config=config, store=store, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        try:
            await clock.advance(hours=1)
            for _ in range(200):
                if (await store.message_counts()).get("deferred", 0) >= 10:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("mailer")]
    refused = [line for line in warnings if line.startswith(f"no session with 127.0.0.1:{port} (at CONNECT: ")]
    assert len(refused) == 1, warnings
    assert "check [relay] in mailer.toml" in refused[0] and "`mailer queue retry`" in refused[0]
    assert not [line for line in warnings if line.startswith("deferred ")], warnings
    deferred = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage().startswith("deferred ")]
    assert len(deferred) >= 10
