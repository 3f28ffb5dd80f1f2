"""The scoring engine against a real SQLite store: events as tracking and the API write them,
scores, grades, stages, history, triggers, accounts, refresh and rule files."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aiohttp import web

from mailer.apikeys import new_api_key
from mailer.clock import FakeClock
from mailer.config import ScoringEngineConfig, WebhookConfig
from mailer.errors import UserError
from mailer.leads import Lead
from mailer.scenario import Scenario, load_scenario
from mailer.scoringengine import ScoringEngine, ScoringFile
from mailer.sqlitestore import SQLiteStore
from mailer.store import EnrollmentUpdate, NewMessage, Reclassification, TrackingEvent
from mailer.testing import CaptureServer
from mailer.webhooks import SIGNATURE_HEADER, verify
from test_tracking_daemon import BROWSER, MONDAY, links_of, local, running, workspace

SENT = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
LATER = SENT + timedelta(hours=2)  # a person reads the message later; scanners come at once

RULES = """
scoring:
  - event: opened
    points: 5
    daily_cap: 10
  - event: clicked
    points: 10
  - event: clicked
    tag: pricing
    points: 40
  - event: form_submitted
    name: demo-request
    points: 30
grading:
  - name: director
    when: {attribute: job_title, contains: director}
    points: 70
grades: {A: 80, B: 60, C: 40, D: 20}
stages:
  MQL: "score >= 50 and grade >= B"
  recycle_after: 90d
  MQA: {account_score: 150}
"""

MQL_FOLLOW_UP = """
name: mql-follow-up
sender: default
entry:
  trigger: became_MQL
steps:
  - id: call
    wait: 0m
    subject: "Shall we talk?"
    template: call.html
"""

DEMO_FOLLOW_UP = """
name: demo-follow-up
sender: default
entry:
  trigger: form_submitted
  form: demo-request
steps:
  - id: book
    wait: 0m
    subject: "Your demo"
    template: book.html
