"""`mailer queue`, `queue list` and `queue retry` through the real command on a real SQLite file,
and a retry that sends a real daemon's deferred mail at once."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import ONE_STEP, SERVE_CONFIG, write_workspace
from mailer.cli import main
from mailer.clock import SystemClock
from mailer.config import load_config
from mailer.daemon import Daemon
from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.queueshell import next_try, span, why
from mailer.reply import SMTPReply
from mailer.sqlitestore import SQLiteStore
from mailer.store import EnrollmentUpdate, LastOutcome, NewMessage, Outcome
from mailer.testing import CaptureServer
from mailer.timestamps import ms

S = MessageState
LEASE = timedelta(minutes=10)
UNAVAILABLE = SMTPReply.parse(451, "4.3.0 mailbox temporarily unavailable", command="RCPT", host="mx.example.com")
HOLD = "warm-up budget of 192.0.2.1 for example.org spent"
BROKEN = "template: 'lead' has no attribute 'plan'"

# Who gets what: (address, scenario, what happens to the message). Times count from T, a few
# minutes before the real now, since the command reads the system clock.
PEOPLE = (
    ("a@example.com", "trial", "deferred 451"),
    ("b@example.com", "webinar", "deferred 451 naming b"),
    ("c@example.com", "trial", "failed 550"),
    ("d@example.com", "trial", "sending"),
    ("e@example.com", "trial", "queued"),
    ("f@example.org", "trial", "451, then held"),
    ("g@example.org", "webinar", "broken template"),
    ("h@example.org", "trial", "expired"),
    ("i@example.org", "trial", "held"),
)


def seed(db: Path, t: datetime) -> dict[str, int]:
    """Messages in every state for example.com and example.org, written through the store's
    own calls as the daemon writes them; returns the message row id of each local part."""

    async def run() -> dict[str, int]:
        async with SQLiteStore(db) as store:
            await store.upsert_leads([Lead(email=email) for email, _, _ in PEOPLE], list_name=None, now=t)
            updates = []
            for email, scenario, plan in PEOPLE:
                lead = await store.get_lead(email)
                assert lead is not None and lead.id is not None
                await store.enroll(scenario=scenario, lead_ids=[lead.id], due_at=t, now=t)
                enrollment = await store._fetchall("SELECT id FROM enrollments WHERE lead_id = ?", (lead.id,))
                not_before = t + timedelta(hours=5) if plan == "queued" else t
                updates.append(EnrollmentUpdate(
                    enrollment_id=enrollment[0][0], lead_id=lead.id, scenario=scenario, step_index=1, state="active",
                    due_at=t + timedelta(days=2), event="queued", detail={"step": "welcome"},
                    message=NewMessage(message_id=f"<{email}>", step_id="welcome", not_before=not_before),
                ))
            await store.apply_updates(updates, now=t)
            claimed = {m.lead.email: m for m in await store.claim_messages(now=t, limit=20, lease=LEASE)}

            def outcome(email: str, state: MessageState, at: timedelta, **extra: object) -> Outcome:
                message = claimed[email]
                return Outcome(message=message.id, lead_id=message.lead.id or 0, state=state, at=t + at, **extra)  # type: ignore[arg-type]

            await store.record_outcomes([
                outcome("a@example.com", S.DEFERRED, timedelta(seconds=1), reply=UNAVAILABLE, next_attempt_at=t + timedelta(hours=2)),
                outcome("b@example.com", S.DEFERRED, timedelta(seconds=1), next_attempt_at=t + timedelta(hours=3),
                        reply=SMTPReply.parse(451, "4.3.0 mailbox temporarily unavailable <b@example.com>", command="RCPT")),
                outcome("c@example.com", S.FAILED, timedelta(seconds=3), reply=SMTPReply.parse(550, "5.1.1 user unknown", command="RCPT")),
                outcome("f@example.org", S.DEFERRED, timedelta(seconds=1), next_attempt_at=t + timedelta(minutes=1),
                        reply=SMTPReply.parse(451, "4.7.1 try again later", command="RCPT")),
                outcome("g@example.org", S.DEFERRED, timedelta(seconds=1), detail=BROKEN, attempted=False,
                        next_attempt_at=t + timedelta(minutes=20)),
                outcome("h@example.org", S.EXPIRED, timedelta(seconds=5), reply=UNAVAILABLE, detail="gave up after the maximum age"),
                outcome("i@example.org", S.DEFERRED, timedelta(seconds=1), detail=HOLD, attempted=False,
                        next_attempt_at=t + timedelta(minutes=90)),
            ])
            # f's second round: held for the warm-up budget after its 451
            again = await store.claim_messages(now=t + timedelta(minutes=1), limit=20, lease=LEASE)
            assert [m.lead.email for m in again] == ["f@example.org"]
            claimed["f@example.org"] = again[0]
            await store.record_outcomes([
                outcome("f@example.org", S.DEFERRED, timedelta(minutes=1), detail=HOLD, attempted=False,
                        next_attempt_at=t + timedelta(minutes=90)),
            ])
            rows = await store._fetchall("SELECT l.email, m.id FROM messages m JOIN leads l ON l.id = m.lead_id")
            return {email.partition("@")[0]: row_id for email, row_id in rows}

    return asyncio.run(run())


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["init", str(tmp_path)]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def seeded(workspace: Path) -> dict[str, int]:
    return seed(workspace / "mailer.db", datetime.now(timezone.utc) - timedelta(minutes=10))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def ids_listed(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()[1:] if line.split()[0].isdigit()]


def table(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as connection:
        return list(connection.execute(sql, params))


# -- the summary ------------------------------------------------------------------------------


def test_summary_counts_each_domain_by_state_with_its_most_common_reason(seeded: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer queue` totals the waiting messages, then one line per domain, the most first, with the commonest reason."""
    code, out, _ = run(capsys, "queue")
    assert code == 0
    head, columns, com, org, finished = out.splitlines()
    assert head.startswith("7 messages waiting for 2 domains: 1 queued, 5 deferred, 1 sending; next try in ")
    assert columns.split()[:4] == ["domain", "queued", "deferred", "sending"]
    assert com.split()[:5] == ["example.com", "1", "2", "1", "in"]
    assert com.endswith("451 4.3.0 mailbox temporarily unavailable (2 of 4)")  # b's text names b, its codes match
    assert org.split()[:5] == ["example.org", "0", "3", "0", "in"]
    assert org.endswith(f"{HOLD} (2 of 3)")  # f's older 451 no longer says why it waits
    assert finished == "and 2 messages failed or expired: `mailer queue list`"


