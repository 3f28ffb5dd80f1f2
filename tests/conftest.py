"""Shared fixtures: a workspace with scenario files and templates, a capture SMTP server."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from mailer.config import Config, parse_config
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.testing import CaptureServer

# Machines here are shared and noisy: property tests judge correctness, not speed.
settings.register_profile("mailer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mailer")

LAYOUT = """<!DOCTYPE html>
<html><head><style>
  p { color: #333333; }
  .cta { background-color: #2f6fed; color: #ffffff; }
</style></head>
<body>{% block content %}{% endblock %}</body></html>
"""

STEP = """{% extends "layout.html" %}
{% block content %}<p>Hello {{ lead.first_name }} from {{ lead.company }}, this is STEPNAME.</p>
<p><a class="cta" href="https://example.com/STEPNAME?who={{ lead.email | urlencode }}">Go</a></p>{% endblock %}
"""

THREE_STEPS = """
name: three-steps
sender: default
entry:
  list: signups
timezone: UTC
send_window:
  days: weekdays
  hours: "09:00-17:00"
steps:
  - id: one
    wait: 0m
    subject: "One for {{ lead.first_name }}"
    template: one.html
  - id: two
    wait: 2d
    subject: "Two for {{ lead.first_name }}"
    template: two.html
  - id: three
    wait: 3d
    subject: "Three for {{ lead.first_name }}"
    template: three.html
"""


ONE_STEP = """
name: announce
sender: default
entry:
  list: signups
steps:
  - id: only
    wait: 0m
    subject: "News for {{ lead.first_name }}"
    template: one.html
"""

# mailer.toml for tests that run `mailer serve` as a process; {port} is the relay's.
SERVE_CONFIG = """
[relay]
host = "127.0.0.1"
port = {port}

[identities.default]
from = "Acme <news@acme.example>"

[delivery]
concurrency = 4

[timeouts]
connect = 5
mail = 5
rcpt = 5
data = 5

[tracking]
listen = "127.0.0.1:0"  # any free port: tests run side by side
base_url = "https://t.acme.example"

[api]
listen = "127.0.0.1:0"
"""


def write_workspace(root: Path, scenario: str = THREE_STEPS) -> None:
    (root / "scenarios").mkdir(parents=True, exist_ok=True)
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "scenarios" / "main.yaml").write_text(scenario, encoding="utf-8")
    (root / "templates" / "layout.html").write_text(LAYOUT, encoding="utf-8")
    for name in ("one", "two", "three"):
        (root / "templates" / f"{name}.html").write_text(STEP.replace("STEPNAME", name), encoding="utf-8")
    # The daemon signs every message's links (pixel, clicks, unsubscribe) with the workspace key.
    if not (root / "mailer.key").exists():
        (root / "mailer.key").write_text("k" * 48 + "\n")
        (root / "mailer.key").chmod(0o600)  # as `mailer init` writes it: no permission warning


def make_config(root: Path, port: int, **sections: dict[str, object]) -> Config:
    raw: dict[str, object] = {
        "relay": {"host": "127.0.0.1", "port": port, "tls": "none"},
        "identities": {"default": {"from": "Acme Marketing <news@acme.example>", "return_path": "bounces@acme.example"}},
        "timeouts": {"connect": 5, "mail": 5, "rcpt": 5, "data": 5},
        "delivery": {"concurrency": 4},
        # The tracking server binds an ephemeral port, so tests can run side by side.
        "tracking": {"listen": "127.0.0.1:0", "base_url": "https://t.acme.example"},
        "api": {"listen": "127.0.0.1:0"},
    }
    raw.update(sections)
    return parse_config(raw, path=root / "mailer.toml")


def make_leads(count: int) -> list[Lead]:
    names = [("太郎", "山田"), ("Alice", "Nguyen"), ("Zoë", "Müller"), ("Bob", "O'Hara")]
    leads = []
    for number in range(count):
        first, last = names[number % len(names)]
        leads.append(
            Lead(
                email=f"lead{number:03d}@example.com",
                first_name=f"{first}{number}",
                last_name=last,
                company=f"Company {number}",
            )
        )
    return leads


@pytest.fixture
async def smtp_server(tmp_path: Path) -> AsyncIterator[CaptureServer]:
    async with CaptureServer(save_to=tmp_path / "inbox") as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A real SQLite store in a file of the test's own."""
    async with SQLiteStore(tmp_path / "mailer.db") as opened:
        yield opened


def rows(store: SQLiteStore, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read (or write) committed data through a second, independent connection to the same file."""
    with sqlite3.connect(store.path) as db:
        return list(db.execute(sql, params))


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another program is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@contextmanager
def http_hook(answer: Callable[[int], web.Response]) -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP receiver on loopback, in a thread of its own (the commands under test run
    their own event loops): POST /hook keeps each body and answers `answer(n)` to the nth."""
    bodies: list[bytes] = []
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def hook(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return answer(len(bodies))

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        state["port"], state["stop"] = runner.addresses[0][1], asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}/hook", bodies
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        loop.close()


# The modules that measure the breaker's patience itself, on the real value.
REAL_PATIENCE = {"test_outbound", "test_breaker", "test_destinations"}


@pytest.fixture(autouse=True)
def patient_first_contact(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Followers of a first attempt wait for its reply instead of being held after 0.1 s.

    Held, they come back BEHIND_PROBE (5 s) later on the daemon's clock; on a FakeClock that
    nobody advances, never. A GC pause or a busy machine can make a loopback reply take
    0.1 s, and a test waiting for its messages then timed out (CI: test_scoring_world, 'stuck
    at 2959' in B1). Tests about the patience itself keep the real value.
    """
    if request.module.__name__.rsplit(".", 1)[-1] not in REAL_PATIENCE:
        monkeypatch.setattr("mailer.outbound.PATIENCE_SECONDS", 10.0)
