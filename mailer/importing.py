"""`mailer leads import`: read a CSV, report rejected rows, write the rest in one transaction."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from mailer.config import Config
from mailer.csvimport import ImportPlan, read_leads_csv
from mailer.store import open_store
from mailer.store import UpsertCounts
from mailer.wording import counted

EXIT_REJECTED_ROWS = 2


def read_with_progress(path: Path, *, source: str | None, check_deliverability: bool) -> ImportPlan:
    """Parse the file, with a progress bar when stderr is a terminal."""
    with tqdm(desc=f"reading {path.name}", unit=" rows", disable=not sys.stderr.isatty(), leave=False) as bar:

        def advance(rows: int) -> None:
            bar.update(rows - bar.n)

        return read_leads_csv(path, source=source, check_deliverability=check_deliverability, on_row=advance)


async def write_plan(config: Config, plan: ImportPlan, *, list_name: str | None, consent_source: str = "") -> UpsertCounts:
    """Write the leads; list members are confirmed, with 'imported' evidence naming `consent_source`."""
    async with open_store(config) as store:
        return await store.upsert_leads(
            plan.leads, list_name=list_name, now=datetime.now(timezone.utc), consent_source=consent_source
        )


async def import_leads(
    config: Config,
    *,
    path: Path,
    list_name: str | None,
    source: str | None,
    check_deliverability: bool,
    strict: bool,
) -> int:
    """Import a CSV; exit code 2 when rows were rejected (the others are imported unless strict)."""
    plan = read_with_progress(path, source=source, check_deliverability=check_deliverability)
    for rejection in plan.rejected:
        print(f"{path}:{rejection.line}: {rejection.email or '(no address)'}: {rejection.reason} — fix the row and import again", file=sys.stderr)
    if strict and plan.rejected:
        print(f"mailer: error: {counted(len(plan.rejected), 'row')} rejected; nothing imported (--strict)", file=sys.stderr)
        return EXIT_REJECTED_ROWS
    counts = await write_plan(config, plan, list_name=list_name, consent_source=str(path))
    listed = f", {counts.added_to_list} added to list {list_name!r}" if list_name else ""
    print(
        f"{path}: {counted(plan.rows, 'row')}: {counted(counts.created, 'lead')} created, {counts.updated} updated"
        f"{listed}, {counted(plan.merged_duplicates, 'duplicate row')} merged, {len(plan.rejected)} rejected"
    )
    return EXIT_REJECTED_ROWS if plan.rejected else 0
