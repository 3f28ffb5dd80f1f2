"""`mailer warmup status` as an operator runs it, over a budget stored in a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import write_workspace
from mailer.cli import main
from mailer.config import load_config
from mailer.reply import SMTPReply
from mailer.sqlitestore import SQLiteStore
from mailer.warmup import WarmupPlan
from mailer.warmupshell import load_budget, save_budget

T0 = datetime(2026, 1, 7, 10, 0, tzinfo=timezone.utc)  # day 3 of the warm-up below
CONFIG = """
[identities.default]
from = "Acme <news@acme.example>"

[clock]
start = "2026-01-07T10:30:00+00:00"   # `warmup status` reads the daemon's clock

[warmup]
enabled = true

[ips.main]
address = "192.0.2.10"
warmup_start = "2026-01-05"
"""


async def fill(config_path: Path) -> None:
    """Half an hour of sending: Gmail accepts, Microsoft says 421, Yahoo blocks."""
    config = load_config(config_path)
    async with SQLiteStore(config.store) as store:
        budget = await load_budget(store, WarmupPlan.from_config(config), T0)
        for minute in range(5):
            now = T0 + timedelta(minutes=minute)
            grant = budget.reserve("main", "gmail", now)
            assert grant is not None
            budget.record_reply(grant, SMTPReply.parse(250, "OK", command="DATA"), now)
        for provider, reply in (
            ("microsoft", SMTPReply.parse(451, "4.7.650 The mail server [192.0.2.10] has been temporarily rate limited", command="RCPT")),
            ("yahoo", SMTPReply.parse(554, "5.7.1 Your IP address has been blocklisted", command="CONNECT")),
        ):
            grant = budget.reserve("main", provider, T0 + timedelta(minutes=20))
            assert grant is not None
            budget.record_reply(grant, reply, T0 + timedelta(minutes=20))
        await save_budget(store, budget)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_workspace(tmp_path)
    (tmp_path / "mailer.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    asyncio.run(fill(tmp_path / "mailer.toml"))
    return tmp_path


def test_status_shows_each_providers_day_hour_and_state(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Day 3 of 110: Gmail used 5 of 44 today, Microsoft slowed, Yahoo paused, each with its reason."""
    assert main(["warmup", "status"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[3:]}
    assert "ip main: warming, day 3; today 7/110, this hour 7/10" in out
    assert lines["gmail"] == ["gmail", "5/44", "5/10", "×1.00", "ok"]
    assert lines["microsoft"][1:5] == ["1/33", "1/5", "×0.50", "slowed"] and "4.7.650" in lines["microsoft"]
    assert lines["yahoo"][3:8] == ["×0.50", "paused", "until", "2026-01-07", "10:50"] and "blocklisted" in lines["yahoo"]
    assert lines["other"] == ["other", "0/55", "0/10", "×1.00", "ok"]


def test_status_as_json(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json gives one object per IP and provider with caps, use, multiplier, state and reason."""
    assert main(["warmup", "status", "--json"]) == 0
    rows = {row["provider"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["gmail"]["warmup_day"] == 3 and rows["gmail"]["today"] == {"cap": 44, "used": 5}
    assert rows["gmail"]["this_hour"] == {"cap": 10, "used": 5}
    assert rows["microsoft"]["multiplier"] == 0.5 and rows["microsoft"]["state"] == "slowed"
    assert rows["yahoo"]["state"] == "paused" and rows["yahoo"]["paused_until"] == "2026-01-07T10:50:00+00:00"


def test_status_without_warmup_shows_a_warm_ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With no [ips] and no [warmup], the one default IP is warm: no caps, nothing used."""
    write_workspace(tmp_path)
    (tmp_path / "mailer.toml").write_text('[identities.default]\nfrom = "Acme <news@acme.example>"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["warmup", "status"]) == 0
    out = capsys.readouterr().out
    assert "ip default: warm (no warm-up caps); today 0/∞, this hour 0/∞" in out


def test_status_outside_a_workspace_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No mailer.toml: exit 2 with one line saying to run `mailer init`, and no database created."""
    monkeypatch.chdir(tmp_path)
    assert main(["warmup", "status"]) == 2
    err = capsys.readouterr().err
    assert "mailer init" in err and "Traceback" not in err
    assert not (tmp_path / "mailer.db").exists()
