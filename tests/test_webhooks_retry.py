"""`mailer webhooks retry`: deliveries given up on go again, with a new series of tries, to a mended receiver."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mailer.clock import FakeClock
from mailer.config import load_config
from mailer.sqlitestore import SQLiteStore
from mailer.webhooks import WebhookSender
from test_leadsshell import ALICE, CONFIG, make_workspace, run


@pytest.fixture
def mended() -> Iterator[tuple[str, list[bytes], dict[str, bool]]]:
    """A real HTTP receiver on loopback that answers 500 until `mended["ok"]` is set, then 204."""
    bodies: list[bytes] = []
    switch = {"ok": False}
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def hook(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=204) if switch["ok"] else web.Response(status=500, text="broken")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        state["port"], state["stop"] = runner.addresses[0][1], asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{state['port']}/hook", bodies, switch
    loop.call_soon_threadsafe(state["stop"].set)
    thread.join(10)
    loop.close()


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
    assert out.startswith("1 delivery pending again, due now")
    switch["ok"] = True
    assert asyncio.run(deliver()) == 1 and len(bodies) == 2
    assert bodies[0] == bodies[1] and json.loads(bodies[1])["data"]["lead"]["email"] == ALICE  # the same event, as it was
    code, out, _ = run(capsys, "webhooks", "log")
    assert "delivered, 2 attempts" in out and out.count("  HTTP 500  ") == 1 and out.count("  HTTP 204  ") == 1
    assert run(capsys, "webhooks", "retry")[1].startswith("no given-up delivery")
