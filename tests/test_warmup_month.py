"""A 30-day warm-up of one new sending IP, run by the real daemon on an accelerated clock.

The daemon (`Daemon.serve`) relays through a loopback `FaultServer` from one warming IP, with
a real SQLite file, to sign-ups at gmail.com, outlook.com, yahoo.com, icloud.com and two
company domains (relay mode knows the provider by the recipient domain; each company is a
site of `other`). More people sign up each day than the day's cap allows, so the caps bind
every day. The clock moves hour by hour, in short steps inside an hour while mail is due in
it, so a month takes seconds. On day 10 Yahoo answers ``421 4.7.0 [TSS04]`` for two hours;
the daemon is stopped and started again mid-day on days 3 and 10.

What arrived at the server, counted by the clock time of arrival, is checked against the
plan: per day and hour for the IP, per day and hour for each provider.

A second, shorter run proves that days held by the warm-up do not count toward the retry
give-up time: it counts from a message's first SMTP attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from conftest import ONE_STEP, make_config, write_workspace
from mailer.clock import FakeClock
from mailer.config import Config
from mailer.daemon import Daemon
from mailer.leads import Lead
from mailer.lifecycle import MessageState
from mailer.sqlitestore import SQLiteStore
from mailer.store import EnrollmentUpdate, NewMessage, Outcome, TrackingEvent
from mailer.testing import FaultServer, reply_with
from mailer.timestamps import from_ms, ms
from mailer.warmup import WarmupPlan, default_schedule

START = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)  # a Monday: the new IP's first day
DAYS = 30
SCHEDULE = default_schedule(first=20, growth=1.1, days=DAYS)  # 20 a day, then ×1.1 a day: 320 on day 30
SPREAD_HOURS = 2  # the IP's hourly cap is half its day's
SHARES = {"gmail": 0.45, "microsoft": 0.35, "yahoo": 0.25, "apple": 0.05, "other": 0.2}
# recipient domain → the warm-up budget's provider key (relay mode: by the recipient domain;
# an unknown company is a site of `other`, throttled on its own)
DOMAINS = {
    "gmail.com": "gmail", "outlook.com": "microsoft", "yahoo.com": "yahoo", "icloud.com": "apple",
    "kabushiki.co.jp": "other:kabushiki.co.jp", "acme-corp.com": "other:acme-corp.com",
}
# each day's new sign-ups, as parts of that day's cap: a little more than the cap in all (a
# backlog the IP's cap holds back every day), and more than their shares for Yahoo and Apple
DEMAND = {
    "gmail.com": 0.42, "outlook.com": 0.28, "yahoo.com": 0.27, "icloud.com": 0.06, "kabushiki.co.jp": 0.02, "acme-corp.com": 0.02,
}
# Yahoo's deferral for an IP sending more than it likes (https://senders.yahooinc.com/smtp-error-codes/)
YAHOO_421 = "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or user complaints"
DEFERRAL_DAY, DEFERRAL_HOURS = 10, (0, 2)  # Yahoo defers every message from 00:00 to 02:00 on day 10
RESTARTS = {3: timedelta(hours=1, minutes=30), DEFERRAL_DAY: timedelta(hours=1)}  # day → time of day, mid-sending
DAY_STARTS = [START + timedelta(days=n) for n in range(DAYS)]
DEFERRAL_START = DAY_STARTS[DEFERRAL_DAY - 1]
# The budget lets an hour's cap out over at least 15 minutes (warmupbudget.PACE_MINUTES): steps of
# 4 minutes while mail is due, 15 an hour, can use all of it
STEP = timedelta(minutes=4)
HISTORY = "spring-news"  # the scenario that mailed the engaged leads from the old IP, before the warm-up


@dataclass(frozen=True)
class Arrival:
    at: datetime  # the clock's time when the server accepted the message
    recipient: str
    message_id: str | None

    @property
    def provider(self) -> str:
        return DOMAINS[self.recipient.rpartition("@")[2]]


class WatchedClock(FakeClock):
    """A FakeClock that notes when something last began to wait on it: the daemon, idle."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.idle_at: datetime | None = None

    async def sleep_until(self, when: datetime) -> None:
        if when > self.now():
            self.idle_at = self.now()
        await super().sleep_until(when)


