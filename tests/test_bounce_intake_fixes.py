"""Bounce intake against a real SQLite file: idempotent re-reads, unmatched and delayed reports,
feedback types, multi-recipient DSNs, and undoing a bounce (suppression, score, message state)."""

from __future__ import annotations

import asyncio
import mailbox
from datetime import timedelta
from pathlib import Path

import aiosmtplib
import pytest

from conftest import rows, write_workspace
from mailer.bouncepolicy import FEEDBACK_ACTIONS, Action, BouncePolicy, decide, feedback_action
from mailer.bouncing import BounceIntake, IntakeReport, evidence_key, recipients_for
from mailer.cli import main
from mailer.clock import FakeClock
from mailer.config import BouncesConfig
from mailer.dsn import parse_bounce
from mailer.inbound import BounceListener
from mailer.lifecycle import MessageState
from mailer.reasons import BounceClass, Reason
from mailer.sqlitestore import SQLiteStore
from mailer.reply import SMTPReply
from mailer.store import BounceRecord, Outcome
from test_sqlitereputation import sent
from test_sqlitestore import LEASE, T0, lead_id, queued, state_of

WALK = "user08@corp0.example"


def dsn(
    *recipients: tuple[str, str, str, str],
    message_id: str,
    dsn_id: str = "dsn-1",
    original_recipient: bool = True,
) -> bytes:
    """An RFC 3464 report, as Postfix writes one; each recipient is (address, Action, Status, diagnostic)."""
    blocks = "\n".join(
        f"Final-Recipient: rfc822; {address}\n"
        + (f"Original-Recipient: rfc822;{address}\n" if original_recipient else "")
        + f"Action: {action}\nStatus: {status}\nRemote-MTA: dns; mx.example.co.jp\n"
        + f"Diagnostic-Code: smtp; {diagnostic}\n"
        + ("Will-Retry-Until: Sun, 11 Jan 2026 09:00:00 +0000\n" if action == "delayed" else "")
        for address, action, status, diagnostic in recipients
    )
    return f"""From: MAILER-DAEMON@smtp.example.com (Mail Delivery System)
To: bounces@acme.example
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"
Message-Id: <{dsn_id}@smtp.example.com>

--B
Content-Type: text/plain; charset=us-ascii

This is the mail system at host smtp.example.com.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; smtp.example.com

{blocks}
--B
Content-Type: text/rfc822-headers

From: Acme Marketing <news@acme.example>
Subject: One for you
Message-ID: {message_id}

--B--
""".encode()


def arf(feedback_type: str | None, *, message_id: str, to: str) -> bytes:
    """An RFC 5965 feedback report with this Feedback-Type (None: the field left out)."""
    type_line = f"Feedback-Type: {feedback_type}\n" if feedback_type is not None else ""
    return f"""From: fbl@provider.example
To: bounces@acme.example
Subject: Email Feedback Report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain

A feedback report.

--ARF
Content-Type: message/feedback-report

{type_line}User-Agent: SMP-FBL
Version: 1.0
Source-IP: 192.0.2.89
Reported-Domain: acme.example

--ARF
Content-Type: message/rfc822

From: Acme Marketing <news@acme.example>
To: {to}
Message-ID: {message_id}
Subject: One for you

test
--ARF--
""".encode()


def full(address: str) -> tuple[str, str, str, str]:
    return (address, "failed", "5.2.2", "552 5.2.2 Mailbox full")


def unknown(address: str) -> tuple[str, str, str, str]:
    return (address, "failed", "5.1.1", f"550 5.1.1 <{address}>... User Unknown")


def intake(store: SQLiteStore) -> BounceIntake:
    return BounceIntake(store=store, signer=None, config=BouncesConfig(soft_limit=3, soft_window=timedelta(days=7)))


async def take(store: SQLiteStore, raw: bytes, report: IntakeReport | None = None, *, hours: int = 1) -> list[BounceRecord]:
    return await intake(store).take(
        raw, envelope_recipients=(), source="ingest", now=T0 + timedelta(hours=hours), report=report or IntakeReport()
    )


