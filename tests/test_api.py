"""The HTTP API through a real aiohttp client against ApiServer on a real SQLite store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_config
from mailer.api import MAX_BODY, ApiServer, is_loopback
from mailer.apiinput import ApiError, parse_events, parse_lead
from mailer.apikeys import bearer_token, key_hash, new_api_key
from mailer.clock import FakeClock
from mailer.errors import ConfigError
from mailer.leads import Lead
from mailer.scenario import load_scenario
from mailer.scoremodel import API_EVENT_TYPES, AccountChange, GradeResult, LeadChange, ScoreResult, StageChange
from mailer.scoringrules import ScoringConfig
from mailer.sqlitestore import SQLiteStore
from mailer.webhooks import WebhookSender
from test_webhooks import SECRET, Receiver, receiving

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@dataclass
class Api:
    server: ApiServer
    store: SQLiteStore
    clock: FakeClock
    http: aiohttp.ClientSession
    key: str  # a live key
    revoked_key: str
    changes: list[str] = field(default_factory=list)  # one entry per on_change call

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = None, anonymous: bool = False,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON) of one request, with the live key unless another key or none is asked for."""
        headers = {} if anonymous else {"Authorization": f"Bearer {key or self.key}"}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.url(path), data=data, headers=headers) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    def stored(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row a request could write, read through a second connection."""
        with sqlite3.connect(self.store.path) as db:
            return {
                table: sorted(db.execute(f"SELECT * FROM {table}"), key=repr)
                for table in ("leads", "events", "list_members", "event_keys", "webhook_deliveries", "scoring_queue")
            }

    async def lead_at(self, email: str, stage: str) -> None:
        """A lead already in `stage`, put there as the rules would."""
        await self.store.upsert_leads([Lead(email=email)], list_name=None, now=NOW)
        lead = await self.store.get_lead(email)
        assert lead is not None and lead.id is not None
        if stage != "lead":
            await self.store.set_stage(lead.id, StageChange("lead", stage, "test setup", "rules"), now=NOW)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    config = make_config(
        tmp_path, 2525, api={"listen": "127.0.0.1:0"},
        webhooks={"crm": {"url": "http://127.0.0.1:9/never-called", "secret": SECRET}},
    )
    clock = FakeClock(NOW)
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        key, hashed = new_api_key()
        await store.add_api_key("crm", hashed, now=NOW)
        revoked, revoked_hash = new_api_key()
        await store.add_api_key("old", revoked_hash, now=NOW)
        await store.revoke_api_key("old", now=NOW)
        changes: list[str] = []
        server = ApiServer(config=config, store=store, clock=clock, scoring=ScoringConfig,
                           on_change=lambda: changes.append("changed"))
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Api(server, store, clock, http, key, revoked, changes)
        finally:
            await server.stop()


# -- keys --------------------------------------------------------------------------------------


def test_new_keys_are_random_prefixed_and_stored_as_their_hash() -> None:
    """A new key is mk_ and 43 URL-safe characters; the hash to store is its SHA-256, never the key."""
    key, hashed = new_api_key()
    assert key.startswith("mk_") and len(key) == 46 and key.encode() not in hashed
    assert key_hash(key) == hashed and len(hashed) == 32
    assert new_api_key()[0] != key


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer mk_abc-_", "mk_abc-_"), ("bearer  mk_x ", "mk_x"), ("Basic dXNlcjpwYXNz", None), ("Bearer", None),
     ("Bearer a b", None), ("Bearer " + "a" * 300, None), ("Bearer mk_é", None)],
)
def test_bearer_tokens_are_read_per_rfc_6750(header: str, token: str | None) -> None:
    """Only `Bearer <b64token>` of sane length yields a token."""
    assert bearer_token(header) == token


async def test_requests_without_a_live_key_get_401_and_change_nothing(api: Api) -> None:
    """No key, a wrong key, a revoked key or another scheme: 401 on every route, and no row written."""
    before = api.stored()
    for key in (None, "mk_wrong", api.revoked_key):
        for method, path, body in (
            ("PUT", "/api/leads/ann@acme.example", {"first_name": "Ann"}),
            ("POST", "/api/events", {"email": "ann@acme.example", "type": "page_visit", "name": "/pricing"}),
            ("GET", "/api/leads?stage=MQL", None),
            ("GET", "/api/nowhere", None),
        ):
            status, answer = await api.call(method, path, body, key=key, anonymous=key is None)
            assert status == 401, (key, path)
            assert answer["error"]
    async with api.http.get(api.url("/api/leads"), headers={"Authorization": "Basic dXNlcjpwYXNz"}) as response:
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.stored() == before and api.changes == []


# -- events ------------------------------------------------------------------------------------


async def test_an_unknown_event_type_is_refused_naming_the_allowed_types(api: Api) -> None:
    """type "purchase" → 400 naming the field and the allowed types; the valid event beside it is not stored."""
    before = api.stored()
    status, answer = await api.call("POST", "/api/events", [
        {"email": "ann@acme.example", "type": "page_visit", "name": "/pricing"},
        {"email": "ann@acme.example", "type": "purchase", "name": "pro"},
    ])
    assert status == 400 and answer["field"] == "events[1].type"
    assert answer["allowed"] == list(API_EVENT_TYPES)
    assert all(kind in answer["error"] for kind in API_EVENT_TYPES)
    assert api.stored() == before and api.changes == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"email": "not-an-address", "type": "page_visit", "name": "/"}, "email", "not an email address"),
        ({"type": "page_visit", "name": "/"}, "email", "missing"),
        ({"email": "ann@acme.example", "type": "page_visit"}, "name", "missing"),
        ({"email": "ann@acme.example", "type": "page_visit", "name": "/", "at": "2026-01-05 09:00"}, "at", "time zone"),
        ({"email": "ann@acme.example", "type": "page_visit", "name": "/", "at": "2027-01-01T00:00:00Z"}, "at", "future"),
        ({"email": "ann@acme.example", "type": "page_visit", "name": "/", "data": [1]}, "data", "object"),
        ({"email": "ann@acme.example", "type": "page_visit", "name": "/", "nmae": "x"}, "nmae", "unknown field"),
        ({"email": "ann@acme.example", "type": "page_visit", "name": 5}, "name", "must be a string"),
        ("just text", "body", "JSON object"),
        ([], "events", "empty"),
    ],
)
async def test_bad_events_get_400_naming_the_field(api: Api, body: Any, field: str, words: str) -> None:
    """Each mistake in a posted event is a 400 naming its field; nothing is stored."""
    before = api.stored()
    status, answer = await api.call("POST", "/api/events", body)
    assert (status, answer["field"]) == (400, field)
    assert words in answer["error"]
    assert api.stored() == before


async def test_malformed_json_and_oversized_bodies_are_refused(api: Api) -> None:
    """Broken JSON is a 400 and a body past MAX_BODY a 413, both about the body, nothing stored."""
    before = api.stored()
    assert (await api.call("POST", "/api/events", raw=b'{"email": '))[0] == 400
    assert (await api.call("POST", "/api/events", raw=b"[" * 100_000 + b"]" * 100_000))[1]["field"] == "body"
    assert (await api.call("POST", "/api/events", raw=b'{"email": NaN}'))[0] == 400
    status, answer = await api.call("POST", "/api/events", raw=b" " * (MAX_BODY + 1))
    assert (status, answer["field"]) == (413, "body")
    assert api.stored() == before


async def test_events_with_an_id_are_recorded_once_however_often_posted(api: Api) -> None:
    """Posting the same batch twice records the events with ids once; an event without an id each time."""
    batch = [
        {"email": "Ann@Acme.example", "type": "form_submitted", "name": "demo-request", "id": "f-1",
         "at": "2026-01-05T08:00:00+09:00", "data": {"plan": "pro"}},
        {"email": "ann@acme.example", "type": "product_event", "name": "invited_teammate", "id": "p-1"},
        {"email": "bob@acme.example", "type": "page_visit", "name": "/pricing"},
        {"email": "bob@acme.example", "type": "page_visit", "name": "/docs", "id": 7},
    ]
    assert await api.call("POST", "/api/events", batch) == (202, {"recorded": 4, "replayed": 0})
    assert await api.call("POST", "/api/events", batch) == (202, {"recorded": 1, "replayed": 3})
    assert await api.call("POST", "/api/events", batch[0]) == (202, {"recorded": 0, "replayed": 1})
    with sqlite3.connect(api.store.path) as db:
        rows = list(db.execute(
            "SELECT l.email, e.type, e.at, e.data FROM events e JOIN leads l ON l.id = e.lead_id "
            "WHERE e.type IN ('form_submitted', 'product_event', 'page_visit') ORDER BY e.id"
        ))
    assert [(email, kind) for email, kind, _, _ in rows] == [
        ("ann@acme.example", "form_submitted"), ("ann@acme.example", "product_event"),
        ("bob@acme.example", "page_visit"), ("bob@acme.example", "page_visit"), ("bob@acme.example", "page_visit"),
    ]
    form = json.loads(rows[0][3])
    assert form["name"] == "demo-request" and form["plan"] == "pro"
    assert rows[0][2] == int((NOW - timedelta(hours=10)).timestamp() * 1000)  # 08:00+09:00 is 23:00 UTC the day before
    assert await api.store.get_lead("bob@acme.example") is not None  # an unknown address became a lead
    assert len(api.changes) == 2  # the scoring engine was woken for the calls that recorded something


# -- leads -------------------------------------------------------------------------------------


async def test_put_creates_then_updates_a_lead(api: Api) -> None:
    """PUT creates (201) and then updates (200); unwritten fields stay, attributes merge, the list is joined."""
    status, lead = await api.call("PUT", "/api/leads/" + quote("Ann@Acme.example"), {
        "first_name": "Ann", "company": "Acme", "job_title": "Director of IT", "timezone": "asia/tokyo",
        "attributes": {"company_size": 250, "need": "faster onboarding"}, "list": "newsletter",
    })
    assert status == 201
    assert (lead["email"], lead["first_name"], lead["timezone"], lead["stage"]) == ("ann@acme.example", "Ann", "Asia/Tokyo", "lead")
    assert lead["attributes"] == {"company_size": 250, "need": "faster onboarding"} and lead["account"] == "acme.example"
    status, lead = await api.call("PUT", "/api/leads/ann@acme.example", {"last_name": "Lee", "attributes": {"budget": "yes"}})
    assert status == 200
    assert (lead["first_name"], lead["last_name"], lead["company"]) == ("Ann", "Lee", "Acme")
    assert lead["attributes"] == {"company_size": 250, "need": "faster onboarding", "budget": "yes"}
    assert await api.store.membership("ann@acme.example", "newsletter") == "confirmed"
    assert len(api.changes) == 2


async def test_null_clears_an_attribute_and_empty_text_leaves_it(api: Api) -> None:
    """A CRM clears a BANT field with null (the lead is queued for re-scoring); "" and leaving it out keep it."""
    await api.call("PUT", "/api/leads/ann@acme.example", {"attributes": {"budget": "Q3", "need": "reports", "size": 9}})
    with sqlite3.connect(api.store.path) as db:
        db.execute("DELETE FROM scoring_queue")  # as if the daemon had scored everyone
    status, lead = await api.call("PUT", "/api/leads/ann@acme.example", {"attributes": {"budget": None, "need": ""}})
    assert status == 200 and lead["attributes"] == {"need": "reports", "size": 9}
    stored = await api.store.get_lead("ann@acme.example")
    assert stored is not None and dict(stored.attributes) == {"need": "reports", "size": 9}
    assert any(row[0] == stored.id for row in api.stored()["scoring_queue"])  # grading and BANT see the change
    status, lead = await api.call("PUT", "/api/leads/new@acme.example", {"attributes": {"budget": None, "need": "x"}})
    assert status == 201 and lead["attributes"] == {"need": "x"}  # a new lead stores no null


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"frist_name": "Ann"}, "frist_name"),
        ({"first_name": "Ann\r\nBcc: x@evil.example"}, "first_name"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"attributes": {"nested": {"a": 1}}}, "attributes.nested"),
        ({"attributes": ["a"]}, "attributes"),
        ({"stage": "qualified"}, "stage"),
        ({"email": "bob@acme.example"}, "email"),
    ],
)
async def test_bad_lead_fields_get_400_and_store_nothing(api: Api, body: dict[str, Any], field: str) -> None:
    """A typo, a header-breaking name, an unknown zone or stage: 400 naming the field, no lead made."""
    before = api.stored()
    status, answer = await api.call("PUT", "/api/leads/ann@acme.example", body)
    assert (status, answer["field"]) == (400, field)
    assert api.stored() == before


async def test_a_lead_may_be_created_as_sgl_but_not_at_another_stage(api: Api) -> None:
    """stage SGL on create makes a sales-generated lead; a stage the rules forbid from lead is a 409, nothing stored."""
    status, lead = await api.call("PUT", "/api/leads/sgl@acme.example", {"first_name": "Sam", "stage": "sgl"})
    assert (status, lead["stage"]) == (201, "SGL")
    before = api.stored()
    status, answer = await api.call("PUT", "/api/leads/cust@acme.example", {"stage": "customer"})
    assert (status, answer["field"]) == (409, "stage")
    status, answer = await api.call("PUT", "/api/leads/sgl@acme.example", {"stage": "MQL"})
    assert (status, answer["field"], answer["stage"]) == (409, "stage", "SGL")
    assert api.stored() == before


async def test_get_a_lead_with_its_history_or_404(api: Api) -> None:
    """GET a lead shows score, grade, stage and its history; an unknown address is a 404."""
    await api.lead_at("ann@acme.example", "MQL")
    status, lead = await api.call("GET", "/api/leads/ann@acme.example")
    assert status == 200 and lead["stage"] == "MQL" and (lead["score"], lead["grade"]) == (0, "")
    assert [(h["type"], h["data"]["to"]) for h in lead["history"]] == [("stage_changed", "MQL")]
    status, answer = await api.call("GET", "/api/leads/nobody@acme.example")
    assert (status, answer["field"]) == (404, "email")


async def test_leads_are_listed_by_stage_a_page_at_a_time(api: Api) -> None:
    """?stage=MQL lists only MQLs by id; limit and next page through them; a bad stage or limit is a 400."""
    for email, stage in (("a@x.example", "MQL"), ("b@x.example", "lead"), ("c@x.example", "MQL"), ("d@x.example", "SAL")):
        await api.lead_at(email, "SAL" if stage == "SAL" else stage)
    status, page = await api.call("GET", "/api/leads?stage=mql&limit=1")
    assert status == 200 and [lead["email"] for lead in page["leads"]] == ["a@x.example"]
    status, page = await api.call("GET", f"/api/leads?stage=MQL&limit=1&after={page['next']}")
    assert [lead["email"] for lead in page["leads"]] == ["c@x.example"]
    status, page = await api.call("GET", f"/api/leads?stage=MQL&limit=1&after={page['next']}")
    assert page == {"leads": [], "next": None}
    status, page = await api.call("GET", "/api/leads")
    assert len(page["leads"]) == 4 and page["next"] is None
    assert (await api.call("GET", "/api/leads?stage=hot"))[1]["field"] == "stage"
    assert (await api.call("GET", "/api/leads?limit=0"))[1]["field"] == "limit"
    assert (await api.call("GET", "/api/leads?limit=1e3"))[0] == 400


async def test_accounts_are_listed_by_stage(api: Api) -> None:
    """GET /api/accounts?stage=MQA lists the MQA accounts with their scores; another stage is a 400."""
    scores = {"ann@acme.example": 100, "bob@acme.example": 80, "cy@small.example": 20}
    await api.store.upsert_leads([Lead(email=email) for email in scores], list_name=None, now=NOW)
    changes = []
    for email, points in scores.items():
        lead = await api.store.get_lead(email)
        assert lead is not None and lead.id is not None
        changes.append(LeadChange(lead.id, ScoreResult(points, 0), GradeResult("", 0), None, NOW, email.partition("@")[2]))
    await api.store.apply_scoring(changes, done=(), triggers=(), deliveries=(), now=NOW)
    await api.store.apply_account_changes([AccountChange("acme.example", 180, "MQA", "", "180 ≥ 150", NOW)], deliveries=())
    assert await api.call("GET", "/api/accounts?stage=MQA") == (200, {"accounts": [
        {"account": "acme.example", "score": 180, "stage": "MQA"},
    ]})
    assert len((await api.call("GET", "/api/accounts"))[1]["accounts"]) == 2
    assert (await api.call("GET", "/api/accounts?stage=SQL"))[0] == 400


# -- stage moves ---------------------------------------------------------------------------------


async def test_accept_makes_an_mql_a_sal_and_queues_the_webhook(api: Api) -> None:
    """POST accept moves MQL → SAL with a history entry and a stage_changed delivery; a retry changes nothing."""
    await api.lead_at("ann@acme.example", "MQL")
    status, lead = await api.call("POST", "/api/leads/ann@acme.example/accept", {"reason": "call booked"})
    assert (status, lead["stage"], lead["changed"]) == (200, "SAL", True)
    (history, *_) = reversed((await api.call("GET", "/api/leads/ann@acme.example"))[1]["history"])
    assert history["data"]["to"] == "SAL" and history["data"]["reason"] == "call booked" and history["data"]["by"] == "api"
    (delivery,) = await api.store.deliveries(webhook="crm")
    body = json.loads(delivery.body)
    assert (body["type"], body["data"]["from"], body["data"]["to"]) == ("stage_changed", "MQL", "SAL")
    assert body["data"]["lead"]["email"] == "ann@acme.example"
    status, lead = await api.call("POST", "/api/leads/ann@acme.example/accept")
    assert (status, lead["stage"], lead["changed"]) == (200, "SAL", False)
    assert len(await api.store.deliveries()) == 1 and len(api.changes) == 1


async def test_a_forbidden_stage_move_is_a_409_with_the_reason(api: Api) -> None:
    """Accepting a plain lead, or SQL without BANT, is a 409 that says why; the stage stays as it was."""
    await api.lead_at("ann@acme.example", "lead")
    before = api.stored()
    status, answer = await api.call("POST", "/api/leads/ann@acme.example/accept")
    assert (status, answer["field"], answer["stage"]) == (409, "stage", "lead")
    assert "SAL" in answer["error"]
    await api.lead_at("sal@acme.example", "SAL")
    before = api.stored()
    status, answer = await api.call("POST", "/api/leads/sal@acme.example/stage", {"stage": "SQL"})
    assert (status, answer["field"]) == (409, "stage") and "need" in answer["error"].lower()
    assert api.stored() == before
    await api.call("PUT", "/api/leads/sal@acme.example", {"attributes": {"need": "onboarding", "budget": "approved"}})
    status, lead = await api.call("POST", "/api/leads/sal@acme.example/stage", {"stage": "sql", "reason": "BANT done"})
    assert (status, lead["stage"]) == (200, "SQL")


async def test_stage_moves_need_a_known_stage_and_a_known_lead(api: Api) -> None:
    """An unknown stage is a 400 listing the stages; a missing one a 400; an unknown lead a 404."""
    await api.lead_at("ann@acme.example", "MQL")
    status, answer = await api.call("POST", "/api/leads/ann@acme.example/stage", {"stage": "hot"})
    assert (status, answer["field"]) == (400, "stage") and "customer" in answer["error"]
    assert (await api.call("POST", "/api/leads/ann@acme.example/stage", {}))[1]["field"] == "stage"
    assert (await api.call("POST", "/api/leads/nobody@acme.example/accept"))[0] == 404


async def test_an_accepted_lead_reaches_a_real_receiver_signed(tmp_path: Path) -> None:
    """API accept → outbox → WebhookSender → a local receiver, whose signature check passes."""
    receiver = Receiver()
    runner = await receiving(receiver)
    config = make_config(tmp_path, 2525, api={"listen": "127.0.0.1:0"},
                         webhooks={"crm": {"url": receiver.url(), "secret": SECRET}})
    clock = FakeClock(NOW)
    try:
        async with SQLiteStore(tmp_path / "mailer.db") as store:
            key, hashed = new_api_key()
            await store.add_api_key("crm", hashed, now=NOW)
            sender = WebhookSender(store, config.webhooks, clock)
            server = ApiServer(config=config, store=store, clock=clock, scoring=ScoringConfig, on_deliveries=sender.wake)
            await server.start()
            try:
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
                    base = f"http://127.0.0.1:{server.port}"
                    async with http.put(f"{base}/api/leads/ann@acme.example", json={"first_name": "Ann"}) as response:
                        assert response.status == 201
                    async with http.post(f"{base}/api/leads/ann@acme.example/stage", json={"stage": "SGL"}) as response:
                        assert response.status == 200
                assert await sender.deliver_due() == 1
            finally:
                await server.stop()
                await sender.stop()
    finally:
        await runner.cleanup()
    (call,) = receiver.calls
    assert receiver.verified(call) and json.loads(call.body)["data"]["to"] == "SGL"


def test_only_loopback_addresses_count_as_loopback() -> None:
    """127.0.0.0/8, ::1 and localhost are loopback (no warning at start); 0.0.0.0 and public addresses are not."""
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.0.2.1", "api.acme.example"))


SAL_FOLLOWUP = """
name: sal-followup
sender: default
entry:
  trigger: became_SAL
steps:
  - id: hello
    wait: 0m
    subject: "Hi {{ lead.first_name }}"
    template: one.html
"""


async def test_an_api_move_enters_the_scenarios_it_triggers(api: Api, tmp_path: Path) -> None:
    """Accepting a lead enrolls it in a scenario whose entry is {trigger: became_SAL}, in the same write."""
    (tmp_path / "follow.yaml").write_text(SAL_FOLLOWUP, encoding="utf-8")
    scenario = load_scenario(tmp_path / "follow.yaml")
    api.server.scenarios = lambda: {scenario.name: scenario}
    await api.lead_at("ann@acme.example", "MQL")
    assert (await api.call("POST", "/api/leads/ann@acme.example/accept"))[0] == 200
    with sqlite3.connect(api.store.path) as db:
        enrolled = list(db.execute("SELECT e.scenario, l.email FROM enrollments e JOIN leads l ON l.id = e.lead_id"))
    assert enrolled == [("sal-followup", "ann@acme.example")]


async def test_posted_events_go_to_the_webhooks_that_want_them_once(tmp_path: Path) -> None:
    """A recorded form_submitted is queued for a webhook listing it; its replay queues nothing more."""
    config = make_config(tmp_path, 2525, api={"listen": "127.0.0.1:0"}, webhooks={
        "forms": {"url": "http://127.0.0.1:9/x", "secret": SECRET, "events": ["form_submitted"]},
        "crm": {"url": "http://127.0.0.1:9/y", "secret": SECRET},
    })
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        key, hashed = new_api_key()
        await store.add_api_key("site", hashed, now=NOW)
        woken: list[int] = []
        server = ApiServer(config=config, store=store, clock=FakeClock(NOW), scoring=ScoringConfig,
                           on_deliveries=lambda: woken.append(1))
        await server.start()
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
                event = {"email": "ann@acme.example", "type": "form_submitted", "name": "demo-request", "id": "f-9",
                         "data": {"plan": "pro"}}
                for _ in range(2):
                    async with http.post(f"http://127.0.0.1:{server.port}/api/events", json=event) as response:
                        assert response.status == 202
                async with http.post(f"http://127.0.0.1:{server.port}/api/events",
                                     json={**event, "type": "page_visit", "id": "v-1"}) as response:
                    assert response.status == 202
        finally:
            await server.stop()
        deliveries = await store.deliveries()
    (delivery,) = deliveries
    body = json.loads(delivery.body)
    assert (delivery.webhook, body["type"]) == ("forms", "form_submitted")
    assert body["data"] == {"email": "ann@acme.example", "name": "demo-request", "data": {"plan": "pro"}, "id": "f-9"}
    assert woken == [1]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["email", "type", "name", "at", "id", "data", "attributes", "stage", "first_name", "x"]) | st.text(max_size=5),
        inner, max_size=6,
    ),
    max_leaves=20,
)


@given(body=JSON)
def test_any_json_is_read_or_refused_with_a_400(body: Any) -> None:
    """Whatever JSON a caller posts, reading it gives events and a lead or a 400 naming a field, never a crash."""
    for parse in (lambda: parse_events(body, now=NOW), lambda: parse_lead("ann@acme.example", body)):
        try:
            parse()
        except ApiError as error:
            assert error.status == 400 and error.field is not None


async def test_an_api_port_in_use_is_a_config_error_naming_api_listen(tmp_path: Path, held_port: int) -> None:
    """A port another program holds is refused as the api.listen setting's fault, for the daemon's retry line to say so."""
    port = held_port
    config = make_config(tmp_path, 2525, api={"listen": f"127.0.0.1:{port}"})
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        server = ApiServer(config=config, store=store, clock=FakeClock(NOW), scoring=ScoringConfig)
        with pytest.raises(ConfigError) as caught:
            await server.start()
        await server.stop()
    assert caught.value.field == "api.listen" and f"127.0.0.1:{port} is in use" in str(caught.value)
    assert "mailer.toml" in str(caught.value)
