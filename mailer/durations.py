"""Durations as marketers write them: ``2d``, ``3h30m``, ``45m``, ``90s``, ``1w``, ``0``.

Units come largest first (w d h m s), each at most once, with no spaces. Units are lower
case only: ``1M`` is refused rather than read as one minute when a month was meant.
"""

from __future__ import annotations

import re
from datetime import timedelta

HINT = "use a number followed by w, d, h, m or s, e.g. 2d or 3h30m"

_UNITS = (("w", 7 * 24 * 3600), ("d", 24 * 3600), ("h", 3600), ("m", 60), ("s", 1))
_PATTERN = re.compile("".join(rf"(?:(?P<{unit}>[0-9]{{1,9}}){unit})?" for unit, _ in _UNITS))


def parse_duration(text: str) -> timedelta:
    """The duration `text` spells; ValueError (show it with `HINT`) when it spells none."""
    spelled = text.strip()
    if spelled == "0":
        return timedelta(0)
    match = _PATTERN.fullmatch(spelled)
    if not spelled or match is None:
        raise ValueError(f"{_shown(text)} is not a duration")
    seconds = sum(int(match[unit] or 0) * size for unit, size in _UNITS)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{_shown(text)} is too long a duration") from None


def format_duration(duration: timedelta) -> str:
    """Spell `duration` the way `parse_duration` reads it, largest units first: ``1w2d3h``.

    Raises ValueError for negative durations and fractions of a second, which no scenario
    file can express.
    """
    if duration < timedelta(0):
        raise ValueError(f"{duration} is negative")
    if duration.microseconds:
        raise ValueError(f"{duration} is not a whole number of seconds")
    remaining = duration.days * 24 * 3600 + duration.seconds
    parts: list[str] = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
