"""Checkpoints in the background: the write-ahead log is copied back into the database file
by a connection of its own, so that no writer's COMMIT pays for it.

SQLite's default (`wal_autocheckpoint` = 1000 pages) runs the checkpoint inside the COMMIT
that crosses the threshold, on the committing connection. The daemon's tasks share one
connection, so all of its reads and writes then wait while the pages are copied and the
database file is fsynced: with a million leads, 0.3 s of a 0.8 s scheduler tick went there,
and the send loop's outcome batches paid the same (bench/scale.py). While the daemon serves,
its connection does not checkpoint; this task runs PASSIVE checkpoints, which neither wait for
nor block readers and writers, every `interval`. Should the log still grow past
`restart_pages` with pages left uncopied (a writer that never pauses leaves no moment to
start the log over), one RESTART checkpoint waits for the current writer, at most
`RESTART_WAIT_MS`, so the next one starts the log from its beginning, and
`journal_size_limit` gives the disk back. A RESTART holds the writers back while it waits, so
one that cannot finish (a reader in another process keeps an old snapshot) is not tried
again for `RESTART_BACKOFF` passes.

Durability does not change: a transaction is durable once its COMMIT has fsynced the log
(`synchronous` = FULL); a checkpoint only moves committed pages into the main file, and the
pages still in the log at a crash are read back from it when the store next opens.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.5
# SQLite's own default threshold is 1,000 pages (4 MB); 25,000 pages (100 MB of 4 KiB pages)
# lets a burst write its pages once while bounding the log a reader may have to search.
RESTART_PAGES = 25_000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes a log file keeps after it starts over
AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, given back to the store's connection at stop
RESTART_WAIT_MS = 100  # a RESTART blocks new writers while it waits: keep it short
RESTART_BACKOFF = 20  # passes (10 s) without a RESTART after one that could not finish


class Checkpointer:
    """A task that checkpoints the log of the database at `path`, and the store connection
    that writes it, whose own checkpoints it turns off while it runs."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        *,
        interval: float = INTERVAL_SECONDS,
        restart_pages: int = RESTART_PAGES,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = path
        self.writer = writer
        self.interval = interval
        self.restart_pages = restart_pages
        self.busy_timeout = busy_timeout
        self.checkpoints = 0  # completed passes, for tests and the log
        self.restarts = 0
        self._restart_after = 0  # the pass from which a RESTART may be tried again
        self._db: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await self._db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            # FULL: the database file is fsynced before the log it was copied from is reused
            await self._db.execute("PRAGMA synchronous = FULL")
            await self.writer.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            await self.writer.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            await self._db.close()
            self._db = None
            raise
        self._task = asyncio.create_task(self._run(), name="checkpoint")

    async def stop(self) -> None:
        """Stop the task, and give the writer back its own checkpoints (closing the last
        connection checkpoints what is left)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.writer.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        except (ValueError, aiosqlite.Error):  # the store closed first: nothing to give back
            pass
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def checkpoint(self) -> tuple[int, int]:
        """One pass: PASSIVE, or RESTART once the log has grown past `restart_pages`.

        Returns the pages in the log and the pages copied to the database file."""
        assert self._db is not None, "start() first"
        _, pages, copied = await self._pragma("PRAGMA wal_checkpoint(PASSIVE)")
        # All copied: the next writer starts the log over by itself, no RESTART needed.
        if pages > self.restart_pages and copied < pages and self.checkpoints >= self._restart_after:
            await self._db.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            try:
                busy, pages, copied = await self._pragma("PRAGMA wal_checkpoint(RESTART)")
            finally:
                await self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if busy:
                self._restart_after = self.checkpoints + RESTART_BACKOFF
                log.warning("the log of %s has %d pages and cannot start over yet: a reader holds it", self.path, pages)
            else:
                self.restarts += 1
        self.checkpoints += 1
        return pages, copied

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.checkpoint()
            except aiosqlite.Error as error:  # the next pass tries again; the log only grows meanwhile
                log.warning("checkpoint of %s failed: %s", self.path, error)

    async def _pragma(self, sql: str) -> tuple[int, int, int]:
        assert self._db is not None
        async with self._db.execute(sql) as cursor:
            row: Any = await cursor.fetchone()
        return int(row[0]), int(row[1]), int(row[2])
