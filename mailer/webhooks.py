"""Outgoing webhooks: signed POSTs of lifecycle events to a CRM, retried, logged, never in the way.

A change that causes an event (a stage move, a form fill …) writes one delivery per webhook
that wants its type into the store's outbox in the same transaction as the change itself
(`deliveries_for` builds them), so no event is lost between deciding and sending.
`WebhookSender` runs as its own task in the daemon: it reads due deliveries, POSTs each with
bounded concurrency and a per-call timeout, and records every try in the delivery log. A
receiver that fails or hangs holds at most PER_WEBHOOK of its slots for at most its timeout;
nothing else on the event loop waits for it.

What a receiver gets and how it checks it (Stripe's scheme, so existing verifiers fit):

    POST <url>
    Content-Type: application/json
    Mailer-Signature: t=1767603600,v1=<hex HMAC-SHA256(secret, b"1767603600." + raw body)>

    {"id": "evt_…", "type": "stage_changed", "created_at": "2026-01-05T09:00:00+00:00", "data": {…}}

Accept it when some v1 equals the HMAC computed over the raw bytes (compare in constant time)
and `t` is within 5 minutes of the receiver's clock (`verify` does exactly this). `t` is real
Unix time even when the daemon runs a virtual clock, because receivers check it against theirs.
`id` is the same on every retry and for every webhook: de-duplicate on it. Answer 2xx within
`timeout` seconds; anything else, redirects included (they are not followed), is a failure,
retried after `backoff(n)` of clock time until `max_attempts` tries, then given up ("failed").
Deliveries are not ordered: `created_at` tells a receiver which change came first.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import suppress
from datetime import date, datetime, timedelta, timezone
from typing import Any

import aiohttp

from mailer.clock import Clock
from mailer.config import WebhookConfig
from mailer.leads import Lead
from mailer.scoremodel import NewDelivery, StageChange, WebhookDelivery, WebhookEvent
from mailer.store import Store

log = logging.getLogger("mailer.webhooks")

SIGNATURE_HEADER = "Mailer-Signature"
USER_AGENT = "mailer-webhooks/1"
# What a [webhooks.NAME] may ask for in `events`.
WEBHOOK_EVENT_TYPES = (
    "stage_changed", "account_stage_changed", "score_changed", "grade_changed",
    "form_submitted", "page_visit", "product_event",
)
# Stripe's default tolerance: a signed call older than 5 minutes is a replay.
TOLERANCE = 300
# The wait after the 1st, 2nd, … failed try. The first retries come quickly (a receiver that
# restarts is back within seconds to minutes); later ones spread out so a receiver down for a
# night still gets its events. Beyond the table the wait doubles, up to a day.
BACKOFF = (
    timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10), timedelta(minutes=30),
    timedelta(hours=1), timedelta(hours=2), timedelta(hours=4),
)
MAX_BACKOFF = timedelta(days=1)
CONCURRENCY = 8  # calls in flight at once, across all webhooks
PER_WEBHOOK = 4  # … and to one receiver, so a hanging one cannot hold every slot
BATCH = 100  # due deliveries read per look at the outbox
POLL = timedelta(seconds=15)  # clock time between looks when nothing wakes the sender
MIN_PAUSE = 0.05  # real seconds between looks: a fast virtual clock must not spin the loop
STOP_GRACE = 5.0  # real seconds calls under way get to finish at shutdown
ERROR_PAUSE = 5.0  # real seconds after the outbox could not be read, so a broken store is not hammered
MAX_ERROR = 300  # characters of a failure kept in the delivery log
_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # bounded: int() of a huge string is slow


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The Mailer-Signature header value for `body` sent at Unix time `timestamp`."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify(secret: bytes, body: bytes, header: str, *, now: int, tolerance: int = TOLERANCE) -> bool:
    """Whether `header` signs exactly `body` with `secret`, within `tolerance` seconds of `now`.

    Several v1 values may be given (a sender rotating its secret); one matching is enough.
    """
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, equals, value = part.strip().partition("=")
        if not equals:
            continue
        if key == "t" and _TIMESTAMP.fullmatch(value):
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value.encode("utf-8", "replace"))
    if timestamp is None or not signatures or abs(now - timestamp) > tolerance:
        return False
    expected = _digest(secret, body, timestamp).encode()
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def _digest(secret: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def backoff(attempt: int) -> timedelta:
    """How long to wait after the `attempt`-th failed try: 30s, 2m, 10m, 30m, 1h, 2h, 4h, 8h, 16h, 1d, 1d …"""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    if attempt <= len(BACKOFF):
        return BACKOFF[attempt - 1]
    return min(BACKOFF[-1] * (1 << min(attempt - len(BACKOFF), 16)), MAX_BACKOFF)


def event_id(event: WebhookEvent) -> str:
    """A stable id for `event`: the same event built twice (a re-run after a crash) gets the same id.

    The store keeps one delivery per (webhook, id), and receivers de-duplicate on it.
    """
    canonical = _dumps([event.type, _iso(event.at), event.payload], sort_keys=True)
    return "evt_" + hashlib.sha256(canonical).hexdigest()[:32]


def deliveries_for(event: WebhookEvent, webhooks: Mapping[str, WebhookConfig]) -> list[NewDelivery]:
    """One delivery of `event` per webhook whose `events` include its type (none when no webhook wants it)."""
    wanted = [name for name, webhook in webhooks.items() if event.type in webhook.events]
    if not wanted:
        return []
    identifier = event_id(event)
    body = _dumps({"id": identifier, "type": event.type, "created_at": _iso(event.at), "data": event.payload})
    return [NewDelivery(webhook=name, event_type=event.type, event_id=identifier, body=body) for name in wanted]


def stage_event(lead: Lead, change: StageChange, *, at: datetime, account: str | None = None) -> WebhookEvent:
    """The stage_changed event of a manual move (sales, the API); `lead` as it was before it.

    The same shape as the scoring engine's (mailer.scoringengine), so a receiver reads one kind.
    """
    payload = {
        "lead": lead_payload(lead, stage=change.to_stage, account=account),
        "from": change.from_stage, "to": change.to_stage, "reason": change.reason, "by": change.by,
    }
    return WebhookEvent(type="stage_changed", at=at, payload=payload)


def lead_payload(lead: Lead, *, stage: str, account: str | None) -> dict[str, Any]:
    """The lead as every event about it shows it (stage_changed, score_changed, grade_changed)."""
    return {
        "id": lead.id, "email": lead.email, "score": lead.score, "product_score": lead.product_score,
        "grade": lead.grade, "stage": stage, "account": account,
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def to_json(value: object) -> object:
    """The JSON form of the values json.dumps does not know (its `default`)."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _dumps(value: object, *, sort_keys: bool = False) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys, default=to_json).encode()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_ERROR]


