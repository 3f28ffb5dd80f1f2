"""The `mailer` command as a user runs it: one clear line and exit code 2 for every mistake."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import THREE_STEPS, write_workspace
from mailer.cli import main
from mailer.config import load_config


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_workspace(tmp_path)
    (tmp_path / "mailer.toml").write_text('[identities.default]\nfrom = "Acme <news@acme.example>"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stateful_commands_need_a_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`leads import` or `status` outside a workspace says to run `mailer init` and creates no database."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leads.csv").write_text("email\na@example.com\n")
    for args in (("status",), ("leads", "import", "leads.csv")):
        code, _, err = run(capsys, *args)
        assert code == 2 and "mailer init" in one_error_line(err)
    assert not (tmp_path / "mailer.db").exists()


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mailer: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_init_writes_a_config_that_loads_and_a_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer init` writes a commented config that loads, a 0600 key and the example content."""
    code, out, _ = run(capsys, "init", str(tmp_path / "ws"))
    assert code == 0
    config = load_config(tmp_path / "ws" / "mailer.toml")
    assert config.relay.port == 25
    key = tmp_path / "ws" / "mailer.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(config.secret_key()) >= 32
    assert (tmp_path / "ws" / "scenarios" / "trial-nurture.yaml").exists()
    assert "#" in (tmp_path / "ws" / "mailer.toml").read_text()


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `mailer init` keeps the existing key unless --force is given."""
    assert run(capsys, "init", str(tmp_path))[0] == 0
    key = (tmp_path / "mailer.key").read_text()
    code, _, err = run(capsys, "init", str(tmp_path))
    assert code == 2 and "--force" in one_error_line(err)
    assert (tmp_path / "mailer.key").read_text() == key


def test_unknown_config_key_names_the_key_and_line(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt key in mailer.toml is refused with its line and a did-you-mean."""
    (workspace / "mailer.toml").write_text('[relay]\nhost = "127.0.0.1"\nprot = 25\n')
    code, _, err = run(capsys, "validate")
    line = one_error_line(err)
    assert code == 2
    assert "mailer.toml:3: relay.prot: unknown key" in line and "relay.port" in line


def test_wrong_config_type_names_the_key(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A string where a number belongs is refused, naming the key."""
    (workspace / "mailer.toml").write_text('[relay]\nport = "twenty-five"\n')
    code, _, err = run(capsys, "validate")
    assert code == 2 and "mailer.toml:2: relay.port: expected a whole number" in one_error_line(err)


def test_validate_passes_a_good_workspace(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A correct scenario validates against sample leads with exit code 0."""
    code, out, err = run(capsys, "validate")
    assert code == 0, err
    assert "1 scenario, 3 steps" in out and "all good" in out


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("name: x\nsteps: [\n", "main.yaml:"),
        (THREE_STEPS.replace("    wait: 2d", "    wait: 2x"), "main.yaml:16: steps[1].wait"),
        (THREE_STEPS.replace("    template: two.html", "    template: missing.html"), "main.yaml:18: steps[1].template"),
        (THREE_STEPS.replace("timezone: UTC", "timezone: UTC\ncolour: blue"), "main.yaml:7: colour: unknown key"),
        (THREE_STEPS.replace("sender: default", "sender: nobody"), "main.yaml:3: sender"),
    ],
    ids=["malformed-yaml", "bad-wait", "missing-template", "unknown-field", "unknown-sender"],
)
def test_bad_scenario_files_give_one_line_with_file_and_line(
    workspace: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, expected: str
) -> None:
    """Each scenario mistake is one line naming file, line and field, with exit code 2."""
    (workspace / "scenarios" / "main.yaml").write_text(yaml_text)
    code, _, err = run(capsys, "validate")
    line = one_error_line(err)
    assert code == 2
    assert expected in line, line
    assert " — " in line or "main.yaml:" in line


