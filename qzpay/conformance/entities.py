"""Rows the suite writes: valid domain records for one scope, built in one line each.

Every builder takes the ``Scope`` the row belongs to (its livemode and tenant) and the few
fields a test cares about; the rest are plausible defaults. Timestamps are one fixed,
timezone-aware instant (``NOW``); ids are fresh UUIDv7s, so newer rows sort later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from qzpay.contracts.storage import Scope
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer
from qzpay.domain.enums import (
    DiscountType,
    Interval,
    PaymentStatus,
    RefundStatus,
    SubscriptionStatus,
)
from qzpay.domain.payments import Payment, PaymentMethod, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import AuditLog, IdempotencyKey, WebhookEvent
from qzpay.domain.subscriptions import Subscription
from qzpay.ids import new_id

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
"""The suite's "now": storage never asks the wall clock, so neither do the rows."""


def customer(
    scope: Scope,
    *,
    email: str | None = None,
    external_id: str | None = None,
    name: str | None = None,
) -> Customer:
    id = new_id()
    return Customer(
        id=id,
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        email=email or f"c_{id.hex}@example.com",
        name=name,
        external_id=external_id,
        created_at=NOW,
        updated_at=NOW,
    )


def plan(scope: Scope, *, name: str = "Pro") -> Plan:
    return Plan(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        name=name,
        created_at=NOW,
        updated_at=NOW,
    )


def price(scope: Scope, plan_id: UUID, *, unit_amount: int = 2900) -> Price:
    return Price(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        plan_id=plan_id,
        unit_amount=unit_amount,
        currency="USD",
        interval=Interval.MONTH,
        created_at=NOW,
        updated_at=NOW,
    )


def subscription(
    scope: Scope, customer: Customer, price: Price, *, due_at: datetime | None = None
) -> Subscription:
    return Subscription(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        customer_id=customer.id,
        plan_id=price.plan_id,
        price_id=price.id,
        status=SubscriptionStatus.ACTIVE,
        currency=price.currency,
        unit_amount=price.unit_amount,
        interval=price.interval,
        billing_anchor=NOW - timedelta(days=31),
        current_period_start=NOW - timedelta(days=31),
        current_period_end=NOW,
        due_at=due_at,
        created_at=NOW,
        updated_at=NOW,
    )


def payment_method(scope: Scope, customer_id: UUID) -> PaymentMethod:
    id = new_id()
    return PaymentMethod(
        id=id,
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        customer_id=customer_id,
        provider="conformance",
        provider_id=f"pm_{id.hex}",
        type="card",
        created_at=NOW,
        updated_at=NOW,
    )


def payment(scope: Scope, customer: Customer, *, amount: int = 10_000) -> Payment:
    return Payment(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        customer_id=customer.id,
        amount=amount,
        currency="USD",
        status=PaymentStatus.SUCCEEDED,
        provider="conformance",
        created_at=NOW,
        updated_at=NOW,
    )


def refund(scope: Scope, payment: Payment, *, amount: int) -> Refund:
    return Refund(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        payment_id=payment.id,
        amount=amount,
        currency=payment.currency,
        status=RefundStatus.SUCCEEDED,
        provider="conformance",
        created_at=NOW,
        updated_at=NOW,
    )


def promo_code(
    scope: Scope,
    *,
    code: str = "SAVE10",
    max_redemptions: int | None = None,
    max_redemptions_per_customer: int | None = None,
) -> PromoCode:
    return PromoCode(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        code=code,
        discount_type=DiscountType.FIXED_AMOUNT,
        amount_off=500,
        currency="USD",
        max_redemptions=max_redemptions,
        max_redemptions_per_customer=max_redemptions_per_customer,
        created_at=NOW,
        updated_at=NOW,
    )


def promo_code_usage(scope: Scope, code: PromoCode, customer: Customer) -> PromoCodeUsage:
    return PromoCodeUsage(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        promo_code_id=code.id,
        customer_id=customer.id,
        discount_amount=500,
        currency="USD",
        created_at=NOW,
    )


def idempotency_key(scope: Scope, key: str, *, request_hash: str = "h1") -> IdempotencyKey:
    return IdempotencyKey(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        key=key,
        operation="payments.process",
        request_hash=request_hash,
        response={"ok": True},
        created_at=NOW,
    )


def audit_log(scope: Scope, *, action: str = "customer.created") -> AuditLog:
    return AuditLog(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        entity_type="customer",
        entity_id=new_id(),
        action=action,
        changes={"email": "ann@example.com"},
        created_at=NOW,
    )


def webhook_event(scope: Scope, *, event_id: str = "evt_1") -> WebhookEvent:
    return WebhookEvent(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        provider="conformance",
        provider_event_id=event_id,
        type="payment.succeeded",
        payload={"id": event_id},
        received_at=NOW,
        created_at=NOW,
    )
