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

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

import attrs

from qzpay import money, periods
from qzpay import validation as check
from qzpay.contracts.filters import one_of
from qzpay.contracts.storage import Page
from qzpay.domain import schedule
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.discounts import discount
from qzpay.domain.enums import (
    Interval,
    InvoiceStatus,
    PaymentStatus,
    ProrationBehavior,
    SubscriptionStatus,
)
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.promotions import PromoCode
from qzpay.domain.proration import Proration, prorate
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError, ValidationError
from qzpay.ids import new_id
from qzpay.services import charging, idempotency, invoicing, provider_subscriptions
from qzpay.services.catalog import trial_days as checked_trial_days
from qzpay.services.context import ServiceContext, UnitOfWork, every, missing, require
from qzpay.services.promo_codes import normalized_code, redeem_for_subscription
from qzpay.timestamps import aware_utc
from qzpay.transitions import transition

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
        managed_by: str = "qzpay",
    ) -> Subscription:
        """Subscribe ``customer_id`` to ``price_id`` (see the module docstring for the first period).

        ``managed_by="provider"`` makes it a provider-managed subscription
        (``qzpay.services.provider_subscriptions``): the price must exist at the provider
        (``provider_price_id``), the provider bills and renews it, and qzpay mirrors its
        state from webhooks. It starts as the provider answers (``trialing``, ``active``,
        or ``incomplete`` until the customer authorizes it); promo codes are the
        provider's own then, so ``promo_code`` is refused.

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
        managed = _managed_by(managed_by)
        if managed and code is not None:
            raise ValidationError(
                "cannot be used with managed_by='provider': the provider applies its own "
                "coupons to the subscriptions it bills",
                field="promo_code",
                rule="managed_by_provider",
            )
        if managed:
            self._context.require_capability("subscriptions")
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
            **({"managed_by": "provider"} if managed else {}),
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
            if managed:
                provider_subscriptions.provider_price_id(self._context, price)
            trial = price.trial_days if trial is None else trial
            promo = None if code is None else await uow.tx.find(PromoCode, code=code)
            if promo is not None and promo.trial_days:
                trial = max(trial or 0, promo.trial_days)
            # A trial charges nothing now: the card is looked up when the trial ends.
            payable = (
                None
                if trial and not managed
                else await charging.chargeable_method(
                    uow.tx, customer_key, method_key, provider.name
                )
            )
        if managed:
            return await self._create_managed(
                keyed, customer, price, count, trial, payable, sub_metadata
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

    async def _create_managed(
        self,
        keyed: idempotency.Keyed | None,
        customer: Customer,
        price: Price,
        quantity: int,
        trial: int | None,
        payable: tuple[PaymentMethod, str] | None,
        metadata: dict[str, str],
    ) -> Subscription:
        """Commit the row ``incomplete`` (its periods and trial as qzpay computes them, for
        the provider to be told), then ask the provider (``provider_subscriptions.start``).
        A keyed retry of a create whose answer was lost looks the provider's subscription up
        by its key, and asks again with the same key only when none is found."""
        resent = False
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Subscription)
            if claim.replay is not None:
                return claim.replay
            if claim.in_progress and claim.resource_id is not None:
                subscription: Subscription = await require(
                    uow.tx, Subscription, claim.resource_id, field="subscription_id"
                )
                resent = True
            else:
                claim.raise_if_in_progress()
                computed = self._new(
                    uow,
                    new_id(),
                    customer,
                    price,
                    quantity,
                    trial,
                    free=False,
                    method_id=None if payable is None else payable[0].id,
                    promo_code_id=None,
                    metadata=metadata,
                )
                subscription = schedule.scheduled(
                    attrs.evolve(
                        computed,
                        status=SubscriptionStatus.INCOMPLETE,
                        provider=self._context.provider.name,
                    ),
                    self._context.settings,
                )
                await uow.tx.insert(subscription)
                await uow.record(
                    "subscription.created",
                    subscription,
                    changes={
                        "status": subscription.status.value,
                        "price_id": str(price.id),
                        "provider": subscription.provider,
                    },
                )
                await idempotency.bind(uow, keyed, subscription.id)
        if subscription.provider_id is not None or subscription.status != (
            SubscriptionStatus.INCOMPLETE
        ):
            # A webhook mirrored the provider's answer before the first call could.
            return await provider_subscriptions.mirror(
                self._context, subscription.id, None, keyed=keyed
            )
        return await provider_subscriptions.start(
            self._context, subscription, customer, price, keyed, resent=resent
        )

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
        return schedule.scheduled(subscription, self._context.settings)

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
        plan_id: UUID | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Subscription]:
        """Subscriptions newest first, filtered by customer, status and plan."""
        filters = check.id_filters(customer_id=customer_id, plan_id=plan_id)
        if status is not None:
            filters["status"] = check.member(
                status, SubscriptionStatus, field="status", what="a subscription status"
            )
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(Subscription, filters=filters, limit=limit, cursor=cursor)

    # -- the lifecycle (DESIGN §3.1, §7): every status change through qzpay.transitions ----

    async def cancel(
        self,
        subscription_id: UUID | str,
        *,
        at_period_end: bool = False,
        idempotency_key: str | None = None,
    ) -> Subscription:
        """End the subscription now, or (``at_period_end=True``) when its period runs out.

        Now: ``canceled`` with ``canceled_at`` and ``ended_at``, nothing due any more (no
        renewal, no retry). At period end: it keeps its status and is billed no more;
        ``cancel_at_period_end`` is set and ``canceled_at`` records the request, as
        Stripe's, and the job runner ends it at ``current_period_end`` (``uncancel`` undoes
        it until then). Scheduling an already scheduled cancel changes nothing. A canceled
        subscription cannot be canceled again (``InvalidStateError``). A provider-managed
        one is canceled at the provider, and mirrored from its answer.
        """
        entity_id = check.identifier(subscription_id, field="subscription_id")
        later = check.boolean(at_period_end, field="at_period_end")
        keyed = idempotency.keyed(
            self._context,
            "subscriptions.cancel",
            idempotency_key,
            subscription_id=entity_id,
            at_period_end=later,
        )
        try:
            return await self._lifecycle(
                entity_id, keyed, _schedule_cancel if later else cancel_now
            )
        except provider_subscriptions.ManagedByProvider as managed:
            return await provider_subscriptions.cancel(
                self._context, managed.subscription, at_period_end=later, keyed=keyed
            )

    async def sync(self, subscription_id: UUID | str) -> Subscription:
        """Mirror a provider-managed subscription from what the provider says now (what
        each of its webhooks does); one whose creation never got an answer is asked for
        again with the same key, so it is made once. A subscription qzpay bills itself has
        nothing to sync (``InvalidStateError``, rule ``provider_managed``)."""
        entity_id = check.identifier(subscription_id, field="subscription_id")
        return await provider_subscriptions.sync(self._context, entity_id)

    async def uncancel(
        self, subscription_id: UUID | str, *, idempotency_key: str | None = None
    ) -> Subscription:
        """Undo ``cancel(at_period_end=True)`` before the period ends: it renews again.

        A subscription with no cancel scheduled (or already canceled) has nothing to undo:
        ``InvalidStateError`` (rule ``cancel_scheduled``).
        """
        entity_id = check.identifier(subscription_id, field="subscription_id")
        keyed = idempotency.keyed(
            self._context, "subscriptions.uncancel", idempotency_key, subscription_id=entity_id
        )
        return await self._lifecycle(entity_id, keyed, _uncancel)

    async def pause(
        self,
        subscription_id: UUID | str,
        *,
        resumes_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Subscription:
        """Pause: no renewals and no charges until ``resume`` (or ``resumes_at``, when the
        job runner resumes it). ``resumes_at`` must be an aware datetime in the future.

        The paid period's time from now to its end is credited at the amount paid for it,
        as a pending line on the upcoming draft that the resume invoice takes up (so a
        price change during the pause cannot change what the unused time is worth)."""
        entity_id = check.identifier(subscription_id, field="subscription_id")
        resumes = None if resumes_at is None else aware_utc(resumes_at, field="resumes_at")
        keyed = idempotency.keyed(
            self._context,
            "subscriptions.pause",
            idempotency_key,
            subscription_id=entity_id,
            resumes_at=resumes,
        )

        async def step(
            uow: UnitOfWork, context: ServiceContext, current: Subscription
        ) -> Subscription:
            if resumes is not None and resumes <= uow.now:
                raise ValidationError(
                    "must be in the future", field="resumes_at", rule="in_the_future"
                )
            paused = await _write(
                uow,
                context,
                current,
                "subscription.paused",
                status=transition(current.status, SubscriptionStatus.PAUSED),
                paused_at=uow.now,
                resumes_at=resumes,
            )
            credit = _unused_paid_time(current, uow.now)
            if credit:
                await invoicing.add_lines(uow, await invoicing.upcoming_draft(uow, paused), credit)
            return paused

        return await self._lifecycle(entity_id, keyed, step)

    async def resume(
        self, subscription_id: UUID | str, *, idempotency_key: str | None = None
    ) -> Subscription:
        """Make a paused subscription ``active`` again, a new period starting now (the
        billing anchor moves to now, as Stripe's ``billing_cycle_anchor=now``), invoiced and
        charged at once less the credit the pause wrote for the paid period's unused time."""
        entity_id = check.identifier(subscription_id, field="subscription_id")
        keyed = idempotency.keyed(
            self._context, "subscriptions.resume", idempotency_key, subscription_id=entity_id
        )
        invoiced: list[Invoice] = []

        async def step(
            uow: UnitOfWork, context: ServiceContext, current: Subscription
        ) -> Subscription:
            resumed, invoice = await resume_now(uow, context, current)
            invoiced[:] = [invoice]
            return resumed

        result = await self._lifecycle(entity_id, keyed, step)
        if invoiced:
            await _charge_now(self._context, invoiced[0])
        return result

    async def change_price(
        self,
        subscription_id: UUID | str,
        *,
        price_id: UUID | str,
        proration: ProrationBehavior | str = ProrationBehavior.CREATE_PRORATIONS,
        quantity: int | None = None,
        idempotency_key: str | None = None,
    ) -> Subscription:
        """Move the subscription to ``price_id`` (and ``quantity``), from now on.

        The new price must be active, in the subscription's currency, and of the same
        interval family (day/week, or month/year). With the same interval, what the
        change is worth for the rest of the period is prorated to the second
        (``qzpay.domain.proration``): ``create_prorations`` puts the credit and the charge
        on the subscription's next invoice, ``always_invoice`` invoices and charges them
        now, ``none`` bills the new price from the next period on. A change of interval
        (month to year) starts a new period now, invoiced and charged at once (Stripe's
        rule), less the credit for the unused time unless ``proration="none"``. A
        trialing, paused or unpaid subscription changes price without proration (no
        period is being paid for).

        >>> import anyio
        >>> from datetime import datetime, UTC
        >>> from qzpay import create_billing
        >>> from qzpay.adapters.clock import FrozenClock
        >>> from qzpay.adapters.memory import MemoryStorage
        >>> from qzpay.adapters.fake import FakeProvider
        >>> async def main() -> list[int]:
        ...     clock = FrozenClock(datetime(2028, 4, 1, tzinfo=UTC))
        ...     fake = FakeProvider()
        ...     billing = create_billing(storage=MemoryStorage(), provider=fake, clock=clock)
        ...     async with billing:
        ...         ann = await billing.customers.create(email="ann@example.com")
        ...         await billing.payment_methods.attach(ann.id, token="pm_card_visa")
        ...         plan = await billing.plans.create(name="Pro")
        ...         ten, twenty = [await billing.prices.create(plan_id=plan.id, unit_amount=amount,
        ...             currency="USD", interval="month") for amount in (1000, 2000)]
        ...         sub = await billing.subscriptions.create(customer_id=ann.id, price_id=ten.id)
        ...         clock.set(datetime(2028, 4, 16, tzinfo=UTC))  # halfway through April
        ...         await billing.subscriptions.change_price(
        ...             sub.id, price_id=twenty.id, proration="always_invoice")
        ...         return [charge.request.amount for charge in fake.charges]
        >>> anyio.run(main)  # the first month, then -500 + 1000 for the rest of it
        [1000, 500]
        """
        entity_id = check.identifier(subscription_id, field="subscription_id")
        price_key = check.identifier(price_id, field="price_id")
        behavior = _proration(proration)
        count = (
            None
            if quantity is None
            else check.integer(quantity, field="quantity", minimum=1, maximum=MAX_QUANTITY)
        )
        keyed = idempotency.keyed(
            self._context,
            "subscriptions.change_price",
            idempotency_key,
            subscription_id=entity_id,
            price_id=price_key,
            proration=behavior,
            quantity=count,
        )
        return await self._change(entity_id, keyed, behavior, price_key, count)

    async def update_quantity(
        self,
        subscription_id: UUID | str,
        quantity: int,
        *,
        proration: ProrationBehavior | str = ProrationBehavior.CREATE_PRORATIONS,
        idempotency_key: str | None = None,
    ) -> Subscription:
        """Change the quantity (seats) on the same price, prorated as ``change_price``."""
        entity_id = check.identifier(subscription_id, field="subscription_id")
        count = check.integer(quantity, field="quantity", minimum=1, maximum=MAX_QUANTITY)
        behavior = _proration(proration)
        keyed = idempotency.keyed(
            self._context,
            "subscriptions.update_quantity",
            idempotency_key,
            subscription_id=entity_id,
            quantity=count,
            proration=behavior,
        )
        return await self._change(entity_id, keyed, behavior, None, count)

    async def _lifecycle(
        self, entity_id: UUID, keyed: idempotency.Keyed | None, step: _Step
    ) -> Subscription:
        """One lifecycle call in one transaction: the key claimed, the step, the key
        completed. A step that refuses (an illegal move) rolls everything back."""
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Subscription)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            current: Subscription = await require(
                uow.tx, Subscription, entity_id, field="subscription_id"
            )
            provider_subscriptions.refuse_if_managed(current)
            result = await step(uow, self._context, current)
            await idempotency.complete(uow, keyed, result)
        return result

    async def _change(
        self,
        entity_id: UUID,
        keyed: idempotency.Keyed | None,
        behavior: ProrationBehavior,
        price_key: UUID | None,
        quantity: int | None,
    ) -> Subscription:
        """``change_price`` and ``update_quantity``: the change and its proration lines in
        one transaction; an invoice to charge now is charged after it commits."""
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Subscription)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            current: Subscription = await require(
                uow.tx, Subscription, entity_id, field="subscription_id"
            )
            provider_subscriptions.refuse_if_managed(current)
            price: Price = await require(
                uow.tx, Price, price_key or current.price_id, field="price_id"
            )
            result, charge = await _change_price(
                uow, self._context, current, price, quantity or current.quantity, behavior
            )
            await idempotency.complete(uow, keyed, result)
        if charge is not None:
            await _charge_now(self._context, charge)
        return result


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


