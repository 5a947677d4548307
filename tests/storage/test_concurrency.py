"""Many concurrent calls: every write lands once, unique keys hold, nothing fails spuriously."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from qzpay import Billing, ConflictError
from qzpay.domain.customers import Customer
from qzpay.domain.records import AuditLog

pytestmark = pytest.mark.anyio

MakeBilling = Callable[..., Billing]
CountRows = Callable[[Billing, type[Any]], Awaitable[int]]
TASKS = 50


async def test_two_billing_instances_on_one_database_land_every_concurrent_create(
    make_billing: MakeBilling, count_rows: CountRows
) -> None:
    # Two storage objects on one file: for SQLite, two connections competing for the lock.
    failures: list[BaseException] = []

    async def create(billing: Billing, name: str) -> None:
        try:
            await billing.customers.create(email=f"{name}@example.com", external_id=name)
        except Exception as error:  # collected, so one failure cannot hide the others
            failures.append(error)

    async with make_billing() as first, make_billing() as second:
        assert first.storage is not second.storage
        async with anyio.create_task_group() as tasks:
            for i in range(TASKS):
                tasks.start_soon(create, first, f"first_{i}")
                tasks.start_soon(create, second, f"second_{i}")

        assert failures == []
        assert await count_rows(first, Customer) == 2 * TASKS
        assert await count_rows(second, AuditLog) == 2 * TASKS
        names = {c.external_id for c in (await second.customers.list(limit=100)).items}
        assert names == {f"{who}_{i}" for who in ("first", "second") for i in range(TASKS)}


async def test_concurrent_creates_of_one_external_id_make_exactly_one_customer(
    billing: Billing, count_rows: CountRows
) -> None:
    created: list[Customer] = []
    conflicts: list[ConflictError] = []

    async def create(i: int) -> None:
        try:
            created.append(
                await billing.customers.create(email=f"ann{i}@example.com", external_id="u_1")
            )
        except ConflictError as error:
            conflicts.append(error)

    async with anyio.create_task_group() as tasks:
        for i in range(TASKS):
            tasks.start_soon(create, i)

    assert len(created) == 1
    assert len(conflicts) == TASKS - 1
    assert {error.field for error in conflicts} == {"external_id"}
    assert await count_rows(billing, Customer) == 1
    assert await count_rows(billing, AuditLog) == 1
    assert await billing.customers.get_by_external_id("u_1") == created[0]
