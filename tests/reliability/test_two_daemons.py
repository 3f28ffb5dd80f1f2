"""Two daemons on one database never send the same message twice.

One `mailer serve` holds a lock on its store (mailer.servelock) and a second one is refused;
claims are single SQLite transactions, so even two claimers racing on one file get disjoint
messages. Below the lock, leases name their owner (mailer.daemons): a daemon started beside a
running one leaves its messages alone, and when one dies the other takes over what it held.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from conftest import make_config, make_leads, write_workspace
from mailer.clock import FakeClock
from mailer.daemon import LEASE, Daemon
from mailer.daemons import HEARTBEAT
from mailer.sqlitestore import SQLiteStore
from mailer.testing import FaultServer, delay_reply

from .harness import ONE_STEP, SPAWNED, START, daemon_run
from .test_crash import Workspace, _prepare, _stop

CHILD = Path(__file__).with_name("daemon_child.py")


async def test_a_second_mailer_serve_is_refused_cleanly_and_the_first_sends_each_message_once(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    """The second `mailer serve` on a store exits 2 naming the first's pid, without a traceback; the first is unharmed."""
    count = 400
    await _prepare(tmp_path, count)
    async with FaultServer() as server:
        server.inject(delay_reply("DATA", 0.01))
        workspace = Workspace(tmp_path, server.port)
        first = await workspace.start()
        await workspace.until(lambda: len(server.messages) >= 20, 30, "the first daemon sending")
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailer", "--config", str(workspace.config), "serve",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        began = time.monotonic()
        out, err = await asyncio.wait_for(second.communicate(), 30)
        refused_in = time.monotonic() - began
        await workspace.until(lambda: workspace.states() == {"sent": count}, 60, "every message sent")
        assert await _stop(first) == 0
    message = err.decode()
    assert second.returncode == 2
    assert "in use by another `mailer serve`" in message and f"pid {first.pid}" in message, message
    assert "Traceback" not in message and out == b"" and len(message.strip().splitlines()) == 1
    assert server.duplicates == 0 and len(server.message_ids) == count
    figures(
        f"D1 second-serve: exit={second.returncode} refused_in={refused_in:.2f}s "
        f"message={message.strip()!r} first_daemon_sent={len(server.message_ids)}/{count} duplicates={server.duplicates}"
    )


