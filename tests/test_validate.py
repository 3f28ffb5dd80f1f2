"""`mailer validate`'s notes on what is valid but will not work as meant."""

from __future__ import annotations

import asyncio

from datetime import datetime, timezone
from pathlib import Path

from conftest import THREE_STEPS, make_config, make_leads, write_workspace
from mailer.sqlitestore import SQLiteStore
from mailer.validate import validate

NOW = datetime(2026, 1, 5, tzinfo=timezone.utc)


async def _imported(root: Path, list_name: str) -> None:
    async with SQLiteStore(root / "mailer.db") as store:
        await store.upsert_leads(make_leads(2), list_name=list_name, now=NOW)


def imported(root: Path, list_name: str) -> None:
    asyncio.run(_imported(root, list_name))  # validate runs its own event loop, as the command does


def test_an_entry_list_nobody_is_on_gets_a_note_guessing_the_typo(tmp_path: Path) -> None:
    """An entry list with no lead imported to it and no [lists] entry is noted, naming the file and the close list name."""
    write_workspace(tmp_path, THREE_STEPS.replace("list: signups", "list: signupz"))
    imported(tmp_path, "signups")
    problems, summary = validate(make_config(tmp_path, 9), path=None, leads_csv=None)
    assert problems == []
    [note] = [line for line in summary.splitlines() if "entry list" in line]
    assert "main.yaml" in note and "'signupz' has nobody on it yet" in note and "did you mean 'signups'?" in note


def test_an_entry_list_with_leads_gets_no_note(tmp_path: Path) -> None:
    """The list the leads were imported to is known: no note, all good."""
    write_workspace(tmp_path, THREE_STEPS)
    imported(tmp_path, "signups")
    problems, summary = validate(make_config(tmp_path, 9), path=None, leads_csv=None)
    assert problems == [] and "entry list" not in summary and "all good" in summary