"""

CRM = WebhookConfig(url="http://127.0.0.1:9/hook", secret="s" * 32, events=("stage_changed", "account_stage_changed", "score_changed"))



def rules_file(tmp_path: Path, text: str = RULES) -> Path:
    path = tmp_path / "scoring.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def scenario(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return load_scenario(path)


def engine(
    store: SQLiteStore, rules: Path, clock: FakeClock, *, scenarios: Sequence[Scenario] = (),
    webhooks: dict[str, WebhookConfig] | None = None, settings: ScoringEngineConfig = ScoringEngineConfig(),
) -> ScoringEngine:
    return ScoringEngine(
        store, scoring=ScoringFile(rules), scenarios=lambda: {s.name: s for s in scenarios},
        webhooks=webhooks or {}, clock=clock, settings=settings,
    )


def rows(store: SQLiteStore, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(store.path) as db:
        return list(db.execute(sql))


async def messages_to(store: SQLiteStore, leads: Sequence[Lead]) -> dict[str, int]:
    """Real message rows for these leads, made as the daemon makes them: address → messages.id."""
    await store.upsert_leads(list(leads), list_name=None, now=SENT)
    ids = {}
    for lead in leads:
        found = await store.get_lead(lead.email)
        assert found is not None and found.id is not None
        ids[lead.email] = found.id
    await store.enroll(scenario="nurture", lead_ids=list(ids.values()), due_at=SENT, now=SENT)
    enrollment = dict(rows(store, "SELECT lead_id, id FROM enrollments WHERE scenario = 'nurture'"))
    await store.apply_updates(
        [
            EnrollmentUpdate(
                enrollment_id=enrollment[lead_id], lead_id=lead_id, scenario="nurture", step_index=1, state="active",
                due_at=SENT + timedelta(days=2), event="queued",
                message=NewMessage(message_id=f"<{lead_id}.welcome@acme.example>", step_id="welcome", not_before=SENT),
            )
            for lead_id in ids.values()
        ],
        now=SENT,
    )
    message_of = dict(rows(store, "SELECT lead_id, id FROM messages"))
    return {email: message_of[lead_id] for email, lead_id in ids.items()}


def opened(message: int, at: datetime = LATER, *, machine: bool = False) -> TrackingEvent:
    return TrackingEvent(at=at, type="opened", message=message, machine=machine, reason="prefetch" if machine else "",
                         data={"ip": "192.0.2.1", "user_agent": "Mozilla/5.0"})


def clicked(message: int, at: datetime = LATER, *, tag: str | None = None, link: int = 1, machine: bool = False) -> TrackingEvent:
    data: dict[str, Any] = {"link": link, "url": "https://acme.example/pricing", "ip": "192.0.2.1"}
    if tag is not None:
        data["tag"] = tag
    return TrackingEvent(at=at, type="clicked", message=message, machine=machine, reason="scanner" if machine else "", data=data)


async def lead(store: SQLiteStore, email: str) -> Lead:
    found = await store.get_lead(email)
    assert found is not None
    return found


async def drain(scoring: ScoringEngine) -> int:
    """Process until the queue is empty; returns the leads processed."""
    total = 0
    while processed := await scoring.process(limit=500):
        total += processed
    return total


DIRECTOR = Lead(email="dana@acme.example", first_name="Dana", job_title="Marketing Director")


async def test_a_readers_open_and_pricing_click_make_a_graded_mql_with_its_reasons(store: SQLiteStore, tmp_path: Path) -> None:
    """A human open and a tagged click score 55, the title grades B, the lead becomes MQL, and each change is in its history and the webhook outbox."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    await store.record_tracking_events([opened(message), clicked(message, LATER + timedelta(minutes=1), tag="pricing")])
    clock = FakeClock(LATER + timedelta(minutes=5))
    scoring = engine(store, rules_file(tmp_path), clock, webhooks={"crm": CRM})

    assert await drain(scoring) == 1
    dana = await lead(store, DIRECTOR.email)
    assert (dana.score, dana.grade, dana.stage) == (55, "B", "MQL")
    assert await store.scoring_backlog() == 0
    history = await store.lead_history(dana.id or 0)
    assert [(entry.type, entry.data["from"], entry.data["to"]) for entry in history] == [
        ("score_changed", 0, 55), ("grade_changed", "", "B"), ("stage_changed", "lead", "MQL"),
    ]
    contributions = {rule: points for rule, _, points in history[0].data["contributions"]}
    assert contributions == {"opened": 5, "clicked": 10, "clicked pricing": 40}
    assert history[1].data["matched"] == [["director", 70]]
    assert "55" in history[2].data["reason"] and history[2].data["by"] == "rules"
    sent = {d.event_type: json.loads(d.body) for d in await store.deliveries(webhook="crm")}
    assert set(sent) == {"stage_changed", "score_changed"}
    assert sent["stage_changed"]["data"]["lead"]["email"] == DIRECTOR.email
    assert (sent["stage_changed"]["data"]["from"], sent["stage_changed"]["data"]["to"]) == ("lead", "MQL")
    assert scoring.totals.stage_moves == 1 and scoring.totals.events == 2

    assert await drain(scoring) == 0  # nothing new: nothing re-scored, nothing written twice
    assert len(await store.lead_history(dana.id or 0)) == 3


