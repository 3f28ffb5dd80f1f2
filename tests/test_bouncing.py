"""Bounce messages end to end: the daemon's listener on loopback, `mailer bounces`, evidence and undo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import aiosmtplib
import pytest

from conftest import make_config, make_leads, write_workspace
from mailer.cli import main
from mailer.clock import FakeClock
from mailer.daemon import Daemon
from mailer.sqlitestore import SQLiteStore
from mailer.testing import CaptureServer, Received

MONDAY_9AM = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
DOMAIN = "bounce.acme.example"


def dsn(*, recipient: str, status: str, diagnostic: str, message_id: str) -> bytes:
    """A standard RFC 3464 delivery status notification, as Postfix writes one."""
    return f"""From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
To: bounces@{DOMAIN}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"
Message-Id: <dsn-{status}@mx.example.com>

--BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.com.
I'm sorry to have to inform you that your message could not be delivered.

<{recipient}>: host mx.example.com said: {diagnostic}

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
Arrival-Date: Mon,  5 Jan 2026 09:01:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: failed
Status: {status}
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; {diagnostic}

--BOUNDARY
Content-Type: text/rfc822-headers

From: Acme Marketing <news@acme.example>
To: {recipient}
Subject: One for you
Message-ID: {message_id}

--BOUNDARY--
""".replace("\n", "\r\n").encode()


def arf(*, message_id: str) -> bytes:
    """An RFC 5965 abuse report, as a mailbox provider's feedback loop sends one."""
    return f"""From: fbl@provider.example
To: bounces@{DOMAIN}
Subject: FW: One for you
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain

This is an email abuse report.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ProviderFBL/1.0
Version: 1

--ARF
Content-Type: text/rfc822-headers

From: Acme Marketing <news@acme.example>
Subject: One for you
Message-ID: {message_id}

--ARF--
""".replace("\n", "\r\n").encode()


VACATION = f"""From: lead009@example.com
To: bounces@{DOMAIN}
Subject: Out of office: One for you
Auto-Submitted: auto-replied
X-Autoreply: yes

I am out of the office until Monday.
""".replace("\n", "\r\n").encode()


class Bouncing:
    def __init__(self, daemon: Daemon, store: SQLiteStore, clock: FakeClock, server: CaptureServer) -> None:
        self.daemon, self.store, self.clock, self.server = daemon, store, clock, server

    def sent_to(self, email: str) -> Received:
        return next(m for m in self.server.messages if m.rcpt_tos == (email,))

    async def bounce(self, raw: bytes, *, to: str) -> None:
        """Deliver a bounce to the daemon's listener over SMTP, as a remote MTA would."""
        assert self.daemon.listener is not None
        await aiosmtplib.send(raw, sender="MAILER-DAEMON@mx.example.com", recipients=[to], hostname="127.0.0.1", port=self.daemon.listener.port)


