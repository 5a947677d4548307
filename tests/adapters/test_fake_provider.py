"""FakeProvider: Stripe's test tokens, Stripe's idempotency, refund caps and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import anyio
import attrs
import pytest

from qzpay.adapters.fake import FAKE_TEST_TOKENS, FakeProvider
from qzpay.contracts.provider import (
    ChargeRequest,
    ChargeResult,
    CheckoutRequest,
    PaymentProvider,
    ProviderSubscriptionRequest,
    RefundRequest,
    RefundResult,
)
from qzpay.errors import (
    IdempotencyError,
    ProviderError,
    SignatureError,
    ValidationError,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider(namespace="")


async def customer_with_card(
    fake: FakeProvider, token: str = "pm_card_visa", *, email: str = "ann@example.com"
) -> tuple[str, str]:
    """Create a customer, attach ``token``; return (customer id, payment method id)."""
    customer = await fake.create_customer(email=email, name="Ann", idempotency_key=f"cus-{email}")
    method = await fake.attach_payment_method(
        provider_customer_id=customer.provider_id, token=token
    )
    return customer.provider_id, method.provider_id


def charge_request(
    customer_id: str,
    method_id: str | None,
    *,
    amount: int = 9900,
    key: str = "order-42",
    currency: str = "USD",
    metadata: Mapping[str, str] | None = None,
) -> ChargeRequest:
    return ChargeRequest(
        amount=amount,
        currency=currency,
        provider_customer_id=customer_id,
        provider_payment_method_id=method_id,
        idempotency_key=key,
        metadata=dict(metadata or {}),
    )


async def succeeded_charge(fake: FakeProvider, amount: int = 9900) -> str:
    customer_id, method_id = await customer_with_card(fake)
    result = await fake.charge(charge_request(customer_id, method_id, amount=amount))
    assert result.status == "succeeded"
    return result.provider_id


def refund_request(charge_id: str, amount: int, key: str, currency: str = "USD") -> RefundRequest:
    return RefundRequest(
        provider_payment_id=charge_id, amount=amount, currency=currency, idempotency_key=key
    )


# -- identity ---------------------------------------------------------------------------------


def test_the_fake_is_a_payment_provider_named_fake(fake: FakeProvider) -> None:
    provider: PaymentProvider = fake
    assert isinstance(provider, PaymentProvider)
    assert provider.name == "fake"


def test_capabilities_are_everything_the_port_names(fake: FakeProvider) -> None:
    capabilities = fake.capabilities
    assert capabilities.payment_methods
    assert capabilities.refunds
    assert capabilities.three_d_secure
    assert capabilities.checkout
    assert capabilities.webhooks
    assert capabilities.subscriptions


@pytest.mark.anyio
async def test_ids_look_like_stripes_and_count_up_the_same_way_every_run() -> None:
    async def run() -> list[str]:
        fake = FakeProvider(namespace="")
        customer_id, method_id = await customer_with_card(fake)
        second = await fake.create_customer(email="bo@example.com", name=None, idempotency_key="b")
        charge = await fake.charge(charge_request(customer_id, method_id))
        refund = await fake.refund(refund_request(charge.provider_id, 100, "refund-1"))
        return [customer_id, second.provider_id, method_id, charge.provider_id, refund.provider_id]

    first_run = await run()
    assert first_run == [
        "cus_fake_000001",
        "cus_fake_000002",
        "pm_fake_000001",
        "ch_fake_000001",
        "re_fake_000001",
    ]
    assert await run() == first_run


# -- customers --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_customer_replays_for_the_same_key_and_parameters(fake: FakeProvider) -> None:
    first = await fake.create_customer(email="ann@example.com", name="Ann", idempotency_key="k")
    again = await fake.create_customer(email="ann@example.com", name="Ann", idempotency_key="k")

    assert again == first
    assert list(fake.customers) == [first.provider_id]
    stored = fake.customers[first.provider_id]
    assert (stored.email, stored.name) == ("ann@example.com", "Ann")


@pytest.mark.anyio
async def test_create_customer_refuses_the_same_key_with_other_parameters(
    fake: FakeProvider,
) -> None:
    await fake.create_customer(email="ann@example.com", name="Ann", idempotency_key="k")
    with pytest.raises(IdempotencyError) as raised:
        await fake.create_customer(email="bo@example.com", name="Bo", idempotency_key="k")
    assert raised.value.field == "idempotency_key"
    assert len(fake.customers) == 1


# -- payment methods --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "brand", "last4"),
    [
        ("pm_card_visa", "visa", "4242"),
        ("pm_card_mastercard", "mastercard", "4444"),
        ("pm_card_amex", "amex", "8431"),
        ("pm_card_chargeDeclined", "visa", "0002"),
        ("pm_card_insufficientFunds", "visa", "9995"),
        ("pm_card_chargeDeclinedInsufficientFunds", "visa", "9995"),
        ("pm_card_authenticationRequired", "visa", "3184"),
        ("pm_card_processingError", "visa", "0119"),
    ],
)
async def test_every_test_token_attaches_as_a_card(
    fake: FakeProvider, token: str, brand: str, last4: str
) -> None:
    customer = await fake.create_customer(email="ann@example.com", name=None, idempotency_key="c")
    method = await fake.attach_payment_method(
        provider_customer_id=customer.provider_id, token=token
    )

    assert method.provider_id == "pm_fake_000001"
    assert (method.type, method.brand, method.last4) == ("card", brand, last4)
    assert (method.exp_month, method.exp_year) == (12, 2034)
    stored = fake.payment_methods[method.provider_id]
    assert (stored.token, stored.provider_customer_id) == (token, customer.provider_id)


def test_the_documented_tokens_are_all_accepted() -> None:
    assert set(FAKE_TEST_TOKENS) >= {
        "pm_card_visa",
        "pm_card_mastercard",
        "pm_card_amex",
        "pm_card_chargeDeclined",
        "pm_card_insufficientFunds",
        "pm_card_authenticationRequired",
        "pm_card_processingError",
    }


@pytest.mark.anyio
async def test_an_unknown_token_lists_the_accepted_ones_without_echoing_it(
    fake: FakeProvider,
) -> None:
    customer = await fake.create_customer(email="ann@example.com", name=None, idempotency_key="c")
    with pytest.raises(ProviderError) as raised:
        await fake.attach_payment_method(
            provider_customer_id=customer.provider_id, token="tok_chargeXX_SECRETSUFFIX"
        )

    error = raised.value
    assert not error.retryable
    assert error.field == "token"
    assert "tok_chargeXX" in str(error)
    assert "SECRETSUFFIX" not in str(error)
    assert all(token in str(error) for token in FAKE_TEST_TOKENS)
    assert fake.payment_methods == {}


@pytest.mark.anyio
@pytest.mark.parametrize("card_number", ["4242424242424242", "4000 0566 5566 5556"])
async def test_a_card_number_passed_as_a_token_is_never_echoed(
    fake: FakeProvider, card_number: str
) -> None:
    customer = await fake.create_customer(email="ann@example.com", name=None, idempotency_key="c")
    with pytest.raises(ProviderError) as raised:
        await fake.attach_payment_method(
            provider_customer_id=customer.provider_id, token=card_number
        )
    assert raised.value.field == "token"
    assert card_number[:4] not in str(raised.value)


@pytest.mark.anyio
async def test_a_short_unknown_token_is_shown_whole(fake: FakeProvider) -> None:
    customer = await fake.create_customer(email="ann@example.com", name=None, idempotency_key="c")
    with pytest.raises(ProviderError, match="'pm_card_vsa'"):
        await fake.attach_payment_method(
            provider_customer_id=customer.provider_id, token="pm_card_vsa"
        )


@pytest.mark.anyio
async def test_attach_to_an_unknown_customer_fails_for_good(fake: FakeProvider) -> None:
    with pytest.raises(ProviderError) as raised:
        await fake.attach_payment_method(provider_customer_id="cus_nope", token="pm_card_visa")
    assert not raised.value.retryable
    assert raised.value.field == "provider_customer_id"


@pytest.mark.anyio
async def test_a_detached_method_can_no_longer_be_charged_or_detached(
    fake: FakeProvider,
) -> None:
    customer_id, method_id = await customer_with_card(fake)
    await fake.detach_payment_method(provider_payment_method_id=method_id)

    assert fake.payment_methods[method_id].provider_customer_id is None
    with pytest.raises(ProviderError) as raised:
        await fake.charge(charge_request(customer_id, method_id))
    assert raised.value.field == "provider_payment_method_id"
    with pytest.raises(ProviderError):
        await fake.detach_payment_method(provider_payment_method_id=method_id)


@pytest.mark.anyio
async def test_detaching_an_unknown_method_fails(fake: FakeProvider) -> None:
    with pytest.raises(ProviderError) as raised:
        await fake.detach_payment_method(provider_payment_method_id="pm_nope")
    assert not raised.value.retryable
    assert raised.value.field == "provider_payment_method_id"


# -- charges: one test per token's path -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("token", ["pm_card_visa", "pm_card_mastercard", "pm_card_amex"])
async def test_good_cards_charge_successfully(fake: FakeProvider, token: str) -> None:
    customer_id, method_id = await customer_with_card(fake, token)
    result = await fake.charge(charge_request(customer_id, method_id))

    assert result == ChargeResult(provider_id="ch_fake_000001", status="succeeded")
    [recorded] = fake.charges
    assert recorded.result == result
    assert recorded.request.amount == 9900
    assert recorded.amount_refunded == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "failure_code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_insufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
async def test_declining_cards_return_a_failed_charge(
    fake: FakeProvider, token: str, failure_code: str
) -> None:
    customer_id, method_id = await customer_with_card(fake, token)
    result = await fake.charge(charge_request(customer_id, method_id))

    assert result.status == "failed"
    assert result.failure_code == failure_code
    assert result.failure_message
    assert result.provider_id == "ch_fake_000001"
    assert [c.result for c in fake.charges] == [result]


@pytest.mark.anyio
async def test_authentication_required_asks_for_3d_secure(fake: FakeProvider) -> None:
    customer_id, method_id = await customer_with_card(fake, "pm_card_authenticationRequired")
    result = await fake.charge(charge_request(customer_id, method_id))

    assert result.status == "requires_action"
    assert result.next_action_url == "https://fake.qzpay.local/3ds/ch_fake_000001"
    assert result.failure_code is None


@pytest.mark.parametrize(
    ("succeed", "status", "code"), [(True, "succeeded", None), (False, "failed", "card_declined")]
)
@pytest.mark.anyio
async def test_a_processing_charge_stays_processing_until_decided(
    fake: FakeProvider, succeed: bool, status: str, code: str | None
) -> None:
    customer_id, method_id = await customer_with_card(fake, "pm_card_processing")
    request = charge_request(customer_id, method_id)
    result = await fake.charge(request)
    assert result.status == "processing"
    looked_up = await fake.retrieve_charge(idempotency_key=request.idempotency_key)
    assert looked_up is not None
    assert looked_up.status == "processing"

    decided = fake.finish_processing(result.provider_id, succeed=succeed)
    assert (decided.status, decided.failure_code) == (status, code)
    again = await fake.retrieve_charge(idempotency_key=request.idempotency_key)
    assert again is not None
    assert again.status == status
    with pytest.raises(ValidationError, match="is not a processing charge"):
        fake.finish_processing(result.provider_id)


@pytest.mark.anyio
async def test_processing_error_fails_once_then_succeeds_on_retry_with_the_same_key(
    fake: FakeProvider,
) -> None:
    customer_id, method_id = await customer_with_card(fake, "pm_card_processingError")
    request = charge_request(customer_id, method_id, key="invoice-7")

    with pytest.raises(ProviderError) as raised:
        await fake.charge(request)
    assert raised.value.retryable
    assert fake.charges == []

    result = await fake.charge(request)
    assert result.status == "succeeded"
    assert await fake.charge(request) == result
    assert len(fake.charges) == 1


@pytest.mark.anyio
async def test_processing_error_fails_again_under_a_new_key(fake: FakeProvider) -> None:
    customer_id, method_id = await customer_with_card(fake, "pm_card_processingError")
    with pytest.raises(ProviderError):
        await fake.charge(charge_request(customer_id, method_id, key="first"))
    with pytest.raises(ProviderError) as raised:
        await fake.charge(charge_request(customer_id, method_id, key="second"))
    assert raised.value.retryable


@pytest.mark.anyio
async def test_a_retry_after_a_processing_error_must_keep_its_parameters(
    fake: FakeProvider,
) -> None:
    customer_id, method_id = await customer_with_card(fake, "pm_card_processingError")
    with pytest.raises(ProviderError):
        await fake.charge(charge_request(customer_id, method_id, key="k"))
    with pytest.raises(IdempotencyError):
        await fake.charge(charge_request(customer_id, method_id, key="k", amount=1))


@pytest.mark.anyio
@pytest.mark.parametrize("amount", [0, -100])
async def test_a_charge_must_be_for_a_positive_amount(fake: FakeProvider, amount: int) -> None:
    customer_id, method_id = await customer_with_card(fake)
    with pytest.raises(ProviderError) as raised:
        await fake.charge(charge_request(customer_id, method_id, amount=amount))
    assert raised.value.field == "amount"
    assert not raised.value.retryable
    assert fake.charges == []


@pytest.mark.anyio
async def test_a_payment_method_charges_only_its_own_customer(fake: FakeProvider) -> None:
    _, anns_method = await customer_with_card(fake, email="ann@example.com")
    bos_id, _ = await customer_with_card(fake, email="bo@example.com")

    with pytest.raises(ProviderError) as raised:
        await fake.charge(charge_request(bos_id, anns_method))
    assert raised.value.field == "provider_payment_method_id"
    assert fake.charges == []


@pytest.mark.anyio
async def test_a_charge_needs_an_explicit_payment_method(fake: FakeProvider) -> None:
    customer_id, _ = await customer_with_card(fake)
    with pytest.raises(ProviderError) as raised:
        await fake.charge(charge_request(customer_id, None))
    assert raised.value.field == "provider_payment_method_id"


@pytest.mark.anyio
async def test_a_charge_for_an_unknown_customer_fails(fake: FakeProvider) -> None:
    _, method_id = await customer_with_card(fake)
    with pytest.raises(ProviderError) as raised:
        await fake.charge(charge_request("cus_nope", method_id))
    assert raised.value.field == "provider_customer_id"


@pytest.mark.anyio
async def test_a_charge_refuses_a_malformed_currency(fake: FakeProvider) -> None:
    customer_id, method_id = await customer_with_card(fake)
    with pytest.raises(ProviderError) as raised:
        await fake.charge(charge_request(customer_id, method_id, currency="usd"))
    assert raised.value.field == "currency"


# -- idempotency ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_charge_replays_for_the_same_key_and_parameters(fake: FakeProvider) -> None:
    customer_id, method_id = await customer_with_card(fake)
    request = charge_request(customer_id, method_id, metadata={"order": "42"})

    first = await fake.charge(request)
    again = await fake.charge(charge_request(customer_id, method_id, metadata={"order": "42"}))

    assert again == first
    assert len(fake.charges) == 1


@pytest.mark.anyio
async def test_a_declined_charge_replays_its_decline(fake: FakeProvider) -> None:
    customer_id, method_id = await customer_with_card(fake, "pm_card_chargeDeclined")
    request = charge_request(customer_id, method_id)

    assert await fake.charge(request) == await fake.charge(request)
    assert len(fake.charges) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("amount", "currency", "order"),
    [(100, "USD", "42"), (9900, "EUR", "42"), (9900, "USD", "43")],
    ids=["other-amount", "other-currency", "other-metadata"],
)
async def test_a_charge_refuses_the_same_key_with_other_parameters(
    fake: FakeProvider, amount: int, currency: str, order: str
) -> None:
    customer_id, method_id = await customer_with_card(fake)
    await fake.charge(charge_request(customer_id, method_id, metadata={"order": "42"}))
    other = charge_request(
        customer_id, method_id, amount=amount, currency=currency, metadata={"order": order}
    )

    with pytest.raises(IdempotencyError) as raised:
        await fake.charge(other)
    assert raised.value.field == "idempotency_key"
    assert len(fake.charges) == 1


@pytest.mark.anyio
async def test_a_key_used_for_a_charge_cannot_be_reused_for_a_refund(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake)
    with pytest.raises(IdempotencyError, match="charge"):
        await fake.refund(refund_request(charge_id, 100, key="order-42"))
    assert fake.refunds == []


@pytest.mark.anyio
async def test_concurrent_charges_with_one_key_charge_once(fake: FakeProvider) -> None:
    customer_id, method_id = await customer_with_card(fake)
    request = charge_request(customer_id, method_id)
    results: list[ChargeResult] = []

    async def attempt() -> None:
        results.append(await fake.charge(request))

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(attempt)

    assert len(results) == 20
    assert len(set(results)) == 1
    assert len(fake.charges) == 1


# -- refunds ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_partial_refunds_may_add_up_to_the_whole_charge(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake, amount=9900)

    first = await fake.refund(refund_request(charge_id, 1500, "r1"))
    rest = await fake.refund(refund_request(charge_id, 8400, "r2"))

    assert first == RefundResult(provider_id="re_fake_000001", status="succeeded")
    assert rest.provider_id == "re_fake_000002"
    assert fake.charges[0].amount_refunded == 9900
    assert [r.result for r in fake.refunds] == [first, rest]


@pytest.mark.anyio
async def test_a_refund_never_exceeds_what_is_left_of_the_charge(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake, amount=9900)
    await fake.refund(refund_request(charge_id, 9000, "r1"))

    with pytest.raises(ProviderError) as raised:
        await fake.refund(refund_request(charge_id, 901, "r2"))
    assert raised.value.field == "amount"
    assert not raised.value.retryable
    assert "900" in str(raised.value)
    assert fake.charges[0].amount_refunded == 9000


@pytest.mark.anyio
async def test_a_first_refund_above_the_charge_is_refused(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake, amount=500)
    with pytest.raises(ProviderError):
        await fake.refund(refund_request(charge_id, 501, "r1"))
    assert fake.refunds == []


@pytest.mark.anyio
async def test_refunds_never_exceed_the_charge_under_concurrency(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake, amount=9900)
    outcomes: list[str] = []

    async def attempt(n: int) -> None:
        try:
            await fake.refund(refund_request(charge_id, 1500, f"r{n}"))
        except ProviderError:
            outcomes.append("refused")
        else:
            outcomes.append("refunded")

    async with anyio.create_task_group() as tasks:
        for n in range(10):
            tasks.start_soon(attempt, n)

    assert outcomes.count("refunded") == 6
    assert fake.charges[0].amount_refunded == 9000


@pytest.mark.anyio
@pytest.mark.parametrize("token", ["pm_card_chargeDeclined", "pm_card_authenticationRequired"])
async def test_only_a_succeeded_charge_can_be_refunded(fake: FakeProvider, token: str) -> None:
    customer_id, method_id = await customer_with_card(fake, token)
    result = await fake.charge(charge_request(customer_id, method_id))

    with pytest.raises(ProviderError) as raised:
        await fake.refund(refund_request(result.provider_id, 100, "r1"))
    assert raised.value.field == "provider_payment_id"
    assert fake.refunds == []


@pytest.mark.anyio
async def test_a_refund_of_an_unknown_charge_fails(fake: FakeProvider) -> None:
    with pytest.raises(ProviderError) as raised:
        await fake.refund(refund_request("ch_nope", 100, "r1"))
    assert raised.value.field == "provider_payment_id"


@pytest.mark.anyio
async def test_a_refund_must_be_in_the_charges_currency(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake)
    with pytest.raises(ProviderError) as raised:
        await fake.refund(refund_request(charge_id, 100, "r1", currency="EUR"))
    assert raised.value.field == "currency"


@pytest.mark.anyio
async def test_a_replayed_refund_is_not_counted_twice(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake, amount=9900)
    request = refund_request(charge_id, 5000, "r1")

    first = await fake.refund(request)
    assert await fake.refund(request) == first
    assert fake.charges[0].amount_refunded == 5000
    assert len(fake.refunds) == 1
    with pytest.raises(IdempotencyError):
        await fake.refund(refund_request(charge_id, 4000, "r1"))


# -- fault injection --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fail_next_raises_once_then_the_call_works(fake: FakeProvider) -> None:
    customer_id, method_id = await customer_with_card(fake)
    timeout = ProviderError("gateway timeout", retryable=True)
    fake.fail_next("charge", timeout)
    request = charge_request(customer_id, method_id)

    with pytest.raises(ProviderError) as raised:
        await fake.charge(request)
    assert raised.value is timeout
    assert fake.charges == []

    assert (await fake.charge(request)).status == "succeeded"


@pytest.mark.anyio
async def test_injected_faults_queue_per_operation_in_order(fake: FakeProvider) -> None:
    first = ProviderError("first", retryable=True)
    second = ProviderError("second")
    fake.fail_next("create_customer", first)
    fake.fail_next("create_customer", second)

    for expected in (first, second):
        with pytest.raises(ProviderError) as raised:
            await fake.create_customer(email="a@example.com", name=None, idempotency_key="k")
        assert raised.value is expected
    customer = await fake.create_customer(email="b@example.com", name=None, idempotency_key="k")
    assert customer.provider_id == "cus_fake_000001"


@pytest.mark.anyio
async def test_fail_next_covers_attaching(fake: FakeProvider) -> None:
    customer_id, _ = await customer_with_card(fake)
    fake.fail_next("attach_payment_method", ProviderError("down", retryable=True))

    with pytest.raises(ProviderError, match="down"):
        await fake.attach_payment_method(provider_customer_id=customer_id, token="pm_card_visa")
    assert len(fake.payment_methods) == 1


@pytest.mark.anyio
async def test_fail_next_covers_refunds(fake: FakeProvider) -> None:
    charge_id = await succeeded_charge(fake)
    fake.fail_next("refund", ProviderError("down", retryable=True))

    with pytest.raises(ProviderError, match="down"):
        await fake.refund(refund_request(charge_id, 100, "r1"))
    assert fake.charges[0].amount_refunded == 0
    assert (await fake.refund(refund_request(charge_id, 100, "r1"))).status == "succeeded"


def test_fail_next_refuses_an_unknown_operation(fake: FakeProvider) -> None:
    with pytest.raises(ValidationError) as raised:
        fake.fail_next("teleport", ProviderError("x"))  # type: ignore[arg-type]
    assert raised.value.field == "operation"


# -- checkout and subscriptions ---------------------------------------------------------------


@pytest.mark.anyio
async def test_checkout_returns_a_fake_url_and_replays_for_its_key(fake: FakeProvider) -> None:
    request = CheckoutRequest(
        amount=2900,
        currency="USD",
        success_url="https://app.example/ok",
        cancel_url="https://app.example/cancel",
        idempotency_key="checkout-1",
    )
    checkout = await fake.create_checkout(request)

    assert checkout.provider_id == "cs_fake_000001"
    assert checkout.url == "https://fake.qzpay.local/checkout/cs_fake_000001"
    assert await fake.create_checkout(request) == checkout


@pytest.mark.anyio
async def test_a_subscription_is_created_once_per_key_and_moves_only_when_told(
    fake: FakeProvider,
) -> None:
    customer_id, _ = await customer_with_card(fake)
    trial_end = datetime(2025, 2, 1, tzinfo=UTC)
    request = ProviderSubscriptionRequest(
        provider_customer_id=customer_id,
        provider_price_id="price_1",
        quantity=2,
        idempotency_key="s1",
        trial_end=trial_end,
    )

    created = await fake.create_subscription(request)

    assert created.status == "trialing"
    assert created.trial_end == trial_end
    assert created.idempotency_key == "s1"
    assert await fake.create_subscription(request) == created
    assert list(fake.subscriptions) == [created.provider_id]
    with pytest.raises(IdempotencyError):
        await fake.create_subscription(attrs.evolve(request, quantity=3))
    end = datetime(2025, 3, 1, tzinfo=UTC)
    moved = fake.update_subscription(created.provider_id, status="past_due", current_period_end=end)
    assert await fake.retrieve_subscription(provider_id=created.provider_id) == moved
    assert (moved.status, moved.current_period_end) == ("past_due", end)
    assert await fake.retrieve_subscription(provider_id="sub_none") is None
    with pytest.raises(ValidationError, match="status"):
        fake.update_subscription(created.provider_id, status="gone")


@pytest.mark.anyio
async def test_a_subscription_cancels_at_period_end_or_now_and_a_second_cancel_answers_it(
    fake: FakeProvider,
) -> None:
    customer_id, _ = await customer_with_card(fake)
    created = await fake.create_subscription(
        ProviderSubscriptionRequest(
            provider_customer_id=customer_id,
            provider_price_id="price_1",
            quantity=1,
            idempotency_key="s1",
        )
    )
    assert created.status == "active"

    later = await fake.cancel_subscription(
        provider_id=created.provider_id, at_period_end=True, idempotency_key="c1"
    )
    assert (later.status, later.cancel_at_period_end) == ("active", True)
    now = await fake.cancel_subscription(
        provider_id=created.provider_id, at_period_end=False, idempotency_key="c2"
    )
    assert now.status == "canceled"
    again = await fake.cancel_subscription(
        provider_id=created.provider_id, at_period_end=False, idempotency_key="c3"
    )
    assert again == now
    with pytest.raises(ProviderError):
        await fake.cancel_subscription(
            provider_id="sub_none", at_period_end=False, idempotency_key="c4"
        )


@pytest.mark.anyio
async def test_a_subscription_for_an_unknown_customer_is_refused(fake: FakeProvider) -> None:
    request = ProviderSubscriptionRequest(
        provider_customer_id="cus_none",
        provider_price_id="price_1",
        quantity=1,
        idempotency_key="s1",
    )
    with pytest.raises(ProviderError, match="customer"):
        await fake.create_subscription(request)


@pytest.mark.anyio
async def test_a_charges_refunds_are_listed_with_their_amounts_and_keys(
    fake: FakeProvider,
) -> None:
    customer_id, method_id = await customer_with_card(fake)
    charge = await fake.charge(charge_request(customer_id, method_id))
    other = await fake.charge(charge_request(customer_id, method_id, key="other"))
    first = await fake.refund(refund_request(charge.provider_id, 100, "refund-1"))
    await fake.refund(refund_request(other.provider_id, 50, "refund-other"))
    second = await fake.refund(refund_request(charge.provider_id, 200, "refund-2"))

    listed = await fake.list_refunds(provider_payment_id=charge.provider_id, currency="USD")

    assert [(r.provider_id, r.amount, r.idempotency_key) for r in listed] == [
        (first.provider_id, 100, "refund-1"),
        (second.provider_id, 200, "refund-2"),
    ]
    assert await fake.list_refunds(provider_payment_id="ch_none", currency="USD") == []


# -- webhooks ---------------------------------------------------------------------------------


def event_body(**overrides: object) -> bytes:
    body = {
        "id": "evt_fake_1",
        "type": "payment.succeeded",
        "data": {"provider_payment_id": "ch_fake_000001"},
        "created": int(NOW.timestamp()),
        **overrides,
    }
    return json.dumps(body).encode()


def test_sign_webhook_uses_stripes_scheme(fake: FakeProvider) -> None:
    payload = event_body()
    header = fake.sign_webhook(payload, NOW)["fake-signature"]
    t = int(NOW.timestamp())
    expected = hmac.new(b"whsec_fake", f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"


def test_a_good_signature_yields_a_neutral_event(fake: FakeProvider) -> None:
    payload = event_body()
    event = fake.verify_webhook(payload=payload, headers=fake.sign_webhook(payload, NOW), now=NOW)

    assert event.provider == "fake"
    assert event.provider_event_id == "evt_fake_1"
    assert event.type == event.provider_type == "payment.succeeded"
    assert event.occurred_at == NOW
    assert event.data == {"provider_payment_id": "ch_fake_000001"}


def test_the_header_name_is_case_insensitive(fake: FakeProvider) -> None:
    payload = event_body()
    [(_, value)] = fake.sign_webhook(payload, NOW).items()
    event = fake.verify_webhook(payload=payload, headers={"Fake-Signature": value}, now=NOW)
    assert event.provider_event_id == "evt_fake_1"


def test_a_tampered_payload_is_refused(fake: FakeProvider) -> None:
    headers = fake.sign_webhook(event_body(), NOW)
    with pytest.raises(SignatureError):
        fake.verify_webhook(payload=event_body(type="payment.refunded"), headers=headers, now=NOW)


def test_a_signature_made_with_another_secret_is_refused_without_echoing_it() -> None:
    payload = event_body()
    headers = FakeProvider(webhook_secret="whsec_attacker").sign_webhook(payload, NOW)
    receiver = FakeProvider(webhook_secret="whsec_receiver_secret")

    with pytest.raises(SignatureError) as raised:
        receiver.verify_webhook(payload=payload, headers=headers, now=NOW)
    assert "whsec" not in str(raised.value)
    assert headers["fake-signature"].split("v1=")[1] not in str(raised.value)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"fake-signature": ""},
        {"fake-signature": "v1=abc"},
        {"fake-signature": "t=1735732800"},
        {"fake-signature": "t=soon,v1=abc"},
        {"fake-signature": "t=1735732800,v1=nothex\u00e9"},
    ],
)
def test_a_missing_or_malformed_header_is_refused(
    fake: FakeProvider, headers: dict[str, str]
) -> None:
    with pytest.raises(SignatureError):
        fake.verify_webhook(payload=event_body(), headers=headers, now=NOW)


def test_any_matching_v1_signature_is_accepted_as_during_secret_rotation() -> None:
    payload = event_body()
    old = FakeProvider(webhook_secret="whsec_old").sign_webhook(payload, NOW)["fake-signature"]
    new = FakeProvider(webhook_secret="whsec_new").sign_webhook(payload, NOW)["fake-signature"]
    header = f"{old},v1={new.split('v1=')[1]}"

    event = FakeProvider(webhook_secret="whsec_new").verify_webhook(
        payload=payload, headers={"fake-signature": header}, now=NOW
    )
    assert event.type == "payment.succeeded"


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (timedelta(minutes=5), True),
        (timedelta(minutes=-5), True),
        (timedelta(minutes=5, seconds=1), False),
        (timedelta(minutes=-5, seconds=-1), False),
        (timedelta(days=1), False),
    ],
    ids=["expires-at-edge", "future-at-edge", "expired", "from-the-future", "replayed-next-day"],
)
def test_the_timestamp_must_be_within_the_tolerance_either_way(
    fake: FakeProvider, offset: timedelta, accepted: bool
) -> None:
    payload = event_body()
    headers = fake.sign_webhook(payload, NOW)
    now = NOW + offset

    if accepted:
        assert fake.verify_webhook(payload=payload, headers=headers, now=now)
    else:
        with pytest.raises(SignatureError):
            fake.verify_webhook(payload=payload, headers=headers, now=now)


def test_a_zero_tolerance_means_exactly_now_not_no_check() -> None:
    fake = FakeProvider(webhook_tolerance=timedelta(0), namespace="")
    payload = event_body()
    headers = fake.sign_webhook(payload, NOW)

    assert fake.verify_webhook(payload=payload, headers=headers, now=NOW)
    with pytest.raises(SignatureError):
        fake.verify_webhook(payload=payload, headers=headers, now=NOW + timedelta(seconds=1))


def test_a_signed_body_that_is_not_an_event_is_a_validation_error(fake: FakeProvider) -> None:
    payload = json.dumps({"id": "evt_1", "data": {}}).encode()
    with pytest.raises(ValidationError) as raised:
        fake.verify_webhook(payload=payload, headers=fake.sign_webhook(payload, NOW), now=NOW)
    assert raised.value.field == "payload"


def test_signing_refuses_a_naive_timestamp(fake: FakeProvider) -> None:
    with pytest.raises(ValidationError) as raised:
        fake.sign_webhook(event_body(), datetime(2025, 1, 1))
    assert raised.value.field == "timestamp"


def test_the_constructor_refuses_a_negative_tolerance_and_an_empty_secret() -> None:
    with pytest.raises(ValidationError):
        FakeProvider(webhook_tolerance=timedelta(seconds=-1))
    with pytest.raises(ValidationError):
        FakeProvider(webhook_secret="")


def test_each_provider_instance_namespaces_its_ids_so_a_new_run_never_reuses_one() -> None:
    first, second = FakeProvider(), FakeProvider()
    assert first._next_id("pm") != second._next_id("pm")
    assert FakeProvider(namespace="")._next_id("pm") == "pm_fake_000001"
    with pytest.raises(ValidationError) as caught:
        FakeProvider(namespace="Bad Space")
    assert caught.value.field == "namespace"
