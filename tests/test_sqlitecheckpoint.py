"""Background checkpoints on a real SQLite file: commits leave the log to the checkpointer."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
        for _ in range(100):
            if size(store.path) >= before + PAGES * 4000:
                break
            await asyncio.sleep(0.05)
        assert size(store.path) >= before + PAGES * 4000
        assert checkpointer.checkpoints >= 1
    finally:
        await checkpointer.stop()


async def test_a_log_past_restart_pages_starts_over(store: SQLiteStore) -> None:
    """Past `restart_pages` a RESTART pass follows, so the next write starts the log from its beginning."""
    checkpointer = Checkpointer(store.path, store.db, interval=3600, restart_pages=1_000)
    await checkpointer.start()
    try:
        await write_pages(store)
        await checkpointer.checkpoint()
        assert checkpointer.restarts == 1
        await write_pages(store, rows=10)
        pages, _ = await checkpointer.checkpoint()
        assert pages < 100  # the 10 new rows and their b-tree pages, not 3,000 and more
        assert checkpointer.restarts == 1
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
