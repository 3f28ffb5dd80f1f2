"""Run the openspf SPF test suites through check_host() against the loopback DNS server.

    python bench/spf_suite.py [--corpus DIR] [--quick]

DIR holds the suites described in ``/work/shared/corpora/README.md`` section 2. Every test of
``rfc7208-tests.yml`` must pass; ``rfc4408-tests.yml`` and ``pyspf-test.yml`` are reported as
extra figures only (some of their expectations changed with RFC 7208, and pyspf's own cases
use pyspf-only results such as "ambiguous"). Each scenario's zone data is served by its own
`ZoneServer` on 127.0.0.1 and all tests run concurrently. The last line printed is one JSON
object; the exit status is 1 when any rfc7208 test fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mailer.dnstest import ZoneServer
from mailer.spf import SPFResult, check_host, mail_from_identity

ENFORCED = "rfc7208-tests.yml"
EXTRA = ("rfc4408-tests.yml", "pyspf-test.yml")
DNS_TIMEOUT = 0.5  # seconds: the suites' TIMEOUT names cost this much each
CONCURRENCY = 64  # checks in flight at once, so that a busy machine does not fake timeouts


def default_corpus() -> Path:
    """../shared/corpora/spf next to the checkout, else $MAILER_CORPORA (its spf/ folder)."""
    beside = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "spf"
    if beside.is_dir() or "MAILER_CORPORA" not in os.environ:
        return beside
    configured = Path(os.environ["MAILER_CORPORA"])
    return configured / "spf" if (configured / "spf").is_dir() else configured


@dataclass(frozen=True)
class Case:
    name: str
    scenario: int
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None  # None: not checked; "DEFAULT": no exp= text

    def judge(self, got: SPFResult) -> str | None:
        """Why `got` fails this case, or None when it passes."""
        if got.result not in self.results:
            return f"result {got.result} ({got.mechanism}), want {'|'.join(self.results)}"
        want = "" if self.explanation == "DEFAULT" else self.explanation
        if want is not None and got.explanation != want:
            return f"explanation {got.explanation!r}, want {want!r}"
        return None


def load(path: Path) -> tuple[list[Case], list[dict[str, Any]]]:
    """The cases of one suite file and the zone data of each of its scenarios."""
    cases: list[Case] = []
    zones: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as stream:
        for index, scenario in enumerate(yaml.safe_load_all(stream)):
            zones.append(scenario.get("zonedata") or {})
            for name, test in scenario["tests"].items():
                results = test["result"]
                cases.append(
                    Case(
                        name=name,
                        scenario=index,
                        helo=str(test.get("helo", "")),
                        host=str(test["host"]),
                        mailfrom=str(test.get("mailfrom", "")),
                        results=tuple(results) if isinstance(results, list) else (results,),
                        explanation=test.get("explanation"),
                    )
                )
    return cases, zones


async def run(cases: list[Case], zones: list[dict[str, Any]]) -> list[SPFResult]:
    servers = [ZoneServer(zone) for zone in zones]
    await asyncio.gather(*(server.start() for server in servers))
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> SPFResult:
        sender, domain = mail_from_identity(case.mailfrom, case.helo)
        resolver = servers[case.scenario].resolver(timeout=DNS_TIMEOUT)
        async with limit:
            return await check_host(case.host, domain, sender, resolver=resolver, helo=case.helo, now=0)

    try:
        return list(await asyncio.gather(*(one(case) for case in cases)))
    finally:
        await asyncio.gather(*(server.stop() for server in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=default_corpus())
    parser.add_argument("--quick", action="store_true", help="accepted for CI symmetry; the suites are small and always run whole")
    args = parser.parse_args(argv)

    figures: dict[str, Any] = {}
    for suite in (ENFORCED, *EXTRA):
        path = args.corpus / suite
        if not path.exists():
            print(f"{suite}: not found under {args.corpus}")
            if suite == ENFORCED:
                return 1
            continue
        cases, zones = load(path)
        start = time.perf_counter()
        results = asyncio.run(run(cases, zones))
        seconds = time.perf_counter() - start
        failures = [(case, why) for case, got in zip(cases, results) if (why := case.judge(got)) is not None]
        label = "FAIL" if suite == ENFORCED else "differs (not enforced)"
        for case, why in failures:
            print(f"  {label} {suite} {case.name}: {why}")
        passed = len(cases) - len(failures)
        print(f"{suite}: {passed} / {len(cases)} passed in {seconds:.2f} s")
        figures[suite] = {"passed": passed, "failed": len(failures), "total": len(cases), "seconds": round(seconds, 3)}

    main_figures = figures[ENFORCED]
    result = {**main_figures, "extra": {suite: figures[suite] for suite in EXTRA if suite in figures}}
    print(json.dumps(result))
    return 0 if main_figures["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
