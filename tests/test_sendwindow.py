"""Tests for mailer.sendwindow: when a step may be sent, in the lead's local time."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.errors import ScenarioError
from mailer.sendwindow import SendWindow, is_open, next_open, parse_send_window
from mailer.yamlfile import parse_yaml

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
EVERY_DAY = frozenset(range(7))
WEEKDAYS = frozenset(range(5))


def window(days: frozenset[int], start: str, end: str) -> SendWindow:
    return SendWindow(days=days, start=time.fromisoformat(start), end=time.fromisoformat(end))


def local(tz: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int, *, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz, fold=fold)


# Parsing


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("weekdays", WEEKDAYS),
        ("everyday", EVERY_DAY),
        ("weekends", frozenset({5, 6})),
        ("mon-fri", WEEKDAYS),
        ("fri-mon", frozenset({4, 5, 6, 0})),
        ("mon, wed", frozenset({0, 2})),
        (["Mon", "tuesday", "sun"], frozenset({0, 1, 6})),
    ],
)
def test_parse_send_window_reads_days(days: object, expected: frozenset[int]) -> None:
    """Day names, full names, ranges, lists and the words weekdays/weekends/everyday all read."""
    assert parse_send_window({"days": days, "hours": "09:00-18:00"}).days == expected


@pytest.mark.parametrize(
    ("hours", "start", "end"),
    [
        ("09:00-18:00", time(9), time(18)),
        ("9:30 - 17:45", time(9, 30), time(17, 45)),
        ("22:00-06:00", time(22), time(6)),
        ("00:00-24:00", time(0), time(0)),
        ("20:00-24:00", time(20), time(0)),
    ],
)
def test_parse_send_window_reads_hours(hours: str, start: time, end: time) -> None:
    """Hours read as start and exclusive end; 24:00 is the end of the day."""
    parsed = parse_send_window({"hours": hours})
    assert (parsed.start, parsed.end) == (start, end)


def test_parse_send_window_defaults_to_always() -> None:
    """Missing days mean every day and missing hours mean all day."""
    assert parse_send_window({}) == window(EVERY_DAY, "00:00", "00:00")


@pytest.mark.parametrize(
    ("text", "line", "field", "problem", "hint"),
    [
        ("send_window:\n  days: [mon, tues]\n", 2, "send_window.days", "'tues' is not a day", "did you mean 'tue'?"),
        ("send_window:\n  days: []\n", 2, "send_window.days", "lists no days", None),
        ("send_window:\n  days: 5\n", 2, "send_window.days", "must be a list of days or a word like weekdays, not a number", None),
        ("send_window:\n  hours: 9-5\n", 2, "send_window.hours", "'9-5' is not a range of hours", None),
        ("send_window:\n  hours: '09:00-25:00'\n", 2, "send_window.hours", "'09:00-25:00' is not a time of day", None),
        ("send_window:\n  hours: '09:00-09:00'\n", 2, "send_window.hours", "'09:00-09:00' starts and ends at the same time", None),
        ("send_window:\n  day: weekdays\n", 2, "send_window.day", "unknown key 'day'", "did you mean 'days'?"),
    ],
)
def test_parse_send_window_errors_name_line_and_field(
    text: str, line: int, field: str, problem: str, hint: str | None
) -> None:
    """Bad days, hours and keys are reported on their line with the dotted field."""
    node = parse_yaml(text, file="s.yaml")["send_window"]
    with pytest.raises(ScenarioError) as caught:
        parse_send_window(node, file="s.yaml", field="send_window")
    error = caught.value
    assert (error.file, error.line, error.field, error.problem) == ("s.yaml", line, field, problem)
    assert error.hint is not None
    if hint is not None:
        assert error.hint == hint


def test_parse_send_window_refuses_a_non_mapping() -> None:
    """A bare string instead of a mapping says what to write."""
    with pytest.raises(ScenarioError, match="must be a mapping with days and hours"):
        parse_send_window("weekdays", field="send_window")  # type: ignore[arg-type]


def test_send_window_refuses_impossible_days() -> None:
    """A SendWindow cannot be built with no days or a day outside 0..6."""
    with pytest.raises(ValueError):
        window(frozenset(), "09:00", "10:00")
    with pytest.raises(ValueError):
        window(frozenset({7}), "09:00", "10:00")


# Open or not


def test_open_inside_hours_on_an_allowed_day_in_local_time() -> None:
    """A Berlin weekday window is open at 09:00 and 17:59 Berlin time and closed at 18:00."""
    office = window(WEEKDAYS, "09:00", "18:00")
    assert is_open(local(BERLIN, 2024, 6, 3, 9, 0), office, BERLIN)
    assert is_open(local(BERLIN, 2024, 6, 3, 17, 59), office, BERLIN)
    assert not is_open(local(BERLIN, 2024, 6, 3, 18, 0), office, BERLIN)
    assert not is_open(local(BERLIN, 2024, 6, 1, 12, 0), office, BERLIN)  # a Saturday


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    """A Friday 22:00-06:00 window is open early Saturday but not early Friday or late Saturday."""
    night = window(frozenset({4}), "22:00", "06:00")
    assert is_open(local(TOKYO, 2024, 6, 7, 23, 0), night, TOKYO)  # Friday night
    assert is_open(local(TOKYO, 2024, 6, 8, 5, 59), night, TOKYO)  # Saturday morning
    assert not is_open(local(TOKYO, 2024, 6, 7, 5, 0), night, TOKYO)  # Friday morning: Thursday's
    assert not is_open(local(TOKYO, 2024, 6, 8, 23, 0), night, TOKYO)  # Saturday night


def test_is_open_refuses_naive_datetimes() -> None:
    """A naive datetime has no instant, so it is refused."""
    with pytest.raises(ValueError, match="no time zone"):
        is_open(datetime(2024, 1, 1), window(EVERY_DAY, "09:00", "10:00"), TOKYO)


# Next opening


def test_next_open_is_now_when_open() -> None:
    """An open window sends right away, at the same instant."""
    at = local(TOKYO, 2024, 6, 3, 10, 0)
    assert next_open(at, window(WEEKDAYS, "09:00", "18:00"), TOKYO) == at


def test_next_open_after_friday_evening_is_monday_morning_across_dst() -> None:
    """Friday 18:00 in Berlin before the spring change opens Monday 09:00 CEST (07:00 UTC)."""
    opens = next_open(local(BERLIN, 2024, 3, 29, 18, 0), window(WEEKDAYS, "09:00", "18:00"), BERLIN)
    assert opens == datetime(2024, 4, 1, 7, 0, tzinfo=UTC) and opens.tzinfo is UTC


def test_next_open_returns_utc() -> None:
    """The next opening is an aware UTC datetime."""
    opens = next_open(local(TOKYO, 2024, 6, 3, 20, 0), window(WEEKDAYS, "09:00", "18:00"), TOKYO)
    assert opens == datetime(2024, 6, 4, 0, 0, tzinfo=UTC) and opens.tzinfo is UTC


def test_start_in_a_spring_forward_gap_opens_when_the_clock_jumps() -> None:
    """A 02:30 start on New York's spring-forward day opens at 03:00 EDT."""
    early = window(EVERY_DAY, "02:30", "04:00")
    opens = next_open(local(NEW_YORK, 2024, 3, 10, 1, 0), early, NEW_YORK)
    assert opens.astimezone(NEW_YORK) == local(NEW_YORK, 2024, 3, 10, 3, 0)
    assert not is_open(opens - timedelta(seconds=1), early, NEW_YORK)


