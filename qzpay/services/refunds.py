"""Adding a refund to a payment, capped atomically.

The cap is the domain's (``qzpay.domain.refund_rules``); atomicity is the storage's: a guarded
``increment`` of the payment's ``refunded_amount``, bounded by its ``amount``, so concurrent
refunds of one payment can never together exceed it, on any adapter.
"""

from __future__ import annotations

from qzpay.contracts.storage import StorageTransaction
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.refund_rules import check_refund, refund_too_large
from qzpay.services.context import require


async def add_refund(tx: StorageTransaction, refund: Refund) -> Payment:
    """Store ``refund`` and add it to its payment's ``refunded_amount``; the payment as now."""
    payment: Payment = await require(tx, Payment, refund.payment_id, field="payment_id")
    check_refund(payment, refund)  # the clear error for the sequential case
    updated = await tx.increment(
        Payment,
        payment.id,
        "refunded_amount",
        refund.amount,
        at_most="amount",
        at=refund.created_at,
    )
    if updated is None:  # a concurrent refund took the rest meanwhile
        current: Payment = await require(tx, Payment, refund.payment_id, field="payment_id")
        raise refund_too_large(current)
    await tx.insert(refund)
    return updated