def test_template_syntax_error_names_the_template_line(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Jinja syntax error is reported with the template file and line."""
    (workspace / "templates" / "two.html").write_text('{% extends "layout.html" %}\n{% block content %}\n<p>{{ lead.first_name </p>\n{% endblock %}\n')
    code, _, err = run(capsys, "validate")
    line = one_error_line(err)
    assert code == 2 and "two.html:3:" in line


def test_undefined_variable_is_caught_before_sending(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`{{ lead.frist_name }}` fails validation with the template file and line."""
    (workspace / "templates" / "three.html").write_text('{% extends "layout.html" %}\n{% block content %}\n\n<p>Hi {{ lead.frist_name }}</p>\n{% endblock %}\n')
    code, _, err = run(capsys, "validate")
    line = one_error_line(err)
    assert code == 2
    assert "three.html:4:" in line and "frist_name" in line


def test_csv_with_an_invalid_row_reports_it_and_imports_the_rest(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid address is reported with its line; the other rows are imported, exit code 2."""
    csv_file = workspace / "leads.csv"
    csv_file.write_text("email,first_name\nok@example.com,Ok\nnot-an-address,Bad\nyamada@example.jp,太郎\n", encoding="utf-8")
    code, out, err = run(capsys, "leads", "import", str(csv_file), "--list", "signups")
    assert code == 2
    assert f"{csv_file}:3: not-an-address: An email address must have an @-sign." in err
    assert "2 leads created" in out
    with sqlite3.connect(workspace / "mailer.db") as db:
        assert sorted(r[0] for r in db.execute("SELECT email FROM leads")) == ["ok@example.com", "yamada@example.jp"]


def test_strict_csv_import_imports_nothing_when_a_row_is_bad(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --strict one bad row means no lead is written at all."""
    csv_file = workspace / "leads.csv"
    csv_file.write_text("email\nok@example.com\nbad\n")
    code, _, err = run(capsys, "leads", "import", str(csv_file), "--strict")
    assert code == 2 and "nothing imported" in err
    if (workspace / "mailer.db").exists():
        with sqlite3.connect(workspace / "mailer.db") as db:
            assert db.execute("SELECT count(*) FROM leads").fetchone()[0] == 0


def test_csv_without_email_column_is_refused(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CSV with no address column is one error line naming the header."""
    csv_file = workspace / "leads.csv"
    csv_file.write_text("name,company\nA,B\n")
    code, _, err = run(capsys, "leads", "import", str(csv_file))
    assert code == 2 and one_error_line(err).startswith("mailer: error: leads.csv:1: email:")


def test_reimport_updates_instead_of_duplicating(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Importing the same address again updates the lead; upper-case domains are normalized."""
    csv_file = workspace / "leads.csv"
    csv_file.write_text("email,company\nTaro@Example.JP,Old\n")
    assert run(capsys, "leads", "import", str(csv_file))[0] == 0
    csv_file.write_text("email,company\ntaro@example.jp,New\n")
    code, out, _ = run(capsys, "leads", "import", str(csv_file))
    assert code == 0 and "0 leads created, 1 updated" in out
    with sqlite3.connect(workspace / "mailer.db") as db:
        assert db.execute("SELECT email, company FROM leads").fetchall() == [("taro@example.jp", "New")]


def test_preview_writes_eml_and_html(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer preview` writes the exact message a lead would get, as .eml and .html."""
    csv_file = workspace / "leads.csv"
    csv_file.write_text("email,first_name,last_name,company\ntaro@example.jp,太郎,山田,山田精機\n", encoding="utf-8")
    run(capsys, "leads", "import", str(csv_file))
    code, out, err = run(capsys, "preview", "three-steps", "two", "--lead", "taro@example.jp", "--out", str(workspace / "pv"))
    assert code == 0, err
    eml = next((workspace / "pv").glob("*.eml"))
    html = next((workspace / "pv").glob("*.html"))
    assert b"Subject: =?utf-8?" in eml.read_bytes()
    assert "太郎" in html.read_text(encoding="utf-8")


def test_serve_without_config_explains_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer serve` in an empty folder says to run `mailer init`."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "serve")
    assert code == 2 and "mailer init" in one_error_line(err)


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    """`python -m mailer` is the same program as the `mailer` script."""
    result = subprocess.run([sys.executable, "-m", "mailer", "--help"], capture_output=True, text=True, cwd=tmp_path, env=os.environ.copy())
    assert result.returncode == 0 and "demo" in result.stdout


def test_init_force_rewrites_the_config_but_keeps_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer init --force` never replaces the key that signed links already sent."""
    assert run(capsys, "init", str(tmp_path))[0] == 0
    key = (tmp_path / "mailer.key").read_text()
    assert run(capsys, "init", str(tmp_path), "--force")[0] == 0
    assert (tmp_path / "mailer.key").read_text() == key


def test_preview_with_a_bad_address_is_one_line(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--lead 'not an address'` is a user mistake: one line, exit code 2."""
    code, _, err = run(capsys, "preview", "three-steps", "one", "--lead", "not an address")
    assert code == 2 and "--lead" in one_error_line(err)


@pytest.mark.parametrize(
    "args",
    [
        ("--config", "{config}", "status"),
        ("status", "--config", "{config}"),
        ("status", "-c", "{config}", "-v"),
        ("leads", "import", "{csv}", "--config", "{config}"),
    ],
    ids=["before", "after", "short-and-verbose-after", "after-a-nested-action"],
)
def test_config_is_accepted_before_or_after_the_command(
    workspace: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
) -> None:
    """`--config FILE` works before the command, after it, and after a nested action, from another folder."""
    (workspace / "leads.csv").write_text("email\nann@example.com\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    filled = [a.format(config=workspace / "mailer.toml", csv=workspace / "leads.csv") for a in args]
    code, out, err = run(capsys, *filled)
    assert code == 0, err
    assert "leads: 0" in out or "1 lead created" in out
    assert (workspace / "mailer.db").exists()


def test_config_after_the_command_wins_over_the_one_before(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given twice, the --config nearer the end counts, as a later option does in every argparse program."""
    code, _, err = run(capsys, "--config", str(workspace / "missing.toml"), "status", "--config", str(workspace / "mailer.toml"))
    assert code == 0, err


def test_init_help_says_force_keeps_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    """`mailer init --help` says --force rewrites mailer.toml and keeps mailer.key, as it does."""
    with pytest.raises(SystemExit) as exited:
        main(["init", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "overwrite an existing config and key" not in text
    assert "--force" in text and "keeps mailer.key" in text


def test_errors_name_files_under_the_current_folder_relatively(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run from the workspace, a scenario error names `scenarios/main.yaml`, as the README shows."""
    (workspace / "scenarios" / "main.yaml").write_text(THREE_STEPS.replace("    wait: 2d", "    wait: 2x"))
    code, _, err = run(capsys, "validate")
    assert code == 2
    assert one_error_line(err).startswith("mailer: error: scenarios/main.yaml:16: steps[1].wait:")
