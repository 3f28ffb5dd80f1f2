"""Say a thing once, not once per message: a broken template or a relay that is down fails
every message the same way, and a thousand identical log lines hide the one that matters."""

from __future__ import annotations

from datetime import datetime, timedelta

# Keys may quote lead data (an address in a server's reply): the memory of them is bounded.
MAX_KEYS = 1000


class OnceEvery:
    """Whether a key is new, or last said at least `every` ago (then it counts as said now)."""

    def __init__(self, every: timedelta) -> None:
        self.every = every
        self._said: dict[str, datetime] = {}

    def first(self, key: str, now: datetime) -> bool:
        last = self._said.get(key)
        if last is not None and now - last < self.every:
            return False
        if len(self._said) >= MAX_KEYS:
            self._said.clear()
        self._said[key] = now
        return True
