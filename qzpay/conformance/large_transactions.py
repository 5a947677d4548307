"""Large transactions: thousands of writes in one transaction, all or nothing.

A renewal batch writes about 3,000 rows in one transaction: for 500 subscriptions an
invoice, an invoice line, a payment, the link between them and an audit row, and 500
versioned updates of the subscriptions. Committed, every write is kept; reads inside the
transaction see all of them; a stale version at the 499th update, or a unique key taken near
the end, leaves nothing at all. (Adapters that buffer writes must send them in bounded
chunks: a statement per write is slow, one statement for all of them breaks parameter and
column limits.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort, StorageTransaction
from qzpay.domain.customers import Customer
from qzpay.domain.invoices import Invoice, InvoiceLine, InvoicePayment
from qzpay.domain.payments import Payment
from qzpay.domain.records import AuditLog
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError

pytestmark = pytest.mark.anyio

expect = Expectations("large_transactions")
TEST = Scope(livemode=False)
BATCH = 500
FIX = (
    "send buffered writes grouped per table and operation in bounded chunks (e.g. INSERT … "
    "SELECT FROM unnest(…), UPDATE … FROM unnest(…) with the version check), all inside "
    "the one BEGIN … COMMIT, and roll all of it back on any refusal"
)


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


@attrs.frozen
class _Batch:
    """One test's 500 subscriptions, and what a renewal writes for them."""

    store: StoragePort
    tag: str
    marker: int
    customer: Customer
    subscriptions: list[Subscription]

    @property
    def filters(self) -> dict[type[object], dict[str, object]]:
        """How to count each kind's rows of this batch."""
        return {
            Invoice: {"customer_id": self.customer.id},
            InvoiceLine: {"description": self.tag},
            Payment: {"provider": self.tag},
            InvoicePayment: {"amount_applied": self.marker},
            AuditLog: {"entity_type": self.tag},
            Subscription: {"customer_id": self.customer.id, "version": 2},
        }


async def _batch(shared: Shared) -> _Batch:
    store = await shared.store()
    tag = entities.tag()
    customer = entities.customer(TEST)
    plan = entities.plan(TEST)
    price = entities.price(TEST, plan.id)
    subscriptions = [entities.subscription(TEST, customer, price) for _ in range(BATCH)]
    async with store.transaction(TEST) as tx:
        await tx.insert(customer)
        await tx.insert(plan)
        await tx.insert(price)
        for subscription in subscriptions:
            await tx.insert(subscription)
    return _Batch(store, tag, 1_000_000 + int(tag[1:6], 16), customer, subscriptions)


_Write = Callable[[StorageTransaction], Awaitable[object]]


def _renewal(
    batch: _Batch, *, stale_at: int | None = None, clash: str | None = None
) -> list[_Write]:
    """3,000 writes: per subscription an invoice, a line, a payment, a link, an audit row and
    the subscription's update; the update ``stale_at`` (1-based) from a stale version; and,
    with ``clash``, an invoice numbered ``clash`` as the 2,990th write."""
    writes: list[_Write] = []
    for index, subscription in enumerate(batch.subscriptions, start=1):
        invoice = entities.invoice(
            TEST,
            batch.customer,
            subscription=subscription,
            number=f"{batch.tag}-{index}",
            total=batch.marker,
        )
        payment = entities.payment(TEST, batch.customer, amount=batch.marker, provider=batch.tag)
        line = entities.invoice_line(TEST, invoice, description=batch.tag)
        link = entities.invoice_payment(TEST, invoice, payment)
        audit = entities.audit_log(TEST, action="subscription.renewed", entity_type=batch.tag)
        renewed = attrs.evolve(subscription, quantity=2)
        expected = 7 if index == stale_at else None
        writes += [
            lambda tx, row=invoice: tx.insert(row),  # type: ignore[misc]
            lambda tx, row=line: tx.insert(row),  # type: ignore[misc]
            lambda tx, row=payment: tx.insert(row),  # type: ignore[misc]
            lambda tx, row=link: tx.insert(row),  # type: ignore[misc]
            lambda tx, row=audit: tx.insert(row),  # type: ignore[misc]
            lambda tx, row=renewed, v=expected: tx.update(row, expected_version=v),  # type: ignore[misc]
        ]
    if clash is not None:
        taken = entities.invoice(TEST, batch.customer, number=clash, total=batch.marker)
        writes.insert(2_989, lambda tx: tx.insert(taken))
    return writes


