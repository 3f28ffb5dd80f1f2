"""The tracking event queue: bounded, batched, and patient with a busy store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp

from mailer.eventqueue import EventQueue
from mailer.sqlitestore import SQLiteStore
from mailer.store import TrackingEvent
from test_tracking import CHROME, NOW, SENT, make_messages, serving


def opened(message: int) -> TrackingEvent:
    return TrackingEvent(at=NOW, type="opened", message=message, machine=False, data={})


def stored_opens(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT message_id FROM events WHERE type = 'opened' ORDER BY id")]


async def test_a_full_queue_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    """Past queue_size, the oldest waiting events go first, each one counted as dropped."""
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        messages = await make_messages(store, 5)
        queue = EventQueue(store, size=3, flush_seconds=60)
        for message in messages:
            queue.put(opened(message))
        assert len(queue) == 3 and queue.dropped == 2
        await queue.stop()
        assert stored_opens(store.path) == messages[2:]
        assert queue.written == 3 and len(queue) == 0


async def test_batches_are_written_in_order_of_arrival(tmp_path: Path) -> None:
    """More events than one batch are written over several batches, oldest first, none twice."""
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        messages = await make_messages(store, 7)
        queue = EventQueue(store, size=100, flush_seconds=60, batch_size=3)
        for message in messages:
            queue.put(opened(message))
        await queue.flush()
        assert stored_opens(store.path) == messages


async def test_a_locked_database_keeps_events_waiting_until_it_is_free(tmp_path: Path) -> None:
    """While another writer holds the database, a flush fails, keeps its events, and the next one writes them."""
    async with SQLiteStore(tmp_path / "mailer.db", busy_timeout=0.05) as store:
        messages = await make_messages(store, 2)
        queue = EventQueue(store, size=100, flush_seconds=60)
        queue.put(opened(messages[0]))
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
        await queue.flush()
        assert len(queue) == 1 and queue.written == 0
        queue.put(opened(messages[1]))
        other.execute("COMMIT")
        other.close()
        await queue.flush()
        assert stored_opens(store.path) == messages and len(queue) == 0


async def test_the_pixel_keeps_answering_while_the_database_is_locked(tmp_path: Path) -> None:
    """With the store locked by another writer, pixel requests are answered fast, and stored once it is free."""
    async with serving(tmp_path) as site:
        other = sqlite3.connect(site.store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        for message in site.messages:
            async with site.http.get(site.links.open_url(message, SENT), headers={"User-Agent": CHROME}) as response:
                assert response.status == 200
        answered_in = time.monotonic() - started
        assert answered_in < site.store.busy_timeout  # nobody waited for the lock
        await asyncio.sleep(0.2)  # the writer tries (and waits for the lock) meanwhile
        other.execute("COMMIT")
        other.close()
        await site.server.stop()
        assert sorted(stored_opens(site.store.path)) == sorted(site.messages)


async def test_healthz_shows_events_waiting_while_the_store_is_locked(tmp_path: Path) -> None:
    """/healthz reports the queue depth, so an operator sees events piling up."""
    async with serving(tmp_path, flush_seconds=3600) as site:
        for message in site.messages:
            async with site.http.get(site.links.open_url(message, SENT)):
                pass
        async with aiohttp.ClientSession() as plain, plain.get(f"{site.base}/healthz") as response:
            assert (await response.json())["queue"] == len(site.messages)
