"""The store's time format: integer milliseconds since the epoch, UTC."""

from __future__ import annotations

from datetime import datetime, timezone


def ms(at: datetime) -> int:
    """An instant as integer milliseconds since the epoch, the store's time format."""
    return int(at.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
