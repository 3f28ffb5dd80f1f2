"""`mailer serve` without its one-daemon lock (mailer.servelock), for tests of daemons sharing a store.

    python daemon_child.py MAILER_TOML

The same wiring as `mailer serve`: the config's store, clock and scenarios, SIGTERM drains.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from mailer.cli import make_clock
from mailer.config import load_config
from mailer.daemon import Daemon
from mailer.sqlitestore import SQLiteStore


async def serve(config_path: Path) -> None:
    config = load_config(config_path)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with SQLiteStore(config.store) as store:
        daemon = Daemon(config=config, store=store, clock=make_clock(config))
        daemon.load_scenarios()
        await daemon.serve(stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pid %(process)d %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(Path(sys.argv[1])))
