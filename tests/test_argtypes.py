"""Numbers on the command line that SQLite can hold: a usage error, never an OverflowError traceback."""

import argparse

import pytest

from mailer.argtypes import LARGEST, positive
from mailer.cli import main


def test_a_positive_count_below_2_to_the_63_is_taken_and_anything_else_refused() -> None:
    """1 and LARGEST pass; 0, -1, LARGEST + 1 and words are refused with the reason."""
    assert positive("1") == 1 and positive(str(LARGEST)) == LARGEST
    for bad in ("0", "-1", str(LARGEST + 1), "ten"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive(bad)


@pytest.mark.parametrize(
    "args", [("webhooks", "retry", "99999999999999999999"), ("queue", "list", "--limit", "99999999999999999999"),
             ("bounces", "show", "99999999999999999999")],
)
def test_a_huge_number_is_a_usage_error_with_exit_2(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """A row id or limit past SQLite's INTEGER ends as argparse's one-line error and exit 2, before any file is read."""
    with pytest.raises(SystemExit) as ended:
        main(list(args))
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "is not between 1 and" in err and "Traceback" not in err
