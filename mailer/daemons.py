"""Which daemons are alive: owner-named leases, heartbeats, and recovery of the dead's messages.

Each `Daemon.serve` registers in the store's `daemons` table under an owner id of its own,
writes that id on every message it claims (`messages.lease_owner`), and heartbeats in real
time. A lease lasts as long as its owner's heartbeat: recovery requeues only messages whose
owner is gone, so a daemon started beside a running one leaves its messages alone, and a
daemon that dies has its messages taken over:

- at once by a daemon starting, or running, on the same machine, where a pid that no longer
  exists is proof of death (`kill -9`, then a restart: nothing waits for a timeout);
- after `DEAD_AFTER` of silence from anywhere else (another host, another container).

Heartbeats are real time, not the daemon's clock: an accelerated or fake clock must not make a
live daemon look silent. `messages.lease_until` stays in clock time and only bounds claims
that name no owner (tools and benchmarks that call `claim_messages` themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from mailer.wording import counted

if TYPE_CHECKING:
    from mailer.clock import Clock
    from mailer.store import Store

log = logging.getLogger("mailer.daemons")

HEARTBEAT = timedelta(seconds=5)
# Three missed heartbeats: one late write (a busy database waits up to its busy_timeout,
# 10 s by default) must not make a live daemon look dead. Daemons on several hosts compare
# their wall clocks, which must agree to well within this (NTP).
DEAD_AFTER = 3 * HEARTBEAT
# How often a running daemon looks for expired leases of claims that named no owner; dead
# daemons are looked for at every heartbeat (reading `daemons` is a few rows).
RECOVER_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class DaemonRecord:
    """One registered daemon, as the `daemons` table holds it (times are real time)."""

    owner: str
    pid: int
    host: str  # the hostname, for people reading the table
    pid_scope: str  # which processes `pid` is a pid among (see `pid_scope`); "" when unknown
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class Here:
    """The judging process: its pid and the scope its pids are valid in."""

    pid: int
    pid_scope: str


def is_dead(record: DaemonRecord, *, now: datetime, here: Here, pid_exists: Callable[[int], bool]) -> bool:
    """Whether `record`'s daemon is gone: silent for longer than DEAD_AFTER, or its process
    is visibly not running (only judged for a pid of our own scope, and never our own pid:
    two daemons in one process are told apart by their heartbeats alone)."""
    if now - record.heartbeat_at > DEAD_AFTER:
        return True
    same_scope = bool(record.pid_scope) and record.pid_scope == here.pid_scope
    return same_scope and record.pid != here.pid and not pid_exists(record.pid)


def dead_owners(
    records: Iterable[DaemonRecord], *, now: datetime, here: Here, pid_exists: Callable[[int], bool], owner: str
) -> list[str]:
    """The owners among `records` that are gone, never `owner` (the judge itself)."""
    return [r.owner for r in records if r.owner != owner and is_dead(r, now=now, here=here, pid_exists=pid_exists)]


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists here (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    except OSError:  # not a pid this platform can check: assume alive, let the heartbeat judge
        return True
    return True


def pid_scope() -> str:
    """The set of processes this process's pids refer to: the boot and the pid namespace.

    Two containers may share a hostname and both run as pid 1, so a hostname alone would let
    one container take the other's live daemon for dead. Where the kernel does not tell (not
    Linux), "" turns the pid rule off and only heartbeats judge.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def real_now() -> datetime:
    return datetime.now(timezone.utc)


def any_alive(records: Iterable[DaemonRecord]) -> bool:
    """Whether a registered daemon is alive, judged as daemons judge each other: for the
    commands that tell the operator whether a running `mailer serve` will act on their change."""
    here = Here(pid=os.getpid(), pid_scope=pid_scope())
    return any(not is_dead(r, now=real_now(), here=here, pid_exists=pid_exists) for r in records)


class Presence:
    """This daemon in the `daemons` table: registered at start, heartbeating, removed at stop.

    Its heartbeat is a task of its own: a failed write is logged and tried again at the next
    beat, and nothing in it can hold up sending or end the daemon.
    """

    def __init__(self, store: Store, *, clock: Clock, now: Callable[[], datetime] = real_now) -> None:
        self.store = store
        self.clock = clock
        self.now = now  # real time; tests pass their own
        self.here = Here(pid=os.getpid(), pid_scope=pid_scope())
        self.owner = f"{socket.gethostname()}:{self.here.pid}:{secrets.token_hex(4)}"
        self.started_at = self.now()
        self._task: asyncio.Task[None] | None = None
        self._on_recovered: Callable[[], None] = lambda: None

    def record(self) -> DaemonRecord:
        """This daemon's row, its heartbeat now."""
        return DaemonRecord(
            self.owner, self.here.pid, socket.gethostname(), self.here.pid_scope, self.started_at, self.now()
        )

    async def start(self, *, on_recovered: Callable[[], None] = lambda: None) -> int:
        """Register, requeue the messages of daemons that are gone, start heartbeating;
        returns how many messages were requeued."""
        self._on_recovered = on_recovered
        self.started_at = self.now()
        await self.store.register_daemon(self.record())
        recovered = await self.recover(sweep=True)
        self._task = asyncio.create_task(self._beat_forever(), name="heartbeat")
        return recovered

    async def stop(self) -> None:
        """Stop heartbeating and unregister: what this daemon still holds may be taken at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.store.unregister_daemon(self.owner)
        except Exception:  # the row goes stale and is judged dead by the next daemon
            log.exception("unregistering this daemon failed")

    async def recover(self, *, sweep: bool) -> int:
        """Requeue the leases of dead daemons; with `sweep`, also owner-less expired leases
        (a query over every leased message, so not at every beat)."""
        records = await self.store.daemons()
        dead = dead_owners(records, now=self.now(), here=self.here, pid_exists=pid_exists, owner=self.owner)
        if not dead and not sweep:
            return 0
        return await self.store.recover_in_flight(now=self.clock.now(), owner=self.owner, dead=dead)

    async def _beat_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + RECOVER_EVERY.total_seconds()
        while True:
            await asyncio.sleep(HEARTBEAT.total_seconds())
            try:
                await self.beat(sweep=loop.time() >= next_sweep)
            except Exception:
                log.exception("heartbeat failed; trying again in %.0f s", HEARTBEAT.total_seconds())
            else:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + RECOVER_EVERY.total_seconds()

    async def beat(self, *, sweep: bool) -> None:
        """Write the heartbeat, then recover what dead daemons hold (and, with `sweep`, expired owner-less leases)."""
        if not await self.store.heartbeat(self.owner, at=self.now()):
            # Another daemon took this one for dead (no heartbeat written for DEAD_AFTER) and
            # requeued its messages: those in flight here may be sent twice.
            log.error("this daemon was taken for dead by another and its leases were recovered; registering again")
            await self.store.register_daemon(self.record())
        recovered = await self.recover(sweep=sweep)
        if recovered:
            log.warning("%s leased by daemons that are gone: queued again", counted(recovered, "message", "messages"))
            self._on_recovered()
