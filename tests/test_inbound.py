"""The inbound bounce listener's start: a port it cannot have is the user's to fix, named by its field."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from mailer.bouncing import BounceIntake
from mailer.clock import FakeClock
from mailer.config import BouncesConfig
from mailer.errors import ConfigError
from mailer.inbound import BounceListener
from mailer.sqlitestore import SQLiteStore


def listener(store: SQLiteStore, listen: str) -> BounceListener:
    intake = BounceIntake(store=store, signer=None, config=BouncesConfig(domain="bounce.acme.example"))
    return BounceListener(
        intake=intake, domain="bounce.acme.example", clock=FakeClock(datetime(2026, 1, 5, tzinfo=timezone.utc)), listen=listen
    )


async def test_a_port_in_use_is_a_config_error_naming_bounces_listen(store: SQLiteStore, held_port: int) -> None:
    """Starting on a port another program holds raises ConfigError for bounces.listen, saying to choose another."""
    taken = listener(store, f"127.0.0.1:{held_port}")
    with pytest.raises(ConfigError) as raised:
        await taken.start()
    assert raised.value.field == "bounces.listen"
    assert raised.value.problem == f"127.0.0.1:{held_port} is in use (another mailer serve, or another program)"
    assert raised.value.hint == "choose a free port"


async def test_a_free_port_still_starts_and_receives(store: SQLiteStore) -> None:
    """On a free port the listener starts, answers SMTP on loopback and stops."""
    free = listener(store, "127.0.0.1:0")
    await free.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", free.port)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220 ")
        writer.close()
        await writer.wait_closed()
    finally:
        await free.stop()
