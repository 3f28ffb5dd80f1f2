"""`mailer leads show | accept | stage | list`, `scores rebuild`, `accounts`, `api-key` and `webhooks log`
as sales and an operator run them, over a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import http_hook, write_workspace
from mailer.apikeys import key_hash
from mailer.cli import main
from mailer.clock import FakeClock
from mailer.config import load_config
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.webhooks import WebhookSender

# Real time, as the commands read it (each `mailer` process would restart an accelerated clock
# at its start, and history must not run backwards between commands). Events fall on whole
# UTC days before today, so the daily cap sees two of them on one day whenever the test runs.
DAY = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
CONFIG = """
[identities.default]
from = "Northwind <news@northwind.example>"
"""
SCORING = """\
scoring:
  - event: form_submitted
    name: demo-request
    points: 30
  - event: page_visit
    name: "/pricing*"
    points: 10
    daily_cap: 10
grading:
  - name: decision maker
    when: {attribute: job_title, contains: director}
    points: 40
  - name: mid-size or larger
    when: "company_size >= 50"
    points: 30
grades: {A: 80, B: 60, C: 40, D: 20}
stages:
  MQL: "score >= 50 and grade >= B"
  MQA: {account_score: 55}
"""
ALICE = "alice@northwind.example"
BOB = "bob@northwind.example"
CAROL = "carol@gmail.com"


async def seed(config_path: Path) -> None:
    """Alice (a director) asks for a demo and reads pricing on two days; Bob (an engineer) reads it once."""
    config = load_config(config_path)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(
            [
                Lead(ALICE, first_name="Alice", last_name="Nguyen", company="Northwind", job_title="Director of Operations",
                     attributes={"company_size": "120"}),
                Lead(BOB, first_name="Bob", company="Northwind", job_title="Engineer", attributes={"company_size": "120"}),
                Lead(CAROL, first_name="Carol"),
            ],
            list_name=None,
            now=DAY - timedelta(days=5),
        )
        events = [
            (ALICE, "form_submitted", "demo-request", DAY - timedelta(hours=15)),
            (ALICE, "page_visit", "/pricing", DAY + timedelta(hours=10)),
            (ALICE, "page_visit", "/pricing/enterprise", DAY + timedelta(hours=11)),  # over the day's cap
            (ALICE, "page_visit", "/pricing", DAY + timedelta(days=1, hours=8)),
            (BOB, "page_visit", "/pricing", DAY + timedelta(days=1, hours=9)),
        ]
        for email, type_, name, at in events:
            assert await store.record_api_event(email=email, type=type_, at=at, name=name, data={}, key=None, now=at)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mailer: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def make_workspace(root: Path, config: str = CONFIG) -> None:
    write_workspace(root)
    (root / "mailer.toml").write_text(config)
    (root / "scenarios" / "scoring.yaml").write_text(SCORING)
    asyncio.run(seed(root / "mailer.toml"))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """Three leads with events, scored once by `mailer scores rebuild`."""
    make_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "scores", "rebuild")
    assert code == 0, err
    return tmp_path


def shown(capsys: pytest.CaptureFixture[str], email: str) -> dict[str, Any]:
    code, out, err = run(capsys, "leads", "show", email, "--json")
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def test_show_explains_why_a_lead_is_an_mql(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`leads show` lists what each rule added, the fit rules that held, the stage with its reason and the account."""
    code, out, err = run(capsys, "leads", "show", ALICE)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Alice Nguyen <{ALICE}>"
    assert "Director of Operations at Northwind" in lines[1]
    assert re.search(r"^stage    MQL since \d{4}-\d\d-\d\d \d\d:\d\d UTC \(today\)$", out, re.M)
    why = next(line for line in lines if line.strip().startswith("why:"))
    assert "score 50" in why and "grade B" in why and "(by rules)" in why
    assert re.search(r"^score    50$", out, re.M)
    assert re.search(r"\+30\s+form_submitted demo-request\s+1 event$", out, re.M)
    assert re.search(r"\+20\s+page_visit /pricing\*\s+\d events$", out, re.M)  # 10 a day: the cap held
    assert re.search(r"^grade    B \(70 points\)$", out, re.M)
    assert re.search(r"\+40\s+decision maker$", out, re.M) and re.search(r"\+30\s+mid-size or larger$", out, re.M)
    assert "account  northwind.example: score 60 of 55 for MQA, MQA" in out
    history = out[out.index("history"):]
    assert "score 0 → 50" in history and "grade – → B" in history
    assert "stage lead → MQL by rules: score 50" in history
    assert history.index("score 0 → 50") < history.index("stage lead → MQL")  # oldest first

    document = shown(capsys, ALICE)
    assert document["stage"]["stage"] == "MQL" and document["stage"]["by"] == "rules"
    assert document["score"]["score"] == 50 and document["score"]["current"] == 50
    assert {c["rule"]: c["points"] for c in document["score"]["contributions"]} == {
        "form_submitted demo-request": 30, "page_visit /pricing*": 20,
    }
    assert document["grade"]["matched"] == [{"rule": "decision maker", "points": 40}, {"rule": "mid-size or larger", "points": 30}]
    assert document["account"] == {"account": "northwind.example", "score": 60, "stage": "MQA", "mqa_score": 55}
    assert [entry["type"] for entry in document["history"]][-1] == "stage_changed"