# -- the lifecycle's steps: each runs in the caller's unit of work ---------------------------

_Step = Callable[[UnitOfWork, ServiceContext, Subscription], Awaitable[Subscription]]

LIVE: Final = frozenset(
    {
        SubscriptionStatus.TRIALING,
        SubscriptionStatus.ACTIVE,
        SubscriptionStatus.PAST_DUE,
        SubscriptionStatus.PAUSED,
        SubscriptionStatus.INCOMPLETE,
        SubscriptionStatus.UNPAID,
    }
)
"""Statuses of a subscription that has not ended: a customer's deletion cancels these."""
_PRORATED: Final = frozenset({SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE})
"""Statuses whose current period is being billed, so a change in it is prorated."""
_NO_CHANGE: Final = frozenset(
    {
        SubscriptionStatus.INCOMPLETE,
        SubscriptionStatus.INCOMPLETE_EXPIRED,
        SubscriptionStatus.CANCELED,
    }
)
"""Statuses whose price cannot change: ended, or not yet paid for the first time."""
_FAMILY: Final = {
    Interval.DAY: "day/week",
    Interval.WEEK: "day/week",
    Interval.MONTH: "month/year",
    Interval.YEAR: "month/year",
}
"""Intervals a price change may move between: exact days, or calendar months."""


