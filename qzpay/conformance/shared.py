"""Stores shared by every test of one property module: made once, used by each matrix cell.

A rule × method matrix has hundreds of cells, and a schema per cell would cost most of a
minute on a server database. So each property module asks for its stores once (a
module-scoped fixture built with ``module_stores``) and every cell works on them with rows of
its own:

- a fresh ``tag`` (``entities.tag()``) written into a column the cell then filters on, so
  lists, counts and aggregates see only the cell's rows;
- a fresh unique-key value and a fresh sequence name;
- for claims and the cross-tenant sweep, a ``window``: an instant earlier than every window
  handed out before in the module. A cell's rows are due within the 12 hours before its
  window and it claims with ``now`` = its window, so rows of earlier cells are never due yet
  and rows of later cells do not exist yet.

Tests that check a store as a whole (a fresh schema, the raw view, concurrency on an empty
table) still take the per-test ``conformance`` harness.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import pytest

from qzpay.conformance.entities import NOW
from qzpay.conformance.fixtures import FACTORY_KEY
from qzpay.conformance.harness import DEFAULT_PREFIX, SEVERAL, Harness, make_test_id
from qzpay.conformance.raw import RawView
from qzpay.contracts.storage import StoragePort

WINDOW = timedelta(hours=12)
"""How long before its window a cell's rows may be due."""


class Shared:
    """The stores of one module, each made (and opened) on first use, and claim windows."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self._stores: dict[tuple[str, bool, bool], StoragePort] = {}
        self._several: list[StoragePort] = []
        self._windows = 0

    async def store(
        self, *, prefix: str = DEFAULT_PREFIX, multi_tenant: bool = False, livemode: bool = False
    ) -> StoragePort:
        """The module's store for these options (one per combination)."""
        key = (prefix, multi_tenant, livemode)
        store = self._stores.get(key)
        if store is None:
            store = await self.harness.store(
                prefix=prefix, multi_tenant=multi_tenant, livemode=livemode
            )
            self._stores[key] = store
        return store

    async def stores(self, connections: str) -> list[StoragePort]:
        """The default store, or ``SEVERAL`` instances on its database when ``connections``
        is ``"several_stores"`` — skipped as "not supported: <reason>" if the adapter says so."""
        first = await self.store()
        if connections != "several_stores":
            return [first]
        reason = self.harness.capabilities(first).not_supported("multiple_connections")
        if reason is not None:
            pytest.skip(f"not supported: {reason}")
        while len(self._several) < SEVERAL - 1:
            self._several.append(await self.harness.store())
        return [first, *self._several]

    def window(self) -> datetime:
        """A claim ``now`` earlier than every one handed out before (a day apart)."""
        self._windows += 1
        return NOW - timedelta(days=self._windows)

    def raw(self, store: StoragePort) -> RawView | None:
        """The raw view of the database behind ``store``, if the factory gave one."""
        return self.harness.raw(store)

    def require_raw(self, store: StoragePort) -> RawView:
        """The raw view, or skip: a store with no SQL database behind it has none to check."""
        return self.harness.require_raw(store)


@asynccontextmanager
async def module_stores(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    """The body of a module-scoped fixture: a harness for the whole module, closed after."""
    harness = Harness(request.config.stash[FACTORY_KEY], make_test_id(request.node.nodeid))
    try:
        yield Shared(harness)
    finally:
        await harness.aclose()
