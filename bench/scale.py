"""Scale benchmark: the scheduler's cost to find and enqueue 10,000 due steps, as the leads grow.

For each size (10k, 100k, 1M leads), a fresh SQLite store with the real schema holds that
many leads enrolled in a one-step scenario, loaded in bulk (`bench/bulk.py`); 10,000 of
them are due (due_at in the last hour), all others due at some instant of the next 30 days.
The due leads are laid out two ways, each in a store of its own:

- spread: every (N/10,000)-th lead, the worst case. At 1M each due lead's rows sit on pages
  of their own, so the tick reads and writes 10,000 pages where the 10k store has ~250.
- together: 10,000 consecutive leads in the middle of the table, as when one import or one
  campaign entered them together. Only the number of leads that are not due differs from
  the 10k store, so this is the measure of what those leads cost the tick. One tick is `Daemon.schedule_due(now)`, the daemon's own
scheduling path: it pages through the due enrollments (the `enrollments_due` index), plans
each one and writes the batch (enrollment moved on, message queued, event logged). A flat
cost means the leads that are not due cost nothing; the baseline is the 10k store, measured
in the same run. Each store gets `--rounds` ticks (3 by default), the tick undone in between
(the due enrollments put back, their messages and events deleted); the fastest counts, so a
busy moment on a shared machine does not decide the figure. The time of each store call the
tick makes is shown beside it.

Also timed on each store, as the daemon's loop runs them: an idle tick (`schedule_due` with
nothing due), `next_wakeup` (how long to sleep) and one entry pass (`enter_leads`, which
re-reads each scenario's list for leads to enroll; here every lead is enrolled already).

Correctness check (exit 1 when it fails), after every round: exactly the due enrollments got a
queued message, one each, and every other enrollment is still active at step 0 with its
due_at unchanged.
The peak memory is this process's (ru_maxrss), the bulk load included.

    python bench/scale.py            # 10k, 100k and 1M leads
    python bench/scale.py --quick    # 10k and 100k, for CI

The last line of output is JSON with tick_s_10k, tick_s_100k, tick_s_1m (spread; null with
--quick), tick_s_100k_together, tick_s_1m_together, growth (spread), growth_together and
peak_rss_mb.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bulk
from mailer.clock import SystemClock
from mailer.config import load_config
from mailer.daemon import Daemon
from mailer.sqlitestore import SQLiteStore
from mailer.timestamps import ms

DUE = 10_000
TARGET_GROWTH = 2.0  # tick at 1M (or the largest size) over tick at 10k, at most
TARGET_RSS_MB = 300.0  # issue 7
FUTURE = timedelta(days=30)
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


@dataclass
class Figures:
    leads: int
    load_s: float
    tick_s: float
    parts: dict[str, float]  # the tick's seconds in each store call it makes
    queued: int
    idle_tick_s: float
    wakeup_s: float
    entry_s: float
    problems: list[str]


LAYOUTS = ("spread", "together")


def due_at_for(total: int, layout: str) -> tuple[set[int], Callable[[int], datetime]]:
    """The due lead ids (every total/DUE-th, or DUE consecutive ones) and each lead id's due_at."""
    if layout == "spread":
        step = total // DUE
        due = set(range(step, total + 1, step))
    else:
        first = (total - DUE) // 2 + 1
        due = set(range(first, first + DUE))
    seconds = int(FUTURE.total_seconds())

    def due_at(number: int) -> datetime:
        if number in due:
            return NOW - timedelta(seconds=number % 3600)
        return NOW + timedelta(seconds=60 + (number * 7919) % seconds)  # scattered, never due

    return due, due_at


