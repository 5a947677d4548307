"""Rows the suite writes: valid domain records for one scope, built in one line each.

Every builder takes the ``Scope`` the row belongs to (its livemode and tenant) and the few
fields a test cares about; the rest are plausible defaults. Timestamps are one fixed,
timezone-aware instant (``NOW``); ids are fresh UUIDv7s, so newer rows sort later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from qzpay.contracts.storage import Scope
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer, CustomerProviderRef
from qzpay.domain.enums import (
    DiscountType,
    Interval,
    InvoiceStatus,
    JobStatus,
    PaymentStatus,
    RefundStatus,
    SubscriptionStatus,
)
from qzpay.domain.invoices import Invoice, InvoiceLine, InvoicePayment
from qzpay.domain.payments import Payment, PaymentMethod, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import AuditLog, IdempotencyKey, JobExecution, WebhookEvent
from qzpay.domain.subscriptions import Subscription
from qzpay.ids import new_id

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
"""The suite's "now": storage never asks the wall clock, so neither do the rows."""


def tag() -> str:
    """A fresh marker for one test's rows (``t3f9a2c71d0e4``): a test that shares a store with
    others writes its rows with its own tag and reads them back by it."""
    return f"t{uuid4().hex[:12]}"


def customer(
    scope: Scope,
    *,
    email: str | None = None,
    external_id: str | None = None,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Customer:
    id = new_id()
    return Customer(
        id=id,
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        email=email or f"c_{id.hex}@example.com",
        name=name,
        external_id=external_id,
        metadata=metadata or {},
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
    scope: Scope,
    customer: Customer,
    price: Price,
    *,
    due_at: datetime | None = None,
    quantity: int = 1,
    metadata: dict[str, str] | None = None,
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
        quantity=quantity,
        metadata=metadata or {},
        billing_anchor=NOW - timedelta(days=31),
        current_period_start=NOW - timedelta(days=31),
        current_period_end=NOW,
        due_at=due_at,
        created_at=NOW,
        updated_at=NOW,
    )


def payment_method(
    scope: Scope,
    customer_id: UUID,
    *,
    provider: str = "conformance",
    provider_id: str | None = None,
    brand: str | None = None,
    exp_month: int | None = None,
    is_default: bool = False,
    created_at: datetime = NOW,
) -> PaymentMethod:
    id = new_id()
    return PaymentMethod(
        id=id,
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        customer_id=customer_id,
        provider=provider,
        provider_id=provider_id or f"pm_{id.hex}",
        type="card",
        brand=brand,
        exp_month=exp_month,
        is_default=is_default,
        created_at=created_at,
        updated_at=created_at,
    )


def payment(
    scope: Scope,
    customer: Customer,
    *,
    amount: int = 10_000,
    provider: str = "conformance",
    currency: str = "USD",
    status: PaymentStatus = PaymentStatus.SUCCEEDED,
    failure_code: str | None = None,
) -> Payment:
    return Payment(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        customer_id=customer.id,
        amount=amount,
        currency=currency,
        status=status,
        failure_code=failure_code,
        provider=provider,
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


def idempotency_key(
    scope: Scope,
    key: str,
    *,
    request_hash: str = "h1",
    operation: str = "payments.process",
    resource_id: UUID | None = None,
    expires_at: datetime | None = None,
) -> IdempotencyKey:
    return IdempotencyKey(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        key=key,
        operation=operation,
        request_hash=request_hash,
        resource_id=resource_id,
        expires_at=expires_at,
        response={"ok": True},
        created_at=NOW,
    )


def audit_log(
    scope: Scope, *, action: str = "customer.created", entity_type: str = "customer"
) -> AuditLog:
    return AuditLog(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        entity_type=entity_type,
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


def provider_ref(
    scope: Scope, customer: Customer, *, provider: str, provider_customer_id: str
) -> CustomerProviderRef:
    return CustomerProviderRef(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        customer_id=customer.id,
        provider=provider,
        provider_customer_id=provider_customer_id,
        created_at=NOW,
    )


def invoice(
    scope: Scope,
    customer: Customer,
    *,
    subscription: Subscription | None = None,
    number: str | None = None,
    total: int = 2900,
) -> Invoice:
    return Invoice(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        customer_id=customer.id,
        subscription_id=None if subscription is None else subscription.id,
        number=number,
        status=InvoiceStatus.OPEN,
        currency="USD",
        subtotal=total,
        total=total,
        amount_due=total,
        created_at=NOW,
        updated_at=NOW,
    )


def invoice_line(scope: Scope, invoice: Invoice, *, description: str) -> InvoiceLine:
    return InvoiceLine(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        invoice_id=invoice.id,
        description=description,
        unit_amount=invoice.total,
        amount=invoice.total,
        currency=invoice.currency,
        created_at=NOW,
    )


def invoice_payment(scope: Scope, invoice: Invoice, payment: Payment) -> InvoicePayment:
    return InvoicePayment(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        invoice_id=invoice.id,
        payment_id=payment.id,
        amount_applied=invoice.total,
        currency=invoice.currency,
        applied_at=NOW,
        created_at=NOW,
    )


def job_execution(
    scope: Scope,
    *,
    job_name: str,
    status: JobStatus = JobStatus.SUCCEEDED,
    finished_at: datetime | None = None,
    items_processed: int = 0,
) -> JobExecution:
    return JobExecution(
        id=new_id(),
        livemode=scope.livemode,
        tenant_id=scope.tenant_id,
        job_name=job_name,
        status=status,
        started_at=NOW,
        finished_at=finished_at,
        items_processed=items_processed,
        created_at=NOW,
        updated_at=NOW,
    )
