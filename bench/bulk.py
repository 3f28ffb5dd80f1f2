"""Shared set-up of the end-to-end benchmarks: a workspace, and leads enrolled in bulk.

The schema is the real one: `SQLiteStore.open` creates it by its migrations; only the rows
are written here, with `executemany` in a few large transactions, because enrolling a
million leads through `upsert_leads` and the daemon's entry rule would measure the importer,
not the scheduler or the sender. The rows are the ones those paths write: a lead, a
confirmed list membership, an active enrollment at step 0 with its `due_at`, and the
'entered' event. No ANALYZE: the store never runs one, so the planner sees what it sees in use.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from mailer.dkim import generate_rsa_key
from mailer.examples_data import examples
from mailer.sqlitestore import SQLiteStore
from mailer.timestamps import ms

SCENARIO = "bench"
LIST = "bench"
FROM = "Northwind Analytics <hello@northwind.example>"
DKIM_DOMAIN = "northwind.example"
DKIM_SELECTOR = "bench"
# The shipped welcome step, sent at once on any day: one step, no send window to wait for.
SCENARIO_YAML = """\
name: bench
sender: default
entry:
  list: bench
timezone: UTC
steps:
  - id: welcome
    wait: 0m
    subject: >-
      {% if lead.language | default('en') == 'ja' %}【Northwind】{{ lead.last_name }}様、トライアルへようこそ{% else %}Welcome to Northwind, {{ lead.first_name or "there" }}{% endif %}
    template: welcome.html
    text_template: welcome.txt
"""
FIRST = ["太郎", "花子", "Alice", "Bob", "Zoë", "María", "Łukasz", "健", "Chloé", "Ngozi"]
LAST = ["山田", "鈴木", "Nguyen", "O'Hara", "Müller", "García", "Kowalski", "佐藤", "Dubois", "Okafor"]
CHUNK = 50_000  # rows per executemany: large enough to be fast, small enough to stay lean


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now, and none this run handed out before:
    the kernel may give a port just closed again, and the sink, the tracking server and the
    bounce listener must not be told the same one."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def write_workspace(root: Path, *, sink_port: int, concurrency: int, dkim: bool = True) -> Path:
    """A production-like workspace: relay to the sink, tracking, VERP bounces, DKIM; returns
    its mailer.toml."""
    (root / "scenarios").mkdir(parents=True, exist_ok=True)
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "scenarios" / "bench.yaml").write_text(SCENARIO_YAML, encoding="utf-8")
    for name in ("layout.html", "welcome.html", "welcome.txt"):
        shutil.copyfile(examples().templates / name, root / "templates" / name)
    (root / "mailer.key").write_text("bench-secret-key-" * 4 + "\n", encoding="utf-8")
    (root / "mailer.key").chmod(0o600)  # as `mailer init` writes it
    dkim_section = ""
    if dkim:
        generate_rsa_key(root / "dkim.pem")
        dkim_section = f'[dkim]\nselector = "{DKIM_SELECTOR}"\nprivate_key_file = "dkim.pem"\ndomain = "{DKIM_DOMAIN}"\n'
    config = root / "mailer.toml"
    config.write_text(
        f"""\
store = "mailer.db"
scenarios = "scenarios"
templates = "templates"
secret_key_file = "mailer.key"

[relay]
host = "127.0.0.1"
port = {sink_port}
tls = "none"
helo = "bench.northwind.example"

[identities.default]
from = "{FROM}"

[delivery]
concurrency = {concurrency}

[timeouts]
connect = 30
mail = 30
rcpt = 30
data = 60

[bounces]
domain = "bounce.northwind.example"
listen = "127.0.0.1:{free_port()}"

[tracking]
listen = "127.0.0.1:{free_port()}"
base_url = "https://t.northwind.example"

{dkim_section}""",
        encoding="utf-8",
    )
    return config


def create_schema(path: Path) -> None:
    """The store's real schema, made by its own migrations."""

    async def run() -> None:
        async with SQLiteStore(path):
            pass

    asyncio.run(run())


def _lead_row(number: int, stamp: int) -> tuple[object, ...]:
    first = f"{FIRST[number % len(FIRST)]}{number}"
    attributes = {"language": "ja" if number % 3 == 0 else "en", "plan": "trial"}
    return (
        number, f"lead{number}@example{number % 97}.com", first, LAST[number % len(LAST)],
        f"Company {number} & Co", "", None, "bench", json.dumps(attributes, ensure_ascii=False), stamp, stamp,
    )


def _chunks(rows: Iterator[tuple[object, ...]]) -> Iterator[list[tuple[object, ...]]]:
    chunk: list[tuple[object, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def enroll_in_bulk(path: Path, *, count: int, due_at: Callable[[int], datetime], now: datetime) -> None:
    """`count` leads (ids 1..count) in the list, each enrolled at step 0, due at `due_at(id)`.

    Written straight into the store's tables: one transaction per table, rows made lazily,
    so a million leads load in seconds and in little memory.
    """
    stamp = ms(now)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")  # set-up only: the daemon reopens it FULL
        db.execute("BEGIN")
        db.execute("INSERT INTO lists (id, name, created_at) VALUES (1, ?, ?)", (LIST, stamp))
        ids = range(1, count + 1)
        for chunk in _chunks(_lead_row(n, stamp) for n in ids):
            db.executemany(
                "INSERT INTO leads (id, email, first_name, last_name, company, job_title, timezone, source,"
                " attributes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                chunk,
            )
        for chunk in _chunks((1, n, stamp) for n in ids):
            db.executemany("INSERT INTO list_members (list_id, lead_id, added_at) VALUES (?, ?, ?)", chunk)
        for chunk in _chunks((n, SCENARIO, n, ms(due_at(n)), stamp, stamp) for n in ids):
            db.executemany(
                "INSERT INTO enrollments (id, scenario, lead_id, cycle, state, step_index, due_at, entered_at,"
                " updated_at) VALUES (?, ?, ?, 1, 'active', 0, ?, ?, ?)",
                chunk,
            )
        for chunk in _chunks((stamp, n, SCENARIO) for n in ids):  # as `enroll` logs each entry
            db.executemany(
                "INSERT INTO events (at, type, lead_id, scenario, data) VALUES (?, 'entered', ?, ?, '{\"cycle\": 1}')",
                chunk,
            )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def time_calls(store: SQLiteStore, names: tuple[str, ...]) -> dict[str, float]:
    """Add up the seconds spent in these store methods from now on (a wrapper on the instance;
    the calls themselves are unchanged)."""
    spent = dict.fromkeys(names, 0.0)
    for name in names:
        method = getattr(store, name)

        async def timed(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await _method(*args, **kwargs)
            finally:
                spent[_name] += time.perf_counter() - start

        setattr(store, name, timed)
    return spent