def check(path: Path, due: set[int], total: int) -> tuple[int, list[str]]:
    """Exactly the due enrollments have a queued message, one each; the others are untouched.

    Returns the number of messages queued and the problems found."""
    problems = []
    db = sqlite3.connect(path)
    try:
        queued = [row[0] for row in db.execute("SELECT enrollment_id FROM messages WHERE state = 'queued'")]
        if len(queued) != len(set(queued)) or set(queued) != due:
            problems.append(
                f"{len(queued)} messages queued for {len(set(queued))} enrollments; "
                f"{len(due - set(queued))} due ones missing, {len(set(queued) - due)} not-due ones queued"
            )
        untouched = db.execute(
            "SELECT count(*) FROM enrollments WHERE state = 'active' AND step_index = 0 AND due_at > ?", (ms(NOW),)
        ).fetchone()[0]
        if untouched != total - len(due):
            problems.append(f"{total - len(due) - untouched} enrollments that were not due changed")
        other = db.execute("SELECT count(*) FROM messages WHERE state != 'queued'").fetchone()[0]
        if other:
            problems.append(f"{other} messages in another state than queued")
    finally:
        db.close()
    return len(queued), problems


async def undo_tick(store: SQLiteStore, due: set[int], due_at: Callable[[int], datetime], events_before: int) -> None:
    """Put the store back as it was before a tick: the due enrollments due again, no messages."""
    async with store.transaction() as db:
        await db.execute("DELETE FROM events WHERE id > ?", (events_before,))
        await db.execute("DELETE FROM messages")
        await db.executemany(
            "UPDATE enrollments SET state = 'active', step_index = 0, due_at = ? WHERE id = ?",
            [(ms(due_at(n)), n) for n in sorted(due)],
        )


async def tick(config_path: Path, due: set[int], due_at: Callable[[int], datetime], total: int, rounds: int) -> Figures:
    """The best of `rounds` ticks on one store (each checked, then undone), then the other calls."""
    config = load_config(config_path)
    problems: list[str] = []
    best: tuple[float, dict[str, float], int] | None = None
    async with SQLiteStore(config.store) as store:
        daemon = Daemon(config=config, store=store, clock=SystemClock())
        daemon.load_scenarios()
        async with store.db.execute("SELECT max(id) FROM events") as cursor:
            events_before = (await cursor.fetchone() or (0,))[0]
        for number in range(rounds):
            if number:
                await undo_tick(store, due, due_at, events_before)
            await store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the tick starts with an empty log
            parts = bulk.time_calls(store, ("due_enrollments", "engagement", "apply_updates"))
            async with store.checkpointing():  # as the daemon serves: the log is written back beside it
                start = time.perf_counter()
                await daemon.schedule_due(NOW)
                tick_s = time.perf_counter() - start
            for name in parts:
                delattr(store, name)  # the methods are the class's again
            start = time.perf_counter()
            await store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            parts["checkpoint"] = time.perf_counter() - start  # what is left of the tick's pages, beside it
            queued, found = check(config.store, due, total)
            problems += [f"round {number + 1}: {p}" for p in found]
            if best is None or tick_s < best[0]:
                best = (tick_s, parts, queued)
        start = time.perf_counter()
        await daemon.schedule_due(NOW)
        idle_tick_s = time.perf_counter() - start
        start = time.perf_counter()
        await store.next_wakeup(scenarios=list(daemon.scenarios))
        wakeup_s = time.perf_counter() - start
        start = time.perf_counter()
        entered = await daemon.enter_leads(NOW)
        entry_s = time.perf_counter() - start
        if entered:
            problems.append(f"{entered} leads entered again: every lead was enrolled already")
    assert best is not None
    return Figures(total, 0.0, best[0], best[1], best[2], idle_tick_s, wakeup_s, entry_s, problems)


