"""Tracking, unsubscribe and double opt-in through a running daemon: real SMTP, HTTP and SQLite."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from conftest import make_config, write_workspace
from mailer.clock import FakeClock
from mailer.config import Config
from mailer.daemon import Daemon
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.testing import CaptureServer

MONDAY = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
BASE = "https://t.acme.example"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
ONE_STEP = """
name: news
sender: default
entry:
  list: news
timezone: UTC
steps:
  - id: hello
    wait: 0m
    subject: "Hello {{ lead.first_name }}"
    template: hello.html
"""
HELLO = """<html><body><p>Hi {{ lead.first_name }}</p>
<a href="https://acme.example/pricing?who={{ lead.first_name }}" data-tag="pricing">Pricing</a>
<a href="https://acme.example/blog">Blog</a>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>"""


def workspace(root: Path, port: int, **sections: dict[str, object]) -> Config:
    write_workspace(root, ONE_STEP)
    (root / "templates" / "hello.html").write_text(HELLO, encoding="utf-8")
    return make_config(root, port, **sections)


@asynccontextmanager
async def running(config: Config, store: SQLiteStore, clock: FakeClock) -> AsyncIterator[Daemon]:
    daemon = Daemon(config=config, store=store, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.serve(stop))
    try:
        while daemon.tracker is None or daemon.tracker.port == 0:
            await asyncio.sleep(0.01)
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def local(url: str, daemon: Daemon) -> str:
    """A link from a message, pointed at the daemon's loopback port instead of the public base."""
    assert daemon.tracker is not None
    return url.replace(BASE, f"http://127.0.0.1:{daemon.tracker.port}")


def links_of(html: str) -> list[str]:
    return [href.replace("&amp;", "&") for href in re.findall(r'href="([^"]+)"', html)]


async def events(store: SQLiteStore) -> list[tuple[str, int, str]]:
    rows = await store._fetchall("SELECT type, machine, data FROM events WHERE type IN ('opened', 'clicked', 'unsubscribed') ORDER BY id")
    return [(r[0], r[1], r[2]) for r in rows]


