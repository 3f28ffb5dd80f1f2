"""Destination-level backoff: a black-holed destination must not slow the healthy ones.

With the relay transport every message goes to one server, so the destination here is the
recipient domain (what the warm-up budget keys an unknown provider by): the relay holds
every RCPT to `blackhole.example` past the RCPT timeout, as a relay stuck on one remote
domain does. The healthy domains' throughput beside the black hole is compared with their
throughput alone, in the same test. What keeps it: the destination's circuit breaker
(mailer.breaker: one probe for a destination not heard from, held after silence) and workers
that stop waiting for a slow attempt (mailer.daemon SLOW_ATTEMPT_SECONDS).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from collections.abc import Callable
from pathlib import Path


from mailer.leads import Lead
from mailer.testing import FaultServer, Received, delay_reply

from .harness import daemon_run

HEALTHY = 3000  # about 3 s here, so the steady part (after SETTLED) is most of the run
BLACK_HOLED = 60  # one every 50 leads, so they are claimed all along the run
RUNS = 3  # each rate is the best of this many runs: one hiccup of a shared machine is not the code
TIMEOUTS = {"connect": 5, "mail": 5, "rcpt": 1.0, "data": 5}
# Issue 7's target: healthy destinations keep at least 95% of their throughput. A timing target
# is reported, not enforced (ground rule 4: shared machines are noisy; the steady ratio measures
# 0.92-0.99 here). What is enforced catches a real regression: before the destination breaker
# the ratio was 0.28.
TARGET = 0.95
REQUIRED = 0.80
# The first contact costs a fixed moment (the probe's wait, the followers held): measured apart,
# with the whole run bounded too, so that moment cannot grow unseen.
SETTLED = 1.5  # seconds: past the probe's RCPT timeout (1 s), the breaker open
REQUIRED_WHOLE = 0.75


def _leads(black_holed: int) -> list[Lead]:
    leads = []
    every = HEALTHY // black_holed if black_holed else 0
    for number in range(HEALTHY):
        leads.append(Lead(email=f"lead{number}@{'abc'[number % 3]}.example", first_name=f"L{number}", company="Co"))
        if every and number % every == every // 2:
            leads.append(Lead(email=f"void{number}@blackhole.example", first_name="V", company="Void"))
    return leads


@dataclass(frozen=True)
class Rates:
    whole: float  # healthy messages a second, first to last accepted
    steady: float  # the same from SETTLED seconds after the first one on: the black hole's first contact is over
    took: float
    stalls: int


async def _healthy_rate(tmp_path: Path, black_holed: int) -> Rates:
    async with FaultServer() as server:
        server.inject(delay_reply("RCPT", 3.0, recipient="@blackhole.example"))
        # scoring (a burst re-scoring the imported leads) and build processes (a switch from
        # building in the loop) are off: each adds a start-up transient, not what is measured
        async with daemon_run(tmp_path, server, leads=_leads(black_holed), timeouts=TIMEOUTS, scoring={"enabled": False},
                              delivery={"concurrency": 4, "build_processes": 0}) as run:  # fmt: skip
            began = time.monotonic()
            while len(_healthy(server.messages)) < HEALTHY:
                if time.monotonic() - began > 60:
                    why = run.rows(
                        "SELECT m.state, m.last_code, m.last_text, e.data, count(*) FROM messages m JOIN leads l ON l.id = m.lead_id "
                        "LEFT JOIN events e ON e.id = (SELECT max(id) FROM events WHERE message_id = m.id) "
                        "WHERE m.state != 'sent' AND l.email NOT LIKE '%@blackhole.example' GROUP BY 1, 2, 3, 4"
                    )
                    raise AssertionError(f"healthy messages stuck at {len(_healthy(server.messages))}: {run.states()}; {why}")
                await asyncio.sleep(0.02)
                # the daemon's clock keeps pace with real time: on a loaded machine a first
                # reply may take longer than the breaker's patience, and the messages held
                # behind it come back BEHIND_PROBE later, as they do in production
                await run.clock.advance(seconds=0.02)
            healthy = _healthy(server.messages)
            stalls = len(server.fired)
    first, last = healthy[0].received_at, healthy[-1].received_at
    took = (last - first).total_seconds()
    settled = first + timedelta(seconds=SETTLED)
    later = [m for m in healthy if m.received_at >= settled]
    steady = (len(later) - 1) / (last - later[0].received_at).total_seconds()
    return Rates(HEALTHY / took, steady, took, stalls)


def _healthy(messages: list[Received]) -> list[Received]:
    return [m for m in messages if not m.rcpt_tos[0].endswith("@blackhole.example")]


async def test_a_black_holed_destination_does_not_slow_the_healthy_ones(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """With one domain black-holed, the other domains keep their throughput (target 95%, reported; 80% enforced), once its first contact is over."""
    alone = max([await _healthy_rate(tmp_path / f"alone{n}", 0) for n in range(RUNS)], key=lambda r: r.steady)
    beside = max([await _healthy_rate(tmp_path / f"beside{n}", BLACK_HOLED) for n in range(RUNS)], key=lambda r: r.steady)
    ratio, whole = beside.steady / alone.steady, beside.whole / alone.whole
    figures(
        f"B1 black-holed-destination: healthy={HEALTHY} black_holed={BLACK_HOLED} rcpt_timeout={TIMEOUTS['rcpt']}s "
        f"stalled_attempts={beside.stalls} healthy_alone={alone.steady:.0f}/s healthy_beside={beside.steady:.0f}/s "
        f"(after the first {SETTLED:g}s) ratio={ratio:.2f} target>={TARGET} ({'met' if ratio >= TARGET else 'NOT met'}) "
        f"enforced>={REQUIRED}; whole run {alone.whole:.0f}/s vs "
        f"{beside.whole:.0f}/s ({alone.took:.2f}s, {beside.took:.2f}s) ratio={whole:.2f} required>={REQUIRED_WHOLE}"
    )
    assert ratio >= REQUIRED
    assert whole >= REQUIRED_WHOLE