async def cancel_now(
    uow: UnitOfWork, context: ServiceContext, current: Subscription
) -> Subscription:
    """``current`` canceled at ``uow.now`` (by ``cancel``, a customer's deletion): nothing
    due on it any more, and its draft of pending lines is deleted
    (``invoicing.drop_upcoming``)."""
    canceled = await _write(
        uow,
        context,
        current,
        "subscription.canceled",
        status=transition(current.status, SubscriptionStatus.CANCELED),
        canceled_at=uow.now,
        ended_at=uow.now,
        resumes_at=None,
    )
    await invoicing.drop_upcoming(uow, canceled)
    return canceled


async def _schedule_cancel(
    uow: UnitOfWork, context: ServiceContext, current: Subscription
) -> Subscription:
    transition(current.status, SubscriptionStatus.CANCELED)  # it must be able to end at all
    if current.status in (SubscriptionStatus.INCOMPLETE, SubscriptionStatus.PAUSED):
        raise InvalidStateError(
            f"a {current.status.value} subscription has no paid period to run out: "
            "cancel it now instead",
            field="at_period_end",
            rule="period_to_run_out",
        )
    if current.cancel_at_period_end:
        return current  # already scheduled: nothing changes
    return await _write(
        uow,
        context,
        current,
        "subscription.cancel_scheduled",
        cancel_at_period_end=True,
        canceled_at=uow.now,
    )


