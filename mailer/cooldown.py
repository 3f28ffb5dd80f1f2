"""Slowing down for a receiver that blocks us: a pause per provider that grows while it lasts.

When a receiver refuses us for our own reasons (blocklisting, reputation, too many
connections), sending it more only digs the hole deeper. Its further messages wait out a
cooldown that starts at 30 minutes and doubles while refusals keep coming, to a 4-hour cap
(the same ceiling as the retry schedule). Providers are keyed by recipient domain until
MX-based provider groups arrive with the deliverability work; the state lives in memory,
so a restart starts with a clean slate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

FIRST_PAUSE = timedelta(minutes=30)
MAX_PAUSE = timedelta(hours=4)


@dataclass
class _Pause:
    until: datetime
    length: timedelta


class ProviderCooldowns:
    def __init__(self) -> None:
        self._pauses: dict[str, _Pause] = {}

    def refused(self, provider: str, now: datetime) -> datetime:
        """A refusal of the sender by `provider`: pause it (longer if it was paused already)."""
        pause = self._pauses.get(provider)
        length = FIRST_PAUSE if pause is None or pause.until < now - MAX_PAUSE else min(pause.length * 2, MAX_PAUSE)
        self._pauses[provider] = _Pause(until=now + length, length=length)
        return now + length

    def paused_until(self, provider: str, now: datetime) -> datetime | None:
        pause = self._pauses.get(provider)
        return pause.until if pause is not None and pause.until > now else None


def provider_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
