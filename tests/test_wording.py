"""Counts in words: singular for exactly one."""

from mailer.wording import counted


def test_one_is_singular_and_every_other_number_plural() -> None:
    """1 takes the singular; 0 and 2 the plural, made with "s" or given."""
    assert counted(1, "lead") == "1 lead"
    assert counted(0, "lead") == "0 leads"
    assert counted(2, "address", "addresses") == "2 addresses"
    assert counted(1, "address", "addresses") == "1 address"
