"""The send daemon: scheduler and delivery workers in one event loop.

    entry rules ─► enrollments ─► planner ─► messages (queued) ─► workers ─► SMTP
                                                    ▲                 │
                                                    └── outcomes ◄────┘  (batched writes)

The scheduler finds due enrollments through the `enrollments_due` index, never by scanning
leads. A message is claimed (leased) just before its attempt, and its state moves only when
the attempt's outcome is written. SIGTERM stops claiming, lets the transactions under way
finish, writes their outcomes, hands unstarted claims back to the queue and returns.

Before an attempt the message must pass its sending domain (`mailer.sendingdomains`: refused
at start by its DNS, or braked by complaints) and find budget at its receiving provider from a
sending IP (`mailer.outbound`, `mailer.warmupbudget`); otherwise it is held: deferred without
an attempt, so waiting never makes it expire. The reply goes back to the budget, which slows or
pauses that provider for that IP and raises it again after a clean period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from datetime import datetime, timedelta
from pathlib import Path

import dns.asyncresolver

from mailer.clock import Clock
from mailer.conditions import Engagement
from mailer.config import Config, IdentityConfig
from mailer.errors import MailerError, ScenarioError
from mailer.lifecycle import MessageState
from mailer.links import Links
from mailer.builders import BuildFailed, BuildJob, BuildKeys, Builders, BuildUnavailable, LocalBuilders, TemplateBroken
from mailer.buildprocesses import BATCH, BuildProcesses
from mailer.tracking import TrackingServer
from mailer.mime import make_message_id, wire_address
from mailer.planner import Decision, plan
from mailer.reply import SMTPReply, Verdict
from mailer.bouncing import BounceIntake
from mailer.inbound import BounceListener
from mailer.bouncepolicy import SUPPRESSION_REASONS, Action, BouncePolicy, decide, deferral_matters, suppresses
from mailer.classify import classify_reply
from mailer.reasons import BounceClass, Reason, about_the_session
from mailer.reply import SESSION_COMMANDS
from mailer.retry import RetryPolicy
from mailer.tokens import Signer
from mailer.verp import verp_address
from mailer.oncelog import OnceEvery
from mailer.wording import counted
from mailer.scenario import Scenario, load_scenarios
from mailer.store import BounceRecord, ClaimedMessage, EnrollmentUpdate, NewMessage, Outcome, Store
from mailer.transport import Envelope, Transport
from mailer.consent import OPTIN_SCENARIO
from mailer.domaincheck import make_resolver
from mailer.breaker import BEHIND_PROBE
from mailer.outbound import Attempt, Hold, Outbound, current_attempt
from mailer.sendingdomains import SendingDomains, domain_of_address
from mailer.warmup import WarmupPlan, prioritize
from mailer.warmupshell import load_budget, save_budget
from mailer.api import ApiServer
from mailer.scoringengine import ScoringEngine, scoring_file
from mailer.webhooks import WebhookSender
from mailer.daemons import Presence

log = logging.getLogger("mailer.daemon")

ENTRY_PAGE = 500
# Lead ids one entry query looks through. The store's tasks share one connection, so a query
# scanning a million list members held every claim and outcome for 0.6 s (bench/scale.py);
# windows of 20,000 take a few milliseconds each and let the sending go on in between.
ENTRY_WINDOW = 20_000
DUE_PAGE = 500
# A claimed message is leased for longer than the longest SMTP phase may take.
LEASE = timedelta(minutes=30)
# While an IP warms up, leads who opened or clicked within this period go first (Gmail's
# sender guidelines: "send to engaged users first" when ramping up a new IP).
ENGAGEMENT_WINDOW = timedelta(days=90)
FLUSH_SECONDS = 0.05  # real time outcomes may wait to be written with others
ROUND_BACKOFF_SECONDS = 1.0  # real time to wait after a failed round before the next
# An attempt still waiting for its receiver after this long no longer holds its worker.
SLOW_ATTEMPT_SECONDS = 0.2
FINAL_FLUSH_ATTEMPTS = 10
# The phases before a transaction: a failure there is the server's (or our setup's), the same
# for every message (MAIL is not here: a refused sender may be one identity's)
RELAY_SESSION = SESSION_COMMANDS - {"MAIL"}
BUILD_RETRY = timedelta(seconds=30)  # a message whose build process died comes back after this
SAY_AGAIN_AFTER = timedelta(minutes=15)  # one log line per broken template, or refused session, and this long
BUILDS_IN_FLIGHT = 4 * BATCH  # extra workers per build process: jobs queued for it while it builds
SIDE_RETRY_SECONDS = 5.0  # real time before starting the API or webhook sender again, doubling …
SIDE_RETRY_MAX_SECONDS = 300.0  # … up to this (a port another process holds may come free)
SIDE_STOP_SECONDS = 10.0  # real time the scoring engine gets to finish its batch at shutdown


@dataclass
class Report:
    """What the daemon did, for `mailer serve` logs, the demo and tests."""

    entered: int = 0
    queued: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # attempts by their outcome

    def count(self, outcome: Outcome) -> None:
        """One attempt's outcome; one not attempted apart from the deferrals, as the same
        message may be held many times: held (a budget or breaker: back by itself), kept (its
        template or scenario needs a fix), handed back (unstarted at a stop)."""
        if outcome.attempted or outcome.state not in (MessageState.DEFERRED, MessageState.QUEUED):
            key = outcome.state.value
        elif outcome.state is MessageState.QUEUED:
            key = "handed back"
        else:
            key = "held" if outcome.held else "kept"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def summary(self) -> str:
        """The counts in words, most telling first: "120 sent, 3 deferred, 40 held"."""
        words = {"kept": "kept for a template or scenario fix"}
        order = ("sent", "deferred", "failed", "expired", "suppressed", "held", "kept", "handed back")
        keys = sorted(self.outcomes, key=lambda key: order.index(key) if key in order else len(order))
        said = [f"{self.outcomes[key]} {words.get(key, key)}" for key in keys if self.outcomes[key]]
        return ", ".join(said) or "no message attempted"


OutcomeListener = Callable[[ClaimedMessage, Outcome, str], None]


class Daemon:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: Clock,
        transport: Transport | None = None,
        on_outcome: OutcomeListener | None = None,
        rng: random.Random | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        """`transport` None: [delivery] mode's, from each sending IP; `resolver` None: the
        system's, for the sending domain check at start ([delivery] check_domains)."""
        self.config = config
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.resolver = resolver
        self.warmup_plan = WarmupPlan.from_config(config)
        self.outbound = Outbound(config=config, plan=self.warmup_plan, transport=transport, rng=self.rng)
        warmup = config.warmup
        self.domains = SendingDomains(
            thresholds=(warmup.complaint_warn, warmup.complaint_stop), allow_failing=config.delivery.allow_failing_domains
        )
        # Every message's links (pixel, clicks, unsubscribe) are signed with the workspace key.
        self.keys = BuildKeys.load(config)  # read once: builders, even restarted ones, sign with these
        self.links = Links(Signer(self.keys.secrets), config.tracking.public_base)
        # Messages are built (rendered, DKIM-signed) here, or by build processes once serving
        # (mailer.buildprocesses, [delivery] build_processes).
        self.builders: Builders = LocalBuilders(config, self.keys)
        self._sessions = asyncio.Semaphore(config.delivery.concurrency)  # SMTP transactions at once
        self._workers: list[asyncio.Task[None]] = []
        self.tracker: TrackingServer | None = None
        self.retry = RetryPolicy.from_config(config.retry)
        self.bounce_policy = BouncePolicy(config.bounces.soft_limit, config.bounces.soft_window)
        self.signer = Signer(self.keys.secrets) if config.bounces.domain else None
        self.on_outcome = on_outcome
        self.report = Report()
        self.scenarios: dict[str, Scenario] = {}
        self.scenario_errors: list[ScenarioError] = []
        self._queue: asyncio.Queue[ClaimedMessage | None] = asyncio.Queue()
        self._in_flight = 0
        self._slow: set[asyncio.Future[None]] = set()  # attempts a worker stopped waiting for
        self._pending: list[Outcome] = []
        self._template_errors = OnceEvery(SAY_AGAIN_AFTER)
        self._session_failures = OnceEvery(SAY_AGAIN_AFTER)
        self._wake = asyncio.Event()
        self._flush_stop = asyncio.Event()
        self.listener: BounceListener | None = None
        self._stopping = False
        # Scores and stages (mailer.scoringengine), the API and outgoing webhooks run beside the
        # send loop as tasks of their own: a failure in one is logged and retried, and none of
        # them can hold up sending or end the daemon.
        self.scoring_rules = scoring_file(config.scenarios)
        self.webhook_sender = WebhookSender(store, config.webhooks, clock) if config.webhooks else None
        self.engine = ScoringEngine(
            store, scoring=self.scoring_rules, scenarios=lambda: self.scenarios, webhooks=config.webhooks,
            clock=clock, on_deliveries=self._wake_webhooks, on_enrolled=self._wake.set, settings=config.scoring,
        ) if config.scoring.enabled else None
        self.api: ApiServer | None = None
        self._side_stop = asyncio.Event()
        self._side_tasks: list[asyncio.Task[None]] = []
        # this daemon's owner id on its leases, and its heartbeat (mailer.daemons)
        self.presence = Presence(store, clock=clock)

    # -- scenarios -----------------------------------------------------------------------

    def load_scenarios(self) -> list[ScenarioError]:
        """(Re)load scenario files; a broken file is reported and the others keep running."""
        scenarios, errors = load_scenarios(
            self.config.scenarios, identities=self.config.identities, templates_dir=self.config.templates
        )
        before = {str(e): e for e in self.scenario_errors}
        self.scenarios = {s.name: s for s in scenarios}
        self.scenario_errors = errors
        self.builders.load(self.scenarios)
        # Read again at every entry pass: each mistake is logged once, and once more when mended.
        now = {str(e): e for e in errors}
        for text in now.keys() - before.keys():
            log.error("%s (this scenario is paused)", text)
        for text, error in before.items():
            mended = error.file is not None and Path(error.file).is_file()  # a deleted file is not mended
            if text not in now and mended and not any(e.file == error.file for e in errors):
                log.info("%s: read again without errors", error.file)
        return errors

    # -- the loop ------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> Report:
        """Run until `stop` is set, then drain and return what was done."""
        async with self.store.checkpointing():
            return await self._serve(stop)

    async def _serve(self, stop: asyncio.Event) -> Report:
        # Build processes start beside the rest; until they are ready, messages are built here.
        builders = asyncio.create_task(self._start_builders())
        try:
            # only the leases of daemons that are gone: one running beside this one keeps its own
            recovered = await self.presence.start(on_recovered=self._wake.set)
            if recovered:
                log.warning("%s in flight at the last stop; queued again", counted(recovered, "message was", "messages were"))
            # today's warm-up use and the throttles: a restart does not reset a day's budget
            self.outbound.budget = await load_budget(self.store, self.warmup_plan, self.clock.now())
            if not self.scenarios:
                self.load_scenarios()
            if self.config.delivery.check_domains:
                await self._check_domains()
            await self.domains.load(self.store, self.clock.now(), self._domain_of)
            listener = await self._start_listener()
            if self.config.tracking.enabled:
                self.tracker = TrackingServer(config=self.config, store=self.store, links=self.links, clock=self.clock)
                self.tracker.on_message_queued = self._wake.set
                await self.tracker.start()
            self._start_side_services()
        except BaseException:
            builders.cancel()
            await asyncio.gather(builders, return_exceptions=True)
            if self.listener is not None:  # started before the tracking server failed to
                with contextlib.suppress(Exception):
                    await self.listener.stop()
            for worker in self._workers:  # those added for build processes that did start
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            await self.builders.close()
            raise
        self._add_workers(self.config.delivery.concurrency)
        flusher = asyncio.create_task(self._flush_forever())
        next_entry = self.clock.now()
        try:
            while not stop.is_set():
                try:
                    now = self.clock.now()
                    await self.domains.refresh(self.store, now, self._domain_of)
                    if now >= next_entry:
                        await self.enter_leads(now)
                        next_entry = now + self.config.scheduler.entry_interval
                    # a page at a time between claims: a large backlog starts sending at once
                    busy = await self.schedule_due(now, pages=1)
                    busy = await self.dispatch(now) or busy
                    if not busy:
                        await self._idle(stop, next_entry)
                except Exception:
                    # A locked or briefly failing database must not end the daemon: what was
                    # not written is still in the store's last committed state, so the next
                    # round starts from there.
                    log.exception("scheduler round failed; trying again in %.0f s", ROUND_BACKOFF_SECONDS)
                    await asyncio.sleep(ROUND_BACKOFF_SECONDS)
        finally:
            self._stopping = True
            builders.cancel()
            await asyncio.gather(builders, return_exceptions=True)
            self.outbound.stop_waiting()
            await self._drain(self._workers)
            await self.outbound.close()  # QUIT the pooled sessions
            self._flush_stop.set()
            await flusher  # lets a flush under way finish: cancelling it could lose outcomes
            await self._final_flush()
            try:
                await self.builders.close()
            except Exception:  # after the outcomes are written: nothing of value is left in them
                log.exception("closing the build processes failed")
            await self.presence.stop()  # after the last outcomes: what is left may be taken at once
            if listener is not None:
                await listener.stop()
            if self.tracker is not None:
                await self.tracker.stop()  # writes the tracking events still queued
            await self._stop_side_services()
        return self.report

    # -- beside the send loop: scoring, the API, webhooks ---------------------------------

    def _start_side_services(self) -> None:
        self._side_stop.clear()
        if self.webhook_sender is not None:
            sender = self.webhook_sender
            self._side_tasks.append(asyncio.create_task(self._keep_started("the webhook sender", sender.start, sender.stop)))
        if self.config.api.enabled:
            self.api = ApiServer(
                config=self.config, store=self.store, clock=self.clock, scoring=self.scoring_rules,
                on_change=self._on_api_change, on_deliveries=self._wake_webhooks, scenarios=lambda: self.scenarios,
            )
            self._side_tasks.append(asyncio.create_task(self._keep_started("the API", self.api.start, self.api.stop)))
        if self.engine is not None:
            self._side_tasks.append(asyncio.create_task(self._run_engine(self.engine), name="scoring"))

    async def _keep_started(self, name: str, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
        """Start a side service, again and again while it fails (a port in use may come free)."""
        pause = SIDE_RETRY_SECONDS
        while not self._side_stop.is_set():
            try:
                await start()
                return
            except Exception as error:
                log.error("%s cannot start (%s); trying again in %.0f s", name, str(error) or type(error).__name__, pause)
                with contextlib.suppress(Exception):
                    await stop()  # what the failed start left half open
            await self._side_pause(pause)
            pause = min(pause * 2, SIDE_RETRY_MAX_SECONDS)

    async def _run_engine(self, engine: ScoringEngine) -> None:
        """The scoring engine's loop, started again should it ever fail (it logs its own failures)."""
        while not self._side_stop.is_set():
            try:
                await engine.run(self._side_stop)
            except Exception:
                log.exception("the scoring engine failed; starting it again in %.0f s", SIDE_RETRY_SECONDS)
                await self._side_pause(SIDE_RETRY_SECONDS)

    async def _side_pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._side_stop.wait(), seconds)

    async def _stop_side_services(self) -> None:
        """Stop the API and the engine (its batch under way is written), then the webhook calls."""
        self._side_stop.set()
        if self._side_tasks:
            _, late = await asyncio.wait(self._side_tasks, timeout=SIDE_STOP_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._side_tasks, return_exceptions=True)
            self._side_tasks.clear()
        for name, service in (("the API", self.api), ("the webhook sender", self.webhook_sender)):
            if service is not None:
                try:
                    await service.stop()
                except Exception:
                    log.exception("stopping %s failed", name)

    def _wake_webhooks(self) -> None:
        if self.webhook_sender is not None:
            self.webhook_sender.wake()

    def _on_api_change(self) -> None:
        """An API write: score it now, and plan at once for a lead a stage move enrolled."""
        if self.engine is not None:
            self.engine.wake()
        self._wake.set()

    async def _check_domains(self) -> None:
        """Check each From domain's DNS; a domain failing hard is refused (mailer.sendingdomains)."""
        try:
            resolver = self.resolver or make_resolver(None, timeout=3.0)
        except MailerError as error:
            log.warning("sending domains not checked: %s", error)
            return
        scenarios: dict[str, list[str]] = {}
        for scenario in self.scenarios.values():
            scenarios.setdefault(self._from_domain(scenario), []).append(scenario.name)
        await self.domains.check(self.config, resolver, scenarios=scenarios)

    def _from_domain(self, scenario: Scenario) -> str:
        return domain_of_address(self._identity(scenario).from_address)

    def _identity_of(self, scenario: str, step_id: str) -> IdentityConfig | None:
        """Who a scenario's messages are from (a list's sender, for a confirmation); None if unknown."""
        if scenario == OPTIN_SCENARIO:  # a double opt-in confirmation: its step id is the list
            return self.config.identities.get(self.config.list_config(step_id).sender)
        found = self.scenarios.get(scenario)
        return self.config.identities.get(found.sender) if found is not None else None

    def _domain_of(self, scenario: str, step_id: str) -> str | None:
        """The From domain of a scenario's messages (of a list's, for a confirmation); None if unknown."""
        identity = self._identity_of(scenario, step_id)
        return domain_of_address(identity.from_address) if identity is not None else None

    def _sending_scenarios(self, now: datetime) -> list[str]:
        """The loaded scenarios whose sending domain is not held (refused at start, or braked)."""
        return [name for name, s in self.scenarios.items() if self.domains.hold(self._from_domain(s), now) is None]

    async def _start_listener(self) -> BounceListener | None:
        """The inbound SMTP listener for the bounce domain, when one is configured."""
        bounces = self.config.bounces
        if not bounces.domain or not bounces.listen:
            return None
        intake = BounceIntake(store=self.store, signer=self.signer, config=bounces)
        self.listener = BounceListener(
            intake=intake, domain=bounces.domain, clock=self.clock, listen=bounces.listen, unsubscribe=self._mailto_unsubscribe,
            config_file=self.config.path,
        )
        await self.listener.start()
        return self.listener

    async def _mailto_unsubscribe(self, address: str) -> bool:
        """Act on mail to unsubscribe+<token>@<bounce domain>; False for a token not ours."""
        token = address.partition("+")[2].rpartition("@")[0]
        found = self.links.read_unsubscribe(token)
        if found is None:
            return False
        email = await self.store.unsubscribe(
            message=found.message, email=None, list_name=found.list_name, everything=not found.list_name,
            method="mailto", ip="", user_agent="", now=self.clock.now(),
        )
        return email is not None

    async def _idle(self, stop: asyncio.Event, next_entry: datetime) -> None:
        """Sleep until something may be due, a worker frees capacity, or stop."""
        now = self.clock.now()
        wake_at = min(now + self.config.scheduler.poll_interval, next_entry)
        due = await self.store.next_wakeup(scenarios=self._sending_scenarios(now))
        if due is not None:
            wake_at = min(wake_at, max(due, now))
        self._wake.clear()
        waiters = [
            # an absolute deadline: the clock may have moved while next_wakeup was read
            asyncio.ensure_future(self.clock.sleep_until(wake_at)),
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def enter_leads(self, now: datetime) -> int:
        """Enroll the leads that match each scenario's entry rule and may enter."""
        self.load_scenarios()
        entered = 0
        sending = set(self._sending_scenarios(now))
        last = await self.store.last_lead_id()  # leads added during the pass wait for the next
        for scenario in self.scenarios.values():
            if scenario.name not in sending:
                continue  # its sending domain is held: it enrolls nobody meanwhile
            if scenario.entry.trigger is not None:
                continue  # entered when a lead changes, by the scoring engine (mailer.stages.triggered_by)
            # A dynamic list's members are whoever its rule matches now (mailer.segments).
            rules = [rule for rule in (scenario.entry.segment, scenario.entry.where) if rule is not None]
            after = 0
            while after < last:
                through = min(after + ENTRY_WINDOW, last)
                candidates = await self.store.entry_candidates(
                    scenario=scenario.name,
                    list_name=None if scenario.entry.segment is not None else scenario.entry.list_name,
                    reentry_after=scenario.reentry.after if scenario.reentry.allowed else None,
                    now=now,
                    after_lead_id=after,
                    through_lead_id=through,
                    limit=ENTRY_PAGE,
                )
                # a full page may leave candidates in the window; a short one has seen all of it
                after = max(lead.id or 0 for lead in candidates) if len(candidates) == ENTRY_PAGE else through
                chosen = [
                    lead.id
                    for lead in candidates
                    if lead.id is not None and all(rule.evaluate(lead, Engagement()) for rule in rules)
                ]
                entered += await self.store.enroll(
                    scenario=scenario.name, lead_ids=chosen, due_at=now + scenario.steps[0].wait, now=now
                )
        self.report.entered += entered
        if entered:
            log.info("%s entered scenarios", counted(entered, "lead"))
        return entered

    async def schedule_due(self, now: datetime, *, pages: int | None = None) -> bool:
        """Plan every due enrollment, or `pages` pages of them; returns whether there was any."""
        any_due = False
        for _ in itertools.count() if pages is None else range(pages):
            due = await self.store.due_enrollments(now=now, limit=DUE_PAGE, scenarios=self._sending_scenarios(now))
            if not due:
                return any_due
            any_due = True
            engagement = await self.store.engagement([d.id for d in due])
            updates = []
            for enrollment in due:
                scenario = self.scenarios[enrollment.scenario]
                decision = plan(
                    scenario,
                    step_index=enrollment.step_index,
                    lead=enrollment.lead,
                    engagement=engagement[enrollment.id],
                    suppressed=enrollment.suppressed_for(scenario.entry.list_name),
                    now=now,
                    previous_pending_until=enrollment.previous_pending_until,
                )
                updates.append(self._update(scenario, enrollment.id, enrollment.lead.id or 0, decision, now))
            await self.store.apply_updates(updates, now=now)
            self.report.queued += sum(1 for u in updates if u.message is not None)
        return any_due

    def _update(self, scenario: Scenario, enrollment_id: int, lead_id: int, decision: Decision, now: datetime) -> EnrollmentUpdate:
        """The store write for a planner decision (and the message it queues, if any)."""

        def update(step_index: int, state: str, event: str, detail: dict[str, Any], message: NewMessage | None = None) -> EnrollmentUpdate:
            return EnrollmentUpdate(
                enrollment_id=enrollment_id, lead_id=lead_id, scenario=scenario.name, step_index=step_index,
                state=state, due_at=decision.due_at if state == "active" else None, event=event, detail=detail, message=message,
            )

        action, index = decision.action, decision.step_index
        if action in ("exit", "complete"):
            state = "exited" if action == "exit" else "completed"
            return update(index, state, state, {"reason": decision.reason})
        step = scenario.steps[index]
        if action == "wait":
            until = decision.due_at.isoformat() if decision.due_at else None
            return update(index, "active", "waiting", {"step": step.id, "until": until})
        state = "active" if decision.due_at is not None else "completed"
        if action == "skip":
            return update(index + 1, state, "skipped", {"step": step.id, "reason": decision.reason})
        identity = self._identity(scenario)
        message = NewMessage(message_id=make_message_id(identity.message_id_domain), step_id=step.id, not_before=now)
        return update(index + 1, state, "queued", {"step": step.id}, message)

    async def _start_builders(self) -> None:
        """Build processes when [delivery] build_processes asks for any; if they cannot
        start, messages are built here (slower, never lost)."""
        processes = self.config.delivery.builders(os.cpu_count())
        if processes < 1 or not isinstance(self.builders, LocalBuilders):
            return
        builders = BuildProcesses(self.config, processes, self.keys)
        builders.load(self.scenarios)
        try:
            await builders.start()
        except Exception as error:
            log.error("build processes could not start (%s); building messages in the daemon's process", error)
            await builders.close()
            return
        except asyncio.CancelledError:  # the daemon stops, or its start failed
            await builders.close()
            raise
        log.info("%d build process%s render and sign messages", processes, "" if processes == 1 else "es")
        builders.load(self.scenarios)  # loaded meanwhile; the pipe delivers them before any job
        self.builders = builders
        # A worker waits for its message's build: with build processes, enough more workers
        # that the processes always have jobs while the sessions send. The SMTP sessions stay
        # at [delivery] concurrency (AttemptState).
        self._add_workers(BUILDS_IN_FLIGHT * processes)

    def _add_workers(self, count: int) -> None:
        self._workers += [asyncio.create_task(self._worker()) for _ in range(count)]

    def _identity(self, scenario: Scenario) -> IdentityConfig:
        return self.config.identities[scenario.sender]

    async def dispatch(self, now: datetime) -> bool:
        """Claim due messages while the workers have room; returns whether any were claimed."""
        room = self.config.delivery.batch_size - self._in_flight
        if room < max(1, self.config.delivery.batch_size // 2) or self._stopping:
            return False
        claimed = await self.store.claim_messages(now=now, limit=room, lease=LEASE, owner=self.presence.owner)
        if claimed and self.outbound.warming(now):
            claimed = await self._engaged_first(claimed, now)
        for message in claimed:
            self._in_flight += 1
            self._queue.put_nowait(message)
        return bool(claimed)

    async def _engaged_first(self, claimed: list[ClaimedMessage], now: datetime) -> list[ClaimedMessage]:
        """The claimed batch with the leads who opened or clicked most first: a warming IP's
        scarce budget goes to them, and the messages it cannot take now are held and return.

        Only within the batch (up to [delivery] batch_size messages due now): ordering the whole
        queue by engagement would cost a join per claim; a warming IP's budget is far smaller
        than a batch, so the batch is where the choice is made.
        """
        try:
            scores = await self.store.engagement_scores([m.lead.id or 0 for m in claimed], since=now - ENGAGEMENT_WINDOW)
        except Exception:  # the order is a preference: the claimed messages must go out anyway
            log.exception("reading engagement failed; sending in the usual order")
            return claimed
        return prioritize(claimed, lambda message: scores.get(message.lead.id or 0, 0))

    # -- delivery ------------------------------------------------------------------------

    async def _worker(self) -> None:
        # Sessions live in the transport's pool (reused per relay or MX host, closed when idle).
        while not self._stopping:
            message = await self._queue.get()
            if message is None:  # the drain's signal: nothing more will come
                break
            detach: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state = Attempt(detach)
            attempt = asyncio.ensure_future(self._deliver_one(message, state))
            await asyncio.wait((attempt, detach), timeout=SLOW_ATTEMPT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if attempt.done():
                continue
            if len(self._slow) < self.config.delivery.concurrency:
                state.stop_waiting(self._sessions)
                # A receiver that is slow to answer (a timeout on its way, a tarpit) or not heard
                # from yet (the breaker's probe, mailer.breaker) keeps its connection, not this
                # worker: the attempt finishes on its own while the worker serves the other
                # destinations. At most `concurrency` such attempts at once.
                self._slow.add(attempt)
                attempt.add_done_callback(self._slow.discard)
            else:
                await attempt

    async def _deliver_one(self, message: ClaimedMessage, state: Attempt) -> None:
        current_attempt.set(state)  # this task's own context: Outbound.admit resolves its detach
        try:
            await self.deliver(message)
        finally:
            self._in_flight -= 1
            self._wake.set()

    async def deliver(self, message: ClaimedMessage) -> Outcome:
        """One attempt for one claimed message, its outcome queued for writing."""
        try:
            outcome, summary = await self._attempt(message)
        except Exception as error:  # a bug must not strand the message in `sending`
            log.exception("unexpected error delivering %s", message.message_id)
            detail = f"internal error: {type(error).__name__}: {error}"
            outcome, summary = self._temporary(message, self.clock.now(), None, detail=detail), ""
        self._pending.append(outcome)
        self.report.count(outcome)
        if outcome.state is not MessageState.SENT:
            retry = f"; next try {outcome.next_attempt_at:%Y-%m-%d %H:%M} UTC" if outcome.next_attempt_at else ""
            # a held message (no budget, a held domain) is routine: their reasons are logged once,
            # where decided; a refused session, once per server and failure (_session_refused)
            held = outcome.state in (MessageState.DEFERRED, MessageState.QUEUED) and not outcome.attempted
            log.log(
                logging.DEBUG if held or self._session_refused(outcome) else logging.WARNING,
                "%s %s → %s (%s/%s): %s%s", outcome.state.value, message.message_id, message.lead.email,
                message.scenario, message.step_id, outcome.reply or outcome.detail, retry,
            )
        if self.on_outcome is not None:
            self.on_outcome(message, outcome, summary)
        if len(self._pending) >= self.config.delivery.batch_size:
            await self.flush()
        return outcome

    async def _attempt(self, message: ClaimedMessage) -> tuple[Outcome, str]:
        now = self.clock.now()
        lead = message.lead
        scenario = self.scenarios.get(message.scenario)
        # The last check, just before sending: a suppression that landed after the message
        # was queued stops it here (a confirmation is judged for its own list).
        if message.suppressed_for(scenario.entry.list_name if scenario is not None else None):
            return self._outcome(message, MessageState.SUPPRESSED, now, detail="address is suppressed"), ""
        if not message.is_confirmation and (scenario is None or scenario.step(message.step_id) is None):
            # The file is broken or gone for now: keep the message and try it later.
            return self._temporary(message, now, None, detail=f"scenario {message.scenario!r} is not loaded"), ""
        identity = self._identity_of(message.scenario, message.step_id)
        assert identity is not None  # config checks every sender names an identity
        from_domain = domain_of_address(identity.from_address)
        held = self.domains.hold(from_domain, now)
        if held is not None:
            return self._held(message, now, held), ""
        provider = await self.outbound.receiver(lead.email)
        admission = await self.outbound.admit(provider, now)  # the receiver's circuit breaker
        if not admission.go and self.outbound.stopping:
            # unstarted at shutdown, like the claims still in the queue (mailer.lifecycle: sending → queued)
            return self._outcome(message, MessageState.QUEUED, now, next_attempt_at=now, detail=admission.reason, attempted=False), ""
        if not admission.go:
            until = admission.until or now + BEHIND_PROBE
            return self._held(message, now, Hold(until, admission.reason or f"{provider}: waiting for its first reply")), ""
        try:
            return await self._attempt_admitted(message, identity, from_domain, provider, probe=admission.probe)
        finally:
            self.outbound.abandon(provider, admission)  # a probe that got no reply: the next one tries

    async def _attempt_admitted(
        self, message: ClaimedMessage, identity: IdentityConfig, from_domain: str, provider: str, *, probe: bool,
    ) -> tuple[Outcome, str]:
        now = self.clock.now()
        lead = message.lead
        ip = self.outbound.pick(provider, now)
        if isinstance(ip, Hold):
            return self._held(message, now, ip), ""
        # nothing was awaited since `pick`: no other worker took that budget meanwhile
        grant = self.outbound.reserve(ip, provider, now)
        if grant is None:
            return self._held(message, now, Hold(now + timedelta(minutes=1), f"warm-up budget of {ip} for {provider} spent")), ""
        job = BuildJob(message.id, message.message_id, message.scenario, message.step_id, lead, now, message.is_confirmation)
        try:
            built = await self.builders.build(job)
        except BuildFailed as error:
            self.outbound.release(grant)
            log.error("message %s cannot be built: %s", message.message_id, error)
            return self._outcome(message, MessageState.FAILED, now, detail=str(error)), ""
        except TemplateBroken as error:
            # An authoring mistake is not the lead's: the message waits (the retry backoff,
            # expiring by the same maximum age) until the template is fixed.
            self.outbound.release(grant)
            self._log_template_error(str(error), now)
            # not attempted, so its attempts do not grow: the backoff is read from its age
            tries = self.retry.tries_by(now - message.created_at)
            return self._temporary(message, now, None, detail=f"template: {error}", tries=tries), ""
        except BaseException as error:
            self.outbound.release(grant)
            if isinstance(error, BuildUnavailable):  # nothing was attempted: back soon, as a hold
                return self._held(message, now, Hold(now + BUILD_RETRY, f"not built: {error}")), ""
            raise
        sender = identity.envelope_sender
        if self.signer is not None:
            bounces = self.config.bounces
            sender = verp_address(self.signer, message=message.id, local_part=bounces.local_part, domain=bounces.domain)
        envelope = Envelope(wire_address(sender), wire_address(lead.email), built.smtputf8)
        state = current_attempt.get() or Attempt()
        if probe:
            self.outbound.probe_sending(provider)
        try:
            await state.take_session(self._sessions)
            if self._stopping:  # a transaction not begun yet is handed back, like the unstarted claims
                self.outbound.release(grant)
                now = self.clock.now()
                return self._outcome(message, MessageState.QUEUED, now, next_attempt_at=now, detail="not started: the daemon stopped", attempted=False), ""
            reply = await self.outbound.send(grant, envelope, built.wire, now=self.clock.now)
        finally:
            state.end(self._sessions)
        subject = built.subject
        now = self.clock.now()
        self.outbound.record(grant, reply, now, probe=probe)
        if reply.verdict is Verdict.ACCEPTED:
            self.domains.count_sent(from_domain, now)
            return self._outcome(message, MessageState.SENT, now, reply=reply), subject
        return await self._refused(message, now, reply), subject

    async def _refused(self, message: ClaimedMessage, now: datetime, reply: SMTPReply) -> Outcome:
        """A refusal, read by the bounce classifier and acted on by the bounce policy.

        No reply at all, or a refusal of our own session or MAIL FROM, is about us: wait. A
        4xx is a deferral, not a bounce, until the message expires. Otherwise the policy
        decides: suppress (hard, escalated soft), alert (the sender's problem, suppress
        nobody, retry) or retry (soft).
        """
        if reply.code is None or reply.command in SESSION_COMMANDS:
            return self._temporary(message, now, reply)
        lead = message.lead
        found = classify_reply(code=reply.code, enhanced=reply.enhanced, text=reply.text, command=reply.command, host=reply.host)
        reason, bounce_class = found.reason, found.bounce_class
        retried = self._temporary(message, now, reply)
        if reply.verdict is Verdict.TEMPORARY:
            if retried.state is MessageState.EXPIRED:
                reason, bounce_class = Reason.EXPIRED, BounceClass.SOFT  # the last deferral: a soft bounce
            elif not deferral_matters(reason, reply.text):
                return retried
        earlier = 0
        ours = about_the_session(reason, reply.command)
        if bounce_class is BounceClass.SOFT and not ours:
            earlier = await self.store.soft_bounces_since(lead.email, now - self.bounce_policy.soft_window)
        action = Action.SENDER_ALERT if ours else decide(reason, bounce_class, earlier_soft=earlier, policy=self.bounce_policy)
        outcome = self._outcome(message, MessageState.FAILED, now, reply=reply) if suppresses(action) else retried
        if action is Action.SENDER_ALERT:
            # the warm-up budget was told the reply: a block pauses that provider for this IP
            log.warning("deliverability alert: %s refused us for %s: %s (%s)", reply.host, lead.email, reply, reason)
        bounce = BounceRecord(
            at=now, source="smtp", email=lead.email, kind="bounce", reason=reason.value,
            bounce_class=bounce_class.value, action=action.value, status=reply.enhanced, reply_code=reply.code,
            diagnostic=reply.text, rule=found.rule, remote_host=reply.host, message=message.id,
            lead_id=lead.id, evidence=str(reply).encode(), suppression=SUPPRESSION_REASONS.get(action),
        )
        return dataclasses.replace(outcome, bounce=bounce)

    def _temporary(
        self, message: ClaimedMessage, now: datetime, reply: SMTPReply | None, *, detail: str = "", tries: int | None = None,
    ) -> Outcome:
        """Deferred for a retry, or expired past the maximum age; `reply` None: no SMTP attempt.

        The maximum age counts from the first SMTP attempt (RFC 5321 4.5.4.1 gives up on
        *trying*): days held by the warm-up use none of it. A message never attempted (its
        scenario gone, an internal error) counts from its creation, so it cannot wait forever.
        """
        first = message.first_attempt_at or (now if reply is not None else message.created_at)
        attempt = message.attempts + 1 if tries is None else tries
        retry_at = self.retry.next_attempt(attempt=attempt, first_attempt_at=first, now=now, rng=self.rng)
        attempted = reply is not None
        if retry_at is None:
            detail = detail or "gave up after the maximum age"
            return self._outcome(message, MessageState.EXPIRED, now, reply=reply, detail=detail, attempted=attempted)
        return self._outcome(message, MessageState.DEFERRED, now, reply=reply, next_attempt_at=retry_at, detail=detail, attempted=attempted)

    def _session_refused(self, outcome: Outcome) -> bool:
        """Whether `outcome` is a session the server would not set up (connection, greeting,
        EHLO, STARTTLS, AUTH): every message fails alike until it is fixed, so it is logged
        once per server and failure every quarter hour, with what to do, not per message."""
        reply = outcome.reply
        if reply is None or outcome.state is not MessageState.DEFERRED or reply.command not in RELAY_SESSION:
            return False
        said = f"{reply.code} {reply.text}" if reply.code is not None else reply.text
        if self._session_failures.first(f"{reply.host}|{reply.command}|{said}", outcome.at):
            if self.config.delivery.mode == "direct":
                hint = "mail to its domain is deferred and retried with the backoff"
            else:
                hint = ("every message is deferred and retried with the backoff; check [relay] in mailer.toml and that "
                        "the relay runs, then `mailer queue retry` sends them at once")
            log.warning("no session with %s (at %s: %s); %s", reply.host or "the server", reply.command, said, hint)
        return True

    def _log_template_error(self, error: str, now: datetime) -> None:
        """Once per error and quarter hour: every lead at a broken step fails the same way."""
        if not self._template_errors.first(error, now):
            log.debug("kept until its template renders: %s", error)
            return
        log.error("%s; the messages of this step are kept and tried again with the retry backoff: "
                  "fix the template (`mailer preview` shows it) and they go out", error)

    def _held(self, message: ClaimedMessage, now: datetime, hold: Hold) -> Outcome:
        """Not attempted: back at `hold.until`, neither counted as an attempt nor ever expiring for it."""
        return self._outcome(
            message, MessageState.DEFERRED, now, next_attempt_at=hold.until, detail=hold.reason, attempted=False, held=True,
        )

    @staticmethod
    def _outcome(message: ClaimedMessage, state: MessageState, at: datetime, **extra: object) -> Outcome:
        return Outcome(message=message.id, lead_id=message.lead.id or 0, state=state, at=at, **extra)  # type: ignore[arg-type]

    # -- writing outcomes ----------------------------------------------------------------

    async def flush(self) -> None:
        """Write the outcomes gathered so far in one transaction, then the warm-up counters
        and throttles that changed; on failure keep them for the next flush."""
        pending, self._pending = self._pending, []
        if pending:
            try:
                await self.store.record_outcomes(pending, owner=self.presence.owner)
            except BaseException:
                self._pending[:0] = pending
                raise
        for decision in self.outbound.budget.take_decisions():
            log.warning("warm-up: %s", decision)
        await save_budget(self.store, self.outbound.budget)

    async def _flush_forever(self) -> None:
        while not self._flush_stop.is_set():
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.exception("writing %d outcomes failed; keeping them for the next try", len(self._pending))
                await asyncio.sleep(ROUND_BACKOFF_SECONDS)

    async def _final_flush(self) -> None:
        for attempt in range(FINAL_FLUSH_ATTEMPTS):
            try:
                await self.flush()
                return
            except Exception:
                log.exception("writing outcomes at shutdown failed (attempt %d)", attempt + 1)
                await asyncio.sleep(ROUND_BACKOFF_SECONDS)
        log.error("%d outcomes could not be written; their messages will be sent again on restart", len(self._pending))

    async def _drain(self, workers: Sequence[asyncio.Task[None]]) -> None:
        """Finish transactions under way; hand back claims that never started."""
        unstarted = []
        while not self._queue.empty():
            message = self._queue.get_nowait()
            if message is not None:
                unstarted.append(message)
        self._in_flight -= len(unstarted)
        await self.store.release([m.id for m in unstarted], now=self.clock.now(), owner=self.presence.owner)
        for _ in workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(*self._slow, return_exceptions=True)  # slow attempts end as any other