class ClockedServer(FaultServer):
    """A FaultServer that also notes the clock's time at each accepted message."""

    def __init__(self, clock: WatchedClock, **options: Any) -> None:
        super().__init__(**options)
        self.clock = clock
        self.arrivals: list[Arrival] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = self.clock.now()
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            message_id = self.messages[-1].message_id
            self.arrivals += [Arrival(at, str(address), message_id) for address in envelope.rcpt_tos]
        return reply


def workspace(root: Path, port: int, **warmup_options: Any) -> Config:
    write_workspace(root, ONE_STEP)
    warmup = {
        "enabled": True, "schedule": list(SCHEDULE), "spread_hours": SPREAD_HOURS, "min_hourly": 1,
        "shares": SHARES, "clean_period": "30m", "repeat_window": "30m", **warmup_options,
    }
    return make_config(
        root, port, warmup=warmup,
        ips={"fresh": {"address": "127.0.0.1", "helo": "mail.acme.example", "warmup_start": START.date().isoformat()}},
        tracking={"enabled": False}, api={"enabled": False}, scoring={"enabled": False},
    )


def signups(day: int) -> list[Lead]:
    """The day's new sign-ups, by DEMAND of the day's cap."""
    cap = SCHEDULE[day - 1]
    return [
        Lead(email=f"d{day:02d}n{n:03d}@{domain}", first_name=f"Reader{day}-{n}", company="Co")
        for domain, part in DEMAND.items() for n in range(max(1, round(cap * part)))
    ]


def engaged_readers() -> list[Lead]:
    """One reader per recipient domain who opened and clicked the old IP's mail: signed up on day 1, last."""
    return [Lead(email=f"fan@{domain}", first_name="Fan", company="Co") for domain in DOMAINS]


async def engaged_history(store: SQLiteStore, readers: list[Lead]) -> None:
    """Each reader got the spring newsletter from the old IP a month ago, and opened and clicked it."""
    before = START - timedelta(days=30)
    ids = []
    for reader in readers:
        found = await store.get_lead(reader.email)
        assert found is not None and found.id is not None
        ids.append(found.id)
    await store.enroll(scenario=HISTORY, lead_ids=ids, due_at=before, now=before)
    due = await store.due_enrollments(now=before, limit=100, scenarios=[HISTORY])
    await store.apply_updates([
        EnrollmentUpdate(
            enrollment_id=e.id, lead_id=e.lead.id or 0, scenario=HISTORY, step_index=1, state="completed", due_at=None,
            event="queued", detail={"step": "spring"}, message=NewMessage(f"<spring.{e.id}@acme.example>", "spring", before),
        )
        for e in due
    ], now=before)  # fmt: skip
    claimed = await store.claim_messages(now=before, limit=100, lease=timedelta(minutes=10))
    await store.record_outcomes([Outcome(m.id, m.lead.id or 0, MessageState.SENT, before) for m in claimed])
    read = before + timedelta(hours=2)
    await store.record_tracking_events(
        [TrackingEvent(read, kind, m.id, machine=False) for m in claimed for kind in ("opened", "clicked")]
    )


@dataclass
class Run:
    """The daemon (started again on restarts), its store file, the clock and the server."""

    config: Config
    clock: WatchedClock
    server: ClockedServer
    daemon: Daemon | None = None
    store: SQLiteStore | None = None
    task: asyncio.Task[object] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    instants: int = 0  # clock positions the daemon was left to act at
    restarts: int = 0

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Committed data, read through a connection of the test's own."""
        with sqlite3.connect(self.config.store) as connection:
            return list(connection.execute(sql, params))

    def owed(self) -> int:
        """Messages in flight, or due and not yet attempted: what the daemon owes right now."""
        [(count,)] = self.rows(
            "SELECT count(*) FROM messages WHERE state = 'sending' "
            "OR (state IN ('queued', 'deferred') AND next_attempt_at <= ?)",
            (ms(self.clock.now()),),
        )
        return int(count)

    def next_due(self) -> datetime | None:
        [(at,)] = self.rows("SELECT min(next_attempt_at) FROM messages WHERE state IN ('queued', 'deferred')")
        return from_ms(at) if at is not None else None

    async def start(self) -> None:
        self.store = SQLiteStore(self.config.store)
        await self.store.open()
        self.daemon = Daemon(config=self.config, store=self.store, clock=self.clock, rng=random.Random(7 + self.restarts))
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.daemon.serve(self.stop))

    async def halt(self) -> None:
        assert self.task is not None and self.store is not None
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.store.close()

    async def restart(self) -> None:
        await self.halt()
        self.restarts += 1
        await self.start()

    async def settle(self) -> None:
        """Real time for the daemon to do what is due at this clock time: until it went idle at
        this time with nothing due or in flight, and its outcomes are written."""
        assert self.daemon is not None
        deadline = time.monotonic() + 30
        while not (self.clock.idle_at == self.clock.now() and self.owed() == 0):
            assert time.monotonic() < deadline, f"the daemon is still busy at {self.clock.now()}"
            await asyncio.sleep(0.001)
            await self.daemon.flush()
        self.instants += 1

    async def advance_to(self, end: datetime) -> None:
        """Move the clock to `end`: in short steps while mail is due before it, then straight on."""
        while self.clock.now() < end:
            await self.settle()
            due = self.next_due()
            now = self.clock.now()
            target = end if due is None or due >= end else min(end, max(now + STEP, due))
            await self.clock.advance(target - now)


