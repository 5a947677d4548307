"""Renewals as batches (``renewals.renew_round``): what one subscription does to the batch.

A claimed batch's renewals are opened in one transaction, charged side by side and settled in
one transaction. These tests make one member of a batch misbehave at each step (bad data in
the open, an edit of its row between claim and open, an edit while it is charged) and check
that the others renew once, the odd one ends right, and nothing is charged twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest

from qzpay import Billing, Scope
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.domain.catalog import Price
from qzpay.domain.enums import InvoiceStatus, PaymentStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment
from qzpay.domain.records import JobExecution
from qzpay.domain.subscriptions import Subscription
from qzpay.money import MAX_AMOUNT
from qzpay.services import renewals

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)


async def _book(billing: Billing, count: int, token: str = "pm_card_visa") -> list[Subscription]:
    """``count`` customers, each with a card and an active monthly subscription."""
    plan = await billing.plans.create(name="Pro")
    price: Price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    subscriptions = []
    for i in range(count):
        customer = await billing.customers.create(email=f"user{i}@example.com")
        await billing.payment_methods.attach(customer.id, token=token, set_default=True)
        subscriptions.append(
            await billing.subscriptions.create(customer_id=customer.id, price_id=price.id)
        )
    return subscriptions


async def _rows(billing: Billing, kind: type[Any], **filters: object) -> list[Any]:
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        return list((await tx.list(kind, filters=filters, limit=100)).items)


async def test_a_subscription_that_breaks_the_open_transaction_fails_alone(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    subscriptions = await _book(billing, 4)
    odd = subscriptions[2]
    # Data no invoice line can bill: the line's amount would not fit (money.MAX_AMOUNT).
    async with billing.storage.transaction(TEST) as tx:
        stored = await tx.get(Subscription, odd.id)
        assert stored is not None
        await tx.update(attrs.evolve(stored, unit_amount=MAX_AMOUNT, quantity=2))
    charged_before = len(fake.charges)

    clock.advance(timedelta(days=31))
    report = await billing.jobs.run_due()

    assert (report.renewals, report.charged, report.errors) == (3, 3, 1)
    assert len(fake.charges) == charged_before + 3
    for sub in subscriptions:
        now = await billing.subscriptions.get(sub.id)
        renewed = now.current_period_end > clock.now()
        assert renewed == (sub.id != odd.id)
    odd_now = await billing.subscriptions.get(odd.id)
    assert odd_now.due_at is not None
    assert odd_now.due_at > clock.now()  # backed off
    latest = (await billing.audit.list(entity_id=odd.id)).items[0]
    assert latest.action == "job_failed"
    numbers = sorted(i.number for i in await _rows(billing, Invoice) if i.number)
    assert numbers == [f"INV-{n:06d}" for n in range(1, 4)]  # gapless: the failed try gave its back


async def test_rows_edited_after_the_claim_are_renewed_as_they_now_are(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    subscriptions = await _book(billing, 3)
    clock.advance(timedelta(days=31))
    claimed = [await billing.subscriptions.get(sub.id) for sub in subscriptions]
    # A user's edit between the claim and the renewal: the claimed row is stale now.
    await billing.subscriptions.update_quantity(claimed[1].id, 3, proration="none")

    done = await renewals.renew_round(billing._context, claimed, concurrency=2)

    assert {key: renewed.charged for key, renewed in done.items()} == {
        sub.id: "charged" for sub in subscriptions
    }
    edited = await billing.subscriptions.get(claimed[1].id)
    assert edited.quantity == 3
    assert edited.current_period_end > clock.now()
    [invoice] = await _rows(billing, Invoice, subscription_id=edited.id)
    assert invoice.total == 3 * 2900  # billed at the edited quantity
    assert len(fake.charges) == 3 + 3


async def test_an_edit_while_the_batch_is_charged_lets_each_payment_settle_on_its_own(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    subscriptions = await _book(billing, 3, token="pm_card_visa")
    for sub in subscriptions:  # every renewal will be declined
        customer = sub.customer_id
        for method in (await billing.payment_methods.list(customer)).items:
            await billing.payment_methods.detach(method.id)
        await billing.payment_methods.attach(
            customer, token="pm_card_chargeDeclined", set_default=True
        )
    charge = fake.charge
    edited = subscriptions[0].id

    done: list[bool] = []

    async def edit_while_charging(request: Any) -> Any:
        # The user edits one subscription while the renewals are at the provider (once: the
        # calls run side by side): the batch's settle, which moves each declined
        # subscription to past_due, finds it stale.
        if not done:
            done.append(True)
            await billing.subscriptions.update_quantity(edited, 2, proration="none")
        return await charge(request)

    fake.charge = edit_while_charging  # type: ignore[method-assign]
    clock.advance(timedelta(days=31))
    report = await billing.jobs.run_due()

    runs = await _rows(billing, JobExecution)
    assert (report.renewals, report.failed, report.errors) == (3, 3, 0), [r.error for r in runs]
    assert len(fake.charges) == 3 + 3  # one attempt each, none repeated
    for sub in subscriptions:
        now = await billing.subscriptions.get(sub.id)
        assert now.status == "past_due"
        [payment] = [
            p
            for p in await _rows(billing, Payment, subscription_id=sub.id)
            if p.invoice_id is not None
        ]
        assert payment.status == PaymentStatus.FAILED
        [invoice] = await _rows(billing, Invoice, subscription_id=sub.id)
        assert (invoice.status, invoice.attempt_count) == (InvoiceStatus.OPEN, 1)
    assert (await billing.subscriptions.get(edited)).quantity == 2  # the edit was kept


async def test_a_renewal_with_a_draft_of_prorations_bills_them_with_the_period(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    [sub, other] = await _book(billing, 2)
    clock.advance(timedelta(days=15))
    await billing.subscriptions.update_quantity(sub.id, 2, proration="create_prorations")
    [draft] = await _rows(billing, Invoice, subscription_id=sub.id, status=InvoiceStatus.DRAFT)
    assert draft.subtotal > 0

    clock.advance(timedelta(days=16))
    report = await billing.jobs.run_due()

    assert report.charged == 2
    [renewal] = await _rows(billing, Invoice, subscription_id=sub.id, status=InvoiceStatus.PAID)
    assert renewal.id == draft.id  # the draft itself finalized, not a second invoice
    assert renewal.total == draft.subtotal + 2 * 2900
    assert renewal.amount_paid == renewal.total
    assert fake.charges[-1].request.amount in (renewal.total, 2900)
    [plain] = await _rows(billing, Invoice, subscription_id=other.id)
    assert plain.total == 2900