async def test_machine_opens_and_clicks_change_nothing(store: SQLiteStore, tmp_path: Path) -> None:
    """A privacy proxy's open and a link scanner's click are stored but leave score, stage and history alone."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    scoring = engine(store, rules_file(tmp_path), FakeClock(LATER))
    await drain(scoring)  # the new lead's grade
    before = await lead(store, DIRECTOR.email)
    history = await store.lead_history(before.id or 0)

    await store.record_tracking_events([opened(message, SENT, machine=True), clicked(message, SENT, tag="pricing", machine=True)])
    await drain(scoring)
    after = await lead(store, DIRECTOR.email)
    assert (after.score, after.stage) == (0, "lead") and after == before
    assert await store.lead_history(after.id or 0) == history
    assert rows(store, "SELECT count(*) FROM events WHERE machine = 1") == [(2,)]


async def test_a_click_reclassified_as_a_machine_burst_is_taken_off_the_score(store: SQLiteStore, tmp_path: Path) -> None:
    """A pricing click that later turns out to be part of a scanner burst no longer counts: the score drops back."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    await store.record_tracking_events([clicked(message, tag="pricing", link=1)])
    scoring = engine(store, rules_file(tmp_path), FakeClock(LATER + timedelta(minutes=1)))
    await drain(scoring)
    assert (await lead(store, DIRECTOR.email)).score == 50

    await store.reclassify_tracking_events([Reclassification(message, ((1, LATER),), "all-links")])
    assert await drain(scoring) == 1
    dana = await lead(store, DIRECTOR.email)
    assert dana.score == 0
    last = (await store.lead_history(dana.id or 0))[-1]
    assert (last.type, last.data["from"], last.data["to"]) == ("score_changed", 50, 0)


async def test_a_trigger_scenario_enrolls_the_lead_once(store: SQLiteStore, tmp_path: Path) -> None:
    """Becoming MQL enters the became_MQL scenario and a demo request the form scenario, each once, however often the lead is re-scored."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    clock = FakeClock(LATER + timedelta(hours=1))
    follow_ups = [scenario(tmp_path, MQL_FOLLOW_UP), scenario(tmp_path, DEMO_FOLLOW_UP)]
    scoring = engine(store, rules_file(tmp_path), clock, scenarios=follow_ups)

    await store.record_tracking_events([clicked(message, tag="pricing")])
    await drain(scoring)
    entered = "SELECT scenario, cycle FROM enrollments WHERE scenario != 'nurture' ORDER BY scenario"
    assert rows(store, entered) == [("mql-follow-up", 1)]

    form_at = LATER + timedelta(minutes=10)
    await store.record_api_event(
        email=DIRECTOR.email, type="form_submitted", at=form_at, name="demo-request", data={}, key="form-1", now=clock.now()
    )
    await drain(scoring)
    assert rows(store, entered) == [("demo-follow-up", 1), ("mql-follow-up", 1)]

    # both follow-ups finish; new events and a full refresh must not start them again
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE enrollments SET state = 'completed', due_at = NULL WHERE scenario != 'nurture'")
    await clock.advance(hours=1)
    await store.record_tracking_events([opened(message, LATER + timedelta(minutes=30))])
    await store.record_api_event(  # the same form event again: the API's idempotency key drops it
        email=DIRECTOR.email, type="form_submitted", at=form_at, name="demo-request", data={}, key="form-1", now=clock.now()
    )
    await drain(scoring)
    await scoring.refresh(clock.now())
    assert rows(store, entered) == [("demo-follow-up", 1), ("mql-follow-up", 1)]
    assert scoring.totals.enrolled == 2


async def test_an_old_form_event_posted_late_fires_no_trigger(store: SQLiteStore, tmp_path: Path) -> None:
    """A demo request backfilled with a time before the lead's last scored engagement scores but enrolls nobody."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    clock = FakeClock(LATER + timedelta(days=1))
    scoring = engine(store, rules_file(tmp_path), clock, scenarios=[scenario(tmp_path, DEMO_FOLLOW_UP)])
    await store.record_tracking_events([opened(message, LATER + timedelta(hours=3))])
    await drain(scoring)
    await store.record_api_event(
        email=DIRECTOR.email, type="form_submitted", at=LATER, name="demo-request", data={}, key=None, now=clock.now()
    )
    await drain(scoring)
    assert (await lead(store, DIRECTOR.email)).score == 35
    assert rows(store, "SELECT count(*) FROM enrollments WHERE scenario = 'demo-follow-up'") == [(0,)]


