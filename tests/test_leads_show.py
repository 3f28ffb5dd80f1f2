"""`mailer leads show` answers "why didn't X get mail?", and `leads list` stays in line with Japanese names,
run as a marketer runs them over a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailer.config import load_config
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.store import BounceRecord, Suppression
from mailer.tables import display_width
from test_leadsshell import ALICE, BOB, CAROL, make_workspace, run

DAY = datetime(2026, 1, 2, 9, 0, tzinfo=timezone.utc)
TARO = "taro.yamada@example.jp"


async def seed(config_path: Path) -> int:
    """Alice hard-bounces after her import; Bob unsubscribes from the newsletter and is pending on the webinar
    list; Carol is on no list. Returns the bounce's id."""
    config = load_config(config_path)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads([Lead(ALICE), Lead(BOB)], list_name="signups", now=DAY, consent_source="leads.csv")
        await store.upsert_leads([Lead(BOB)], list_name="newsletter", now=DAY, consent_source="crm.csv")
        bounce_id = await store.record_bounce(BounceRecord(
            at=DAY + timedelta(days=3), source="smtp", email=ALICE, kind="bounce", reason="mailbox-unknown",
            bounce_class="hard", action="suppress", status="5.1.1", reply_code=550,
            diagnostic="550 5.1.1 no such user", evidence=b"550 5.1.1 no such user", suppression="hard-bounce",
        ))
        await store.unsubscribe(message=None, email=BOB, list_name="newsletter", everything=False,
                                method="unsubscribe-page", ip="203.0.113.5", user_agent="test", now=DAY + timedelta(days=1))
        await store.subscribe(email=BOB, first_name="Bob", last_name="", list_name="webinar", source="webinar-form",
                              consent_text="Yes, the webinar", ip="203.0.113.5", user_agent="test", double_opt_in=True,
                              confirm_message_id="<c1@northwind.example>", now=DAY + timedelta(days=2))
        await store.upsert_leads([
            Lead(TARO, first_name="太郎", last_name="山田", company="山田精機株式会社"),
            Lead("ann@acme.example", first_name="Ann", last_name="Lee", company="Acme"),
        ], list_name=None, now=DAY)
        return bounce_id


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, int]:
    """The leads of test_leadsshell, plus suppressions, lists, consent and two more leads."""
    make_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path, asyncio.run(seed(tmp_path / "mailer.toml"))


def section(out: str, label: str) -> list[str]:
    """The lines of one `leads show` section: its first line and the indented ones after it."""
    lines = out.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{label:<9}"))
    rest = [line for line in lines[start + 1:]]
    more = next((index for index, line in enumerate(rest) if not line.startswith(" " * 9)), len(rest))
    return [line[9:] for line in [lines[start], *rest[:more]]]


def test_show_names_a_bounce_suppression_and_where_its_evidence_is(
    workspace: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """A hard-bounced lead shows the suppression on every list with its date and bounce, and that its list gets no mail."""
    _, bounce_id = workspace
    code, out, err = run(capsys, "leads", "show", ALICE)
    assert code == 0, err
    assert section(out, "mail") == [
        f"suppressed: every list — hard-bounce (2026-01-05, bounce #{bounce_id}: `mailer bounces show {bounce_id}`)"
    ]
    assert section(out, "lists") == ["signups: confirmed (imported 2026-01-02 from leads.csv) — no mail: suppressed"]


def test_show_says_a_list_unsubscribe_and_a_pending_confirmation(
    workspace: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unsubscribe stops only its list; a pending sign-up waits for its confirmation; the other list is mailed."""
    code, out, err = run(capsys, "leads", "show", BOB)
    assert code == 0, err
    [suppressed] = section(out, "mail")
    assert re.fullmatch(r"suppressed: newsletter — unsubscribe \(2026-01-03, unsubscribe-page.*\)", suppressed)
    assert section(out, "lists") == [
        "newsletter: confirmed (imported 2026-01-02 from crm.csv, unsubscribed 2026-01-03 by unsubscribe-page)"
        " — no mail: suppressed",
        "signups: confirmed (imported 2026-01-02 from leads.csv)",
        "webinar: pending (signed up by form 2026-01-04 from webinar-form) — no mail until the confirmation link is followed",
    ]
    document = json.loads(run(capsys, "leads", "show", BOB, "--json")[1])
    assert [(entry["list"], entry["mailed"]) for entry in document["lists"]] == [
        ("newsletter", False), ("signups", True), ("webinar", False)
    ]
    assert [(c["list"], c["action"]) for c in document["consents"]] == [
        ("signups", "imported"), ("newsletter", "imported"), ("newsletter", "unsubscribed"), ("webinar", "pending")
    ]
    assert document["suppressions"][0]["reason"] == "unsubscribe" and document["suppressions"][0]["bounce"] is None


def test_show_a_lead_nothing_stops(workspace: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    """A lead with no suppression and no list says so in two lines."""
    code, out, err = run(capsys, "leads", "show", CAROL)
    assert code == 0, err
    assert section(out, "mail") == ["not suppressed"] and section(out, "lists") == ["none"]


def test_show_a_manual_suppression_shows_its_note(workspace: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    """A suppression no bounce wrote shows its note instead of a bounce to look at."""
    root, _ = workspace

    async def suppress() -> None:
        async with SQLiteStore(root / "mailer.db") as store:
            await store.add_suppressions([Suppression(CAROL, "manual", "", "asked us by phone")], now=DAY)

    asyncio.run(suppress())
    code, out, _ = run(capsys, "leads", "show", CAROL)
    assert section(out, "mail") == ["suppressed: every list — manual (2026-01-02, asked us by phone)"]


def test_list_stays_in_line_after_japanese_names(workspace: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    """Every column of `leads list` starts at one display column, whether the row before holds 山田 太郎 or Ann Lee."""
    code, out, err = run(capsys, "leads", "list")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()}
    taro, ann, header = rows[TARO], rows["ann@acme.example"], rows["email"]
    assert display_width(taro[: taro.index("山田精機株式会社")]) == display_width(ann[: ann.index("Acme")])
    assert display_width(header[: header.index("company")]) == display_width(ann[: ann.index("Acme")])