def test_window_inside_a_gap_is_skipped_that_day() -> None:
    """A 02:10-02:50 window does not exist on the spring-forward day and opens the next day."""
    gone = window(EVERY_DAY, "02:10", "02:50")
    opens = next_open(local(NEW_YORK, 2024, 3, 10, 1, 0), gone, NEW_YORK)
    assert opens.astimezone(NEW_YORK) == local(NEW_YORK, 2024, 3, 11, 2, 10)


def test_repeated_hour_opens_once_on_a_fall_back_night() -> None:
    """A 01:00-01:30 window on New York's fall-back night is open in the first 01:00 only."""
    short = window(EVERY_DAY, "01:00", "01:30")
    first, second = local(NEW_YORK, 2024, 11, 3, 1, 10), local(NEW_YORK, 2024, 11, 3, 1, 10, fold=1)
    assert is_open(first, short, NEW_YORK) and not is_open(second, short, NEW_YORK)
    assert next_open(second, short, NEW_YORK).astimezone(NEW_YORK) == local(NEW_YORK, 2024, 11, 4, 1, 0)


def test_overnight_window_over_fall_back_lasts_the_extra_hour() -> None:
    """A 22:00-06:00 window across New York's fall-back night stays open through both 01:30s."""
    night = window(EVERY_DAY, "22:00", "06:00")
    assert is_open(local(NEW_YORK, 2024, 11, 3, 1, 30, fold=1), night, NEW_YORK)


