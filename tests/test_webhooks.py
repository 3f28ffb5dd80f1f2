"""Webhooks: signatures, the retry schedule, [webhooks] config, and delivery to a real local receiver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_config
from mailer.clock import FakeClock
from mailer.config import Config, WebhookConfig, load_config
from mailer.errors import ConfigError
from mailer.scoremodel import NewDelivery, WebhookEvent
from mailer.sqlitestore import SQLiteStore
from mailer.webhooks import (
    SIGNATURE_HEADER,
    WebhookSender,
    backoff,
    deliveries_for,
    sign,
    verify,
)

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
SECRET = "whsec-0123456789abcdef"
STAGE_EVENT = WebhookEvent(
    type="stage_changed", at=NOW,
    payload={"lead": {"id": 1, "email": "ann@acme.example", "stage": "MQL"}, "from": "lead", "to": "MQL",
             "reason": "score 55 ≥ 50", "by": "rules"},
)


# -- a real receiver on loopback, its answers scripted per call ----------------------------


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 answering each call as scripted: ok, fail, hang or redirect."""

    script: list[str] = field(default_factory=list)  # consumed call by call; then `then`
    then: str = "ok"
    hang_seconds: float = 30.0
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    port: int = 0

    def url(self, path: str = "/hooks/mailer") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def verified(self, call: Call, secret: str = SECRET) -> bool:
        return verify(secret.encode(), call.body, call.headers.get(SIGNATURE_HEADER, ""), now=int(time.time()))

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(Call(request.path, dict(request.headers), await request.read(), time.monotonic()))
        action = self.script.pop(0) if self.script else self.then
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if action == "hang":
                await asyncio.sleep(self.hang_seconds)
            if action == "fail":
                return web.Response(status=500, text="the CRM is down\r\nfor maintenance")
            if action == "redirect":
                return web.Response(status=302, headers={"Location": "/elsewhere"})
            return web.Response(status=204)
        finally:
            self.in_flight -= 1


async def receiving(receiver: Receiver) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.port = runner.addresses[0][1]
    return runner


@dataclass
class Outbox:
    store: SQLiteStore
    clock: FakeClock
    config: Config
    sender: WebhookSender

    async def send(self, event: WebhookEvent = STAGE_EVENT) -> list[NewDelivery]:
        """Write the event's deliveries to the outbox as the engine does, due now."""
        deliveries = deliveries_for(event, self.config.webhooks)
        await self.store.apply_scoring((), done=(), triggers=(), deliveries=deliveries, now=self.clock.now())
        return deliveries

    async def only(self, webhook: str = "crm") -> Any:
        (delivery,) = await self.store.deliveries(webhook=webhook)
        return delivery


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    scripted = Receiver()
    runner = await receiving(scripted)
    yield scripted
    await runner.cleanup()


async def outbox_for(tmp_path: Path, store: SQLiteStore, webhooks: dict[str, dict[str, object]]) -> Outbox:
    config = make_config(tmp_path, 2525, webhooks=webhooks)  # type: ignore[arg-type]
    clock = FakeClock(NOW)
    return Outbox(store, clock, config, WebhookSender(store, config.webhooks, clock))


@pytest.fixture
async def outbox(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Outbox]:
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        box = await outbox_for(tmp_path, store, {
            "crm": {"url": receiver.url(), "secret": SECRET, "timeout": 0.5, "max_attempts": 4},
        })
        try:
            yield box
        finally:
            await box.sender.stop()


# -- signatures --------------------------------------------------------------------------------


def test_a_signature_verifies_for_exactly_the_signed_body() -> None:
    """A header from sign() verifies for its body and secret within the tolerance."""
    header = sign(b"s" * 20, b'{"a":1}', 1_767_603_600)
    assert header.startswith("t=1767603600,v1=")
    assert verify(b"s" * 20, b'{"a":1}', header, now=1_767_603_600 + 299)


def test_a_changed_body_secret_or_stale_timestamp_fails() -> None:
    """One changed byte, another secret, or a call more than 5 minutes old does not verify."""
    header = sign(b"s" * 20, b'{"a":1}', 1_000_000)
    assert not verify(b"s" * 20, b'{"a":2}', header, now=1_000_000)
    assert not verify(b"t" * 20, b'{"a":1}', header, now=1_000_000)
    assert not verify(b"s" * 20, b'{"a":1}', header, now=1_000_000 + 301)
    assert not verify(b"s" * 20, b'{"a":1}', header, now=1_000_000 - 301)


def test_one_matching_signature_of_several_is_enough() -> None:
    """A header with several v1 values (a rotated secret) verifies when one of them matches."""
    good = sign(b"new-secret-16chars", b"x", 50).split(",")[1]
    assert verify(b"new-secret-16chars", b"x", f"t=50,v1={'0' * 64},{good}", now=50)


