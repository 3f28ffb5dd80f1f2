"""Send windows: the days and hours, in the lead's local time, when a step may be sent.

A window on an allowed day is the stretch of real time from the first moment the lead's
clock reads `start` to the first moment it reads `end`. That one rule settles daylight
saving time: a 02:30 start on a spring-forward night opens when the clock jumps to 03:00,
and on a fall-back night a 01:00–01:30 window is open during the first 01:00–01:30 only,
so nobody is mailed twice as often because the clock repeated an hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from mailer.errors import ScenarioError
from mailer.yamlfile import check_keys, closest, describe, item_line, key_line, subfield

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAYS = {name: number for names in (DAY_NAMES, _FULL_NAMES) for number, name in enumerate(names)}
_DAY_SETS = {
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
    "everyday": frozenset(range(7)),
    "every day": frozenset(range(7)),
    "daily": frozenset(range(7)),
}
_HOURS = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*[-–]\s*([0-9]{1,2}):([0-9]{2})\s*", re.ASCII)
_HOURS_HINT = 'write hours as "HH:MM-HH:MM" in 24-hour time, e.g. "09:00-18:00" (00:00-24:00 for all day)'
_DAYS_HINT = "use mon, tue, wed, thu, fri, sat, sun, a range like mon-fri, or weekdays, weekends, everyday"
# Wide enough to step over a week whose only allowed day fell in a skipped stretch of clock
# time (Pacific/Apia skipped all of 2011-12-30 when it crossed the date line).
_SEARCH_DAYS = 21


@dataclass(frozen=True)
class SendWindow:
    """Allowed weekdays (0 = Monday) and local hours; `end` is exclusive.

    When `start` is after `end` the window spans midnight and belongs to the day it starts
    on (22:00–06:00 on Friday runs into Saturday morning). When they are equal the window
    lasts a whole day from `start` (00:00–24:00 is written that way).
    """

    days: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            raise ValueError(f"days must be a non-empty set of 0..6, not {sorted(self.days)}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("start and end are local wall-clock times and carry no time zone")


def is_open(at: datetime, window: SendWindow, tz: ZoneInfo) -> bool:
    """Whether the window is open at the aware instant `at` for a lead living in `tz`."""
    local_day = _aware(at).astimezone(tz).date()
    # A window that starts on a day may still be open two local dates later when it spans
    # midnight and the clock went back across midnight; one day ahead covers the mirror case.
    for day in _days(local_day - timedelta(days=2), 4):
        if day.weekday() in window.days:
            opens, closes = _occurrence(day, window, tz)
            if opens <= at < closes:
                return True
    return False


def next_open(at: datetime, window: SendWindow, tz: ZoneInfo) -> datetime:
    """The first instant at or after the aware instant `at` when the window is open, in UTC."""
    if is_open(at, window, tz):
        return at.astimezone(timezone.utc)
    # Openings come in the order of their days, so the first one after `at` is the answer.
    for day in _days(at.astimezone(tz).date() - timedelta(days=1), _SEARCH_DAYS):
        if day.weekday() in window.days:
            opens, closes = _occurrence(day, window, tz)
            if at < opens < closes:
                return opens
    raise ValueError(f"the send window {window} does not open within {_SEARCH_DAYS} days of {at}")


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at} has no time zone; pass an aware datetime")
    return at


def _days(first: date, count: int) -> Iterator[date]:
    return (first + timedelta(days=offset) for offset in range(count))


def _occurrence(day: date, window: SendWindow, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The real-time stretch [opens, closes) of the window that starts on local date `day`."""
    closing_day = day if window.start < window.end else day + timedelta(days=1)
    opens = _first_reading(datetime.combine(day, window.start), tz)
    closes = _first_reading(datetime.combine(closing_day, window.end), tz)
    return opens, closes


