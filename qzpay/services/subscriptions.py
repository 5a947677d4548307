"""Subscriptions: a customer's recurring purchase of a price.

Creating one (docs/decisions/0005-first-period.md):

- with a trial (``trial_days`` given, or the price's own), the subscription starts
  ``trialing``; its first period runs from now to the trial's end, which becomes the billing
  anchor for every later period;
- without a trial, the first period (anchored now, month ends clamped) is charged at once,
  intent first (``qzpay.services.charging``): the subscription is committed ``incomplete``
  with a ``pending`` payment before the provider is called, and becomes ``active`` when the
  charge succeeds. Declined, needing 3-D Secure, or no payment method yet: it stays
  ``incomplete`` with its payment (as Stripe's ``default_incomplete``); an unknown outcome
  leaves the payment pending for ``payments.reconcile``, which activates it once paid. A
  free price is ``active`` at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from qzpay import money, periods
from qzpay import validation as check
from qzpay.contracts.storage import Page
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.enums import PaymentStatus, SubscriptionStatus
from qzpay.domain.payments import PaymentMethod
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import InvalidStateError, ValidationError
from qzpay.ids import new_id
from qzpay.services import charging
from qzpay.services.catalog import trial_days as checked_trial_days
from qzpay.services.context import ServiceContext, missing

MAX_QUANTITY = 1_000_000


class SubscriptionsService:
    """``billing.subscriptions``: create, get and list subscriptions.

    >>> import anyio
    >>> from datetime import datetime, UTC
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.clock import FrozenClock
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> tuple[str, str]:
    ...     clock = FrozenClock(datetime(2028, 1, 31, 9, 0, tzinfo=UTC))
    ...     billing = create_billing(storage=MemoryStorage(), provider=FakeProvider(), clock=clock)
    ...     async with billing:
    ...         ann = await billing.customers.create(email="ann@example.com")
    ...         await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    ...         plan = await billing.plans.create(name="Pro")
    ...         price = await billing.prices.create(
    ...             plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    ...         )
    ...         sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    ...         return str(sub.status), sub.current_period_end.date().isoformat()
    >>> anyio.run(main)
    ('active', '2028-02-29')
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def create(
        self,
        *,
        customer_id: UUID | str,
        price_id: UUID | str,
        trial_days: int | None = None,
        quantity: int = 1,
        payment_method_id: UUID | str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Subscription:
        """Subscribe ``customer_id`` to ``price_id`` (see the module docstring for the first period)."""
        customer_key = check.identifier(customer_id, field="customer_id")
        price_key = check.identifier(price_id, field="price_id")
        trial = checked_trial_days(trial_days)
        count = check.integer(quantity, field="quantity", minimum=1, maximum=MAX_QUANTITY)
        method_key = (
            None
            if payment_method_id is None
            else check.identifier(payment_method_id, field="payment_method_id")
        )
        sub_metadata = check.metadata(metadata)
        provider = self._context.provider

        async with self._context.unit_of_work(readonly=True) as uow:
            keys: list[tuple[type[Any], UUID]] = [(Customer, customer_key), (Price, price_key)]
            if method_key is not None:
                keys.append((PaymentMethod, method_key))
            customer, price, *chosen = await uow.tx.get_many(*keys)  # one round trip
            if customer is None:
                raise missing(uow.tx, Customer, customer_key, field="customer_id")
            if price is None:
                raise missing(uow.tx, Price, price_key, field="price_id")
            if not price.active:
                raise InvalidStateError(
                    "is archived: new subscriptions need an active price",
                    field="price_id",
                    rule="active_price",
                )
            if method_key is not None:
                if chosen[0] is None:
                    raise missing(uow.tx, PaymentMethod, method_key, field="payment_method_id")
                if chosen[0].customer_id != customer_key:
                    raise ValidationError(
                        "belongs to another customer", field="payment_method_id", rule="owner"
                    )
            trial = price.trial_days if trial is None else trial
            # A trial charges nothing now: the card is looked up when the trial ends.
            payable = (
                None
                if trial
                else await charging.chargeable_method(
                    uow.tx, customer_key, method_key, provider.name
                )
            )

        subscription_id = new_id()
        amount = money.amount(price.unit_amount * count, field="quantity")
        async with self._context.unit_of_work() as uow:
            now = uow.now
            trial_end: datetime | None = None
            if trial:
                status = SubscriptionStatus.TRIALING
                trial_end = anchor = period_end = now + timedelta(days=trial)
                period_start = now
            else:
                anchor = now
                period_start, period_end = periods.period_bounds(
                    anchor, price.interval, price.interval_count, 0
                )
                # Incomplete until its first payment succeeds (Stripe's default_incomplete).
                status = SubscriptionStatus.ACTIVE if amount == 0 else SubscriptionStatus.INCOMPLETE
            subscription = Subscription(
                id=subscription_id,
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                customer_id=customer_key,
                plan_id=price.plan_id,
                price_id=price.id,
                status=status,
                quantity=count,
                currency=price.currency,
                unit_amount=price.unit_amount,
                interval=price.interval,
                interval_count=price.interval_count,
                billing_anchor=anchor,
                current_period_start=period_start,
                current_period_end=period_end,
                trial_start=now if trial_end else None,
                trial_end=trial_end,
                due_at=trial_end,
                default_payment_method_id=payable[0].id if payable is not None else method_key,
                metadata=sub_metadata,
                created_at=now,
                updated_at=now,
            )
            await uow.tx.insert(subscription)
            await uow.record(
                "subscription.created",
                subscription,
                changes={"status": status.value, "price_id": str(price.id)},
            )
            payment = None
            if status == SubscriptionStatus.INCOMPLETE and payable is not None:
                payment = charging.pending_payment(
                    uow,
                    self._context,
                    customer_id=customer_key,
                    method=payable[0],
                    amount=amount,
                    currency=price.currency,
                    subscription_id=subscription_id,
                    description=f"Subscription {subscription_id}, first period",
                )
                await charging.open_attempt(uow, payment)
        if payment is None or payable is None:
            return subscription
        result = await charging.call_provider(self._context, payment, *payable)
        settled = await charging.settle(self._context, payment.id, result)
        if settled.status != PaymentStatus.SUCCEEDED:
            return subscription  # still incomplete, with its failed or open payment
        current: Subscription = await self._context.read(
            Subscription, subscription_id, field="subscription_id"
        )
        return current

    async def get(self, subscription_id: UUID | str) -> Subscription:
        subscription: Subscription = await self._context.read(
            Subscription,
            check.identifier(subscription_id, field="subscription_id"),
            field="subscription_id",
        )
        return subscription

    async def list(
        self,
        *,
        customer_id: UUID | str | None = None,
        status: SubscriptionStatus | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Subscription]:
        filters: dict[str, object] = {}
        if customer_id is not None:
            filters["customer_id"] = check.identifier(customer_id, field="customer_id")
        if status is not None:
            try:
                filters["status"] = SubscriptionStatus(status)
            except ValueError:
                raise ValidationError(
                    "is not a subscription status", field="status", rule="status"
                ) from None
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(Subscription, filters=filters, limit=limit, cursor=cursor)