@pytest.mark.parametrize("header", ["", "t=50", "v1=abc", "t=abc,v1=00", "t=-5,v1=00", "garbage", "t=²,v1=00"])
def test_malformed_headers_do_not_verify(header: str) -> None:
    """A header without a numeric t and a v1 never verifies (and never raises)."""
    assert not verify(b"k" * 16, b"x", header, now=50)


@given(body=st.binary(max_size=300), secret=st.binary(min_size=16, max_size=64), timestamp=st.integers(0, 2**40),
       flip=st.integers(min_value=0))
def test_signatures_cover_every_byte(body: bytes, secret: bytes, timestamp: int, flip: int) -> None:
    """Any body verifies with its own signature, and changing any one of its bytes breaks it."""
    header = sign(secret, body, timestamp)
    assert verify(secret, body, header, now=timestamp)
    if body:
        index = flip % len(body)
        changed = body[:index] + bytes([body[index] ^ 1]) + body[index + 1:]
        assert not verify(secret, changed, header, now=timestamp)


@given(header=st.text(max_size=200))
def test_arbitrary_headers_never_raise(header: str) -> None:
    """verify() answers False, never an exception, for any header text a caller sends."""
    assert verify(b"k" * 16, b"x", header, now=0) in (True, False)


# -- the retry schedule and the outbox rows ------------------------------------------------------


def test_backoff_grows_to_a_day() -> None:
    """Retries wait 30s, 2m, 10m, 30m, 1h, 2h, 4h, then double up to a day and stay there."""
    minutes = [backoff(n) / timedelta(minutes=1) for n in range(1, 12)]
    assert minutes == [0.5, 2, 10, 30, 60, 120, 240, 480, 960, 1440, 1440]
    assert backoff(10_000) == timedelta(days=1)
    with pytest.raises(ValueError):
        backoff(0)


def test_deliveries_go_to_the_webhooks_that_want_the_type(tmp_path: Path) -> None:
    """One delivery per webhook listing the event's type; none for a webhook that does not."""
    config = make_config(tmp_path, 2525, webhooks={
        "crm": {"url": "https://crm.example/h", "secret": SECRET},
        "sfa": {"url": "https://sfa.example/h", "secret": SECRET, "events": ["stage_changed", "score_changed"]},
        "forms": {"url": "https://forms.example/h", "secret": SECRET, "events": ["form_submitted"]},
    })
    deliveries = deliveries_for(STAGE_EVENT, config.webhooks)
    assert [d.webhook for d in deliveries] == ["crm", "sfa"]
    assert deliveries_for(WebhookEvent("score_changed", NOW, {}), config.webhooks)[0].webhook == "sfa"
    assert deliveries_for(WebhookEvent("page_visit", NOW, {}), config.webhooks) == []


def test_the_body_is_the_event_as_json_with_a_stable_id() -> None:
    """The body carries id, type, created_at and data; the same event always gets the same id."""
    hooks = {"crm": WebhookConfig(url="https://crm.example/h", secret=SECRET)}
    (first,) = deliveries_for(STAGE_EVENT, hooks)
    body = json.loads(first.body)
    assert body == {"id": first.event_id, "type": "stage_changed", "created_at": "2026-01-05T09:00:00+00:00",
                    "data": dict(STAGE_EVENT.payload)}
    assert first.event_id.startswith("evt_")
    assert deliveries_for(STAGE_EVENT, hooks)[0].event_id == first.event_id
    later = WebhookEvent(STAGE_EVENT.type, NOW + timedelta(seconds=1), STAGE_EVENT.payload)
    assert deliveries_for(later, hooks)[0].event_id != first.event_id


# -- [webhooks.NAME] and [api] in mailer.toml -----------------------------------------------------


def test_webhook_and_api_sections_are_read(tmp_path: Path) -> None:
    """[webhooks.crm] and [api] are read with their defaults for keys not written."""
    (tmp_path / "mailer.toml").write_text(
        '[api]\nlisten = "127.0.0.1:9000"\n'
        '[webhooks.crm]\nurl = "https://crm.example/hooks"\nsecret = "0123456789abcdef"\nevents = ["stage_changed", "form_submitted"]\n'
    )
    config = load_config(tmp_path / "mailer.toml")
    assert config.api.listen == "127.0.0.1:9000" and config.api.enabled
    crm = config.webhooks["crm"]
    assert (crm.url, crm.secret, crm.events) == ("https://crm.example/hooks", "0123456789abcdef", ("stage_changed", "form_submitted"))
    assert (crm.timeout, crm.max_attempts) == (10.0, 8)
    assert load_config(tmp_path / "mailer.toml").webhooks["crm"] == crm
    (tmp_path / "mailer.toml").write_text("")
    empty = load_config(tmp_path / "mailer.toml")
    assert empty.webhooks == {} and empty.api.listen == "127.0.0.1:8081"