async def test_pixel_and_click_count_as_human_and_scanner_traffic_as_machine(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """A person's open and click record one human event each; a HEAD and a forged link record nothing human."""
    config = workspace(tmp_path, smtp_server.port)
    clock = FakeClock(MONDAY)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads([Lead(email="ann@example.com", first_name="Ann")], list_name="news", now=MONDAY)
        async with running(config, store, clock) as daemon, aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
            [received] = await smtp_server.wait_for(1)
            html = received.parsed().get_body(("html",)).get_content()  # type: ignore[union-attr]
            hrefs = links_of(html)
            pixel = re.search(r'<img src="([^"]+/o/[^"]+)"', html)
            assert pixel is not None
            clicks = [h for h in hrefs if "/c/" in h and "?u=" in h]
            assert len(clicks) == 2 and all(h.startswith(BASE) for h in clicks)
            await clock.advance(minutes=30)  # a person reads it later; scanners come at once

            async with http.get(local(pixel.group(1), daemon)) as response:
                assert response.status == 200 and response.content_type == "image/gif"
            async with http.get(local(clicks[0], daemon), allow_redirects=False) as response:
                assert response.status == 302
                assert response.headers["Location"] == "https://acme.example/pricing?who=Ann"
            async with http.head(local(clicks[0], daemon), allow_redirects=False) as response:
                pass  # a scanner's HEAD: stored as machine (a second link this soon would make both a burst)
            forged = local(clicks[0], daemon).replace("pricing%3Fwho%3DAnn", "evil.example")
            async with http.get(forged, allow_redirects=False) as response:
                assert response.status == 404 and "Location" not in response.headers
        stored = await events(store)
    human = [(kind, data) for kind, machine, data in stored if not machine]
    assert [kind for kind, _ in human] == ["opened", "clicked"]
    assert '"tag": "pricing"' in human[1][1] or '"tag":"pricing"' in human[1][1]
    assert [(kind, machine) for kind, machine, _ in stored if machine] == [("clicked", 1)]


async def test_one_click_unsubscribe_suppresses_before_the_response_and_a_get_does_not(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """RFC 8058: the List-Unsubscribe URL's POST suppresses at once; a GET of it only shows the page."""
    config = workspace(tmp_path, smtp_server.port)
    clock = FakeClock(MONDAY)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads([Lead(email="bo@example.com", first_name="Bo")], list_name="news", now=MONDAY)
        async with running(config, store, clock) as daemon, aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
            [received] = await smtp_server.wait_for(1)
            message = received.parsed()
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            url = re.search(r"<(https://[^>]+/u/[^>]+)>", str(message["List-Unsubscribe"]))
            assert url is not None
            async with http.get(local(url.group(1), daemon)) as response:
                assert response.status == 200 and "unsubscribe" in (await response.text()).lower()
            assert await store.suppressions_of("bo@example.com") == []
            async with http.post(local(url.group(1), daemon), data={"List-Unsubscribe": "One-Click"}) as response:
                assert response.status == 200
                assert [s[:2] for s in await store.suppressions_of("bo@example.com")] == [("news", "unsubscribe")]


async def test_double_opt_in_from_form_to_first_scenario_email(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """Subscribe on the form, get the confirmation email, follow its link: confirmed, and the scenario's first email arrives."""
    config = workspace(tmp_path, smtp_server.port, lists={"news": {"title": "Acme News", "double_opt_in": True}})
    clock = FakeClock(MONDAY)
    async with SQLiteStore(config.store) as store:
        async with running(config, store, clock) as daemon, aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
            assert daemon.tracker is not None
            form = {"email": "cy@example.com", "first_name": "Cy", "list": "news", "source": "webinar-page", "consent": "Send me Acme News"}
            async with http.post(f"http://127.0.0.1:{daemon.tracker.port}/subscribe", data=form) as response:
                assert response.status == 200
            [confirmation] = await smtp_server.wait_for(1)
            assert confirmation.rcpt_tos == ("cy@example.com",)
            text = confirmation.parsed().get_body(("plain",)).get_content()  # type: ignore[union-attr]
            link = re.search(rf"{re.escape(BASE)}/confirm/\w+", text)
            assert link is not None
            await clock.advance(minutes=10)
            assert len(smtp_server.messages) == 1  # pending leads are not mailed
            async with http.get(local(link.group(0), daemon)) as response:
                assert response.status == 200
            await clock.advance(minutes=10)  # the next entry pass enrolls the confirmed lead
            messages = await smtp_server.wait_for(2)
            assert messages[1].parsed()["Subject"] == "Hello Cy"
        consents = await store._fetchall("SELECT action, method, ip, text FROM consents WHERE email = 'cy@example.com' ORDER BY rowid")
    assert [row[0] for row in consents] == ["pending", "confirmed"]
    assert consents[0][2] == "127.0.0.1" and consents[0][3] == "Send me Acme News"


async def test_the_mailto_unsubscribe_reaches_the_listener_and_suppresses(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """Mail to the List-Unsubscribe mailto address unsubscribes the recipient from the message's list."""
    import aiosmtplib

    config = workspace(tmp_path, smtp_server.port, bounces={"domain": "bounce.acme.example", "listen": "127.0.0.1:0"})
    clock = FakeClock(MONDAY)
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads([Lead(email="di@example.com", first_name="Di")], list_name="news", now=MONDAY)
        async with running(config, store, clock) as daemon:
            [received] = await smtp_server.wait_for(1)
            mailto = re.search(r"<mailto:([^?>]+)", str(received.parsed()["List-Unsubscribe"]))
            assert mailto is not None and mailto.group(1).startswith("unsubscribe+")
            assert daemon.listener is not None
            note = b"From: di@example.com\r\nTo: x\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n"
            await aiosmtplib.send(note, sender="di@example.com", recipients=[mailto.group(1)], hostname="127.0.0.1", port=daemon.listener.port)
            forged = mailto.group(1).replace("unsubscribe+", "unsubscribe+aa")
            await aiosmtplib.send(note, sender="x@example.com", recipients=[forged], hostname="127.0.0.1", port=daemon.listener.port)
            assert [s[:2] for s in await store.suppressions_of("di@example.com")] == [("news", "unsubscribe")]
            methods = await store._fetchall("SELECT method FROM consents WHERE email = 'di@example.com' ORDER BY rowid")
            assert methods == [("import",), ("mailto",)]  # the import's consent, then the mailto unsubscribe
