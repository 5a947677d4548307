"""The whole money path once, through ``create_billing`` on StripeProvider and the real SDK,
against the loopback fake of Stripe's API, on each storage (``store_factory``).

customer → card → subscription with a trial → the trial's end charged by the job runner →
a renewal → a declined renewal (the card starts declining at the fake) → a dunning retry
that pays → part of a payment refunded. Every charge the runner makes is off session.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from qzpay import Billing, ProviderError, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.stripe import StripeProvider
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.payments import PaymentMethod
from tests.conftest import StoreFactory
from tests.providers.loopback import Fault, LoopbackAPI
from tests.providers.stripe_api import API_KEY, StripeAPI

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]


@pytest.fixture
def fake() -> StripeAPI:  # here the fake is Stripe's API, not conftest's FakeProvider
    return StripeAPI()


@pytest.fixture
def api(fake: StripeAPI) -> Iterator[LoopbackAPI]:
    served = fake.serve()
    yield served
    served.stop()


async def test_trial_renewal_decline_dunning_and_refund_through_stripe(
    store_factory: StoreFactory, clock: FrozenClock, fake: StripeAPI, api: LoopbackAPI
) -> None:
    provider = StripeProvider(api_key=API_KEY, webhook_secret="whsec_money", api_base=api.url)
    # PostgreSQL measures job leases on its own clock, not the frozen one: a lease this
    # short has run out by the next run, as it would have a month later (as in the
    # renewal tests of tests/services).
    billing = create_billing(
        storage=store_factory(), provider=provider, clock=clock, job_lease=timedelta(milliseconds=1)
    )
    async with billing:
        ann = await billing.customers.create(email="ann@example.com", name="Ann")
        card = await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
        assert (card.brand, card.last4) == ("visa", "4242")
        assert card.provider_id in fake.payment_methods
        plan = await billing.plans.create(name="Pro")
        price = await billing.prices.create(
            plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
        )
        sub = await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, trial_days=14
        )
        assert sub.status == "trialing"
        assert fake.payment_intents == {}

        clock.advance(timedelta(days=15))  # the trial ends
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "active"
        assert _statuses(fake) == ["succeeded"]

        clock.set(sub.current_period_end + timedelta(hours=1))  # a renewal
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "active"
        assert _statuses(fake) == ["succeeded", "succeeded"]

        fake.swap_card(card.provider_id, "pm_card_chargeDeclinedInsufficientFunds")
        clock.set(sub.current_period_end + timedelta(hours=1))  # the next renewal declines
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "past_due"
        failed = (await billing.payments.list(customer_id=ann.id, status="failed")).items
        assert [(p.failure_code, p.provider_failure_code) for p in failed] == [
            ("insufficient_funds", "insufficient_funds")
        ]
        assert failed[0].provider_id in fake.payment_intents

        fake.swap_card(card.provider_id, "pm_card_visa")  # the customer sorted it out
        clock.advance(timedelta(days=1, hours=1))  # the first dunning retry
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "active"
        assert _statuses(fake) == [
            "succeeded",
            "succeeded",
            "requires_payment_method",
            "succeeded",
        ]
        keys = [i["metadata"]["qzpay_key"] for i in fake.payment_intents.values()]
        assert len(set(keys)) == 4  # every attempt its own key: no decline replayed
        intents = api.sent("POST", "/v1/payment_intents")
        assert all(r.form.get("off_session") == "true" for r in intents)

        paid = (await billing.payments.list(customer_id=ann.id, status="succeeded")).items
        payment = paid[0]
        refund = await billing.payments.refund(payment.id, amount=1000)
        assert refund.status == "succeeded"
        payment = await billing.payments.get(payment.id)
        assert (payment.status, payment.refunded_amount) == ("partially_refunded", 1000)
        [stripe_refund] = fake.refunds.values()
        assert stripe_refund["payment_intent"] == payment.provider_id
        assert stripe_refund["amount"] == 1000
        assert stripe_refund["metadata"]["qzpay_key"] == refund.idempotency_key
    await provider.aclose()


def _statuses(fake: StripeAPI) -> list[str]:
    return [str(i["status"]) for i in fake.payment_intents.values()]


async def test_3ds_finished_at_stripe_is_settled_by_its_signed_webhook_once(
    store_factory: StoreFactory, clock: FrozenClock, fake: StripeAPI, api: LoopbackAPI
) -> None:
    provider = StripeProvider(api_key=API_KEY, webhook_secret="whsec_money", api_base=api.url)
    async with create_billing(storage=store_factory(), provider=provider, clock=clock) as billing:
        bob = await billing.customers.create(email="bob@example.com")
        await billing.payment_methods.attach(
            bob.id, token="pm_card_authenticationRequired", set_default=True
        )
        payment = await billing.payments.process(customer_id=bob.id, amount=4200, currency="USD")
        assert payment.status == "requires_action"
        assert payment.provider_id is not None
        assert payment.next_action is not None
        assert payment.next_action["client_secret"].startswith(f"{payment.provider_id}_secret_")

        intent = fake.complete_authentication(payment.provider_id)
        body = fake.event("payment_intent.succeeded", intent, created=int(clock.now().timestamp()))
        headers = provider.sign_webhook(body, clock.now())
        first = await billing.webhooks.handle("stripe", headers, body)
        again = await billing.webhooks.handle("stripe", headers, body)

        assert (first.status, again.status) == ("processed", "duplicate")
        assert (await billing.payments.get(payment.id)).status == "succeeded"
    await provider.aclose()


async def _ann_and_a_stripe_price(billing: Billing) -> tuple[Customer, PaymentMethod, Price]:
    """A customer with a card, and a $29 monthly price sold as Stripe's ``price_pro``."""
    ann = await billing.customers.create(email="ann@example.com", name="Ann")
    card = await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id,
        unit_amount=2900,
        currency="USD",
        interval="month",
        provider_price_id="price_pro",
    )
    return ann, card, price


