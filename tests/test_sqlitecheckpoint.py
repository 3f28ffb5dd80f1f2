"""Background checkpoints on a real SQLite file: commits leave the log to the checkpointer."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import pytest

import mailer.sqlitecheckpoint
from mailer.sqlitecheckpoint import Checkpointer
from mailer.sqlitestore import SQLiteStore

PAGES = 3_000  # rows of 4,000 bytes: one page each, past SQLite's 1,000-page autocheckpoint


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "mailer.db") as opened:
        async with opened.transaction() as db:
            await db.execute("CREATE TABLE ballast (id INTEGER PRIMARY KEY, body BLOB)")
        await opened.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        yield opened


async def write_pages(store: SQLiteStore, rows: int = PAGES) -> None:
    async with store.transaction() as db:
        await db.executemany("INSERT INTO ballast (body) VALUES (zeroblob(4000))", [()] * rows)


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def wal(store: SQLiteStore) -> Path:
    return store.path.with_name(store.path.name + "-wal")


async def test_a_commit_without_the_checkpointer_copies_its_pages_itself(store: SQLiteStore) -> None:
    """Control: with SQLite's default, the commit that passes 1,000 pages writes them into the database file."""
    before = size(store.path)
    await write_pages(store)
    assert size(store.path) >= before + PAGES * 4000


async def test_while_running_commits_leave_their_pages_in_the_log_until_a_pass(store: SQLiteStore) -> None:
    """A commit no longer checkpoints; one pass of the checkpointer copies every page in the log."""
    checkpointer = Checkpointer(store.path, store.db, interval=3600)
    await checkpointer.start()
    try:
        before = size(store.path)
        await write_pages(store)
        assert size(store.path) == before
        assert size(wal(store)) >= PAGES * 4096
        pages, copied = await checkpointer.checkpoint()
        assert pages >= PAGES and copied == pages
        assert size(store.path) >= before + PAGES * 4000
        async with store.db.execute("SELECT count(*) FROM ballast") as cursor:
            assert await cursor.fetchone() == (PAGES,)
    finally:
        await checkpointer.stop()


async def test_passes_run_every_interval(store: SQLiteStore) -> None:
    """The task checkpoints by itself, every `interval`, without being asked."""
    checkpointer = Checkpointer(store.path, store.db, interval=0.05)
    await checkpointer.start()
    try:
        before = size(store.path)
        await write_pages(store)
        for _ in range(100):  # the pass copies the pages, then counts itself: wait for both
            if size(store.path) >= before + PAGES * 4000 and checkpointer.checkpoints >= 1:
                break
            await asyncio.sleep(0.05)
        assert size(store.path) >= before + PAGES * 4000
        assert checkpointer.checkpoints >= 1
    finally:
        await checkpointer.stop()