async def _uncancel(
    uow: UnitOfWork, context: ServiceContext, current: Subscription
) -> Subscription:
    if current.status == SubscriptionStatus.CANCELED or not current.cancel_at_period_end:
        ended = current.status in (
            SubscriptionStatus.CANCELED,
            SubscriptionStatus.INCOMPLETE_EXPIRED,
        )
        raise InvalidStateError(
            f"a {current.status.value} subscription cannot be uncanceled"
            if ended
            else "has no cancel scheduled (cancel(at_period_end=True)) to undo",
            field="subscription_id",
            rule="cancel_scheduled",
        )
    return await _write(
        uow,
        context,
        current,
        "subscription.uncanceled",
        cancel_at_period_end=False,
        canceled_at=None,
    )


async def resume_now(
    uow: UnitOfWork, context: ServiceContext, current: Subscription
) -> tuple[Subscription, Invoice]:
    """``current`` (paused) active again, its new period starting at ``uow.now`` and
    invoiced (finalized) for the caller to charge once this commits, as a renewal's: by
    ``resume``, and by the job runner at ``resumes_at``.

    Renewals bill in advance, so the period a resume starts is billed now (Stripe's
    ``billing_cycle_anchor=now``): pending lines go with it, among them the credit ``pause``
    wrote for the paid period's unused time (``_unused_paid_time``), so no time is billed
    twice.
    """
    if current.status != SubscriptionStatus.PAUSED:
        raise InvalidStateError(
            f"a {current.status.value} subscription is not paused: nothing to resume",
            field="status",
            rule="paused",
        )
    status = transition(current.status, SubscriptionStatus.ACTIVE)
    start, end = periods.period_bounds(uow.now, current.interval, current.interval_count, 0)
    resumed = await _write(
        uow,
        context,
        current,
        "subscription.resumed",
        status=status,
        billing_anchor=uow.now,
        current_period_start=start,
        current_period_end=end,
        paused_at=None,
        resumes_at=None,
    )
    line = _period_line(resumed.unit_amount, resumed.currency, resumed.quantity, start, end)
    invoice = await _invoice_now(
        uow, context, resumed, [attrs.evolve(line, price_id=resumed.price_id)], start, end
    )
    return resumed, invoice