@pytest.fixture
async def bouncing(tmp_path: Path, smtp_server: CaptureServer) -> AsyncIterator[Bouncing]:
    write_workspace(tmp_path)
    (tmp_path / "mailer.key").write_text("k" * 48 + "\n")
    config = make_config(tmp_path, smtp_server.port, bounces={"domain": DOMAIN, "listen": "127.0.0.1:0"})
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(make_leads(12), list_name="signups", now=MONDAY_9AM)
        clock = FakeClock(MONDAY_9AM)
        daemon = Daemon(config=config, store=store, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        try:
            await smtp_server.wait_for(12)
            harness = Bouncing(daemon, store, clock, smtp_server)
            while (await store.message_counts()).get("sent") != 12:
                await asyncio.sleep(0.05)
            yield harness
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_a_dsn_to_the_verp_address_suppresses_the_unknown_user(bouncing: Bouncing) -> None:
    """A later DSN sent to the message's VERP address is matched to it: suppressed, bounced, evidence kept."""
    sent = bouncing.sent_to("lead002@example.com")
    raw = dsn(recipient="lead002@example.com", status="5.1.1", diagnostic="550 5.1.1 <lead002@example.com>: Recipient address rejected: User unknown", message_id="<unrelated@x>")
    await bouncing.bounce(raw, to=sent.mail_from)
    [(scope, reason, detail)] = await bouncing.store.suppressions_of("lead002@example.com")
    assert (scope, reason) == ("", "hard-bounce") and "User unknown" in detail
    [record] = await bouncing.store.bounces(email="lead002@example.com")
    assert (record.reason, record.action, record.source) == ("userunknown", "suppress", "dsn")
    assert record.evidence == raw
    assert await bouncing.store.message_counts() == {"sent": 11, "bounced": 1}


async def test_a_complaint_matched_by_message_id_suppresses_the_complainer(bouncing: Bouncing) -> None:
    """An ARF report to the plain bounce address is matched by the original Message-ID and suppresses."""
    sent = bouncing.sent_to("lead010@example.com")
    await bouncing.bounce(arf(message_id=str(sent.parsed()["Message-ID"])), to=f"bounces@{DOMAIN}")
    [(_, reason, _)] = await bouncing.store.suppressions_of("lead010@example.com")
    assert reason == "complaint"


async def test_a_vacation_reply_changes_nothing(bouncing: Bouncing) -> None:
    """An out-of-office auto-reply is recorded at most, never suppresses."""
    await bouncing.bounce(VACATION, to=bouncing.sent_to("lead009@example.com").mail_from)
    assert await bouncing.store.suppressions_of("lead009@example.com") == []
    assert await bouncing.store.message_counts() == {"sent": 12}


async def test_the_listener_is_no_open_relay(bouncing: Bouncing) -> None:
    """Mail for any other domain is refused at RCPT."""
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await bouncing.bounce(VACATION, to="someone@elsewhere.example")


async def test_a_forged_verp_token_matches_nothing_and_suppresses_nobody(bouncing: Bouncing) -> None:
    """A bounce to a made-up token is kept as evidence but suppresses no one."""
    raw = dsn(recipient="lead005@example.com", status="5.1.1", diagnostic="550 5.1.1 User unknown", message_id="<nope@x>")
    await bouncing.bounce(raw, to=f"bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@{DOMAIN}")
    assert await bouncing.store.suppressions_of("lead005@example.com") == []
    [record] = await bouncing.store.bounces(email="lead005@example.com")
    assert record.action == "record" and record.message is None


async def test_undo_restores_a_suppressed_address(bouncing: Bouncing) -> None:
    """Undoing a bounce lifts its suppression and keeps the evidence, marked undone."""
    sent = bouncing.sent_to("lead002@example.com")
    await bouncing.bounce(dsn(recipient="lead002@example.com", status="5.1.1", diagnostic="550 5.1.1 User unknown", message_id="<u@x>"), to=sent.mail_from)
    [record] = await bouncing.store.bounces(email="lead002@example.com")
    assert record.id is not None
    undone = await bouncing.store.undo_bounce(record.id, now=MONDAY_9AM)
    assert undone is not None and undone.undone_at is not None
    assert await bouncing.store.suppressions_of("lead002@example.com") == []


def test_bounces_ingest_list_show_and_undo_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer bounces ingest` reads an mbox, matches by Message-ID, and list/show/undo audit it."""
    import mailbox

    write_workspace(tmp_path)
    (tmp_path / "mailer.toml").write_text('[identities.default]\nfrom = "Acme <news@acme.example>"\n')
    monkeypatch.chdir(tmp_path)

    async def seed() -> str:
        async with SQLiteStore(tmp_path / "mailer.db") as store:
            await store.upsert_leads(make_leads(1), list_name="signups", now=MONDAY_9AM)
            await store.enroll(scenario="three-steps", lead_ids=[1], due_at=MONDAY_9AM, now=MONDAY_9AM)
            from mailer.store import EnrollmentUpdate, NewMessage

            update = EnrollmentUpdate(1, 1, "three-steps", 1, "active", MONDAY_9AM, "queued", message=NewMessage("<m1@acme.example>", "one", MONDAY_9AM))
            await store.apply_updates([update], now=MONDAY_9AM)
        return "<m1@acme.example>"

    message_id = asyncio.run(seed())
    box = mailbox.mbox(str(tmp_path / "bounces.mbox"))
    box.add(dsn(recipient="lead000@example.com", status="5.1.1", diagnostic="550 5.1.1 User unknown", message_id=message_id))
    box.add(VACATION)
    box.flush()

    assert main(["bounces", "ingest", str(tmp_path / "bounces.mbox")]) == 0
    out = capsys.readouterr().out
    assert "2 messages" in out and "suppress 1" in out
    assert main(["bounces", "list"]) == 0
    listed = capsys.readouterr().out
    assert "lead000@example.com userunknown/hard" in listed
    assert main(["bounces", "show", "1"]) == 0
    assert "Final-Recipient: rfc822; lead000@example.com" in capsys.readouterr().out
    assert main(["status"]) == 0
    assert "bounces: record 1, suppress 1" in capsys.readouterr().out
    assert main(["bounces", "undo", "lead000@example.com"]) == 0
    assert "undone" in capsys.readouterr().out
    assert main(["bounces", "undo", "lead000@example.com"]) == 0
    assert "already undone on" in capsys.readouterr().out
    assert main(["bounces", "undo", "nobody@example.com"]) == 2


async def test_the_listener_accepts_real_world_long_lines(bouncing: Bouncing) -> None:
    """A bounce with a 3,000-character header line is received, not refused as too long."""
    long = dsn(recipient="lead007@example.com", status="5.2.2", diagnostic="552 5.2.2 Mailbox full", message_id="<x@y>")
    long = long.replace(b"Subject: Undelivered", b"X-Long: " + b"a" * 3000 + b"\r\nSubject: Undelivered", 1)
    await bouncing.bounce(long, to=bouncing.sent_to("lead007@example.com").mail_from)
    [record] = await bouncing.store.bounces(email="lead007@example.com")
    assert record.reason == "mailboxfull" and record.action == "retry"


def test_an_mbox_with_blank_lines_before_its_first_message_is_read_message_by_message(tmp_path: Path) -> None:
    """Blank lines before the first "From " line still make the file an mbox: each message is read apart, not the file as one."""
    from mailer.ingest import messages_in

    one = b"From MAILER-DAEMON Mon Jan  5 08:00:00 2026\nSubject: one\n\nfirst\n\n"
    two = b"From MAILER-DAEMON Mon Jan  5 09:00:00 2026\nSubject: two\n\nsecond\n"
    (tmp_path / "joined.mbox").write_bytes(b"\n\n" + one + two)
    read = list(messages_in(tmp_path / "joined.mbox"))
    assert [name.rsplit("#", 1)[1] for name, _ in read] == ["1", "2"]
    assert b"Subject: one" in read[0][1] and b"Subject: two" in read[1][1]
