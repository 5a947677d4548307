"""Refunds: money given back on a payment, intent first, capped atomically.

The cap is the domain's (``qzpay.domain.refund_rules``); atomicity is the storage's: a
bounded ``increment`` of the payment's ``refunded_amount`` by the refund's amount, bounded by
the payment's ``amount``, so concurrent refunds of one payment can never together exceed it,
on any adapter. The refund row is committed ``pending`` with that reservation before the
provider is asked (its provider key derived from its id); a refund the provider rejects
gives its reservation back, one it accepts moves the payment to ``partially_refunded`` or
``refunded``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

import attrs

from qzpay.contracts.provider import RefundRequest, RefundResult
from qzpay.contracts.storage import StorageTransaction
from qzpay.domain.enums import PaymentStatus, RefundStatus
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.refund_rules import check_refund, listed_refund, refund_too_large
from qzpay.errors import ConflictError
from qzpay.services import charging
from qzpay.services.context import ServiceContext, UnitOfWork, every, require

AfterRefund = Callable[[UnitOfWork, Refund], Awaitable[None]]
"""More work in a refund's settling transaction (its idempotency key completed)."""


REFUND_KEY = "qzpay-refund-"


def refund_key(refund_id: UUID) -> str:
    """The provider idempotency key of one refund: derived from the row's id."""
    return f"{REFUND_KEY}{refund_id}"


async def add_refund(
    tx: StorageTransaction, refund: Refund, payment: Payment | None = None
) -> Payment:
    """Store ``refund`` and reserve its amount on its payment; the payment as now.

    ``payment`` is the payment as the caller read it in this transaction, if it did.
    """
    if payment is None:
        payment = await require(tx, Payment, refund.payment_id, field="payment_id")
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


async def call_provider(
    context: ServiceContext, payment: Payment, refund: Refund
) -> RefundResult | None:
    """Ask the provider for ``refund``; ``None`` when the outcome is unknown.

    Retried with the same key on a retryable failure; a refusal of the request is a failed
    refund (``provider_rejected``), whose reservation ``settle`` gives back.
    """
    assert refund.idempotency_key is not None
    assert payment.provider_id is not None
    request = RefundRequest(
        provider_payment_id=payment.provider_id,
        amount=refund.amount,
        currency=refund.currency,
        idempotency_key=refund.idempotency_key,
        reason=refund.reason,
    )
    return await charging.with_retries(
        lambda: context.provider.refund(request),
        rejected=lambda error: RefundResult(
            provider_id="", status="failed", failure_code="provider_rejected"
        ),
    )


async def settle(
    context: ServiceContext,
    refund_id: UUID,
    result: RefundResult | None,
    *,
    then: AfterRefund | None = None,
) -> Refund:
    """Write the provider's answer onto the refund and its payment.

    ``None`` (unknown) or a still-pending answer leaves both as they are; a refund already
    settled is returned as it is. Retried on a concurrent edit of the payment. ``then``
    runs in the same transaction.
    """
    for _ in range(charging.SETTLE_ATTEMPTS):
        try:
            async with context.unit_of_work() as uow:
                refund: Refund = await require(uow.tx, Refund, refund_id, field="refund_id")
                unknown = result is None or result.status == "pending"
                if not unknown and refund.status == RefundStatus.PENDING:
                    assert result is not None
                    refund = await _write_outcome(uow, context, refund, result)
                if then is not None:
                    await then(uow, refund)
            return refund
        except ConflictError:
            continue
    raise ConflictError(
        f"the payment of refund {refund_id} kept changing while the refund's outcome was "
        "written; payments.reconcile writes it again",
        field="refund_id",
        rule="concurrent_update",
    )


async def _write_outcome(
    uow: UnitOfWork, context: ServiceContext, refund: Refund, result: RefundResult
) -> Refund:
    succeeded = result.status == "succeeded"
    # Hold the payment first (a bounded increment holds its row until the transaction
    # ends): refunds of one payment settling at once then go one after the other, and
    # each reads the totals with the others' outcomes in them. A rejected refund's
    # increment gives its reservation back; an accepted one's adds nothing.
    payment = await uow.tx.increment(
        Payment,
        refund.payment_id,
        "refunded_amount",
        0 if succeeded else -refund.amount,
        at=uow.now,
    )
    assert payment is not None  # no upper bound: never refused
    settled = attrs.evolve(
        refund,
        status=RefundStatus.SUCCEEDED if succeeded else RefundStatus.FAILED,
        provider_id=result.provider_id or refund.provider_id,
        failure_code=None if succeeded else result.failure_code or "provider_rejected",
        updated_at=uow.now,
    )
    await uow.tx.update(settled)
    await uow.record(f"refund.{settled.status.value}", settled, changes={"amount": settled.amount})
    await _follow(uow, context, payment)
    return settled


async def _follow(uow: UnitOfWork, context: ServiceContext, payment: Payment) -> None:
    """The payment's status from its settled refunds, and whether the job runner still has
    a pending refund of it to reconcile."""
    groups = await uow.tx.aggregate(
        Refund, group_by=("status",), sums=("amount",), filters={"payment_id": payment.id}
    )
    by_status = {RefundStatus(group.key["status"]): group for group in groups}
    succeeded = by_status.get(RefundStatus.SUCCEEDED)
    total = succeeded.sums["amount"] if succeeded is not None else 0
    pending = RefundStatus.PENDING in by_status
    status = payment.status
    if status in charging.PAID:
        status = (
            PaymentStatus.REFUNDED
            if total >= payment.amount
            else PaymentStatus.PARTIALLY_REFUNDED
            if total > 0
            else PaymentStatus.SUCCEEDED
        )
    due_at = payment.due_at if pending else None
    if status == payment.status and due_at == payment.due_at:
        return
    updated = await uow.tx.update(
        attrs.evolve(payment, status=status, due_at=due_at, updated_at=uow.now)
    )
    if status != payment.status:
        await uow.record(
            f"payment.{status.value}",
            updated,
            changes={"status": [payment.status.value, status.value], "refunded": total},
        )


async def pending_refunds(tx: StorageTransaction, payment_id: UUID) -> list[Refund]:
    """The payment's refunds whose outcome is not known yet, oldest first."""
    page = await tx.list(
        Refund, filters={"payment_id": payment_id, "status": RefundStatus.PENDING}, limit=100
    )
    return sorted(page.items, key=lambda refund: refund.id)


async def at_provider(
    context: ServiceContext, payment: Payment, refund: Refund
) -> RefundResult | None:
    """The refund as the provider has it now; ``None`` when the provider has none (yet).

    By its id when qzpay has one; otherwise its answer was lost, and it is one of the few
    refunds of this one charge (``list_refunds``, matched by ``refund_rules.listed_refund``).
    """
    provider = context.provider
    if refund.provider_id is not None or not payment.provider_id:
        return await provider.retrieve_refund(
            idempotency_key=refund.idempotency_key or "", provider_id=refund.provider_id
        )
    listed = await provider.list_refunds(
        provider_payment_id=payment.provider_id, currency=payment.currency
    )
    async with context.unit_of_work(readonly=True) as uow:
        known = await every(uow.tx, Refund, {"payment_id": payment.id})
    return listed_refund(refund, listed, known)
