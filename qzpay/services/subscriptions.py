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

import attrs

from qzpay import money, periods
from qzpay import validation as check
from qzpay.contracts.storage import Page
from qzpay.domain import schedule
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.discounts import discount
from qzpay.domain.enums import PaymentStatus, SubscriptionStatus
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.promotions import PromoCode
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError, ValidationError
from qzpay.ids import new_id
from qzpay.services import charging, idempotency
from qzpay.services.catalog import trial_days as checked_trial_days
from qzpay.services.context import ServiceContext, UnitOfWork, missing, require
from qzpay.services.promo_codes import normalized_code, redeem_for_subscription

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
        promo_code: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Subscription:
        """Subscribe ``customer_id`` to ``price_id`` (see the module docstring for the first period).

        ``promo_code`` is redeemed in the same transaction as the subscription (so a call
        that fails counts nothing): a discount comes off the first charge, a trial code
        gives its days (or the call's ``trial_days``, whichever is longer). With an
        ``idempotency_key`` a retry returns the first call's subscription, and one whose
        first charge never got an answer finishes that same charge (its provider key
        unchanged): never a second subscription, never a second charge.
        """
        customer_key = check.identifier(customer_id, field="customer_id")
        price_key = check.identifier(price_id, field="price_id")
        trial = checked_trial_days(trial_days)
        count = check.integer(quantity, field="quantity", minimum=1, maximum=MAX_QUANTITY)
        method_key = (
            None
            if payment_method_id is None
            else check.identifier(payment_method_id, field="payment_method_id")
        )
        code = None if promo_code is None else normalized_code(promo_code, field="promo_code")
        sub_metadata = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context,
            "subscriptions.create",
            idempotency_key,
            customer_id=customer_key,
            price_id=price_key,
            trial_days=trial,
            quantity=count,
            payment_method_id=method_key,
            promo_code=code,
            metadata=sub_metadata,
        )
        provider = self._context.provider

        async with self._context.unit_of_work(readonly=True) as uow:
            if keyed is not None:
                early = await idempotency.peek(uow, keyed, Subscription)
                if early.replay is not None:
                    return early.replay
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
            promo = None if code is None else await uow.tx.find(PromoCode, code=code)
            if promo is not None and promo.trial_days:
                trial = max(trial or 0, promo.trial_days)
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
        expected = 0 if trial or promo is None else _expected_discount(promo, amount, price)
        charge_amount = amount - expected
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Subscription)
            if claim.replay is not None:
                return claim.replay
            if claim.in_progress and claim.resource_id is not None:
                resumed: UUID | None = claim.resource_id
            else:
                claim.raise_if_in_progress()
                resumed = None
                subscription = self._new(
                    uow,
                    subscription_id,
                    customer,
                    price,
                    count,
                    trial,
                    free=charge_amount == 0,
                    method_id=payable[0].id if payable is not None else method_key,
                    promo_code_id=None if promo is None else promo.id,
                    metadata=sub_metadata,
                )
                await uow.tx.insert(subscription)
                await uow.record(
                    "subscription.created",
                    subscription,
                    changes={"status": subscription.status.value, "price_id": str(price.id)},
                )
                if code is not None:
                    redemption = await redeem_for_subscription(
                        uow,
                        code=code,
                        customer=customer,
                        price=price,
                        amount=amount,
                        subscription_id=subscription_id,
                    )
                    if not trial and redemption.discount != expected:
                        raise ConflictError(
                            f"promo code {code!r} changed while it was redeemed: try again",
                            field="promo_code",
                            rule="concurrent_update",
                        )
                payment = None
                if subscription.status == SubscriptionStatus.INCOMPLETE and payable is not None:
                    payment = charging.pending_payment(
                        uow,
                        self._context,
                        customer_id=customer_key,
                        method=payable[0],
                        amount=charge_amount,
                        currency=price.currency,
                        subscription_id=subscription_id,
                        description=f"Subscription {subscription_id}, first period",
                    )
                    await charging.open_attempt(uow, payment)
                    await idempotency.bind(uow, keyed, subscription_id)
                else:
                    await idempotency.complete(uow, keyed, subscription)
        if resumed is not None:
            return await self._resume(resumed, keyed)
        if payment is None or payable is None:
            return subscription
        result = await charging.call_provider(self._context, payment, *payable)
        settled = await charging.settle_attempt(
            self._context,
            payment.id,
            result,
            then=_completing(keyed, subscription_id),
            known=payment,
            subscription=subscription,
        )
        # Still incomplete when the charge failed or is open; active when it succeeded.
        return settled.subscription or subscription

    def _new(
        self,
        uow: UnitOfWork,
        subscription_id: UUID,
        customer: Customer,
        price: Price,
        quantity: int,
        trial: int | None,
        *,
        free: bool,
        method_id: UUID | None,
        promo_code_id: UUID | None,
        metadata: dict[str, str],
    ) -> Subscription:
        """The new row: trialing, or its first period starting now (active when free,
        otherwise incomplete until its first payment succeeds, Stripe's default_incomplete)."""
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
            status = SubscriptionStatus.ACTIVE if free else SubscriptionStatus.INCOMPLETE
        subscription = Subscription(
            id=subscription_id,
            livemode=uow.scope.livemode,
            tenant_id=uow.scope.tenant_id,
            customer_id=customer.id,
            plan_id=price.plan_id,
            price_id=price.id,
            status=status,
            quantity=quantity,
            currency=price.currency,
            unit_amount=price.unit_amount,
            interval=price.interval,
            interval_count=price.interval_count,
            billing_anchor=anchor,
            current_period_start=period_start,
            current_period_end=period_end,
            trial_start=now if trial_end else None,
            trial_end=trial_end,
            default_payment_method_id=method_id,
            promo_code_id=promo_code_id,
            metadata=metadata,
            created_at=now,
            updated_at=now,
        )
        return attrs.evolve(
            subscription, due_at=schedule.next_due(subscription, self._context.settings)
        )

    async def _resume(self, subscription_id: UUID, keyed: idempotency.Keyed | None) -> Subscription:
        """A keyed retry of a create whose first charge never got an answer: finish that
        charge (``charging.resume``: the same key), then answer as the first call would."""
        async with self._context.unit_of_work(readonly=True) as uow:
            payment = await uow.tx.find(
                Payment, subscription_id=subscription_id, status=PaymentStatus.PENDING
            )
        if payment is not None:
            await charging.resume(
                self._context, payment.id, then=_completing(keyed, subscription_id)
            )
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


def _expected_discount(promo: PromoCode, amount: int, price: Price) -> int:
    """What the code should take off the first charge; a code that does not fit takes
    nothing here and is refused, with its reason, when it is redeemed."""
    try:
        return discount(promo, amount=amount, currency=price.currency)
    except ValidationError:
        return 0


def _completing(keyed: idempotency.Keyed | None, subscription_id: UUID) -> charging.AfterSettle:
    """Complete the create's idempotency key with the subscription as its charge left it."""

    async def complete(uow: UnitOfWork, settled: charging.Settled) -> None:
        if keyed is None or settled.payment.status == PaymentStatus.PENDING:
            return  # still in flight: the same call again finishes it
        current: Subscription = settled.subscription or await require(
            uow.tx, Subscription, subscription_id, field="subscription_id"
        )
        await idempotency.complete(uow, keyed, current)

    return complete