async def test_three_leads_of_one_account_together_make_it_an_mqa(store: SQLiteStore, tmp_path: Path) -> None:
    """Three leads of globex.example with 60 points each stay below MQL alone, and lift their account to MQA only together."""
    people = [Lead(email=f"{name}@globex.example", first_name=name.title()) for name in ("ann", "ben", "cy")]
    messages = await messages_to(store, people)
    clock = FakeClock(LATER + timedelta(minutes=5))
    scoring = engine(store, rules_file(tmp_path), clock, webhooks={"crm": CRM})
    for person in people:
        # 10 + 40 + 10: a pricing and another click, no grade: below the MQL rule's grade >= B
        await store.record_tracking_events([clicked(messages[person.email], tag="pricing"), clicked(messages[person.email], link=2)])
        await drain(scoring)
        assert (await lead(store, person.email)).stage == "lead"
        if person is not people[-1]:
            assert await store.accounts(stage="MQA") == []
    assert await store.accounts(stage="MQA") == [("globex.example", 180, "MQA")]
    [moved] = rows(store, "SELECT data FROM events WHERE type = 'account_stage_changed'")
    assert json.loads(moved[0])["to"] == "MQA"
    sent = [json.loads(d.body)["data"] for d in await store.deliveries(webhook="crm") if d.event_type == "account_stage_changed"]
    assert [(d["account"], d["from"], d["to"], d["score"]) for d in sent] == [("globex.example", "", "MQA", 180)]
    assert scoring.totals.account_moves == 1


DECAYING = """
scoring:
  - event: clicked
    points: 60
    decay: {half_life: 30d}
stages:
  MQL: "score >= 50"
  recycle_after: 90d
"""


async def test_the_running_engine_refreshes_every_lead_for_decay_and_recycling(store: SQLiteStore, tmp_path: Path) -> None:
    """On a fake clock, the running engine halves a click's points after 30 days and recycles the cold MQL after 90."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    await store.record_tracking_events([clicked(message)])
    clock = FakeClock(LATER)
    scoring = engine(store, rules_file(tmp_path, DECAYING), clock, settings=ScoringEngineConfig(refresh_interval=timedelta(hours=1)))
    stop = asyncio.Event()
    running = asyncio.create_task(scoring.run(stop))

    async def reaches(score: int, stage: str) -> Lead:
        for _ in range(200):
            found = await lead(store, DIRECTOR.email)
            if (found.score, found.stage) == (score, stage):
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"never {score}/{stage}: {found}")

    try:
        await reaches(60, "MQL")
        await clock.advance(days=30)
        await reaches(30, "MQL")
        await clock.advance(days=61)  # 91 days without engagement; 60 × 0.5^(91/30) ≈ 7.3
        dana = await reaches(7, "recycled")
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
    last = (await store.lead_history(dana.id or 0))[-1]
    assert (last.type, last.data["from"], last.data["to"], last.data["by"]) == ("stage_changed", "MQL", "recycled", "rules")


async def test_a_broken_rules_file_keeps_the_last_good_rules(store: SQLiteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A typo in scoring.yaml is logged once and scoring goes on with the rules read before; the fixed file is picked up without restart."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    path = rules_file(tmp_path)
    rules = ScoringFile(path)
    good = rules()
    path.write_text(RULES.replace("points: 40", "pionts: 40"), encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="mailer.scoring"):
        assert rules() is good and rules() is good
    assert rules.error is not None and "pionts" in str(rules.error)
    assert len([r for r in caplog.records if "pionts" in r.getMessage()]) == 1

    scoring = ScoringEngine(store, scoring=rules, scenarios=dict, webhooks={}, clock=FakeClock(LATER))
    await store.record_tracking_events([clicked(message, tag="pricing")])
    await drain(scoring)
    assert (await lead(store, DIRECTOR.email)).score == 50  # the good file's 10 + 40

    path.write_text(RULES.replace("points: 40", "points: 90"), encoding="utf-8")
    await store.record_tracking_events([opened(message)])
    await drain(scoring)
    assert (await lead(store, DIRECTOR.email)).score == 105 and rules.error is None


async def test_no_good_rules_yet_leaves_the_queue_alone(store: SQLiteStore, tmp_path: Path) -> None:
    """When scoring.yaml has been broken since start, nothing is scored (not zeroed) and the work stays queued."""
    message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
    await store.record_tracking_events([clicked(message, tag="pricing")])
    scoring = engine(store, rules_file(tmp_path, "scoring: [{event: clickd, points: 5}]\n"), FakeClock(LATER))
    backlog = await store.scoring_backlog()
    with pytest.raises(UserError, match="clickd"):
        await scoring.process()
    assert await store.scoring_backlog() == backlog > 0
    stop = asyncio.Event()
    running = asyncio.create_task(scoring.run(stop))
    await asyncio.sleep(0.3)
    assert not running.done()  # the engine waits for a good file; it does not end
    stop.set()
    await asyncio.wait_for(running, 5)


# -- through the running daemon ---------------------------------------------------------------

PRICING_MAKES_MQL = """
scoring:
  - event: opened
    points: 1
  - event: clicked
    tag: pricing
    points: 60
