"""The real daemon in this event loop, against a fault server and a real SQLite file, on a fake clock.

`daemon_run` starts it; `Run.drive` moves the clock forward in steps, each time waiting (in
real time) until nothing due is left undone, so retries hours apart play out in seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from conftest import ONE_STEP, make_config, make_leads, write_workspace
from mailer.clock import FakeClock
from mailer.daemon import Daemon
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.testing import CaptureServer
from mailer.timestamps import ms

START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)  # a Monday


TERMINAL = ("sent", "failed", "bounced", "suppressed", "expired")
# The `mailer serve` processes tests start; any still running after a test is killed.
SPAWNED: list[asyncio.subprocess.Process] = []


@dataclass
class Run:
    daemon: Daemon
    store: SQLiteStore
    clock: FakeClock
    server: CaptureServer
    db: Path
    expected: int  # messages the run will create

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Committed data, read through a connection of its own."""
        with sqlite3.connect(self.db) as connection:
            return list(connection.execute(sql, params))

    def states(self) -> dict[str, int]:
        return dict(self.rows("SELECT state, count(*) FROM messages GROUP BY state"))

    def busy(self) -> int:
        """Messages claimed, or due and not yet claimed: work the daemon owes right now."""
        [(count,)] = self.rows(
            "SELECT count(*) FROM messages WHERE state = 'sending' "
            "OR (state IN ('queued', 'deferred') AND next_attempt_at <= ?)",
            (ms(self.clock.now()),),
        )
        return int(count)

    async def quiet(self, timeout: float = 30.0) -> None:
        """Wait until every message exists and none is due or in flight."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await asyncio.sleep(0.02)
            [(total,)] = self.rows("SELECT count(*) FROM messages")
            if total >= self.expected and self.busy() == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not quiet after {timeout} s: {self.states()}")

    async def drive(
        self,
        done: Callable[[dict[str, int]], bool] | None = None,
        *,
        step: timedelta = timedelta(minutes=30),
        limit: timedelta = timedelta(days=5),
    ) -> timedelta:
        """Advance the clock by `step` until `done(states)` (default: every message terminal)."""
        done = done or (lambda states: sum(states.get(s, 0) for s in TERMINAL) == self.expected)
        began = self.clock.now()
        while True:
            await self.quiet()
            if done(self.states()):
                return self.clock.now() - began
            if self.clock.now() - began > limit:
                raise AssertionError(f"not done after {limit} of clock time: {self.states()}")
            await self.clock.advance(step)

    def message_ids(self, where: str = "1", params: tuple[Any, ...] = ()) -> set[str]:
        return {row[0] for row in self.rows(f"SELECT message_id FROM messages WHERE {where}", params)}

    def suppressed(self) -> dict[str, str]:
        return dict(self.rows("SELECT email, reason FROM suppressions"))

    def retries(self) -> int:
        """SMTP attempts beyond the first of each message."""
        [(attempts, messages)] = self.rows("SELECT coalesce(sum(attempts), 0), count(*) FROM messages")
        return int(attempts) - int(messages)

    def lost(self) -> int:
        """Messages recorded as sent that the server never accepted."""
        sent = self.message_ids("state = 'sent'")
        return len(sent - set(self.server.message_ids))


@asynccontextmanager
async def daemon_run(
    root: Path,
    server: CaptureServer,
    *,
    leads: list[Lead] | int,
    **sections: Mapping[str, object],
) -> AsyncIterator[Run]:
    """A daemon serving a one-step scenario to `leads` through `server`, until the block ends."""
    write_workspace(root, ONE_STEP)
    sections.setdefault("timeouts", {"connect": 5, "mail": 5, "rcpt": 5, "data": 5})
    config = make_config(root, server.port, **{name: dict(section) for name, section in sections.items()})
    people = make_leads(leads) if isinstance(leads, int) else leads
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(people, list_name="signups", now=START)
        clock = FakeClock(START)
        daemon = Daemon(config=config, store=store, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        try:
            yield Run(daemon, store, clock, server, config.store, len(people))
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