@asynccontextmanager
async def reader_snapshot(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """Another connection inside a read transaction: pages written after it began cannot be
    copied into the database file until it ends (what a report or a backup does)."""
    reader = await aiosqlite.connect(path, isolation_level=None)
    try:
        await reader.execute("BEGIN")
        async with reader.execute("SELECT count(*) FROM ballast") as cursor:
            await cursor.fetchall()
        yield reader
    finally:
        await reader.close()


async def test_a_log_past_restart_pages_starts_over_once_a_reader_lets_go(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `restart_pages` with pages a reader keeps uncopied, a RESTART waits for the reader and the next
    write starts the log from its beginning."""
    monkeypatch.setattr(mailer.sqlitecheckpoint, "RESTART_WAIT_MS", 10_000)
    checkpointer = Checkpointer(store.path, store.db, interval=3600, restart_pages=1_000)
    await checkpointer.start()
    try:
        async with reader_snapshot(store.path) as reader:
            await write_pages(store)
            passing = asyncio.create_task(checkpointer.checkpoint())
            await asyncio.sleep(0.2)
            assert not passing.done(), "the RESTART waits for the reader"
            await reader.execute("COMMIT")
            await asyncio.wait_for(passing, 10)
        assert checkpointer.restarts == 1
        await write_pages(store, rows=10)
        pages, _ = await checkpointer.checkpoint()
        assert pages < 100  # the 10 new rows and their b-tree pages, not 3,000 and more
    finally:
        await checkpointer.stop()


async def test_a_restart_a_reader_blocks_gives_up_soon_and_waits_before_trying_again(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RESTART that a reader blocks ends after RESTART_WAIT_MS (writers are held back only that long) and
    is not tried again for RESTART_BACKOFF passes; PASSIVE passes go on meanwhile."""
    monkeypatch.setattr(mailer.sqlitecheckpoint, "RESTART_WAIT_MS", 50)
    checkpointer = Checkpointer(store.path, store.db, interval=3600, restart_pages=1_000)
    await checkpointer.start()
    try:
        async with reader_snapshot(store.path):
            await write_pages(store)
            began = time.monotonic()
            pages, copied = await checkpointer.checkpoint()
            assert time.monotonic() - began < 5
            assert copied < pages and checkpointer.restarts == 0
            began = time.monotonic()
            for _ in range(mailer.sqlitecheckpoint.RESTART_BACKOFF - 1):
                await checkpointer.checkpoint()
            assert time.monotonic() - began < 0.04 * mailer.sqlitecheckpoint.RESTART_BACKOFF, "no RESTART waits"
        await checkpointer.checkpoint()  # the reader is gone: PASSIVE copies everything
        assert checkpointer.restarts == 0
    finally:
        await checkpointer.stop()


async def test_an_idle_log_is_not_restarted_again_and_again(store: SQLiteStore) -> None:
    """Once every page is copied, passes with nothing written take no RESTART: the next writer starts the log over."""
    checkpointer = Checkpointer(store.path, store.db, interval=3600, restart_pages=1_000)
    await checkpointer.start()
    try:
        await write_pages(store)
        for _ in range(4):
            pages, copied = await checkpointer.checkpoint()
            assert copied == pages
        assert checkpointer.restarts == 0
        await write_pages(store, rows=10)
        pages, _ = await checkpointer.checkpoint()
        assert pages < 100
    finally:
        await checkpointer.stop()


async def test_stop_gives_the_writer_its_own_checkpoints_back(store: SQLiteStore) -> None:
    """After stop, the writer's connection checkpoints in its commits again, and the task is gone."""
    checkpointer = Checkpointer(store.path, store.db, interval=0.01)
    await checkpointer.start()
    await checkpointer.stop()
    async with store.db.execute("PRAGMA wal_autocheckpoint") as cursor:
        assert await cursor.fetchone() == (1000,)
    passes = checkpointer.checkpoints
    before = size(store.path)
    await write_pages(store)
    assert size(store.path) >= before + PAGES * 4000
    await asyncio.sleep(0.05)
    assert checkpointer.checkpoints == passes


async def test_the_store_checkpoints_in_the_background_only_inside_checkpointing(store: SQLiteStore) -> None:
    """`SQLiteStore.checkpointing()`, which the daemon serves in, turns the commits' checkpoints off and back on."""

    async def autocheckpoint() -> int:
        async with store.db.execute("PRAGMA wal_autocheckpoint") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    assert await autocheckpoint() == 1000
    async with store.checkpointing():
        assert await autocheckpoint() == 0
    assert await autocheckpoint() == 1000


async def test_pages_left_in_the_log_at_a_crash_are_read_back(tmp_path: Path) -> None:
    """Committed rows still in the log when the process dies are there when the store opens again."""
    path = tmp_path / "mailer.db"
    script = f"""
import asyncio, os
from pathlib import Path
from mailer.sqlitecheckpoint import Checkpointer
from mailer.sqlitestore import SQLiteStore

async def main():
    store = SQLiteStore(Path({str(path)!r}))
    await store.open()
    checkpointer = Checkpointer(store.path, store.db, interval=3600)
    await checkpointer.start()
    async with store.transaction() as db:
        await db.execute("CREATE TABLE ballast (id INTEGER PRIMARY KEY, body BLOB)")
        await db.executemany("INSERT INTO ballast (body) VALUES (zeroblob(4000))", [()] * {PAGES})
    os._exit(0)  # no stop, no close: the pages are only in the log

asyncio.run(main())
"""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await process.wait() == 0
    assert size(path.with_name("mailer.db-wal")) >= PAGES * 4096
    async with SQLiteStore(path) as reopened:
        async with reopened.db.execute("SELECT count(*) FROM ballast") as cursor:
            assert await cursor.fetchone() == (PAGES,)
