"""Reconciliation: asking the provider what became of payments and refunds whose outcome
qzpay does not know (a crash between the provider call and the settle, a lost response, a
``processing`` charge), and settling them. It never charges or refunds: it only reads.

``payments.reconcile`` runs it for one payment; the job runner for every payment whose
``due_at`` has come (``reconcile_after`` after it was left open).
"""

from __future__ import annotations

from uuid import UUID

import attrs

from qzpay.contracts.provider import ChargeResult, RefundResult
from qzpay.domain.enums import PaymentStatus
from qzpay.domain.payments import Payment
from qzpay.services import charging, refunds
from qzpay.services.context import ServiceContext, require


async def reconcile(context: ServiceContext, payment_id: UUID) -> Payment:
    """Settle the payment and its pending refunds from what the provider says now.

    A payment the provider has never heard of stays pending until it is ``abandon_after``
    old, and is then ``failed`` with ``abandoned`` (by then no provider would still accept
    the attempt's key); likewise a refund. Settled payments are returned as they are.
    """
    provider = context.provider
    async with context.unit_of_work(readonly=True) as uow:
        payment: Payment = await require(uow.tx, Payment, payment_id, field="payment_id")
        waiting = await refunds.pending_refunds(uow.tx, payment.id)
    now = context.now()
    for refund in waiting:
        found = await refunds.at_provider(context, payment, refund)
        if found is None and now - refund.created_at >= context.settings.abandon_after:
            found = RefundResult(provider_id="", status="failed", failure_code="abandoned")
        await refunds.settle(context, refund.id, found)
    result: ChargeResult | None = None
    if payment.status in charging.OPEN and payment.provider == provider.name:
        result = await charging.retrieve(context, payment)
        if (
            result is None
            and payment.status == PaymentStatus.PENDING
            and now - payment.created_at >= context.settings.abandon_after
        ):
            result = ChargeResult(
                provider_id="",
                status="failed",
                failure_code="abandoned",
                failure_message="the provider never received this charge; it was given up",
            )
    settled = await charging.settle(context, payment.id, result)
    return await _next_check(context, settled)


async def _next_check(context: ServiceContext, payment: Payment) -> Payment:
    """Leave the payment due again only while something about it is still open."""
    async with context.unit_of_work() as uow:
        current: Payment = await require(uow.tx, Payment, payment.id, field="payment_id")
        still_open = current.status in (PaymentStatus.PENDING, PaymentStatus.PROCESSING)
        if not still_open:
            still_open = bool(await refunds.pending_refunds(uow.tx, current.id))
        due_at = uow.now + context.settings.reconcile_after if still_open else None
        if due_at == current.due_at or (
            due_at is not None and current.due_at is not None and current.due_at > uow.now
        ):
            return current
        return await uow.tx.update(attrs.evolve(current, due_at=due_at, updated_at=uow.now))