stages:
  MQL: "score >= 50"
"""
SECRET = "whsec-" + "x" * 26


@asynccontextmanager
async def receiver() -> AsyncIterator[tuple[int, list[tuple[dict[str, str], bytes]]]]:
    """A webhook receiver on loopback that answers 200 and keeps (headers, body) of each call."""
    calls: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes([web.post("/hook", hook)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1], calls
    finally:
        await runner.cleanup()


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str, *, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        done = check()
        if await done if inspect.isawaitable(done) else done:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_a_tracked_click_on_a_tagged_link_makes_an_mql_in_the_running_daemon(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """In `mailer serve`: the reader clicks the pricing link of the email, the lead becomes MQL, a signed webhook reaches the CRM and the API shows the stage."""
    async with receiver() as (port, calls):
        config = workspace(
            tmp_path, smtp_server.port, api={"listen": "127.0.0.1:0"},
            webhooks={"crm": {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET, "events": ["stage_changed"]}},
        )
        (tmp_path / "scenarios" / "scoring.yaml").write_text(PRICING_MAKES_MQL, encoding="utf-8")
        clock = FakeClock(MONDAY)
        key, digest = new_api_key()
        async with SQLiteStore(config.store) as store:
            await store.upsert_leads([Lead(email="ann@example.com", first_name="Ann")], list_name="news", now=MONDAY)
            await store.add_api_key("crm", digest, now=MONDAY)
            async with running(config, store, clock) as daemon, aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
                [received] = await smtp_server.wait_for(1)
                html = received.parsed().get_body(("html",)).get_content()  # type: ignore[union-attr]
                [pricing] = [h for h in links_of(html) if "/c/" in h and "pricing" in h]
                await clock.advance(minutes=30)  # a person, not a scanner at delivery time
                async with http.get(local(pricing, daemon), allow_redirects=False) as response:
                    assert response.status == 302

                async def is_mql() -> bool:
                    found = await store.get_lead("ann@example.com")
                    return found is not None and found.stage == "MQL"

                await eventually(is_mql, "the click makes Ann an MQL")
                await eventually(lambda: bool(calls), "the CRM gets the stage change")
                headers, body = calls[0]
                assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER], now=int(time.time()))
                sent = json.loads(body)
                assert sent["type"] == "stage_changed"
                assert (sent["data"]["lead"]["email"], sent["data"]["from"], sent["data"]["to"]) == ("ann@example.com", "lead", "MQL")

                assert daemon.api is not None
                await eventually(lambda: daemon.api is not None and daemon.api.port != 0, "the API listens")
                api = f"http://127.0.0.1:{daemon.api.port}/api/leads/ann@example.com"
                async with http.get(api, headers={"Authorization": f"Bearer {key}"}) as response:
                    assert response.status == 200
                    shown = await response.json()
                assert (shown["stage"], shown["score"]) == ("MQL", 60)
                assert [entry["type"] for entry in shown["history"]][-1] == "stage_changed"


FORM_FOLLOW_UP = DEMO_FOLLOW_UP.replace("book.html", "one.html")


async def test_a_form_posted_to_the_api_enters_the_form_scenario_whose_email_goes_out_at_once(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """In `mailer serve`: a demo request posted to the API enters a new lead into the form-triggered scenario, and its email is sent without waiting for the clock."""
    config = workspace(tmp_path, smtp_server.port, api={"listen": "127.0.0.1:0"})
    (tmp_path / "scenarios" / "demo.yaml").write_text(FORM_FOLLOW_UP, encoding="utf-8")
    clock = FakeClock(MONDAY)
    key, digest = new_api_key()
    async with SQLiteStore(config.store) as store:
        await store.add_api_key("site", digest, now=MONDAY)
        async with running(config, store, clock) as daemon, aiohttp.ClientSession() as http:
            await eventually(lambda: daemon.api is not None and daemon.api.port != 0, "the API listens")
            assert daemon.api is not None
            form = {"email": "bo@example.com", "type": "form_submitted", "name": "demo-request"}
            url = f"http://127.0.0.1:{daemon.api.port}/api/events"
            async with http.post(url, json=form, headers={"Authorization": f"Bearer {key}"}) as response:
                assert response.status == 202
            [received] = await smtp_server.wait_for(1)
            assert received.rcpt_tos == ("bo@example.com",) and received.parsed()["Subject"] == "Your demo"
        assert rows(store, "SELECT scenario, cycle FROM enrollments") == [("demo-follow-up", 1)]


async def test_a_locked_database_is_logged_and_the_batch_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """While another process holds the write lock the running engine logs the failed round, and scores the lead once the lock is gone."""
    async with SQLiteStore(tmp_path / "mailer.db", busy_timeout=0.1) as store:
        message = (await messages_to(store, [DIRECTOR]))[DIRECTOR.email]
        await store.record_tracking_events([clicked(message, tag="pricing")])
        scoring = engine(store, rules_file(tmp_path), FakeClock(LATER))
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        stop = asyncio.Event()
        with caplog.at_level(logging.ERROR, logger="mailer.scoring"):
            running = asyncio.create_task(scoring.run(stop))
            try:
                await eventually(lambda: any("scoring round failed" in r.getMessage() for r in caplog.records), "the failure is logged")
                assert (await lead(store, DIRECTOR.email)).score == 0 and not running.done()
                other.execute("ROLLBACK")

                async def scored() -> bool:
                    return (await lead(store, DIRECTOR.email)).score == 50

                await eventually(scored, "the retried batch scores the click")
            finally:
                other.close()
                stop.set()
                await asyncio.wait_for(running, 5)


async def test_the_api_port_in_use_is_logged_and_sending_goes_on(tmp_path: Path, smtp_server: CaptureServer, caplog: pytest.LogCaptureFixture) -> None:
    """A daemon whose API port another program holds logs that, still sends, and stops cleanly."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = workspace(tmp_path, smtp_server.port, api={"listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        async with SQLiteStore(config.store) as store:
            await store.upsert_leads([Lead(email="cy@example.com", first_name="Cy")], list_name="news", now=MONDAY)
            with caplog.at_level(logging.ERROR, logger="mailer.daemon"):
                async with running(config, store, FakeClock(MONDAY)):
                    [received] = await smtp_server.wait_for(1)
                    assert received.rcpt_tos == ("cy@example.com",)
                    await eventually(lambda: any("the API cannot start" in r.getMessage() for r in caplog.records), "the port clash is logged")
