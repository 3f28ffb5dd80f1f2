"""Tests for mailer.durations: the `2d`, `3h30m` durations of scenario files."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.durations import HINT, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2d", timedelta(days=2)),
        ("3h30m", timedelta(hours=3, minutes=30)),
        ("45m", timedelta(minutes=45)),
        ("90s", timedelta(seconds=90)),
        ("1w", timedelta(weeks=1)),
        ("0", timedelta(0)),
        ("0m", timedelta(0)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        (" 5m ", timedelta(minutes=5)),
    ],
)
def test_parse_duration_reads_units_largest_first(text: str, expected: timedelta) -> None:
    """Each documented spelling reads as the duration it names."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "2", "90", "1M", "2D", "2d3w", "1d1d", "1 d", "-1d", "1.5h", "2days", "٢d"])
def test_parse_duration_refuses_anything_else(text: str) -> None:
    """Missing units, upper case, wrong order, repeats, spaces, signs, fractions and words are refused."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_parse_duration_refuses_overflow_with_a_short_message() -> None:
    """A duration too long for timedelta is a ValueError, not an OverflowError."""
    with pytest.raises(ValueError, match="too long"):
        parse_duration("999999999w")


def test_hint_shows_the_format() -> None:
    """The hint callers attach names every unit and gives an example."""
    assert HINT == "use a number followed by w, d, h, m or s, e.g. 2d or 3h30m"


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(0), "0"),
        (timedelta(days=9), "1w2d"),
        (timedelta(hours=3, minutes=30), "3h30m"),
        (timedelta(seconds=90), "1m30s"),
    ],
)
def test_format_duration_spells_largest_units_first(duration: timedelta, text: str) -> None:
    """Durations are spelled with the largest units first and zero as `0`."""
    assert format_duration(duration) == text


@pytest.mark.parametrize("duration", [timedelta(seconds=-1), timedelta(milliseconds=1500)])
def test_format_duration_refuses_what_no_file_can_express(duration: timedelta) -> None:
    """Negative durations and fractions of a second cannot be spelled."""
    with pytest.raises(ValueError):
        format_duration(duration)


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100_000)).map(
    lambda duration: duration - timedelta(microseconds=duration.microseconds)
))
def test_format_then_parse_round_trips(duration: timedelta) -> None:
    """Any whole-second, non-negative duration survives formatting and parsing."""
    assert parse_duration(format_duration(duration)) == duration


@given(st.tuples(*(st.integers(0, 999) for _ in range(5))))
def test_parse_then_format_is_canonical(counts: tuple[int, ...]) -> None:
    """Formatting a parsed duration gives a spelling that parses to the same duration."""
    text = "".join(f"{count}{unit}" for count, unit in zip(counts, "wdhms"))
    duration = parse_duration(text)
    assert parse_duration(format_duration(duration)) == duration
    assert format_duration(parse_duration(format_duration(duration))) == format_duration(duration)


@given(st.text(max_size=20))
def test_parse_duration_only_raises_value_error(text: str) -> None:
    """Arbitrary text either parses to a non-negative duration or raises ValueError."""
    try:
        assert parse_duration(text) >= timedelta(0)
    except ValueError:
        pass