class WebhookSender:
    """Delivers the store's due webhook calls in its own task; `deliver_due` is one pass (tests drive it)."""

    def __init__(
        self, store: Store, webhooks: Mapping[str, WebhookConfig], clock: Clock, *,
        concurrency: int = CONCURRENCY, per_webhook: int = PER_WEBHOOK,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.clock = clock
        self.concurrency = concurrency
        self.per_webhook = per_webhook
        self.delivered = 0  # calls answered 2xx since start
        self.failed = 0  # calls that were not
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._busy: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        """Stop looking for work; calls under way get STOP_GRACE seconds, the rest are retried later."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight:
            _, unfinished = await asyncio.wait(list(self._inflight.values()), timeout=STOP_GRACE)
            for task in unfinished:
                task.cancel()  # not recorded: the delivery stays due and is sent again (at least once)
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """Look at the outbox now (new deliveries were written)."""
        self._wake.set()

    async def deliver_due(self) -> int:
        """Try every delivery due now that a slot is free for, wait for those calls; returns the calls made."""
        started = await self._dispatch()
        await asyncio.gather(*started)
        return len(started)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:  # a locked or broken store: keep the loop, try again a little later
                log.exception("cannot read the webhook outbox")
                await asyncio.sleep(ERROR_PAUSE)
            await self._idle()

    async def _idle(self) -> None:
        woken = asyncio.ensure_future(self._wake.wait())
        slept = asyncio.ensure_future(self.clock.sleep(POLL.total_seconds()))
        try:
            await asyncio.wait({woken, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()
        await asyncio.sleep(MIN_PAUSE)

    async def _dispatch(self) -> list[asyncio.Task[None]]:
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return []
        due = await self.store.due_deliveries(now=self.clock.now(), limit=BATCH, exclude=tuple(self._inflight))
        started: list[asyncio.Task[None]] = []
        for delivery in due:
            if len(started) == free:
                break
            if delivery.id in self._inflight or self._busy[delivery.webhook] >= self.per_webhook:
                continue
            task = asyncio.create_task(self._attempt(delivery), name=f"webhook {delivery.webhook} {delivery.id}")
            self._inflight[delivery.id] = task
            self._busy[delivery.webhook] += 1
            task.add_done_callback(functools.partial(self._finished, delivery))
            started.append(task)
        return started

    def _finished(self, delivery: WebhookDelivery, _: object) -> None:
        self._inflight.pop(delivery.id, None)
        self._busy[delivery.webhook] -= 1
        self._wake.set()  # a slot is free: more may be due

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        try:
            at, started = self.clock.now(), time.monotonic()
            webhook = self.webhooks.get(delivery.webhook)
            if webhook is None:
                status, error = None, f"no [webhooks.{delivery.webhook}] in mailer.toml any more"
            else:
                status, error = await self._post(webhook, delivery)
            duration_ms = round((time.monotonic() - started) * 1000)
            delivered = status is not None and 200 <= status < 300
            attempts = delivery.attempts + 1
            retry = not delivered and webhook is not None and attempts < webhook.max_attempts
            next_attempt_at = self.clock.now() + backoff(attempts) if retry else None
            await self.store.record_delivery_attempt(
                delivery.id, at=at, status=status, error=error, duration_ms=duration_ms,
                delivered=delivered, next_attempt_at=next_attempt_at,
            )
        except Exception:  # the delivery stays due and is tried again
            log.exception("webhook %s: delivery %d could not be recorded", delivery.webhook, delivery.id)
            return
        if delivered:
            self.delivered += 1
            log.debug("webhook %s: delivered %s %s", delivery.webhook, delivery.event_type, delivery.event_id)
            return
        self.failed += 1
        if next_attempt_at is not None:
            log.info("webhook %s: %s %s failed (%s); try %d at %s", delivery.webhook, delivery.event_type,
                     delivery.event_id, error, attempts + 1, next_attempt_at.isoformat(timespec="seconds"))
        else:
            log.warning("webhook %s: gave up on %s %s after %d tries (%s)", delivery.webhook, delivery.event_type,
                        delivery.event_id, attempts, error)

    async def _post(self, webhook: WebhookConfig, delivery: WebhookDelivery) -> tuple[int | None, str]:
        """(HTTP status or None, "" or what went wrong) of one signed call."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(webhook.secret.encode(), delivery.body, int(time.time())),
        }
        try:
            async with self._client().post(
                webhook.url, data=delivery.body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=webhook.timeout),
            ) as response:
                if 200 <= response.status < 300:
                    return response.status, ""
                said = (await response.content.read(200)).decode("utf-8", "replace")
                return response.status, _one_line(f"HTTP {response.status} {response.reason or ''}: {said}")
        except TimeoutError:
            return None, f"no answer within {webhook.timeout:g}s"
        except (aiohttp.ClientError, OSError) as error:
            return None, _one_line(f"{type(error).__name__}: {error}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no proxies from the environment, no cookies: each call stands alone
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency), cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session
