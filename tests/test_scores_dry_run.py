"""`mailer scores rebuild --dry-run`: the moves new rules would make, on a copy; the store unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailer.scoresshell import stage_moves
from test_leadsshell import ALICE, BOB, SCORING, run, shown, workspace  # noqa: F401 (the fixture)


def _rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, stage, score, grade FROM leads ORDER BY id").fetchall()
        rows += db.execute("SELECT count(*) FROM events").fetchall()
    db.close()
    return rows


def test_a_dry_run_shows_the_moves_and_changes_nothing(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rule that makes everyone an MQL is shown as lead → MQL for each lead, and the store, history and scores stay as they were."""
    (workspace / "scenarios" / "scoring.yaml").write_text(SCORING.replace('MQL: "score >= 50 and grade >= B"', 'MQL: "score >= 0"'))
    before, history = _rows(workspace / "mailer.db"), shown(capsys, BOB)["history"]
    code, out, err = run(capsys, "scores", "rebuild", "--dry-run")
    assert code == 0, err
    assert out.startswith("dry run, nothing changed: would have scored 3 leads"), out
    assert "lead → MQL: 2 leads (bob@northwind.example, carol@gmail.com)" in out
    assert _rows(workspace / "mailer.db") == before and shown(capsys, BOB)["history"] == history
    assert not list(workspace.glob(".mailer-dry-run-*")), "the copy is removed"
    code, out, _ = run(capsys, "scores", "rebuild")  # the real thing makes the moves the dry run showed
    assert code == 0 and ", 2 stage moves" in out
    assert shown(capsys, BOB)["stage"]["stage"] == "MQL" and shown(capsys, ALICE)["stage"]["stage"] == "MQL"


def test_the_moves_are_counted_most_common_first_with_a_few_leads_each() -> None:
    """Moves group by (from, to), the biggest first, ten addresses shown and the rest counted."""
    before = {n: (f"l{n:02}@x.example", "lead") for n in range(12)} | {99: ("m@x.example", "MQL")}
    after = {n: (email, "MQL") for n, (email, _) in before.items()} | {99: ("m@x.example", "recycled")}
    lines = stage_moves(before, after)
    assert lines[0].startswith("  lead → MQL: 12 leads (l00@x.example, ") and lines[0].endswith(", …)")
    assert lines[1] == "  MQL → recycled: 1 lead (m@x.example)"
    assert stage_moves(before, before) == ["  no lead would change stage"]
