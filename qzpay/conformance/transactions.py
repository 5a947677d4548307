"""Transactions (DESIGN §5.7): ``async with storage.transaction(scope):`` is all or nothing.

An exception (or a cancellation) after several writes leaves none of them, checked in a new
transaction and in the database itself; a write that the database refuses late (a unique
key or a stale version noticed at flush or commit) takes the whole transaction with it; a
normal exit keeps every write.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
import anyio.lowlevel
import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.catalog import Plan
from qzpay.domain.customers import Customer
from qzpay.errors import ConflictError

pytestmark = pytest.mark.anyio

expect = Expectations("transactions")
TEST = Scope(livemode=False)
FIX = (
    "run every statement of the transaction on one connection inside BEGIN … COMMIT and "
    "ROLLBACK on any exception (BaseException: cancellation too); buffered writes must be "
    "dropped, never sent"
)


class _Boom(Exception):
    """The application's failure, after the writes."""


@attrs.frozen
class _Before:
    """Rows that exist before the failing transaction, which it then tries to change."""

    updated: Customer
    deleted: Customer


async def _before(store: StoragePort) -> _Before:
    updated = entities.customer(TEST, name="Ann")
    deleted = entities.customer(TEST, name="Bob")
    async with store.transaction(TEST) as tx:
        await tx.insert(updated)
        await tx.insert(deleted)
    return _Before(updated, deleted)


async def _check_nothing_left(
    conformance: Harness, store: StoragePort, before: _Before, inserted: list[object], how: str
) -> None:
    async with store.transaction(TEST, readonly=True) as tx:
        kept = [row for row in inserted if await tx.get(type(row), row.id) is not None]  # type: ignore[attr-defined]
        updated = await tx.get(Customer, before.updated.id)
        deleted = await tx.get(Customer, before.deleted.id)
    expect.that(not kept, f"{how}, {len(kept)} of its inserted rows were kept", FIX)
    expect.that(
        updated is not None and updated.name == "Ann" and updated.version == 1,
        f"{how}, its update was kept",
        FIX,
    )
    expect.that(deleted is not None, f"{how}, its soft delete was kept", FIX)
    async with store.transaction(TEST) as tx:
        number = await tx.next_number("invoice")
    expect.that(number == 1, f"{how}, its invoice number was kept (next is {number})", FIX)
    raw = conformance.raw(store)
    if raw is not None:
        rows = await raw.rows(f"{store.table_prefix}customers", email="tx-ann@example.com")
        plans = await raw.rows(f"{store.table_prefix}plans", name="tx-plan")
        expect.that(
            not rows and not plans,
            f"{how}, its rows are still in the database (seen through the raw view)",
            FIX,
        )


async def test_an_exception_after_several_writes_leaves_nothing(conformance: Harness) -> None:
    store = await conformance.store()
    before = await _before(store)
    ann = entities.customer(TEST, email="tx-ann@example.com")
    plan = entities.plan(TEST, name="tx-plan")
    inserted: list[object] = [ann, plan, entities.price(TEST, plan.id)]

    async def write_then_fail() -> None:
        async with store.transaction(TEST) as tx:
            for row in inserted:
                await tx.insert(row)
            await tx.update(attrs.evolve(before.updated, name="Changed"))
            await tx.soft_delete(Customer, before.deleted.id, at=NOW)
            await tx.next_number("invoice")
            raise _Boom

    with pytest.raises(_Boom):
        await write_then_fail()
    await _check_nothing_left(conformance, store, before, inserted, "after a transaction raised")


async def test_an_exception_after_a_flush_leaves_nothing(conformance: Harness) -> None:
    store = await conformance.store()
    before = await _before(store)
    ann = entities.customer(TEST, email="tx-ann@example.com")
    plan = entities.plan(TEST, name="tx-plan")

    async def write_flush_then_fail() -> None:
        async with store.transaction(TEST) as tx:
            await tx.insert(ann)
            await tx.insert(plan)
            await tx.update(attrs.evolve(before.updated, name="Changed"))
            await tx.soft_delete(Customer, before.deleted.id, at=NOW)
            await tx.next_number("invoice")
            await tx.flush()
            await tx.count(Customer)
            raise _Boom

    with pytest.raises(_Boom):
        await write_flush_then_fail()
    await _check_nothing_left(
        conformance, store, before, [ann, plan], "after a transaction flushed, then raised"
    )


