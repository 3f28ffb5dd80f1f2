"""Tracking events on their way to the store: a bounded queue written in batches.

The pixel and click endpoints never wait for the database: they `put` the event here and
answer. A writer task takes what is waiting every `flush_seconds` (real time) and writes it
in batches of at most `batch_size`, one transaction each; `stop()` writes the rest. When the
store is slow or busy (another writer holds the lock, a disk stall), events wait here and
the endpoints keep answering at full speed. A batch the store refuses goes back to the front
of the queue and is tried again at the next flush.

How much a crash can lose: what is in the queue, at most `queue_size` events, typically
`flush_seconds × the event rate` (0.2 s at 1,000 opens per second: about 200 events). A clean
stop (SIGTERM, `mailer serve` shutting down) loses none. When the queue is full, because the
store has been unavailable for a long while, the oldest waiting events are dropped to make
room; each drop is counted (`dropped`, shown by /healthz) and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from mailer.store import Reclassification, Store, TrackingEvent

log = logging.getLogger("mailer.tracking")

Item = TrackingEvent | Reclassification


class EventQueue:
    def __init__(self, store: Store, *, size: int, flush_seconds: float, batch_size: int = 2000) -> None:
        if size < 1 or flush_seconds <= 0 or batch_size < 1:
            raise ValueError("size and batch_size must be at least 1, flush_seconds more than 0")
        self.store = store
        self.size = size
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.written = 0  # events stored
        self.dropped = 0  # events dropped because the queue was full
        self._items: deque[Item] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._dropped_logged = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> None:
        """Queue an event without waiting; when full, the oldest waiting one is dropped."""
        items = self._items
        if len(items) >= self.size:
            items.popleft()
            self.dropped += 1
        items.append(item)

    async def start(self) -> None:
        if self._writer is None:
            self._stopping.clear()
            self._writer = asyncio.create_task(self._write_periodically(), name="tracking-events")

    async def stop(self) -> None:
        """Stop the writer and write everything still waiting.

        The writer is asked to stop, never cancelled: a cancelled write could roll back a
        batch that had already left the queue.
        """
        if self._writer is not None:
            self._stopping.set()
            await self._writer
            self._writer = None
        await self.flush()
        if self._items:
            log.error("%d tracking events could not be written at shutdown", len(self._items))

    async def flush(self) -> None:
        """Write what is waiting now, batch by batch; a refused batch waits for the next flush."""
        async with self._flushing:
            self._report_drops()
            while self._items:
                batch = [self._items.popleft() for _ in range(min(self.batch_size, len(self._items)))]
                events = [item for item in batch if isinstance(item, TrackingEvent)]
                changes = [item for item in batch if isinstance(item, Reclassification)]
                try:
                    await self.store.record_tracking_events(events)
                except Exception:
                    log.exception("could not write %d tracking events; will try again", len(events))
                    self._requeue(batch)
                    return
                self.written += len(events)
                if changes:
                    # A reclassification names clicks queued before it: stored by now.
                    try:
                        await self.store.reclassify_tracking_events(changes)
                    except Exception:
                        log.exception("could not mark %d click bursts as machine; will try again", len(changes))
                        self._requeue(list(changes))
                        return

    def _requeue(self, batch: list[Item]) -> None:
        room = self.size - len(self._items)
        if room < len(batch):
            lost = len(batch) - max(room, 0)
            self.dropped += lost
            batch = batch[lost:]  # the oldest go, as in put()
        self._items.extendleft(reversed(batch))

    def _report_drops(self) -> None:
        if self.dropped > self._dropped_logged:
            log.warning(
                "tracking queue full: dropped %d events (%d in all); the store is too slow or unavailable",
                self.dropped - self._dropped_logged,
                self.dropped,
            )
            self._dropped_logged = self.dropped

    async def _write_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.flush_seconds)
            except asyncio.TimeoutError:
                pass
            await self.flush()