@asynccontextmanager
async def running(tmp_path: Path, leads: list[Lead], *, engaged: list[Lead], **warmup_options: Any) -> AsyncIterator[Run]:
    """The daemon serving the leads (the engaged ones with their history) from START on."""
    clock = WatchedClock(START)
    async with ClockedServer(clock, seed=7) as server:
        config = workspace(tmp_path, server.port, **warmup_options)
        async with SQLiteStore(config.store) as store:
            await store.upsert_leads([*leads, *engaged], list_name="signups", now=START)
            if engaged:
                await engaged_history(store, engaged)
        run = Run(config, clock, server)
        await run.start()
        try:
            yield run
        finally:
            await run.halt()


IP = "ip"  # the sending IP's own count, beside each provider's


def counted(arrivals: list[Arrival], *, hourly: bool) -> Counter[tuple[datetime, str]]:
    """Arrivals per clock day or hour (keyed by its start), per provider and for the whole IP."""
    counts: Counter[tuple[datetime, str]] = Counter()
    for arrival in arrivals:
        when = arrival.at.replace(minute=0, second=0, microsecond=0)
        when = when if hourly else when.replace(hour=0)
        counts[(when, arrival.provider)] += 1
        counts[(when, IP)] += 1
    return counts


def cap_of(plan: WarmupPlan, provider: str, when: datetime, *, hourly: bool) -> int | None:
    caps = plan.caps(plan.ip("fresh"), provider if provider != IP else "other", when.date())
    if provider == IP:
        return caps.ip_hour if hourly else caps.ip_day
    return caps.hour if hourly else caps.day


def over_caps(plan: WarmupPlan, arrivals: list[Arrival]) -> list[str]:
    """Every day and clock hour, of the IP or of one provider, in which more arrived than its cap."""
    found = []
    for hourly in (False, True):
        for (when, provider), count in counted(arrivals, hourly=hourly).items():
            cap = cap_of(plan, provider, when, hourly=hourly)
            if cap is not None and count > cap:
                found.append(f"{provider} {when:%m-%d %H:%M}{'' if hourly else ' day'}: {count} > {cap}")
    return found


def busiest_hours(plan: WarmupPlan, arrivals: list[Arrival], provider: str) -> list[tuple[int, int | None]]:
    """Each day's busiest clock hour for `provider` (or the IP), with that hour's cap."""
    hours = counted(arrivals, hourly=True)
    busiest = [max(n for (when, p), n in hours.items() if p == provider and when.date() == day.date()) for day in DAY_STARTS]
    return [(n, cap_of(plan, provider, day, hourly=True)) for n, day in zip(busiest, DAY_STARTS)]


DECISION = re.compile(r"^warm-up: fresh → (?P<provider>\S+): (?P<what>.*)$")


@dataclass(frozen=True)
class Restarted:
    """What a daemon started again mid-day found in the store."""

    day: int
    before: int  # attempts made that day before the stop, as the server saw them
    used: int  # the new daemon's count of the IP's attempts that day, after its first step
    seen: int  # attempts that day, as the server saw them, at that time
    yahoo_multiplier: float


