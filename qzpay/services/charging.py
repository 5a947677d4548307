"""Charging a customer through the provider, and the payment row that records it.

Shared by everything that takes money for a subscription period (creation without a trial,
the end of a trial, renewals), so each charge is made and recorded the same way: with an
idempotency key derived from what is being paid for, so a retry can never charge twice.
"""

from __future__ import annotations

from uuid import UUID

from qzpay.contracts.provider import ChargeRequest, ChargeResult
from qzpay.contracts.storage import StorageTransaction
from qzpay.domain.customers import CustomerProviderRef
from qzpay.domain.enums import PaymentStatus
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.ids import new_id
from qzpay.services.context import ServiceContext, UnitOfWork
from qzpay.services.payment_methods import default_method

_STATUS = {
    "succeeded": PaymentStatus.SUCCEEDED,
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    "processing": PaymentStatus.PROCESSING,
    "failed": PaymentStatus.FAILED,
}


async def chargeable_method(
    tx: StorageTransaction, customer_id: UUID, preferred: UUID | None, provider: str
) -> tuple[PaymentMethod, str] | None:
    """The payment method to charge and the customer's id at the provider, if both exist."""
    method = await tx.get(PaymentMethod, preferred) if preferred is not None else None
    if method is None or method.customer_id != customer_id:
        method = await default_method(tx, customer_id)
    if method is None or method.provider != provider:
        return None
    ref = await tx.find(CustomerProviderRef, customer_id=customer_id, provider=provider)
    return None if ref is None else (method, ref.provider_customer_id)


async def charge(
    context: ServiceContext,
    *,
    method: PaymentMethod,
    provider_customer_id: str,
    amount: int,
    currency: str,
    idempotency_key: str,
    description: str,
) -> ChargeResult:
    return await context.provider.charge(
        ChargeRequest(
            amount=amount,
            currency=currency,
            provider_customer_id=provider_customer_id,
            provider_payment_method_id=method.provider_id,
            idempotency_key=idempotency_key,
            description=description,
        )
    )


async def record_payment(
    uow: UnitOfWork,
    context: ServiceContext,
    *,
    result: ChargeResult,
    method: PaymentMethod,
    subscription_id: UUID | None,
    amount: int,
    currency: str,
    idempotency_key: str,
) -> Payment:
    """Insert the payment row for a charge and record ``payment.<status>``."""
    payment = Payment(
        id=new_id(),
        livemode=uow.scope.livemode,
        tenant_id=uow.scope.tenant_id,
        customer_id=method.customer_id,
        subscription_id=subscription_id,
        payment_method_id=method.id,
        amount=amount,
        currency=currency,
        status=_STATUS[result.status],
        provider=context.provider.name,
        provider_id=result.provider_id,
        failure_code=result.failure_code,
        failure_message=result.failure_message,
        idempotency_key=idempotency_key,
        created_at=uow.now,
        updated_at=uow.now,
    )
    await uow.tx.insert(payment)
    await uow.record(
        f"payment.{payment.status.value}", payment, changes={"amount": amount, "currency": currency}
    )
    return payment


def period_key(subscription_id: UUID, period_index: int) -> str:
    """The idempotency key of one period's charge: the same however often it is retried."""
    return f"qzpay-subscription-{subscription_id}-period-{period_index}"
