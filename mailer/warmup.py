"""The warm-up schedule of sending IPs, split across receiving providers. Pure: no IO, no clock.

A new IP has no reputation, and receivers rate-limit or block one that sends a lot at once.
Gmail: "increase sending volume slowly … sudden increases can cause rate limiting"
(Email sender guidelines, https://support.google.com/mail/answer/81126); Yahoo: ramp a new IP
up gradually (https://senders.yahooinc.com/best-practices/); Microsoft's Outlook.com postmaster
policies likewise (https://sendersupport.olc.protection.outlook.com/pm/policies.aspx); M3AAWG's
Sender Best Common Practices (v3, 2015) describe the same ramp. None publishes numbers. Warm-up
schedules of the large ESPs start with tens to hundreds a day and grow 1.5-2× a day; the
default here starts at 50 and grows ×1.5 a day for 30 days (about 6 million on day 30, so the
ramp ends long before), overridable as `[warmup] schedule`.

The caps, for one IP on the Nth day of its warm-up (days in UTC):

- the IP's daily cap is the schedule's Nth entry; past the schedule the IP is warm (no cap);
- its hourly cap is the daily one over `spread_hours` (at least `min_hourly`), so a day's
  volume spreads over the day instead of leaving in its first hour;
- each provider may take its share of the daily cap (and the hourly cap of that), times the
  throttle's multiplier (`mailer.throttle`) for the hour and the minute;
- each provider's per-minute limit (`mailer.providers.ProviderLimits`), and an hour's budget
  let out over at least a quarter hour, not in one burst at the top of the hour.

The budget that counts against these caps is `mailer.warmupbudget.WarmupBudget`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Literal, TypeVar

from mailer.providers import DEFAULT_LIMITS, DEFAULT_SHARES, OTHER, ProviderLimits
from mailer.throttle import ThrottlePolicy

if TYPE_CHECKING:
    from mailer.config import Config

T = TypeVar("T")


def _two_figures(value: float) -> int:
    """Round to two significant figures, as a person would write a daily cap (1,281 → 1,300)."""
    if value < 100:
        return round(value)
    magnitude = 10 ** (int(math.log10(value)) - 1)
    return int(round(value / magnitude) * magnitude)


def default_schedule(first: int = 50, growth: float = 1.5, days: int = 30) -> tuple[int, ...]:
    """The default ramp: `first` messages on day 1, ×`growth` each day, for `days` days."""
    return tuple(_two_figures(first * growth**day) for day in range(days))


DEFAULT_SCHEDULE = default_schedule()


def daily_cap(schedule: Sequence[int], day: int) -> int | None:
    """The cap on the `day`-th day of warm-up (1-based); None once the schedule is over."""
    return schedule[max(day, 1) - 1] if day <= len(schedule) else None


def hourly_cap(daily: int, *, spread_hours: int, min_hourly: int) -> int:
    """A day's cap spread over `spread_hours`, at least `min_hourly`, never above the day's."""
    return min(daily, max(min_hourly, math.ceil(daily / spread_hours)))


@dataclass(frozen=True)
class SendingIP:
    name: str
    address: str = ""  # the source address of outgoing connections; empty: the system's choice
    helo: str = ""
    warming: bool = False
    start: date | None = None  # the first day of its warm-up


@dataclass(frozen=True)
class Caps:
    """The caps that apply to one (IP, provider) on one day; None: no cap of that kind."""

    ip_day: int | None
    ip_hour: int | None
    day: int | None
    hour: int | None


@dataclass(frozen=True)
class WarmupPlan:
    """The schedule, shares and limits: everything configured, nothing counted."""

    ips: tuple[SendingIP, ...] = (SendingIP("default"),)
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    spread_hours: int = 12
    min_hourly: int = 10
    shares: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    limits: Mapping[str, ProviderLimits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    policy: ThrottlePolicy = ThrottlePolicy()

    @classmethod
    def from_config(cls, config: Config) -> WarmupPlan:
        warmup = config.warmup
        ips = tuple(
            SendingIP(
                name=name, address=ip.address, helo=ip.helo, warming=warmup.enabled and ip.warmup,
                start=date.fromisoformat(ip.warmup_start) if ip.warmup_start else None,
            )
            for name, ip in config.ips.items()
        )
        policy = ThrottlePolicy(
            repeat_window=warmup.repeat_window, pause_after=warmup.pause_after, first_pause=warmup.first_pause,
            max_pause=warmup.max_pause, clean_messages=warmup.clean_messages, clean_period=warmup.clean_period,
        )
        return cls(
            ips=ips, schedule=warmup.schedule or DEFAULT_SCHEDULE, spread_hours=warmup.spread_hours,
            min_hourly=warmup.min_hourly, shares=dict(warmup.shares), limits=dict(config.providers), policy=policy,
        )

    def ip(self, name: str) -> SendingIP:
        for ip in self.ips:
            if ip.name == name:
                return ip
        raise KeyError(f"no sending IP named {name!r}")

    def day_of(self, ip: SendingIP, today: date) -> int | None:
        """Which day of its warm-up an IP is on (1 on its start date); None when not warming."""
        if not ip.warming:
            return None
        return max(1, (today - (ip.start or today)).days + 1)

    def share(self, provider: str) -> float:
        return self.shares.get(provider, self.shares.get(OTHER, 1.0))

    def provider_limits(self, provider: str) -> ProviderLimits:
        return self.limits.get(provider) or self.limits.get(OTHER) or ProviderLimits()

    def caps(self, ip: SendingIP, provider: str, today: date) -> Caps:
        day = self.day_of(ip, today)
        ip_day = daily_cap(self.schedule, day) if day is not None else None
        if ip_day is None:
            return Caps(None, None, None, None)
        spread = {"spread_hours": self.spread_hours, "min_hourly": self.min_hourly}
        provider_day = max(1, math.floor(ip_day * self.share(provider)))
        return Caps(ip_day, hourly_cap(ip_day, **spread), provider_day, hourly_cap(provider_day, **spread))


def prioritize(candidates: Sequence[T], engagement_score: Callable[[T], float]) -> list[T]:
    """The candidates, most engaged first (ties keep their order): a warming IP's budget goes to them.

    Receivers judge a new IP by how its first recipients react (Gmail's guidelines above: send
    to engaged users first); opens and clicks from the most engaged leads build reputation,
    mail to dormant addresses spends it.
    """
    return sorted(candidates, key=lambda candidate: -engagement_score(candidate))


Brake = Literal["ok", "warn", "stop"]


def complaint_brake(
    complaints: int, delivered: int, thresholds: tuple[float, float] = (0.001, 0.003), *, min_delivered: int = 0
) -> Brake:
    """Whether a sending domain's complaint rate allows sending: ok, warn or stop.

    Gmail: "keep spam rates reported in Postmaster Tools below 0.10% and avoid ever reaching a
    spam rate of 0.30% or higher" (https://support.google.com/mail/answer/81126); Yahoo asks the
    same 0.3% (https://senders.yahooinc.com/best-practices/). Below `min_delivered` messages a
    single complaint is noise, not a rate: it can warn but never stop.
    """
    warn, stop = thresholds
    rate = complaints / delivered if delivered else (1.0 if complaints else 0.0)
    if rate >= stop and delivered >= min_delivered:
        return "stop"
    return "warn" if rate >= warn else "ok"
