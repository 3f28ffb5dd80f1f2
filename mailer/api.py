"""The HTTP API: other systems push leads and events in and move leads through the lifecycle.

It runs inside `mailer serve` on the daemon's event loop (aiohttp.web, like mailer.tracking).
Every request needs `Authorization: Bearer <key>` with a live key (`mailer api-key add`;
mailer.apikeys). JSON in, JSON out; `{email}` is the address, percent-encoded as a path needs.

| route | answer |
| --- | --- |
| `PUT /api/leads/{email}` | 201 created or 200 updated: the lead (written fields replace, others stay; an attribute written null is cleared) |
| `POST /api/events` | one event or a list: 202 `{"recorded": n, "replayed": m}` |
| `POST /api/leads/{email}/accept` | sales accepts the lead: SAL |
| `POST /api/leads/{email}/stage` | `{"stage": "SQL", "reason": …}`: a move the stage rules allow |
| `GET /api/leads?stage=MQL&limit=100&after=ID` | `{"leads": […], "next": ID or null}` |
| `GET /api/leads/{email}` | the lead with its score, grade, stage, account and history |
| `GET /api/accounts?stage=MQA&limit=100` | `{"accounts": [{"account", "score", "stage"}]}` |

Errors are `{"error": "…", "field": "…"}`: 400 bad input, 401 no live key, 404 no such lead,
409 a stage move the rules forbid (the error says which moves are allowed), 413 a body over
MAX_BODY. A request is checked in full (mailer.apiinput) before anything is written, so a
refused one changes nothing. Events with an `id` are recorded once however often they are posted, so a client
retries a failed call safely.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web

from mailer.apiinput import (
    ApiError,
    EventInput,
    address,
    as_object,
    bad,
    one_line,
    parse_events,
    parse_json,
    parse_lead,
    stage_of,
    whole_number,
)
from mailer.apikeys import bearer_token, key_hash
from mailer.clock import Clock
from mailer.config import Config, binding, listen_address
from mailer.errors import UserError
from mailer.leads import Lead
from mailer.scenario import Scenario
from mailer.scoremodel import STAGES, NewDelivery, StageChange, WebhookEvent
from mailer.scoringengine import store_move
from mailer.scoringrules import ScoringConfig
from mailer.stages import StageError, account_of, request_stage
from mailer.store import Store
from mailer.webhooks import deliveries_for, to_json

log = logging.getLogger("mailer.api")

MAX_BODY = 1024 * 1024  # a batch of MAX_EVENTS events of ~1 kB each
MAX_LIMIT = 1000  # rows per page of a list
NO_STORE = {"Cache-Control": "no-store"}
_KEY_NAME: web.RequestKey[str] = web.RequestKey("key_name", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiServer:
    def __init__(
        self, *, config: Config, store: Store, clock: Clock, scoring: Callable[[], ScoringConfig],
        on_change: Callable[[], None] | None = None,
        on_deliveries: Callable[[], None] | None = None,
        scenarios: Callable[[], Mapping[str, Scenario]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.scoring = scoring  # the current rules (stage moves read their BANT rule)
        self.on_change = on_change  # wakes the scoring engine after a write
        self.on_deliveries = on_deliveries  # wakes the webhook sender after queueing calls
        self.scenarios = scenarios  # the loaded scenarios: a move may trigger one (entry: {trigger: became_SAL})
        self.host, self.port = listen_address(config.api.listen, field="api.listen", example="127.0.0.1:8081")
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors, self._authenticate])
        self.app.add_routes(
            [
                web.put("/api/leads/{email}", self._put_lead),
                web.get("/api/leads/{email}", self._get_lead),
                web.post("/api/leads/{email}/accept", self._accept),
                web.post("/api/leads/{email}/stage", self._move),
                web.get("/api/leads", self._list_leads),
                web.post("/api/events", self._post_events),
                web.get("/api/accounts", self._accounts),
            ]
        )

    async def start(self) -> None:
        # no access log: addresses are in the paths
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        with binding(self.config.api.listen, field="api.listen", file=self.config.path):  # the daemon's retry line says it
            await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        if not is_loopback(self.host):
            log.warning("the API listens on %s:%d, beyond this machine: API keys cross the network in the clear "
                        "unless a TLS proxy sits in front", self.host, self.port)
        log.info("API on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return _refusal(error)
        except web.HTTPException as error:  # no such route, wrong method, body too large
            if error.status < 400:
                raise
            return _refusal(ApiError(error.status, error.reason, "body" if error.status == 413 else None))

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        if header is None:
            raise ApiError(401, "no API key: send Authorization: Bearer <key> (make one with `mailer api-key add NAME`)",
                           "Authorization")
        token = bearer_token(header)
        name = await self.store.api_key_name(key_hash(token), now=self.clock.now()) if token else None
        if name is None:
            raise ApiError(401, "the API key is unknown or revoked")
        request[_KEY_NAME] = name
        return await handler(request)

    # -- leads -----------------------------------------------------------------------------

    async def _put_lead(self, request: web.Request) -> web.Response:
        email = address(request.match_info["email"], "email")
        wanted = parse_lead(email, parse_json(await request.read()))
        key_name, stage, now = request[_KEY_NAME], wanted.stage, self.clock.now()
        existing = await self.store.get_lead(email)
        if stage is not None and existing is not None and existing.stage != stage:
            raise ApiError(409, f"the lead is {existing.stage} already: move it with POST /api/leads/{{email}}/stage",
                           "stage", stage=existing.stage)
        reason = f"created as {stage} through the API (key {key_name})"
        if stage is not None and existing is None and stage != "lead":
            self._request(wanted.lead, stage, reason=reason)  # refused before anything is written
        written = wanted.lead
        if existing is None:  # a new lead has nothing to clear: a null is no value at all
            written = replace(written, attributes={k: v for k, v in written.attributes.items() if v is not None})
        await self.store.upsert_leads([written], list_name=wanted.list_name, now=now, consent_source=f"api:{key_name}")
        lead = await self._stored(email)
        if stage is not None and existing is None and lead.stage != stage:
            lead = await self._set_stage(lead, self._request(lead, stage, reason=reason), now)
        log.info("API key %s %s lead %d", key_name, "created" if existing is None else "updated", lead.id)
        self._changed()
        return _json(lead_json(lead), status=201 if existing is None else 200)

    async def _get_lead(self, request: web.Request) -> web.Response:
        lead = await self._stored(address(request.match_info["email"], "email"))
        assert lead.id is not None
        history = await self.store.lead_history(lead.id)
        return _json(
            {**lead_json(lead),
             "history": [{"at": entry.at, "type": entry.type, "data": entry.data} for entry in history]}
        )

    async def _list_leads(self, request: web.Request) -> web.Response:
        stage = stage_of(request.query, "stage") if request.query.get("stage") else None
        limit = whole_number(request.query, "limit", default=100, least=1, most=MAX_LIMIT)
        after = whole_number(request.query, "after", default=0, least=0, most=2**63 - 1)
        leads = await self.store.leads_by_stage(stage, limit=limit, after_id=after)
        following = leads[-1].id if len(leads) == limit else None
        return _json({"leads": [lead_json(lead) for lead in leads], "next": following})

    async def _accounts(self, request: web.Request) -> web.Response:
        written = request.query.get("stage") or None
        if written is not None and written.upper() != "MQA":
            raise bad("stage", f"unknown account stage {written!r}", allowed=["MQA"])
        limit = whole_number(request.query, "limit", default=100, least=1, most=MAX_LIMIT)
        rows = await self.store.accounts(stage="MQA" if written else None, limit=limit)
        return _json({"accounts": [{"account": account, "score": score, "stage": stage} for account, score, stage in rows]})

    # -- stage moves -------------------------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.Response:
        return await self._move_to(request, "SAL", verb="accepted")

    async def _move(self, request: web.Request) -> web.Response:
        return await self._move_to(request, None, verb="moved")

    async def _move_to(self, request: web.Request, target: str | None, *, verb: str) -> web.Response:
        email = address(request.match_info["email"], "email")
        raw = parse_json(await request.read(), optional=True)
        body = as_object(raw, "") if raw is not None else {}
        if target is None:
            if "stage" not in body:
                raise bad("stage", "missing: name the stage to move to", allowed=list(STAGES))
            target = stage_of(body, "stage")
        reason = one_line(body, "reason")
        lead = await self._stored(email)
        if lead.stage == target:  # a retried call: already done
            return _json({**lead_json(lead), "changed": False})
        key_name = request[_KEY_NAME]
        change = self._request(lead, target, reason=reason or f"{verb} through the API (key {key_name})")
        lead = await self._set_stage(lead, change, self.clock.now())
        log.info("API key %s moved lead %d %s → %s", key_name, lead.id, change.from_stage, change.to_stage)
        self._changed()
        return _json({**lead_json(lead), "changed": True})

    def _request(self, lead: Lead, target: str, *, reason: str) -> StageChange:
        """The move the stage rules allow (mailer.stages.request_stage), or a 409 saying which are allowed."""
        try:
            return request_stage(lead, target, self.scoring().stages, by="api", reason=reason)
        except StageError as error:
            raise ApiError(409, error.problem + (f" — {error.hint}" if error.hint else ""), "stage", stage=lead.stage) from None

    async def _set_stage(self, lead: Lead, change: StageChange, now: datetime) -> Lead:
        """Write a move with its history, trigger enrollments and webhook calls, in one transaction."""
        scenarios = self.scenarios().values() if self.scenarios is not None else ()
        try:
            deliveries = await store_move(self.store, lead, change, scenarios=scenarios, webhooks=self.config.webhooks, now=now)
        except UserError as error:  # the stage changed between reading the lead and writing the move
            raise ApiError(409, error.problem, "stage") from None
        self._queued(deliveries)
        return await self._stored(lead.email)

    # -- events ------------------------------------------------------------------------------

    async def _post_events(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        events = parse_events(parse_json(await request.read()), now=now)
        queued: list[NewDelivery] = []

        def deliveries(event: EventInput) -> list[NewDelivery]:
            calls = self._deliveries_of(event)
            queued.extend(calls)
            return calls

        # the events and their webhook calls in one transaction: a crash loses neither alone
        new = await self.store.record_api_events(events, now=now, deliveries=deliveries)
        self._queued(queued)
        if new:
            log.info("API key %s posted %d events (%d replays)", request[_KEY_NAME], len(new), len(events) - len(new))
            self._changed()
        return _json({"recorded": len(new), "replayed": len(events) - len(new)}, status=202)

    def _deliveries_of(self, event: EventInput) -> list[NewDelivery]:
        """The webhook calls of a newly recorded event, for the webhooks that list its type."""
        payload = {"email": event.email, "name": event.name, "data": event.data, "id": event.id}
        return deliveries_for(WebhookEvent(event.type, event.at, payload), self.config.webhooks)

    # -- plumbing ------------------------------------------------------------------------------

    async def _stored(self, email: str) -> Lead:
        lead = await self.store.get_lead(email)
        if lead is None:
            raise ApiError(404, f"no lead {email}", "email")
        return lead

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _queued(self, deliveries: Sequence[NewDelivery]) -> None:
        if deliveries and self.on_deliveries is not None:
            self.on_deliveries()


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lead_json(lead: Lead) -> dict[str, Any]:
    """A lead as the API shows it."""
    return {
        "id": lead.id, "email": lead.email, "first_name": lead.first_name, "last_name": lead.last_name,
        "company": lead.company, "job_title": lead.job_title, "timezone": lead.timezone, "source": lead.source,
        "attributes": dict(lead.attributes), "score": lead.score, "product_score": lead.product_score,
        "grade": lead.grade, "stage": lead.stage, "account": account_of(lead),
    }


def _json(body: object, *, status: int = 200, headers: Mapping[str, str] = NO_STORE) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=to_json)


def _refusal(error: ApiError) -> web.Response:
    headers = dict(NO_STORE)
    if error.status == 401:  # RFC 6750 3: say the scheme; invalid_token when one was sent but is not live
        headers["WWW-Authenticate"] = 'Bearer realm="mailer"' + (', error="invalid_token"' if error.field is None else "")
    return _json({"error": error.error, "field": error.field, **error.extra}, status=error.status, headers=headers)
