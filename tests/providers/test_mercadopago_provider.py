"""MercadoPagoProvider: the real ``mercadopago`` SDK against the local fake of its API.

What is pinned: the exact requests sent (paths, JSON bodies, the auth header, one
``X-Idempotency-Key`` per attempt, the same across retries), faults (429 and 500 retried,
exhausted, a timeout whose payment reconciliation finds, dropped connections, cut bodies),
declines and their neutral codes, refunds, retrieval, preferences, preapprovals, that every
error answer is checked, that no secret reaches a message, that calls run in worker threads
under a bound, on asyncio and trio; and webhook signatures.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import pytest
from mercadopago.webhook.validator import WebhookSignatureValidator

from qzpay.adapters.mercadopago import MercadoPagoProvider
from qzpay.adapters.mercadopago import _statuses as mp_statuses
from qzpay.contracts.provider import (
    FAILURE_CODES,
    SUBSCRIPTION_STATUSES,
    WEBHOOK_KINDS,
    ChargeRequest,
    CheckoutRequest,
    ProviderPaymentMethod,
    ProviderSubscription,
    ProviderSubscriptionRequest,
    RefundRequest,
)
from qzpay.errors import ProviderError, QZPayError, SignatureError, ValidationError
from tests.providers.loopback import Fault, LoopbackAPI, Request, Response
from tests.providers.mercadopago_api import (
    ACCESS_TOKEN,
    HOLDER_OUTCOMES,
    LoopbackHttpClient,
    MercadoPagoAPI,
    mp_time,
)

pytestmark = pytest.mark.anyio

SECRET = "mp-webhook-secret-7f3a9c"
NOW = datetime(2028, 1, 31, 9, tzinfo=UTC)
KEY = "qzpay-payment-0190a7b2-1111-7000-8000-000000000001"


@pytest.fixture
def mp() -> MercadoPagoAPI:
    return MercadoPagoAPI()


@pytest.fixture
def api(mp: MercadoPagoAPI) -> Iterator[LoopbackAPI]:
    with LoopbackAPI(mp) as server:
        yield server


def make_provider(api: LoopbackAPI, **options: Any) -> MercadoPagoProvider:
    settings: dict[str, Any] = {"backoff": 0.01, "timeout": 5.0, **options}
    return MercadoPagoProvider(
        access_token=settings.pop("access_token", ACCESS_TOKEN),
        webhook_secret=SECRET,
        http_client=LoopbackHttpClient(api.url),
        **settings,
    )


@pytest.fixture
def provider(api: LoopbackAPI) -> MercadoPagoProvider:
    return make_provider(api)


async def customer_and_card(
    provider: MercadoPagoProvider, mp: MercadoPagoAPI, holder: str = "APRO"
) -> tuple[str, ProviderPaymentMethod]:
    customer = await provider.create_customer(
        email=f"{holder.lower()}-{len(mp.customers)}@example.com",
        name="Ann Lee",
        idempotency_key=f"qzpay-customer-{holder}-{len(mp.customers)}",
    )
    card = await provider.attach_payment_method(
        provider_customer_id=customer.provider_id, token=mp.card_token(holder)
    )
    return customer.provider_id, card


def charge_request(customer: str, card: ProviderPaymentMethod, **changes: Any) -> ChargeRequest:
    fields: dict[str, Any] = {
        "amount": 2990,
        "currency": "BRL",
        "provider_customer_id": customer,
        "provider_payment_method_id": card.provider_id,
        "idempotency_key": KEY,
        "description": "Pro, January",
        "metadata": {"invoice": "INV-000001"},
        **changes,
    }
    return ChargeRequest(**fields)


# -- the requests sent --------------------------------------------------------------------


async def test_create_customer_sends_email_name_auth_and_qzpay_key(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer = await provider.create_customer(
        email="ann@example.com", name="Ann Lee", idempotency_key="qzpay-customer-1"
    )
    (sent,) = api.sent("POST", "/v1/customers")
    assert sent.json == {"email": "ann@example.com", "first_name": "Ann Lee"}
    assert sent.header("Authorization") == f"Bearer {ACCESS_TOKEN}"
    assert sent.header("X-Idempotency-Key") == "qzpay-customer-1"
    assert mp.customers[customer.provider_id]["email"] == "ann@example.com"


async def test_an_email_mercadopago_already_has_answers_that_customer(
    provider: MercadoPagoProvider, api: LoopbackAPI
) -> None:
    first = await provider.create_customer(
        email="ann@example.com", name=None, idempotency_key="qzpay-customer-1"
    )
    again = await provider.create_customer(
        email="ann@example.com", name=None, idempotency_key="qzpay-customer-2"
    )
    assert again == first
    assert [r.path for r in api.sent("GET")] == ["/v1/customers/search"]
    assert api.sent("GET")[0].query == {"email": "ann@example.com"}


async def test_attach_saves_the_card_under_the_customer(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer = await provider.create_customer(
        email="ann@example.com", name=None, idempotency_key="qzpay-customer-1"
    )
    token = mp.card_token("APRO", brand="master", last4="0604")
    card = await provider.attach_payment_method(
        provider_customer_id=customer.provider_id, token=token
    )
    (sent,) = api.sent("POST", f"/v1/customers/{customer.provider_id}/cards")
    assert sent.json == {"token": token}
    key = sent.header("X-Idempotency-Key")
    assert key is not None
    assert key.startswith("qzpay-card-")
    assert token not in key
    card_id = card.provider_id.split(":")[1]
    assert card == ProviderPaymentMethod(
        provider_id=f"{customer.provider_id}:{card_id}",
        type="card",
        brand="master",
        last4="0604",
        exp_month=11,
        exp_year=2030,
    )
    assert mp.cards[card_id].customer_id == customer.provider_id


async def test_detach_deletes_the_card_and_a_second_detach_is_refused(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    await provider.detach_payment_method(provider_payment_method_id=card.provider_id)
    card_id = card.provider_id.split(":")[1]
    assert [r.path for r in api.sent("DELETE")] == [f"/v1/customers/{customer}/cards/{card_id}"]
    assert card_id not in mp.cards
    with pytest.raises(ProviderError) as refused:
        await provider.detach_payment_method(provider_payment_method_id=f"{card.provider_id}-other")
    assert not refused.value.retryable
    with pytest.raises(ProviderError, match="made by qzpay"):
        await provider.detach_payment_method(provider_payment_method_id="no-separator")


async def test_charge_tokenizes_the_saved_card_and_sends_the_exact_payment(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    card_id = card.provider_id.split(":")[1]
    result = await provider.charge(charge_request(customer, card))

    assert result.status == "succeeded"
    assert [(r.method, r.path) for r in api.requests[2:]] == [
        ("GET", f"/v1/customers/{customer}/cards/{card_id}"),
        ("POST", "/v1/card_tokens"),
        ("POST", "/v1/payments"),
    ]
    tokenize, pay = api.requests[3], api.requests[4]
    assert tokenize.json == {"card_id": card_id, "customer_id": customer}
    assert tokenize.header("X-Idempotency-Key") == f"{KEY}:card-token"
    assert pay.header("X-Idempotency-Key") == KEY
    token = tokenize_answer_token(mp, card_id)
    assert pay.json == {
        "transaction_amount": 29.9,
        "installments": 1,
        "payer": {"type": "customer", "id": customer},
        "external_reference": KEY,
        "metadata": {"invoice": "INV-000001", "qzpay_idempotency_key": KEY},
        "description": "Pro, January",
        "token": token,
        "payment_method_id": "visa",
    }
    assert b'"transaction_amount": 29.9,' in pay.body  # the exact decimal, as text
    assert mp.payments[result.provider_id].body["external_reference"] == KEY


def tokenize_answer_token(mp: MercadoPagoAPI, card_id: str) -> str:
    (token,) = [t.id for t in mp.tokens.values() if t.card_id == card_id]
    return token


async def test_a_card_token_charges_once_as_it_is(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer = await provider.create_customer(
        email="ann@example.com", name=None, idempotency_key="qzpay-customer-1"
    )
    token = mp.card_token("APRO")
    one_time = ProviderPaymentMethod(provider_id=token, type="card")
    result = await provider.charge(charge_request(customer.provider_id, one_time))
    assert result.status == "succeeded"
    (pay,) = api.sent("POST", "/v1/payments")
    assert pay.json["token"] == token
    assert "payment_method_id" not in pay.json


@pytest.mark.parametrize(
    ("currency", "amount", "wire"),
    [("BRL", 2990, b"29.9"), ("BRL", 1, b"0.01"), ("CLP", 1500, b"1500.0"), ("ARS", 10, b"0.1")],
)
async def test_amounts_go_as_the_exact_decimal_of_the_minor_units(
    api: LoopbackAPI, currency: str, amount: int, wire: bytes
) -> None:
    mp = MercadoPagoAPI(currency=currency)
    with LoopbackAPI(mp) as server:
        provider = make_provider(server)
        customer, card = await customer_and_card(provider, mp)
        await provider.charge(charge_request(customer, card, amount=amount, currency=currency))
        (pay,) = server.sent("POST", "/v1/payments")
    assert b'"transaction_amount": ' + wire + b"," in pay.body


async def test_an_amount_a_json_number_cannot_carry_exactly_is_refused_before_sending(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    with pytest.raises(ProviderError) as refused:
        await provider.charge(charge_request(customer, card, amount=2**60 + 1))
    assert (refused.value.field, refused.value.rule, refused.value.retryable) == (
        "amount",
        "exact_decimal",
        False,
    )
    assert api.sent("POST", "/v1/payments") == []


async def test_a_currency_mercadopago_does_not_settle_is_refused_before_sending(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    with pytest.raises(ProviderError) as refused:
        await provider.charge(charge_request(customer, card, currency="USD"))
    assert (refused.value.field, refused.value.rule) == ("currency", "currency_not_supported")
    assert api.sent("POST", "/v1/payments") == []


# -- declines and statuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("holder", "code"),
    [
        ("FUND", "insufficient_funds"),
        ("SECU", "incorrect_cvc"),
        ("EXPI", "expired_card"),
        ("CALL", "card_declined"),
        ("FORM", "card_declined"),
        ("OTHE", "card_declined"),
    ],
)
async def test_a_rejection_is_a_failed_result_with_the_neutral_code_and_mercadopagos(
    provider: MercadoPagoProvider, mp: MercadoPagoAPI, holder: str, code: str
) -> None:
    customer, card = await customer_and_card(provider, mp, holder)
    result = await provider.charge(charge_request(customer, card))
    assert result.status == "failed"
    assert result.failure_code == code
    assert code in FAILURE_CODES
    assert result.provider_failure_code == HOLDER_OUTCOMES[holder][1]
    assert result.failure_message


async def test_a_pending_payment_is_processing_until_mercadopago_settles_it(
    provider: MercadoPagoProvider, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp, "CONT")
    result = await provider.charge(charge_request(customer, card))
    assert result.status == "processing"
    mp.settle(result.provider_id, "approved", "accredited")
    found = await provider.retrieve_charge(idempotency_key=KEY, provider_id=result.provider_id)
    assert found is not None
    assert found.status == "succeeded"


# -- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_429_and_5xx_are_retried_with_the_same_key(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI, status: int
) -> None:
    customer, card = await customer_and_card(provider, mp)
    api.inject(Fault(status=status, body={"message": "busy"}), path="/v1/payments", times=2)
    result = await provider.charge(charge_request(customer, card))
    assert result.status == "succeeded"
    sent = api.sent("POST", "/v1/payments")
    assert [r.header("X-Idempotency-Key") for r in sent] == [KEY, KEY, KEY]
    assert len(mp.payments_with(KEY)) == 1


async def test_retries_exhausted_raise_a_retryable_error_and_charge_nothing(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    api.inject(Fault(status=500), path="/v1/payments", times=3)
    with pytest.raises(ProviderError, match="gave up after 3 tries") as failed:
        await provider.charge(charge_request(customer, card))
    assert failed.value.retryable
    assert len(api.sent("POST", "/v1/payments")) == 3
    assert mp.payments_with(KEY) == []


async def test_a_timeout_is_retryable_and_retrieve_charge_finds_the_payment_without_charging(
    api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    provider = make_provider(api, timeout=0.3)
    customer, card = await customer_and_card(provider, mp)
    api.inject(Fault(delay=0.6), path="/v1/payments")  # the work is done after the wait
    with pytest.raises(ProviderError, match="outcome is unknown") as lost:
        await provider.charge(charge_request(customer, card))
    assert lost.value.retryable
    assert len(api.sent("POST", "/v1/payments")) == 1  # not retried blind by the adapter
    with anyio.fail_after(5):
        while not mp.payments_with(KEY):  # noqa: ASYNC110 - the fake works in its own thread
            await anyio.sleep(0.05)
    found = await provider.retrieve_charge(idempotency_key=KEY)
    assert found is not None
    assert found.status == "succeeded"
    (search,) = api.sent("GET", "/v1/payments/search")
    assert search.query["external_reference"] == KEY
    assert api.sent("POST", "/v1/payments")[1:] == []  # reconciling never charges
    again = await provider.charge(charge_request(customer, card))  # qzpay's retry: a replay
    assert again.provider_id == found.provider_id
    assert len(mp.payments_with(KEY)) == 1


@pytest.mark.parametrize(
    "fault",
    [Fault(drop=True), Fault(drop=True, after_work=True), Fault(cut=True)],
    ids=["dropped-before-work", "dropped-after-work", "cut-body"],
)
async def test_a_lost_connection_is_retried_with_the_same_key_and_charges_once(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI, fault: Fault
) -> None:
    customer, card = await customer_and_card(provider, mp)
    api.inject(fault, path="/v1/payments")
    result = await provider.charge(charge_request(customer, card))
    assert result.status == "succeeded"
    sent = api.sent("POST", "/v1/payments")
    assert len(sent) == 2
    assert {r.header("X-Idempotency-Key") for r in sent} == {KEY}
    assert len(mp.payments_with(KEY)) == 1


async def test_a_body_that_is_not_json_is_retried(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    api.inject(Fault(status=502, body=b"<html>bad gateway</html>"), path="/v1/payments")
    assert (await provider.charge(charge_request(customer, card))).status == "succeeded"


async def test_a_refused_connection_is_a_retryable_error(mp: MercadoPagoAPI) -> None:
    with LoopbackAPI(mp) as server:
        url = server.url
    provider = MercadoPagoProvider(
        access_token=ACCESS_TOKEN,
        webhook_secret=SECRET,
        http_client=LoopbackHttpClient(url),
        backoff=0.01,
    )
    with pytest.raises(ProviderError, match="connection to MercadoPago failed") as failed:
        await provider.retrieve_charge(idempotency_key=KEY, provider_id="1")
    assert failed.value.retryable


# -- every error answer is checked --------------------------------------------------------


async def _operations(provider: MercadoPagoProvider, mp: MercadoPagoAPI) -> dict[str, Any]:
    """Each operation by the path its error answer is injected on (``?``: a lookup, for
    which a 404 means "none")."""
    customer, card = await customer_and_card(provider, mp)
    paid = await provider.charge(charge_request(customer, card, idempotency_key="paid"))
    sub = await provider.create_subscription(
        ProviderSubscriptionRequest(
            provider_customer_id=customer,
            provider_price_id="plan-0",
            quantity=1,
            idempotency_key="s-0",
        )
    )

    async def refunds_or_none() -> object:
        listed = await provider.list_refunds(provider_payment_id=paid.provider_id, currency="BRL")
        return list(listed) or None

    return {
        "/v1/customers": lambda: provider.create_customer(
            email="new@example.com", name=None, idempotency_key="c-new"
        ),
        f"/v1/customers/{customer}/cards": lambda: provider.attach_payment_method(
            provider_customer_id=customer, token=mp.card_token()
        ),
        "/v1/card_tokens": lambda: provider.charge(charge_request(customer, card)),
        "/v1/payments": lambda: provider.charge(charge_request(customer, card)),
        "/v1/payments/search": lambda: provider.retrieve_charge(idempotency_key=KEY),
        f"/v1/payments/{paid.provider_id}?": lambda: provider.retrieve_charge(
            idempotency_key="paid", provider_id=paid.provider_id
        ),
        f"/v1/payments/{paid.provider_id}/refunds": lambda: provider.refund(
            RefundRequest(
                provider_payment_id=paid.provider_id,
                amount=100,
                currency="BRL",
                idempotency_key="r-1",
            )
        ),
        "/checkout/preferences": lambda: provider.create_checkout(
            CheckoutRequest(
                amount=100,
                currency="BRL",
                success_url="https://shop.example/ok",
                cancel_url="https://shop.example/no",
                idempotency_key="ck-1",
            )
        ),
        "/preapproval": lambda: provider.create_subscription(
            ProviderSubscriptionRequest(
                provider_customer_id=customer,
                provider_price_id="plan-1",
                quantity=1,
                idempotency_key="s-1",
            )
        ),
        f"/v1/customers/{customer}/cards/": lambda: provider.detach_payment_method(
            provider_payment_method_id=card.provider_id
        ),
        f"/v1/payments/{paid.provider_id}/refunds?": refunds_or_none,
        f"/preapproval/{sub.provider_id}?": lambda: provider.retrieve_subscription(
            provider_id=sub.provider_id
        ),
        f"/preapproval/{sub.provider_id}": lambda: provider.cancel_subscription(
            provider_id=sub.provider_id, at_period_end=False, idempotency_key="cancel-1"
        ),
    }


@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_every_call_checks_the_answers_status(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI, status: int
) -> None:
    operations = await _operations(provider, mp)
    for marked, operation in operations.items():
        path = marked.rstrip("?")
        api.inject(
            Fault(status=status, body={"message": f"refused {path}", "cause": [{"code": "E1"}]}),
            path=path,
        )
        if status == 404 and marked.endswith("?"):  # a lookup: found nothing
            assert await operation() is None
            continue
        with pytest.raises(ProviderError) as refused:
            await operation()
        assert not refused.value.retryable, path
        assert f"MercadoPago answered {status}" in str(refused.value), path
        assert refused.value.rule == "E1", path


async def test_a_wrong_access_token_is_unauthorized_and_never_shown(api: LoopbackAPI) -> None:
    wrong = "APP_USR-999999-wrong-token-abcdef123456"
    provider = make_provider(api, access_token=wrong)
    with pytest.raises(ProviderError) as refused:
        await provider.create_customer(email="a@example.com", name=None, idempotency_key="k")
    assert (refused.value.field, refused.value.rule) == ("access_token", "unauthorized")
    assert wrong not in str(refused.value)


async def test_no_secret_or_long_token_reaches_a_message(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    token = mp.card_token()
    echo = f"token {token} rejected for {ACCESS_TOKEN} / {SECRET} card 4509953566233704"
    api.inject(Fault(status=400, body={"message": echo}), path="/v1/customers")
    with pytest.raises(ProviderError) as refused:
        await provider.create_customer(email="a@example.com", name=None, idempotency_key="k")
    shown = str(refused.value)
    for secret in (token, ACCESS_TOKEN, SECRET, "4509953566233704"):
        assert secret not in shown
    assert "rejected" in shown


# -- refunds and retrieval ----------------------------------------------------------------


async def test_partial_refunds_and_never_beyond_what_is_left(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    paid = await provider.charge(charge_request(customer, card))

    def refund(amount: int, key: str) -> RefundRequest:
        return RefundRequest(
            provider_payment_id=paid.provider_id, amount=amount, currency="BRL", idempotency_key=key
        )

    first = await provider.refund(refund(1000, "qzpay-refund-1"))
    (sent,) = api.sent("POST", f"/v1/payments/{paid.provider_id}/refunds")
    assert sent.json == {"amount": 10.0}
    assert sent.header("X-Idempotency-Key") == "qzpay-refund-1"
    assert first.status == "succeeded"
    assert first.provider_id.startswith(f"{paid.provider_id}:")
    assert await provider.refund(refund(1000, "qzpay-refund-1")) == first  # a replay
    with pytest.raises(ProviderError, match="exceeds") as refused:
        await provider.refund(refund(2000, "qzpay-refund-2"))
    assert not refused.value.retryable
    rest = await provider.refund(refund(1990, "qzpay-refund-3"))
    assert rest.status == "succeeded"
    assert mp.payments[paid.provider_id].body["status"] == "refunded"

    found = await provider.retrieve_refund(idempotency_key="x", provider_id=first.provider_id)
    assert found == first
    gone = f"{paid.provider_id}:999"
    assert await provider.retrieve_refund(idempotency_key="x", provider_id=gone) is None
    before = len(api.requests)
    assert await provider.retrieve_refund(idempotency_key="qzpay-refund-1") is None
    assert len(api.requests) == before  # by key alone: nothing asked, nothing refunded


async def test_list_refunds_reads_the_payments_refunds_oldest_first_in_minor_units(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer, card = await customer_and_card(provider, mp)
    paid = await provider.charge(charge_request(customer, card))
    assert await provider.list_refunds(provider_payment_id=paid.provider_id, currency="BRL") == []
    mine = await provider.refund(
        RefundRequest(provider_payment_id=paid.provider_id, amount=1000, currency="BRL",
                      idempotency_key="qzpay-refund-1")
    )  # fmt: skip
    panel = mp.refund_directly(paid.provider_id, Decimal("0.99"))

    listed = await provider.list_refunds(provider_payment_id=paid.provider_id, currency="BRL")

    gets = api.sent("GET", f"/v1/payments/{paid.provider_id}/refunds")
    assert [(r.path, r.query, r.body) for r in gets[-1:]] == [
        (f"/v1/payments/{paid.provider_id}/refunds", {}, b"")
    ]
    assert [(r.provider_id, r.amount, r.status, r.idempotency_key) for r in listed] == [
        (mine.provider_id, 1000, "succeeded", None),
        (f"{paid.provider_id}:{panel['id']}", 99, "succeeded", None),
    ]


async def test_list_refunds_finds_a_refund_whose_answer_was_lost_by_its_amount(
    api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    provider = make_provider(api, max_retries=0)
    customer, card = await customer_and_card(provider, mp)
    paid = await provider.charge(charge_request(customer, card))
    api.inject(Fault(drop=True, after_work=True), path=f"/v1/payments/{paid.provider_id}/refunds")
    with pytest.raises(ProviderError) as lost:
        await provider.refund(
            RefundRequest(provider_payment_id=paid.provider_id, amount=1990, currency="BRL",
                          idempotency_key="qzpay-refund-lost")
        )  # fmt: skip
    assert lost.value.retryable

    [found] = await provider.list_refunds(provider_payment_id=paid.provider_id, currency="BRL")

    assert (found.amount, found.status) == (1990, "succeeded")
    assert found.provider_id.startswith(f"{paid.provider_id}:")


async def test_list_refunds_is_empty_for_an_unknown_payment_and_refuses_a_foreign_currency(
    provider: MercadoPagoProvider, api: LoopbackAPI
) -> None:
    assert await provider.list_refunds(provider_payment_id="424242", currency="BRL") == []
    before = len(api.requests)
    with pytest.raises(ProviderError) as refused:
        await provider.list_refunds(provider_payment_id="424242", currency="USD")
    assert (refused.value.field, refused.value.rule) == ("currency", "currency_not_supported")
    assert len(api.requests) == before
    cut = {"id": 1, "status": "approved", "amount": 0.005}  # not whole centavos
    api.inject(Fault(status=200, body=[cut]), path="/v1/payments/424242/refunds")
    with pytest.raises(ProviderError) as inexact:
        await provider.list_refunds(provider_payment_id="424242", currency="BRL")
    assert (inexact.value.retryable, inexact.value.rule) == (False, "exact_decimal")


async def test_retrieve_charge_is_none_for_a_payment_mercadopago_never_saw(
    provider: MercadoPagoProvider, mp: MercadoPagoAPI
) -> None:
    assert await provider.retrieve_charge(idempotency_key="never-sent") is None
    assert await provider.retrieve_charge(idempotency_key="x", provider_id="424242") is None
    customer, card = await customer_and_card(provider, mp, "FUND")
    declined = await provider.charge(charge_request(customer, card))
    found = await provider.retrieve_charge(idempotency_key=KEY)
    assert found == declined


# -- checkout and subscriptions -----------------------------------------------------------


async def test_create_checkout_makes_a_preference_whose_url_is_its_init_point(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    customer = await provider.create_customer(
        email="ann@example.com", name=None, idempotency_key="qzpay-customer-1"
    )
    checkout = await provider.create_checkout(
        CheckoutRequest(
            amount=4990,
            currency="BRL",
            success_url="https://shop.example/ok",
            cancel_url="https://shop.example/no",
            idempotency_key="qzpay-checkout-1",
            provider_customer_id=customer.provider_id,
        )
    )
    (sent,) = api.sent("POST", "/checkout/preferences")
    assert sent.header("X-Idempotency-Key") == "qzpay-checkout-1"
    assert sent.json == {
        "items": [{"title": "Payment", "quantity": 1, "unit_price": 49.9, "currency_id": "BRL"}],
        "back_urls": {
            "success": "https://shop.example/ok",
            "pending": "https://shop.example/ok",
            "failure": "https://shop.example/no",
        },
        "auto_return": "approved",
        "external_reference": "qzpay-checkout-1",
        "metadata": {"qzpay_idempotency_key": "qzpay-checkout-1"},
        "payer": {"email": "ann@example.com"},
    }
    assert checkout.url == mp.preferences[checkout.provider_id]["init_point"]


async def test_create_subscription_makes_a_pending_preapproval_on_the_plan(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    mp.now = lambda: NOW
    customer = await provider.create_customer(
        email="ann@example.com", name=None, idempotency_key="qzpay-customer-1"
    )
    request = ProviderSubscriptionRequest(
        provider_customer_id=customer.provider_id,
        provider_price_id="2c9380848f6d3a1f",
        quantity=1,
        idempotency_key="qzpay-subscription-1",
        trial_end=datetime(2028, 2, 14, 9, tzinfo=UTC),
    )
    subscription = await provider.create_subscription(request)
    (sent,) = api.sent("POST", "/preapproval")
    assert sent.header("X-Idempotency-Key") == "qzpay-subscription-1"
    assert sent.json == {
        "preapproval_plan_id": "2c9380848f6d3a1f",
        "payer_email": "ann@example.com",
        "external_reference": "qzpay-subscription-1",
        "status": "pending",
        "auto_recurring": {"start_date": "2028-02-14T09:00:00.000+00:00"},
    }
    assert subscription == ProviderSubscription(
        provider_id=subscription.provider_id,
        status="incomplete",  # until the payer authorizes it at its init_point
        provider_status="pending",
        current_period_end=datetime(2028, 2, 14, 9, tzinfo=UTC),
        idempotency_key="qzpay-subscription-1",
        next_action_url=(
            "https://www.mercadopago.com/subscriptions/checkout?preapproval_id="
            + subscription.provider_id
        ),
    )
    assert subscription.provider_id in mp.preapprovals
    assert await provider.create_subscription(request) == subscription  # a replay
    assert len(mp.preapprovals) == 1
    with pytest.raises(ProviderError) as refused:
        await provider.create_subscription(
            ProviderSubscriptionRequest(
                provider_customer_id=customer.provider_id,
                provider_price_id="2c9380848f6d3a1f",
                quantity=3,
                idempotency_key="qzpay-subscription-2",
            )
        )
    assert (refused.value.field, refused.value.rule) == ("quantity", "quantity_one")


async def preapproval_of(
    provider: MercadoPagoProvider, mp: MercadoPagoAPI, *, trial_end: datetime | None = None
) -> str:
    mp.now = lambda: NOW
    customer = await provider.create_customer(
        email="ann@example.com", name=None, idempotency_key="qzpay-customer-1"
    )
    made = await provider.create_subscription(
        ProviderSubscriptionRequest(
            provider_customer_id=customer.provider_id,
            provider_price_id="2c9380848f6d3a1f",
            quantity=1,
            idempotency_key="qzpay-subscription-1",
            trial_end=trial_end,
        )
    )
    return made.provider_id


async def test_retrieve_subscription_mirrors_the_preapproval_as_the_payer_and_billing_move_it(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    trial_end = NOW + timedelta(days=14)
    sub = await preapproval_of(provider, mp, trial_end=trial_end)

    mp.move_preapproval(sub, status="authorized")  # the payer authorized it; no charge yet
    trialing = await provider.retrieve_subscription(provider_id=sub)

    (sent,) = api.sent("GET", "/preapproval/")
    assert (sent.path, sent.query, sent.body) == (f"/preapproval/{sub}", {}, b"")
    assert trialing is not None
    assert (trialing.status, trialing.provider_status) == ("trialing", "authorized")
    assert trialing.trial_end == trialing.current_period_end == trial_end
    assert trialing.idempotency_key == "qzpay-subscription-1"

    renewal = trial_end + timedelta(days=29)
    mp.move_preapproval(sub, charged_quantity=1, next_payment_date=renewal)
    active = await provider.retrieve_subscription(provider_id=sub)
    assert active is not None
    assert (active.status, active.trial_end, active.current_period_end) == (
        "active",
        None,
        renewal,
    )
    assert active.current_period_start is None  # MercadoPago says none: qzpay keeps its own

    mp.move_preapproval(sub, status="paused")
    paused = await provider.retrieve_subscription(provider_id=sub)
    assert paused is not None
    assert (paused.status, paused.provider_status) == ("paused", "paused")
    assert await provider.retrieve_subscription(provider_id="0" * 32) is None


async def test_retrieve_subscription_fails_honestly(api: LoopbackAPI, mp: MercadoPagoAPI) -> None:
    provider = make_provider(api, max_retries=0)
    sub = await preapproval_of(provider, mp)
    api.inject(Fault(status=500, body={"message": "boom"}), path=f"/preapproval/{sub}")
    with pytest.raises(ProviderError) as failed:
        await provider.retrieve_subscription(provider_id=sub)
    assert failed.value.retryable
    mp.preapprovals[sub]["status"] = "frozen"
    with pytest.raises(ProviderError) as unknown:
        await provider.retrieve_subscription(provider_id=sub)
    assert (unknown.value.retryable, unknown.value.rule) == (False, "subscription_status")


async def test_cancel_at_period_end_is_refused_by_rule_without_asking_mercadopago(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    sub = await preapproval_of(provider, mp)
    before = len(api.requests)
    with pytest.raises(ProviderError) as refused:
        await provider.cancel_subscription(
            provider_id=sub, at_period_end=True, idempotency_key="qzpay-cancel-1"
        )
    assert (refused.value.retryable, refused.value.field, refused.value.rule) == (
        False,
        "at_period_end",
        "cancel_at_period_end",
    )
    assert len(api.requests) == before
    assert mp.preapprovals[sub]["status"] == "pending"


async def test_cancel_now_puts_cancelled_under_qzpays_key_and_again_answers_it_as_it_is(
    provider: MercadoPagoProvider, api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    sub = await preapproval_of(provider, mp)
    mp.move_preapproval(sub, status="authorized", charged_quantity=1)
    mp.now = lambda: NOW + timedelta(days=3)

    canceled = await provider.cancel_subscription(
        provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-1"
    )

    (sent,) = api.sent("PUT")
    assert (sent.path, sent.json) == (f"/preapproval/{sub}", {"status": "cancelled"})
    assert sent.header("X-Idempotency-Key") == "qzpay-cancel-1"
    assert (canceled.status, canceled.provider_status) == ("canceled", "cancelled")
    assert canceled.canceled_at == canceled.ended_at == NOW + timedelta(days=3)
    assert canceled.cancel_at_period_end is False

    replayed = await provider.cancel_subscription(
        provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-1"
    )
    again = await provider.cancel_subscription(
        provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-2"
    )
    assert replayed == again == canceled
    assert [(r.method, r.path) for r in api.requests[-3:]] == [
        ("PUT", f"/preapproval/{sub}"),  # replayed by MercadoPago
        ("PUT", f"/preapproval/{sub}"),  # refused: a cancelled preapproval cannot change
        ("GET", f"/preapproval/{sub}"),  # so read: cancelled, answered as it is
    ]
    assert [r.header("X-Idempotency-Key") for r in api.sent("PUT")] == [
        "qzpay-cancel-1",
        "qzpay-cancel-1",
        "qzpay-cancel-2",
    ]


async def test_cancelling_a_preapproval_mercadopago_does_not_have_is_refused(
    provider: MercadoPagoProvider,
) -> None:
    with pytest.raises(ProviderError) as refused:
        await provider.cancel_subscription(
            provider_id="0" * 32, at_period_end=False, idempotency_key="qzpay-cancel-1"
        )
    assert not refused.value.retryable
    assert "404" in str(refused.value)


async def test_a_cancel_whose_outcome_is_unknown_is_retryable_and_not_read_back(
    api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    provider = make_provider(api, max_retries=0)
    sub = await preapproval_of(provider, mp)
    api.inject(Fault(drop=True, after_work=True), path=f"/preapproval/{sub}")
    with pytest.raises(ProviderError) as lost:
        await provider.cancel_subscription(
            provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-1"
        )
    assert lost.value.retryable
    assert api.sent("GET", "/preapproval") == []
    again = await provider.cancel_subscription(
        provider_id=sub, at_period_end=False, idempotency_key="qzpay-cancel-1"
    )
    assert again.status == "canceled"


def preapproval(**fields: Any) -> dict[str, Any]:
    return {
        "id": "2c93808a",
        "status": "authorized",
        "external_reference": "qzpay-subscription-1",
        "date_created": mp_time(NOW),
        "last_modified": mp_time(NOW + timedelta(days=1)),
        "next_payment_date": mp_time(NOW + timedelta(days=14)),
        "auto_recurring": {"start_date": mp_time(NOW + timedelta(days=14))},
        "summarized": {"charged_quantity": 0},
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "status", "trial_end"),
    [
        ({}, "trialing", NOW + timedelta(days=14)),
        ({"summarized": {"charged_quantity": 1}}, "active", None),
        ({"summarized": None}, "trialing", NOW + timedelta(days=14)),
        ({"auto_recurring": {"start_date": mp_time(NOW)}}, "active", None),
        ({"auto_recurring": {}}, "active", None),
        ({"auto_recurring": {"free_trial": {"frequency": 7, "frequency_type": "days"}}},
         "trialing", NOW + timedelta(days=14)),
        ({"next_payment_date": None}, "trialing", NOW + timedelta(days=14)),
        ({"status": "pending"}, "incomplete", None),
        ({"status": "paused"}, "paused", None),
        ({"status": "cancelled"}, "canceled", None),
    ],
)  # fmt: skip
def test_a_preapproval_maps_to_a_neutral_status_by_its_own_fields_alone(
    fields: dict[str, Any], status: str, trial_end: datetime | None
) -> None:
    mapped = mp_statuses.subscription(preapproval(**fields))
    assert mapped.status in SUBSCRIPTION_STATUSES
    assert (mapped.status, mapped.trial_end) == (status, trial_end)
    assert mapped.provider_status == fields.get("status", "authorized")
    ended = NOW + timedelta(days=1) if status == "canceled" else None
    assert (mapped.canceled_at, mapped.ended_at) == (ended, ended)


def test_a_preapproval_with_an_unknown_status_or_an_unreadable_time_is_refused() -> None:
    for fields, rule in (
        ({"status": "finished"}, "subscription_status"),
        ({"next_payment_date": "tomorrow"}, "timestamp"),
        ({"date_created": "2028-01-31T05:00:00"}, "timestamp"),  # no offset: which time?
    ):
        with pytest.raises(ProviderError) as refused:
            mp_statuses.subscription(preapproval(**fields))
        assert (refused.value.retryable, refused.value.rule) == (False, rule)


async def test_the_notification_mercadopago_sends_about_a_preapproval_names_it(
    provider: MercadoPagoProvider, mp: MercadoPagoAPI
) -> None:
    sub = await preapproval_of(provider, mp)
    body, query = mp.notification(sub)
    headers = provider.sign_webhook(data_id=sub, timestamp=NOW, request_id="req-9")

    event = provider.verify_webhook(payload=body, headers=headers, now=NOW, query=query)

    assert (event.type, dict(event.data)) == (
        "subscription.updated",
        {"provider_subscription_id": sub},
    )


# -- threads and concurrency --------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_calls_run_in_worker_threads_and_the_loop_stays_responsive(
    api: LoopbackAPI, mp: MercadoPagoAPI
) -> None:
    provider = make_provider(api)
    customer, card = await customer_and_card(provider, mp)
    api.inject(Fault(delay=0.5), path="/v1/payments")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(tick)
        result = await provider.charge(charge_request(customer, card))
        tasks.cancel_scope.cancel()
    assert result.status == "succeeded"
    assert ticks >= 20  # ~50 while the fake waited; a blocked loop would count none


async def test_at_most_max_concurrency_calls_are_in_flight() -> None:
    mp = MercadoPagoAPI()
    lock = threading.Lock()
    in_flight = peak = 0

    def slow(request: Request) -> Response:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.15)
        with lock:
            in_flight -= 1
        return mp(request)

    with LoopbackAPI(slow) as server:
        provider = make_provider(server, max_concurrency=2)

        async def look_up(key: str) -> None:
            await provider.retrieve_charge(idempotency_key=key)

        async with anyio.create_task_group() as tasks:
            for n in range(6):
                tasks.start_soon(look_up, f"k{n}")
    assert peak == 2


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"access_token": ""}, "access_token"),
        ({"webhook_secret": " "}, "webhook_secret"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": "2"}, "max_retries"),
        ({"http_client": object()}, "http_client"),
        ({"webhook_tolerance": timedelta(seconds=-1)}, "webhook_tolerance"),
    ],
)
def test_bad_configuration_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    options: dict[str, Any] = {"access_token": ACCESS_TOKEN, "webhook_secret": SECRET, **changes}
    with pytest.raises(ValidationError) as refused:
        MercadoPagoProvider(**options)
    assert refused.value.field == field
    assert ACCESS_TOKEN not in str(refused.value)


# -- webhooks -----------------------------------------------------------------------------


def notification(data_id: str = "1234567890", kind: str = "payment", **extra: Any) -> bytes:
    body = {
        "id": 112233445566,
        "live_mode": False,
        "type": kind,
        "date_created": "2028-01-31T06:00:00.000-03:00",
        "action": f"{kind}.updated",
        "data": {"id": data_id},
        **extra,
    }
    return json.dumps(body).encode()


def test_a_signed_payment_notification_is_a_neutral_payment_update(
    provider: MercadoPagoProvider,
) -> None:
    headers = provider.sign_webhook(data_id="1234567890", timestamp=NOW, request_id="req-1")
    event = provider.verify_webhook(
        payload=notification(),
        headers=headers,
        now=NOW + timedelta(seconds=30),
        query={"data.id": "1234567890", "type": "payment"},
    )
    assert (event.provider, event.provider_event_id, event.type, event.provider_type) == (
        "mercadopago",
        "112233445566",
        "payment.updated",
        "payment.updated",
    )
    assert event.type.split(".")[0] in WEBHOOK_KINDS
    assert dict(event.data) == {"provider_payment_id": "1234567890"}
    assert event.occurred_at == datetime(2028, 1, 31, 9, tzinfo=UTC)


def test_the_signature_is_the_one_mercadopagos_own_validator_accepts(
    provider: MercadoPagoProvider,
) -> None:
    headers = provider.sign_webhook(data_id="1234567890", timestamp=NOW, request_id="req-1")
    WebhookSignatureValidator.validate(
        headers["x-signature"], "req-1", "1234567890", SECRET
    )  # raises if not


@pytest.mark.parametrize("kind", ["subscription_preapproval", "preapproval"])
def test_a_preapproval_notification_is_a_subscription_update(
    provider: MercadoPagoProvider, kind: str
) -> None:
    headers = provider.sign_webhook(data_id="2c93808a", timestamp=NOW, request_id="r")
    event = provider.verify_webhook(
        payload=notification("2c93808a", kind), headers=headers, now=NOW
    )
    assert event.type == "subscription.updated"
    assert dict(event.data) == {"provider_subscription_id": "2c93808a"}


def test_other_notifications_get_a_type_outside_the_webhook_kinds(
    provider: MercadoPagoProvider,
) -> None:
    headers = provider.sign_webhook(data_id="55", timestamp=NOW)
    event = provider.verify_webhook(
        payload=notification("55", "merchant_order"), headers=headers, now=NOW
    )
    assert event.type == "mercadopago.merchant_order"
    assert event.type.split(".")[0] not in WEBHOOK_KINDS


def test_an_alphanumeric_data_id_is_signed_lower_cased(provider: MercadoPagoProvider) -> None:
    headers = provider.sign_webhook(data_id="AbC123", timestamp=NOW, request_id="r")
    WebhookSignatureValidator.validate(headers["x-signature"], "r", "abc123", SECRET)
    event = provider.verify_webhook(
        payload=notification("AbC123", "preapproval"),
        headers=headers,
        now=NOW,
        query={"data.id": "AbC123"},
    )
    assert event.data["provider_subscription_id"] == "AbC123"


def test_a_notification_without_its_own_id_gets_a_stable_one(
    provider: MercadoPagoProvider,
) -> None:
    body = json.loads(notification())
    del body["id"]
    payload = json.dumps(body).encode()
    ids = {
        provider.verify_webhook(
            payload=payload,
            headers=provider.sign_webhook(data_id="1234567890", timestamp=at, request_id=rid),
            now=NOW,
        ).provider_event_id
        for at, rid in ((NOW, "r1"), (NOW + timedelta(seconds=20), "r2"))
    }
    assert len(ids) == 1  # every redelivery of it is the same event


def test_a_millisecond_ts_is_read_as_milliseconds(provider: MercadoPagoProvider) -> None:
    ts = str(int(NOW.timestamp() * 1000))
    from qzpay.adapters.mercadopago._webhooks import signature

    header = f"ts={ts},v1={signature(SECRET.encode(), '1234567890', 'r', ts)}"
    headers = {"X-Signature": header, "X-Request-Id": "r"}
    event = provider.verify_webhook(payload=notification(), headers=headers, now=NOW)
    assert event.type == "payment.updated"
    with pytest.raises(SignatureError, match="away from now"):
        provider.verify_webhook(
            payload=notification(), headers=headers, now=NOW + timedelta(hours=1)
        )


def _refused(
    provider: MercadoPagoProvider,
    *,
    payload: bytes,
    headers: dict[str, str],
    now: datetime = NOW,
    query: dict[str, str] | None = None,
) -> SignatureError:
    with pytest.raises(SignatureError) as refused:
        provider.verify_webhook(payload=payload, headers=headers, now=now, query=query)
    sent_signature = headers.get("x-signature", "").partition("v1=")[2]
    for secret in (SECRET, sent_signature):
        assert len(secret) < 8 or secret not in str(refused.value)
    return refused.value


def test_a_tampered_data_id_is_refused(provider: MercadoPagoProvider) -> None:
    headers = provider.sign_webhook(data_id="1234567890", timestamp=NOW, request_id="r")
    _refused(provider, payload=notification("999"), headers=headers)
    _refused(provider, payload=notification(), headers=headers, query={"data.id": "999"})
    _refused(
        provider, payload=notification("999"), headers=headers, query={"data.id": "1234567890"}
    )


def test_a_tampered_request_id_or_a_wrong_secret_is_refused(api: LoopbackAPI) -> None:
    provider = make_provider(api)
    headers = provider.sign_webhook(data_id="1234567890", timestamp=NOW, request_id="r")
    _refused(provider, payload=notification(), headers={**headers, "x-request-id": "other"})
    other = MercadoPagoProvider(access_token=ACCESS_TOKEN, webhook_secret="another-secret-123")
    forged = other.sign_webhook(data_id="1234567890", timestamp=NOW, request_id="r")
    _refused(provider, payload=notification(), headers=forged)


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_an_expired_or_future_ts_is_refused(
    provider: MercadoPagoProvider, offset: timedelta
) -> None:
    headers = provider.sign_webhook(data_id="1234567890", timestamp=NOW + offset)
    assert "away from now" in str(_refused(provider, payload=notification(), headers=headers))


def test_a_replayed_notification_is_refused_once_out_of_tolerance_and_is_the_same_event(
    provider: MercadoPagoProvider,
) -> None:
    headers = provider.sign_webhook(data_id="1234567890", timestamp=NOW, request_id="r")
    first = provider.verify_webhook(payload=notification(), headers=headers, now=NOW)
    again = provider.verify_webhook(
        payload=notification(), headers=headers, now=NOW + timedelta(minutes=4)
    )
    assert again.provider_event_id == first.provider_event_id  # the service stores it once
    _refused(provider, payload=notification(), headers=headers, now=NOW + timedelta(minutes=10))


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=abc", "ts=1801386000", "ts=abc,v1=abc", "ts=,v1=", "garbage", "ts=1;v1=2"],
)
def test_a_missing_or_malformed_header_is_refused(
    provider: MercadoPagoProvider, header: str | None
) -> None:
    headers = {} if header is None else {"x-signature": header}
    _refused(provider, payload=notification(), headers=headers)


def test_a_signed_body_that_is_not_a_notification_is_a_validation_error(
    provider: MercadoPagoProvider,
) -> None:
    headers = provider.sign_webhook(data_id="1", timestamp=NOW)
    for payload in (b"not json", b"[1]", json.dumps({"data": {"id": "1"}}).encode()):
        with pytest.raises(ValidationError) as refused:
            provider.verify_webhook(
                payload=payload, headers=headers, now=NOW, query={"data.id": "1"}
            )
        assert refused.value.field == "payload"
        assert isinstance(refused.value, QZPayError)