async def test_a_cancelled_transaction_leaves_nothing(conformance: Harness) -> None:
    store = await conformance.store()
    before = await _before(store)
    ann = entities.customer(TEST, email="tx-ann@example.com")
    plan = entities.plan(TEST, name="tx-plan")
    with anyio.CancelScope() as scope:
        async with store.transaction(TEST) as tx:
            await tx.insert(ann)
            await tx.insert(plan)
            await tx.update(attrs.evolve(before.updated, name="Changed"))
            await tx.soft_delete(Customer, before.deleted.id, at=NOW)
            await tx.next_number("invoice")
            await tx.flush()
            scope.cancel()
            await anyio.lowlevel.checkpoint()  # the cancellation is delivered here
    expect.that(scope.cancelled_caught, "the cancellation did not reach the transaction", FIX)
    await _check_nothing_left(
        conformance, store, before, [ann, plan], "after a transaction was cancelled"
    )


async def test_a_conflict_at_commit_leaves_nothing_of_the_transaction(
    conformance: Harness,
) -> None:
    store = await conformance.store()
    before = await _before(store)
    holder = entities.customer(TEST, external_id="u_taken")
    async with store.transaction(TEST) as tx:
        await tx.insert(holder)
    ann = entities.customer(TEST, email="tx-ann@example.com")
    plan = entities.plan(TEST, name="tx-plan")
    clash = entities.customer(TEST, external_id="u_taken")
    with expect.refusal(ConflictError, "a transaction inserting a taken external_id", FIX):
        async with store.transaction(TEST) as tx:
            await tx.insert(ann)
            await tx.insert(plan)
            await tx.update(attrs.evolve(before.updated, name="Changed"))
            await tx.soft_delete(Customer, before.deleted.id, at=NOW)
            await tx.next_number("invoice")
            await tx.insert(clash)  # refused here, at a flush or at commit
    await _check_nothing_left(
        conformance, store, before, [ann, plan, clash], "after a unique-key conflict"
    )


async def test_a_stale_version_at_commit_leaves_nothing_of_the_transaction(
    conformance: Harness,
) -> None:
    store = await conformance.store()
    before = await _before(store)
    ann = entities.customer(TEST, email="tx-ann@example.com")
    plan = entities.plan(TEST, name="tx-plan")
    with expect.refusal(ConflictError, "a transaction updating from a stale version", FIX):
        async with store.transaction(TEST) as tx:
            await tx.insert(ann)
            await tx.insert(plan)
            await tx.soft_delete(Customer, before.deleted.id, at=NOW)
            await tx.next_number("invoice")
            await tx.update(attrs.evolve(before.updated, name="Changed"), expected_version=5)
    await _check_nothing_left(
        conformance, store, before, [ann, plan], "after a stale-version conflict"
    )


async def test_a_committed_transaction_keeps_every_write(conformance: Harness) -> None:
    store = await conformance.store()
    before = await _before(store)
    ann = entities.customer(TEST)
    plan = entities.plan(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(ann)
        await tx.insert(plan)
        await tx.update(attrs.evolve(before.updated, name="Changed"))
        await tx.soft_delete(Customer, before.deleted.id, at=NOW + timedelta(minutes=1))
        number = await tx.next_number("invoice")
    async with store.transaction(TEST, readonly=True) as tx:
        kept = [await tx.get(Customer, ann.id), await tx.get(Plan, plan.id)]
        updated = await tx.get(Customer, before.updated.id)
        deleted = await tx.get(Customer, before.deleted.id)
    expect.that(
        all(row is not None for row in kept)
        and updated is not None
        and updated.name == "Changed"
        and deleted is None
        and number == 1,
        "a transaction that exited normally did not keep all of its writes",
        "COMMIT on normal exit, after sending every buffered write",
    )


async def test_a_transaction_sees_its_own_writes(conformance: Harness) -> None:
    store = await conformance.store()
    ann = entities.customer(TEST, name="Ann")
    bob = entities.customer(TEST, name="Bob")
    fix = (
        "make every read and write of a transaction see the transaction's earlier writes: "
        "send buffered writes before a statement that depends on them (a data-modifying CTE "
        "does not see rows inserted by its sibling CTEs)"
    )
    failure: Exception | None = None
    try:
        async with store.transaction(TEST) as tx:
            await tx.insert(ann)
            await tx.insert(bob)
            renamed = await tx.update(attrs.evolve(ann, name="Ann B."))
            await tx.soft_delete(Customer, bob.id, at=NOW)
            seen = await tx.get(Customer, ann.id)
    except Exception as error:
        failure = error
    if failure is not None:
        expect.broke(
            "inserting two customers, then updating one and soft-deleting the other in the same "
            f"transaction failed: {type(failure).__name__} ({failure})",
            fix,
        )
    expect.that(
        seen is not None and seen.name == "Ann B." and renamed.version == 2,
        "a read inside the transaction did not see the transaction's own update",
        fix,
    )
    async with store.transaction(TEST, readonly=True) as tx:
        kept = await tx.get(Customer, ann.id)
        gone = await tx.get(Customer, bob.id)
    expect.that(
        kept is not None and kept.name == "Ann B." and gone is None,
        "after commit, the insert-then-update or insert-then-delete of one transaction is "
        "not what is stored",
        fix,
    )