async def test_two_claimers_racing_on_one_sqlite_file_never_get_the_same_message(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    """Two stores (two connections, two threads) claiming from one file at once get disjoint messages that cover the queue."""
    count = 3000
    write_workspace(tmp_path, ONE_STEP)
    config = make_config(tmp_path, 25)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(make_leads(count), list_name="signups", now=START)
        planner = Daemon(config=config, store=store, clock=FakeClock(START))
        planner.load_scenarios()
        await planner.enter_leads(START)
        await planner.schedule_due(START)
        assert await store.message_counts() == {"queued": count}

    async def claimer(store: SQLiteStore, seed: int) -> list[int]:
        rng = random.Random(seed)
        claimed: list[int] = []
        while batch := await store.claim_messages(now=START, limit=7, lease=LEASE):
            claimed.extend(message.id for message in batch)
            await asyncio.sleep(rng.random() / 1000)  # a moment of work, as a daemon has between claims
        return claimed

    began = time.monotonic()
    async with SQLiteStore(config.store, busy_timeout=30) as one, SQLiteStore(config.store, busy_timeout=30) as two:
        first, second = await asyncio.gather(claimer(one, 1), claimer(two, 2))
        counts = await one.message_counts()
    took = time.monotonic() - began
    overlap = set(first) & set(second)
    assert not overlap, f"{len(overlap)} messages handed to both"
    assert len(first) == len(set(first)) and len(second) == len(set(second))
    assert len(first) + len(second) == count and counts == {"sending": count}
    assert first and second, "both claimers got work: they really raced"
    figures(
        f"D2 racing-claims: messages={count} claimer_a={len(first)} claimer_b={len(second)} "
        f"handed_to_both={len(overlap)} unclaimed=0 claims_per_s={count / took:.0f}"
    )


async def test_a_second_daemon_starting_on_the_same_database_does_not_steal_live_leases(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    """A Daemon started beside a running one leaves the running one's leased messages alone: nothing is sent twice."""
    async with FaultServer() as server:
        server.inject(delay_reply("DATA", 0.05))
        async with daemon_run(tmp_path, server, leads=200) as first:
            await first.server.wait_for(5)
            leased = first.states().get("sending", 0)
            assert leased > 0, "the first daemon holds leases when the second starts"
            config = first.daemon.config
            async with SQLiteStore(config.store) as store:
                second = Daemon(config=config, store=store, clock=first.clock)
                stop = asyncio.Event()
                task = asyncio.create_task(second.serve(stop))
                await first.drive(step=timedelta(minutes=30))
                stop.set()
                by_second = sum((await asyncio.wait_for(task, 30)).outcomes.values())
            recovered = first.rows("SELECT count(*) FROM events WHERE type = 'recovered'")[0][0]
    figures(
        f"D3 second-daemon-leases: messages=200 leased_by_first={leased} recovered_by_second={recovered} "
        f"outcomes_by_second={by_second} duplicates={server.duplicates}"
    )
    assert server.duplicates == 0, f"{server.duplicates} messages sent twice"
    assert recovered == 0, "the second daemon requeued messages the first was sending"


async def test_when_one_of_two_daemons_is_killed_the_other_takes_over_its_messages(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    """Two daemon processes share a store; after kill -9 of one, the other requeues and sends what it held within a heartbeat: none lost, repeats only among those."""
    count = 1500
    await _prepare(tmp_path, count)
    async with FaultServer() as server:
        server.inject(delay_reply("DATA", 0.01))
        workspace = Workspace(tmp_path, server.port)
        first = await _spawn_daemon(workspace)
        await workspace.until(lambda: len(server.messages) >= 100, 30, "the first daemon sending")
        second = await _spawn_daemon(workspace)
        await workspace.until(lambda: len(_owners(workspace)) == 2, 30, "the second daemon registered")
        before = len(server.messages)
        await workspace.until(lambda: len(server.messages) >= before + 200, 30, "both daemons sending")
        assert _holds(workspace, second.pid), "the second daemon claims messages of its own beside the first"
        duplicates_while_both_ran = server.duplicates
        first.kill()
        await first.wait()
        killed_at = time.monotonic()
        dead_in_flight = _holds(workspace, first.pid)
        assert dead_in_flight, "the killed daemon held leases"
        await workspace.until(lambda: not _holds(workspace, first.pid), 30, "the dead daemon's leases recovered")
        takeover = time.monotonic() - killed_at
        await workspace.until(lambda: workspace.states() == {"sent": count}, 60, "every message sent")
        assert await _stop(second) == 0
    lost = {str(row[0]) for row in workspace.rows("SELECT message_id FROM messages")} - set(server.message_ids)
    repeated = {message_id for message_id, copies in server.message_ids.items() if copies > 1}
    recovered = workspace.rows("SELECT m.message_id FROM events e JOIN messages m ON m.id = e.message_id WHERE e.type = 'recovered'")
    assert duplicates_while_both_ran == 0
    assert not lost, f"{len(lost)} messages never reached the server"
    assert repeated <= dead_in_flight, "only messages the dead daemon held may repeat"
    assert {str(row[0]) for row in recovered} == dead_in_flight and len(recovered) == len(dead_in_flight)
    assert takeover < HEARTBEAT.total_seconds() + 5, f"takeover took {takeover:.1f} s"
    assert "Traceback" not in workspace.log.read_text()
    figures(
        f"D4 takeover: messages={count} dead_in_flight={len(dead_in_flight)} recovered={len(recovered)} "
        f"takeover_s={takeover:.2f} duplicates={server.duplicates} duplicates_while_both_ran={duplicates_while_both_ran} "
        f"lost={len(lost)}"
    )


async def _spawn_daemon(workspace: Workspace) -> asyncio.subprocess.Process:
    """A daemon process on the workspace's store, without `mailer serve`'s one-daemon lock."""
    with open(workspace.log, "ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), str(workspace.config),
            stdout=log, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    SPAWNED.append(process)
    return process


def _owners(workspace: Workspace) -> list[str]:
    return [str(row[0]) for row in workspace.rows("SELECT owner FROM daemons")]


def _holds(workspace: Workspace, pid: int) -> set[str]:
    """The messages leased by the daemon process `pid` (its owner id names its pid)."""
    rows = workspace.rows(
        f"SELECT message_id FROM messages WHERE state = 'sending' AND lease_owner LIKE '%:{int(pid)}:%'"
    )
    return {str(row[0]) for row in rows}
