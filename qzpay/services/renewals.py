"""Renewals and dunning retries: a subscription whose period ended is invoiced for the next
one and charged, intent first; a past-due one's open invoice is charged again on the
dunning schedule.

A renewal is two steps. One transaction moves the subscription into its next period and
finalizes the period's invoice (the subscription's draft, with any pending proration
lines, plus the period's line at the subscription's price and quantity; numbered at
finalize). Then the invoice is charged (``invoicing.charge_invoice``: a pending payment
committed before the provider call, one attempt per invoice in flight). What the charge
comes to is applied by the settle (``charging``): a failure makes the subscription
``past_due`` and starts dunning, wherever the failure is learnt (the call, a later
reconciliation, a webhook). A run killed between the two steps leaves a finalized, unpaid
invoice and the subscription due: the next run charges that invoice, it never renews twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import attrs

from qzpay.contracts.filters import one_of
from qzpay.domain import schedule
from qzpay.domain.enums import InvoiceStatus, SubscriptionStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError
from qzpay.money import format_amount
from qzpay.services import charging, invoicing
from qzpay.services.context import ServiceContext, UnitOfWork

Charged = Literal["charged", "failed", "skipped", "nothing"]
"""What charging an invoice came to: paid, declined, its outcome not known yet, or nothing
charged (no open invoice, or no card to charge it to)."""
ATTEMPTS = 3
"""How often the period move is tried again after a concurrent edit of the subscription."""


CATCH_UP = 100
"""Most periods renewed for one subscription in one run (a runner that was down for months
catches up period by period, each invoiced and charged)."""


async def renew(context: ServiceContext, subscription: Subscription) -> list[Charged]:
    """Renew every period of ``subscription`` that has ended by now, one after the other,
    until one is not paid (then dunning takes over) or none is left; what each came to."""
    outcomes: list[Charged] = []
    current: Subscription | None = subscription
    for _ in range(CATCH_UP):
        if current is None or not _renewable(current, context):
            break
        charged = await _renew_once(context, current)
        outcomes.append(charged)
        if charged != "charged":
            break
        current = await _reread(context, current)
    return outcomes or ["skipped"]


async def _renew_once(context: ServiceContext, subscription: Subscription) -> Charged:
    """Move ``subscription`` into its next period, invoice it and charge the invoice."""
    current: Subscription | None = subscription
    invoice: Invoice | None = None
    for _ in range(ATTEMPTS):
        if current is None or not _renewable(current, context):
            break
        try:
            async with context.unit_of_work() as uow:
                unpaid = await open_invoice(uow, current)
                if unpaid is not None:
                    invoice = unpaid  # an earlier run renewed it and died before charging
                else:
                    invoice = await _next_period(uow, context, current)
            break
        except ConflictError:
            current = await _reread(context, subscription)
    if invoice is None:
        return "skipped"
    return await charge(context, invoice)


async def retry(context: ServiceContext, subscription: Subscription) -> Charged:
    """A dunning retry: charge the past-due subscription's open invoice again (a new
    attempt: a new payment row, a new provider key)."""
    async with context.unit_of_work(readonly=True) as uow:
        invoice = await open_invoice(uow, subscription)
    if invoice is None:
        # Past due with nothing invoiced: a trial whose end charge failed (or found no
        # card). Its first paid period is invoiced now, once, and charged like any retry.
        invoice = await _invoice_current_period(context, subscription)
        if invoice is None:
            return "skipped"
    return await charge(context, invoice)


async def _invoice_current_period(
    context: ServiceContext, subscription: Subscription
) -> Invoice | None:
    try:
        async with context.unit_of_work() as uow:
            current = await uow.tx.get(Subscription, subscription.id)
            if current is None or current.status != SubscriptionStatus.PAST_DUE:
                return None
            if await open_invoice(uow, current) is not None:
                return None  # another runner invoiced it meanwhile
            draft = await invoicing.new_draft(
                uow,
                customer_id=current.customer_id,
                currency=current.currency,
                lines=[
                    _period_line(current, current.current_period_start, current.current_period_end)
                ],
                subscription_id=current.id,
                period_start=current.current_period_start,
                period_end=current.current_period_end,
            )
            return await invoicing.finalize_in(uow, context, draft)
    except ConflictError:
        return None  # due again after the lease; charged then


async def charge(context: ServiceContext, invoice: Invoice) -> Charged:
    """Charge the invoice, unless nothing is due on it (finalized paid: a free period)."""
    if invoice.status == InvoiceStatus.PAID:
        return "charged"
    try:
        charged = await invoicing.charge_invoice(context, invoice.id)
    except InvalidStateError as refused:
        if refused.rule == "one_attempt_in_flight":
            return "skipped"  # reconciled, not charged again
        if refused.rule == "payment_method":
            return "nothing"  # no card to charge: a failed charge, with no payment row
        raise
    if charged.status == InvoiceStatus.PAID:
        return "charged"
    async with context.unit_of_work(readonly=True) as uow:
        latest = await uow.tx.list(Payment, filters={"invoice_id": invoice.id}, limit=1)
    pending = bool(latest.items) and latest.items[0].status in charging.OPEN
    return "skipped" if pending else "failed"


async def open_invoice(uow: UnitOfWork, subscription: Subscription) -> Invoice | None:
    """The subscription's finalized invoice still to be paid, if any (newest first)."""
    page = await uow.tx.list(
        Invoice,
        filters={
            "subscription_id": subscription.id,
            "status": one_of([InvoiceStatus.OPEN]),
        },
        limit=1,
    )
    return page.items[0] if page.items else None


def _renewable(subscription: Subscription, context: ServiceContext) -> bool:
    return (
        subscription.status == SubscriptionStatus.ACTIVE
        and not subscription.cancel_at_period_end
        and subscription.current_period_end <= context.now()
    )


async def _next_period(
    uow: UnitOfWork, context: ServiceContext, subscription: Subscription
) -> Invoice:
    start, end = invoicing.renewal_period(subscription)
    draft = await invoicing.upcoming_draft(uow, subscription)
    draft = await invoicing.add_lines(uow, draft, [_period_line(subscription, start, end)])
    invoice = await invoicing.finalize_in(uow, context, draft)
    moved = attrs.evolve(
        subscription, current_period_start=start, current_period_end=end, updated_at=uow.now
    )
    renewed = await uow.tx.update(schedule.scheduled(moved, context.settings))
    await uow.record(
        "subscription.renewed",
        renewed,
        changes={
            "period": [start.isoformat(), end.isoformat()],
            "invoice": invoice.number or str(invoice.id),
        },
    )
    return invoice


def _period_line(subscription: Subscription, start: datetime, end: datetime) -> invoicing.LineDraft:
    """The line billing one period at the subscription's price and quantity."""
    price = format_amount(subscription.unit_amount, subscription.currency)
    return invoicing.LineDraft(
        description=(
            f"{subscription.quantity} × {price} per {subscription.interval}, "
            f"{start.date().isoformat()} to {end.date().isoformat()}"
        ),
        unit_amount=subscription.unit_amount,
        quantity=subscription.quantity,
        price_id=subscription.price_id,
        period_start=start,
        period_end=end,
    )


async def _reread(context: ServiceContext, subscription: Subscription) -> Subscription | None:
    async with context.unit_of_work(readonly=True) as uow:
        return await uow.tx.get(Subscription, subscription.id)
