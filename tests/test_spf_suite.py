"""Every test of the openspf RFC 7208 suite, each served from a real DNS server on loopback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailer.dnstest import ZoneServer
from mailer.spf import check_host, mail_from_identity

SUITE = "rfc7208-tests.yml"
DNS_TIMEOUT = 0.3  # seconds; the suite's TIMEOUT names each cost this much


def corpus_folder() -> Path | None:
    beside = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "spf"
    if beside.is_dir():
        return beside
    configured = os.environ.get("MAILER_CORPORA")
    if configured:
        for folder in (Path(configured) / "spf", Path(configured)):
            if (folder / SUITE).is_file():
                return folder
    return None


def suite_cases() -> list[Any]:
    folder = corpus_folder()
    if folder is None or not (folder / SUITE).is_file():
        reason = f"{SUITE} not found beside the checkout (../shared/corpora/spf) nor under $MAILER_CORPORA"
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=reason), id="suite-absent")]
    params = []
    with (folder / SUITE).open(encoding="utf-8") as stream:
        for scenario in yaml.safe_load_all(stream):
            for name, test in scenario["tests"].items():
                params.append(pytest.param(test, scenario.get("zonedata") or {}, id=name))
    return params


@pytest.mark.parametrize(("test", "zonedata"), suite_cases())
async def test_rfc7208_suite(test: dict[str, Any], zonedata: dict[str, Any]) -> None:
    """check_host gives one of the suite's allowed results, and its explanation where one is given."""
    sender, domain = mail_from_identity(str(test.get("mailfrom", "")), str(test.get("helo", "")))
    async with ZoneServer(zonedata) as server:
        got = await check_host(
            str(test["host"]), domain, sender, resolver=server.resolver(timeout=DNS_TIMEOUT), helo=str(test.get("helo", ""))
        )
    allowed = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert got.result in allowed, f"{got} ({test.get('spec')}: {test.get('description', '')})"
    if "explanation" in test:
        # the suite writes DEFAULT for "no exp= text", which our SPFResult reports as ""
        assert got.explanation == ("" if test["explanation"] == "DEFAULT" else test["explanation"])
