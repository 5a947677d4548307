"""The PaymentProvider contract: the same scenarios on every provider qzpay ships.

Each test runs on ``FakeProvider``, ``StripeProvider`` (the real stripe SDK against the
loopback fake of Stripe's API) and ``MercadoPagoProvider`` (the real mercadopago SDK against
its fake), through the set-ups of ``contract_setups``. A scenario a provider cannot serve is
skipped only where its ``capabilities`` say so, naming the capability; nothing else skips.
The last test runs the same webhook through ``create_billing(...)`` on each storage.

Asyncio only: the per-provider modules run their providers on trio too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from qzpay import create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.contracts.provider import (
    FAILURE_CODES,
    SUBSCRIPTION_STATUSES,
    WEBHOOK_KINDS,
    ChargeRequest,
    ChargeResult,
    CheckoutRequest,
    PaymentProvider,
    ProviderSubscription,
    ProviderSubscriptionRequest,
    RefundRequest,
)
from qzpay.errors import ProviderError, QZPayError, SignatureError
from qzpay.services import charging
from tests.conftest import START, StoreFactory
from tests.providers.contract_setups import SETUPS, Card, ProviderSetup

pytestmark = [
    pytest.mark.anyio,
    # stripe's HTTPXClient hands httpx the form body as ``data=``; httpx prefers ``content=``.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

NOW = START
AMOUNT = 2990


@pytest.fixture(params=list(SETUPS))
async def provider_setup(request: pytest.FixtureRequest) -> AsyncIterator[ProviderSetup]:
    with SETUPS[request.param]() as made:
        yield made
        close = getattr(made.provider, "aclose", None)
        if close is not None:
            await close()


def require(setup: ProviderSetup, capability: str) -> None:
    """Skip unless the provider says it can (the only reason a contract test skips)."""
    if not getattr(setup.provider.capabilities, capability):
        pytest.skip(f"{setup.name}: capabilities.{capability} is False")


def assert_no_secret(setup: ProviderSetup, error: BaseException) -> None:
    shown = f"{error} {error!r} {error.args!r}"
    for secret in setup.secrets:
        assert secret not in shown, f"{type(error).__name__} shows a secret"


async def customer_with(setup: ProviderSetup, card: Card, n: int = 1) -> tuple[str, str]:
    """A new customer with a card of that kind: (provider customer id, payment method id)."""
    provider = setup.provider
    customer = await provider.create_customer(
        email=f"{card}-{n}@example.com", name="Ann Lee", idempotency_key=f"contract-cus-{card}-{n}"
    )
    token = setup.token(card)
    assert token is not None, f"{setup.name} has no {card} card"
    method = await provider.attach_payment_method(
        provider_customer_id=customer.provider_id, token=token
    )
    return customer.provider_id, method.provider_id


def charge_of(setup: ProviderSetup, customer: str, method: str, key: str) -> ChargeRequest:
    return ChargeRequest(
        amount=AMOUNT,
        currency=setup.currency,
        provider_customer_id=customer,
        provider_payment_method_id=method,
        idempotency_key=key,
        description="Pro, January",
        metadata={"invoice": "INV-000001"},
    )


async def succeeded_charge(setup: ProviderSetup, key: str = "contract-pay-1") -> ChargeResult:
    customer, method = await customer_with(setup, "chargeable")
    result = await setup.provider.charge(charge_of(setup, customer, method, key))
    assert result.status == "succeeded", result
    return result


# -- identity ---------------------------------------------------------------------------------


async def test_it_is_a_payment_provider_named_for_its_column(provider_setup: ProviderSetup) -> None:
    assert isinstance(provider_setup.provider, PaymentProvider)
    assert provider_setup.provider.name == provider_setup.name


# -- customers and payment methods ------------------------------------------------------------


async def test_one_key_makes_one_customer_however_often_it_is_sent(
    provider_setup: ProviderSetup,
) -> None:
    provider = provider_setup.provider
    first = await provider.create_customer(
        email="ann@example.com", name="Ann Lee", idempotency_key="contract-customer-1"
    )
    again = await provider.create_customer(
        email="ann@example.com", name="Ann Lee", idempotency_key="contract-customer-1"
    )
    assert first.provider_id
    assert again.provider_id == first.provider_id
    assert provider_setup.customers() == 1


async def test_a_card_attaches_with_its_details_and_once_detached_is_never_charged(
    provider_setup: ProviderSetup,
) -> None:
    require(provider_setup, "payment_methods")
    provider = provider_setup.provider
    customer, _ = await customer_with(provider_setup, "chargeable")
    token = provider_setup.token("chargeable")
    assert token is not None
    method = await provider.attach_payment_method(provider_customer_id=customer, token=token)
    assert method.type == "card"
    assert method.brand
    assert method.last4
    assert len(method.last4) == 4
    assert token not in (method.last4, method.brand)

    await provider.detach_payment_method(provider_payment_method_id=method.provider_id)

    charges = provider_setup.charges()
    with pytest.raises(ProviderError) as refused:
        await provider.charge(charge_of(provider_setup, customer, method.provider_id, "detached"))
    assert refused.value.retryable is False
    assert provider_setup.charges() == charges
    assert_no_secret(provider_setup, refused.value)


# -- charges ----------------------------------------------------------------------------------


async def test_a_successful_charge_succeeds(provider_setup: ProviderSetup) -> None:
    result = await succeeded_charge(provider_setup)
    assert result.provider_id
    assert (result.failure_code, result.provider_failure_code) == (None, None)
    assert provider_setup.charges() == 1
    assert provider_setup.charge_made_with("contract-pay-1") == result.provider_id


async def test_a_decline_is_a_failed_result_with_the_neutral_and_the_providers_code(
    provider_setup: ProviderSetup,
) -> None:
    provider = provider_setup.provider
    customer, method = await customer_with(provider_setup, "declining")
    request = charge_of(provider_setup, customer, method, "contract-declined-1")

    result = await provider.charge(request)

    assert result.status == "failed"
    assert result.failure_code in FAILURE_CODES
    assert result.failure_code == "insufficient_funds"
    assert result.provider_failure_code
    assert result.provider_id
    retrieved = await provider.retrieve_charge(
        idempotency_key=request.idempotency_key, provider_id=result.provider_id
    )
    assert retrieved is not None
    assert (retrieved.status, retrieved.failure_code) == ("failed", "insufficient_funds")


async def test_the_same_request_twice_charges_once(provider_setup: ProviderSetup) -> None:
    provider = provider_setup.provider
    customer, method = await customer_with(provider_setup, "chargeable")
    request = charge_of(provider_setup, customer, method, "contract-twice-1")

    first = await provider.charge(request)
    again = await provider.charge(request)

    assert (first.status, again.status) == ("succeeded", "succeeded")
    assert again.provider_id == first.provider_id
    assert provider_setup.charges() == 1


async def test_retrieve_charge_finds_it_by_key_and_by_provider_id(
    provider_setup: ProviderSetup,
) -> None:
    provider = provider_setup.provider
    made = await succeeded_charge(provider_setup, key="contract-find-1")

    by_key = await provider.retrieve_charge(idempotency_key="contract-find-1")
    by_id = await provider.retrieve_charge(
        idempotency_key="contract-find-1", provider_id=made.provider_id
    )

    for found in (by_key, by_id):
        assert found is not None
        assert (found.provider_id, found.status) == (made.provider_id, "succeeded")
    assert provider_setup.charges() == 1  # retrieving never charges


async def test_retrieve_charge_answers_none_for_what_the_provider_never_saw(
    provider_setup: ProviderSetup,
) -> None:
    provider = provider_setup.provider
    await succeeded_charge(provider_setup, key="contract-seen-1")

    assert await provider.retrieve_charge(idempotency_key="contract-never-used") is None
    assert (
        await provider.retrieve_charge(
            idempotency_key="contract-never-used", provider_id=provider_setup.unknown_charge_id
        )
        is None
    )
    assert provider_setup.charges() == 1


async def test_three_d_secure_requires_action_then_succeeds_once_authenticated(
    provider_setup: ProviderSetup,
) -> None:
    require(provider_setup, "three_d_secure")
    provider = provider_setup.provider
    customer, method = await customer_with(provider_setup, "three_d_secure")
    request = charge_of(provider_setup, customer, method, "contract-3ds-1")

    waiting = await provider.charge(request)

    assert waiting.status == "requires_action"
    assert waiting.client_secret or waiting.next_action_url
    still = await provider.retrieve_charge(idempotency_key=request.idempotency_key)
    assert still is not None
    assert still.status == "requires_action"

    assert provider_setup.complete_authentication is not None
    provider_setup.complete_authentication(waiting.provider_id)

    for provider_id in (waiting.provider_id, None):
        done = await provider.retrieve_charge(
            idempotency_key=request.idempotency_key, provider_id=provider_id
        )
        assert done is not None
        assert (done.provider_id, done.status) == (waiting.provider_id, "succeeded")
    assert provider_setup.charges() == 1


# -- refunds ----------------------------------------------------------------------------------


async def test_a_charge_is_refunded_in_parts_and_never_beyond_what_is_left(
    provider_setup: ProviderSetup,
) -> None:
    require(provider_setup, "refunds")
    provider = provider_setup.provider
    charge = await succeeded_charge(provider_setup)

    def refund_of(amount: int, key: str) -> RefundRequest:
        return RefundRequest(
            provider_payment_id=charge.provider_id,
            amount=amount,
            currency=provider_setup.currency,
            idempotency_key=key,
            reason="requested_by_customer",
        )

    part = await provider.refund(refund_of(1000, "contract-refund-1"))
    assert part.status == "succeeded"
    assert part.provider_id

    with pytest.raises(ProviderError) as too_much:
        await provider.refund(refund_of(AMOUNT - 1000 + 1, "contract-refund-2"))
    assert too_much.value.retryable is False
    assert_no_secret(provider_setup, too_much.value)

    rest = await provider.refund(refund_of(AMOUNT - 1000, "contract-refund-3"))
    assert rest.status == "succeeded"
    assert rest.provider_id not in ("", part.provider_id)

    with pytest.raises(ProviderError) as nothing_left:
        await provider.refund(refund_of(1, "contract-refund-4"))
    assert nothing_left.value.retryable is False

    for made in (part, rest):
        found = await provider.retrieve_refund(
            idempotency_key="contract-not-this-key", provider_id=made.provider_id
        )
        assert found is not None
        assert (found.provider_id, found.status) == (made.provider_id, "succeeded")


async def test_list_refunds_answers_every_refund_of_the_charge_oldest_first_with_its_amount(
    provider_setup: ProviderSetup,
) -> None:
    require(provider_setup, "refunds")
    provider = provider_setup.provider
    charge = await succeeded_charge(provider_setup, key="contract-listed-1")
    other = await succeeded_charge(provider_setup, key="contract-listed-2")
    assert await provider.list_refunds(
        provider_payment_id=charge.provider_id, currency=provider_setup.currency
    ) == []  # fmt: skip
    made = []
    for payment, amount, key in (
        (charge, 1000, "contract-listed-refund-1"),
        (other, 700, "contract-listed-refund-2"),
        (charge, 500, "contract-listed-refund-3"),
    ):
        refund = await provider.refund(
            RefundRequest(
                provider_payment_id=payment.provider_id,
                amount=amount,
                currency=provider_setup.currency,
                idempotency_key=key,
            )
        )
        made.append((refund.provider_id, amount, key))

    listed = await provider.list_refunds(
        provider_payment_id=charge.provider_id, currency=provider_setup.currency
    )

    assert [(r.provider_id, r.amount, r.status) for r in listed] == [
        (made[0][0], 1000, "succeeded"),
        (made[2][0], 500, "succeeded"),
    ]
    for refund, (_, _, key) in zip(listed, (made[0], made[2]), strict=True):
        assert refund.idempotency_key in (None, key)  # only where the provider echoes it
    unknown = await provider.list_refunds(
        provider_payment_id=provider_setup.unknown_charge_id, currency=provider_setup.currency
    )
    assert list(unknown) == []


# -- checkout and subscriptions ---------------------------------------------------------------


async def test_checkout_opens_one_session_per_key(provider_setup: ProviderSetup) -> None:
    require(provider_setup, "checkout")
    provider = provider_setup.provider
    customer = await provider.create_customer(
        email="checkout@example.com", name=None, idempotency_key="contract-cus-checkout"
    )
    request = CheckoutRequest(
        amount=AMOUNT,
        currency=provider_setup.currency,
        success_url="https://shop.example/paid",
        cancel_url="https://shop.example/cart",
        idempotency_key="contract-checkout-1",
        provider_customer_id=customer.provider_id,
    )

    first = await provider.create_checkout(request)
    again = await provider.create_checkout(request)

    assert first.provider_id
    assert first.url.startswith("https://")
    assert again == first


def subscribable(setup: ProviderSetup) -> ProviderSetup:
    """Skip unless the provider manages subscriptions; then its set-up must say how."""
    require(setup, "subscriptions")
    missing = [
        name
        for name in ("price_id", "subscriptions", "unknown_subscription_id",
                     "move_subscription", "subscription_delivery")
        if getattr(setup, name) is None
    ]  # fmt: skip
    assert not missing, f"{setup.name}'s set-up has subscriptions but no {', '.join(missing)}"
    return setup


async def subscribed(setup: ProviderSetup, key: str) -> ProviderSubscription:
    customer, _ = await customer_with(setup, "chargeable")
    assert setup.price_id is not None
    return await setup.provider.create_subscription(
        ProviderSubscriptionRequest(
            provider_customer_id=customer,
            provider_price_id=setup.price_id,
            quantity=1,
            idempotency_key=key,
        )
    )


def assert_neutral(subscription: ProviderSubscription, key: str) -> None:
    assert subscription.provider_id
    assert subscription.status in SUBSCRIPTION_STATUSES
    assert subscription.provider_status
    assert subscription.idempotency_key in (None, key)
    for moment in (
        subscription.current_period_start,
        subscription.current_period_end,
        subscription.trial_end,
        subscription.canceled_at,
        subscription.ended_at,
    ):
        assert moment is None or moment.utcoffset() == timedelta(0)


async def test_a_provider_managed_subscription_is_created_once_per_key(
    provider_setup: ProviderSetup,
) -> None:
    setup = subscribable(provider_setup)
    provider = setup.provider
    customer, _ = await customer_with(setup, "chargeable")
    assert setup.price_id is not None
    request = ProviderSubscriptionRequest(
        provider_customer_id=customer,
        provider_price_id=setup.price_id,
        quantity=1,
        idempotency_key="contract-subscription-1",
    )

    first = await provider.create_subscription(request)
    again = await provider.create_subscription(request)

    assert_neutral(first, "contract-subscription-1")
    assert first.status not in ("canceled", "incomplete_expired")
    assert again.provider_id == first.provider_id
    assert setup.subscriptions is not None
    assert setup.subscriptions() == 1


async def test_retrieve_subscription_answers_it_as_the_provider_moved_it_and_none_if_unknown(
    provider_setup: ProviderSetup,
) -> None:
    setup = subscribable(provider_setup)
    provider = setup.provider
    made = await subscribed(setup, "contract-subscription-2")

    found = await provider.retrieve_subscription(provider_id=made.provider_id)
    assert found is not None
    assert (found.provider_id, found.status) == (made.provider_id, made.status)
    assert_neutral(found, "contract-subscription-2")

    assert setup.move_subscription is not None
    setup.move_subscription(made.provider_id, "paused")
    moved = await provider.retrieve_subscription(provider_id=made.provider_id)
    assert moved is not None
    assert moved.status == "paused"
    assert setup.unknown_subscription_id is not None
    assert await provider.retrieve_subscription(provider_id=setup.unknown_subscription_id) is None


async def test_retrieve_subscription_by_key_finds_the_one_made_with_it(
    provider_setup: ProviderSetup,
) -> None:
    # How qzpay finds a creation whose answer was lost once the provider forgot the key.
    setup = subscribable(provider_setup)
    provider = setup.provider
    made = await subscribed(setup, "contract-subscription-by-key")

    found = await provider.retrieve_subscription(idempotency_key="contract-subscription-by-key")

    assert found is not None
    assert found.provider_id == made.provider_id
    assert_neutral(found, "contract-subscription-by-key")
    assert await provider.retrieve_subscription(idempotency_key="contract-never-sent") is None
    with pytest.raises(QZPayError):
        await provider.retrieve_subscription()


async def test_the_providers_signed_delivery_about_a_subscription_names_it(
    provider_setup: ProviderSetup,
) -> None:
    setup = subscribable(provider_setup)
    require(setup, "webhooks")
    made = await subscribed(setup, "contract-subscription-3")
    assert setup.move_subscription is not None
    assert setup.subscription_delivery is not None
    setup.move_subscription(made.provider_id, "paused")
    delivery = setup.subscription_delivery(made.provider_id, NOW)

    event = setup.provider.verify_webhook(
        payload=delivery.payload, headers=delivery.headers, now=NOW, query=delivery.query
    )

    assert event.type.partition(".")[0] == "subscription"
    assert event.data["provider_subscription_id"] == made.provider_id
    assert event.data.get("idempotency_key") in (None, "contract-subscription-3")
    assert all(isinstance(value, str | None) for value in event.data.values())


async def test_cancel_now_ends_it_and_cancelling_it_again_answers_it_as_it_is(
    provider_setup: ProviderSetup,
) -> None:
    setup = subscribable(provider_setup)
    provider = setup.provider
    made = await subscribed(setup, "contract-subscription-4")

    canceled = await provider.cancel_subscription(
        provider_id=made.provider_id, at_period_end=False, idempotency_key="contract-cancel-1"
    )

    assert (canceled.provider_id, canceled.status) == (made.provider_id, "canceled")
    assert_neutral(canceled, "contract-subscription-4")
    found = await provider.retrieve_subscription(provider_id=made.provider_id)
    assert found is not None
    assert found.status == "canceled"
    replayed = await provider.cancel_subscription(
        provider_id=made.provider_id, at_period_end=False, idempotency_key="contract-cancel-1"
    )
    again = await provider.cancel_subscription(
        provider_id=made.provider_id, at_period_end=False, idempotency_key="contract-cancel-2"
    )
    for answer in (replayed, again):
        assert (answer.provider_id, answer.status) == (made.provider_id, "canceled")
    assert setup.subscriptions is not None
    assert setup.subscriptions() == 1


async def test_cancel_at_period_end_keeps_it_until_then_or_is_refused_by_rule(
    provider_setup: ProviderSetup,
) -> None:
    setup = subscribable(provider_setup)
    provider = setup.provider
    made = await subscribed(setup, "contract-subscription-5")

    marked: ProviderSubscription | ProviderError
    try:
        marked = await provider.cancel_subscription(
            provider_id=made.provider_id, at_period_end=True, idempotency_key="contract-cancel-3"
        )
    except ProviderError as refused:
        marked = refused
    if isinstance(marked, ProviderError):
        assert marked.rule == "cancel_at_period_end", marked
        assert marked.retryable is False
        assert_no_secret(setup, marked)
        unchanged = await provider.retrieve_subscription(provider_id=made.provider_id)
        assert unchanged is not None
        assert (unchanged.status, unchanged.cancel_at_period_end) == (made.status, False)
        pytest.skip(f"{setup.name} cannot cancel at period end (rule cancel_at_period_end)")

    assert marked.provider_id == made.provider_id
    assert marked.cancel_at_period_end is True
    assert marked.status == made.status  # it runs until the period ends
    found = await provider.retrieve_subscription(provider_id=made.provider_id)
    assert found is not None
    assert (found.status, found.cancel_at_period_end) == (made.status, True)
    again = await provider.cancel_subscription(
        provider_id=made.provider_id, at_period_end=True, idempotency_key="contract-cancel-3"
    )
    assert (again.provider_id, again.cancel_at_period_end) == (made.provider_id, True)


# -- webhooks ---------------------------------------------------------------------------------


async def test_the_providers_own_signed_delivery_verifies_as_a_neutral_payment_event(
    provider_setup: ProviderSetup,
) -> None:
    require(provider_setup, "webhooks")
    provider = provider_setup.provider
    charge = await succeeded_charge(provider_setup, key="contract-hook-1")
    delivery = provider_setup.delivery(charge.provider_id, "contract-hook-1", NOW)

    headers_as_sent = (
        dict(delivery.headers),
        {name.lower(): value for name, value in delivery.headers.items()},
        {name.upper(): value for name, value in delivery.headers.items()},
    )
    for headers in headers_as_sent:  # header names are matched case-insensitively
        event = provider.verify_webhook(
            payload=delivery.payload, headers=headers, now=NOW, query=delivery.query
        )
        assert event.provider == provider.name
        assert event.provider_event_id
        kind = event.type.partition(".")[0]
        assert kind in WEBHOOK_KINDS
        assert kind == "payment"
        assert event.data["provider_payment_id"] == charge.provider_id
        assert all(isinstance(value, str | None) for value in event.data.values())


async def test_a_delivery_about_another_object_than_was_signed_is_refused(
    provider_setup: ProviderSetup,
) -> None:
    require(provider_setup, "webhooks")
    provider = provider_setup.provider
    charge = await succeeded_charge(provider_setup, key="contract-hook-2")
    delivery = provider_setup.delivery(charge.provider_id, "contract-hook-2", NOW)
    forged = delivery.with_id_replaced(charge.provider_id, f"{charge.provider_id}7")
    assert forged.payload != delivery.payload

    with pytest.raises(SignatureError) as refused:
        provider.verify_webhook(
            payload=forged.payload, headers=forged.headers, now=NOW, query=forged.query
        )
    assert_no_secret(provider_setup, refused.value)
    with pytest.raises(SignatureError) as unsigned:
        provider.verify_webhook(payload=delivery.payload, headers={}, now=NOW, query=delivery.query)
    assert_no_secret(provider_setup, unsigned.value)


@pytest.mark.parametrize("offset", [timedelta(hours=-1), timedelta(hours=1)], ids=["old", "future"])
async def test_a_delivery_signed_outside_the_tolerance_of_the_clocks_now_is_refused(
    provider_setup: ProviderSetup, offset: timedelta
) -> None:
    require(provider_setup, "webhooks")
    provider = provider_setup.provider
    charge = await succeeded_charge(provider_setup, key="contract-hook-3")
    delivery = provider_setup.delivery(charge.provider_id, "contract-hook-3", NOW + offset)

    with pytest.raises(SignatureError) as refused:
        provider.verify_webhook(
            payload=delivery.payload, headers=delivery.headers, now=NOW, query=delivery.query
        )
    assert_no_secret(provider_setup, refused.value)
    # The same delivery checked at the time it was signed is fine: only the clock differs.
    event = provider.verify_webhook(
        payload=delivery.payload, headers=delivery.headers, now=NOW + offset, query=delivery.query
    )
    assert event.data["provider_payment_id"] == charge.provider_id


# -- through qzpay ----------------------------------------------------------------------------


async def test_a_webhook_settles_a_payment_whose_charge_answer_was_lost(
    provider_setup: ProviderSetup, store_factory: StoreFactory
) -> None:
    # MercadoPago's notification names the charge by MercadoPago's id only, which a payment
    # whose every answer was lost never learned: the webhook service asks the provider for
    # that charge and the key it was made with (its external_reference).
    require(provider_setup, "webhooks")
    clock = FrozenClock(START)
    billing = create_billing(storage=store_factory(), provider=provider_setup.provider, clock=clock)
    async with billing:
        ann = await billing.customers.create(email="ann@example.com", name="Ann Lee")
        token = provider_setup.token("chargeable")
        assert token is not None
        await billing.payment_methods.attach(ann.id, token=token, set_default=True)
        provider_setup.lose_charge_answers(charging.PROVIDER_ATTEMPTS)

        payment = await billing.payments.process(
            customer_id=ann.id, amount=AMOUNT, currency=provider_setup.currency
        )

        assert payment.status == "pending"
        assert payment.idempotency_key is not None
        charged = provider_setup.charge_made_with(payment.idempotency_key)
        assert charged is not None
        assert provider_setup.charges() == 1
        delivery = provider_setup.delivery(charged, payment.idempotency_key, clock.now())

        result = await billing.webhooks.handle(
            provider_setup.provider.name,
            dict(delivery.headers),
            delivery.payload,
            query=delivery.query,
        )

        assert result.status == "processed", result
        settled = await billing.payments.get(payment.id)
        assert (settled.status, settled.provider_id) == ("succeeded", charged)
        # Settled from the provider's answer, never charged again.
        assert provider_setup.charges() == 1
        again = await billing.webhooks.handle(
            provider_setup.provider.name,
            dict(delivery.headers),
            delivery.payload,
            query=delivery.query,
        )
        assert again.status == "duplicate"


async def test_a_bad_signature_through_qzpay_is_a_signature_error_that_shows_no_secret(
    provider_setup: ProviderSetup, store_factory: StoreFactory
) -> None:
    require(provider_setup, "webhooks")
    clock = FrozenClock(START)
    billing = create_billing(storage=store_factory(), provider=provider_setup.provider, clock=clock)
    delivery = provider_setup.delivery("1000000001", "contract-hook-4", clock.now())
    forged = delivery.with_id_replaced("1000000001", "1000000002")
    async with billing:
        with pytest.raises(QZPayError) as refused:
            await billing.webhooks.handle(
                provider_setup.provider.name,
                dict(forged.headers),
                forged.payload,
                query=forged.query,
            )
    assert isinstance(refused.value, SignatureError)
    assert_no_secret(provider_setup, refused.value)