@pytest.mark.parametrize(
    ("lines", "line", "field", "words"),
    [
        ('url = "ftp://crm.example/x"\nsecret = "0123456789abcdef"', 3, "webhooks.crm.url", "not an http(s) URL"),
        ('url = "https:///nohost"\nsecret = "0123456789abcdef"', 3, "webhooks.crm.url", "not an http(s) URL"),
        ('url = "https://crm.example/x"\nsecret = "short"', 4, "webhooks.crm.secret", "shorter than 16"),
        ('url = "https://crm.example/x"\nsecret = "0123456789abcdef"\nevents = ["stage_change"]', 5,
         "webhooks.crm.events", "did you mean stage_changed"),
        ('url = "https://crm.example/x"\nsecret = "0123456789abcdef"\nevents = "stage_changed"', 5,
         "webhooks.crm.events", "not a list"),
        ('secret = "0123456789abcdef"', 2, "webhooks.crm", "no url"),
        ('url = "https://crm.example/x"\nsecret = "0123456789abcdef"\nmax_attempts = 0', 5,
         "webhooks.crm.max_attempts", "at least 1"),
        ('url = "https://crm.example/x"\nsecret = "0123456789abcdef"\ntimeout = 0', 5, "webhooks.crm.timeout", "more than 0"),
        ('url = "https://crm.example/x"\nsecret = "0123456789abcdef"\nretries = 3', 5, "webhooks.crm.retries", "unknown key"),
    ],
)
def test_webhook_mistakes_name_the_file_line_and_key(tmp_path: Path, lines: str, line: int, field: str, words: str) -> None:
    """Each mistake in a [webhooks.NAME] table is a ConfigError with its line, key and what to write."""
    (tmp_path / "mailer.toml").write_text(f"# webhooks\n[webhooks.crm]\n{lines}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "mailer.toml")
    error = caught.value
    assert (error.file, error.line, error.field) == (str(tmp_path / "mailer.toml"), line, field)
    assert words in str(error)


def test_a_bad_api_listen_address_is_refused(tmp_path: Path) -> None:
    """[api] listen must be HOST:PORT, named with its line."""
    (tmp_path / "mailer.toml").write_text('[api]\nlisten = "8081"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "mailer.toml")
    assert (caught.value.line, caught.value.field) == (2, "api.listen")


# -- delivery to a real receiver ------------------------------------------------------------------


async def test_a_delivered_call_verifies_at_the_receiver(outbox: Outbox, receiver: Receiver) -> None:
    """The receiver gets the exact body with a signature it verifies; the log holds one 2xx try."""
    (queued,) = await outbox.send()
    assert await outbox.sender.deliver_due() == 1
    (call,) = receiver.calls
    assert call.body == queued.body and receiver.verified(call)
    assert call.headers["Content-Type"] == "application/json"
    delivery = await outbox.only()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 204)
    (attempt,) = await outbox.store.delivery_attempts(delivery.id)
    assert attempt[:3] == (NOW, 204, "")
    assert await outbox.sender.deliver_due() == 0  # delivered once, never again


async def test_a_receiver_failing_twice_gets_the_event_on_the_third_try(outbox: Outbox, receiver: Receiver) -> None:
    """500, 500, then 2xx: retried after 30s and 2m of clock time; the log shows all three tries."""
    receiver.script = ["fail", "fail"]
    await outbox.send()
    assert await outbox.sender.deliver_due() == 1
    delivery = await outbox.only()
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == ("pending", 1, NOW + timedelta(seconds=30))
    assert "HTTP 500" in delivery.last_error and "\n" not in delivery.last_error
    assert await outbox.sender.deliver_due() == 0  # not due before its backoff
    await outbox.clock.advance(seconds=30)
    assert await outbox.sender.deliver_due() == 1
    assert (await outbox.only()).next_attempt_at == NOW + timedelta(seconds=30) + timedelta(minutes=2)
    await outbox.clock.advance(minutes=2)
    assert await outbox.sender.deliver_due() == 1
    delivery = await outbox.only()
    assert (delivery.state, delivery.attempts) == ("delivered", 3)
    attempts = await outbox.store.delivery_attempts(delivery.id)
    assert [status for _, status, _, _ in attempts] == [500, 500, 204]
    assert [at for at, _, _, _ in attempts] == [NOW, NOW + timedelta(seconds=30), NOW + timedelta(seconds=150)]
    ids = {json.loads(call.body)["id"] for call in receiver.calls}
    assert len(ids) == 1 and all(receiver.verified(call) for call in receiver.calls)


async def test_a_hanging_receiver_times_out_and_is_retried(outbox: Outbox, receiver: Receiver) -> None:
    """A receiver that never answers is cut off at the webhook's timeout, logged, and retried later."""
    receiver.script = ["hang"]
    await outbox.send()
    started = time.monotonic()
    await outbox.sender.deliver_due()
    assert 0.4 < time.monotonic() - started < 3
    delivery = await outbox.only()
    assert (delivery.state, delivery.last_status, delivery.last_error) == ("pending", None, "no answer within 0.5s")
    (attempt,) = await outbox.store.delivery_attempts(delivery.id)
    assert attempt[1] is None and 400 <= attempt[3] < 3000
    await outbox.clock.advance(seconds=30)
    await outbox.sender.deliver_due()
    assert (await outbox.only()).state == "delivered" and len(receiver.calls) == 2


async def test_gives_up_after_max_attempts(outbox: Outbox, receiver: Receiver) -> None:
    """A receiver that always fails gets max_attempts tries; then the delivery is failed and left alone."""
    receiver.then = "fail"
    await outbox.send()
    for wait in (timedelta(0), backoff(1), backoff(2), backoff(3)):
        await outbox.clock.advance(wait)
        assert await outbox.sender.deliver_due() == 1
    delivery = await outbox.only()
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == ("failed", 4, None)
    await outbox.clock.advance(days=30)
    assert await outbox.sender.deliver_due() == 0 and len(receiver.calls) == 4


async def test_a_redirect_is_a_failure_and_is_not_followed(outbox: Outbox, receiver: Receiver) -> None:
    """A 302 is logged as a failed try; the sender does not follow it anywhere."""
    receiver.script = ["redirect"]
    await outbox.send()
    await outbox.sender.deliver_due()
    delivery = await outbox.only()
    assert (delivery.state, delivery.last_status) == ("pending", 302)
    assert [call.path for call in receiver.calls] == ["/hooks/mailer"]


async def test_a_removed_webhook_fails_its_deliveries_with_a_reason(tmp_path: Path, receiver: Receiver) -> None:
    """A delivery whose [webhooks.NAME] is gone from mailer.toml is failed, saying so, without a call."""
    async with SQLiteStore(tmp_path / "mailer.db") as store:
        box = await outbox_for(tmp_path, store, {"old": {"url": receiver.url(), "secret": SECRET}})
        await box.send()
        sender = WebhookSender(store, {}, box.clock)
        assert await sender.deliver_due() == 1
        await sender.stop()
        delivery = await box.only("old")
    assert delivery.state == "failed" and "[webhooks.old]" in delivery.last_error and receiver.calls == []


async def test_the_loop_stays_responsive_while_a_receiver_hangs(tmp_path: Path) -> None:
    """While one receiver hangs, a 10 ms ticker keeps its pace and another webhook's call goes out at once."""
    slow, fast = Receiver(then="hang", hang_seconds=30), Receiver()
    runners = [await receiving(slow), await receiving(fast)]
    try:
        async with SQLiteStore(tmp_path / "mailer.db") as store:
            box = await outbox_for(tmp_path, store, {
                "slow": {"url": slow.url(), "secret": SECRET, "timeout": 1.5},
                "fast": {"url": fast.url(), "secret": SECRET},
            })
            for number in range(10):  # ten events, each to both webhooks
                await box.send(WebhookEvent("stage_changed", NOW + timedelta(seconds=number), {"n": number}))
            gaps: list[float] = []

            async def tick() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()

            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            await box.sender.start()
            box.sender.wake()
            while len(fast.calls) < 10 and time.monotonic() - started < 5:
                await asyncio.sleep(0.02)
            fast_done = time.monotonic() - started
            await asyncio.sleep(0.3)
            ticker.cancel()
            stopping = time.monotonic()
            await box.sender.stop()
            stop_took = time.monotonic() - stopping
            pending = await store.deliveries(webhook="slow")
    finally:
        for runner in runners:
            await runner.cleanup()
    assert len(fast.calls) == 10 and fast_done < 1.0  # not held up by the 1.5 s timeouts next door
    assert slow.most_in_flight == 4  # PER_WEBHOOK: the hanging receiver never holds every slot
    assert max(gaps) < 0.1, f"the event loop stalled for {max(gaps):.3f}s"
    assert stop_took < 2.5  # calls under way finish (time out) within the grace, then it stops
    assert all(d.state == "pending" for d in pending)
