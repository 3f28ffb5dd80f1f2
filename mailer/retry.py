"""When to try a deferred message again, and when to give up: a pure policy."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailer.config import RetryConfig


@dataclass(frozen=True)
class RetryPolicy:
    first: timedelta = timedelta(minutes=20)
    max_interval: timedelta = timedelta(hours=4)
    max_age: timedelta = timedelta(days=4)  # RFC 5321 4.5.4.1: at least 4-5 days
    jitter: float = 0.2

    @classmethod
    def from_config(cls, config: RetryConfig) -> RetryPolicy:
        return cls(config.first, config.max_interval, config.max_age, config.jitter)

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        """The wait after failed attempt number `attempt` (1-based): doubling, capped, jittered."""
        base, doublings = self.first, max(attempt - 1, 0)
        # doubling stops at the cap, so that a long-deferred message cannot overflow timedelta
        while doublings and timedelta(0) < base < self.max_interval:
            base, doublings = base * 2, doublings - 1
        base = min(base, self.max_interval)
        spread = 1.0 + rng.uniform(-self.jitter, self.jitter)
        return base * spread

    def tries_by(self, elapsed: timedelta) -> int:
        """How many tries the backoff has made `elapsed` after the first, for a message whose
        tries are not counted (no SMTP attempt was made): 20 min, 40, 80, … then the cap."""
        tries, waited, wait = 1, timedelta(0), self.first
        while wait > timedelta(0) and waited + wait <= elapsed:
            waited, tries = waited + wait, tries + 1
            wait = min(wait * 2, self.max_interval)
        return tries

    def next_attempt(
        self, *, attempt: int, first_attempt_at: datetime, now: datetime, rng: random.Random
    ) -> datetime | None:
        """When to try again after a temporary failure, or None: give up, the message expires.

        The last attempt is made when the message reaches `max_age`, not one interval before.
        """
        deadline = first_attempt_at + self.max_age
        if now >= deadline:
            return None
        return min(now + self.delay(attempt, rng), deadline)