def measure(total: int, layout: str, scratch: Path, rounds: int) -> Figures:
    root = scratch / f"leads-{total}-{layout}"
    config = bulk.write_workspace(root, sink_port=9, concurrency=4, dkim=False)  # nothing is sent
    bulk.create_schema(root / "mailer.db")
    due, due_at = due_at_for(total, layout)
    start = time.perf_counter()
    bulk.enroll_in_bulk(root / "mailer.db", count=total, due_at=due_at, now=NOW - timedelta(days=1))
    load_s = time.perf_counter() - start
    figures = asyncio.run(tick(config, due, due_at, total, rounds))
    figures.load_s = load_s
    shutil.rmtree(root, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k leads only, for CI")
    parser.add_argument("--rounds", type=int, default=3, help="ticks per store (undone in between); the best counts")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    # At the smallest size every lead is due, so the two layouts are one store.
    runs = [(sizes[0], "spread")] + [(total, layout) for total in sizes[1:] for layout in LAYOUTS]
    scratch = Path(tempfile.mkdtemp(prefix="mailer-scale-"))
    results: dict[tuple[int, str], Figures] = {}
    try:
        for total, layout in runs:
            figures = measure(total, layout, scratch, args.rounds)
            results[total, layout] = figures
            shape = "all due" if total == DUE else f"{DUE:,} due, {layout}"
            print(
                f"{total:>9,} leads ({shape + '):':<22} tick {figures.tick_s:6.3f} s "
                f"({1e6 * figures.tick_s / DUE:5.0f} µs a due step, {figures.queued:,} queued: "
                f"finding {figures.parts['due_enrollments']:.2f} s, engagement {figures.parts['engagement']:.2f} s, "
                f"writing {figures.parts['apply_updates']:.2f} s, planning {figures.tick_s - sum(v for k, v in figures.parts.items() if k != 'checkpoint'):.2f} s; "
                f"then the log written back beside the loop in {figures.parts['checkpoint']:.2f} s); "
                f"idle tick {1e3 * figures.idle_tick_s:6.1f} ms, next_wakeup {1e3 * figures.wakeup_s:6.1f} ms, "
                f"entry pass {1e3 * figures.entry_s:7.1f} ms; loaded in {figures.load_s:5.1f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    base = results[sizes[0], "spread"]
    largest = sizes[-1]
    growth = {layout: results[largest, layout].tick_s / base.tick_s for layout in LAYOUTS}
    problems = [f"{total:,} leads, {layout}: {p}" for (total, layout), f in results.items() for p in f.problems]

    def met(value: float, target: float) -> str:
        return "met" if value <= target else "NOT met"

    print(f"growth, tick at {largest:,} leads over the tick at {sizes[0]:,} (target ≤ {TARGET_GROWTH:g}x): "
          f"due leads together {growth['together']:.2f}x ({met(growth['together'], TARGET_GROWTH)}: what the leads "
          f"that are not due cost); spread {growth['spread']:.2f}x ({met(growth['spread'], TARGET_GROWTH)}: the worst "
          f"case, each due lead on pages of its own); peak RSS {peak:.0f} MB "
          f"(target < {TARGET_RSS_MB:g} MB: {met(peak, TARGET_RSS_MB)})")
    print(f"checks: exactly the {DUE:,} due enrollments queued, the others untouched, in each store: "
          + ("ok" if not problems else f"{len(problems)} FAILED"))
    for problem in problems[:10]:
        print(f"  {problem}")

    def figure(total: int, name: str, layout: str = "spread") -> float | None:
        return round(getattr(results[total, layout], name), 4) if (total, layout) in results else None

    print(json.dumps({
        "benchmark": "scale",
        "due": DUE,
        "tick_s_10k": figure(10_000, "tick_s"),
        "tick_s_100k": figure(100_000, "tick_s"),
        "tick_s_1m": figure(1_000_000, "tick_s"),
        "tick_s_100k_together": figure(100_000, "tick_s", "together"),
        "tick_s_1m_together": figure(1_000_000, "tick_s", "together"),
        "growth": round(growth["spread"], 3),
        "growth_together": round(growth["together"], 3),
        "idle_tick_s_1m": figure(1_000_000, "idle_tick_s"),
        "next_wakeup_s_1m": figure(1_000_000, "wakeup_s"),
        "checkpoint_s_10k": round(base.parts["checkpoint"], 4),
        "checkpoint_s_1m": round(results[1_000_000, "spread"].parts["checkpoint"], 4) if largest == 1_000_000 else None,
        "entry_pass_s_1m": figure(1_000_000, "entry_s"),
        "entry_pass_s_100k": figure(100_000, "entry_s"),
        "peak_rss_mb": round(peak, 1),
        "checks_failed": len(problems),
    }))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