def cli_workspace(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workspace the `mailer` commands run in, as the current folder."""
    write_workspace(root)
    (root / "mailer.toml").write_text('[identities.default]\nfrom = "Acme <news@acme.example>"\n')
    monkeypatch.chdir(root)


def message_id_of(store: SQLiteStore, message: int) -> str:
    return str(rows(store, "SELECT message_id FROM messages WHERE id = ?", (message,))[0][0])


async def scored_types(store: SQLiteStore, email: str) -> list[str]:
    """What a rebuild (and `leads show`) scores for the lead: its scoring events' types."""
    lead = await lead_id(store, email)
    [item] = await store.scoring_inputs(after_lead_id=lead - 1, limit=1)
    return sorted(event.type for event in item.events)


# -- 1: the same bounce read again ---------------------------------------------------------


async def test_a_mailbox_full_report_read_three_times_counts_once(store: SQLiteStore) -> None:
    """Re-reading the same soft bounce (a maildir ingested daily) is skipped as already seen, so it never escalates."""
    [message] = await sent(store, WALK)
    raw = dsn(full(WALK), message_id=message_id_of(store, message))
    report = IntakeReport()
    for day in range(3):
        await take(store, raw, report, hours=24 * day + 1)
    assert [b.action for b in await store.bounces(email=WALK)] == ["retry"]
    assert await store.suppressions_of(WALK) == []
    assert report.already_seen == 2 and report.actions == {"retry": 1}
    # the copy with CRLF line ends (as the listener receives it) is the same evidence
    await take(store, raw.replace(b"\n", b"\r\n"), report, hours=80)
    assert report.already_seen == 3


async def test_an_undone_hard_bounce_stays_undone_when_read_again(store: SQLiteStore) -> None:
    """After `bounces undo`, the next ingest of the same hard bounce neither suppresses again nor stores a copy."""
    [message] = await sent(store, WALK)
    raw = dsn(unknown(WALK), message_id=message_id_of(store, message))
    [record] = await take(store, raw)
    assert record.action == "suppress" and record.id is not None
    await store.undo_bounce(record.id, now=T0 + timedelta(hours=2))
    report = IntakeReport()
    assert await take(store, raw, report, hours=24) == []
    assert report.already_seen == 1
    assert await store.suppressions_of(WALK) == []
    assert len(await store.bounces(email=WALK)) == 1


async def test_a_bounce_stored_before_evidence_keys_is_recognised_by_its_evidence(store: SQLiteStore) -> None:
    """A row from before schema 8 (no key) is found by address and evidence bytes, and given the key."""
    [message] = await sent(store, WALK)
    raw = dsn(full(WALK), message_id=message_id_of(store, message))
    old = BounceRecord(
        at=T0, source="ingest", email=WALK, kind="bounce", reason="mailboxfull", bounce_class="soft",
        action="retry", message=message, evidence=raw,
    )  # fmt: skip
    old_id = await store.record_bounce(old)
    report = IntakeReport()
    await take(store, raw, report)
    assert report.already_seen == 1 and report.actions == {}
    assert rows(store, "SELECT evidence_key FROM bounces WHERE id = ?", (old_id,)) == [(evidence_key(raw, WALK),)]


async def test_the_listener_stores_a_bounce_sent_twice_once(store: SQLiteStore) -> None:
    """An MTA that sends the same report again (its 250 was lost) does not count it twice at the listener."""
    [message] = await sent(store, WALK)
    raw = dsn(full(WALK), message_id=message_id_of(store, message))
    listener = BounceListener(intake=intake(store), domain="bounce.acme.example", clock=FakeClock(T0), listen="127.0.0.1:0")
    await listener.start()
    try:
        for _ in range(2):
            await aiosmtplib.send(
                raw, sender="MAILER-DAEMON@mx.example.com", recipients=["bounces@bounce.acme.example"], hostname="127.0.0.1", port=listener.port
            )
    finally:
        await listener.stop()
    assert listener.report.already_seen == 1 and listener.report.actions == {"retry": 1}
    assert len(await store.bounces(email=WALK)) == 1


def test_ingesting_a_maildir_twice_reports_already_seen_and_leaves_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mailer bounces ingest MAILDIR` run again says "already seen", and the maildir's files stay where they were."""
    cli_workspace(tmp_path, monkeypatch)

    async def seed() -> str:
        async with SQLiteStore(tmp_path / "mailer.db") as store:
            [message] = await sent(store, WALK)
            return message_id_of(store, message)

    message_id = asyncio.run(seed())
    box = mailbox.Maildir(str(tmp_path / "Maildir"))
    box.add(dsn(full(WALK), message_id=message_id, dsn_id="a"))
    box.add(dsn(unknown("someone@else.example"), message_id="<not-ours@x>", dsn_id="b"))
    files = sorted(p.name for p in (tmp_path / "Maildir" / "new").iterdir())
    assert main(["bounces", "ingest", str(tmp_path / "Maildir")]) == 0
    assert "0 already seen; actions: record 1, retry 1" in capsys.readouterr().out
    assert main(["bounces", "ingest", str(tmp_path / "Maildir")]) == 0
    assert "2 already seen; actions: none" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "Maildir" / "new").iterdir()) == files


# -- 2: bounces that are not ours -----------------------------------------------------------


async def test_unmatched_bounces_are_records_and_never_count_toward_escalation(store: SQLiteStore) -> None:
    """Three forged mailbox-full reports and a forged block name no message: recorded only, and the first real soft bounce is a retry."""
    [message] = await sent(store, WALK)
    for n in range(3):
        [forged] = await take(store, dsn(full(WALK), message_id=f"<forged-{n}@x>", dsn_id=f"f{n}"), hours=n + 1)
        assert (forged.action, forged.message) == ("record", None)
    blocked = ("user08@corp0.example", "failed", "5.7.1", "550 5.7.1 Service unavailable; client host blocked using Spamhaus")
    [alert] = await take(store, dsn(blocked, message_id="<forged-b@x>", dsn_id="fb"), hours=4)
    assert alert.action == "record"
    assert await store.soft_bounces_since(WALK, T0) == 0
    [real] = await take(store, dsn(full(WALK), message_id=message_id_of(store, message), dsn_id="real"), hours=5)
    assert real.action == "retry"
    assert await store.suppressions_of(WALK) == []
    assert await store.bounce_summary(T0) == {"record": 4, "retry": 1}


# -- 3: delay warnings and relays ----------------------------------------------------------


async def test_delayed_reports_are_recorded_and_leave_the_message_sent(store: SQLiteStore) -> None:
    """Three "Action: delayed" (4.4.1, Will-Retry-Until) reports record, never bounce the message or escalate."""
    [message] = await sent(store, WALK)
    delayed = (WALK, "delayed", "4.4.1", "connect to mx.corp0.example[192.0.2.2]:25: No route to host")
    for n in range(3):
        [record] = await take(store, dsn(delayed, message_id=message_id_of(store, message), dsn_id=f"d{n}"), hours=n + 1)
        assert (record.kind, record.action, record.bounce_class) == ("delayed", "record", "none")
    assert state_of(store, message) == "sent"
    assert await store.suppressions_of(WALK) == []
    assert await store.soft_bounces_since(WALK, T0) == 0


def test_only_a_failed_action_is_a_bounce() -> None:
    """RFC 3464 delayed, delivered, relayed and expanded record only, whatever the reason; failed (or none given) goes to the policy."""
    policy = BouncePolicy(soft_limit=3)
    for action in ("delayed", "Delivered", "relayed", "expanded"):
        assert decide(Reason.USERUNKNOWN, BounceClass.HARD, earlier_soft=5, policy=policy, dsn_action=action) is Action.RECORD
    for action in ("failed", ""):
        assert decide(Reason.USERUNKNOWN, BounceClass.HARD, earlier_soft=0, policy=policy, dsn_action=action) is Action.SUPPRESS


async def test_a_relayed_report_does_not_bounce_the_message(store: SQLiteStore) -> None:
    """A DSN saying the message was relayed onward (5.x status or not) changes nothing."""
    [message] = await sent(store, WALK)
    relayed = (WALK, "relayed", "5.0.0", "550 relayed to a non-DSN-aware mailer")
    [record] = await take(store, dsn(relayed, message_id=message_id_of(store, message)))
    assert (record.kind, record.action) == ("delivered", "record")
    assert state_of(store, message) == "sent"


# -- 4: feedback types -----------------------------------------------------------------------


def test_feedback_types_map_to_actions() -> None:
    """abuse, fraud, virus and a missing type complain; auth-failure alerts; not-spam, other and unknown types record."""
    assert [feedback_action(t) for t in (None, "", "abuse", "Fraud", "virus")] == [Action.COMPLAINT] * 5
    assert feedback_action("auth-failure") is Action.SENDER_ALERT
    assert [feedback_action(t) for t in ("not-spam", "other", "opt-out")] == [Action.RECORD] * 3
    assert set(FEEDBACK_ACTIONS) >= {"abuse", "fraud", "virus", "other", "not-spam", "auth-failure"}
    policy = BouncePolicy()
    assert decide(Reason.FEEDBACK, BounceClass.NONE, earlier_soft=0, policy=policy, feedback_type="not-spam") is Action.RECORD


async def test_a_not_spam_report_suppresses_nobody_and_scores_nothing(store: SQLiteStore) -> None:
    """Feedback-Type: not-spam is recorded, with no suppression, no complaint event and no score penalty."""
    [message] = await sent(store, WALK)
    [record] = await take(store, arf("not-spam", message_id=message_id_of(store, message), to=WALK))
    assert (record.kind, record.action, record.suppression) == ("feedback", "record", None)
    assert await store.suppressions_of(WALK) == []
    assert rows(store, "SELECT count(*) FROM events WHERE type = 'complained'") == [(0,)]
    assert await scored_types(store, WALK) == []
    assert await store.bounce_summary(T0) == {"record": 1}


async def test_an_auth_failure_report_alerts_the_sender_and_suppresses_nobody(store: SQLiteStore) -> None:
    """RFC 6591 auth-failure says our authentication failed: a sender alert, no suppression."""
    [message] = await sent(store, WALK)
    [record] = await take(store, arf("auth-failure", message_id=message_id_of(store, message), to=WALK))
    assert record.action == "sender-alert"
    assert await store.suppressions_of(WALK) == []


async def test_an_abuse_report_suppresses_with_a_detail_naming_the_report(store: SQLiteStore) -> None:
    """A complaint's suppression says what reported it: the feedback type, user agent and reported domain."""
    [message] = await sent(store, WALK)
    [record] = await take(store, arf("abuse", message_id=message_id_of(store, message), to=WALK))
    assert record.action == "complaint"
    [(_, reason, detail)] = await store.suppressions_of(WALK)
    assert reason == "complaint"
    assert "Feedback-Type: abuse" in detail and "User-Agent: SMP-FBL" in detail and "Reported-Domain: acme.example" in detail
    assert await scored_types(store, WALK) == ["complained"]


# -- 5: reports for several recipients -------------------------------------------------------


async def test_only_our_recipients_block_of_a_two_recipient_report_applies(store: SQLiteStore) -> None:
    """A DSN naming another address's failure too records one decision for our lead, with our lead's own diagnostic."""
    [message] = await sent(store, WALK)
    raw = dsn(unknown("filtered@example.co.jp"), unknown("User08@corp0.example"), message_id=message_id_of(store, message))
    [record] = await take(store, raw)
    assert record.email == WALK and "<User08@corp0.example>" in record.diagnostic
    assert await store.bounces(email="filtered@example.co.jp") == []
    assert await scored_types(store, WALK) == ["bounced"]


def test_which_blocks_of_a_report_are_ours() -> None:
    """Blocks naming our recipient apply; a single block applies even when rewritten; several strangers are evidence only."""
    two = parse_bounce(dsn(unknown("a@x.example"), unknown(WALK), message_id="<m@x>")).recipients
    assert recipients_for(two, WALK) == ((two[1],), ())
    [rewritten] = parse_bounce(dsn(unknown("alias@forward.example"), message_id="<m@x>")).recipients
    assert recipients_for((rewritten,), WALK) == ((rewritten,), ())
    strangers = parse_bounce(dsn(unknown("a@x.example"), unknown("b@x.example"), message_id="<m@x>")).recipients
    assert recipients_for(strangers, WALK) == ((), strangers)


async def test_several_blocks_none_ours_suppress_nobody(store: SQLiteStore) -> None:
    """A report matched to our message whose blocks all name other addresses records them and acts on no one."""
    [message] = await sent(store, WALK)
    raw = dsn(unknown("a@x.example"), unknown("b@x.example"), message_id=message_id_of(store, message))
    records = await take(store, raw)
    assert sorted((r.email, r.action, r.lead_id) for r in records) == [("a@x.example", "record", None), ("b@x.example", "record", None)]
    assert state_of(store, message) == "sent"
    assert await store.suppressions_of("a@x.example") == [] and await store.suppressions_of(WALK) == []


# -- 6: undo takes the score penalty and the message state back ------------------------------


async def test_undoing_a_hard_bounce_lifts_the_score_penalty_and_the_bounced_state(store: SQLiteStore) -> None:
    """After undo the lead is queued for re-scoring, its bounce no longer scores, and its message is sent again."""
    [message] = await sent(store, WALK)
    [record] = await take(store, dsn(unknown(WALK), message_id=message_id_of(store, message)))
    assert record.id is not None and state_of(store, message) == "bounced"
    assert await scored_types(store, WALK) == ["bounced"]
    await store.take_scoring_work(limit=100)
    rows(store, "DELETE FROM scoring_queue")
    await store.undo_bounce(record.id, now=T0 + timedelta(hours=2))
    assert await scored_types(store, WALK) == []
    assert [(item.lead.email, item.events) for item, _ in await store.take_scoring_work(limit=100)] == [(WALK, ())]
    assert state_of(store, message) == "sent"


async def test_undoing_a_complaint_lifts_its_score_penalty(store: SQLiteStore) -> None:
    """An undone complaint no longer counts in a rebuild of the lead's score."""
    [message] = await sent(store, WALK)
    [record] = await take(store, arf("abuse", message_id=message_id_of(store, message), to=WALK))
    assert record.id is not None
    await store.undo_bounce(record.id, now=T0 + timedelta(hours=2))
    assert await scored_types(store, WALK) == []


async def test_undoing_a_refusal_during_delivery_lifts_its_score_penalty(store: SQLiteStore) -> None:
    """A 550 5.1.1 at RCPT (a bounce with source smtp, scored from its failed event) stops scoring once undone."""
    [message] = await queued(store, WALK)
    [claimed] = await store.claim_messages(now=T0, limit=10, lease=LEASE)
    reply = SMTPReply(code=550, text="User unknown", enhanced="5.1.1", command="RCPT", host="mx.corp0.example")
    bounce = BounceRecord(
        at=T0, source="smtp", email=WALK, kind="bounce", reason="userunknown", bounce_class="hard", action="suppress",
        message=message, lead_id=claimed.lead.id, evidence=b"550 5.1.1 User unknown", suppression="hard-bounce",
    )  # fmt: skip
    await store.record_outcomes([Outcome(message, claimed.lead.id or 0, MessageState.FAILED, T0, reply=reply, bounce=bounce)])
    assert await scored_types(store, WALK) == ["bounced"]
    [stored] = await store.bounces(email=WALK)
    assert stored.id is not None
    await store.undo_bounce(stored.id, now=T0 + timedelta(hours=1))
    assert await scored_types(store, WALK) == []
    assert state_of(store, message) == "failed"  # the refusal happened; only its judgement is undone


# -- 7 and 8: the commands ---------------------------------------------------------------------


def test_undo_twice_list_any_case_and_undo_of_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second undo says when it was undone (exit 0); undoing a record says it suppressed nobody; list accepts any case."""
    cli_workspace(tmp_path, monkeypatch)

    async def seed() -> None:
        async with SQLiteStore(tmp_path / "mailer.db") as store:
            [message] = await sent(store, WALK)
            await take(store, dsn(unknown(WALK), message_id=message_id_of(store, message)))
            await take(store, dsn(unknown("stranger@x.example"), message_id="<nope@x>", dsn_id="2"))

    asyncio.run(seed())
    assert main(["bounces", "list", "--email", "User08@Corp0.Example"]) == 0
    assert f"{WALK} userunknown/hard" in capsys.readouterr().out
    assert main(["bounces", "list", "--email", "nobody@x.example"]) == 0
    assert capsys.readouterr().out.strip() == "no bounces for nobody@x.example"
    assert main(["bounces", "undo", "1"]) == 0
    assert f"lifted its hard-bounce suppression of {WALK}" in capsys.readouterr().out
    assert main(["bounces", "undo", "1"]) == 0
    assert capsys.readouterr().out.startswith("already undone on ")
    assert main(["bounces", "undo", "2"]) == 0
    assert "it suppressed nobody" in capsys.readouterr().out
    assert main(["bounces", "undo", "STRANGER@x.example"]) == 0
    assert "no bounce suppressed stranger@x.example" in capsys.readouterr().out
    assert main(["bounces", "undo", "99"]) == 2


async def test_undoing_one_of_two_hard_bounces_keeps_the_address_suppressed_by_the_other(store: SQLiteStore) -> None:
    """Two live hard bounces: undoing either leaves the address suppressed, resting on the other; undoing both lifts it."""
    [message] = await sent(store, WALK)
    again = (WALK, "failed", "5.1.1", "550 5.1.1 no such mailbox here")  # another report, from another MTA
    [one] = await take(store, dsn(unknown(WALK), message_id=message_id_of(store, message)), hours=1)
    [two] = await take(store, dsn(again, message_id=message_id_of(store, message)), hours=2)
    assert one.id is not None and two.id is not None
    await store.undo_bounce(one.id, now=T0 + timedelta(hours=3))  # the suppression rested on the first
    assert rows(store, "SELECT reason, bounce_id FROM suppressions WHERE email = ?", (WALK,)) == [("hard-bounce", two.id)]
    await store.undo_bounce(two.id, now=T0 + timedelta(hours=4))
    assert await store.suppressions_of(WALK) == []


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Warning: message 1rX9-000Abc-7Q delayed 24 hours",
         "A message that you sent has not yet been delivered to one or more of its\nrecipients after more than 24 hours on the queue on mx.example.\n"),
        ("Warning: could not send message for past 4 hours",
         "    **      THIS IS A WARNING MESSAGE ONLY      **\n    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **\n"),
        ("Delivery Status Notification (Delay)", "THIS IS A WARNING MESSAGE ONLY.\n"),
    ],
)
async def test_a_plain_text_delay_warning_is_recorded_and_leaves_the_message_sent(store: SQLiteStore, subject: str, body: str) -> None:
    """A warning with no RFC 3464 fields (Exim, old Sendmail, Gmail) says the remote MTA is still trying: recorded, never a bounce."""
    [message] = await sent(store, WALK)
    raw = (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example>\nTo: bounces@acme.example\nSubject: {subject}\n\n{body}\n"
        f"  {WALK}\n    host mx.corp0.example [192.0.2.1]: 451 4.4.1 Connection timed out\n\n"
        f"------ This is a copy of the message's headers. ------\n\nMessage-ID: {message_id_of(store, message)}\n"
        f"To: {WALK}\nSubject: One for you\n"
    ).encode()
    records = await take(store, raw)
    assert [(r.action, r.bounce_class) for r in records] == [("record", "none")]
    assert state_of(store, message) == "sent"