async def live_a_month(run: Run) -> list[Restarted]:
    """Day by day, hour by hour: Yahoo's deferrals, the restarts, and the next day's sign-ups."""
    server = run.server
    restarted = []

    def attempts_on(day: date) -> int:
        refused = sum(1 for f in server.fired if f.fault.reply == YAHOO_421)  # only on the deferral day
        return sum(1 for a in server.arrivals if a.at.date() == day) + (refused if day == DEFERRAL_START.date() else 0)

    for day in range(1, DAYS + 1):
        day_start = START + timedelta(days=day - 1)
        for hour in range(24):
            if day == DEFERRAL_DAY and hour == DEFERRAL_HOURS[0]:
                server.inject(reply_with("RCPT", YAHOO_421, recipient="@yahoo.com"))
            if day == DEFERRAL_DAY and hour == DEFERRAL_HOURS[1]:
                server.clear()
            hour_start = day_start + timedelta(hours=hour)
            restart_at = day_start + RESTARTS.get(day, timedelta(days=1))
            if hour_start <= restart_at < hour_start + timedelta(hours=1):
                await run.advance_to(restart_at)
                before = attempts_on(day_start.date())
                await run.restart()
                await run.settle()
                assert run.daemon is not None
                budget = run.daemon.outbound.budget
                [status] = [r for r in budget.status(run.clock.now()) if r.provider == "yahoo"]
                seen = attempts_on(day_start.date())
                restarted.append(Restarted(day, before, status.ip_day_used, seen, status.multiplier))
            await run.advance_to(hour_start + timedelta(hours=1))
        if day < DAYS:  # the next day's sign-ups, entered by the daemon within its entry_interval
            assert run.store is not None
            await run.store.upsert_leads(signups(day + 1), list_name="signups", now=run.clock.now())
    await run.settle()
    return restarted


