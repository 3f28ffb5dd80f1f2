"""The tracking server over real HTTP (aiohttp client) against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from conftest import make_config
from mailer.clock import FakeClock
from mailer.errors import ConfigError
from mailer.leads import Lead
from mailer.links import Links
from mailer.sqlitestore import SQLiteStore
from mailer.store import EnrollmentUpdate, NewMessage
from mailer.tokens import Signer
from mailer.tracking import GIF, TrackingServer

SENT = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
NOW = SENT + timedelta(days=1)  # the clock when recipients act: a day after sending
OLD_KEY, NEW_KEY, FOREIGN_KEY = b"o" * 40, b"n" * 40, b"f" * 40
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
DESTINATION = "https://acme.example/pricing?plan=pro&seats=10#compare"


@dataclass
class Site:
    server: TrackingServer
    store: SQLiteStore
    clock: FakeClock
    links: Links  # makes links the way the renderer does, with the current key
    http: aiohttp.ClientSession
    messages: list[int]  # messages.id of lead0…lead2's "welcome" message

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def signed_with(self, *keys: bytes) -> Links:
        return Links(Signer(list(keys)), self.base)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Committed data, read through a second connection."""
        with sqlite3.connect(self.store.path) as db:
            return list(db.execute(sql, params))

    async def tracking_events(self) -> list[dict[str, Any]]:
        """Every stored open and click, after writing what the queue holds."""
        await self.server.queue.flush()
        rows = self.rows(
            "SELECT type, message_id, lead_id, scenario, step_id, machine, data FROM events "
            "WHERE type IN ('opened', 'clicked') ORDER BY id"
        )
        keys = ("type", "message", "lead", "scenario", "step", "machine", "data")
        return [dict(zip(keys, row[:6] + (json.loads(row[6]),))) for row in rows]


async def make_messages(store: SQLiteStore, count: int) -> list[int]:
    """Real message rows, created the way the planner does: leads, enrollments, queued messages."""
    emails = [f"lead{n}@example.com" for n in range(count)]
    await store.upsert_leads([Lead(email=e) for e in emails], list_name=None, now=SENT)
    leads = [(await store.get_lead(e)) for e in emails]
    lead_ids = [lead.id for lead in leads if lead is not None and lead.id is not None]
    await store.enroll(scenario="nurture", lead_ids=lead_ids, due_at=SENT, now=SENT)
    with sqlite3.connect(store.path) as db:
        enrollment = dict(db.execute("SELECT lead_id, id FROM enrollments"))
    await store.apply_updates(
        [
            EnrollmentUpdate(
                enrollment_id=enrollment[lead_id], lead_id=lead_id, scenario="nurture", step_index=1, state="active",
                due_at=SENT + timedelta(days=2), event="queued",
                message=NewMessage(message_id=f"<{lead_id}.welcome@acme.example>", step_id="welcome", not_before=SENT),
            )
            for lead_id in lead_ids
        ],
        now=SENT,
    )
    with sqlite3.connect(store.path) as db:
        by_lead = dict(db.execute("SELECT lead_id, id FROM messages"))
    return [by_lead[lead_id] for lead_id in lead_ids]


@asynccontextmanager
async def serving(tmp_path: Path, **tracking: Any) -> AsyncIterator[Site]:
    settings = {"listen": "127.0.0.1:0", "flush_seconds": 0.05, "subscribe_per_hour": 5, **tracking}
    config = make_config(
        tmp_path, 2525, tracking=settings,
        lists={
            "news": {"title": "Acme <News> & Co", "double_opt_in": True},
            "events": {"title": "Acme events", "double_opt_in": False},
        },
    )
    clock = FakeClock(NOW)
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        messages = await make_messages(store, 3)
        reader = Links(Signer([NEW_KEY, OLD_KEY]), config.tracking.public_base)
        server = TrackingServer(config=config, store=store, links=reader, clock=clock)
        await server.start()
        try:
            async with aiohttp.ClientSession(headers={"User-Agent": CHROME}) as http:
                yield Site(server, store, clock, Links(Signer([NEW_KEY]), f"http://127.0.0.1:{server.port}"), http, messages)
        finally:
            await server.stop()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with serving(tmp_path) as opened:
        yield opened


def tampered(url: str) -> str:
    """The same link with one character of its token changed."""
    parts = urlsplit(url)
    head, token = parts.path.rsplit("/", 1)
    swapped = token[:5] + ("a" if token[5] != "a" else "b") + token[6:]
    return url.replace(f"{head}/{token}", f"{head}/{swapped}")


