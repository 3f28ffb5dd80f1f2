"""`mailer serve` as a process: SIGTERM in the middle of a batch loses nothing, restart resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

from conftest import ONE_STEP, SERVE_CONFIG, make_leads, write_workspace
from mailer.sqlitestore import SQLiteStore
from mailer.testing import CaptureServer



async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailer", "--config", str(config), "serve",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def workspace_for(root: Path, server: CaptureServer, *, leads: int) -> Path:
    """The config of a workspace sending to `server`, its `leads` imported to the scenario's list."""
    config = root / "mailer.toml"
    config.write_text(SERVE_CONFIG.format(port=server.port))
    async with SQLiteStore(root / "mailer.db") as store:
        await store.upsert_leads(make_leads(leads), list_name="signups", now=datetime.now(timezone.utc))
    return config


def states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall())


async def test_sigterm_mid_batch_loses_nothing_and_restart_finishes(tmp_path: Path) -> None:
    """SIGTERM finishes the transactions under way, leaves nothing in `sending`, exits 0; a restart sends the rest once."""
    write_workspace(tmp_path, ONE_STEP)
    async with CaptureServer() as server:
        server.data_delay = 0.15  # slow enough that the signal lands mid-batch
        config = await workspace_for(tmp_path, server, leads=50)
        daemon = await start_daemon(config)
        await server.wait_for(10, timeout=30)
        daemon.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(daemon.communicate(), 30)
        assert daemon.returncode == 0, output.decode()
        assert b"Traceback" not in output

        first_run = states(tmp_path / "mailer.db")
        assert "sending" not in first_run
        received = len(server.messages)
        assert 10 <= received < 50, "the signal landed mid-batch"
        assert first_run.get("sent") == received, "every accepted message is recorded as sent"
        assert first_run.get("sent", 0) + first_run.get("queued", 0) == 50, "nothing lost"

        daemon = await start_daemon(config)
        await server.wait_for(50, timeout=30)
        await asyncio.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(daemon.communicate(), 30)
        assert daemon.returncode == 0, output.decode()

    assert states(tmp_path / "mailer.db") == {"sent": 50}
    ids = [m.parsed()["Message-ID"] for m in server.messages]
    assert len(ids) == 50 and len(set(ids)) == 50, "no message was sent twice"


async def test_sigterm_sends_only_the_transactions_under_way(tmp_path: Path) -> None:
    """With a slow receiver, SIGTERM lets only the transactions already begun finish: messages built and
    waiting for a session are handed back to the queue, not sent during the drain."""
    write_workspace(tmp_path, ONE_STEP)
    async with CaptureServer() as server:
        server.data_delay = 1.0  # every transaction is slow: the workers' other messages wait for a session
        config = await workspace_for(tmp_path, server, leads=100)
        daemon = await start_daemon(config)
        await server.wait_for(4, timeout=30)
        await asyncio.sleep(0.5)  # the workers have claimed and built more than the sessions can carry
        at_signal = len(server.messages)
        daemon.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(daemon.communicate(), 30)
        assert daemon.returncode == 0, output.decode()

    after_signal = len(server.messages) - at_signal
    # [delivery] concurrency = 4 sessions, and as many slow attempts detached from their workers
    assert after_signal <= 2 * 4, f"{after_signal} messages sent after SIGTERM"
    final = states(tmp_path / "mailer.db")
    assert "sending" not in final and final.get("sent") == len(server.messages)
    assert final.get("sent", 0) + final.get("queued", 0) == 100, final


async def test_a_second_daemon_on_the_same_store_is_refused(tmp_path: Path) -> None:
    """Two `mailer serve` on one database would send twice: the second exits 2 naming the first."""
    write_workspace(tmp_path, ONE_STEP)
    async with CaptureServer() as server:
        config = tmp_path / "mailer.toml"
        config.write_text(SERVE_CONFIG.format(port=server.port))
        first = await start_daemon(config)
        await asyncio.sleep(1.5)
        second = await start_daemon(config)
        output, _ = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 2
        assert b"in use by another `mailer serve`" in output and b"Traceback" not in output
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.communicate(), 30)
        assert first.returncode == 0
