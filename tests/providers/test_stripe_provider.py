"""StripeProvider with the real stripe SDK against the loopback fake of Stripe's API.

Each test reads what the SDK really sent (path, form, ``Idempotency-Key``,
``Stripe-Version``) and runs on asyncio and trio; faults (429, 500, a timeout, a dropped
connection, a cut body) are injected at the HTTP server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import stripe

from qzpay.adapters.stripe import (
    DEFAULT_API_VERSION,
    StripeProvider,
    StripeProviderError,
)
from qzpay.adapters.stripe import errors as stripe_errors
from qzpay.adapters.stripe import results as stripe_results
from qzpay.contracts.provider import (
    FAILURE_CODES,
    SUBSCRIPTION_STATUSES,
    ChargeRequest,
    CheckoutRequest,
    PaymentProvider,
    ProviderSubscription,
    ProviderSubscriptionRequest,
    RefundRequest,
)
from qzpay.errors import ProviderError, SignatureError, ValidationError
from tests.providers.loopback import Fault, LoopbackAPI, Request
from tests.providers.stripe_api import API_KEY, StripeAPI

WEBHOOK_SECRET = "whsec_fake_webhook_secret_0123456789"
NOW = datetime(2028, 1, 31, 9, tzinfo=UTC)

on_both_loops = pytest.mark.anyio
pytestmark = pytest.mark.filterwarnings(
    # stripe's HTTPXClient hands httpx the form body as ``data=``; httpx prefers ``content=``.
    "ignore:Use 'content=<...>':DeprecationWarning"
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def fake() -> StripeAPI:
    return StripeAPI()


@pytest.fixture
def api(fake: StripeAPI) -> Iterator[LoopbackAPI]:
    served = fake.serve()
    yield served
    served.stop()


def provider_for(api: LoopbackAPI, **options: Any) -> StripeProvider:
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "webhook_secret": WEBHOOK_SECRET,
        "api_base": api.url,
        **options,
    }
    return StripeProvider(**settings)


@pytest.fixture
def provider(api: LoopbackAPI) -> StripeProvider:
    return provider_for(api)


async def customer_with_card(
    provider: StripeProvider, token: str = "pm_card_visa"
) -> tuple[str, str]:
    customer = await provider.create_customer(
        email="ann@example.com", name="Ann", idempotency_key=f"cus-{token}"
    )
    card = await provider.attach_payment_method(
        provider_customer_id=customer.provider_id, token=token
    )
    return customer.provider_id, card.provider_id


def charge_of(
    customer: str, card: str, key: str = "qzpay-payment-1", **extra: Any
) -> ChargeRequest:
    return ChargeRequest(
        amount=2900,
        currency="USD",
        provider_customer_id=customer,
        provider_payment_method_id=card,
        idempotency_key=key,
        **extra,
    )


def posted(api: LoopbackAPI, path: str) -> list[Request]:
    return api.sent("POST", path)


# -- construction -----------------------------------------------------------------------------


def test_it_is_a_payment_provider_with_every_capability() -> None:
    provider = StripeProvider(api_key="sk_test_1", webhook_secret="whsec_1")
    assert isinstance(provider, PaymentProvider)
    caps = provider.capabilities
    assert provider.name == "stripe"
    assert all(
        (caps.payment_methods, caps.refunds, caps.three_d_secure, caps.subscriptions,
         caps.checkout, caps.webhooks)
    )  # fmt: skip
    assert stripe.enable_telemetry is False


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"api_key": ""}, "api_key"),
        ({"webhook_secret": " "}, "webhook_secret"),
        ({"timeout": 0}, "timeout"),
        ({"max_network_retries": -1}, "max_network_retries"),
        ({"api_base": "ftp://x"}, "api_base"),
        ({"webhook_tolerance": timedelta(seconds=-1)}, "webhook_tolerance"),
    ],
)
def test_bad_configuration_is_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    settings: dict[str, Any] = {"api_key": "sk_test_1", "webhook_secret": "whsec_1", **options}
    with pytest.raises(ValidationError) as raised:
        StripeProvider(**settings)
    assert raised.value.field == field


def test_repr_shows_no_secret() -> None:
    shown = repr(StripeProvider(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET))
    assert API_KEY not in shown
    assert WEBHOOK_SECRET not in shown


# -- what the SDK sends -------------------------------------------------------------------------


@on_both_loops
async def test_a_customer_is_created_under_qzpays_key_on_the_pinned_version(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    customer = await provider.create_customer(
        email="ann@example.com", name="Ann", idempotency_key="qzpay-customer-1"
    )

    [sent] = posted(api, "/v1/customers")
    assert sent.form == {"email": "ann@example.com", "name": "Ann"}
    assert sent.header("Idempotency-Key") == "qzpay-customer-1"
    assert sent.header("Stripe-Version") == DEFAULT_API_VERSION
    assert sent.header("Authorization") == f"Bearer {API_KEY}"
    assert "platform" not in json.loads(sent.header("X-Stripe-Client-User-Agent") or "{}")
    assert sent.header("X-Stripe-Client-Telemetry") is None
    assert customer.provider_id.startswith("cus_")


@on_both_loops
async def test_attaching_a_test_token_makes_a_payment_method_with_its_card(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    customer = await provider.create_customer(email="a@x.io", name=None, idempotency_key="k")
    method = await provider.attach_payment_method(
        provider_customer_id=customer.provider_id, token="pm_card_mastercard"
    )

    [sent] = posted(api, "/v1/payment_methods/pm_card_mastercard/attach")
    assert sent.form == {"customer": customer.provider_id}
    assert method.provider_id.startswith("pm_")
    assert method.provider_id != "pm_card_mastercard"
    assert (method.type, method.brand, method.last4) == ("card", "mastercard", "4444")
    assert (method.exp_month, method.exp_year) == (12, 2034)
    assert fake.payment_methods[method.provider_id]["customer"] == customer.provider_id


@on_both_loops
async def test_detach_detaches_and_a_second_detach_is_refused_not_retryable(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    _, card = await customer_with_card(provider)
    await provider.detach_payment_method(provider_payment_method_id=card)
    assert fake.payment_methods[card]["customer"] is None

    with pytest.raises(StripeProviderError) as raised:
        await provider.detach_payment_method(provider_payment_method_id=card)
    assert raised.value.retryable is False
    assert raised.value.http_status == 400
    assert raised.value.request_id is not None
    assert raised.value.request_id in str(raised.value)
    assert len(posted(api, f"/v1/payment_methods/{card}/detach")) == 2


@on_both_loops
async def test_a_charge_is_a_confirmed_payment_intent_with_qzpays_key_in_metadata(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    customer, card = await customer_with_card(provider)
    result = await provider.charge(
        charge_of(customer, card, description="Order 42", metadata={"order": "42"})
    )

    [sent] = posted(api, "/v1/payment_intents")
    assert sent.form == {
        "amount": "2900",
        "currency": "usd",
        "customer": customer,
        "payment_method": card,
        "confirm": "true",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "description": "Order 42",
        "metadata[order]": "42",
        "metadata[qzpay_key]": "qzpay-payment-1",
    }
    assert sent.header("Idempotency-Key") == "qzpay-payment-1"
    assert result.status == "succeeded"
    assert result.provider_id.startswith("pi_")


@on_both_loops
async def test_an_off_session_charge_says_so_and_a_card_needing_3ds_is_declined(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    customer, card = await customer_with_card(provider, "pm_card_authenticationRequired")
    result = await provider.charge(charge_of(customer, card, off_session=True))

    assert posted(api, "/v1/payment_intents")[0].form["off_session"] == "true"
    assert result.status == "failed"
    assert result.failure_code == "authentication_failed"
    assert result.provider_failure_code == "authentication_required"


@on_both_loops
@pytest.mark.parametrize(
    ("token", "neutral", "stripes"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
        ("pm_card_chargeDeclinedFraudulent", "fraud_suspected", "fraudulent"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
    ],
)
async def test_a_decline_is_a_failed_result_with_the_neutral_and_stripes_codes(
    provider: StripeProvider, fake: StripeAPI, token: str, neutral: str, stripes: str
) -> None:
    customer, card = await customer_with_card(provider, token)
    result = await provider.charge(charge_of(customer, card))

    assert (result.status, result.failure_code, result.provider_failure_code) == (
        "failed",
        neutral,
        stripes,
    )
    assert neutral in FAILURE_CODES
    assert result.provider_id in fake.payment_intents  # from the error's payment_intent
    assert result.failure_message
    again = await provider.retrieve_charge(idempotency_key="qzpay-payment-1")
    assert again is not None
    assert (again.status, again.failure_code, again.provider_id) == (
        "failed",
        neutral,
        result.provider_id,
    )


@on_both_loops
async def test_3ds_gives_requires_action_then_retrieve_sees_the_outcome(
    provider: StripeProvider, fake: StripeAPI
) -> None:
    customer, card = await customer_with_card(provider, "pm_card_authenticationRequired")
    waiting = await provider.charge(charge_of(customer, card))
    failing = await provider.charge(charge_of(customer, card, key="qzpay-payment-2"))

    assert waiting.status == "requires_action"
    assert waiting.client_secret == fake.payment_intents[waiting.provider_id]["client_secret"]
    assert waiting.next_action_url is None  # no return_url: Stripe.js handles it
    fake.complete_authentication(waiting.provider_id)
    fake.complete_authentication(failing.provider_id, succeed=False)

    done = await provider.retrieve_charge(idempotency_key="x", provider_id=waiting.provider_id)
    failed = await provider.retrieve_charge(idempotency_key="qzpay-payment-2")
    assert done is not None
    assert done.status == "succeeded"
    assert failed is not None
    assert (failed.status, failed.failure_code) == ("failed", "authentication_failed")


@on_both_loops
async def test_the_same_key_replays_and_with_other_parameters_is_refused(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    customer, card = await customer_with_card(provider)
    first = await provider.charge(charge_of(customer, card))
    second = await provider.charge(charge_of(customer, card))

    assert first == second
    assert len(fake.payment_intents) == 1
    with pytest.raises(StripeProviderError) as raised:
        await provider.charge(attrs_evolve_amount(charge_of(customer, card), 100))
    assert raised.value.retryable is False
    assert raised.value.http_status == 400
    assert len(fake.payment_intents) == 1


def attrs_evolve_amount(request: ChargeRequest, amount: int) -> ChargeRequest:
    import attrs

    return attrs.evolve(request, amount=amount)


@on_both_loops
async def test_retrieve_charge_is_none_for_a_key_or_id_stripe_never_saw(
    provider: StripeProvider,
) -> None:
    assert await provider.retrieve_charge(idempotency_key="qzpay-payment-none") is None
    assert await provider.retrieve_charge(idempotency_key="k", provider_id="pi_never") is None


@on_both_loops
async def test_a_payment_intent_search_has_not_indexed_yet_is_not_found_until_it_has(
    api: LoopbackAPI, fake: StripeAPI
) -> None:
    fake.lagging_search = True
    provider = provider_for(api)
    customer, card = await customer_with_card(provider)
    made = await provider.charge(charge_of(customer, card))

    assert await provider.retrieve_charge(idempotency_key="qzpay-payment-1") is None
    # What qzpay does next: the same attempt again, same key; Stripe replays, no new charge.
    assert await provider.charge(charge_of(customer, card)) == made
    fake.index_search()
    found = await provider.retrieve_charge(idempotency_key="qzpay-payment-1")
    assert found == made
    assert len(fake.payment_intents) == 1
    [search] = api.sent("GET", "/v1/payment_intents/search")[-1:]
    assert search.query["query"] == "metadata['qzpay_key']:'qzpay-payment-1'"


# -- faults -------------------------------------------------------------------------------------


@on_both_loops
async def test_a_429_is_retried_by_the_adapter_with_the_same_key(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    customer, card = await customer_with_card(provider)
    api.inject(Fault(status=429, body=_rate_limited(), headers={"Retry-After": "0"}),
               path="/v1/payment_intents")  # fmt: skip

    result = await provider.charge(charge_of(customer, card))

    sent = posted(api, "/v1/payment_intents")
    assert [r.header("Idempotency-Key") for r in sent] == ["qzpay-payment-1"] * 2
    assert result.status == "succeeded"
    assert len(fake.payment_intents) == 1


@on_both_loops
async def test_429s_beyond_the_retries_are_a_retryable_error(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stripe_errors, "RATE_LIMIT_INITIAL_WAIT", 0.01)  # backoff, quickly
    customer, card = await customer_with_card(provider)
    api.inject(Fault(status=429, body=_rate_limited()), path="/v1/payment_intents", times=3)

    with pytest.raises(ProviderError) as raised:
        await provider.charge(charge_of(customer, card))

    assert raised.value.retryable is True
    assert len(posted(api, "/v1/payment_intents")) == 3  # one try and two retries
    assert {r.header("Idempotency-Key") for r in posted(api, "/v1/payment_intents")} == {
        "qzpay-payment-1"
    }
    assert fake.payment_intents == {}


@on_both_loops
async def test_a_429_stripe_says_not_to_retry_is_not_retried(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    customer, card = await customer_with_card(provider)
    api.inject(
        Fault(status=429, body=_rate_limited(), headers={"Stripe-Should-Retry": "false"}),
        path="/v1/payment_intents",
    )
    with pytest.raises(ProviderError) as raised:
        await provider.charge(charge_of(customer, card))
    assert raised.value.retryable is False
    assert len(posted(api, "/v1/payment_intents")) == 1


@on_both_loops
async def test_a_500_is_retried_by_the_sdk_with_the_same_key(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    customer, card = await customer_with_card(provider)
    api.inject(Fault(status=500, body=_server_error()), path="/v1/payment_intents")

    result = await provider.charge(charge_of(customer, card))

    sent = posted(api, "/v1/payment_intents")
    assert [r.header("Idempotency-Key") for r in sent] == ["qzpay-payment-1"] * 2
    assert result.status == "succeeded"
    assert len(fake.payment_intents) == 1


@on_both_loops
async def test_500s_beyond_the_sdks_retries_are_retryable_and_name_the_request(
    api: LoopbackAPI, fake: StripeAPI
) -> None:
    provider = provider_for(api, max_network_retries=0)
    customer, card = await customer_with_card(provider)
    api.inject(
        Fault(status=500, body=_server_error(), headers={"Request-Id": "req_injected500"}),
        path="/v1/payment_intents",
    )
    with pytest.raises(StripeProviderError) as raised:
        await provider.charge(charge_of(customer, card))
    assert raised.value.retryable is True
    assert raised.value.request_id == "req_injected500"
    assert "req_injected500" in str(raised.value)


@on_both_loops
async def test_a_timeout_is_retryable_and_the_charge_is_then_found_by_its_key(
    api: LoopbackAPI, fake: StripeAPI
) -> None:
    provider = provider_for(api, timeout=0.3, max_network_retries=0)
    customer, card = await customer_with_card(provider)
    api.inject(Fault(delay=1.0), path="/v1/payment_intents")

    with pytest.raises(ProviderError) as raised:
        await provider.charge(charge_of(customer, card))

    assert raised.value.retryable is True
    await _until(lambda: len(fake.payment_intents) == 1)  # Stripe finished it meanwhile
    found = await provider.retrieve_charge(idempotency_key="qzpay-payment-1")
    assert found is not None
    assert found.status == "succeeded"
    assert await provider.charge(charge_of(customer, card)) == found  # replayed, not charged
    assert len(fake.payment_intents) == 1


@on_both_loops
async def test_a_connection_dropped_after_the_work_is_retryable_and_never_charges_twice(
    api: LoopbackAPI, fake: StripeAPI
) -> None:
    provider = provider_for(api, max_network_retries=0)
    customer, card = await customer_with_card(provider)
    api.inject(Fault(after_work=True, drop=True), path="/v1/payment_intents")

    with pytest.raises(ProviderError) as raised:
        await provider.charge(charge_of(customer, card))

    assert raised.value.retryable is True
    assert "may or may not" in str(raised.value)
    found = await provider.retrieve_charge(idempotency_key="qzpay-payment-1")
    assert found is not None
    assert found.status == "succeeded"
    assert len(fake.payment_intents) == 1


@on_both_loops
async def test_the_sdk_retries_a_dropped_connection_and_stripe_replays_the_charge(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    customer, card = await customer_with_card(provider)
    api.inject(Fault(after_work=True, drop=True), path="/v1/payment_intents")

    result = await provider.charge(charge_of(customer, card))

    sent = posted(api, "/v1/payment_intents")
    assert [r.header("Idempotency-Key") for r in sent] == ["qzpay-payment-1"] * 2
    assert result.status == "succeeded"
    assert len(fake.payment_intents) == 1


@on_both_loops
async def test_a_cut_body_is_retryable_and_a_retry_replays_the_charge(
    api: LoopbackAPI, fake: StripeAPI
) -> None:
    provider = provider_for(api, max_network_retries=0)
    customer, card = await customer_with_card(provider)
    api.inject(Fault(cut=True), path="/v1/payment_intents")

    with pytest.raises(ProviderError) as raised:
        await provider.charge(charge_of(customer, card))

    assert raised.value.retryable is True
    result = await provider.charge(charge_of(customer, card))  # qzpay's own retry: same key
    assert result.status == "succeeded"
    assert len(fake.payment_intents) == 1


# -- refunds ------------------------------------------------------------------------------------


async def paid(provider: StripeProvider) -> str:
    customer, card = await customer_with_card(provider)
    return (await provider.charge(charge_of(customer, card))).provider_id


@on_both_loops
async def test_a_partial_refund_carries_qzpays_key_and_is_found_by_it(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    intent = await paid(provider)
    refund = await provider.refund(
        RefundRequest(
            provider_payment_id=intent,
            amount=900,
            currency="USD",
            idempotency_key="qzpay-refund-1",
            reason="requested_by_customer",
        )
    )
    other = await provider.refund(
        RefundRequest(
            provider_payment_id=intent,
            amount=100,
            currency="USD",
            idempotency_key="qzpay-refund-2",
            reason="broken on arrival",
        )
    )

    first, second = posted(api, "/v1/refunds")
    assert first.form == {
        "payment_intent": intent,
        "amount": "900",
        "reason": "requested_by_customer",
        "metadata[qzpay_key]": "qzpay-refund-1",
    }
    assert first.header("Idempotency-Key") == "qzpay-refund-1"
    assert second.form["metadata[qzpay_reason]"] == "broken on arrival"
    assert "reason" not in second.form
    assert refund.status == "succeeded"
    assert await provider.retrieve_refund(idempotency_key="qzpay-refund-1") == refund
    assert (
        await provider.retrieve_refund(idempotency_key="k", provider_id=other.provider_id) == other
    )
    assert await provider.retrieve_refund(idempotency_key="qzpay-refund-none") is None
    assert await provider.retrieve_refund(idempotency_key="k", provider_id="re_never") is None


@on_both_loops
async def test_refunding_more_than_is_left_is_refused(provider: StripeProvider) -> None:
    intent = await paid(provider)
    await provider.refund(
        RefundRequest(provider_payment_id=intent, amount=2000, currency="USD",
                      idempotency_key="qzpay-refund-1")
    )  # fmt: skip
    with pytest.raises(StripeProviderError) as raised:
        await provider.refund(
            RefundRequest(provider_payment_id=intent, amount=1000, currency="USD",
                          idempotency_key="qzpay-refund-2")
        )  # fmt: skip
    assert raised.value.retryable is False
    assert raised.value.stripe_code == "amount_too_large"
    assert raised.value.field == "amount"


@on_both_loops
async def test_list_refunds_reads_every_page_of_the_intents_refunds_oldest_first(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    intent = await paid(provider)
    mine = await provider.refund(
        RefundRequest(provider_payment_id=intent, amount=7, currency="USD",
                      idempotency_key="qzpay-refund-1")
    )  # fmt: skip
    dashboard = [fake.refund_directly(intent, 1)["id"] for _ in range(150)]
    other = await paid_again(provider)
    fake.refund_directly(other, 5)

    listed = await provider.list_refunds(provider_payment_id=intent, currency="USD")

    assert [r.provider_id for r in listed] == [mine.provider_id, *dashboard]
    assert (listed[0].amount, listed[0].idempotency_key) == (7, "qzpay-refund-1")
    assert {(r.amount, r.idempotency_key, r.status) for r in listed[1:]} == {(1, None, "succeeded")}
    first, second = api.sent("GET", "/v1/refunds")
    assert first.query == {"payment_intent": intent, "limit": "100"}
    assert second.query == {
        "payment_intent": intent,
        "limit": "100",
        "starting_after": dashboard[-100],
    }


async def paid_again(provider: StripeProvider) -> str:
    customer, card = await customer_with_card(provider, "pm_card_mastercard")
    return (await provider.charge(charge_of(customer, card, key="qzpay-payment-2"))).provider_id


@on_both_loops
async def test_list_refunds_finds_a_refund_whose_answer_was_lost(api: LoopbackAPI) -> None:
    provider = provider_for(api, max_network_retries=0)
    intent = await paid(provider)
    api.inject(Fault(drop=True, after_work=True), path="/v1/refunds")
    with pytest.raises(StripeProviderError) as lost:
        await provider.refund(
            RefundRequest(provider_payment_id=intent, amount=900, currency="USD",
                          idempotency_key="qzpay-refund-lost")
        )  # fmt: skip
    assert lost.value.retryable is True

    [found] = await provider.list_refunds(provider_payment_id=intent, currency="USD")

    assert (found.amount, found.idempotency_key, found.status) == (
        900,
        "qzpay-refund-lost",
        "succeeded",
    )


@on_both_loops
async def test_list_refunds_is_empty_for_an_intent_stripe_does_not_know_and_fails_honestly(
    api: LoopbackAPI,
) -> None:
    provider = provider_for(api, max_network_retries=0)
    assert await provider.list_refunds(provider_payment_id="pi_never", currency="USD") == []
    missing = {"error": {"type": "invalid_request_error", "code": "resource_missing",
                         "message": "No such payment_intent: 'pi_never'"}}  # fmt: skip
    api.inject(Fault(status=404, body=missing), path="/v1/refunds")
    assert await provider.list_refunds(provider_payment_id="pi_never", currency="USD") == []
    api.inject(Fault(status=500, body=_server_error()), path="/v1/refunds")
    with pytest.raises(StripeProviderError) as failed:
        await provider.list_refunds(provider_payment_id="pi_never", currency="USD")
    assert (failed.value.retryable, failed.value.http_status) == (True, 500)


# -- checkout, subscriptions, setup intents ----------------------------------------------------


@on_both_loops
async def test_a_checkout_session_is_one_price_data_line_in_payment_mode(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    customer, _ = await customer_with_card(provider)
    checkout = await provider.create_checkout(
        CheckoutRequest(
            amount=4500,
            currency="EUR",
            success_url="https://shop.example/ok",
            cancel_url="https://shop.example/no",
            idempotency_key="qzpay-checkout-1",
            provider_customer_id=customer,
        )
    )

    [sent] = posted(api, "/v1/checkout/sessions")
    assert sent.form == {
        "mode": "payment",
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "eur",
        "line_items[0][price_data][unit_amount]": "4500",
        "line_items[0][price_data][product_data][name]": "Payment",
        "success_url": "https://shop.example/ok",
        "cancel_url": "https://shop.example/no",
        "customer": customer,
        "metadata[qzpay_key]": "qzpay-checkout-1",
    }
    assert sent.header("Idempotency-Key") == "qzpay-checkout-1"
    assert checkout.url == f"https://checkout.stripe.com/c/pay/{checkout.provider_id}"


@on_both_loops
async def test_a_provider_managed_subscription_has_its_price_quantity_and_trial(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    fake.add_price("price_pro", unit_amount=2900)
    customer, card = await customer_with_card(provider)
    trial_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=14)
    created = await provider.create_subscription(
        ProviderSubscriptionRequest(
            provider_customer_id=customer,
            provider_price_id="price_pro",
            quantity=3,
            idempotency_key="qzpay-subscription-1",
            trial_end=trial_end,
            provider_payment_method_id=card,
        )
    )

    [sent] = posted(api, "/v1/subscriptions")
    assert sent.form == {
        "customer": customer,
        "items[0][price]": "price_pro",
        "items[0][quantity]": "3",
        "trial_end": str(int(trial_end.timestamp())),
        "default_payment_method": card,
        "metadata[qzpay_key]": "qzpay-subscription-1",
    }
    assert sent.header("Idempotency-Key") == "qzpay-subscription-1"
    assert created.provider_id.startswith("sub_")
    stored = fake.subscriptions[created.provider_id]
    started = datetime.fromtimestamp(stored["created"], UTC)
    assert created == ProviderSubscription(
        provider_id=created.provider_id,
        status="trialing",
        provider_status="trialing",
        current_period_start=started,
        current_period_end=trial_end,  # a trial's period is the trial
        trial_end=trial_end,
        idempotency_key="qzpay-subscription-1",
    )
    with pytest.raises(StripeProviderError) as raised:
        await provider.create_subscription(
            ProviderSubscriptionRequest(provider_customer_id=customer,
                                        provider_price_id="price_gone", quantity=1,
                                        idempotency_key="qzpay-subscription-2")
        )  # fmt: skip
    assert (raised.value.retryable, raised.value.http_status) == (False, 404)


async def subscription_of(
    provider: StripeProvider, fake: StripeAPI, key: str = "qzpay-sub-1"
) -> str:
    fake.add_price("price_pro", unit_amount=2900)
    customer, _ = await customer_with_card(provider)
    created = await provider.create_subscription(
        ProviderSubscriptionRequest(provider_customer_id=customer, provider_price_id="price_pro",
                                    quantity=1, idempotency_key=key)
    )  # fmt: skip
    assert created.status == "active"
    return created.provider_id


@on_both_loops
async def test_retrieve_subscription_mirrors_what_stripe_moved_and_a_404_is_none(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    sub = await subscription_of(provider, fake)
    renewed_from, renewed_to = int(NOW.timestamp()), int((NOW + timedelta(days=29)).timestamp())
    fake.move_subscription(
        sub, status="past_due", current_period_start=renewed_from, current_period_end=renewed_to
    )

    found = await provider.retrieve_subscription(provider_id=sub)

    [sent] = api.sent("GET", "/v1/subscriptions/")
    assert (sent.path, sent.query) == (f"/v1/subscriptions/{sub}", {})
    assert found is not None
    assert (found.status, found.provider_status) == ("past_due", "past_due")
    assert (found.current_period_start, found.current_period_end) == (
        NOW,
        NOW + timedelta(days=29),
    )
    assert found.idempotency_key == "qzpay-sub-1"
    assert await provider.retrieve_subscription(provider_id="sub_never") is None


@on_both_loops
async def test_retrieve_subscription_fails_honestly_when_stripe_does(api: LoopbackAPI) -> None:
    provider = provider_for(api, max_network_retries=0)
    api.inject(Fault(status=500, body=_server_error()), path="/v1/subscriptions")
    with pytest.raises(StripeProviderError) as failed:
        await provider.retrieve_subscription(provider_id="sub_1")
    assert (failed.value.retryable, failed.value.http_status) == (True, 500)
    api.inject(Fault(status=401, body={"error": {"type": "invalid_request_error",
                                                 "message": "Invalid API Key provided"}}))  # fmt: skip
    with pytest.raises(StripeProviderError) as refused:
        await provider.retrieve_subscription(provider_id="sub_1")
    assert (refused.value.retryable, refused.value.http_status) == (False, 401)


@on_both_loops
async def test_cancel_now_is_a_delete_under_qzpays_key_and_again_answers_it_as_it_is(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    sub = await subscription_of(provider, fake)

    canceled = await provider.cancel_subscription(
        provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-1"
    )

    [sent] = api.sent("DELETE")
    assert (sent.path, sent.query, sent.body) == (f"/v1/subscriptions/{sub}", {}, b"")
    assert sent.header("Idempotency-Key") == "qzpay-cancel-1"
    ended = datetime.fromtimestamp(fake.subscriptions[sub]["ended_at"], UTC)
    assert (canceled.status, canceled.canceled_at, canceled.ended_at) == ("canceled", ended, ended)
    assert canceled.cancel_at_period_end is False

    again = await provider.cancel_subscription(
        provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-2"
    )
    later = await provider.cancel_subscription(
        provider_id=sub, at_period_end=True, idempotency_key="qzpay-cancel-3"
    )

    assert again == later == canceled
    # Stripe refused both (404 on DELETE, 400 on the update); the read answered them.
    assert [(r.method, r.path) for r in api.requests[-5:]] == [
        ("DELETE", f"/v1/subscriptions/{sub}"),
        ("DELETE", f"/v1/subscriptions/{sub}"),
        ("GET", f"/v1/subscriptions/{sub}"),
        ("POST", f"/v1/subscriptions/{sub}"),
        ("GET", f"/v1/subscriptions/{sub}"),
    ]


@on_both_loops
async def test_cancel_at_period_end_is_an_update_under_qzpays_key_and_a_replay_is_the_same(
    provider: StripeProvider, api: LoopbackAPI, fake: StripeAPI
) -> None:
    sub = await subscription_of(provider, fake)

    marked = await provider.cancel_subscription(
        provider_id=sub, at_period_end=True, idempotency_key="qzpay-cancel-1"
    )
    replayed = await provider.cancel_subscription(
        provider_id=sub, at_period_end=True, idempotency_key="qzpay-cancel-1"
    )

    first, second = posted(api, f"/v1/subscriptions/{sub}")
    assert first.form == {"cancel_at_period_end": "true"}
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key") == "qzpay-cancel-1"
    stored = fake.subscriptions[sub]
    assert (marked.status, marked.cancel_at_period_end) == ("active", True)
    assert marked.canceled_at == datetime.fromtimestamp(stored["canceled_at"], UTC)
    assert marked.ended_at is None
    assert marked.current_period_end == datetime.fromtimestamp(
        stored["items"]["data"][0]["current_period_end"], UTC
    )
    assert replayed == marked


@on_both_loops
async def test_cancelling_a_subscription_stripe_does_not_have_is_refused_not_retryable(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    for at_period_end in (False, True):
        with pytest.raises(StripeProviderError) as refused:
            await provider.cancel_subscription(
                provider_id="sub_never", at_period_end=at_period_end, idempotency_key="k"
            )
        assert (refused.value.retryable, refused.value.http_status) == (False, 404)
        assert refused.value.stripe_code == "resource_missing"


@on_both_loops
async def test_a_cancel_whose_outcome_is_unknown_is_retryable_and_not_read_back(
    api: LoopbackAPI, fake: StripeAPI
) -> None:
    provider = provider_for(api, max_network_retries=0)
    sub = await subscription_of(provider, fake)
    api.inject(Fault(drop=True, after_work=True), path=f"/v1/subscriptions/{sub}")
    with pytest.raises(StripeProviderError) as lost:
        await provider.cancel_subscription(
            provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-1"
        )
    assert lost.value.retryable is True
    assert api.sent("GET", "/v1/subscriptions") == []
    assert fake.subscriptions[sub]["status"] == "canceled"  # done: qzpay's retry reads it
    again = await provider.cancel_subscription(
        provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-1"
    )
    assert again.status == "canceled"


@on_both_loops
async def test_periods_are_read_from_the_subscription_on_api_versions_before_the_item(
    api: LoopbackAPI, fake: StripeAPI
) -> None:
    fake.legacy_periods = True
    provider = provider_for(api)
    sub = await subscription_of(provider, fake)
    stored = fake.subscriptions[sub]
    assert "current_period_end" not in stored["items"]["data"][0]

    found = await provider.retrieve_subscription(provider_id=sub)

    assert found is not None
    assert found.current_period_start == datetime.fromtimestamp(stored["current_period_start"], UTC)
    assert found.current_period_end == datetime.fromtimestamp(stored["current_period_end"], UTC)


def test_the_item_period_wins_and_a_status_stripe_adds_later_is_refused() -> None:
    both = {"id": "sub_1", "status": "active", "current_period_end": 1,
            "items": {"data": [{"current_period_end": 1801386000}]}}  # fmt: skip
    read = stripe_results.subscription(both)
    assert read.current_period_end == datetime(2027, 1, 31, 9, tzinfo=UTC)
    assert (read.current_period_start, read.trial_end, read.idempotency_key) == (None, None, None)
    for status in SUBSCRIPTION_STATUSES:
        assert stripe_results.subscription({"id": "sub_1", "status": status}).status == status
    with pytest.raises(ProviderError) as refused:
        stripe_results.subscription({"id": "sub_1", "status": "frozen"})
    assert (refused.value.retryable, refused.value.rule) == (False, "subscription_status")


@on_both_loops
async def test_the_event_stripe_sends_about_a_subscription_is_a_neutral_subscription_update(
    provider: StripeProvider, fake: StripeAPI
) -> None:
    sub = await subscription_of(provider, fake)
    fake.move_subscription(sub, status="past_due")
    body = fake.subscription_event(sub, created=int(NOW.timestamp()))

    event = provider.verify_webhook(payload=body, headers=provider.sign_webhook(body, NOW), now=NOW)

    assert (event.type, event.provider_type) == (
        "subscription.updated",
        "customer.subscription.updated",
    )
    assert event.occurred_at == NOW
    assert event.data == {
        "provider_subscription_id": sub,
        "status": "past_due",
        "idempotency_key": "qzpay-sub-1",
        "provider_customer_id": fake.subscriptions[sub]["customer"],
    }


@on_both_loops
async def test_a_setup_intent_saves_a_card_for_off_session_use(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    customer, _ = await customer_with_card(provider)
    setup = await provider.create_setup_intent(
        provider_customer_id=customer, idempotency_key="qzpay-setup-1"
    )

    [sent] = posted(api, "/v1/setup_intents")
    assert sent.form == {
        "customer": customer,
        "usage": "off_session",
        "metadata[qzpay_key]": "qzpay-setup-1",
    }
    assert sent.header("Idempotency-Key") == "qzpay-setup-1"
    assert setup.provider_id.startswith("seti_")
    assert setup.client_secret.startswith(f"{setup.provider_id}_secret_")


# -- errors hold no secrets --------------------------------------------------------------------


@on_both_loops
async def test_a_wrong_api_key_is_not_retryable_and_not_shown(api: LoopbackAPI) -> None:
    wrong = "sk_test_wrong_0123456789abcdefSECRET"
    provider = provider_for(api, api_key=wrong)
    with pytest.raises(StripeProviderError) as raised:
        await provider.create_customer(email="a@x.io", name=None, idempotency_key="k")
    assert raised.value.retryable is False
    assert raised.value.http_status == 401
    assert wrong not in str(raised.value)
    assert "SECRET" not in str(raised.value)


@on_both_loops
async def test_nothing_stripe_echoes_puts_a_secret_or_a_full_token_in_a_message(
    provider: StripeProvider, api: LoopbackAPI
) -> None:
    echo = (
        f"key {API_KEY} live sk_live_abcdefghijklmnop secret {WEBHOOK_SECRET} "
        "client pi_123abc_secret_s3cr3tvalue token tok_1Mabcdefghijklmnopq"
    )
    api.inject(
        Fault(status=400, body={"error": {"type": "invalid_request_error", "message": echo}})
    )
    with pytest.raises(StripeProviderError) as raised:
        await provider.create_customer(email="a@x.io", name=None, idempotency_key="k")
    message = str(raised.value)
    for secret in (API_KEY, "sk_live_abcdefghijklmnop", WEBHOOK_SECRET, "s3cr3tvalue",
                   "tok_1Mabcdefghijklmnopq"):  # fmt: skip
        assert secret not in message
    assert "pi_123abc_secret_[redacted]" in message
    assert "tok_1Mab…" in message


def test_one_provider_serves_one_event_loop_after_another(api: LoopbackAPI) -> None:
    provider = provider_for(api)

    async def create(key: str) -> str:
        made = await provider.create_customer(email="a@x.io", name=None, idempotency_key=key)
        return made.provider_id

    first = anyio.run(create, "k1")
    second = anyio.run(create, "k2", backend="trio")
    third = anyio.run(create, "k3")
    assert len({first, second, third}) == 3


# -- webhooks -----------------------------------------------------------------------------------


def signed_provider(**options: Any) -> StripeProvider:
    return StripeProvider(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, **options)


def intent_event(event_type: str = "payment_intent.succeeded") -> bytes:
    return StripeAPI(now=lambda: int(NOW.timestamp())).event(
        event_type,
        {"id": "pi_1", "object": "payment_intent", "status": "succeeded",
         "customer": "cus_1", "metadata": {"qzpay_key": "qzpay-payment-1"}},
    )  # fmt: skip


def test_a_signed_event_verifies_and_is_mapped() -> None:
    provider = signed_provider()
    body = intent_event()
    event = provider.verify_webhook(payload=body, headers=provider.sign_webhook(body, NOW), now=NOW)

    assert (event.provider, event.type, event.provider_type) == (
        "stripe",
        "payment.succeeded",
        "payment_intent.succeeded",
    )
    assert event.provider_event_id == json.loads(body)["id"]
    assert event.occurred_at == NOW
    assert event.data == {
        "provider_payment_id": "pi_1",
        "idempotency_key": "qzpay-payment-1",
        "status": "succeeded",
        "provider_customer_id": "cus_1",
    }


def test_headers_are_matched_case_insensitively() -> None:
    provider = signed_provider()
    body = intent_event()
    [(name, value)] = provider.sign_webhook(body, NOW).items()
    event = provider.verify_webhook(payload=body, headers={name.lower(): value}, now=NOW)
    assert event.type == "payment.succeeded"


def test_a_tampered_body_is_refused() -> None:
    provider = signed_provider()
    body = intent_event()
    headers = provider.sign_webhook(body, NOW)
    with pytest.raises(SignatureError):
        provider.verify_webhook(payload=body.replace(b"pi_1", b"pi_2"), headers=headers, now=NOW)


def test_another_secrets_signature_is_refused_and_no_secret_is_shown() -> None:
    body = intent_event()
    headers = StripeProvider(api_key=API_KEY, webhook_secret="whsec_other").sign_webhook(body, NOW)
    with pytest.raises(SignatureError) as raised:
        signed_provider().verify_webhook(payload=body, headers=headers, now=NOW)
    shown = str(raised.value)
    assert WEBHOOK_SECRET not in shown
    assert headers["Stripe-Signature"].split("v1=")[1] not in shown


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_timestamps_beyond_the_tolerance_either_way_are_refused(offset: timedelta) -> None:
    provider = signed_provider()
    body = intent_event()
    headers = provider.sign_webhook(body, NOW + offset)
    with pytest.raises(SignatureError, match="away from now"):
        provider.verify_webhook(payload=body, headers=headers, now=NOW)
    later = provider.verify_webhook(payload=body, headers=headers, now=NOW + offset)
    assert later.type == "payment.succeeded"


def test_a_zero_tolerance_means_the_same_second_not_no_check() -> None:
    provider = signed_provider(webhook_tolerance=timedelta(0))
    body = intent_event()
    headers = provider.sign_webhook(body, NOW)
    provider.verify_webhook(payload=body, headers=headers, now=NOW)
    with pytest.raises(SignatureError):
        provider.verify_webhook(payload=body, headers=headers, now=NOW + timedelta(seconds=1))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Stripe-Signature": ""},
        {"Stripe-Signature": "garbage"},
        {"Stripe-Signature": "t=abc,v1=00"},
        {"Stripe-Signature": "t=1700000000"},
        {"Stripe-Signature": "v1=00ff"},
        {"Stripe-Signature": "t=1700000000,v0=00ff"},
    ],
)
def test_a_missing_or_malformed_header_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureError):
        signed_provider().verify_webhook(payload=intent_event(), headers=headers, now=NOW)


def test_any_of_several_v1_signatures_may_match() -> None:
    provider = signed_provider()
    body = intent_event()
    good = provider.sign_webhook(body, NOW)["Stripe-Signature"]
    timestamp, signature = good.split(",")
    header = f"{timestamp},v1={'0' * 64},{signature},v0=abc"
    event = provider.verify_webhook(payload=body, headers={"Stripe-Signature": header}, now=NOW)
    assert event.type == "payment.succeeded"


def test_the_sdks_own_verifier_accepts_our_signatures_and_refuses_tampered_ones() -> None:
    provider = signed_provider()
    body = intent_event()
    sent_at = datetime.now(UTC)  # the SDK checks against the wall clock
    header = provider.sign_webhook(body, sent_at)["Stripe-Signature"]

    assert stripe.WebhookSignature.verify_header(body.decode(), header, WEBHOOK_SECRET, 300)
    tampered = body.replace(b"succeeded", b"failed")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(tampered.decode(), header, WEBHOOK_SECRET, 300)
    with pytest.raises(SignatureError):
        provider.verify_webhook(payload=tampered, headers={"Stripe-Signature": header},
                                now=sent_at)  # fmt: skip


def test_a_signed_body_that_is_not_an_event_is_a_validation_error() -> None:
    provider = signed_provider()
    for body in (b"not json", b"[]", b'{"id": "evt_1", "type": "x"}'):
        with pytest.raises(ValidationError) as raised:
            provider.verify_webhook(payload=body, headers=provider.sign_webhook(body, NOW), now=NOW)
        assert raised.value.field == "payload"


@pytest.mark.parametrize(
    ("stripe_type", "obj", "neutral", "data"),
    [
        ("payment_intent.payment_failed", {"id": "pi_1", "status": "requires_payment_method"},
         "payment.failed", {"provider_payment_id": "pi_1", "idempotency_key": None,
                            "status": "requires_payment_method"}),
        ("payment_intent.requires_action", {"id": "pi_1", "status": "requires_action"},
         "payment.requires_action", {"provider_payment_id": "pi_1", "idempotency_key": None,
                                     "status": "requires_action"}),
        ("payment_intent.processing", {"id": "pi_1", "status": "processing"},
         "payment.processing", {"provider_payment_id": "pi_1", "idempotency_key": None,
                                "status": "processing"}),
        ("payment_intent.canceled", {"id": "pi_1", "status": "canceled"},
         "payment.canceled", {"provider_payment_id": "pi_1", "idempotency_key": None,
                              "status": "canceled"}),
        ("refund.updated", {"id": "re_1", "payment_intent": "pi_1", "status": "succeeded",
                            "metadata": {"qzpay_key": "qzpay-refund-1"}},
         "refund.updated", {"provider_refund_id": "re_1", "provider_payment_id": "pi_1",
                            "idempotency_key": "qzpay-refund-1", "status": "succeeded"}),
        ("charge.refund.updated", {"id": "re_1", "payment_intent": "pi_1", "status": "failed",
                                   "metadata": {}},
         "refund.updated", {"provider_refund_id": "re_1", "provider_payment_id": "pi_1",
                            "idempotency_key": None, "status": "failed"}),
        ("charge.refunded", {"id": "ch_1", "payment_intent": "pi_1", "refunds": {"data": [
            {"id": "re_2", "payment_intent": "pi_1", "status": "succeeded",
             "metadata": {"qzpay_key": "qzpay-refund-2"}}]}},
         "refund.updated", {"provider_refund_id": "re_2", "provider_payment_id": "pi_1",
                            "idempotency_key": "qzpay-refund-2", "status": "succeeded"}),
        ("charge.refunded", {"id": "ch_1", "payment_intent": "pi_1"},
         "refund.updated", {"provider_refund_id": None, "provider_payment_id": "pi_1",
                            "idempotency_key": None, "status": None}),
        ("customer.subscription.deleted", {"id": "sub_1", "status": "canceled",
                                           "customer": "cus_1"},
         "subscription.deleted", {"provider_subscription_id": "sub_1", "status": "canceled",
                                  "idempotency_key": None, "provider_customer_id": "cus_1"}),
        ("checkout.session.completed", {"id": "cs_1", "payment_intent": "pi_9",
                                        "status": "complete",
                                        "metadata": {"qzpay_key": "qzpay-checkout-1"}},
         "checkout.completed", {"provider_checkout_id": "cs_1", "provider_payment_id": "pi_9",
                                "idempotency_key": "qzpay-checkout-1", "status": "complete"}),
        ("charge.succeeded", {"id": "ch_1"}, "other.charge.succeeded",
         {"provider_object_id": "ch_1"}),
        ("payment_method.attached", {"id": "pm_1"}, "other.payment_method.attached",
         {"provider_object_id": "pm_1"}),
    ],
)  # fmt: skip
def test_stripe_events_map_to_neutral_types_and_data(
    stripe_type: str, obj: dict[str, Any], neutral: str, data: dict[str, Any]
) -> None:
    provider = signed_provider()
    body = StripeAPI(now=lambda: int(NOW.timestamp())).event(stripe_type, obj)
    event = provider.verify_webhook(payload=body, headers=provider.sign_webhook(body, NOW), now=NOW)
    given = {key: value for key, value in event.data.items() if value is not None}
    assert event.type == neutral
    assert given == {key: value for key, value in data.items() if value is not None}
    assert all(value is None or isinstance(value, str) for value in event.data.values())
    assert event.provider_type == stripe_type


# -- helpers ------------------------------------------------------------------------------------


def _rate_limited() -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "code": "rate_limit",
                      "message": "Too many requests hit the API too quickly."}}  # fmt: skip


def _server_error() -> dict[str, Any]:
    return {"error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}}


async def _until(condition: Any, *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the fake never got there"
        await anyio.sleep(0.02)
