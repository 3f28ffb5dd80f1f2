"""Tests for mailer.sqlitewarmup against a real SQLite file: a restart does not reset a day's use."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from mailer.reply import SMTPReply
from mailer.schema import MIGRATIONS
from mailer.sqlitestore import SQLiteStore
from mailer.warmup import SendingIP, WarmupPlan
from mailer.warmupbudget import UsageCount, WarmupBudget, WarmupChanges
from mailer.warmupshell import load_budget, save_budget

T0 = datetime(2026, 1, 7, 10, 0, tzinfo=timezone.utc)
PLAN = WarmupPlan(ips=(SendingIP("main", warming=True, start=date(2026, 1, 5)),))
ACCEPTED = SMTPReply.parse(250, "2.0.0 OK", command="DATA")
BLOCKED = SMTPReply.parse(554, "5.7.1 Your IP address has been blocklisted", command="CONNECT")


def spend(budget: WarmupBudget, provider: str, start: datetime, minutes: int = 60) -> int:
    sent = 0
    for minute in range(minutes):
        now = start + timedelta(minutes=minute)
        while (grant := budget.reserve("main", provider, now)) is not None:
            budget.record_reply(grant, ACCEPTED, now)
            sent += 1
    return sent


async def test_a_restart_continues_the_days_use_and_throttles(tmp_path: Path) -> None:
    """Spend two hours, save, close; a new process on the same file has only the rest of the day."""
    path = tmp_path / "mailer.db"
    async with SQLiteStore(path) as store:
        budget = await load_budget(store, PLAN, T0)
        first = spend(budget, "gmail", T0) + spend(budget, "gmail", T0 + timedelta(hours=1))
        grant = budget.reserve("main", "yahoo", T0 + timedelta(hours=2))
        assert grant is not None
        budget.record_reply(grant, BLOCKED, T0 + timedelta(hours=2))
        await save_budget(store, budget)
    later = T0 + timedelta(hours=2, minutes=10)
    async with SQLiteStore(path) as store:
        again = await load_budget(store, PLAN, later)
    assert first == 20
    assert again.allowance("main", "yahoo", later) == 0  # still paused
    gmail = next(row for row in again.status(later) if row.provider == "gmail")
    assert gmail.day_used == 20 and gmail.day_cap == 44
    rest = spend(again, "gmail", later, minutes=11 * 60 + 49)  # to 23:59, the rest of the UTC day
    assert first + rest == 44  # the day's cap, not the day's cap again after the restart


async def test_increments_from_two_writers_add_up(tmp_path: Path) -> None:
    """Usage is stored as increments: two budgets' changes to one hour are summed, not overwritten."""
    row = UsageCount("main", "gmail", T0.date(), 10, attempts=3, accepted=2, deferred=1)
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        await store.record_warmup(WarmupChanges([row], {}))
        await store.record_warmup(WarmupChanges([row], {}))
        stored = await store.warmup_usage(since=T0.date())
    assert stored == [UsageCount("main", "gmail", T0.date(), 10, attempts=6, accepted=4, deferred=2)]


async def test_a_release_after_a_save_never_leaves_a_negative_count(tmp_path: Path) -> None:
    """A returned attempt written after its reservation subtracts, and never below zero."""
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        budget = WarmupBudget(PLAN)
        grant = budget.reserve("main", "gmail", T0)
        assert grant is not None
        await save_budget(store, budget)
        budget.release(grant)
        budget.release(grant)  # a second release of the same grant is a bug, but must not corrupt
        await save_budget(store, budget)
        stored = await store.warmup_usage(since=T0.date())
    assert [u.attempts for u in stored] == [0]


async def test_only_recent_days_are_loaded(tmp_path: Path) -> None:
    """The budget reads today and yesterday; older days stay on disk for reports."""
    old = UsageCount("main", "gmail", T0.date() - timedelta(days=5), 9, attempts=7)
    today = UsageCount("main", "gmail", T0.date(), 9, attempts=4)
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        await store.record_warmup(WarmupChanges([old, today], {}))
        assert len(await store.warmup_usage(since=date(2000, 1, 1))) == 2
        budget = await load_budget(store, PLAN, T0)
    assert next(r for r in budget.status(T0) if r.provider == "gmail").day_used == 4


async def test_the_migration_creates_the_warmup_tables(tmp_path: Path) -> None:
    """A new database is at the latest schema version, with both warm-up tables."""
    async with SQLiteStore(tmp_path / "mailer.db"):
        pass
    with sqlite3.connect(tmp_path / "mailer.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"warmup_usage", "warmup_throttles"} <= tables