def test_show_a_personal_address_has_no_account(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gmail.com lead belongs to no account, and a lead that did nothing says so."""
    code, out, err = run(capsys, "leads", "show", CAROL.upper())
    assert code == 0, err
    assert "account  none (a personal address)" in out and "no scored events" in out
    assert "stage    lead" in out


SAL_FOLLOW_UP = """
name: sal-follow-up
sender: default
entry:
  trigger: became_SAL
steps:
  - id: hello
    wait: 0m
    subject: "A call with sales"
    template: one.html
"""


def test_accept_moves_an_mql_to_sal_and_logs_it(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`leads accept` makes an MQL an SAL, enters the scenario that triggers on it, and the history names sales and the reason."""
    (workspace / "scenarios" / "sal.yaml").write_text(SAL_FOLLOW_UP)

    async def enrollments() -> dict[str, int]:
        async with SQLiteStore(workspace / "mailer.db") as store:
            return await store.enrollment_counts()

    assert sum(asyncio.run(enrollments()).values()) == 0
    code, out, err = run(capsys, "leads", "accept", ALICE, "--reason", "called her, wants a demo")
    assert code == 0, err
    assert sum(asyncio.run(enrollments()).values()) == 1
    assert out.strip().startswith(f"{ALICE}: MQL → SAL")
    document = shown(capsys, ALICE)
    assert document["stage"]["stage"] == "SAL"
    last = document["history"][-1]
    assert (last["type"], last["from"], last["to"], last["by"]) == ("stage_changed", "MQL", "SAL", "sales")
    assert "called her, wants a demo" in last["reason"]
    code, out, _ = run(capsys, "leads", "list", "--stage", "sal")
    assert code == 0 and ALICE in out


def test_forbidden_move_exits_2_and_changes_nothing(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lead cannot be accepted or made a customer: one error line naming the allowed moves, exit 2, history unchanged."""
    before = shown(capsys, BOB)
    code, _, err = run(capsys, "leads", "stage", BOB, "customer")
    assert code == 2
    line = one_error_line(err)
    assert "cannot move from lead to customer" in line and "may move to" in line
    code, _, err = run(capsys, "leads", "accept", BOB)
    assert code == 2 and "cannot move from lead to SAL" in one_error_line(err)
    assert shown(capsys, BOB) == before


def test_sql_needs_bant(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An SAL without BANT facts cannot be made SQL by hand; the error says what is missing."""
    assert run(capsys, "leads", "accept", ALICE)[0] == 0
    code, _, err = run(capsys, "leads", "stage", ALICE, "SQL")
    assert code == 2 and "BANT" in one_error_line(err) and "need" in one_error_line(err)
    assert shown(capsys, ALICE)["stage"]["stage"] == "SAL"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("leads", "show", "nobody@northwind.example"), "no lead nobody@northwind.example"),
        (("leads", "accept", "nobody@northwind.example"), "no lead nobody@northwind.example"),
        (("leads", "show", "not an address"), "is not an email address"),
        (("leads", "stage", ALICE, "wizard"), "no stage 'wizard'"),
        (("leads", "list", "--stage", "wizard"), "no stage 'wizard'"),
        (("webhooks", "log", "--webhook", "nope"), "no webhook named 'nope'"),
    ],
    ids=["show-unknown", "accept-unknown", "bad-address", "bad-stage", "list-bad-stage", "unknown-webhook"],
)
def test_mistakes_are_one_line(workspace: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str) -> None:
    """An unknown lead, a malformed address, an unknown stage or webhook: one clear line and exit 2."""
    code, _, err = run(capsys, *args)
    assert code == 2
    assert expected in one_error_line(err)