async def _counts(tx: StorageTransaction, batch: _Batch) -> dict[str, int]:
    return {
        kind.__name__: await tx.count(kind, filters=filters)
        for kind, filters in batch.filters.items()
    }


async def _stored(batch: _Batch) -> dict[str, int]:
    async with batch.store.transaction(TEST, readonly=True) as tx:
        return await _counts(tx, batch)


async def test_thousands_of_writes_commit_together(shared: Shared) -> None:
    batch = await _batch(shared)
    writes = _renewal(batch)
    failure: Exception | None = None
    try:
        async with batch.store.transaction(TEST) as tx:
            for write in writes:
                await write(tx)
    except Exception as error:
        failure = error
    if failure is not None:
        expect.broke(
            f"a transaction of {len(writes)} writes (500 each of invoice, line, payment, link, "
            f"audit row and versioned subscription update) failed: "
            f"{type(failure).__name__} ({failure})",
            FIX,
        )
    stored = await _stored(batch)
    expect.that(
        set(stored.values()) == {BATCH},
        f"after committing 3,000 writes the store holds {stored} (expected {BATCH} of each)",
        FIX,
    )


async def test_reads_in_the_transaction_see_all_of_them(shared: Shared) -> None:
    batch = await _batch(shared)
    async with batch.store.transaction(TEST) as tx:
        for write in _renewal(batch):
            await write(tx)
        seen = await _counts(tx, batch)
        last = await tx.get(Subscription, batch.subscriptions[-1].id)
    expect.that(
        set(seen.values()) == {BATCH} and last is not None and last.version == 2,
        f"reads inside a transaction of 3,000 buffered writes saw {seen} (expected {BATCH} of "
        "each) and the last subscription at version "
        f"{None if last is None else last.version} (expected 2)",
        "send buffered writes before a read that depends on them, however many there are",
    )


async def _nothing_kept(batch: _Batch, how: str) -> None:
    stored = await _stored(batch)
    expect.that(
        not any(stored.values()),
        f"{how}, the store kept {stored}: a partial transaction",
        FIX,
    )


async def test_a_stale_version_at_the_499th_update_leaves_nothing(shared: Shared) -> None:
    batch = await _batch(shared)
    with expect.precondition(
        ConflictError,
        "a 3,000-write transaction whose 499th update has a stale version",
        "optimistic_locking",
    ):
        async with batch.store.transaction(TEST) as tx:
            for write in _renewal(batch, stale_at=499):
                await write(tx)
    await _nothing_kept(batch, "after a stale version at the 499th update")


async def test_a_unique_conflict_near_the_end_leaves_nothing(shared: Shared) -> None:
    batch = await _batch(shared)
    holder = entities.invoice(TEST, batch.customer, number=f"{batch.tag}-taken", total=1)
    async with batch.store.transaction(TEST) as tx:
        await tx.insert(holder)
    with expect.precondition(
        ConflictError,
        "a 3,000-write transaction whose 2,990th write takes a taken number",
        "atomic_operations (unique keys)",
    ):
        async with batch.store.transaction(TEST) as tx:
            for write in _renewal(batch, clash=holder.number):
                await write(tx)
    stored = await _stored(batch)
    stored["Invoice"] -= 1  # the holder
    expect.that(
        not any(stored.values()),
        f"after a unique conflict at the 2,990th write, the store kept {stored}",
        FIX,
    )