def _first_reading(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) at which a clock in `tz` reads the naive `wall` time or later."""
    candidates = sorted({wall.replace(tzinfo=tz, fold=fold).astimezone(timezone.utc) for fold in (0, 1)})
    for instant in candidates:
        if _reading(instant, tz) == wall:
            return instant  # the earlier of the two when the clock reads `wall` twice
    # `wall` is skipped by a jump forward. Read with the offset after the jump it lies
    # before the jump, read with the offset before it lies after; the jump is in between.
    before, after = candidates[0], candidates[-1]
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if _reading(before + timedelta(seconds=middle), tz) >= wall:
            high = middle
        else:
            low = middle
    return before + timedelta(seconds=high)


def _reading(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def parse_send_window(
    value: Mapping[str, Any], *, file: str | None = None, field: str = "send_window", line: int | None = None
) -> SendWindow:
    """Build a SendWindow from ``{days: [mon, tue] | weekdays | everyday, hours: "09:00-18:00"}``.

    A missing `days` means every day and missing `hours` means all day. `file`, `field` and
    `line` (where `value` is written) go into the ScenarioError raised for a bad window.
    """
    if not isinstance(value, Mapping):
        raise ScenarioError(
            f"must be a mapping with days and hours, not {describe(value)}",
            file=file,
            line=line,
            field=field,
            hint='e.g. send_window: {days: weekdays, hours: "09:00-18:00"}',
        )
    check_keys(value, ("days", "hours"), file=file, field=field)
    days = _parse_days(value, file=file, field=subfield(field, "days"))
    start, end = _parse_hours(value, file=file, field=subfield(field, "hours"))
    return SendWindow(days=days, start=start, end=end)


def _parse_days(window: Mapping[str, Any], *, file: str | None, field: str) -> frozenset[int]:
    spelled = window.get("days", "everyday")
    if isinstance(spelled, str):
        tokens = [(token, key_line(window, "days")) for token in spelled.split(",")]
    elif isinstance(spelled, list):
        tokens = [(token, item_line(spelled, index)) for index, token in enumerate(spelled)]
    else:
        raise ScenarioError(
            f"must be a list of days or a word like weekdays, not {describe(spelled)}",
            file=file, line=key_line(window, "days"), field=field, hint=_DAYS_HINT,
        )
    days: set[int] = set()
    for token, line in tokens:
        try:
            days |= _day_set(token)
        except ValueError as error:
            raise ScenarioError(str(error), file=file, line=line, field=field, hint=_day_hint(token)) from None
    if not days:
        line = key_line(window, "days")
        raise ScenarioError("lists no days", file=file, line=line, field=field, hint=_DAYS_HINT)
    return frozenset(days)


def _day_set(token: object) -> frozenset[int]:
    if not isinstance(token, str):
        raise ValueError(f"{token!r} is not a day")
    name = " ".join(token.lower().split())
    if name in _DAY_SETS:
        return _DAY_SETS[name]
    first, dash, last = (part.strip() for part in name.partition("-"))
    if first not in _DAYS or (dash and last not in _DAYS):
        raise ValueError(f"{token!r} is not a day")
    if not dash:
        return frozenset({_DAYS[first]})
    span = (_DAYS[last] - _DAYS[first]) % 7  # fri-mon wraps over the weekend
    return frozenset((_DAYS[first] + offset) % 7 for offset in range(span + 1))


def _day_hint(token: object) -> str:
    close = closest(token.lower().strip(), [*_DAYS, *_DAY_SETS]) if isinstance(token, str) else None
    return _DAYS_HINT if close is None else f"did you mean {close!r}?"


def _parse_hours(window: Mapping[str, Any], *, file: str | None, field: str) -> tuple[time, time]:
    spelled = window.get("hours", "00:00-24:00")

    def refuse(problem: str) -> ScenarioError:
        return ScenarioError(problem, file=file, line=key_line(window, "hours"), field=field, hint=_HOURS_HINT)

    match = _HOURS.fullmatch(spelled) if isinstance(spelled, str) else None
    if match is None:
        raise refuse(f"{spelled!r} is not a range of hours")
    start_hour, start_minute, end_hour, end_minute = (int(part) for part in match.groups())
    if start_hour > 23 or end_hour > 24 or max(start_minute, end_minute) > 59 or (end_hour, end_minute) > (24, 0):
        raise refuse(f"{spelled!r} is not a time of day")
    start, end = time(start_hour, start_minute), time(end_hour % 24, end_minute)
    if start == end and not (start == time(0) and end_hour == 24):
        raise refuse(f"{spelled!r} starts and ends at the same time")
    return start, end
