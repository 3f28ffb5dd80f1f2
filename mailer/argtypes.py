"""Command-line numbers that the store can hold: a row id or a count is a positive integer
below 2**63 (SQLite's INTEGER is signed 64-bit; a larger Python int raises OverflowError in
the driver, a traceback instead of a user's mistake)."""

from __future__ import annotations

import argparse

LARGEST = 2**63 - 1


def positive(text: str) -> int:
    """argparse `type=`: a whole number from 1 to LARGEST, else the usage error (exit 2)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= number <= LARGEST:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and {LARGEST:,}")
    return number
