"""One `mailer serve` per store: a second daemon on the same database would send twice.

An exclusive `flock` on `<store>.lock`, held for the daemon's life and released by the
kernel when the process ends, however it ends (no stale lock after `kill -9`). Several
daemons sharing one database need leases that name their owner; until then, one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailer.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]


@contextmanager
def serve_lock(store: Path) -> Iterator[None]:
    path = store.with_name(store.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(
                    f"{store} is in use by another `mailer serve` (pid {holder})",
                    file=str(path),
                    hint="stop that daemon first; one daemon per store",
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
