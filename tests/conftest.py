"""Shared fixtures: every behaviour test runs on MemoryStorage, a real SQLite file and a
real PostgreSQL.

``store_factory`` hands out storage objects on one database (one SQLite file in
``tmp_path``, one ``MemoryDatabase``, or the test's own tables in PostgreSQL), so a test can
put two stores, two prefixes or two ``Billing`` instances side by side. Tests run on asyncio
(the SQL adapters need it); a trio test parametrizes ``anyio_backend`` itself and uses
MemoryStorage.

PostgreSQL is ``QZPAY_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
where no server answers its tests skip with the reason, unless ``QZPAY_REQUIRE_POSTGRES=1``
makes them fail. Each test gets its own tables: every requested prefix is tagged with the
test's id (``billing_`` → ``billing_3f9a2c71d0_``), migrated on first open and dropped after
the test (docs/decisions/0011-postgres-in-the-service-tests.md says why per test).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import pytest

from qzpay import Billing, Scope, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryDatabase, MemoryStorage
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.conformance.factories import (
    drop_prefix,
    isolated_prefix,
    postgres_unavailable,
    postgres_url,
)
from qzpay.conformance.harness import make_test_id
from qzpay.contracts.storage import StoragePort

collect_ignore = ["conftest.py"]
"""This file holds no doctests, and with ``--doctest-modules`` pytest 9 would import it as
the module ``conftest`` after ``tests/conformance/conftest.py`` took that name (neither is
in a package) and refuse it as a file mismatch."""

START = datetime(2028, 1, 31, 9, tzinfo=UTC)
"""The frozen "now" of every test: a 31st, so month-end clamping shows at once."""

StoreKind = Literal["memory", "sqlite", "postgres"]
T = TypeVar("T")
POSTGRES_POOL_SIZE = 4
"""Enough for the concurrency tests to overlap; small, as a test opens several stores."""


class StoreFactory:
    """New storage objects on one shared database, like several processes on one file."""

    def __init__(self, kind: StoreKind, path: Path, test_id: str) -> None:
        self.kind = kind
        self.path = path
        self.test_id = test_id
        self.database = MemoryDatabase()
        self.postgres_prefixes: set[str] = set()
        """The real (tagged) prefixes handed out on PostgreSQL, dropped after the test."""

    def __call__(
        self, *, table_prefix: str = "billing_", multi_tenant: bool = False
    ) -> StoragePort:
        if self.kind == "sqlite":
            return SQLiteStorage(self.path, table_prefix=table_prefix, multi_tenant=multi_tenant)
        if self.kind == "postgres":
            from qzpay.adapters.postgres import PostgresStorage

            prefix = isolated_prefix(table_prefix, self.test_id)
            self.postgres_prefixes.add(prefix)
            return PostgresStorage(
                postgres_url(),
                table_prefix=prefix,
                multi_tenant=multi_tenant,
                auto_migrate=True,
                pool_size=POSTGRES_POOL_SIZE,
            )
        return MemoryStorage(
            table_prefix=table_prefix, multi_tenant=multi_tenant, database=self.database
        )

    def cleanup(self) -> None:
        if self.postgres_prefixes:
            url = postgres_url()
            prefixes = sorted(self.postgres_prefixes)

            async def drop() -> None:
                for prefix in prefixes:
                    await drop_prefix(url, prefix)

            run_outside_the_test_loop(drop)


def run_outside_the_test_loop(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` on its own event loop in another thread.

    Sync fixtures serve sync and async tests alike; a loop of their own, in a thread, never
    meets the loop anyio runs the test on.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work()).result()


@pytest.fixture(scope="session")
def postgres_available() -> None:
    """Skip the requesting tests when no PostgreSQL answers; fail them when CI requires one
    (asked once per run; a skip or failure here is repeated for every test that asks)."""
    reason = run_outside_the_test_loop(postgres_unavailable)
    if reason is None:
        return
    if os.environ.get("QZPAY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"QZPAY_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


ADAPTERS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""The params of every fixture that runs a test once per adapter."""


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


@pytest.fixture(params=ADAPTERS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    kind: StoreKind = request.param
    if kind == "postgres":
        request.getfixturevalue("postgres_available")
    factory = StoreFactory(kind, tmp_path / "billing.db", make_test_id(request.node.nodeid))
    try:
        yield factory
    finally:
        factory.cleanup()


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