async def cancel_customer_subscriptions(
    uow: UnitOfWork, context: ServiceContext, customer_id: UUID
) -> list[Subscription]:
    """Cancel every live subscription of ``customer_id`` at once, in ``uow`` (a customer's
    deletion: Stripe's rule, so a deleted customer is never billed again)."""
    live = await every(uow.tx, Subscription, {"customer_id": customer_id, "status": one_of(LIVE)})
    managed = [subscription for subscription in live if subscription.provider is not None]
    if managed:
        # Canceling here would leave the provider billing a customer qzpay deleted.
        raise InvalidStateError(
            f"has {len(managed)} live provider-managed subscription(s) "
            f"({', '.join(str(s.id) for s in managed)}): cancel them first "
            "(subscriptions.cancel asks the provider), then delete the customer",
            field="customer_id",
            rule="provider_subscriptions_live",
        )
    return [await cancel_now(uow, context, subscription) for subscription in live]


async def _change_price(
    uow: UnitOfWork,
    context: ServiceContext,
    current: Subscription,
    price: Price,
    quantity: int,
    behavior: ProrationBehavior,
) -> tuple[Subscription, Invoice | None]:
    """The subscription on ``price`` x ``quantity``, its proration lines written, and the
    invoice to charge after the commit (``always_invoice``, or a new interval)."""
    if current.status in _NO_CHANGE:
        raise InvalidStateError(
            f"a {current.status.value} subscription cannot change its price or quantity",
            field="status",
            rule="changeable",
        )
    switching = price.id != current.price_id
    if switching and not price.active:
        raise InvalidStateError(
            "is archived: a subscription can only move to an active price",
            field="price_id",
            rule="active_price",
        )
    if price.currency != current.currency:
        raise ValidationError(
            f"is in {price.currency} and the subscription bills in {current.currency}: "
            "a price change keeps the currency",
            field="price_id",
            rule="same_currency",
        )
    if _FAMILY[price.interval] != _FAMILY[current.interval]:
        raise ValidationError(
            f"bills every {price.interval.value} and the subscription every "
            f"{current.interval.value}: a price change stays within {_FAMILY[current.interval]}",
            field="price_id",
            rule="interval_family",
        )
    if not switching and quantity == current.quantity:
        return current, None  # nothing changes: nothing to prorate, nothing written
    now = uow.now
    changes: dict[str, Any] = {
        "price_id": price.id,
        "plan_id": price.plan_id,
        "unit_amount": price.unit_amount,
        "interval": price.interval,
        "interval_count": price.interval_count,
        "quantity": quantity,
    }
    lines: list[invoicing.LineDraft] = []
    invoice_now = behavior == ProrationBehavior.ALWAYS_INVOICE
    if current.status in _PRORATED:
        old_amount = current.unit_amount * current.quantity
        new_amount = money.amount(price.unit_amount * quantity, field="quantity")
        same_schedule = (
            price.interval == current.interval and price.interval_count == current.interval_count
        )
        if same_schedule:
            if behavior != ProrationBehavior.NONE:
                change = prorate(
                    old_amount=old_amount,
                    new_amount=new_amount,
                    period_start=current.current_period_start,
                    period_end=current.current_period_end,
                    at=now,
                )
                lines = _proration_lines(current, price, quantity, change, now)
        else:
            # A new interval starts a new period now, billed at once (Stripe's rule).
            start, end = periods.period_bounds(now, price.interval, price.interval_count, 0)
            changes.update(billing_anchor=now, current_period_start=start, current_period_end=end)
            if behavior != ProrationBehavior.NONE:
                unused = prorate(
                    old_amount=old_amount,
                    new_amount=0,
                    period_start=current.current_period_start,
                    period_end=current.current_period_end,
                    at=now,
                )
                lines = _proration_lines(current, price, quantity, unused, now)
            line = _period_line(price.unit_amount, price.currency, quantity, start, end)
            lines.append(attrs.evolve(line, price_id=price.id))
            invoice_now = True
    event = "subscription.price_changed" if switching else "subscription.quantity_changed"
    updated = await _write(uow, context, current, event, **changes)
    if not lines:
        return updated, None
    if invoice_now and sum(line.unit_amount * line.quantity for line in lines) < 0:
        # A net credit (a downgrade) is not refunded: it waits on the next invoice, which
        # it reduces (Stripe puts it on the customer's balance; qzpay keeps none yet).
        invoice_now = False
    if not invoice_now:
        await invoicing.add_lines(uow, await invoicing.upcoming_draft(uow, updated), lines)
        return updated, None
    start = min(line.period_start or now for line in lines)
    end = max(line.period_end or now for line in lines)
    return updated, await _invoice_now(uow, context, updated, lines, start, end)


