"""Counting against the warm-up caps: asked before each attempt, told its reply after. Pure.

`WarmupBudget` holds, in memory, the attempts of the day per (IP, provider, UTC hour) and
each (IP, provider)'s throttle (`mailer.throttle`). The daemon `reserve`s before an attempt
and reports its reply (`record_reply`); `take_changes()` goes to the store, and a restarted
daemon builds its budget again from what the store holds, so a restart does not reset a day's
use. The caps themselves come from the plan (`mailer.warmup`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from mailer.providers import ProviderLimits
from mailer.reasons import Reason
from mailer.reply import SMTPReply
from mailer.throttle import Signal, Throttle, on_accepted, on_signal, recover, throttle_signal
from mailer.warmup import WarmupPlan, daily_cap

PACE_MINUTES = 15  # an hour's budget leaves over at least this many minutes
MINUTE = timedelta(minutes=1)
UNLIMITED = 1_000_000_000  # `allowance` of a budget with no cap at all


@dataclass(frozen=True)
class Grant:
    """One reserved attempt, counted in the hour it was reserved."""

    ip: str
    provider: str
    day: date
    hour: int


@dataclass(frozen=True)
class UsageCount:
    """Attempts (reserved and not released), accepted and deferred, of one (IP, provider, hour)."""

    ip: str
    provider: str
    day: date
    hour: int
    attempts: int = 0
    accepted: int = 0
    deferred: int = 0


@dataclass(frozen=True)
class WarmupChanges:
    """What changed since the last `take_changes`: usage as increments, throttles whole."""

    usage: list[UsageCount]
    throttles: dict[tuple[str, str], Throttle]

    def __bool__(self) -> bool:
        return bool(self.usage or self.throttles)


@dataclass(frozen=True)
class ProviderStatus:
    """One row of `mailer warmup status`."""

    ip: str
    provider: str
    warm_day: int | None
    ip_day_cap: int | None
    ip_day_used: int
    ip_hour_cap: int | None
    ip_hour_used: int
    day_cap: int | None
    day_used: int
    hour_cap: int | None  # with the throttle's multiplier
    hour_used: int
    multiplier: float
    state: str  # ok | slowed | paused
    paused_until: datetime | None
    reason: str


def _start_of_hour(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _start_of_day(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def _left(cap: int | None, used: int) -> int:
    return UNLIMITED if cap is None else max(0, cap - used)


class WarmupBudget:
    """Counters of the day per (IP, provider, hour) and the throttles: asked before, told after."""

    def __init__(self, plan: WarmupPlan, *, usage: Iterable[UsageCount] = (), throttles: Mapping[tuple[str, str], Throttle] | None = None) -> None:
        self.plan = plan
        self._ips = {ip.name: ip for ip in plan.ips}
        self._used: dict[tuple[str, str, date, int], list[int]] = {}  # attempts, accepted, deferred
        self._delta: dict[tuple[str, str, date, int], list[int]] = {}
        # attempts summed four ways, keyed (ip, provider or "", day, hour or -1): asked per attempt
        self._attempts: dict[tuple[str, str, date, int], int] = {}
        self._throttles: dict[tuple[str, str], Throttle] = dict(throttles or {})
        self._changed: set[tuple[str, str]] = set()
        self._recent: dict[tuple[str, str], deque[datetime]] = {}
        self._today: date | None = None
        self._decisions: list[str] = []
        for row in usage:
            grant = Grant(row.ip, row.provider, row.day, row.hour)
            for column, value in enumerate((row.attempts, row.accepted, row.deferred)):
                self._count(grant, column, value, changed=False)

    # -- questions -------------------------------------------------------------------------

    def warming(self, ip: str, now: datetime) -> bool:
        """Whether the IP is within its warm-up schedule today (its budget goes to engaged leads first)."""
        sending = self._ips[ip]
        day = self.plan.day_of(sending, now.astimezone(timezone.utc).date())
        return day is not None and daily_cap(self.plan.schedule, day) is not None

    def throttle(self, ip: str, provider: str, now: datetime) -> Throttle:
        """The (IP, provider) throttle, stepped up if a clean period has passed."""
        current = self._throttles.get((ip, provider), Throttle())
        stepped, reason = recover(current, now=now, policy=self.plan.policy)
        self._set(ip, provider, stepped, reason)
        return stepped

    def limits(self, ip: str, provider: str, now: datetime) -> ProviderLimits:
        """The provider's connection limits now: concurrency and rate scaled by the multiplier."""
        base = self.plan.provider_limits(provider)
        multiplier = self.throttle(ip, provider, now).multiplier
        per_minute = max(1, math.floor(base.per_minute * multiplier)) if base.per_minute else 0
        return dataclasses.replace(base, concurrency=max(1, math.floor(base.concurrency * multiplier)), per_minute=per_minute)

    def allowance(self, ip: str, provider: str, now: datetime) -> int:
        """How many more attempts this IP may make at this provider right now."""
        return min(left for left, _ in self._constraints(ip, provider, now))

    def next_opening(self, ip: str, provider: str, now: datetime) -> tuple[datetime, str]:
        """When the budget of (IP, provider) opens again, and what holds it shut now."""
        shut = [(at, why) for left, (at, why) in self._constraints(ip, provider, now) if left <= 0]
        if not shut:
            return now, "open"
        at = max(at for at, _ in shut)
        return at, "; ".join(why for _, why in shut)

    def pick_ip(self, provider: str, now: datetime) -> str | None:
        """The sending IP with the most budget left for this provider, or None if all are spent."""
        best = max(self.plan.ips, key=lambda ip: self.allowance(ip.name, provider, now))
        return best.name if self.allowance(best.name, provider, now) > 0 else None

    def _constraints(self, ip: str, provider: str, now: datetime) -> list[tuple[int, tuple[datetime, str]]]:
        """(attempts left, (when it frees, why)) for every limit on (IP, provider) now."""
        sending = self._ips[ip]
        today, hour = now.astimezone(timezone.utc).date(), now.astimezone(timezone.utc).hour
        next_hour = _start_of_hour(now) + timedelta(hours=1)
        tomorrow = _start_of_day(today + timedelta(days=1))
        throttle = self.throttle(ip, provider, now)
        caps = self.plan.caps(sending, provider, today)
        found: list[tuple[int, tuple[datetime, str]]] = [(UNLIMITED, (now, "open"))]
        if throttle.state(now) == "paused":
            assert throttle.paused_until is not None
            found.append((0, (throttle.paused_until, f"{provider} paused: {throttle.reason}")))
        hour_cap = caps.hour
        if hour_cap is not None:
            hour_cap = max(1, math.floor(hour_cap * throttle.multiplier))
        found += [
            (_left(caps.ip_day, self._sum(ip, None, today, None)), (tomorrow, f"{ip}'s daily cap {caps.ip_day} reached")),
            (_left(caps.ip_hour, self._sum(ip, None, today, hour)), (next_hour, f"{ip}'s hourly cap {caps.ip_hour} reached")),
            (_left(caps.day, self._sum(ip, provider, today, None)), (tomorrow, f"{provider}'s daily cap {caps.day} reached")),
            (_left(hour_cap, self._sum(ip, provider, today, hour)), (next_hour, f"{provider}'s hourly cap {hour_cap} reached")),
        ]
        base_rate = self.plan.provider_limits(provider).per_minute
        per_minute = max(1, math.floor(base_rate * throttle.multiplier)) if base_rate else None
        if hour_cap is not None:
            pace = math.ceil(hour_cap / PACE_MINUTES)
            per_minute = min(per_minute, pace) if per_minute else pace
        if per_minute is not None:
            recent = self._window(ip, provider, now)
            frees = recent[0] + MINUTE if recent else now
            found.append((_left(per_minute, len(recent)), (frees, f"{provider}'s rate of {per_minute}/min reached")))
        return found

    def _sum(self, ip: str, provider: str | None, day: date, hour: int | None) -> int:
        return self._attempts.get((ip, provider or "", day, -1 if hour is None else hour), 0)

    def _window(self, ip: str, provider: str, now: datetime) -> deque[datetime]:
        recent = self._recent.setdefault((ip, provider), deque())
        while recent and recent[0] <= now - MINUTE:
            recent.popleft()
        return recent

    # -- attempts --------------------------------------------------------------------------

    def reserve(self, ip: str, provider: str, now: datetime) -> Grant | None:
        """Take one attempt from the budget, or None when there is none left now."""
        if self.allowance(ip, provider, now) <= 0:
            return None
        utc = now.astimezone(timezone.utc)
        if utc.date() != self._today:
            self._today = utc.date()
            self._forget_before(utc.date() - timedelta(days=1))
        grant = Grant(ip, provider, utc.date(), utc.hour)
        self._count(grant, 0, +1)
        self._window(ip, provider, now).append(now)
        return grant

    def release(self, grant: Grant) -> None:
        """Give back an attempt that was never made (a message that could not be built)."""
        self._count(grant, 0, -1)

    def record_sent(self, grant: Grant, now: datetime, *, accepted: bool = True) -> str | None:
        """The provider answered (accepted, or refused a recipient); returns a throttle decision."""
        if not accepted:
            return None
        self._count(grant, 1, +1)
        throttle, reason = on_accepted(self.throttle(grant.ip, grant.provider, now), now=now, policy=self.plan.policy)
        return self._set(grant.ip, grant.provider, throttle, reason)

    def record_deferred(self, grant: Grant, now: datetime, *, reply: SMTPReply, reason: Reason | None = None) -> str | None:
        """A 4xx, or a 5xx refusing the sender: slows or pauses the provider if it is a rate signal."""
        self._count(grant, 2, +1)
        signal = throttle_signal(reply, reason)
        if signal is None:
            return None
        throttle, decision = on_signal(
            self.throttle(grant.ip, grant.provider, now), signal, now=now, what=str(reply), policy=self.plan.policy
        )
        return self._set(grant.ip, grant.provider, throttle, decision)

    def record_reply(self, grant: Grant, reply: SMTPReply | None, now: datetime, *, reason: Reason | None = None) -> str | None:
        """Tell the budget how an attempt ended; None: no SMTP transaction happened."""
        if reply is None:
            self.release(grant)
            return None
        if reply.code is not None and 200 <= reply.code < 300:
            return self.record_sent(grant, now)
        if reply.code is not None and reply.code >= 500 and throttle_signal(reply, reason) is not Signal.BLOCK:
            return self.record_sent(grant, now, accepted=False)
        return self.record_deferred(grant, now, reply=reply, reason=reason)

    def _count(self, grant: Grant, column: int, step: int, *, changed: bool = True) -> None:
        key = (grant.ip, grant.provider, grant.day, grant.hour)
        self._used.setdefault(key, [0, 0, 0])[column] += step
        if changed:
            self._delta.setdefault(key, [0, 0, 0])[column] += step
        if column == 0:
            for provider in (grant.provider, ""):
                for hour in (grant.hour, -1):
                    total = (grant.ip, provider, grant.day, hour)
                    self._attempts[total] = self._attempts.get(total, 0) + step

    def _set(self, ip: str, provider: str, throttle: Throttle, reason: str | None) -> str | None:
        """Keep a changed throttle for the store; a decision (with its reason) is also logged."""
        stored = self._throttles.get((ip, provider))
        if throttle is not stored and throttle != (stored or Throttle()):
            self._throttles[(ip, provider)] = throttle
            self._changed.add((ip, provider))
        if reason is None:
            return None
        decision = f"{ip} → {provider}: {reason}"
        self._decisions.append(decision)
        return decision

    def _forget_before(self, day: date) -> None:
        for counts in (self._used, self._attempts):
            for key in [key for key in counts if key[2] < day]:
                del counts[key]

    # -- decisions, persistence and status -------------------------------------------------

    def take_decisions(self) -> list[str]:
        """Every throttle decision since the last call, for the log: also the ones taken while
        answering a question (a clean period that ended while `allowance` was asked)."""
        decisions, self._decisions = self._decisions, []
        return decisions

    def take_changes(self) -> WarmupChanges:
        """Usage increments and changed throttles since the last call, for the store to add."""
        usage = [UsageCount(ip, p, d, h, *counts) for (ip, p, d, h), counts in self._delta.items() if any(counts)]
        changes = WarmupChanges(usage, {key: self._throttles[key] for key in self._changed})
        self._delta, self._changed = {}, set()
        return changes

    def restore(self, changes: WarmupChanges) -> None:
        """Put back changes the store failed to write, so the next `take_changes` has them."""
        for row in changes.usage:
            counts = self._delta.setdefault((row.ip, row.provider, row.day, row.hour), [0, 0, 0])
            counts[0] += row.attempts
            counts[1] += row.accepted
            counts[2] += row.deferred
        self._changed.update(changes.throttles)

    def status(self, now: datetime, providers: Iterable[str] = ()) -> list[ProviderStatus]:
        """Every IP with every provider named, configured with a share, or seen today."""
        today, hour = now.astimezone(timezone.utc).date(), now.astimezone(timezone.utc).hour
        seen = {p for (_, p, d, _), _ in self._used.items() if d == today} | {p for _, p in self._throttles}
        names = list(dict.fromkeys([*self.plan.shares, *providers, *sorted(seen)]))
        rows = []
        for ip in self.plan.ips:
            for provider in names:
                caps = self.plan.caps(ip, provider, today)
                throttle = self.throttle(ip.name, provider, now)
                hour_cap = None if caps.hour is None else max(1, math.floor(caps.hour * throttle.multiplier))
                rows.append(
                    ProviderStatus(
                        ip=ip.name, provider=provider, warm_day=self.plan.day_of(ip, today),
                        ip_day_cap=caps.ip_day, ip_day_used=self._sum(ip.name, None, today, None),
                        ip_hour_cap=caps.ip_hour, ip_hour_used=self._sum(ip.name, None, today, hour),
                        day_cap=caps.day, day_used=self._sum(ip.name, provider, today, None),
                        hour_cap=hour_cap, hour_used=self._sum(ip.name, provider, today, hour),
                        multiplier=throttle.multiplier, state=throttle.state(now),
                        paused_until=throttle.paused_until if throttle.state(now) == "paused" else None,
                        reason=throttle.reason,
                    )
                )
        return rows
