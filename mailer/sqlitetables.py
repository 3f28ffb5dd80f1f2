"""The part of `SQLiteStore` that its table mixins (bounces, consent, tracking, …) rely on.

Each mixin subclasses `StoreTables` so that it type-checks on its own; `SQLiteStore`
provides the real connection, transactions and queries, which come first in its MRO.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiosqlite


class StoreTables:
    @property
    def db(self) -> aiosqlite.Connection:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        raise NotImplementedError


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """`items` in slices of `size`: SQLite caps the parameters of one statement."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
