"""Optimistic locking (DESIGN §5.5): a stale version is refused and changes nothing.

Customers, subscriptions, payments, invoices, vendors and promo codes carry a ``version``.
An update (or soft delete) written against a version that is no longer the stored one
raises ``ConflictError`` and leaves the row as it was; a successful one stores and returns
the version plus one.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.concurrency import describe, run_concurrently
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.contracts.storage import Scope, StorageTransaction
from qzpay.domain.customers import Customer
from qzpay.errors import ConflictError

pytestmark = pytest.mark.anyio

expect = Expectations("optimistic_locking")
TEST = Scope(livemode=False)
CHECK = (
    "write with `WHERE id = :id AND version = :expected_version` (default: the entity's "
    "version), and raise ConflictError when no row matched although the row exists"
)
BUMP = "store version + 1 with every update and return the entity with that version"


async def _seed(tx: StorageTransaction, kind: str) -> Any:
    """A fresh row of a versioned kind (and what it references)."""
    customer = entities.customer(TEST)
    await tx.insert(customer)
    if kind == "customer":
        return customer
    if kind == "promo_code":
        code = entities.promo_code(TEST)
        await tx.insert(code)
        return code
    if kind == "payment":
        payment = entities.payment(TEST, customer)
        await tx.insert(payment)
        return payment
    plan = entities.plan(TEST)
    price = entities.price(TEST, plan.id)
    subscription = entities.subscription(TEST, customer, price)
    await tx.insert(plan)
    await tx.insert(price)
    await tx.insert(subscription)
    return subscription


@pytest.mark.parametrize("kind", ["customer", "promo_code", "payment", "subscription"])
async def test_a_stale_version_is_refused_and_changes_nothing(
    conformance: Harness, kind: str
) -> None:
    store = await conformance.store()
    async with store.transaction(TEST) as tx:
        row = await _seed(tx, kind)
    async with store.transaction(TEST) as tx:
        fresh = await tx.update(attrs.evolve(row, metadata={"by": "first"}))
    with expect.refusal(
        ConflictError, f"updating a {kind} from version 1 after it moved to version 2", CHECK
    ):
        async with store.transaction(TEST) as tx:
            await tx.update(attrs.evolve(row, metadata={"by": "stale"}))
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(type(row), row.id)
    expect.that(
        stored is not None and stored.metadata == {"by": "first"} and stored.version == 2,
        f"a refused stale update changed the {kind} (re-read: "
        f"{None if stored is None else (dict(stored.metadata), stored.version)})",
        CHECK,
    )
    expect.that(
        fresh.version == 2, f"the updated {kind} came back as version {fresh.version}", BUMP
    )


async def test_a_successful_update_increments_the_version(conformance: Harness) -> None:
    store = await conformance.store()
    ann = entities.customer(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(ann)
    current = ann
    for expected in (2, 3, 4):
        async with store.transaction(TEST) as tx:
            current = await tx.update(attrs.evolve(current, name=f"Ann {expected}"))
        async with store.transaction(TEST, readonly=True) as tx:
            stored = await tx.get(Customer, ann.id)
        expect.that(
            current.version == expected and stored is not None and stored.version == expected,
            f"after {expected - 1} update(s) the returned version is {current.version} and the "
            f"stored one {None if stored is None else stored.version} (expected {expected})",
            BUMP,
        )


async def test_expected_version_is_checked_when_given(conformance: Harness) -> None:
    store = await conformance.store()
    ann = entities.customer(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(ann)
    with expect.refusal(
        ConflictError, "an update with expected_version=7 of a customer at version 1", CHECK
    ):
        async with store.transaction(TEST) as tx:
            await tx.update(attrs.evolve(ann, name="Bob"), expected_version=7)
    with expect.refusal(
        ConflictError, "a soft delete with expected_version=7 of a customer at version 1", CHECK
    ):
        async with store.transaction(TEST) as tx:
            await tx.soft_delete(Customer, ann.id, at=NOW, expected_version=7)
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(Customer, ann.id)
    expect.that(
        stored is not None and stored.name == ann.name and stored.version == 1,
        "a refused update or delete with a wrong expected_version changed the customer",
        CHECK,
    )


async def test_concurrent_updates_from_one_read_let_exactly_one_win(
    conformance: Harness, connections: str
) -> None:
    stores = await conformance.stores(connections)
    ann = entities.customer(TEST)
    async with stores[0].transaction(TEST) as tx:
        await tx.insert(ann)

    async def update(index: int) -> Customer:
        async with stores[index % len(stores)].transaction(TEST) as tx:
            return await tx.update(attrs.evolve(ann, name=f"writer {index}"))

    outcomes = await run_concurrently(10, update)
    won = [o.value for o in outcomes if o.value is not None]
    others = [o.error for o in outcomes if o.error is not None]
    unexpected = [e for e in others if not isinstance(e, ConflictError)]
    expect.that(
        len(won) == 1 and not unexpected,
        f"10 concurrent updates from version 1: {len(won)} succeeded, "
        f"{len(others) - len(unexpected)} ConflictError, {describe(unexpected)}",
        CHECK + " in ONE statement (compare-and-set), not a read followed by a write",
    )
    async with stores[0].transaction(TEST, readonly=True) as tx:
        stored = await tx.get(Customer, ann.id)
    winner = won[0] if won else None
    expect.that(
        stored is not None and winner is not None and stored.name == winner.name,
        "the stored customer is not the one winning update's",
        CHECK,
    )
