"""`mailer suppress …`, `mailer report` and consent on `mailer leads import`, run as a user runs them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import write_workspace
from mailer.cli import main
from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.sqlitestore import SQLiteStore
from mailer.store import Outcome

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mailer: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_workspace(tmp_path)  # its scenario enters from list `signups`
    (tmp_path / "mailer.toml").write_text(WORKSPACE_TOML)
    monkeypatch.chdir(tmp_path)
    return tmp_path


WORKSPACE_TOML = '[identities.default]\nfrom = "Acme <news@acme.example>"\n[lists.news]\n[lists."@SUM(A1:A9)"]\n'


def suppressions(workspace: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(workspace / "mailer.db") as db:
        return list(db.execute("SELECT email, list, reason, detail FROM suppressions ORDER BY email, list"))


# suppress add / remove / list


def test_add_suppresses_normalized_addresses_and_keeps_an_earlier_reason(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`suppress add` writes normalized addresses with reason and note; adding again keeps the first reason."""
    code, out, _ = run(capsys, "suppress", "add", "Ann@Example.COM", "bob@example.com", "--list", "news", "--note", "asked by phone")
    assert code == 0 and "suppressed 2 addresses for news (manual)" in out
    code, out, _ = run(capsys, "suppress", "add", "ann@example.com", "--list", "news", "--reason", "complaint")
    assert code == 0 and "suppressed 0" in out and "1 already suppressed" in out
    assert suppressions(workspace) == [
        ("ann@example.com", "news", "manual", "asked by phone"), ("bob@example.com", "news", "manual", "asked by phone")
    ]


