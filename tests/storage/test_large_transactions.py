"""Thousands of writes in one transaction (a renewal batch), on every adapter: all or nothing.

Issue 13: a renewal batch of 500 writes about 3,000 rows. Before it, PostgreSQL's batcher put
every buffered write into one statement and failed at 1,665 writes (``TooManyColumnsError``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import attrs
import pytest

from qzpay import ConflictError, NotFoundError
from qzpay.conformance import entities
from qzpay.contracts.storage import Scope, StoragePort, StorageTransaction
from qzpay.domain.customers import Customer
from qzpay.domain.enums import InvoiceStatus, PaymentStatus
from qzpay.domain.invoices import Invoice, InvoiceLine, InvoicePayment
from qzpay.domain.payments import Payment
from qzpay.domain.records import AuditLog
from qzpay.domain.subscriptions import Subscription
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio

SCOPE = Scope(livemode=False)
NOW = entities.NOW  # the conformance rows' "now": what the book is built at
LATER = NOW + timedelta(days=31)
RENEWALS = 500

StoreFactory = Callable[..., StoragePort]


@attrs.frozen
class Book:
    """What the batch renews: one customer's 500 subscriptions."""

    customer: Customer
    subscriptions: list[Subscription]


@pytest.fixture
async def storage(store_factory: StoreFactory) -> AsyncIterator[StoragePort]:
    store = store_factory()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def book(storage: StoragePort) -> Book:
    customer = entities.customer(SCOPE, email="ann@example.com")
    plan = entities.plan(SCOPE)
    price = entities.price(SCOPE, plan.id)
    subscriptions = [
        entities.subscription(SCOPE, customer, price, due_at=NOW, metadata={"n": str(i)})
        for i in range(RENEWALS)
    ]
    async with storage.transaction(SCOPE) as tx:
        await tx.insert(customer)
        await tx.insert(plan)
        await tx.insert(price)
        for subscription in subscriptions:
            await tx.insert(subscription)
    return Book(customer, subscriptions)


