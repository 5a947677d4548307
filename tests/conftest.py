"""Shared fixtures: every behaviour test runs on MemoryStorage and on a real SQLite file.

``store_factory`` hands out storage objects on one database (one SQLite file in
``tmp_path``, or one ``MemoryDatabase``), so a test can put two stores, two prefixes or two
``Billing`` instances side by side. Tests run on asyncio (the SQL adapters need it); a trio
test parametrizes ``anyio_backend`` itself and uses MemoryStorage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest

from qzpay import Billing, Scope, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryDatabase, MemoryStorage
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.contracts.storage import StoragePort

START = datetime(2028, 1, 31, 9, tzinfo=UTC)
"""The frozen "now" of every test: a 31st, so month-end clamping shows at once."""

StoreKind = Literal["memory", "sqlite"]


class StoreFactory:
    """New storage objects on one shared database, like several processes on one file."""

    def __init__(self, kind: StoreKind, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.database = MemoryDatabase()

    def __call__(
        self, *, table_prefix: str = "billing_", multi_tenant: bool = False
    ) -> StoragePort:
        if self.kind == "sqlite":
            return SQLiteStorage(self.path, table_prefix=table_prefix, multi_tenant=multi_tenant)
        return MemoryStorage(
            table_prefix=table_prefix, multi_tenant=multi_tenant, database=self.database
        )


class MakeBilling(Protocol):
    def __call__(
        self,
        storage: StoragePort | None = None,
        *,
        livemode: bool = False,
        tenancy: Literal["single", "multi"] = "single",
    ) -> Billing: ...


RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    kind: StoreKind = request.param
    return StoreFactory(kind, tmp_path / "billing.db")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def make_billing(
    store_factory: StoreFactory, fake: FakeProvider, clock: FrozenClock
) -> MakeBilling:
    """A not-yet-opened ``Billing`` on the shared database, clock and fake provider."""

    def make(
        storage: StoragePort | None = None,
        *,
        livemode: bool = False,
        tenancy: Literal["single", "multi"] = "single",
    ) -> Billing:
        if storage is None:
            storage = store_factory(multi_tenant=tenancy == "multi")
        return create_billing(
            storage=storage, provider=fake, clock=clock, livemode=livemode, tenancy=tenancy
        )

    return make


@pytest.fixture
async def billing(make_billing: MakeBilling) -> AsyncIterator[Billing]:
    async with make_billing() as opened:
        yield opened


@pytest.fixture
def count_rows() -> RowCounter:
    """Rows of a kind in the billing's scope, soft-deleted ones included, read from storage."""

    async def count(billing: Billing, kind: type[Any]) -> int:
        scope = Scope(livemode=billing.livemode, tenant_id=billing.tenant_id)
        async with billing.storage.transaction(scope, readonly=True) as tx:
            return await tx.count(kind, include_deleted=True)

    return count
