"""Figures: each reliability test reports one line, printed again at the end of the session.

A test takes the `figures` fixture and calls it once with its line, e.g.
``figures("F9 lost-ack: messages=500 lost=0 duplicates=37 max_dup_per_message=1")``. The
lines show under `-s` as they happen and, in any run, in a "reliability figures" section of
the terminal summary, so CI logs carry them without extra flags.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

import pytest

from .harness import SPAWNED

_LINES: list[str] = []


@pytest.fixture(autouse=True)
def _no_daemon_left_behind() -> Iterator[None]:
    """A test that fails halfway must not leave its `mailer serve` running."""
    yield
    while SPAWNED:
        process = SPAWNED.pop()
        if process.returncode is None:  # not reaped yet, so the pid is still this child's
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(process.pid, signal.SIGKILL)
                os.waitpid(process.pid, 0)


@pytest.fixture
def figures() -> Callable[[str], None]:
    def report(line: str) -> None:
        _LINES.append(line)
        print(line, flush=True)

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LINES:
        terminalreporter.section("reliability figures")
        for line in _LINES:
            terminalreporter.write_line(line)