async def _renew(
    tx: StorageTransaction, subscription: Subscription, n: int, *, expected: int | None = None
) -> None:
    """One renewal: invoice, line, payment, link, audit row, and the period moved on."""
    invoice = Invoice(
        id=new_id(), livemode=False, customer_id=subscription.customer_id,
        subscription_id=subscription.id, number=f"INV-{n:05d}", status=InvoiceStatus.PAID,
        currency="USD", subtotal=2900, total=2900, amount_paid=2900, period_start=NOW,
        period_end=LATER, paid_at=NOW, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    line = InvoiceLine(
        id=new_id(), livemode=False, invoice_id=invoice.id, description="Pro, monthly",
        unit_amount=2900, amount=2900, currency="USD", price_id=subscription.price_id,
        period_start=NOW, period_end=LATER, created_at=NOW,
    )  # fmt: skip
    payment = Payment(
        id=new_id(), livemode=False, customer_id=subscription.customer_id,
        subscription_id=subscription.id, invoice_id=invoice.id, amount=2900, currency="USD",
        status=PaymentStatus.SUCCEEDED, provider="fake", provider_id=f"ch_{n}",
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    link = InvoicePayment(
        id=new_id(), livemode=False, invoice_id=invoice.id, payment_id=payment.id,
        amount_applied=2900, currency="USD", applied_at=NOW, created_at=NOW,
    )  # fmt: skip
    audit = AuditLog(
        id=new_id(), livemode=False, entity_type="subscription", entity_id=subscription.id,
        action="renewed", changes={"invoice_id": str(invoice.id)}, created_at=NOW,
    )  # fmt: skip
    for row in (invoice, line, payment, link, audit):
        await tx.insert(row)
    renewed = attrs.evolve(
        subscription, current_period_start=NOW, current_period_end=LATER, due_at=LATER,
        updated_at=NOW,
    )  # fmt: skip
    await tx.update(renewed, expected_version=expected)


async def _renew_all(
    storage: StoragePort, subscriptions: list[Subscription], *, number_of: Any = None
) -> None:
    async with storage.transaction(SCOPE) as tx:
        for n, subscription in enumerate(subscriptions):
            await _renew(tx, subscription, number_of(n) if number_of else n)


async def _counts(storage: StoragePort) -> dict[str, int]:
    async with storage.transaction(SCOPE, readonly=True) as tx:
        return {
            kind.__name__: await tx.count(kind)
            for kind in (Invoice, InvoiceLine, Payment, InvoicePayment, AuditLog)
        }


async def test_a_renewal_batch_of_3000_writes_commits_all(storage: StoragePort, book: Book) -> None:
    await _renew_all(storage, book.subscriptions)
    assert set((await _counts(storage)).values()) == {RENEWALS}
    async with storage.transaction(SCOPE, readonly=True) as tx:
        for subscription in (book.subscriptions[0], book.subscriptions[-1]):
            stored = await tx.get(Subscription, subscription.id)
            assert stored is not None
            assert stored.version == 2
            assert stored.current_period_end == LATER
            assert stored.metadata == subscription.metadata
        assert await tx.count(Subscription, filters={"due_at": LATER}) == RENEWALS


async def test_a_stale_version_among_500_updates_leaves_nothing(
    storage: StoragePort, book: Book
) -> None:
    stale = book.subscriptions[377]
    async with storage.transaction(SCOPE) as tx:  # someone else moved it on
        await tx.update(attrs.evolve(stale, quantity=2))
    with pytest.raises(ConflictError) as raised:
        await _renew_all(storage, book.subscriptions)
    assert str(stale.id) in raised.value.message
    assert set((await _counts(storage)).values()) == {0}
    async with storage.transaction(SCOPE, readonly=True) as tx:
        first = await tx.get(Subscription, book.subscriptions[0].id)
    assert first == book.subscriptions[0]


async def test_a_unique_conflict_near_the_end_leaves_nothing(
    storage: StoragePort, book: Book
) -> None:
    # The 499th invoice takes the number of the 3rd: invoice numbers are unique.
    with pytest.raises(ConflictError) as raised:
        await _renew_all(storage, book.subscriptions, number_of=lambda n: 2 if n == 498 else n)
    assert raised.value.field == "number"
    assert set((await _counts(storage)).values()) == {0}
    async with storage.transaction(SCOPE, readonly=True) as tx:
        assert await tx.count(Subscription, filters={"due_at": NOW}) == RENEWALS


async def test_a_missing_row_among_500_updates_is_named(storage: StoragePort, book: Book) -> None:
    gone = book.subscriptions[123]
    async with storage.transaction(SCOPE) as tx:
        await tx.soft_delete(Subscription, gone.id, at=NOW)
    with pytest.raises(NotFoundError) as raised:
        await _renew_all(storage, book.subscriptions)
    assert str(gone.id) in raised.value.message
    assert set((await _counts(storage)).values()) == {0}


async def test_reads_inside_the_transaction_see_thousands_of_buffered_writes(
    storage: StoragePort, book: Book
) -> None:
    async with storage.transaction(SCOPE) as tx:
        for n, subscription in enumerate(book.subscriptions):
            await _renew(tx, subscription, n)
        assert await tx.count(Invoice) == RENEWALS
        assert await tx.count(Subscription, filters={"due_at": LATER}) == RENEWALS
        last = await tx.get(Subscription, book.subscriptions[-1].id)
        assert last is not None
        assert last.version == 2
        for n, subscription in enumerate(book.subscriptions):  # and once more, after the read
            await _renew(tx, attrs.evolve(subscription, version=2), RENEWALS + n)
    async with storage.transaction(SCOPE, readonly=True) as tx:
        assert await tx.count(Invoice) == 2 * RENEWALS
        again = await tx.get(Subscription, book.subscriptions[-1].id)
    assert again is not None
    assert again.version == 3


async def test_insert_then_update_of_the_same_rows_in_one_batch(
    storage: StoragePort, book: Book
) -> None:
    async with storage.transaction(SCOPE) as tx:
        drafts = []
        for n, subscription in enumerate(book.subscriptions[:300]):
            draft = Invoice(
                id=new_id(), livemode=False, customer_id=book.customer.id,
                subscription_id=subscription.id, status=InvoiceStatus.DRAFT, currency="USD",
                created_at=NOW, updated_at=NOW,
            )  # fmt: skip
            await tx.insert(draft)
            paid = await tx.update(
                attrs.evolve(draft, status=InvoiceStatus.OPEN, number=f"INV-{n:05d}")
            )
            drafts.append(paid)
        for invoice in drafts[:100]:
            await tx.soft_delete(Invoice, invoice.id, at=LATER, expected_version=invoice.version)
    async with storage.transaction(SCOPE, readonly=True) as tx:
        assert await tx.count(Invoice) == 200
        assert await tx.count(Invoice, include_deleted=True) == 300
        kept = await tx.get(Invoice, drafts[-1].id)
        deleted = await tx.get(Invoice, drafts[0].id, include_deleted=True)
    assert kept is not None
    assert (kept.status, kept.number, kept.version) == (InvoiceStatus.OPEN, "INV-00299", 2)
    assert deleted is not None
    assert (deleted.deleted_at, deleted.version) == (LATER, 3)