def _proration_lines(
    current: Subscription, price: Price, quantity: int, change: Proration, now: datetime
) -> list[invoicing.LineDraft]:
    """The credit for the old price's unused time and the charge for the new one's, as
    invoice lines marked ``proration`` (a zero side is left out)."""
    lines: list[invoicing.LineDraft] = []
    if change.credit:
        lines.append(_credit_line(current, change, now))
    if change.charge:
        lines.append(
            invoicing.LineDraft(
                description=f"Remaining time on {quantity} x "
                f"{_priced(price.unit_amount, price.currency)} after {_when(now)}",
                unit_amount=change.charge,
                price_id=price.id,
                period_start=now,
                period_end=current.current_period_end,
                proration=True,
            )
        )
    return lines


def _credit_line(current: Subscription, change: Proration, since: datetime) -> invoicing.LineDraft:
    """The credit for the current period's time unused from ``since`` (a proration line)."""
    return invoicing.LineDraft(
        description=f"Unused time on {current.quantity} x "
        f"{_priced(current.unit_amount, current.currency)} after {_when(since)}",
        unit_amount=change.credit,
        price_id=current.price_id,
        period_start=since,
        period_end=current.current_period_end,
        proration=True,
    )


def _unused_paid_time(current: Subscription, since: datetime) -> list[invoicing.LineDraft]:
    """The credit a pause at ``since`` owes for the paid period it cuts short: from then to
    the period's end, at the amount paid (``current``, before the pause), as a price change
    credits it. None when that period was not paid: in a trial, or past due (``past_due_at``
    is cleared only by a payment)."""
    in_trial = current.trial_end is not None and since < current.trial_end
    if in_trial or current.past_due_at is not None:
        return []
    unused = prorate(  # clamped to the period: nothing left once it has ended
        old_amount=current.unit_amount * current.quantity,
        new_amount=0,
        period_start=current.current_period_start,
        period_end=current.current_period_end,
        at=since,
    )
    return [_credit_line(current, unused, since)] if unused.credit else []


