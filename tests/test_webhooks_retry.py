"""`mailer webhooks retry`: deliveries given up on go again, with a new series of tries, to a mended receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web

from conftest import http_hook
from mailer.clock import FakeClock
from mailer.config import load_config
from mailer.sqlitestore import SQLiteStore
from mailer.webhooks import WebhookSender
from test_leadsshell import ALICE, CONFIG, make_workspace, run


@pytest.fixture
def mended() -> Iterator[tuple[str, list[bytes], dict[str, bool]]]:
    """A real HTTP receiver on loopback that answers 500 until `mended["ok"]` is set, then 204."""
    switch = {"ok": False}
    with http_hook(lambda _: web.Response(status=204) if switch["ok"] else web.Response(status=500, text="broken")) as (url, bodies):
        yield url, bodies, switch


def test_given_up_deliveries_go_again_after_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    mended: tuple[str, list[bytes], dict[str, bool]],
) -> None:
    """A stage change given up after its one try is pending again after `webhooks retry`, and the mended receiver gets it."""
    url, bodies, switch = mended
    hook = f'\n[webhooks.crm]\nurl = "{url}"\nsecret = "{"s" * 32}"\nevents = ["stage_changed"]\nmax_attempts = 1\n'
    make_workspace(tmp_path, CONFIG + hook)
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "scores", "rebuild")[0] == 0  # Alice → MQL: one delivery
    config = load_config(tmp_path / "mailer.toml")
    clock = FakeClock(datetime.now(timezone.utc) + timedelta(minutes=1))

    async def deliver() -> int:
        async with SQLiteStore(config.store) as store:
            sender = WebhookSender(store, config.webhooks, clock)
            try:
                return await sender.deliver_due()
            finally:
                await sender.stop()

    assert asyncio.run(deliver()) == 1 and len(bodies) == 1  # 500: given up at once (max_attempts = 1)
    assert "failed (gave up), 1 attempt" in run(capsys, "webhooks", "log")[1]
    assert run(capsys, "webhooks", "retry", "--webhook", "nope")[0] == 2
    code, out, _ = run(capsys, "webhooks", "retry", "999")
    assert code == 0 and out.startswith("no given-up delivery to send again among those ids")

    code, out, err = run(capsys, "webhooks", "retry")
    assert code == 0, err
    assert out == "1 delivery pending again, due now; no `mailer serve` is running: the next one sends them with a new series of tries\n"
    switch["ok"] = True
    assert asyncio.run(deliver()) == 1 and len(bodies) == 2
    assert bodies[0] == bodies[1] and json.loads(bodies[1])["data"]["lead"]["email"] == ALICE  # the same event, as it was
    code, out, _ = run(capsys, "webhooks", "log")
    assert "delivered, 2 attempts" in out and out.count("  HTTP 500  ") == 1 and out.count("  HTTP 204  ") == 1
    assert run(capsys, "webhooks", "retry")[1].startswith("no given-up delivery")