def test_list_by_stage(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`leads list --stage MQL` shows only the MQLs with score and grade; without --stage, every lead."""
    code, out, _ = run(capsys, "leads", "list", "--stage", "MQL")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["email", "stage", "score", "grade", "name", "company"]
    assert rows[1].split() == [ALICE, "MQL", "50", "B", "Alice", "Nguyen", "Northwind"] and len(rows) == 2
    code, out, _ = run(capsys, "leads", "list", "--json")
    listed = {lead["email"]: lead for lead in json.loads(out)}
    assert set(listed) == {ALICE, BOB, CAROL}
    assert (listed[BOB]["stage"], listed[BOB]["score"], listed[BOB]["grade"]) == ("lead", 10, "D")
    assert run(capsys, "leads", "list", "--stage", "customer")[1].strip() == "no leads at stage customer"


def test_accounts_shows_the_mqa_account(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Alice's 50 and Bob's 10 lift northwind.example over the MQA line of 55; a gmail.com lead is no account."""
    code, out, err = run(capsys, "accounts", "--stage", "mqa")
    assert code == 0, err
    assert out.splitlines()[1].split() == ["northwind.example", "60", "MQA"]
    code, out, _ = run(capsys, "accounts")
    assert code == 0 and "gmail" not in out
    assert out.splitlines()[1].split() == ["northwind.example", "60", "MQA"]


def test_rebuild_after_changing_the_rules_changes_the_scores(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Worth more in scoring.yaml, a demo request re-scores Alice at the next rebuild; a broken file changes nothing."""
    rules = workspace / "scenarios" / "scoring.yaml"
    rules.write_text(SCORING.replace("    points: 30\n  - event: page_visit", "    points: 45\n  - event: page_visit"))
    code, out, err = run(capsys, "scores", "rebuild")
    assert code == 0, err
    assert re.match(r"re-scored 3 leads \(\d+ events\) in [\d.]+ s.*: 1 changed, 0 stage moves", out), out
    document = shown(capsys, ALICE)
    assert document["score"]["score"] == 65
    assert document["history"][-1]["type"] == "score_changed"
    assert (document["history"][-1]["from"], document["history"][-1]["to"]) == (50, 65)

    rules.write_text(SCORING.replace("event: page_visit", "event: page_visits"))
    code, _, err = run(capsys, "scores", "rebuild")
    assert code == 2
    assert re.search(r"scoring\.yaml:5: .*page_visits", one_error_line(err))
    assert shown(capsys, ALICE)["score"]["score"] == 65
    code, out, _ = run(capsys, "leads", "show", ALICE)  # sales still see the stored standing
    assert code == 0 and re.search(r"^score    65$", out, re.M) and re.search(r"^note     .*page_visits", out, re.M)


def test_rebuild_again_changes_nothing(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same events under the same rules score the same: a second rebuild changes no lead and logs nothing."""
    history = shown(capsys, ALICE)["history"]
    code, out, _ = run(capsys, "scores", "rebuild")
    assert code == 0 and ": 0 changed, 0 stage moves" in out
    assert shown(capsys, ALICE)["history"] == history


def test_api_key_add_list_revoke(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The key printed once opens the store's door until it is revoked; names are unique."""
    code, out, err = run(capsys, "api-key", "add", "crm")
    assert code == 0, err
    key = re.search(r"^  (mk_\S+)$", out, re.M)
    assert key is not None and f"Authorization: Bearer {key[1]}" in out and "only this once" in out

    async def name_of(token: str) -> str | None:
        async with SQLiteStore(workspace / "mailer.db") as store:
            return await store.api_key_name(key_hash(token), now=datetime.now(timezone.utc))

    assert asyncio.run(name_of(key[1])) == "crm"
    assert asyncio.run(name_of(key[1] + "x")) is None
    assert run(capsys, "api-key", "add", "crm")[0] == 2
    assert run(capsys, "api-key", "add", "two words")[0] == 2
    code, out, _ = run(capsys, "api-key", "list")
    assert code == 0 and out.splitlines()[1].split()[0] == "crm" and out.splitlines()[1].endswith("live")
    assert key[1] not in out  # only the hash is kept

    code, out, _ = run(capsys, "api-key", "revoke", "crm")
    assert code == 0 and "revoked" in out
    assert asyncio.run(name_of(key[1])) is None
    assert "revoked" in run(capsys, "api-key", "list")[1]
    code, _, err = run(capsys, "api-key", "revoke", "crm")
    assert code == 2 and "no live API key named 'crm'" in one_error_line(err)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP receiver on loopback that answers 503 twice, then 204; it keeps every body."""
    with http_hook(lambda n: web.Response(status=503, text="busy") if n <= 2 else web.Response(status=204)) as hook:
        yield hook


def test_webhooks_log_lists_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], receiver: tuple[str, list[bytes]]
) -> None:
    """Each stage change's delivery shows in the log with its failed and its successful attempt, newest first."""
    url, bodies = receiver
    make_workspace(tmp_path, CONFIG + f'\n[webhooks.crm]\nurl = "{url}"\nsecret = "{"s" * 32}"\nevents = ["stage_changed"]\n')
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "scores", "rebuild")[0] == 0  # Alice → MQL
    assert run(capsys, "leads", "accept", ALICE)[0] == 0  # MQL → SAL
    config = load_config(tmp_path / "mailer.toml")

    async def deliver() -> None:
        clock = FakeClock(datetime.now(timezone.utc) + timedelta(minutes=1))
        async with SQLiteStore(config.store) as store:
            sender = WebhookSender(store, config.webhooks, clock)
            try:
                assert await sender.deliver_due() == 2  # both answered 503
                await clock.advance(minutes=1)  # past the first backoff (30 s)
                assert await sender.deliver_due() == 2  # both answered 204
            finally:
                await sender.stop()

    asyncio.run(deliver())
    assert len(bodies) == 4
    code, out, err = run(capsys, "webhooks", "log")
    assert code == 0, err
    heads = [line for line in out.splitlines() if line.startswith("#")]
    assert len(heads) == 2 and all("crm  stage_changed  evt_" in head and "delivered, 2 attempts" in head for head in heads)
    sal = json.loads(bodies[-1]) if json.loads(bodies[-1])["data"]["to"] == "SAL" else json.loads(bodies[-2])
    assert sal["id"] in heads[0]  # newest first: the acceptance
    attempts = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert [a[2:4] for a in attempts] == [["HTTP", "503"], ["HTTP", "204"]] * 2
    assert "busy" in out  # what the receiver said when it failed
    code, out, _ = run(capsys, "webhooks", "log", "--webhook", "crm", "--limit", "1")
    assert code == 0 and len([line for line in out.splitlines() if line.startswith("#")]) == 1


def test_validate_checks_scoring_yaml(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer validate` reports what scoring.yaml holds, and a typo in it as one line with file and line."""
    code, out, err = run(capsys, "validate")
    assert code == 0, err
    assert "scoring.yaml: 2 scoring rules, 2 grading rules" in out
    (workspace / "scenarios" / "scoring.yaml").write_text(SCORING.replace("    daily_cap: 10", "    daily_capp: 10"))
    code, out, err = run(capsys, "validate")
    assert code == 2
    assert re.search(r"scoring\.yaml:\d+: .*daily_capp", one_error_line(err))
    code, _, err = run(capsys, "validate", "scenarios/scoring.yaml")
    assert code == 2 and "daily_capp" in one_error_line(err)