def _priced(unit_amount: int, currency: str) -> str:
    return money.format_amount(unit_amount, currency)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _managed_by(value: object) -> bool:
    """Whether ``managed_by`` asks for a provider-managed subscription."""
    if value not in ("qzpay", "provider"):
        raise ValidationError(
            "must be 'qzpay' (qzpay renews and charges it) or 'provider' (the provider "
            "bills it and qzpay mirrors it)",
            field="managed_by",
            rule="managed_by",
        )
    return value == "provider"


def _proration(value: object) -> ProrationBehavior:
    try:
        return ProrationBehavior(str(value) if isinstance(value, str) else "")
    except ValueError:
        raise ValidationError(
            "must be one of " + ", ".join(member.value for member in ProrationBehavior),
            field="proration",
            rule="proration",
        ) from None


async def _write(
    uow: UnitOfWork, context: ServiceContext, current: Subscription, event: str, **changes: Any
) -> Subscription:
    """``current`` with ``changes`` stored (optimistically locked on the version it was
    read at), its ``due_at`` from the one schedule rule (``qzpay.domain.schedule``),
    audited with what changed, ``event`` queued."""
    wanted = attrs.evolve(current, **changes, updated_at=uow.now)
    wanted = schedule.scheduled(wanted, context.settings)
    updated = await uow.tx.update(wanted)
    await uow.record(
        event, updated, changes=check.audit_changes(current, updated, [*changes, "due_at"])
    )
    return updated


async def _invoice_now(
    uow: UnitOfWork,
    context: ServiceContext,
    subscription: Subscription,
    lines: list[invoicing.LineDraft],
    start: datetime,
    end: datetime,
) -> Invoice:
    """``lines`` with the subscription's pending ones (its draft) on an invoice finalized
    now for ``[start, end)``, the span it bills (not the next renewal's, as a draft's)."""
    draft = await invoicing.upcoming_draft(uow, subscription)
    if (draft.period_start, draft.period_end) != (start, end):
        draft = await uow.tx.update(
            attrs.evolve(draft, period_start=start, period_end=end, updated_at=uow.now)
        )
    draft = await invoicing.add_lines(uow, draft, lines)
    return await invoicing.finalize_in(uow, context, draft)


async def _charge_now(context: ServiceContext, invoice: Invoice) -> None:
    """Charge an invoice the call just finalized, once it committed. No card the provider
    can charge (or an attempt already in flight) leaves it open, for ``invoices.pay`` or
    dunning: the change itself stands, as Stripe's ``allow_incomplete``."""
    if invoice.status != InvoiceStatus.OPEN or invoice.amount_due <= 0:
        return
    with contextlib.suppress(InvalidStateError):
        await invoicing.charge_invoice(context, invoice.id)


def _period_line(
    unit_amount: int, currency: str, quantity: int, start: datetime, end: datetime
) -> invoicing.LineDraft:
    """The line billing one whole period in advance."""
    return invoicing.LineDraft(
        description=f"{quantity} x {_priced(unit_amount, currency)} "
        f"from {_when(start)} to {_when(end)}",
        unit_amount=unit_amount,
        quantity=quantity,
        period_start=start,
        period_end=end,
    )
