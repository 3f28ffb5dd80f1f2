"""`mailer scores rebuild`: re-score every lead after scoring.yaml changed; `mailer accounts`.

A score is a pure function of a lead's events and the rules (mailer.scoring), so a rebuild
is the daemon's periodic refresh run over every lead at once, with the same engine: the same
transactions, history events, stage moves, scenario entry triggers and webhook outbox.

`--dry-run` runs that very engine on a copy of the store (SQLite's online backup, safe beside a
running daemon) and compares the leads' stages before and after: what the rules would do is
what they do, with no second implementation to drift, and nothing reaches the real store, the
scenarios or the webhooks. The copy needs as much free disk as the store, for a moment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailer.argtypes import positive
from mailer.errors import UserError
from mailer.store import open_store
from mailer.wording import counted
from mailer.tables import aligned

if TYPE_CHECKING:
    from mailer.config import Config
    from mailer.scoringengine import EngineTotals


def add_commands(commands: Any) -> None:
    """Register `mailer scores rebuild` and `mailer accounts`."""
    scores = commands.add_parser("scores", help="lead scores: rebuild them after changing scoring.yaml")
    score_commands = scores.add_subparsers(dest="scores_command", metavar="ACTION", required=True)
    rebuild = score_commands.add_parser("rebuild", help="re-score, re-grade and re-stage every lead with the current rules")
    rebuild.add_argument(
        "--dry-run", action="store_true",
        help="show the stage moves and scenario entries the rules would make, on a copy; change nothing",
    )
    rebuild.set_defaults(run=_rebuild)
    accounts = commands.add_parser("accounts", help="accounts and their rolled-up scores (MQA)")
    accounts.add_argument("--stage", default=None, choices=["MQA"], type=str.upper, help="only marketing-qualified accounts")
    accounts.add_argument("--limit", type=positive, default=100)
    accounts.set_defaults(run=_accounts)


def summary(totals: EngineTotals, seconds: float) -> str:
    """One line a marketer reads after changing the rules: how much moved, and how fast."""
    extras = [
        counted(count, one, many)
        for count, one, many in (
            (totals.enrolled, "scenario entry by trigger", "scenario entries by trigger"),
            (totals.account_moves, "account stage change", ""),
            (totals.deliveries, "webhook call", ""),
        )
        if count
    ]
    rate = f", {totals.events / seconds:,.0f} events/s" if seconds >= 1 else ""  # a rate over less is noise
    return (
        f"re-scored {counted(totals.leads, 'lead')} ({counted(totals.events, 'event')}) in {seconds:.1f} s{rate}: "
        f"{totals.changed} changed, {counted(totals.stage_moves, 'stage move')}" + "".join(f", {extra}" for extra in extras)
    )


def _rebuild(args: argparse.Namespace) -> int:
    from mailer.cli import load, make_clock
    from mailer.leadsshell import load_scoring_config
    from mailer.scenario import load_scenarios
    from mailer.scoringengine import ScoringEngine

    config = load(args, required=True)
    rules = load_scoring_config(config)  # a broken file stops here, before anything is written
    # Scenarios a trigger may enter; a broken one is paused in the daemon too (`validate` shows why).
    scenarios, _ = load_scenarios(config.scenarios, identities=config.identities, templates_dir=config.templates)
    by_name = {scenario.name: scenario for scenario in scenarios}
    clock = make_clock(config)  # the daemon's clock: decay and recycling as an accelerated demo sees them

    async def run(target: Config) -> str:
        async with open_store(target) as store:
            engine = ScoringEngine(
                store, scoring=lambda: rules, scenarios=lambda: by_name, webhooks=target.webhooks, clock=clock
            )
            started = time.perf_counter()
            await engine.refresh(clock.now())
            return summary(engine.totals, time.perf_counter() - started)

    if not args.dry_run:
        print(asyncio.run(run(config)))
        return 0
    with tempfile.TemporaryDirectory(prefix=".mailer-dry-run-", dir=config.store.parent) as folder:
        copy = Path(folder) / config.store.name
        _copy_store(config.store, copy)
        before = _stages(copy)  # the copy's, not the live store's: a running daemon moves leads meanwhile
        line = asyncio.run(run(dataclasses.replace(config, store=copy)))
        print("dry run, nothing changed: would have " + line.removeprefix("re-"))
        for row in stage_moves(before, _stages(copy)):
            print(row)
    return 0


def _copy_store(source: Path, copy: Path) -> None:
    """A consistent copy of the SQLite store, taken while a daemon may be writing to it."""
    if not source.exists():
        raise UserError(f"no store at {source}", field="store", hint="import leads first (`mailer leads import`)")
    with sqlite3.connect(source) as original, sqlite3.connect(copy) as duplicate:
        original.backup(duplicate)
    duplicate.close()
    original.close()


def _stages(path: Path) -> dict[int, tuple[str, str]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, email, stage FROM leads").fetchall()
    db.close()
    return {lead_id: (email, stage) for lead_id, email, stage in rows}


SHOWN_MOVES = 10  # example leads per move; the counts are whole


def stage_moves(before: dict[int, tuple[str, str]], after: dict[int, tuple[str, str]]) -> list[str]:
    """Lines saying which stage moves a rebuild makes, most common first, with a few leads each."""
    moves: dict[tuple[str, str], list[str]] = {}
    for lead_id, (email, stage) in after.items():
        was = before.get(lead_id, (email, stage))[1]
        if was != stage:
            moves.setdefault((was, stage), []).append(email)
    lines = []
    for (was, stage), emails in sorted(moves.items(), key=lambda item: (-len(item[1]), item[0])):
        shown = ", ".join(sorted(emails)[:SHOWN_MOVES]) + (", …" if len(emails) > SHOWN_MOVES else "")
        lines.append(f"  {was} → {stage}: {counted(len(emails), 'lead')} ({shown})")
    return lines or ["  no lead would change stage"]


def _accounts(args: argparse.Namespace) -> int:
    from mailer.cli import load

    config = load(args, required=True)

    async def run() -> list[tuple[str, int, str]]:
        async with open_store(config) as store:
            return await store.accounts(stage=args.stage, limit=args.limit)

    accounts = asyncio.run(run())
    if not accounts:
        print("no MQA accounts" if args.stage else "no accounts yet (they appear once their leads are scored)")
        return 0
    rows = [("account", "score", "stage")] + [(name, str(score), stage or "–") for name, score, stage in accounts]
    print("\n".join(aligned(rows, right={1})))
    return 0
