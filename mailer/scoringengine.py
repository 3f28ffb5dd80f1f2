"""The scoring engine: behaviour and fit become scores, grades and stages, inside the daemon.

    scoring_queue ─► take_scoring_work ─► evaluate (pure) ─► apply_scoring ─► account roll-up
    (store triggers)   (lead + events)    score, grade,      history, entry      MQA, webhooks
                                          next stage         triggers, outbox

The store queues a lead whenever anything that can change its score is written (an event, a
machine re-judgement, a profile edit), whoever writes it; the engine takes those leads in
batches, decides with the pure functions of mailer.scoring, mailer.grading and mailer.stages,
and hands the store one transaction per batch. `refresh` walks every lead on a timer, because
decay and recycling change scores and stages while nothing happens to the lead. Accounts are
rolled up after each batch from the scores just written (a second transaction); their stored
score follows their leads', and crossing the MQA line either way is a history event.

A form entry trigger fires once per form event: the engine compares each form event's time
with the lead's `last_engaged_at` as the previous scoring stored it. A form event later than
that is new (form submissions are engagement, so once scored it is never later again); an
event posted with an older `at` (a backfill of history) fires nothing.

Webhook events: stage_changed (the shape mailer.webhooks.stage_event gives the API's moves
too), score_changed, grade_changed and account_stage_changed, each `{"lead": {id, email,
score, product_score, grade, stage, account}, "from", "to", …}` (accounts: `{account, from,
to, score, reason}`), built only for the types some webhook asks for.

`ScoringFile` reads `scenarios/scoring.yaml` again when it changes; a broken version is
logged once and the last good rules stay in force. Until a first good version is read the
engine scores nothing: scoring with no rules would zero every score it touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mailer.clock import Clock
from mailer.config import ScoringEngineConfig, WebhookConfig
from mailer.errors import UserError
from mailer.grading import grade
from mailer.leads import Lead
from mailer.scenario import Scenario
from mailer.scoremodel import (
    AccountChange,
    LeadChange,
    LeadScoring,
    NewDelivery,
    StageChange,
    Trigger,
    WebhookEvent,
)
from mailer.scoring import score
from mailer.scoringrules import ScoringConfig, load_scoring
from mailer.stages import account_change, account_of, next_stage, triggers_for
from mailer.store import Store
from mailer.webhooks import deliveries_for, lead_payload, stage_event

log = logging.getLogger("mailer.scoring")

SCORING_FILE = "scoring.yaml"  # beside the scenarios (mailer.scenario.NOT_SCENARIOS skips it)
IDLE_SECONDS = 0.25  # real time between looks at the queue when nobody calls wake()
FIRST_BACKOFF_SECONDS = 1.0  # real time after a failed round, doubling …
MAX_BACKOFF_SECONDS = 30.0  # … up to this while the store keeps failing
RACY_SECONDS = 2.0  # a rules file changed this recently is compared by content, not timestamp


class ScoringFile:
    """scoring.yaml as a callable: the current rules, re-read whenever the file changes."""

    def __init__(self, path: Path, *, load: Callable[[Path], ScoringConfig] = load_scoring) -> None:
        self.path = path
        self.error: UserError | None = None  # the current file's problem, when it has one
        self._load = load
        self._stamp: tuple[int, int, int] | None = None
        self._content: bytes | None = None
        self._read = False
        self._racy = False
        self._good: ScoringConfig | None = None

    def __call__(self) -> ScoringConfig:
        """The last good rules; UserError when no version read so far was good."""
        stamp = self._file_stamp()
        if not self._read or stamp != self._stamp or self._racy:
            self._stamp = stamp
            content = self._file_content()
            if not self._read or content != self._content:
                self._read, self._content = True, content
                self._reload()
            # Timestamps tick coarsely (a jiffy): a rewrite soon after a read can keep the
            # stamp, so a file modified within RACY_SECONDS is compared by content (git's
            # "racy clean" problem and its answer).
            self._racy = stamp is not None and time.time_ns() - stamp[0] < RACY_SECONDS * 1_000_000_000
        if self._good is None:
            assert self.error is not None
            raise self.error
        return self._good

    def _reload(self) -> None:
        try:
            rules = self._load(self.path)
        except UserError as error:
            self.error = error  # logged once per version of the file, not once per batch
            kept = "the rules read before stay in force" if self._good is not None else "nothing is scored until it is fixed"
            log.error("%s (%s)", error, kept)
            return
        if self._good is not None:
            log.info("%s changed: scoring with %d rules, %d grading rules", self.path, len(rules.rules), len(rules.grading))
        self._good, self.error = rules, None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        # an editor that saves by renaming changes the inode, one that rewrites in place the mtime
        try:
            found = self.path.stat()
        except OSError:
            return None
        return (found.st_mtime_ns, found.st_size, found.st_ino)

    def _file_content(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None


@dataclass
class EngineTotals:
    """What the engine has done since it was made (for `mailer scores rebuild`, logs, benches)."""

    leads: int = 0  # leads evaluated
    events: int = 0  # scoring events read for them
    changed: int = 0  # leads whose score, grade or stage changed
    stage_moves: int = 0
    enrolled: int = 0  # enrollments made by entry triggers
    account_moves: int = 0  # accounts that became MQA or dropped out of it
    deliveries: int = 0  # webhook calls put in the outbox


@dataclass
class _Decisions:
    """One batch decided: what apply_scoring and the account roll-up write."""

    changes: list[LeadChange] = dataclasses.field(default_factory=list)
    triggers: list[Trigger] = dataclasses.field(default_factory=list)
    deliveries: list[NewDelivery] = dataclasses.field(default_factory=list)
    accounts: set[str] = dataclasses.field(default_factory=set)  # whose roll-up may have changed
    leads: int = 0
    events: int = 0
    changed: int = 0


class ScoringEngine:
    def __init__(
        self,
        store: Store,
        *,
        scoring: Callable[[], ScoringConfig],
        scenarios: Callable[[], Mapping[str, Scenario]],
        webhooks: Mapping[str, WebhookConfig],
        clock: Clock,
        on_deliveries: Callable[[], None] | None = None,
        on_enrolled: Callable[[], None] | None = None,
        settings: ScoringEngineConfig = ScoringEngineConfig(),
    ) -> None:
        """`scoring` gives the current rules (a ScoringFile in the daemon); `on_deliveries` wakes
        the webhook sender and `on_enrolled` the scheduler after a write that needs them."""
        self.store = store
        self.scoring = scoring
        self.scenarios = scenarios
        self.webhooks = webhooks
        self.clock = clock
        self.on_deliveries = on_deliveries
        self.on_enrolled = on_enrolled
        self.settings = settings
        self.totals = EngineTotals()
        # building a payload per score change costs; only the types some webhook wants are built
        self._wanted = frozenset(kind for webhook in webhooks.values() for kind in webhook.events)
        self._wake = asyncio.Event()
        self._stop: asyncio.Event | None = None

    # -- deciding: pure ------------------------------------------------------------------

    def evaluate(self, item: LeadScoring, config: ScoringConfig, now: datetime) -> LeadChange:
        """Score, grade and the automatic stage move of one lead, from its events and profile."""
        scored = score(item.events, config.rules, now)
        graded = grade(item.lead, config.grading, config.bands)
        # next_stage judges the lead with these figures (it applies them itself)
        stage = next_stage(item.lead, config.stages, score=scored, grade=graded, stage_since=item.stage_since, now=now)
        return LeadChange(
            lead_id=item.lead.id or 0, score=scored, grade=graded, stage=stage, at=now, account=account_of(item.lead)
        )

    def _decide(self, items: Sequence[LeadScoring], config: ScoringConfig, now: datetime, *, every_account: bool = False) -> _Decisions:
        """Evaluate a batch; `every_account` rolls up the accounts of all its leads, changed or not."""
        decided = _Decisions(leads=len(items))
        scenarios = [s for s in self.scenarios().values() if s.entry.trigger is not None]
        for item in items:
            change = self.evaluate(item, config, now)
            decided.changes.append(change)
            before = item.lead
            moved = change.stage is not None
            rescored = change.score.score != before.score or change.score.product_score != before.product_score
            regraded = change.grade.grade != before.grade
            decided.events += len(item.events)
            if moved or rescored or regraded:
                decided.changed += 1
            if rescored or every_account or item.account != change.account:
                decided.accounts.update(account for account in (item.account, change.account) if account)
            forms = _form_names(item)
            if not (moved or forms or (self._wanted and (rescored or regraded))):
                continue  # the common case: no trigger can fire and no webhook wants to know
            lead = dataclasses.replace(
                before, score=change.score.score, product_score=change.score.product_score, grade=change.grade.grade,
                stage=change.stage.to_stage if change.stage is not None else before.stage,
            )
            decided.triggers.extend(self._triggered(scenarios, forms, change, lead))
            for event in self._lead_events(before, lead, change, moved=moved, rescored=rescored, regraded=regraded):
                decided.deliveries.extend(deliveries_for(event, self.webhooks))
        return decided

    def _triggered(self, scenarios: Sequence[Scenario], forms: Sequence[str], change: LeadChange, lead: Lead) -> list[Trigger]:
        """The trigger scenarios this lead enters now: by its stage move and by new form events."""
        found: dict[str, Trigger] = {}
        if change.stage is not None:
            found.update((t.scenario, t) for t in triggers_for(scenarios, stage_change=change.stage, lead=lead))
        for form in forms:
            found.update((t.scenario, t) for t in triggers_for(scenarios, form=form, lead=lead))
        return list(found.values())

    def _lead_events(
        self, before: Lead, lead: Lead, change: LeadChange, *, moved: bool, rescored: bool, regraded: bool
    ) -> list[WebhookEvent]:
        """The webhook events of one lead's change, for the types some webhook wants."""
        wanted, at = self._wanted, change.at
        events = []
        if moved and "stage_changed" in wanted:
            assert change.stage is not None
            events.append(stage_event(lead, change.stage, at=at, account=change.account))  # as the API's moves send it
        if rescored and "score_changed" in wanted:
            contributions = [[c.rule, c.events, round(c.points, 2)] for c in change.score.contributions]
            events.append(WebhookEvent("score_changed", at, {
                "lead": lead_payload(lead, stage=lead.stage, account=change.account), "from": before.score, "to": lead.score,
                "product_score_from": before.product_score, "product_score_to": lead.product_score,
                "contributions": contributions,
            }))
        if regraded and "grade_changed" in wanted:
            matched = [[name, points] for name, points in change.grade.matched]
            events.append(WebhookEvent("grade_changed", at, {
                "lead": lead_payload(lead, stage=lead.stage, account=change.account), "from": before.grade, "to": lead.grade, "matched": matched,
            }))
        return events

    # -- writing ---------------------------------------------------------------------------

    async def process(self, *, limit: int = 500) -> int:
        """Score one batch of queued leads and write it; returns how many leads it took."""
        config = self.scoring()  # before taking work: with no usable rules the queue waits
        work = await self.store.take_scoring_work(limit=limit)
        if not work:
            return 0
        now = self.clock.now()
        decided = self._decide([item for item, _ in work], config, now)
        done = [(item.lead.id or 0, stamp) for item, stamp in work]
        await self._write(decided, done, config, now)
        return len(work)

    async def refresh(self, now: datetime) -> int:
        """Re-score every lead at `now` (decay, recycling), a page per transaction; returns leads done."""
        config = self.scoring()
        after, done = 0, 0
        while self._stop is None or not self._stop.is_set():
            items = await self.store.scoring_inputs(after_lead_id=after, limit=self.settings.batch)
            if not items:
                break
            after = max(item.lead.id or 0 for item in items)
            # every account too: one whose roll-up a crash lost between two transactions
            # (see _write) is put right within a refresh interval
            await self._write(self._decide(items, config, now, every_account=True), (), config, now)
            done += len(items)
            await asyncio.sleep(0)  # the send loop's turn between pages
        return done

    async def _write(self, decided: _Decisions, done: Sequence[tuple[int, int]], config: ScoringConfig, now: datetime) -> None:
        """The leads' changes in one transaction, then their accounts' roll-up in another: the
        roll-up reads the scores just written, the way any later roll-up will."""
        enrolled = await self.store.apply_scoring(
            decided.changes, done=done, triggers=decided.triggers, deliveries=decided.deliveries, now=now
        )
        totals = self.totals
        totals.leads += decided.leads
        totals.events += decided.events
        totals.changed += decided.changed
        totals.stage_moves += sum(1 for change in decided.changes if change.stage is not None)
        totals.enrolled += enrolled
        deliveries = len(decided.deliveries)
        if decided.accounts:
            deliveries += await self._roll_up(decided.accounts, config, now)
        self.totals.deliveries += deliveries
        if deliveries and self.on_deliveries is not None:
            self.on_deliveries()
        if enrolled and self.on_enrolled is not None:
            self.on_enrolled()

    async def _roll_up(self, accounts: set[str], config: ScoringConfig, now: datetime) -> int:
        """Re-add the scores of these accounts' leads and move each across the MQA line; returns webhook calls."""
        rolled = await self.store.account_rollup(sorted(accounts))
        changes: list[AccountChange] = []
        deliveries: list[NewDelivery] = []
        for account, (total, stage) in sorted(rolled.items()):
            change = account_change(account, total, stage, config.stages, now)
            if change is None:  # the stage stays; its stored score follows its leads' all the same
                changes.append(AccountChange(account=account, score=total, stage=stage, previous_stage=stage, reason="", at=now))
            else:
                changes.append(change)
                self.totals.account_moves += 1
                if "account_stage_changed" in self._wanted:
                    deliveries.extend(deliveries_for(WebhookEvent("account_stage_changed", now, {
                        "account": account, "from": change.previous_stage, "to": change.stage,
                        "score": change.score, "reason": change.reason,
                    }), self.webhooks))
        if changes:
            await self.store.apply_account_changes(changes, deliveries=deliveries)
        return len(deliveries)

    # -- running in the daemon -------------------------------------------------------------

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll (after an API call, say)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Score queued leads until `stop`; refresh every lead every refresh_interval of clock time.

        Never raises for a failing store or a broken scoring.yaml: the round is logged and
        tried again, because scoring must never end the daemon that sends.
        """
        self._stop = stop
        next_refresh = self.clock.now()  # at start: decay and recycling since the daemon last ran
        failures = 0
        while not stop.is_set():
            self._wake.clear()  # before looking: a wake() while processing means look again at once
            try:
                if await self.process(limit=self.settings.batch):
                    failures = 0
                    await asyncio.sleep(0)  # the send loop's turn between batches
                    continue
                if self.clock.now() >= next_refresh:
                    started, now = time.monotonic(), self.clock.now()
                    leads = await self.refresh(now)
                    next_refresh = now + self.settings.refresh_interval
                    log.info("re-scored %d leads in %.1f s", leads, time.monotonic() - started)
                    continue
                failures = 0
            except UserError:
                pass  # scoring.yaml has never been good: ScoringFile said so once; look again later
            except Exception:
                failures += 1
                pause = min(FIRST_BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
                log.exception("scoring round failed; trying again in %.0f s", pause)
                await _first_of(stop.wait(), asyncio.sleep(pause))
                continue
            await _first_of(stop.wait(), self._wake.wait(), asyncio.sleep(IDLE_SECONDS), self.clock.sleep_until(next_refresh))


def scoring_file(scenarios_dir: Path) -> ScoringFile:
    """The workspace's scoring rules: scenarios/scoring.yaml (or .yml when only that exists)."""
    path = scenarios_dir / SCORING_FILE
    alternative = path.with_suffix(".yml")
    return ScoringFile(alternative if not path.exists() and alternative.exists() else path)


def _form_names(item: LeadScoring) -> list[str]:
    """The names of the lead's form events that are new since its last scoring (see the module doc)."""
    seen = item.last_engaged_at
    return list(dict.fromkeys(
        event.name or "" for event in item.events
        if event.type == "form_submitted" and (seen is None or event.at > seen)
    ))


async def _first_of(*waits: Any) -> None:
    """Wait until the first of these awaitables is done, cancelling the rest."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def store_move(
    store: Store, lead: Lead, change: StageChange, *, scenarios: Iterable[Scenario],
    webhooks: Mapping[str, WebhookConfig], now: datetime,
) -> list[NewDelivery]:
    """Write a manual move (sales through the CLI or the API) as the engine writes its own: the
    stage and its history, the scenarios it triggers and the webhook calls that want it, in one
    transaction. Returns the webhook calls queued; UserError when the stage changed meanwhile."""
    assert lead.id is not None
    deliveries = deliveries_for(stage_event(lead, change, at=now, account=account_of(lead)), webhooks)
    triggers = triggers_for(scenarios, stage_change=change, lead=lead)
    await store.set_stage(lead.id, change, now=now, triggers=triggers, deliveries=deliveries)
    return deliveries