def test_summary_of_an_empty_queue_says_so_and_points_at_the_failures(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing queued, deferred or sending, `mailer queue` says so, naming the failed or expired ones."""
    assert run(capsys, "queue") == (0, "nothing is waiting: no message is queued, deferred or being sent\n", "")
    seed(workspace / "mailer.db", datetime.now(timezone.utc))
    table(workspace / "mailer.db", "UPDATE messages SET state = 'failed' WHERE state != 'expired'")
    code, out, _ = run(capsys, "queue")
    assert out == "nothing is waiting: no message is queued, deferred or being sent (9 messages failed or expired: `mailer queue list`)\n"


def test_the_summary_shows_twenty_domains_and_sums_up_the_rest(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Past the twentieth domain, one line counts the other domains and their messages."""
    t = datetime.now(timezone.utc)

    async def queue_for_many_domains() -> None:
        async with SQLiteStore(workspace / "mailer.db") as store:
            emails = [f"x{n}@d{n:02d}.example" for n in range(23)] + ["y@d00.example"]
            await store.upsert_leads([Lead(email=e) for e in emails], list_name=None, now=t)
            leads = [await store.get_lead(e) for e in emails]
            await store.enroll(scenario="trial", lead_ids=[lead.id for lead in leads if lead and lead.id], due_at=t, now=t)
            enrollments = dict(await store._fetchall("SELECT lead_id, id FROM enrollments"))
            await store.apply_updates([
                EnrollmentUpdate(
                    enrollment_id=enrollments[lead.id], lead_id=lead.id, scenario="trial", step_index=1, state="active",
                    due_at=None, event="queued", message=NewMessage(f"<{lead.email}>", "welcome", t),
                )
                for lead in leads if lead and lead.id
            ], now=t)

    asyncio.run(queue_for_many_domains())
    code, out, _ = run(capsys, "queue")
    lines = out.splitlines()
    assert lines[0].startswith("24 messages waiting for 23 domains: 24 queued; next try due")
    assert lines[2].split()[:2] == ["d00.example", "2"]  # the most messages first
    assert len(lines) == 2 + 20 + 1
    assert lines[-1] == "… 3 more domains (3 messages)"


# -- one line per message -------------------------------------------------------------------


def test_list_shows_what_needs_attention_in_order(seeded: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    """By default: deferred by next try, then failed and expired newest first, each with why."""
    code, out, _ = run(capsys, "queue", "list")
    assert code == 0
    assert ids_listed(out) == [seeded[x] for x in ("g", "f", "i", "a", "b", "h", "c")]
    lines = {int(line.split()[0]): line for line in out.splitlines()[1:]}
    assert lines[seeded["f"]].endswith(HOLD)  # the hold after its 451, not the 451
    assert "451 4.7.1" not in out
    assert lines[seeded["g"]].endswith(BROKEN)
    assert lines[seeded["a"]].endswith("451 4.3.0 mailbox temporarily unavailable")
    assert lines[seeded["h"]].endswith("451 4.3.0 mailbox temporarily unavailable (gave up after the maximum age)")
    assert lines[seeded["c"]].endswith("550 5.1.1 user unknown")
    assert lines[seeded["a"]].split()[1:6] == ["a@example.com", "trial/welcome", "deferred", "1", "in"]
    assert lines[seeded["i"]].split()[4] == "0"  # a hold is no attempt


def test_list_filters_by_state_domain_and_scenario(seeded: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    """--state (repeated or comma-separated), --domain and --scenario narrow the list, and combine."""
    assert ids_listed(run(capsys, "queue", "list", "--state", "failed")[1]) == [seeded["c"]]
    listed = run(capsys, "queue", "list", "--state", "sending,queued")[1]
    assert sorted(ids_listed(listed)) == sorted([seeded["d"], seeded["e"]])
    assert ids_listed(run(capsys, "queue", "list", "--domain", "EXAMPLE.org")[1]) == [seeded[x] for x in "gfih"]
    assert ids_listed(run(capsys, "queue", "list", "--scenario", "webinar")[1]) == [seeded["g"], seeded["b"]]
    both = run(capsys, "queue", "list", "--state", "deferred", "--state", "failed", "--domain", "example.com", "--scenario", "trial")
    assert ids_listed(both[1]) == [seeded["a"], seeded["c"]]
    assert run(capsys, "queue", "list", "--state", "queued", "--scenario", "webinar")[1] == "no queued messages of scenario webinar\n"
    assert run(capsys, "queue", "list", "--domain", "nowhere.example")[1] == "no deferred, failed or expired messages for nowhere.example\n"
    limited = run(capsys, "queue", "list", "--limit", "2")[1].splitlines()
    assert len(limited) == 4 and limited[-1].startswith("… showing 2 of 7:")


def test_list_json_is_one_object_per_line(seeded: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one parseable object per message, with ISO 8601 UTC times and the same why."""
    code, out, _ = run(capsys, "queue", "list", "--json", "--state", "deferred,failed")
    objects = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [o["id"] for o in objects] == [seeded[x] for x in ("g", "f", "i", "a", "b", "c")]
    f = objects[1]
    assert (f["email"], f["domain"], f["scenario"], f["step"], f["state"], f["attempts"]) == (
        "f@example.org", "example.org", "trial", "welcome", "deferred", 1,
    )
    assert f["why"] == HOLD and f["message_id"] == "<f@example.org>"
    next_at = datetime.fromisoformat(f["next_attempt_at"])
    assert next_at.utcoffset() == timedelta(0) and next_at > datetime.now(timezone.utc)
    assert datetime.fromisoformat(f["why_at"]) < datetime.now(timezone.utc)
    assert objects[-1]["next_attempt_at"] is None and objects[-1]["why"] == "550 5.1.1 user unknown"


@pytest.mark.parametrize(("value", "problem"), [("bogus", "no state 'bogus'"), ("deferred,sent", "sent messages are not in the queue")])
def test_a_state_the_queue_does_not_hold_is_one_line_and_exit_2(
    workspace: Path, capsys: pytest.CaptureFixture[str], value: str, problem: str,
) -> None:
    """--state outside queued, sending, deferred, failed, expired is refused, naming the option and the states."""
    code, out, err = run(capsys, "queue", "list", "--state", value)
    assert code == 2 and out == ""
    assert err == f"mailer: error: --state: {problem} — use queued, sending, deferred, failed, expired\n"


# -- retry ----------------------------------------------------------------------------------


def test_retry_makes_only_deferred_messages_due_and_keeps_their_attempts(seeded: dict[str, int], workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`queue retry` moves the next try of matching deferred messages to now, and nothing else of any message."""
    db = workspace / "mailer.db"
    columns = "id, state, attempts, next_attempt_at, first_attempt_at, lease_owner, lease_until, last_code"
    before = {row[0]: row for row in table(db, f"SELECT {columns} FROM messages")}
    started = ms(datetime.now(timezone.utc))

    code, out, _ = run(capsys, "queue", "retry", "--domain", "example.org")
    assert code == 0
    assert out == "3 deferred messages for example.org are due now; no `mailer serve` is running: they go out when one starts\n"
    after = {row[0]: row for row in table(db, f"SELECT {columns} FROM messages")}
    due = {seeded[x] for x in "fgi"}
    for row_id, row in after.items():
        if row_id in due:
            assert started <= int(str(row[3])) <= ms(datetime.now(timezone.utc))
            assert row[:3] + row[4:] == before[row_id][:3] + before[row_id][4:]
        else:
            assert row == before[row_id]

    out = run(capsys, "queue", "retry", "--domain", "example.com", "--scenario", "webinar")[1]
    assert out == "1 deferred message for example.com of scenario webinar is due now; no `mailer serve` is running: it goes out when one starts\n"
    assert run(capsys, "queue", "retry")[1].startswith("5 deferred messages are due now; ")
    final = {row[0]: row for row in table(db, f"SELECT {columns} FROM messages")}
    for untouched in ("c", "d", "e", "h"):  # failed, sending, queued (not yet due), expired
        assert final[seeded[untouched]] == before[seeded[untouched]]
    made_due = table(db, "SELECT message_id FROM events WHERE type = 'made_due'")
    assert sorted(row[0] for row in made_due) == sorted(seeded[x] for x in "abfgi")  # once each: the due stay put
    assert run(capsys, "queue", "list", "--state", "deferred", "--domain", "example.org")[1].count(" due ") == 3


def test_retry_with_nothing_deferred_says_so(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A retry that matches no deferred message says so and succeeds."""
    assert run(capsys, "queue", "retry", "--scenario", "trial") == (0, "no deferred messages of scenario trial: nothing to retry\n", "")


def test_retry_help_says_budgets_and_breakers_still_apply(capsys: pytest.CaptureFixture[str]) -> None:
    """`queue retry --help` tells the operator a retry cannot flood a receiver."""
    with pytest.raises(SystemExit):
        main(["queue", "retry", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "warm-up budgets, throttles and destination circuit breakers still apply" in text


# -- the words, directly --------------------------------------------------------------------


def test_why_prefers_the_newest_outcome_over_an_older_reply() -> None:
    """A hold or a template error after a reply says why now; a reply is shown with the daemon's note."""
    at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    old = SMTPReply.parse(451, "4.7.1 try again later")
    assert why(old, LastOutcome("deferred", at, None, HOLD)) == HOLD
    assert why(old, LastOutcome("deferred", at, UNAVAILABLE, "")) == "451 4.3.0 mailbox temporarily unavailable"
    assert why(old, LastOutcome("expired", at, UNAVAILABLE, "gave up")) == "451 4.3.0 mailbox temporarily unavailable (gave up)"
    assert why(old, None) == "451 4.7.1 try again later"
    assert why(None, None) == ""
    assert why(None, LastOutcome("deferred", at, SMTPReply(None, "ConnectionRefusedError"), "")) == "no reply: ConnectionRefusedError"
    assert "stopped while sending" in why(old, LastOutcome("recovered", at, None, "host:12:ab"))


def test_spans_and_next_tries_read_at_a_glance() -> None:
    """Durations show their two largest units; a past next try is due, or due some time ago."""
    assert [span(timedelta(seconds=s)) for s in (0, 45, 60, 599, 601, 3600 * 3 + 720, 86400 * 2 + 3 * 3600 + 5, 86400)] == [
        "0s", "45s", "1m", "10m", "10m", "3h12m", "2d3h", "1d",
    ]
    now = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)
    assert next_try(now + timedelta(minutes=19, seconds=50), now) == "in 20m"
    assert next_try(now - timedelta(seconds=20), now) == "due"
    assert next_try(now - timedelta(hours=2), now) == "due 2h ago"


# -- end to end: a daemon, a refusing then accepting server, a retry --------------------------


async def test_retry_sends_deferred_mail_without_waiting_for_the_backoff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused with 451, three messages wait some 20 minutes; after `queue retry` the daemon sends them within its poll interval."""
    write_workspace(tmp_path, ONE_STEP)
    async with CaptureServer() as server:
        config_file = tmp_path / "mailer.toml"
        config_file.write_text(SERVE_CONFIG.format(port=server.port) + '\n[scheduler]\npoll_interval = "1s"\n')
        config = load_config(config_file)
        people = [f"p{n}@example.com" for n in range(3)]
        for email in people:
            server.script(email, "RCPT", "451 4.3.0 mailbox temporarily unavailable")
        async with SQLiteStore(config.store) as store:
            await store.upsert_leads([Lead(email=e) for e in people], list_name="signups", now=datetime.now(timezone.utc))
            daemon = Daemon(config=config, store=store, clock=SystemClock())
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.serve(stop))
            try:
                # each refused once (a message held behind the breaker's first probe waits 5 s for its try)
                await rows_become(store, "SELECT state, attempts, count(*) FROM messages GROUP BY 1, 2", [("deferred", 1, 3)])
                rows = await store._fetchall("SELECT min(next_attempt_at) FROM messages")
                assert rows[0][0] > ms(datetime.now(timezone.utc) + timedelta(minutes=10))  # retry.first = 20m ± 20%

                cli = ["--config", str(config_file), "queue"]
                assert await asyncio.to_thread(main, cli) == 0
                summary = capsys.readouterr().out
                assert re.fullmatch(r"3 messages waiting for 1 domain: 3 deferred; next try in (1[5-9]|2[0-5])m", summary.splitlines()[0])
                assert summary.splitlines()[-1].endswith("451 4.3.0 mailbox temporarily unavailable (3 of 3)")
                assert server.messages == []

                assert await asyncio.to_thread(main, [*cli, "retry"]) == 0
                assert capsys.readouterr().out == (
                    "3 deferred messages are due now; the running `mailer serve` picks them up within its poll interval "
                    "(scheduler.poll_interval, 1s) and sends them as its warm-up budgets and circuit breakers allow\n"
                )
                started = asyncio.get_running_loop().time()
                await server.wait_for(3, timeout=10)
                assert asyncio.get_running_loop().time() - started < 8  # the 1 s poll, with room for a busy machine
                await rows_become(store, "SELECT state, attempts, count(*) FROM messages GROUP BY 1, 2", [("sent", 2, 3)])
                assert sorted(m.rcpt_tos[0] for m in server.messages) == people
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)


async def rows_become(store: SQLiteStore, sql: str, expected: list[tuple[object, ...]], timeout: float = 15.0) -> None:
    """Wait (real time) until `sql` reads `expected`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (found := [tuple(row) for row in await store._fetchall(sql)]) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{sql} read {found}, expected {expected}")
        await asyncio.sleep(0.05)