def test_add_with_a_malformed_address_writes_nothing(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One malformed address is one error line, exit code 2, and no suppression is written."""
    code, _, err = run(capsys, "suppress", "add", "ok@example.com", "not-an-address")
    assert code == 2 and "'not-an-address' is not an email address" in one_error_line(err)
    assert not (workspace / "mailer.db").exists() or suppressions(workspace) == []


def test_an_unknown_reason_is_refused_by_the_command_line(workspace: Path) -> None:
    """`--reason whatever` exits 2 with argparse's usage line, never a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "mailer", "suppress", "add", "a@example.com", "--reason", "whatever"],
        cwd=workspace, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "invalid choice: 'whatever'" in result.stderr and "Traceback" not in result.stderr


def test_remove_lifts_one_pair_and_says_where_else_an_address_is_suppressed(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`suppress remove` lifts exactly the named (address, list); a wrong list is an error naming the right one."""
    run(capsys, "suppress", "add", "ann@example.com", "--list", "news")
    run(capsys, "suppress", "add", "ann@example.com", "--reason", "hard-bounce")
    code, _, err = run(capsys, "suppress", "remove", "ann@example.com", "--list", "deals")
    assert code == 2 and "not suppressed for deals" in one_error_line(err) and "news" in err
    code, out, _ = run(capsys, "suppress", "remove", "ann@example.com")
    assert code == 0 and "lifted the hard-bounce suppression" in out and "reputation" in out
    assert suppressions(workspace) == [("ann@example.com", "news", "manual", "")]


def test_list_filters_by_reason_and_list(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`suppress list` shows each suppression once, filtered by --reason and --list ('' is global)."""
    run(capsys, "suppress", "add", "a@example.com", "--reason", "complaint")
    run(capsys, "suppress", "add", "b@example.com", "--list", "news", "--note", "by phone")
    code, out, _ = run(capsys, "suppress", "list")
    assert code == 0 and len(out.splitlines()) == 2
    _, out, _ = run(capsys, "suppress", "list", "--reason", "complaint")
    assert out.split()[2:] == ["a@example.com", "every", "list", "complaint"]
    _, out, _ = run(capsys, "suppress", "list", "--list", "news")
    assert "b@example.com" in out and "by phone" in out and "a@example.com" not in out
    _, out, _ = run(capsys, "suppress", "list", "--list", "")
    assert "a@example.com" in out and "b@example.com" not in out


# suppress import / export


def test_import_reads_the_email_column_reports_bad_rows_and_writes_the_rest(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An import takes the email column (other columns ignored), reports bad rows by line, and exits 2 having written the good ones."""
    source = workspace / "unsubscribed.csv"
    source.write_text("name,E-mail,note\nAnn,ann@example.com,x\nBad,not-an-address,y\nNone,,z\nBob,BOB@example.com,\nAnn again,ann@example.com,\n")
    code, out, err = run(capsys, "suppress", "import", str(source), "--reason", "unsubscribe", "--list", "news")
    assert code == 2
    assert f"{source}:3: not-an-address:" in err and f"{source}:4: (no address): The email address is empty." in err
    assert "5 rows: 2 addresses suppressed for news (unsubscribe)" in out and "2 rejected" in out
    assert suppressions(workspace) == [
        ("ann@example.com", "news", "unsubscribe", "imported from unsubscribed.csv"),
        ("bob@example.com", "news", "unsubscribe", "imported from unsubscribed.csv"),
    ]


def test_import_accepts_a_headerless_shift_jis_file(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file of bare addresses in cp932 (Japanese Excel's CSV) imports every row, the first included."""
    source = workspace / "list.csv"
    source.write_bytes("a@example.com,山田\nb@example.com,鈴木\n".encode("cp932"))
    code, out, _ = run(capsys, "suppress", "import", str(source))
    assert code == 0 and "2 addresses suppressed for every list (manual)" in out
    assert [row[:3] for row in suppressions(workspace)] == [("a@example.com", "", "manual"), ("b@example.com", "", "manual")]


def test_import_of_a_file_without_addresses_is_one_error(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file whose header names no email column and holds no address is one error line naming the field."""
    source = workspace / "x.csv"
    source.write_text("name,phone\nAnn,123\n")
    code, _, err = run(capsys, "suppress", "import", str(source))
    assert code == 2 and "no column holds the email address" in one_error_line(err)


def test_export_is_formula_safe_and_round_trips(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exported cells starting with = + - @ get a quote (OWASP); the rest reads back as written, with a BOM for Excel."""
    run(capsys, "suppress", "add", "a@example.com", "--note", '=HYPERLINK("http://evil.example","click")')
    run(capsys, "suppress", "add", "b@example.com", "--note", "+1", "--list", "@SUM(A1:A9)")
    run(capsys, "suppress", "add", "--note", "-1", "--", "-1@example.com")
    run(capsys, "suppress", "add", "c@example.com", "--note", "plain, with comma")
    out_file = workspace / "export.csv"
    code, out, _ = run(capsys, "suppress", "export", "--out", str(out_file))
    assert code == 0 and "wrote 4 suppressions" in out
    raw = out_file.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    table = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert list(table[0]) == ["email", "list", "reason", "detail", "created_at"]
    by_email = {row["email"]: row for row in table}
    assert by_email["a@example.com"]["detail"] == "'=HYPERLINK(\"http://evil.example\",\"click\")"
    assert (by_email["b@example.com"]["detail"], by_email["b@example.com"]["list"]) == ("'+1", "'@SUM(A1:A9)")
    assert by_email["'-1@example.com"]["detail"] == "'-1"
    assert by_email["c@example.com"]["detail"] == "plain, with comma"
    assert datetime.fromisoformat(by_email["c@example.com"]["created_at"]).tzinfo is not None
    for row in table:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    before = suppressions(workspace)
    with sqlite3.connect(workspace / "mailer.db") as db:
        db.execute("DELETE FROM suppressions")
    code, out, _ = run(capsys, "suppress", "import", str(out_file))
    assert code == 0 and "4 addresses suppressed: 3 for every list, 1 for @SUM(A1:A9) (manual)" in out
    assert suppressions(workspace) == before, "an export imports back, quotes and all"


def test_export_to_stdout(workspace: Path) -> None:
    """Without --out the CSV goes to stdout, so it can be piped."""
    subprocess.run([sys.executable, "-m", "mailer", "suppress", "add", "a@example.com"], cwd=workspace, check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "mailer", "suppress", "export"], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "email,list,reason,detail,created_at"
    assert result.stdout.splitlines()[1].startswith("a@example.com,,manual,,")


def test_export_imports_into_a_fresh_store_with_each_rows_list_reason_and_date(
    workspace: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export imported into another workspace keeps every row's list, reason, detail and date (once its lists exist there): exporting again gives the same file."""
    run(capsys, "suppress", "add", "a@example.com", "b@example.com", "--reason", "hard-bounce", "--note", "550 5.1.1")
    run(capsys, "suppress", "add", "c@example.com", "d@example.com")
    run(capsys, "suppress", "add", "e@example.com", "a@example.com", "--list", "news", "--reason", "unsubscribe")
    exported = workspace / "s.csv"
    assert run(capsys, "suppress", "export", "--out", str(exported))[0] == 0
    elsewhere = tmp_path_factory.mktemp("ws3")
    write_workspace(elsewhere)
    (elsewhere / "mailer.toml").write_text('[identities.default]\nfrom = "Acme <news@acme.example>"\n')
    monkeypatch.chdir(elsewhere)
    code, out, err = run(capsys, "suppress", "import", str(exported))  # 'news' is not a list here yet
    assert code == 2 and out == "" and not (elsewhere / "mailer.db").exists(), "refused before anything is written"
    assert "the column 'list' names lists nobody here knows: 'news' (2 rows); nothing was imported" in err
    (elsewhere / "mailer.toml").write_text('[identities.default]\nfrom = "Acme <news@acme.example>"\n\n[lists.news]\n')
    code, out, err = run(capsys, "suppress", "import", str(exported))
    assert code == 0, err
    assert out == (
        f"{exported}: 6 rows: 6 addresses suppressed: 4 for every list, 2 for news (2 hard-bounce, 2 manual, 2 unsubscribe), "
        "0 already suppressed, 0 rejected\n"
    )
    assert suppressions(elsewhere) == suppressions(workspace)
    again = elsewhere / "again.csv"
    run(capsys, "suppress", "export", "--out", str(again))
    assert again.read_bytes() == exported.read_bytes()


def test_import_refuses_list_or_reason_options_that_the_files_columns_would_override(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--list with a file that has a list column (or --reason with a reason column) is one error, and nothing is written."""
    source = workspace / "own.csv"
    source.write_text("email,list,reason\na@example.com,,complaint\n")
    code, _, err = run(capsys, "suppress", "import", str(source), "--list", "news")
    assert code == 2 and "--list 'news': the file gives each row its own list" in one_error_line(err)
    code, _, err = run(capsys, "suppress", "import", str(source), "--reason", "manual")
    assert code == 2 and "--reason 'manual': the file gives each row its own reason" in one_error_line(err)
    assert not (workspace / "mailer.db").exists()
    source.write_text("email,reason\na@example.com,complaint\n")
    assert run(capsys, "suppress", "import", str(source), "--list", "news")[0] == 0, "--list is fine without a list column"
    assert suppressions(workspace) == [("a@example.com", "news", "complaint", "imported from own.csv")]


def test_import_rejects_a_row_with_an_unknown_reason_by_line_with_the_allowed_ones(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reason cell outside the vocabulary rejects its row (file:line, closest and allowed values); empty means manual."""
    source = workspace / "reasons.csv"
    source.write_text("email,reason\na@example.com,hardbounce\nb@example.com,complaint\nc@example.com,\n")
    code, out, err = run(capsys, "suppress", "import", str(source))
    assert code == 2
    assert f"{source}:2: a@example.com: The reason 'hardbounce' is not one we know: did you mean 'hard-bounce'? " \
           "one of: unsubscribe, hard-bounce, complaint, soft-bounce-escalation, manual, unconfirmed" in err
    assert "2 addresses suppressed for every list (1 complaint, 1 manual)" in out and "1 rejected" in out
    assert [row[:3] for row in suppressions(workspace)] == [("b@example.com", "", "complaint"), ("c@example.com", "", "manual")]


def test_add_and_import_refuse_a_list_nobody_knows_naming_the_closest(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--list` must be declared in mailer.toml, hold leads or be a scenario's entry list; a typo is exit 2 with a guess."""
    code, _, err = run(capsys, "suppress", "add", "a@example.com", "--list", "signup")
    line = one_error_line(err)
    assert code == 2 and "no list named 'signup'" in line and "did you mean 'signups'?" in line
    assert "known lists: @SUM(A1:A9), news, signups" in line
    assert not (workspace / "mailer.db").exists(), "a refused command creates no store"
    source = workspace / "plain.csv"
    source.write_text("email\na@example.com\n")
    code, _, err = run(capsys, "suppress", "import", str(source), "--list", "nwes")
    assert code == 2 and "did you mean 'news'?" in one_error_line(err)
    leads = workspace / "leads.csv"
    leads.write_text("email\nz@example.com\n")
    assert run(capsys, "leads", "import", str(leads), "--list", "webinar")[0] == 0
    for known in ("signups", "news", "webinar"):  # the scenario's, mailer.toml's, the store's
        assert run(capsys, "suppress", "add", "a@example.com", "--list", known)[0] == 0
    assert run(capsys, "suppress", "import", str(source), "--list", "webinar")[0] == 0
    assert [row[1] for row in suppressions(workspace)] == ["news", "signups", "webinar"]


def test_remove_with_a_list_of_a_global_suppression_says_to_drop_the_list(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Naming a list for an address suppressed for every list hints at leaving out --list, not passing one."""
    run(capsys, "suppress", "add", "p@example.com")
    code, _, err = run(capsys, "suppress", "remove", "p@example.com", "--list", "signups")
    line = one_error_line(err)
    assert code == 2 and "it is suppressed for: every list; drop --list to lift the one for every list" in line
    assert "pass --list" not in line
    code, _, err = run(capsys, "suppress", "remove", "nobody@example.com")
    assert code == 2 and "it is not suppressed for any list, nor for every list" in one_error_line(err)


def test_list_says_when_it_shows_only_part_and_finds_one_address(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`suppress list` says on stderr how many it left out; --email shows one address's suppressions, written any case."""
    run(capsys, "suppress", "add", *[f"lead{n}@example.com" for n in range(5)])
    run(capsys, "suppress", "add", "lead3@example.com", "--list", "news", "--note", "by phone")
    code, out, err = run(capsys, "suppress", "list", "--limit", "4")
    assert code == 0 and len(out.splitlines()) == 4
    assert err == "showing 4 of 6; --limit N or `mailer suppress export`\n"
    code, out, err = run(capsys, "suppress", "list", "--limit", "6")
    assert len(out.splitlines()) == 6 and err == ""
    code, out, err = run(capsys, "suppress", "list", "--email", " Lead3@EXAMPLE.com ")
    assert code == 0 and err == ""
    assert sorted(line.split("  ", 1)[1] for line in out.splitlines()) == [
        "lead3@example.com  every list  manual", "lead3@example.com  news  manual  by phone"
    ]
    code, out, err = run(capsys, "suppress", "list", "--email", "lead9@example.com")
    assert code == 0 and out == "" and "lead9@example.com is not suppressed" in err



# leads import and consent


def test_leads_import_into_a_list_records_imported_consent_naming_the_file(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`leads import --list` makes confirmed members with one 'imported' consent record each, naming the file."""
    source = workspace / "crm.csv"
    source.write_text("email\na@example.com\nb@example.com\n")
    assert run(capsys, "leads", "import", str(source), "--list", "news")[0] == 0
    with sqlite3.connect(workspace / "mailer.db") as db:
        assert db.execute("SELECT DISTINCT status FROM list_members").fetchall() == [("confirmed",)]
        assert db.execute("SELECT email, list, action, method, source FROM consents ORDER BY email").fetchall() == [
            ("a@example.com", "news", "imported", "import", str(source)),
            ("b@example.com", "news", "imported", "import", str(source)),
        ]
    assert "confirmed members" in subprocess.run(
        [sys.executable, "-m", "mailer", "leads", "import", "--help"], capture_output=True, text=True, timeout=60
    ).stdout


# report


async def _sent_and_opened(path: Path) -> None:
    """Two messages of step `one` sent, one opened by a person and one by a machine."""
    async with SQLiteStore(path) as store:
        await store.upsert_leads([Lead(email="a@example.com"), Lead(email="b@example.com")], list_name="signups", now=T0)
        leads = [await store.get_lead(email) for email in ("a@example.com", "b@example.com")]
        ids = [lead.id for lead in leads if lead is not None and lead.id is not None]
        await store.enroll(scenario="three-steps", lead_ids=ids, due_at=T0, now=T0)
        for lead_id in ids:
            await store.db.execute(
                "INSERT INTO messages (message_id, enrollment_id, lead_id, scenario, step_id, state, next_attempt_at, created_at, updated_at) "
                "SELECT ?, id, lead_id, scenario, 'one', 'queued', 0, 0, 0 FROM enrollments WHERE lead_id = ?",
                (f"<{lead_id}@acme.example>", lead_id),
            )
        claimed = await store.claim_messages(now=T0, limit=10, lease=T0 - T0)
        await store.record_outcomes([Outcome(m.id, m.lead.id or 0, MessageState.SENT, T0) for m in claimed])
        for machine, message in enumerate(m.id for m in claimed):
            await store.db.execute(
                "INSERT INTO events (at, type, lead_id, message_id, scenario, step_id, machine) "
                "SELECT 0, 'opened', lead_id, id, scenario, step_id, ? FROM messages WHERE id = ?",
                (machine, message),
            )


def test_report_shows_every_step_in_order_as_table_json_and_csv(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer report` lists the scenario's steps in file order with human and machine opens apart, in three formats."""
    asyncio.run(_sent_and_opened(workspace / "mailer.db"))
    code, out, _ = run(capsys, "report")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[1] for line in lines[1:5]] == ["one", "two", "three", "(total)"]
    header = lines[0].split()
    one = dict(zip(header, lines[1].split()))
    assert (one["sent"], one["delivered"], one["opens"], one["open%"], one["m.opens"]) == ("2", "2", "1", "50.0%", "1")
    assert "開封率" in out

    code, out, _ = run(capsys, "report", "three-steps", "--json")
    [scenario] = json.loads(out)["scenarios"]
    assert scenario["steps"][0]["open_rate"] == 0.5 and scenario["total"]["sent"] == 2

    code, out, _ = run(capsys, "report", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["step"], r["sent"], r["machine_opens"]) for r in rows][0] == ("one", "2", "1")


def test_report_of_an_unknown_scenario_is_one_error(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Asking for a scenario that neither exists nor sent anything is exit 2 with the known names."""
    code, _, err = run(capsys, "report", "nope")
    assert code == 2 and "no scenario named 'nope'" in one_error_line(err) and "three-steps" in err


def test_report_and_json_are_mutually_exclusive(workspace: Path) -> None:
    """--json and --csv together are refused with exit code 2."""
    result = subprocess.run([sys.executable, "-m", "mailer", "report", "--json", "--csv"], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not allowed with" in result.stderr


def test_another_systems_list_column_is_refused_not_read_as_our_scopes(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CRM export headed Email,List naming lists unknown here is refused whole, so nobody is suppressed only for a list that stops nothing."""
    source = workspace / "crm.csv"
    source.write_text("Email,List\nann@example.com,Newsletter\nbob@example.com,News\n")
    code, out, err = run(capsys, "suppress", "import", str(source))
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "'News' (1 row; did you mean 'news'?), 'Newsletter' (1 row" in line and "nothing was imported" in line
    assert not (workspace / "mailer.db").exists(), "refused before anything is written"
