"""Tests for mailer.daemons: who is dead, and a daemon's presence in a real SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import rows

from mailer.clock import FakeClock
from mailer.daemons import DEAD_AFTER, DaemonRecord, Here, Presence, dead_owners, is_dead, pid_exists, pid_scope
from mailer.sqlitestore import SQLiteStore
from test_sqlitestore import LEASE, T0, queued

HERE = Here(pid=100, pid_scope="boot/ns")


def record(*, pid: int = 200, scope: str = "boot/ns", silent: timedelta = timedelta(0), owner: str = "other") -> DaemonRecord:
    return DaemonRecord(owner=owner, pid=pid, host="mx1", pid_scope=scope, started_at=T0, heartbeat_at=T0 - silent)


def running(pid: int) -> bool:
    return True


def exited(pid: int) -> bool:
    return False


def test_a_daemon_heard_from_recently_whose_process_runs_is_alive() -> None:
    """A heartbeat within DEAD_AFTER and a running pid: alive."""
    assert not is_dead(record(silent=DEAD_AFTER), now=T0, here=HERE, pid_exists=running)


def test_a_silent_daemon_is_dead_whatever_its_pid() -> None:
    """No heartbeat for longer than DEAD_AFTER is death, even if some process holds that pid now."""
    assert is_dead(record(silent=DEAD_AFTER + timedelta(seconds=1)), now=T0, here=HERE, pid_exists=running)


def test_a_pid_that_is_gone_in_our_scope_is_death_at_once() -> None:
    """On the same machine and pid namespace, a pid that no longer exists is dead with a fresh heartbeat."""
    assert is_dead(record(), now=T0, here=HERE, pid_exists=exited)


def test_the_pid_rule_applies_only_in_the_same_known_scope_and_never_to_our_own_pid() -> None:
    """Another scope's pid, an unknown scope, or our own pid (two daemons in one process) are judged by heartbeat only."""
    assert not is_dead(record(scope="boot/other-ns"), now=T0, here=HERE, pid_exists=exited)
    assert not is_dead(record(scope=""), now=T0, here=Here(pid=100, pid_scope=""), pid_exists=exited)
    assert not is_dead(record(pid=HERE.pid), now=T0, here=HERE, pid_exists=exited)


def test_dead_owners_never_names_the_judge() -> None:
    """The judge is never among the dead, even silent itself (its loop was blocked)."""
    records = [record(owner="me", pid=300, silent=DEAD_AFTER * 2), record(owner="gone", silent=DEAD_AFTER * 2), record(owner="alive")]
    assert dead_owners(records, now=T0, here=HERE, pid_exists=running, owner="me") == ["gone"]


def test_pid_exists_tells_a_running_process_from_an_ended_one() -> None:
    """Signal 0 finds this process and not a child that has exited and been reaped."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    assert pid_exists(os.getpid())
    assert not pid_exists(int(child.stdout))


def test_pid_scope_is_stable_within_a_process() -> None:
    """The scope names this boot and pid namespace the same way each time (empty where unknown)."""
    assert pid_scope() == pid_scope()


class RealTime:
    """A settable real-time source, so a test can make a daemon fall silent without waiting."""

    def __init__(self) -> None:
        self.at = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.at


async def test_a_second_presence_leaves_a_live_ones_leases_and_takes_them_once_it_falls_silent(tmp_path: Path) -> None:
    """A daemon starting beside a live one recovers nothing of it; once the first is silent past DEAD_AFTER, a beat takes over its messages."""
    now = RealTime()
    async with SQLiteStore(tmp_path / "mailer.db") as one, SQLiteStore(tmp_path / "mailer.db") as two:
        await queued(one, "a@example.com", "b@example.com")
        first = Presence(one, clock=FakeClock(T0), now=now)
        assert await first.start() == 0
        await one.claim_messages(now=T0, limit=2, lease=LEASE, owner=first.owner)
        second = Presence(two, clock=FakeClock(T0), now=now)
        woken: list[bool] = []
        try:
            assert await second.start(on_recovered=lambda: woken.append(True)) == 0
            assert {d.owner for d in await two.daemons()} == {first.owner, second.owner}
            now.at += DEAD_AFTER - timedelta(seconds=1)  # silent, but not for long enough
            await second.beat(sweep=False)
            assert rows(one, "SELECT count(*) FROM messages WHERE state = 'sending'") == [(2,)] and not woken
            now.at += timedelta(seconds=2)
            await second.beat(sweep=False)
            assert await two.message_counts() == {"queued": 2} and woken == [True]
            assert [d.owner for d in await two.daemons()] == [second.owner]
        finally:
            await second.stop()
            await first.stop()
        assert await two.daemons() == []


async def test_a_presence_taken_for_dead_registers_again_and_keeps_nothing_it_lost(tmp_path: Path) -> None:
    """A daemon whose registration was removed (taken for dead) registers again at its next beat; its recovered messages stay queued."""
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        await queued(store, "a@example.com")
        presence = Presence(store, clock=FakeClock(T0))
        await presence.start()
        try:
            await store.claim_messages(now=T0, limit=1, lease=LEASE, owner=presence.owner)
            assert await store.recover_in_flight(now=T0, owner="another", dead=[presence.owner]) == 1
            await presence.beat(sweep=True)
            assert [d.owner for d in await store.daemons()] == [presence.owner]
            assert await store.message_counts() == {"queued": 1}
        finally:
            await presence.stop()


async def test_a_presence_starting_after_a_killed_process_recovers_its_messages_at_once(tmp_path: Path) -> None:
    """The registration of a process that has ended (a pid of our scope, heartbeat still fresh) is dead: its messages are requeued at start."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        await queued(store, "a@example.com")
        at = datetime.now(timezone.utc)
        await store.register_daemon(DaemonRecord("killed", int(child.stdout), "mx1", pid_scope(), at, at))
        await store.claim_messages(now=T0, limit=1, lease=LEASE, owner="killed")
        presence = Presence(store, clock=FakeClock(T0))
        try:
            recovered = await presence.start()
        finally:
            await presence.stop()
    # Where the kernel does not tell pid scopes apart, only the heartbeat judges.
    assert recovered == (1 if pid_scope() else 0)


async def test_a_sweep_requeues_expired_ownerless_claims_and_a_plain_beat_does_not(tmp_path: Path) -> None:
    """Claims that named no owner are looked at only by the periodic sweep, and only once their lease has passed on the daemon's clock."""
    clock = FakeClock(T0)
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        await queued(store, "a@example.com")
        await store.claim_messages(now=T0, limit=1, lease=LEASE)
        presence = Presence(store, clock=clock)
        await presence.start()
        try:
            await presence.beat(sweep=True)
            assert await store.message_counts() == {"sending": 1}
            await clock.advance(LEASE)
            await presence.beat(sweep=False)
            assert await store.message_counts() == {"sending": 1}
            await presence.beat(sweep=True)
            assert await store.message_counts() == {"queued": 1}
        finally:
            await presence.stop()
