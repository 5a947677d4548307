"""subscriptions.create's first charge: intent first, idempotent, with promo codes.

The defects of the issue, tried as a user would: the provider charged before anything was
written, a retry charging again, ``pm_card_processingError`` failing on every retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import anyio
import pytest

from qzpay import Billing, InvalidStateError, ProviderError, QZPayError, Scope, ValidationError
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.subscriptions import Subscription
from qzpay.services import charging

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)
RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]


async def _customer(billing: Billing, token: str = "pm_card_visa", n: int = 0) -> Customer:
    ann = await billing.customers.create(email=f"ann{n}@example.com")
    await billing.payment_methods.attach(ann.id, token=token, set_default=True)
    return ann


async def _price(billing: Billing, unit_amount: int = 2900) -> Price:
    plan = await billing.plans.create(name="Pro")
    return await billing.prices.create(
        plan_id=plan.id, unit_amount=unit_amount, currency="USD", interval="month"
    )


async def test_the_provider_is_called_only_after_the_pending_rows_are_committed(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    seen: list[tuple[str, str]] = []
    charge = fake.charge

    async def charge_and_look(request: Any) -> Any:
        async with billing.storage.transaction(TEST, readonly=True) as tx:
            for sub in (await tx.list(Subscription)).items:
                seen.append(("subscription", sub.status.value))
            for payment in (await tx.list(Payment)).items:
                seen.append(("payment", payment.status.value))
        return await charge(request)

    fake.charge = charge_and_look  # type: ignore[method-assign]
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sorted(seen) == [("payment", "pending"), ("subscription", "incomplete")]
    assert sub.status == "active"
    [payment] = (await billing.payments.list(subscription_id=sub.id)).items
    assert payment.status == "succeeded"
    assert fake.charges[0].request.idempotency_key == charging.payment_key(payment.id)


async def test_a_processing_error_card_succeeds_on_the_retry(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token="pm_card_processingError")
    price = await _price(billing)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sub.status == "active"
    assert len(fake.charges) == 1


async def test_a_retried_create_with_its_key_makes_one_subscription_and_one_charge(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    # The first call's charge happens, but no answer reaches qzpay.
    lost = ProviderError("read timeout", retryable=True)
    fake.fail_next("charge", lost, after=True)
    for _ in range(charging.PROVIDER_ATTEMPTS - 1):
        fake.fail_next("charge", lost)

    first = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, idempotency_key="signup-u_1"
    )
    assert first.status == "incomplete"
    again = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, idempotency_key="signup-u_1"
    )

    assert (again.id, again.status) == (first.id, "active")
    assert len(fake.charges) == 1
    assert await count_rows(billing, Subscription) == 1
    assert await count_rows(billing, Payment) == 1
    # Finished: the key now answers from its stored result.
    assert (
        await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, idempotency_key="signup-u_1"
        )
        == again
    )
    with pytest.raises(QZPayError) as refused:
        await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, quantity=2, idempotency_key="signup-u_1"
        )
    assert refused.value.field == "idempotency_key"


async def test_a_keyed_trial_create_replays(billing: Billing, count_rows: RowCounter) -> None:
    ann = await _customer(billing)
    price = await _price(billing)

    first = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, trial_days=14, idempotency_key="t-1"
    )
    again = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, trial_days=14, idempotency_key="t-1"
    )

    assert again == first
    assert await count_rows(billing, Subscription) == 1


async def test_a_declined_create_is_incomplete_and_a_new_attempt_is_a_new_key(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token="pm_card_chargeDeclined")
    price = await _price(billing)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sub.status == "incomplete"
    [failed] = (await billing.payments.list(subscription_id=sub.id)).items
    assert (failed.status, failed.failure_code) == ("failed", "card_declined")
    card = await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
    retry = await billing.payments.process(
        customer_id=ann.id, amount=2900, currency="USD", payment_method_id=card.id
    )
    assert retry.status == "succeeded"
    keys = [c.request.idempotency_key for c in fake.charges]
    assert len(set(keys)) == 2  # never the declined attempt's key: no cached decline


# -- promo codes --------------------------------------------------------------------


async def test_a_percentage_code_comes_off_the_first_charge(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    code = await billing.promo_codes.create(code="SAVE20", percent_off=Decimal("20"))

    sub = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, promo_code="save20"
    )

    assert (sub.status, sub.promo_code_id) == ("active", code.id)
    [charged] = fake.charges
    assert charged.request.amount == 2320
    assert (await billing.promo_codes.get(code.id)).times_redeemed == 1


async def test_a_trial_code_gives_its_days_and_charges_nothing_now(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    await billing.promo_codes.create(code="TRIAL30", trial_days=30)

    sub = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, promo_code="TRIAL30"
    )

    assert sub.status == "trialing"
    assert sub.trial_end is not None
    assert sub.trial_start is not None
    assert (sub.trial_end - sub.trial_start).days == 30
    assert fake.charges == []


async def test_a_code_that_does_not_apply_writes_nothing_and_charges_nothing(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    await billing.promo_codes.create(code="EUROS", amount_off=500, currency="EUR")
    before = (
        await count_rows(billing, Subscription),
        await count_rows(billing, Payment),
        await count_rows(billing, PromoCodeUsage),
    )

    for code, rule in (("EUROS", "currency"), ("NOPE", "not_found")):
        with pytest.raises((ValidationError, InvalidStateError)) as refused:
            await billing.subscriptions.create(
                customer_id=ann.id, price_id=price.id, promo_code=code
            )
        assert (refused.value.field, refused.value.rule) == ("promo_code", rule)

    after = (
        await count_rows(billing, Subscription),
        await count_rows(billing, Payment),
        await count_rows(billing, PromoCodeUsage),
    )
    assert after == before
    assert fake.charges == []


async def test_a_code_limited_to_10_is_redeemed_by_10_of_100_concurrent_creates(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    price = await _price(billing)
    code = await billing.promo_codes.create(
        code="FIRST10", percent_off=Decimal("50"), max_redemptions=10
    )
    customers = [await _customer(billing, n=n) for n in range(100)]
    created: list[Subscription] = []
    errors: list[QZPayError] = []

    async def create(customer: Customer) -> None:
        try:
            created.append(
                await billing.subscriptions.create(
                    customer_id=customer.id, price_id=price.id, promo_code="FIRST10"
                )
            )
        except QZPayError as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        for customer in customers:
            group.start_soon(create, customer)

    assert len(created) == 10
    assert {(e.field, e.rule) for e in errors} == {("promo_code", "exhausted")}
    assert len(errors) == 90
    assert (await billing.promo_codes.get(code.id)).times_redeemed == 10
    assert await count_rows(billing, PromoCodeUsage) == 10
    assert await count_rows(billing, Subscription) == 10
    assert sorted(c.request.amount for c in fake.charges) == [1450] * 10
    assert (await billing.promo_codes.get(code.id)).max_redemptions == 10
    stored = await count_rows(billing, PromoCode)
    assert stored == 1


async def test_a_code_redeemed_during_a_trial_comes_off_the_charge_at_its_end(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    await billing.promo_codes.create(code="SAVE20", percent_off=Decimal("20"))
    sub = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, trial_days=14, promo_code="SAVE20"
    )
    assert (sub.status, fake.charges) == ("trialing", [])

    clock.advance(timedelta(days=15))
    report = await billing.jobs.run_due()

    assert report.charged == 1
    assert [c.request.amount for c in fake.charges] == [2320]
    assert (await billing.subscriptions.get(sub.id)).status == "active"
