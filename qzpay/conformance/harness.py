"""The stores of one conformance test: made by the author's factory, opened, closed, cleaned.

A test asks for stores by prefix and tenancy; every store of one test shares the test's
``test_id`` and so one database. The harness remembers each store's ``StoreHandle`` (for its
raw view and capabilities) and, after the test, closes every store and runs every cleanup.
"""

from __future__ import annotations

import re
import uuid

import pytest

from qzpay.conformance.contract import (
    Capabilities,
    StoreFactory,
    StoreHandle,
    StoreOptions,
    make_handle,
)
from qzpay.conformance.raw import RawView
from qzpay.contracts.storage import StoragePort

DEFAULT_PREFIX = "billing_"
SEVERAL = 4
"""How many store instances the multiple-connection variants spread their tasks over."""


def make_test_id(nodeid: str) -> str:
    """A unique, file-name-safe id for one test run: ``[a-z0-9_]``, at most 64 characters."""
    name = nodeid.rsplit("/", 1)[-1].replace(".py::", "_")
    stem = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:50]
    return f"{stem}_{uuid.uuid4().hex[:12]}"


class Harness:
    """Stores, raw views and cleanups of one test (the ``conformance`` fixture)."""

    def __init__(self, factory: StoreFactory, test_id: str) -> None:
        self.factory = factory
        self.test_id = test_id
        self._handles: list[tuple[StoragePort, StoreHandle]] = []
        self._opened: list[StoragePort] = []
        self._views: dict[str, RawView] = {}

    async def handle(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        multi_tenant: bool = False,
        livemode: bool = False,
    ) -> StoreHandle:
        """A handle from the factory, its store not opened (to test refusals at open)."""
        options = StoreOptions(
            table_prefix=prefix,
            multi_tenant=multi_tenant,
            livemode=livemode,
            test_id=self.test_id,
        )
        made = await make_handle(self.factory, options)
        self._handles.append((made.storage, made))
        return made

    async def store(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        multi_tenant: bool = False,
        livemode: bool = False,
    ) -> StoragePort:
        """An opened store on this test's database."""
        made = await self.handle(prefix=prefix, multi_tenant=multi_tenant, livemode=livemode)
        await self.open(made.storage)
        return made.storage

    async def open(self, storage: StoragePort) -> None:
        await storage.open()
        self._opened.append(storage)

    async def stores(
        self, connections: str, *, prefix: str = DEFAULT_PREFIX, multi_tenant: bool = False
    ) -> list[StoragePort]:
        """One store, or ``SEVERAL`` on one database when ``connections`` is
        ``"several_stores"`` — skipped as "not supported: <reason>" if the adapter says so."""
        first = await self.store(prefix=prefix, multi_tenant=multi_tenant)
        if connections != "several_stores":
            return [first]
        reason = self.capabilities(first).not_supported("multiple_connections")
        if reason is not None:
            pytest.skip(f"not supported: {reason}")
        rest = [
            await self.store(prefix=prefix, multi_tenant=multi_tenant) for _ in range(SEVERAL - 1)
        ]
        return [first, *rest]

    def _handle_of(self, storage: StoragePort) -> StoreHandle:
        for made, found in self._handles:
            if made is storage:
                return found
        raise LookupError("this store was not made by the harness")

    def capabilities(self, storage: StoragePort) -> Capabilities:
        return self._handle_of(storage).capabilities

    def raw(self, storage: StoragePort) -> RawView | None:
        """The raw, read-only view of the database behind ``storage``, if the factory gave one."""
        url = self._handle_of(storage).raw_url
        if url is None:
            return None
        view = self._views.get(url)
        if view is None:
            view = self._views[url] = RawView(url)
        return view

    def require_raw(self, storage: StoragePort) -> RawView:
        """The raw view, or skip: a store with no SQL database behind it has none to check."""
        view = self.raw(storage)
        if view is None:
            pytest.skip("no raw view of the database: the factory gave raw_url=None")
        return view

    async def aclose(self) -> None:
        """Close stores and raw views, then run cleanups; the first error is raised at the end."""
        errors: list[BaseException] = []
        for storage in reversed(self._opened):
            try:
                await storage.close()
            except Exception as error:
                errors.append(error)
        for view in self._views.values():
            try:
                await view.close()
            except Exception as error:
                errors.append(error)
        for _, made in reversed(self._handles):
            if made.cleanup is not None:
                try:
                    await made.cleanup()
                except Exception as error:
                    errors.append(error)
        self._opened.clear()
        self._handles.clear()
        self._views.clear()
        if errors:
            raise errors[0]
