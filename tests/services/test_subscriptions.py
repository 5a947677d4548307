"""billing.subscriptions.create: trials, the first period (month ends clamped), the first charge."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from qzpay import Billing, Event, InvalidStateError, Scope, SubscriptionStatus, ValidationError
from qzpay.adapters.fake import FakeProvider
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment

pytestmark = pytest.mark.anyio

NOW = datetime(2028, 1, 31, 9, tzinfo=UTC)  # the frozen clock of conftest


async def _customer(billing: Billing, token: str | None = "pm_card_visa") -> Customer:
    ann = await billing.customers.create(email="ann@example.com")
    if token is not None:
        await billing.payment_methods.attach(ann.id, token=token)
    return ann


async def _price(
    billing: Billing,
    *,
    interval: str = "month",
    interval_count: int = 1,
    unit_amount: int = 2900,
    trial_days: int | None = None,
) -> Price:
    plan = await billing.plans.create(name="Pro", entitlements=["reports"])
    return await billing.prices.create(
        plan_id=plan.id,
        unit_amount=unit_amount,
        currency="USD",
        interval=interval,
        interval_count=interval_count,
        trial_days=trial_days,
    )


async def _payments(billing: Billing) -> Sequence[Payment]:
    async with billing.storage.transaction(Scope(livemode=False), readonly=True) as tx:
        return (await tx.list(Payment)).items


async def test_a_trial_starts_trialing_until_the_trial_ends(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id, trial_days=14)

    assert sub.status == "trialing"
    assert sub.trial_start == NOW
    assert sub.trial_end == NOW + timedelta(days=14)
    assert (sub.current_period_start, sub.current_period_end) == (NOW, NOW + timedelta(days=14))
    assert sub.billing_anchor == sub.trial_end
    assert fake.charges == []
    assert await _payments(billing) == []
    assert await billing.subscriptions.get(sub.id) == sub


async def test_a_trial_needs_no_card(billing: Billing) -> None:
    ann = await _customer(billing, token=None)
    price = await _price(billing, trial_days=7)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sub.status == "trialing"
    assert sub.trial_end == NOW + timedelta(days=7)
    assert sub.default_payment_method_id is None


async def test_without_a_trial_the_first_month_is_charged_and_ends_on_the_29th_of_february(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id, quantity=2)

    assert sub.status == "active"
    assert sub.trial_end is None
    assert sub.current_period_start == NOW
    assert sub.current_period_end == datetime(2028, 2, 29, 9, tzinfo=UTC)
    assert [(c.request.amount, c.request.currency) for c in fake.charges] == [(5800, "USD")]
    [payment] = await _payments(billing)
    assert (payment.status, payment.amount, payment.subscription_id) == ("succeeded", 5800, sub.id)


@pytest.mark.parametrize(
    ("interval", "count", "end"),
    [
        ("year", 1, datetime(2029, 1, 31, 9, tzinfo=UTC)),
        ("month", 3, datetime(2028, 4, 30, 9, tzinfo=UTC)),
        ("month", 13, datetime(2029, 2, 28, 9, tzinfo=UTC)),
        ("week", 2, datetime(2028, 2, 14, 9, tzinfo=UTC)),
        ("day", 30, datetime(2028, 3, 1, 9, tzinfo=UTC)),
    ],
)
async def test_the_first_period_follows_the_interval_and_its_count(
    billing: Billing, interval: str, count: int, end: datetime
) -> None:
    ann = await _customer(billing)
    price = await _price(billing, interval=interval, interval_count=count)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert (sub.status, sub.interval, sub.interval_count) == ("active", interval, count)
    assert (sub.current_period_start, sub.current_period_end) == (NOW, end)


async def test_without_a_card_the_subscription_is_incomplete_and_nothing_is_charged(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token=None)
    price = await _price(billing)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sub.status == "incomplete"
    assert fake.charges == []
    assert await _payments(billing) == []


async def test_a_declined_card_leaves_it_incomplete_with_a_failed_payment(
    billing: Billing,
) -> None:
    ann = await _customer(billing, token="pm_card_chargeDeclined")
    price = await _price(billing)
    events: list[Event] = []
    billing.on("*", events.append)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sub.status == "incomplete"
    [payment] = await _payments(billing)
    assert (payment.status, payment.failure_code) == ("failed", "card_declined")
    assert (payment.amount, payment.subscription_id) == (2900, sub.id)
    assert [e.type for e in events] == [
        "subscription.created",
        "payment.created",
        "payment.failed",
    ]


async def test_a_card_that_needs_3d_secure_leaves_it_incomplete(billing: Billing) -> None:
    ann = await _customer(billing, token="pm_card_authenticationRequired")
    price = await _price(billing)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sub.status == "incomplete"
    [payment] = await _payments(billing)
    assert payment.status == "requires_action"


async def test_a_free_price_is_active_without_a_card(billing: Billing, fake: FakeProvider) -> None:
    ann = await _customer(billing, token=None)
    price = await _price(billing, unit_amount=0)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert sub.status == "active"
    assert fake.charges == []


async def test_creation_is_audited_and_announced_after_commit(billing: Billing) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    events: list[Event] = []
    billing.on("*", events.append)

    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    # Intent first: the subscription and its pending payment are committed before the
    # provider is called; the charge's outcome then activates the subscription.
    assert [e.type for e in events] == [
        "subscription.created",
        "payment.created",
        "payment.succeeded",
        "subscription.activated",
    ]
    assert events[0].data == attrs.evolve(
        sub,
        status=SubscriptionStatus.INCOMPLETE,
        version=1,
        updated_at=sub.created_at,
        due_at=sub.created_at + timedelta(hours=23),  # expires unless paid by then
    )
    assert sub.due_at == sub.current_period_end  # renewed when its period ends
    assert events[-1].data == sub
    audits = (await billing.audit.list(entity_id=sub.id)).items
    assert sorted((a.action, str(a.changes["status"])) for a in audits) == [
        ("activated", "('incomplete', 'active')"),
        ("created", "incomplete"),
    ]


async def test_subscriptions_are_listed_by_customer_and_status(billing: Billing) -> None:
    ann = await _customer(billing)
    bob = await _customer(billing, token=None)
    price = await _price(billing)
    active = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    incomplete = await billing.subscriptions.create(customer_id=bob.id, price_id=price.id)

    assert [s.id for s in await billing.subscriptions.list(customer_id=ann.id)] == [active.id]
    assert [s.id for s in await billing.subscriptions.list(status="incomplete")] == [incomplete.id]
    assert len(await billing.subscriptions.list()) == 2


async def test_an_archived_price_takes_no_new_subscriptions(billing: Billing) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    await billing.prices.update(price.id, active=False)

    with pytest.raises(InvalidStateError) as error:
        await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    assert error.value.field == "price_id"
    assert len(await billing.subscriptions.list()) == 0


async def test_another_customers_card_cannot_pay_for_a_subscription(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    bob = await _customer(billing, token=None)
    [anns_card] = (await billing.payment_methods.list(ann.id)).items
    price = await _price(billing)

    with pytest.raises(ValidationError) as error:
        await billing.subscriptions.create(
            customer_id=bob.id, price_id=price.id, payment_method_id=anns_card.id
        )

    assert error.value.field == "payment_method_id"
    assert fake.charges == []
    assert len(await billing.subscriptions.list()) == 0


async def test_a_chosen_card_is_the_one_charged(billing: Billing, fake: FakeProvider) -> None:
    ann = await _customer(billing, token="pm_card_chargeDeclined")
    visa = await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    price = await _price(billing)

    sub = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, payment_method_id=visa.id
    )

    assert sub.status == "active"
    assert sub.default_payment_method_id == visa.id
    assert [c.request.provider_payment_method_id for c in fake.charges] == [visa.provider_id]