# Opens and clicks


async def test_the_pixel_records_one_human_open(site: Site) -> None:
    """A browser fetching the pixel a day after sending gets the GIF and stores one human open."""
    async with site.http.get(site.links.open_url(site.messages[0], SENT)) as response:
        assert response.status == 200 and await response.read() == GIF
        assert response.headers["Content-Type"] == "image/gif"
        assert response.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, private"
        assert response.headers["Pragma"] == "no-cache" and response.headers["Expires"] == "0"
    [event] = await site.tracking_events()
    assert (event["type"], event["message"], event["scenario"], event["step"], event["machine"]) == (
        "opened", site.messages[0], "nurture", "welcome", 0
    )
    assert event["lead"] == site.rows("SELECT lead_id FROM messages WHERE id = ?", (site.messages[0],))[0][0]
    assert event["data"]["ip"] == "127.0.0.1" and event["data"]["user_agent"] == CHROME


async def test_a_click_redirects_to_exactly_the_signed_url_and_records_one_human_click(site: Site) -> None:
    """A genuine click answers 302 to the signed URL, byte for byte, and stores one human click."""
    link = site.links.click_url(site.messages[1], SENT, url=DESTINATION, link=2, tag="pricing")
    async with site.http.get(link, allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == DESTINATION
    [event] = await site.tracking_events()
    assert (event["type"], event["message"], event["machine"]) == ("clicked", site.messages[1], 0)
    assert {k: event["data"][k] for k in ("url", "tag", "link")} == {"url": DESTINATION, "tag": "pricing", "link": 2}


async def test_a_non_ascii_destination_is_sent_percent_encoded(site: Site) -> None:
    """A signed URL with non-ASCII characters redirects to its percent-encoded form (RFC 3987 3.1)."""
    link = site.links.click_url(site.messages[0], SENT, url="https://acme.example/価格?q=a b", link=1)
    async with site.http.get(link, allow_redirects=False) as response:
        assert response.headers["Location"] == "https://acme.example/%E4%BE%A1%E6%A0%BC?q=a%20b"


async def test_bad_click_tokens_record_nothing_and_never_redirect(site: Site) -> None:
    """Tampered, foreign-key, URL-swapped, truncated, URL-less and non-web click links get 404 and no Location."""
    genuine = site.links.click_url(site.messages[0], SENT, url=DESTINATION, link=1)
    path, query = genuine.split("?", 1)
    foreign = site.signed_with(FOREIGN_KEY).click_url(site.messages[0], SENT, url=DESTINATION, link=1)
    script = site.links.click_url(site.messages[0], SENT, url="javascript:alert(1)", link=1)
    for bad in (
        tampered(genuine),
        foreign,
        f"{path}?u=https%3A%2F%2Fevil.example%2F",
        f"{path[:-4]}?{query}",
        path,  # a click token is no honeypot token
        script,
    ):
        async with site.http.get(bad, allow_redirects=False) as response:
            assert response.status == 404, bad
            assert "Location" not in response.headers
    assert await site.tracking_events() == []


async def test_a_bad_pixel_token_still_gets_the_gif_and_records_nothing(site: Site) -> None:
    """A tampered or foreign pixel token answers the GIF (no broken image) and stores nothing."""
    for bad in (
        tampered(site.links.open_url(site.messages[0], SENT)),
        site.signed_with(FOREIGN_KEY).open_url(site.messages[0], SENT),
        f"{site.base}/o/zz",
    ):
        async with site.http.get(bad) as response:
            assert response.status == 200 and await response.read() == GIF
    assert await site.tracking_events() == []


async def test_links_signed_with_a_rotated_out_key_still_work(site: Site) -> None:
    """After rotation (Signer([new, old])) the pixel and links sent under the old key still count."""
    old = site.signed_with(OLD_KEY)
    async with site.http.get(old.open_url(site.messages[0], SENT)):
        pass
    async with site.http.get(old.click_url(site.messages[0], SENT, url=DESTINATION, link=1), allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == DESTINATION
    assert [(e["type"], e["machine"]) for e in await site.tracking_events()] == [("opened", 0), ("clicked", 0)]


async def test_an_event_for_a_message_that_does_not_exist_is_skipped(site: Site) -> None:
    """A genuine token naming no stored message is answered but stores nothing."""
    async with site.http.get(site.links.open_url(999_999, SENT)) as response:
        assert response.status == 200
    assert await site.tracking_events() == []
    assert site.server.queue.written == 1  # it was written; the INSERT … SELECT found no message


async def test_head_and_instant_clicks_are_machine_and_count_for_nothing(site: Site) -> None:
    """A HEAD pixel, a HEAD click and a click seconds after sending are stored as machine and do not engage."""
    message = site.messages[0]
    async with site.http.head(site.links.open_url(message, SENT)) as response:
        assert response.status == 200
    async with site.http.head(site.links.click_url(message, SENT, url=DESTINATION, link=1), allow_redirects=False):
        pass
    just_sent = site.clock.now() - timedelta(seconds=2)
    async with site.http.get(site.links.click_url(message, just_sent, url=DESTINATION, link=1), allow_redirects=False) as response:
        assert response.status == 302  # the scanner still gets where it was going
    events = await site.tracking_events()
    assert [(e["type"], e["machine"], e["data"]["reason"]) for e in events] == [
        ("opened", 1, "head"), ("clicked", 1, "head"), ("clicked", 1, "too-soon"),
    ]
    enrollment = site.rows("SELECT enrollment_id FROM messages WHERE id = ?", (message,))[0][0]
    engagement = (await site.store.engagement([enrollment]))[enrollment]
    assert not engagement.opened and not engagement.clicked
    assert site.rows("SELECT count(*) FROM suppressions") == [(0,)]


async def test_every_link_of_a_message_at_once_is_a_machine_burst(site: Site) -> None:
    """Two different links of one message clicked together: both stored as machine, the first reclassified."""
    message = site.messages[2]
    for number in (1, 2):
        url = f"https://acme.example/{number}"
        async with site.http.get(site.links.click_url(message, SENT, url=url, link=number), allow_redirects=False):
            pass
    events = await site.tracking_events()
    assert [(e["machine"], e["data"]["reason"], e["data"]["link"]) for e in events] == [
        (1, "all-links", 1), (1, "all-links", 2)
    ]


async def test_the_honeypot_answers_a_page_and_records_a_machine_click(site: Site) -> None:
    """Following the hidden link answers 200 (no redirect) and stores a machine click, reason honeypot."""
    async with site.http.get(site.links.honeypot_url(site.messages[0], SENT), allow_redirects=False) as response:
        assert response.status == 200 and "Location" not in response.headers
    [event] = await site.tracking_events()
    assert (event["type"], event["machine"], event["data"]["reason"]) == ("clicked", 1, "honeypot")


async def test_the_queue_is_written_on_stop(tmp_path: Path) -> None:
    """With a long flush interval, an open is in the store only once the server has stopped."""
    async with serving(tmp_path, flush_seconds=3600) as site:
        async with site.http.get(site.links.open_url(site.messages[0], SENT)):
            pass
        assert site.rows("SELECT count(*) FROM events WHERE type = 'opened'") == [(0,)]
        await site.server.stop()
        assert site.rows("SELECT count(*) FROM events WHERE type = 'opened'") == [(1,)]


async def test_healthz_reports_ok_and_the_queue(site: Site) -> None:
    """/healthz answers JSON with ok and how many events wait."""
    async with site.http.get(f"{site.base}/healthz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["ok"] is True and body["queue"] == 0 and body["dropped"] == 0


# Unsubscribe


async def test_a_one_click_post_suppresses_before_the_response_returns(site: Site) -> None:
    """RFC 8058: POST List-Unsubscribe=One-Click suppresses the list at once, committed when 200 arrives."""
    link = site.links.unsubscribe_url(site.messages[0], "news")
    async with site.http.post(link, data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 200
        assert site.rows("SELECT email, list, reason FROM suppressions") == [("lead0@example.com", "news", "unsubscribe")]


async def test_a_multipart_one_click_post_without_a_list_suppresses_everything(site: Site) -> None:
    """A multipart one-click POST (RFC 8058 3.1) for a message of no list suppresses globally."""
    form = aiohttp.FormData({"List-Unsubscribe": "One-Click"}, default_to_multipart=True)
    async with site.http.post(site.links.unsubscribe_url(site.messages[1]), data=form) as response:
        assert response.status == 200
        assert site.rows("SELECT email, list FROM suppressions") == [("lead1@example.com", "")]


async def test_a_get_or_head_of_the_unsubscribe_link_changes_nothing(site: Site) -> None:
    """Scanners prefetch: GET and HEAD show the choice of this list or everything and suppress nothing."""
    link = site.links.unsubscribe_url(site.messages[0], "news")
    async with site.http.head(link) as response:
        assert response.status == 200
    async with site.http.get(link) as response:
        page = await response.text()
        assert response.status == 200
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
        assert response.headers["X-Frame-Options"] == "DENY"
    assert 'method="post"' in page and 'value="list"' in page and 'value="all"' in page
    assert "Acme &lt;News&gt; &amp; Co" in page and "<News>" not in page  # the title is escaped
    assert site.rows("SELECT count(*) FROM suppressions") == [(0,)]


async def test_the_unsubscribe_page_speaks_japanese_to_who_prefers_it(site: Site) -> None:
    """Accept-Language preferring ja gets the Japanese page; preferring en gets English."""
    link = site.links.unsubscribe_url(site.messages[0], "news")
    async with site.http.get(link, headers={"Accept-Language": "ja,en-US;q=0.8"}) as response:
        assert "配信を停止する" in await response.text()
    async with site.http.get(link, headers={"Accept-Language": "en-US,en;q=0.9,ja;q=0.8"}) as response:
        assert "Unsubscribe" in await response.text()


async def test_the_page_form_can_unsubscribe_from_everything(site: Site) -> None:
    """Choosing everything on the page suppresses the address globally and confirms on a page."""
    link = site.links.unsubscribe_url(site.messages[2], "news")
    async with site.http.post(link, data={"scope": "all"}) as response:
        assert response.status == 200 and "no more emails from us" in await response.text()
    assert site.rows("SELECT email, list, reason FROM suppressions") == [("lead2@example.com", "", "unsubscribe")]


async def test_a_bad_unsubscribe_token_or_a_post_without_a_choice_changes_nothing(site: Site) -> None:
    """A tampered token is 404 and a POST with neither One-Click nor a scope is 400; nothing suppressed."""
    link = site.links.unsubscribe_url(site.messages[0], "news")
    async with site.http.post(tampered(link), data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 404
    async with site.http.post(link, data={"List-Unsubscribe": "yes"}) as response:
        assert response.status == 400
    assert site.rows("SELECT count(*) FROM suppressions") == [(0,)]


# Opt-in


async def subscribe(site: Site, **fields: str) -> aiohttp.ClientResponse:
    form = {"email": "new@example.com", "first_name": "Hana", "last_name": "Sato", "list": "news",
            "source": "webinar", "consent": "I agree to receive Acme News.", **fields}
    async with site.http.post(f"{site.base}/subscribe", data=form, headers={"Accept": "application/json"}) as response:
        await response.read()
        return response


async def test_subscribing_to_a_double_opt_in_list_is_pending_with_a_queued_confirmation(site: Site) -> None:
    """A form post leaves the lead pending and queues the confirmation email as a message row."""
    response = await subscribe(site)
    assert response.status == 200 and json.loads(await response.text()) == {"status": "pending"}
    assert await site.store.membership("new@example.com", "news") == "pending"
    [(scenario, step, state, message_id)] = site.rows(
        "SELECT m.scenario, m.step_id, m.state, m.message_id FROM messages m JOIN leads l ON l.id = m.lead_id "
        "WHERE l.email = 'new@example.com'"
    )
    assert (scenario, step, state) == ("@optin", "news", "queued") and message_id.endswith("@acme.example>")
    [consent] = await site.store.consents_of("new@example.com")
    assert (consent.method, consent.ip, consent.user_agent, consent.text) == (
        "form", "127.0.0.1", CHROME, "I agree to receive Acme News."
    )


async def test_a_single_opt_in_list_subscribes_at_once_and_answers_html_to_browsers(site: Site) -> None:
    """A list without double opt-in confirms the member at once; a browser gets an HTML page."""
    async with site.http.post(f"{site.base}/subscribe", data={"email": "Ann@Example.com", "list": "events"}) as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert "Acme events" in await response.text()
    assert await site.store.membership("ann@example.com", "events") == "confirmed"


async def test_the_confirm_link_confirms_a_person_but_only_offers_a_button_to_a_machine(site: Site) -> None:
    """A scanner's GET or a HEAD shows a Confirm button and confirms nothing; the POST confirms."""
    await subscribe(site)
    lead = await site.store.get_lead("new@example.com")
    assert lead is not None and lead.id is not None
    link = site.links.confirm_url(lead.id, "news", expires_at=NOW + timedelta(days=7))
    async with site.http.head(link) as response:
        assert response.status == 200
    async with site.http.get(link, headers={"User-Agent": "Mozilla/5.0 (compatible; Mimecast URL Protect)"}) as response:
        page = await response.text()
    assert 'method="post"' in page and "Confirm" in page
    assert await site.store.membership("new@example.com", "news") == "pending"
    async with site.http.post(link) as response:
        assert response.status == 200 and "confirmed" in await response.text()
    assert await site.store.membership("new@example.com", "news") == "confirmed"


async def test_a_person_following_the_confirm_link_is_confirmed(site: Site) -> None:
    """A browser's GET of a genuine confirm link confirms the subscription at once."""
    await subscribe(site)
    lead = await site.store.get_lead("new@example.com")
    assert lead is not None and lead.id is not None
    async with site.http.get(site.links.confirm_url(lead.id, "news", expires_at=NOW + timedelta(days=7))) as response:
        assert response.status == 200
    assert await site.store.membership("new@example.com", "news") == "confirmed"


async def test_an_expired_or_forged_confirm_link_is_404_and_confirms_nothing(site: Site) -> None:
    """A confirm link past its expiry, or tampered, answers 404 saying the link expired."""
    await subscribe(site)
    lead = await site.store.get_lead("new@example.com")
    assert lead is not None and lead.id is not None
    expired = site.links.confirm_url(lead.id, "news", expires_at=NOW - timedelta(minutes=1))
    for link in (expired, tampered(site.links.confirm_url(lead.id, "news", expires_at=NOW + timedelta(days=1)))):
        async with site.http.get(link) as response:
            assert response.status == 404 and "expired" in await response.text()
    assert await site.store.membership("new@example.com", "news") == "pending"


async def test_a_filled_honeypot_field_looks_fine_and_stores_nothing(site: Site) -> None:
    """A bot filling the hidden `website` field gets the usual answer, and no lead is created."""
    response = await subscribe(site, website="https://spam.example")
    assert response.status == 200 and json.loads(await response.text()) == {"status": "pending"}
    assert await site.store.get_lead("new@example.com") is None


async def test_subscribe_is_rate_limited_per_client_address(site: Site) -> None:
    """After subscribe_per_hour posts from one address, the next is 429."""
    for number in range(5):
        assert (await subscribe(site, email=f"p{number}@example.com")).status == 200
    refused = await subscribe(site, email="p9@example.com")
    assert refused.status == 429 and refused.headers["Retry-After"] == "3600"
    assert await site.store.get_lead("p9@example.com") is None


async def test_subscribe_refuses_unknown_lists_and_invalid_addresses(site: Site) -> None:
    """Only lists in mailer.toml take subscriptions, and only valid addresses; each refusal is 400."""
    assert (await subscribe(site, list="secret-list")).status == 400
    assert (await subscribe(site, email="not an address")).status == 400
    assert await site.store.lead_count() == 3


async def test_an_undeclared_list_is_refused_telling_the_operator_how_to_declare_it(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """A list that exists only through `leads import --list` is refused; the log names the [lists.NAME] to add,
    the visitor is shown neither that nor their own text."""
    caplog.set_level("WARNING", logger="mailer")
    await site.store.upsert_leads([Lead(email="old@example.com")], list_name="webinar", now=NOW)
    refused = await subscribe(site, list="webinar")
    assert refused.status == 400
    assert json.loads(await refused.text()) == {"error": "this form does not accept sign-ups"}
    assert "declare [lists.webinar] in mailer.toml" in caplog.text
    missing = await subscribe(site, list="")
    assert missing.status == 400 and "without a list field" in caplog.text
    assert await site.store.membership("new@example.com", "webinar") is None


async def test_a_tracking_port_in_use_is_a_config_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    """Starting on a port another server holds raises ConfigError naming mailer.toml and tracking.listen, and stops its queue."""
    async with serving(tmp_path) as first:
        config = make_config(tmp_path, 2525, tracking={"listen": f"127.0.0.1:{first.server.port}"})
        second = TrackingServer(config=config, store=first.store, links=first.links, clock=first.clock)
        with pytest.raises(ConfigError) as raised:
            await second.start()
        error = raised.value
        assert (error.file, error.field) == (str(tmp_path / "mailer.toml"), "tracking.listen")
        assert error.problem == f"127.0.0.1:{first.server.port} is in use (another mailer serve, or another program)"
        # nothing of the failed start is left running: one event writer, the first server's
        assert [task.get_name() for task in asyncio.all_tasks()].count("tracking-events") == 1