async def test_a_month_of_warm_up_keeps_every_cap_ramps_up_recovers_from_deferrals_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """30 days of the real daemon on a fake clock: no day or hour above the IP's or a provider's cap, the schedule's ramp sent on every clean day, engaged readers first, Yahoo's 421s slow it and it recovers step by step, restarts keep the day's use, every message sent or still scheduled."""
    caplog.set_level(logging.INFO, logger="mailer")
    began = time.perf_counter()
    async with running(tmp_path, signups(1), engaged=engaged_readers()) as run:
        restarted = await live_a_month(run)
        assert run.store is not None
        throttles = await run.store.warmup_throttles()
    wall = time.perf_counter() - began
    server = run.server
    arrivals = server.arrivals
    plan = WarmupPlan.from_config(run.config)
    daily = counted(arrivals, hourly=False)
    sent_per_day = [daily[(day, IP)] for day in DAY_STARTS]
    over = over_caps(plan, arrivals)
    [(holds,)] = run.rows("SELECT count(*) FROM events WHERE type = 'deferred' AND json_extract(data, '$.code') IS NULL")
    print(
        f"warm-up month: {DAYS} days, sent/day first {sent_per_day[0]} last {sent_per_day[-1]} "
        f"(schedule {SCHEDULE[0]}→{SCHEDULE[-1]}), total {len(arrivals)}, max over cap {len(over)}, "
        f"restarts {run.restarts}, clock steps {run.instants}, messages held (not attempted) {holds}, wall {wall:.1f} s"
    )

    # no day or hour over a cap, counted from what the server received, by the clock at arrival
    assert over == [], over[:10]

    # the ramp: every clean day sends exactly its cap (the cap binds), so volume grows as scheduled;
    # the IP's hourly cap holds an hour back every clean day, Apple's share (below its demand) every day
    clean = [n for n in range(DAYS) if n + 1 != DEFERRAL_DAY]
    assert [sent_per_day[n] for n in clean] == [SCHEDULE[n] for n in clean], sent_per_day
    assert sent_per_day[DEFERRAL_DAY - 1] < SCHEDULE[DEFERRAL_DAY - 1], "Yahoo's refused attempts count against the day"
    busiest = busiest_hours(plan, arrivals, IP)
    assert all(busiest[n][0] == busiest[n][1] for n in clean), busiest
    apple = [(daily[(day, "apple")], cap_of(plan, "apple", day, hourly=False)) for day in DAY_STARTS]
    assert all(sent == cap for sent, cap in apple), apple

    # engaged readers first: on day 1 each provider's first message went to its engaged reader
    first_day = [a for a in arrivals if a.at.date() == START.date()]  # in the order they arrived
    for provider in DOMAINS.values():
        first = next(a for a in first_day if a.provider == provider)
        assert first.recipient.startswith("fan@"), (provider, first)

    # restarts mid-day: the new daemon went on counting the day's use, and Yahoo's throttle
    assert [r.day for r in restarted] == list(RESTARTS) and run.restarts == len(RESTARTS)
    for r in restarted:
        assert r.before > 0 and r.used == r.seen, r
    assert [r.yahoo_multiplier < 1 for r in restarted] == [False, True], restarted

    # Yahoo: slowed by its 421s, then raised step by step back to the schedule; decisions logged with reasons
    decisions = [m.groupdict() for r in caplog.records if (m := DECISION.match(r.getMessage()))]
    assert {d["provider"] for d in decisions} == {"yahoo"}, decisions
    whats = [d["what"] for d in decisions]
    assert whats[0].startswith("slowed to ×0.50 (refusal 1 within 30m): 421 4.7.0 [TSS04]"), whats
    last_refusal = max(i for i, w in enumerate(whats) if w.startswith(("slowed", "paused")))
    recovery = whats[last_refusal + 1 :]
    raised = re.compile(r"(raised to ×0\.\d\d|back to the schedule \(×1\.00\)) after \S+ without a refusal$")
    assert all(raised.match(w) for w in recovery), recovery
    steps = [float(w.split("×")[1][:4]) for w in recovery]
    assert len(steps) >= 2 and steps == sorted(set(steps)) and steps[-1] == 1.0, recovery
    assert throttles[("fresh", "yahoo")].multiplier == 1.0
    yahoo = counted(arrivals, hourly=True)
    refusing = [DEFERRAL_START + timedelta(hours=h) for h in range(*DEFERRAL_HOURS)]
    assert [yahoo[(hour, "yahoo")] for hour in refusing] == [0] * len(refusing)
    after = refusing[-1] + timedelta(hours=1)
    assert yahoo[(after, "yahoo")] < (cap_of(plan, "yahoo", after, hourly=True) or 0), "still slowed after the 421s"
    assert sum(1 for f in server.fired if f.fault.reply == YAHOO_421) >= 2
    fullest = busiest_hours(plan, arrivals, "yahoo")
    # its full hourly cap is more than any slowed rate lets through (×0.75 of 7 is 5)
    assert any(n == cap for n, cap in fullest[DEFERRAL_DAY : DEFERRAL_DAY + 3]), f"Yahoo fills its hourly cap again: {fullest}"

    # nothing lost: every message sent once (as the server saw it) or still scheduled
    states = dict(run.rows("SELECT state, count(*) FROM messages WHERE scenario = 'announce' GROUP BY state"))
    assert set(states) <= {"sent", "queued", "deferred"}, states
    unscheduled = "SELECT count(*) FROM messages WHERE state IN ('queued', 'deferred') AND next_attempt_at IS NULL"
    assert run.rows(unscheduled) == [(0,)]
    assert sum(states.values()) == sum(len(signups(d)) for d in range(1, DAYS + 1)) + len(DOMAINS)
    sent = {str(r[0]) for r in run.rows("SELECT message_id FROM messages WHERE scenario = 'announce' AND state = 'sent'")}
    assert sent == {a.message_id for a in arrivals} and len(arrivals) == len(sent) and server.duplicates == 0


async def test_a_message_held_by_the_warm_up_for_days_is_still_retried_after_its_first_deferral(tmp_path: Path) -> None:
    """A message that waited five days for warm-up budget (never attempted), then deferred once, is retried and sent, not expired."""
    leads = [Lead(email=f"reader{n}@gmail.com", first_name=f"Reader{n}") for n in range(7)]
    async with running(tmp_path, leads, engaged=[], schedule=[1] * 10, spread_hours=1, shares={"gmail": 1.0}) as run:
        for day in range(1, 9):
            if day == 6:  # the day's one attempt, by a message that has waited since day 1, is deferred
                run.server.inject(reply_with("RCPT", "451 4.3.0 Try again later", recipient="@gmail.com", times=1))
            await run.advance_to(START + timedelta(days=day))
    states = dict(run.rows("SELECT state, count(*) FROM messages GROUP BY state"))
    [refused] = run.server.fired
    assert refused.recipients[0] in {a.recipient for a in run.server.arrivals}, states
    assert "expired" not in states
