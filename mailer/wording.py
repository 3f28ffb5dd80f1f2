"""Counts as people read them: "1 lead", "2 leads", "0 leads", "120,055 messages"."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str = "") -> str:
    """`number` and the noun, singular for exactly one; `plural` for nouns not made with "s"."""
    if number == 1:
        return f"1 {noun}"
    return f"{number:,} {plural or noun + 's'}"