async def test_a_provider_managed_subscription_through_stripe_is_mirrored_and_canceled(
    store_factory: StoreFactory, clock: FrozenClock, fake: StripeAPI, api: LoopbackAPI
) -> None:
    provider = StripeProvider(api_key=API_KEY, webhook_secret="whsec_money", api_base=api.url)
    fake.add_price("price_pro", unit_amount=2900)
    async with create_billing(storage=store_factory(), provider=provider, clock=clock) as billing:
        ann, card, price = await _ann_and_a_stripe_price(billing)

        sub = await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, managed_by="provider"
        )

        assert (sub.status, sub.provider) == ("active", "stripe")
        assert sub.provider_id is not None
        at_stripe = fake.subscriptions[sub.provider_id]
        assert at_stripe["default_payment_method"] == card.provider_id
        assert at_stripe["metadata"]["qzpay_key"] == f"qzpay-subscription-{sub.id}"
        assert fake.payment_intents == {}  # Stripe bills it, not qzpay

        fake.move_subscription(sub.provider_id, status="past_due")
        stale = fake.subscription_event(sub.provider_id)  # sent now, delivered late
        fresh = fake.subscription_event(sub.provider_id)
        for body in (fresh, fresh):
            await billing.webhooks.handle("stripe", provider.sign_webhook(body, clock.now()), body)
        assert (await billing.subscriptions.get(sub.id)).status == "past_due"

        ended = await billing.subscriptions.cancel(sub.id)
        assert (ended.status, ended.ended_at is not None) == ("canceled", True)
        assert fake.subscriptions[sub.provider_id]["status"] == "canceled"
        late = await billing.webhooks.handle(
            "stripe", provider.sign_webhook(stale, clock.now()), stale
        )
        assert late.status == "processed"
        assert (await billing.subscriptions.get(sub.id)).status == "canceled"  # not past_due
        await billing.jobs.run_due()
        assert fake.payment_intents == {}


async def test_a_managed_create_lost_for_over_a_day_is_found_not_made_twice(
    store_factory: StoreFactory, clock: FrozenClock
) -> None:
    # Stripe forgets a key after 24 hours: sending the lost creation again then would make a
    # second subscription, and Stripe would bill both.
    fake = StripeAPI(now=lambda: int(clock.now().timestamp()))
    fake.add_price("price_pro", unit_amount=2900)
    with LoopbackAPI(fake) as api:
        provider = StripeProvider(
            api_key=API_KEY, webhook_secret="whsec_money", api_base=api.url, max_network_retries=0
        )
        async with create_billing(
            storage=store_factory(), provider=provider, clock=clock
        ) as billing:
            ann, _, price = await _ann_and_a_stripe_price(billing)
            api.inject(Fault(drop=True, after_work=True), path="/v1/subscriptions")
            with pytest.raises(ProviderError):
                await billing.subscriptions.create(
                    customer_id=ann.id, price_id=price.id, managed_by="provider"
                )
            [left] = (await billing.subscriptions.list()).items
            assert left.provider_id is None
            [made] = fake.subscriptions

            clock.advance(timedelta(hours=25))
            synced = await billing.subscriptions.sync(left.id)

            assert (synced.status, synced.provider_id) == ("active", made)
            assert list(fake.subscriptions) == [made]
            assert api.sent("GET", "/v1/subscriptions/search")
