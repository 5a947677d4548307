"""The story ``qzpay demo`` tells: a plan, a customer, a one-off payment retried with its
idempotency key and partly refunded, a promo code, a trial and its end, then the rest of a
subscription's life: renewals with their invoices, a declining card and dunning, recovery
with a new card, a change to the yearly price with proration, a cancel at the period end.

``qzpay demo`` runs it on a real SQLite file with the fake provider and a frozen clock
starting on 2028-01-31 09:00 UTC, so it reads the same on every machine and every run (a
month-end start shows the period clamp). Time travel works as with Stripe's test clocks:
the clock jumps past the trial and ``billing.jobs.run_due()`` does what would have come due.
The story itself names no adapter (docs/decisions/0007): the CLI wires them.

Each thing that happens is a ``Step``: a line for people and the same facts as data, which
``qzpay demo --json`` prints as one JSON object per line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from uuid import UUID

import attrs

from qzpay.billing import Billing
from qzpay.contracts.storage import Scope
from qzpay.domain.catalog import Price
from qzpay.domain.payments import Payment
from qzpay.domain.records import AuditLog
from qzpay.domain.subscriptions import Subscription
from qzpay.money import format_amount

START = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)
TRIAL_DAYS = 14


@attrs.frozen(kw_only=True)
class Step:
    """One thing the demo did: a name for machines, a line for people, the facts as data."""

    name: str
    text: str
    data: Mapping[str, object] = attrs.field(factory=dict)

    def as_json(self) -> str:
        """One JSON object, ``{"step": name, ...data}``; ids and datetimes as strings."""
        return json.dumps({"step": self.name, **{k: _plain(v) for k, v in self.data.items()}})


Emit = Callable[[Step], None]
Travel = Callable[[timedelta], datetime]


async def run(billing: Billing, *, travel: Travel, emit: Emit) -> None:
    """Tell the story with ``billing``, handing each step to ``emit`` as it happens.

    ``billing`` is open and empty, with a clock at ``START`` that ``travel`` moves forward
    (``FrozenClock.advance``); ``qzpay demo`` wires it to a SQLite file and the fake provider.
    """
    emit(
        Step(
            name="clock",
            text=f"The clock is frozen at {_moment(billing.clock.now())}",
            data={"now": billing.clock.now()},
        )
    )
    plan = await billing.plans.create(name="Pro", entitlements=["reports"], limits={"seats": 5})
    emit(
        Step(
            name="plan_created",
            text=f"Created plan {plan.name} with entitlement reports and 5 seats "
            f"(plan id {plan.id})",
            data={
                "id": plan.id,
                "name": plan.name,
                "entitlements": plan.entitlements,
                "limits": plan.limits,
            },
        )
    )
    monthly = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    emit(_price_created(monthly))
    yearly = await billing.prices.create(
        plan_id=plan.id, unit_amount=29000, currency="USD", interval="year"
    )
    emit(_price_created(yearly))

    customer = await billing.customers.create(email="ann@example.com", name="Ann")
    emit(
        Step(
            name="customer_created",
            text=f"Created customer {customer.name} <{customer.email}> (customer id {customer.id})",
            data={"id": customer.id, "name": customer.name, "email": customer.email},
        )
    )
    card = await billing.payment_methods.attach(customer.id, token="pm_card_visa", set_default=True)
    emit(
        Step(
            name="payment_method_attached",
            text=f"Attached {card.brand} ending {card.last4} as the default payment method "
            f"(payment method id {card.id})",
            data={
                "id": card.id,
                "brand": card.brand,
                "last4": card.last4,
                "is_default": card.is_default,
            },
        )
    )

    await _one_off_payment_and_refund(billing, customer.id, emit)
    await _promo_code_subscription(billing, yearly, emit)

    subscription = await billing.subscriptions.create(
        customer_id=customer.id, price_id=monthly.id, trial_days=TRIAL_DAYS
    )
    emit(
        _subscription_step(
            "subscription_created",
            f"Subscribed {customer.name} to {plan.name} monthly with a {TRIAL_DAYS}-day trial",
            subscription,
        )
    )

    now = travel(timedelta(days=TRIAL_DAYS + 1))
    emit(
        Step(
            name="clock_advanced",
            text=f"Travelled {TRIAL_DAYS + 1} days to {_moment(now)}, past the trial's end",
            data={"now": now},
        )
    )
    report = await billing.jobs.run_due()
    emit(
        Step(
            name="jobs_ran",
            text=f"Ran the due jobs: trials ended {report.trials_ended}, "
            f"charged {report.charged}, failed {report.failed}",
            data={
                "trials_ended": report.trials_ended,
                "charged": report.charged,
                "failed": report.failed,
            },
        )
    )

    subscription = await billing.subscriptions.get(subscription.id)
    emit(_subscription_step("subscription_read", "Read the subscription back", subscription))
    payments, audit_rows = await _payments_and_audit_rows(billing, subscription.id)
    for payment in payments:
        emit(
            Step(
                name="payment",
                text=f"Payment of {format_amount(payment.amount, payment.currency)} "
                f"{payment.status} on {payment.created_at.date().isoformat()} "
                f"(payment id {payment.id})",
                data={
                    "id": payment.id,
                    "amount": payment.amount,
                    "currency": payment.currency,
                    "status": payment.status,
                    "created_at": payment.created_at,
                },
            )
        )
    if not payments:
        emit(Step(name="payment", text="No payment was made", data={"id": None}))
    await _the_rest_of_its_life(billing, subscription, yearly, travel=travel, emit=emit)
    scope = Scope(livemode=billing.livemode, tenant_id=billing.tenant_id)
    async with billing.storage.transaction(scope, readonly=True) as tx:
        audit_rows = await tx.count(AuditLog)
    emit(
        Step(
            name="audit",
            text=f"The audit log holds {audit_rows} rows, each written with its change",
            data={"rows": audit_rows},
        )
    )


async def _the_rest_of_its_life(
    billing: Billing, subscription: Subscription, yearly: Price, *, travel: Travel, emit: Emit
) -> None:
    """The first renewal, a card that starts declining, dunning retries, recovery with a
    new card, a change to the yearly price with proration, a cancel at the period's end and
    the period ending: each step with the invoice it made."""
    customer_id = subscription.customer_id
    sub_id = subscription.id

    async def run_to(moment: datetime, name: str, what: str) -> Subscription:
        now = travel(moment - billing.clock.now())
        report = await billing.jobs.run_due()
        current = await billing.subscriptions.get(sub_id)
        emit(
            Step(
                name=name,
                text=f"{what}: travelled to {_moment(now)}, ran the due jobs "
                f"(charged {report.charged}, failed {report.failed}): {current.status}",
                data={
                    "now": now,
                    "status": current.status,
                    "charged": report.charged,
                    "failed": report.failed,
                    "dunning_attempts": current.dunning_attempts,
                },
            )
        )
        return current

    async def show_invoice(name: str) -> None:
        page = await billing.invoices.list(subscription_id=sub_id, limit=1)
        if not page.items:
            return
        invoice = page.items[0]
        lines = (await billing.invoices.lines(invoice.id)).items
        listed = "; ".join(
            f"{line.description}: {format_amount(line.amount, line.currency)}" for line in lines
        )
        emit(
            Step(
                name=name,
                text=f"  invoice {invoice.number or '(draft)'} {invoice.status}, total "
                f"{format_amount(invoice.total, invoice.currency)}, paid "
                f"{format_amount(invoice.amount_paid, invoice.currency)}: {listed}",
                data={
                    "number": invoice.number,
                    "status": invoice.status,
                    "total": invoice.total,
                    "amount_paid": invoice.amount_paid,
                    "lines": [line.amount for line in lines],
                },
            )
        )

    current = await run_to(
        subscription.current_period_end, "renewed", "The period ended and renewed"
    )
    await show_invoice("renewal_invoice")

    for method in (await billing.payment_methods.list(customer_id)).items:
        await billing.payment_methods.detach(method.id)
    await billing.payment_methods.attach(
        customer_id, token="pm_card_chargeDeclined", set_default=True
    )
    emit(
        Step(
            name="card_declining",
            text="Ann's card was replaced by one that declines",
            data={"token": "pm_card_chargeDeclined"},
        )
    )
    current = await run_to(current.current_period_end, "renewal_failed", "The next renewal")
    await show_invoice("unpaid_invoice")
    assert current.past_due_at is not None
    current = await run_to(
        current.past_due_at + timedelta(days=1), "dunning_retry", "The first dunning retry"
    )

    await billing.payment_methods.attach(customer_id, token="pm_card_visa", set_default=True)
    emit(
        Step(
            name="new_card",
            text="Ann added a new card as her default",
            data={"token": "pm_card_visa"},
        )
    )
    assert current.past_due_at is not None
    current = await run_to(
        current.past_due_at + timedelta(days=3), "recovered", "The second dunning retry"
    )
    await show_invoice("paid_invoice")

    travel(timedelta(days=10))
    current = await billing.subscriptions.change_price(sub_id, price_id=yearly.id)
    emit(
        _subscription_step(
            "price_changed",
            "Changed to the yearly price, prorated: the unused month is credited",
            current,
        )
    )
    await show_invoice("change_invoice")

    current = await billing.subscriptions.cancel(sub_id, at_period_end=True)
    emit(
        _subscription_step("cancel_scheduled", "Asked to cancel at the end of the period", current)
    )
    current = await run_to(current.current_period_end, "ended", "The period ended")


async def _one_off_payment_and_refund(billing: Billing, customer_id: UUID, emit: Emit) -> None:
    """A setup fee charged with an idempotency key, the same call retried (answered from
    the stored result: the provider is not asked again), and part of it refunded."""
    fee = await billing.payments.process(
        customer_id=customer_id,
        amount=4900,
        currency="USD",
        description="Setup fee",
        idempotency_key="demo-setup-fee",
    )
    emit(
        Step(
            name="one_off_payment",
            text=f"Charged a one-off setup fee of {format_amount(fee.amount, fee.currency)}: "
            f"{fee.status} (payment id {fee.id})",
            data={"id": fee.id, "amount": fee.amount, "status": fee.status},
        )
    )
    again = await billing.payments.process(
        customer_id=customer_id,
        amount=4900,
        currency="USD",
        description="Setup fee",
        idempotency_key="demo-setup-fee",
    )
    emit(
        Step(
            name="payment_retried",
            text="Retried the same call with idempotency key demo-setup-fee: answered from "
            f"the stored result, {'the same' if again == fee else 'another'} payment "
            f"(payment id {again.id}), no second charge",
            data={"id": again.id, "same_payment": again == fee},
        )
    )
    refund = await billing.payments.refund(fee.id, amount=1000, reason="requested_by_customer")
    fee = await billing.payments.get(fee.id)
    emit(
        Step(
            name="refund",
            text=f"Refunded {format_amount(refund.amount, refund.currency)} of it: refund "
            f"{refund.status}, payment {fee.status} (refund id {refund.id})",
            data={
                "id": refund.id,
                "amount": refund.amount,
                "status": refund.status,
                "payment_status": fee.status,
                "refunded_amount": fee.refunded_amount,
            },
        )
    )


async def _promo_code_subscription(billing: Billing, yearly: Price, emit: Emit) -> None:
    """A 20%-off code, and a second customer subscribing yearly with it: charged at once,
    the discount off the first charge."""
    code = await billing.promo_codes.create(
        code="SAVE20", percent_off=Decimal("20"), duration="once", max_redemptions=100
    )
    emit(
        Step(
            name="promo_code_created",
            text=f"Created promo code {code.code}: {code.percent_off}% off the first charge",
            data={"id": code.id, "code": code.code, "percent_off": str(code.percent_off)},
        )
    )
    bob = await billing.customers.create(email="bob@example.com", name="Bob")
    await billing.payment_methods.attach(bob.id, token="pm_card_mastercard", set_default=True)
    subscription = await billing.subscriptions.create(
        customer_id=bob.id, price_id=yearly.id, promo_code="save20"
    )
    payments, _ = await _payments_and_audit_rows(billing, subscription.id)
    charged = sum(payment.amount for payment in payments)
    emit(
        Step(
            name="subscription_with_promo_code",
            text=f"Subscribed {bob.name} to the yearly price with {code.code}: "
            f"{subscription.status}, charged {format_amount(charged, yearly.currency)} "
            f"instead of {format_amount(yearly.unit_amount, yearly.currency)} "
            f"(subscription id {subscription.id})",
            data={
                "id": subscription.id,
                "status": subscription.status,
                "charged": charged,
                "promo_code": code.code,
            },
        )
    )


def _price_created(price: Price) -> Step:
    amount = format_amount(price.unit_amount, price.currency)
    return Step(
        name="price_created",
        text=f"Created price {amount} per {price.interval} (price id {price.id})",
        data={
            "id": price.id,
            "unit_amount": price.unit_amount,
            "currency": price.currency,
            "interval": price.interval,
        },
    )


def _subscription_step(name: str, what: str, subscription: Subscription) -> Step:
    start = subscription.current_period_start.date().isoformat()
    end = subscription.current_period_end.date().isoformat()
    return Step(
        name=name,
        text=f"{what}: {subscription.status}, period {start} to {end} "
        f"(subscription id {subscription.id})",
        data={
            "id": subscription.id,
            "status": subscription.status,
            "current_period_start": subscription.current_period_start,
            "current_period_end": subscription.current_period_end,
            "trial_end": subscription.trial_end,
        },
    )


async def _payments_and_audit_rows(
    billing: Billing, subscription_id: UUID
) -> tuple[list[Payment], int]:
    """Read the subscription's payments (oldest first) and count the audit rows."""
    scope = Scope(livemode=billing.livemode, tenant_id=billing.tenant_id)
    async with billing.storage.transaction(scope, readonly=True) as tx:
        page = await tx.list(Payment, filters={"subscription_id": subscription_id}, limit=100)
        audit_rows = await tx.count(AuditLog)
    return sorted(page.items, key=lambda payment: payment.id), audit_rows


def _moment(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _plain(value: object) -> object:
    """``value`` as JSON can hold it: ids, enums and datetimes become strings."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [_plain(v) for v in value]
    return value
