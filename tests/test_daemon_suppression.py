"""Per-list and global suppression through the real daemon, aiosmtpd and SQLite, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

from conftest import make_config, write_workspace
from mailer.clock import FakeClock
from mailer.daemon import Daemon
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.store import Suppression
from mailer.testing import CaptureServer

MONDAY_8AM = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def two_steps(letter: str, list_name: str) -> str:
    return f"""
name: scenario-{letter}
sender: default
entry:
  list: {list_name}
timezone: UTC
steps:
  - id: one
    wait: 0m
    subject: "{letter} one"
    template: one.html
  - id: two
    wait: 1d
    subject: "{letter} two"
    template: two.html
"""


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll (real time) until `condition()` comes true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_suppression_is_honoured_per_list_globally_and_at_the_last_moment(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """Suppressed for list A: scenario B still arrives, A never; global: nothing; suppressed while deferred: ends `suppressed`."""
    write_workspace(tmp_path, two_steps("A", "list-a"))
    (tmp_path / "scenarios" / "b.yaml").write_text(two_steps("B", "list-b"), encoding="utf-8")
    config = make_config(tmp_path, smtp_server.port)
    both, everywhere, mid, late = "both@example.com", "global@example.com", "mid@example.com", "late@example.com"
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads([Lead(email=e) for e in (both, everywhere, mid, late)], list_name="list-a", now=MONDAY_8AM)
        await store.upsert_leads([Lead(email=e) for e in (both, everywhere, mid)], list_name="list-b", now=MONDAY_8AM)
        await store.unsubscribe(message=None, email=both, list_name="list-a", everything=False, method="mailto", ip="", user_agent="", now=MONDAY_8AM)
        await store.add_suppressions([Suppression(everywhere, "complaint")], now=MONDAY_8AM)
        smtp_server.script(late, "RCPT", "451 4.3.0 Try again later")
        clock = FakeClock(MONDAY_8AM)
        daemon = Daemon(config=config, store=store, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        try:
            await smtp_server.wait_for(3)  # A one → mid; B one → both, mid; late deferred
            await wait_until(lambda: _counts_are(store, {"sent": 3, "deferred": 1}))

            # Suppressions landing after the messages and enrollments exist:
            await store.unsubscribe(message=None, email=mid, list_name="list-a", everything=False, method="one-click", ip="", user_agent="", now=clock.now())
            await store.unsubscribe(message=None, email=late, list_name="list-a", everything=False, method="one-click", ip="", user_agent="", now=clock.now())
            await clock.advance(minutes=25)  # past late's retry: claimed, then stopped by the last check
            await wait_until(lambda: _counts_are(store, {"sent": 3, "suppressed": 1}))

            await clock.advance(days=1)  # step two: B for both and mid, A for nobody
            await smtp_server.wait_for(5)
            await wait_until(lambda: _counts_are(store, {"sent": 5, "suppressed": 1}))
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

        received: dict[str, set[str]] = {}
        for item in smtp_server.messages:
            received.setdefault(item.rcpt_tos[0], set()).add(str(item.parsed()["Subject"]))
        assert received == {both: {"B one", "B two"}, mid: {"A one", "B one", "B two"}}
        assert [c for c in smtp_server.commands if c == ("RCPT", late)] == [("RCPT", late)], "tried once, never after"
        assert not [c for c in smtp_server.commands if c == ("RCPT", everywhere)]
        enrollments = await store.db.execute_fetchall(
            "SELECT l.email, e.scenario, e.state FROM enrollments e JOIN leads l ON l.id = e.lead_id ORDER BY 1, 2"
        )
        assert [tuple(r) for r in enrollments] == [
            (both, "scenario-B", "completed"),
            (late, "scenario-A", "exited"),
            (mid, "scenario-A", "exited"),
            (mid, "scenario-B", "completed"),
        ]
        [(state, detail)] = await store.db.execute_fetchall(
            "SELECT m.state, ev.data FROM messages m JOIN events ev ON ev.message_id = m.id AND ev.type = 'suppressed' "
            "JOIN leads l ON l.id = m.lead_id WHERE l.email = ?",
            (late,),
        )
        assert state == "suppressed" and "suppressed" in detail


async def _counts_are(store: SQLiteStore, expected: dict[str, int]) -> bool:
    return await store.message_counts() == expected
