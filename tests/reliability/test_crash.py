"""`mailer serve` as a real process: kill -9 at random instants, SIGTERM drain, restart.

The daemon runs as `python -m mailer serve` against a fault server on loopback and a real
SQLite file, on the accelerated clock. A `kill -9` may repeat only the messages that were in
flight (leased, state `sending`) at that instant, and must lose none; a SIGTERM finishes the
transactions under way and leaves nothing in `sending`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from conftest import SERVE_CONFIG, make_leads, write_workspace
from mailer.sqlitestore import SQLiteStore
from mailer.testing import REPLY_451, FaultServer, delay_reply, reply_with

from .harness import ONE_STEP, SPAWNED

CONFIG = SERVE_CONFIG + """
[clock]
speed = 600  # ten clock minutes a real second: a 20-minute retry comes after two seconds
"""
KILL_MESSAGES = 2000
KILLS = 3
SEED = 20260105


class Workspace:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.db = root / "mailer.db"
        self.config = root / "mailer.toml"
        self.config.write_text(CONFIG.format(port=port))
        self.log = root / "serve.log"

    async def start(self) -> asyncio.subprocess.Process:
        with open(self.log, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailer", "--config", str(self.config), "serve",
                stdout=log, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        SPAWNED.append(process)
        return process

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db, timeout=30) as connection:
            return list(connection.execute(sql))

    def states(self) -> dict[str, int]:
        return {str(state): int(str(count)) for state, count in self.rows("SELECT state, count(*) FROM messages GROUP BY state")}

    def in_flight(self) -> set[str]:
        return {str(row[0]) for row in self.rows("SELECT message_id FROM messages WHERE state = 'sending'")}

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout} s: {self.states()}\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.01)


async def _prepare(root: Path, count: int) -> None:
    write_workspace(root, ONE_STEP)
    async with SQLiteStore(root / "mailer.db") as store:
        await store.upsert_leads(make_leads(count), list_name="signups", now=datetime.now(timezone.utc))


async def _stop(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), 30)


async def test_kill_9_at_random_instants_loses_nothing_and_repeats_only_what_was_in_flight(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    """Three kill -9 at seeded random points of a 2,000-message run: none lost, repeats only among messages in flight at a kill."""
    await _prepare(tmp_path, KILL_MESSAGES)
    rng = random.Random(SEED)
    # Each kill comes this many accepted messages after the (re)start before it.
    kill_after = [rng.randint(100, 500) for _ in range(KILLS)]
    began = time.monotonic()
    async with FaultServer() as server:
        workspace = Workspace(tmp_path, server.port)
        in_flight: list[set[str]] = []
        recovery: list[float] = []
        for threshold in [*kill_after, None]:
            before = len(server.messages)
            spawned = datetime.now(timezone.utc)
            process = await workspace.start()
            await workspace.until(lambda: len(server.messages) > before, 30, "a first message after the start")
            recovery.append((server.messages[before].received_at - spawned).total_seconds())
            if threshold is None:
                await workspace.until(lambda: workspace.states() == {"sent": KILL_MESSAGES}, 60, "every message sent")
                assert await _stop(process) == 0
                break
            await workspace.until(lambda: len(server.messages) >= before + threshold, 60, f"{threshold} messages")
            process.kill()  # SIGKILL: no handler runs, nothing is flushed
            await process.wait()
            in_flight.append(workspace.in_flight())
        wall = time.monotonic() - began

    stored = {str(row[0]) for row in workspace.rows("SELECT message_id FROM messages")}
    assert len(stored) == KILL_MESSAGES, "one message per lead, none created twice"
    lost = stored - set(server.message_ids)
    assert not lost, f"{len(lost)} messages never reached the server"
    repeated = {message_id for message_id, copies in server.message_ids.items() if copies > 1}
    assert repeated <= set().union(*in_flight), "a message not in flight at any kill was sent twice"
    per_kill = [len(repeated & flight) for flight in in_flight]
    max_copies = max(server.message_ids.values())
    assert max_copies - 1 <= sum(1 for flight in in_flight if flight), "at most one repeat per kill"
    recovered = sum(int(str(n)) for (n,) in workspace.rows("SELECT count(*) FROM events WHERE type = 'recovered'"))
    assert recovered == sum(len(flight) for flight in in_flight), "every message in flight at a kill was queued again"
    figures(
        f"C1 kill-9: messages={KILL_MESSAGES} kills={KILLS} after={kill_after} lost={len(lost)} "
        f"duplicates={server.duplicates} per_kill={per_kill} max_per_kill={max(per_kill)} "
        f"in_flight_at_kill={[len(f) for f in in_flight]} max_dup_per_message={max_copies - 1} "
        f"recovery_s={[round(r, 2) for r in recovery[1:]]} first_start_s={recovery[0]:.2f} wall={wall:.1f}s"
    )


async def test_sigterm_drains_leaving_nothing_in_sending(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """SIGTERM mid-run with slow and refusing transactions: exit 0, nothing in `sending`, no repeat; a restart finishes."""
    count = 300
    await _prepare(tmp_path, count)
    async with FaultServer(seed=3) as server:
        # Slow before the 354, so the transactions under way at the signal end during the drain.
        server.inject(delay_reply("DATA", 0.3), reply_with("RCPT", REPLY_451, fraction=0.1))
        workspace = Workspace(tmp_path, server.port)
        process = await workspace.start()
        await workspace.until(lambda: len(server.messages) >= 40, 30, "40 messages")
        signalled = time.monotonic()
        accepted_at_signal = len(server.messages)
        assert await _stop(process) == 0, workspace.log.read_text()[-3000:]
        drain = time.monotonic() - signalled
        after_stop = workspace.states()
        assert "sending" not in after_stop, after_stop
        assert after_stop.get("sent", 0) == len(server.messages), "every accepted message is recorded as sent"
        assert sum(after_stop.values()) == count
        finished_in_drain = len(server.messages) - accepted_at_signal

        server.clear()
        process = await workspace.start()
        await workspace.until(lambda: workspace.states() == {"sent": count}, 60, "every message sent")
        assert await _stop(process) == 0
    assert "Traceback" not in workspace.log.read_text()
    assert server.duplicates == 0 and len(server.message_ids) == count
    figures(
        f"C2 sigterm-drain: messages={count} accepted_at_signal={accepted_at_signal} finished_while_draining={finished_in_drain} "
        f"drain_s={drain:.2f} left_sending=0 states_after_stop={after_stop} duplicates={server.duplicates} lost=0"
    )