def test_lord_howe_half_hour_gap() -> None:
    """Lord Howe skips 02:00-02:30, so a 02:00 start opens at 02:30 local that day."""
    opens = next_open(local(LORD_HOWE, 2024, 10, 6, 1, 0), window(EVERY_DAY, "02:00", "03:00"), LORD_HOWE)
    assert opens.astimezone(LORD_HOWE) == local(LORD_HOWE, 2024, 10, 6, 2, 30)


def test_a_skipped_calendar_day_moves_to_the_next_week() -> None:
    """Samoa skipped Friday 2011-12-30, so a Friday-only window opens on 2012-01-06."""
    apia = ZoneInfo("Pacific/Apia")
    opens = next_open(local(apia, 2011, 12, 28, 0, 0), window(frozenset({4}), "09:00", "10:00"), apia)
    assert opens.astimezone(apia) == local(apia, 2012, 1, 6, 9, 0)


# Properties

ZONES = [ZoneInfo(name) for name in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Lord_Howe", "America/Santiago")]
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC))
clock_times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
windows = st.builds(
    SendWindow, days=st.frozensets(st.integers(0, 6), min_size=1), start=clock_times, end=clock_times
)


@settings(max_examples=300)
@given(at=instants, window=windows, tz=st.sampled_from(ZONES))
def test_next_open_is_the_first_open_instant(at: datetime, window: SendWindow, tz: ZoneInfo) -> None:
    """next_open is not before `at`, is open, nothing sampled between is open, and it is idempotent."""
    opens = next_open(at, window, tz)
    assert opens >= at
    assert opens.tzinfo is UTC
    assert is_open(opens, window, tz)
    assert next_open(opens, window, tz) == opens
    if opens > at:
        assert not is_open(opens - timedelta(seconds=1), window, tz)
        assert not is_open(at, window, tz)
        for step in range(40):  # whole minutes spread over the wait
            sample = (at + (opens - at) * step / 40).replace(second=0, microsecond=0) + timedelta(minutes=1)
            assert sample >= opens or not is_open(sample, window, tz)


def wall_clock_open(at: datetime, window: SendWindow, tz: ZoneInfo) -> bool:
    """The naive reading of a window, right wherever the clock never jumps."""
    wall = at.astimezone(tz)
    today, yesterday, now = wall.weekday(), (wall.weekday() - 1) % 7, wall.time().replace(tzinfo=None)
    if window.start < window.end:
        return today in window.days and window.start <= now < window.end
    return (today in window.days and now >= window.start) or (yesterday in window.days and now < window.end)


@given(at=instants, window=windows, tz=st.sampled_from([ZoneInfo("UTC"), ZoneInfo("Asia/Tokyo"), ZoneInfo("Asia/Kolkata")]))
def test_is_open_matches_the_wall_clock_where_there_is_no_dst(at: datetime, window: SendWindow, tz: ZoneInfo) -> None:
    """In zones without daylight saving, open means the local clock is inside the hours."""
    assert is_open(at, window, tz) == wall_clock_open(at, window, tz)


def offset_changes(tz: ZoneInfo, year: int) -> list[datetime]:
    """The hours (UTC) of `year` at which `tz` changes its offset."""
    hours = [datetime(year, 1, 1, tzinfo=UTC) + timedelta(hours=hour) for hour in range(366 * 24)]
    return [later for earlier, later in zip(hours, hours[1:]) if earlier.astimezone(tz).utcoffset() != later.astimezone(tz).utcoffset()]


NEAR_CHANGES = [(change, tz) for tz in ZONES for year in (2024, 2025) for change in offset_changes(tz, year)]


@settings(max_examples=300)
@given(
    near=st.sampled_from(NEAR_CHANGES),
    minutes=st.integers(-36 * 60, 36 * 60),
    window=windows,
)
def test_next_open_is_the_first_open_instant_around_clock_changes(
    near: tuple[datetime, ZoneInfo], minutes: int, window: SendWindow
) -> None:
    """Around daylight-saving changes next_open is still open, first, and idempotent."""
    change, tz = near
    at = change + timedelta(minutes=minutes)
    opens = next_open(at, window, tz)
    assert opens >= at and is_open(opens, window, tz) and next_open(opens, window, tz) == opens
    if opens > at:
        assert not is_open(opens - timedelta(seconds=1), window, tz)
        minute = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while minute < min(opens, at + timedelta(hours=6)):  # every minute of the first hours
            assert not is_open(minute, window, tz)
            minute += timedelta(minutes=1)
