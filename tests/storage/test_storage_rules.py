"""Soft deletes, optimistic locking, all-or-nothing transactions and append-only audit rows.

Driven through the storage transaction API itself (the port every adapter implements), and
checked on SQLite against the file with the standard library's sqlite3.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import timedelta
from typing import Any

import attrs
import pytest

from qzpay import Billing, ConflictError, InvalidStateError, NotFoundError, Scope
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.domain.catalog import Plan
from qzpay.domain.customers import Customer
from qzpay.domain.records import AuditLog
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio

TEST = Scope(livemode=False)
CountRows = Callable[[Billing, type[Any]], Awaitable[int]]


def _customer(billing: Billing, email: str, external_id: str | None = None) -> Customer:
    now = billing.clock.now()
    return Customer(
        id=new_id(),
        livemode=False,
        email=email,
        external_id=external_id,
        created_at=now,
        updated_at=now,
    )


def _raw(billing: Billing) -> closing[sqlite3.Connection]:
    """The SQLite file behind ``billing``, opened with the standard library, not qzpay."""
    assert isinstance(billing.storage, SQLiteStorage)
    return closing(sqlite3.connect(billing.storage.path))


sqlite_only = pytest.mark.parametrize("store_factory", ["sqlite"], indirect=True)


# -- soft deletes --------------------------------------------------------------------------


async def test_a_deleted_customer_only_shows_with_include_deleted(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    await billing.customers.delete(ann.id)

    assert len(await billing.customers.list()) == 0
    [listed] = (await billing.customers.list(include_deleted=True)).items
    assert listed.id == ann.id
    assert listed.deleted_at == billing.clock.now()
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        assert await tx.get(Customer, ann.id) is None
        assert await tx.count(Customer) == 0
        assert await tx.count(Customer, include_deleted=True) == 1
        stored = await tx.get(Customer, ann.id, include_deleted=True)
    assert stored is not None
    assert stored.version == 2


async def test_a_deleted_customer_frees_its_external_id(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com", external_id="u_1")
    await billing.customers.delete(ann.id)

    again = await billing.customers.create(email="ann@example.com", external_id="u_1")
    await billing.customers.delete(again.id)
    third = await billing.customers.create(email="ann@example.com", external_id="u_1")

    assert await billing.customers.get_by_external_id("u_1") == third
    assert len(await billing.customers.list(include_deleted=True)) == 3


@sqlite_only
async def test_a_deleted_customer_stays_in_the_sqlite_file(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com", external_id="u_1")

    await billing.customers.delete(ann.id)

    with _raw(billing) as raw:
        rows = raw.execute(
            "SELECT email, external_id, deleted_at, version FROM billing_customers WHERE id = ?",
            (ann.id.hex,),
        ).fetchall()
    assert rows == [("ann@example.com", "u_1", "2028-01-31 09:00:00.000000", 2)]


async def test_audit_rows_refuse_update_and_delete(
    billing: Billing,
) -> None:
    await billing.customers.create(email="ann@example.com")
    [audit] = (await billing.audit.list()).items

    with pytest.raises(InvalidStateError):
        async with billing.storage.transaction(TEST) as tx:
            await tx.update(attrs.evolve(audit, action="forged"))
    with pytest.raises(InvalidStateError):
        async with billing.storage.transaction(TEST) as tx:
            await tx.soft_delete(AuditLog, audit.id, at=billing.clock.now())

    assert (await billing.audit.list()).items == [audit]


@sqlite_only
async def test_sqlite_refuses_raw_changes_to_audit_rows(billing: Billing) -> None:
    await billing.customers.create(email="ann@example.com")

    with _raw(billing) as raw:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("UPDATE billing_audit_logs SET action = 'forged'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM billing_audit_logs")
        assert raw.execute("SELECT action FROM billing_audit_logs").fetchall() == [("created",)]


# -- optimistic locking --------------------------------------------------------------------


async def test_an_update_increments_the_version(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com")

    async with billing.storage.transaction(TEST) as tx:
        updated = await tx.update(attrs.evolve(ann, name="Ann"))

    assert updated.version == 2
    assert await billing.customers.get(ann.id) == updated


async def test_a_stale_version_is_a_conflict_and_changes_nothing(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    async with billing.storage.transaction(TEST) as tx:
        winner = await tx.update(attrs.evolve(ann, name="First writer"))

    with pytest.raises(ConflictError) as error:
        async with billing.storage.transaction(TEST) as tx:
            await tx.update(attrs.evolve(ann, name="Second writer"))  # still version 1

    assert error.value.field == "version"
    assert await billing.customers.get(ann.id) == winner


async def test_a_stale_version_also_blocks_a_delete(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    winner = await billing.customers.update(ann.id, name="Ann")

    with pytest.raises(ConflictError):
        async with billing.storage.transaction(TEST) as tx:
            await tx.soft_delete(Customer, ann.id, at=billing.clock.now(), expected_version=1)

    assert await billing.customers.get(ann.id) == winner


async def test_updating_a_missing_row_is_not_found(billing: Billing) -> None:
    ghost = _customer(billing, "ghost@example.com")

    with pytest.raises(NotFoundError):
        async with billing.storage.transaction(TEST) as tx:
            await tx.update(ghost)


# -- transactions --------------------------------------------------------------------------


@pytest.mark.parametrize("flushed", [False, True], ids=["buffered", "flushed"])
async def test_an_exception_inside_a_transaction_leaves_no_row(
    billing: Billing, count_rows: CountRows, flushed: bool
) -> None:
    now = billing.clock.now()

    async def two_inserts_then_an_error() -> None:
        async with billing.storage.transaction(TEST) as tx:
            await tx.insert(_customer(billing, "ann@example.com"))
            await tx.insert(
                Plan(id=new_id(), livemode=False, name="Pro", created_at=now, updated_at=now)
            )
            if flushed:  # sent to the database, inside the open transaction
                await tx.flush()
                assert await tx.count(Customer) == 1
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await two_inserts_then_an_error()

    assert await count_rows(billing, Customer) == 0
    assert await count_rows(billing, Plan) == 0


async def test_a_failing_write_undoes_the_writes_before_it(
    billing: Billing, count_rows: CountRows
) -> None:
    await billing.customers.create(email="ann@example.com", external_id="u_1")

    async def a_new_key_then_a_taken_one() -> None:
        async with billing.storage.transaction(TEST) as tx:
            await tx.insert(_customer(billing, "bob@example.com", external_id="u_2"))
            await tx.insert(_customer(billing, "eve@example.com", external_id="u_1"))

    with pytest.raises(ConflictError):
        await a_new_key_then_a_taken_one()

    assert await count_rows(billing, Customer) == 1
    with pytest.raises(NotFoundError):
        await billing.customers.get_by_external_id("u_2")


async def test_a_store_is_usable_after_a_failed_transaction(
    billing: Billing, clock: FrozenClock
) -> None:
    async def fail_after_a_flushed_insert() -> None:
        async with billing.storage.transaction(TEST) as tx:
            await tx.insert(_customer(billing, "ann@example.com"))
            await tx.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_after_a_flushed_insert()

    clock.advance(timedelta(seconds=1))
    bob = await billing.customers.create(email="bob@example.com")

    assert [c.id for c in await billing.customers.list()] == [bob.id]


# -- find and filters ----------------------------------------------------------------------


async def test_find_and_filters_match_null_with_none(billing: Billing) -> None:
    anonymous = await billing.customers.create(email="anon@example.com")
    await billing.customers.create(email="ann@example.com", external_id="u_1")

    async with billing.storage.transaction(TEST, readonly=True) as tx:
        found = await tx.find(Customer, external_id=None)
        count = await tx.count(Customer, filters={"external_id": None})
        listed = await tx.list(Customer, filters={"external_id": None})

    assert found == anonymous
    assert count == 1
    assert [c.id for c in listed] == [anonymous.id]


async def test_find_by_unique_key_skips_deleted_rows_unless_asked(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com", external_id="u_1")
    await billing.customers.delete(ann.id)

    async with billing.storage.transaction(TEST, readonly=True) as tx:
        assert await tx.find(Customer, external_id="u_1") is None
        deleted = await tx.find(Customer, external_id="u_1", include_deleted=True)

    assert deleted is not None
    assert deleted.id == ann.id
