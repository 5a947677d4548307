"""One set-up per payment provider for the provider-contract tests (``test_provider_contract``).

A ``ProviderSetup`` is what a contract scenario needs to know about a provider beyond the
port: how to make a card in the provider's own test vocabulary, how many customers, charges
and subscriptions the provider holds (to prove an idempotent replay made nothing new), how
the customer finishes 3-D Secure, how the provider signs a webhook about a charge or a
subscription, how its own billing moves a subscription, and how to lose a charge's answers
on the way back. Each ``*_setup`` context manager starts what the
provider talks to (a loopback fake of its HTTP API for Stripe and MercadoPago) and stops it
at the end.

The adapters' own retries are switched off here (Stripe's ``max_network_retries=0``,
MercadoPago's ``max_retries=0``): the per-provider modules test those retries; here a fault
is one lost answer per qzpay attempt, so ``lose_charge_answers`` can count them exactly.

A third-party provider joins the contract by writing one more set-up like these and adding
it to ``SETUPS`` (docs/providers.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.mercadopago import MercadoPagoProvider
from qzpay.adapters.stripe import StripeProvider
from qzpay.contracts.provider import PaymentProvider
from qzpay.errors import ProviderError
from tests.providers.loopback import Fault, LoopbackAPI
from tests.providers.mercadopago_api import ACCESS_TOKEN, LoopbackHttpClient, MercadoPagoAPI
from tests.providers.stripe_api import API_KEY, StripeAPI

Card = Literal["chargeable", "declining", "three_d_secure"]
"""The kinds of test card a scenario asks for (``ProviderSetup.token``); a ``declining``
card is declined for insufficient funds, a reason every provider here names."""

STRIPE_WEBHOOK_SECRET = "whsec_contract_0123456789abcdef"
MERCADOPAGO_WEBHOOK_SECRET = "mp-contract-webhook-secret-5e1f"
FAKE_WEBHOOK_SECRET = "whsec_fake_contract_secret"


@dataclass(frozen=True)
class Delivery:
    """A webhook as the provider sends it: the raw body, its headers, the notification
    URL's query parameters (MercadoPago signs the ``data.id`` it puts there)."""

    payload: bytes
    headers: Mapping[str, str]
    query: Mapping[str, str] | None = None

    def with_id_replaced(self, old: str, new: str) -> Delivery:
        """The same delivery about another object: ``old`` replaced by ``new`` in the body
        and the query, the signature left as it was (a forged or tampered delivery)."""
        query = (
            None if self.query is None else {k: v.replace(old, new) for k, v in self.query.items()}
        )
        return Delivery(self.payload.replace(old.encode(), new.encode()), self.headers, query)


@dataclass(frozen=True)
class ProviderSetup:
    """What the contract scenarios need to know about one provider (see the module).

    - ``token(card)``: a payment-method token ``attach_payment_method`` takes, for a card
      that charges, declines, or needs 3-D Secure (``None`` where the provider has none);
    - ``customers()``, ``charges()``: how many the provider holds now;
    - ``charge_made_with(key)``: the provider's id of the charge made with qzpay's key;
    - ``complete_authentication(provider_id)``: the customer finished 3-D Secure;
    - ``delivery(provider_payment_id, idempotency_key, at)``: a signed webhook saying the
      charge changed, signed at ``at``;
    - ``lose_charge_answers(n)``: the next ``n`` charge requests reach the provider (the
      first one charges) and every answer is lost on the way back;
    - ``secrets``: what must never show in an error message;
    - where ``capabilities.subscriptions``: ``price_id``, a price (plan) to subscribe to;
      ``subscriptions()``, how many the provider holds; ``unknown_subscription_id``, an id
      it never made; ``move_subscription(provider_id, status)``, the provider's own billing
      moving it to the neutral ``status`` (its own word for it); and
      ``subscription_delivery(provider_id, at)``, the signed webhook it sends about it.
    """

    name: str
    provider: PaymentProvider
    currency: str
    secrets: tuple[str, ...]
    unknown_charge_id: str
    token: Callable[[Card], str | None]
    customers: Callable[[], int]
    charges: Callable[[], int]
    charge_made_with: Callable[[str], str | None]
    delivery: Callable[[str, str, datetime], Delivery]
    lose_charge_answers: Callable[[int], None]
    complete_authentication: Callable[[str], None] | None = None
    price_id: str | None = None
    """A price (plan) at the provider that ``create_subscription`` can use."""
    subscriptions: Callable[[], int] | None = None
    unknown_subscription_id: str | None = None
    move_subscription: Callable[[str, str], None] | None = None
    subscription_delivery: Callable[[str, datetime], Delivery] | None = None


# -- FakeProvider -----------------------------------------------------------------------------

_FAKE_TOKENS: Mapping[Card, str] = {
    "chargeable": "pm_card_visa",
    "declining": "pm_card_chargeDeclinedInsufficientFunds",
    "three_d_secure": "pm_card_authenticationRequired",
}


FAKE_PRICE = "price_fake_contract_monthly"


@contextmanager
def fake_setup() -> Iterator[ProviderSetup]:
    """``FakeProvider``, in memory: qzpay's reference implementation of the port."""
    fake = FakeProvider(webhook_secret=FAKE_WEBHOOK_SECRET)

    def charge_made_with(key: str) -> str | None:
        made = [c.result.provider_id for c in fake.charges if c.request.idempotency_key == key]
        return made[0] if made else None

    def delivery(provider_payment_id: str, key: str, at: datetime) -> Delivery:
        body = json.dumps(
            {
                "id": f"evt_{provider_payment_id}",
                "type": "payment.succeeded",
                "created": int(at.timestamp()),
                "data": {"provider_payment_id": provider_payment_id, "idempotency_key": key},
            }
        ).encode()
        return Delivery(body, fake.sign_webhook(body, at))

    def lose_charge_answers(n: int) -> None:
        lost = ProviderError("read timeout after the request was sent", retryable=True)
        for _ in range(n):  # the first charges; the others replay it; every answer is lost
            fake.fail_next("charge", lost, after=True)

    def complete_authentication(provider_id: str) -> None:
        fake.complete_authentication(provider_id)

    def move_subscription(provider_id: str, status: str) -> None:
        fake.update_subscription(provider_id, status=status)

    def subscription_delivery(provider_id: str, at: datetime) -> Delivery:
        body = json.dumps(
            {
                "id": f"evt_{provider_id}_{int(at.timestamp())}",
                "type": "subscription.updated",
                "created": int(at.timestamp()),
                "data": {"provider_subscription_id": provider_id},
            }
        ).encode()
        return Delivery(body, fake.sign_webhook(body, at))

    yield ProviderSetup(
        name="fake",
        provider=fake,
        currency="USD",
        secrets=(FAKE_WEBHOOK_SECRET,),
        unknown_charge_id="ch_fake_never_made",
        token=lambda card: _FAKE_TOKENS[card],
        customers=lambda: len(fake.customers),
        charges=lambda: len(fake.charges),
        charge_made_with=charge_made_with,
        delivery=delivery,
        lose_charge_answers=lose_charge_answers,
        complete_authentication=complete_authentication,
        price_id=FAKE_PRICE,
        subscriptions=lambda: len(fake.subscriptions),
        unknown_subscription_id="sub_fake_never_made",
        move_subscription=move_subscription,
        subscription_delivery=subscription_delivery,
    )


# -- StripeProvider ---------------------------------------------------------------------------

_STRIPE_TOKENS: Mapping[Card, str] = {
    "chargeable": "pm_card_visa",
    "declining": "pm_card_chargeDeclinedInsufficientFunds",
    "three_d_secure": "pm_card_authenticationRequired",
}
STRIPE_PRICE = "price_contract_monthly"


@contextmanager
def stripe_setup() -> Iterator[ProviderSetup]:
    """``StripeProvider`` with the real stripe SDK against the loopback fake of Stripe."""
    stripe_api = StripeAPI()
    stripe_api.add_price(STRIPE_PRICE, unit_amount=2900)
    with LoopbackAPI(stripe_api, nodelay=True) as api:
        provider = StripeProvider(
            api_key=API_KEY,
            webhook_secret=STRIPE_WEBHOOK_SECRET,
            api_base=api.url,
            max_network_retries=0,
            rate_limit_retries=0,
            timeout=10.0,
        )

        def charge_made_with(key: str) -> str | None:
            made = [
                pi_id
                for pi_id, intent in stripe_api.payment_intents.items()
                if intent["metadata"].get("qzpay_key") == key
            ]
            return made[0] if made else None

        def delivery(provider_payment_id: str, key: str, at: datetime) -> Delivery:
            intent = stripe_api.payment_intents.get(provider_payment_id) or {
                "id": provider_payment_id,
                "object": "payment_intent",
                "status": "succeeded",
                "metadata": {"qzpay_key": key},
            }
            body = stripe_api.event("payment_intent.succeeded", intent, created=int(at.timestamp()))
            return Delivery(body, provider.sign_webhook(body, at))

        def lose_charge_answers(n: int) -> None:
            # The path is a prefix: only POSTs to create PaymentIntents come here before the
            # faults are used up (retrieval by key is GET .../search, sent after them).
            api.inject(Fault(drop=True, after_work=True), path="/v1/payment_intents", times=n)

        def complete_authentication(provider_id: str) -> None:
            stripe_api.complete_authentication(provider_id)

        def move_subscription(provider_id: str, status: str) -> None:
            stripe_api.move_subscription(provider_id, status=status)  # Stripe's words are ours

        def subscription_delivery(provider_id: str, at: datetime) -> Delivery:
            body = stripe_api.subscription_event(provider_id, created=int(at.timestamp()))
            return Delivery(body, provider.sign_webhook(body, at))

        yield ProviderSetup(
            name="stripe",
            provider=provider,
            currency="USD",
            secrets=(API_KEY, STRIPE_WEBHOOK_SECRET),
            unknown_charge_id="pi_never_made_0000",
            token=lambda card: _STRIPE_TOKENS[card],
            customers=lambda: len(stripe_api.customers),
            charges=lambda: len(stripe_api.payment_intents),
            charge_made_with=charge_made_with,
            delivery=delivery,
            lose_charge_answers=lose_charge_answers,
            complete_authentication=complete_authentication,
            price_id=STRIPE_PRICE,
            subscriptions=lambda: len(stripe_api.subscriptions),
            unknown_subscription_id="sub_never_made_0000",
            move_subscription=move_subscription,
            subscription_delivery=subscription_delivery,
        )


# -- MercadoPagoProvider ----------------------------------------------------------------------

_MERCADOPAGO_HOLDERS: Mapping[Card, str | None] = {
    "chargeable": "APRO",
    "declining": "FUND",
    "three_d_secure": None,  # capabilities.three_d_secure is False
}
MERCADOPAGO_PLAN = "2c938084726fca480172750000000000"
_PREAPPROVAL_STATUSES: Mapping[str, str] = {
    "incomplete": "pending",
    "active": "authorized",
    "paused": "paused",
    "canceled": "cancelled",
}
"""The neutral status a scenario asks for, in MercadoPago's words."""


@contextmanager
def mercadopago_setup() -> Iterator[ProviderSetup]:
    """``MercadoPagoProvider`` with the real mercadopago SDK against the fake of its API
    (reached through the SDK's own ``HttpClient``, as MercadoPago's base URL is fixed)."""
    mp = MercadoPagoAPI(currency="BRL")
    with LoopbackAPI(mp, nodelay=True) as api:
        provider = MercadoPagoProvider(
            access_token=ACCESS_TOKEN,
            webhook_secret=MERCADOPAGO_WEBHOOK_SECRET,
            http_client=LoopbackHttpClient(api.url),
            max_retries=0,
            timeout=10.0,
        )

        def token(card: Card) -> str | None:
            holder = _MERCADOPAGO_HOLDERS[card]
            return None if holder is None else mp.card_token(holder)  # single use: a new one

        def charge_made_with(key: str) -> str | None:
            made = mp.payments_with(key)
            return str(made[0]["id"]) if made else None

        def delivery(provider_payment_id: str, key: str, at: datetime) -> Delivery:
            # MercadoPago's notification names the payment only; qzpay's key is not in it.
            body = json.dumps(
                {
                    "id": 12345678901,
                    "live_mode": False,
                    "type": "payment",
                    "action": "payment.updated",
                    "date_created": at.isoformat(),
                    "data": {"id": provider_payment_id},
                }
            ).encode()
            headers = provider.sign_webhook(
                data_id=provider_payment_id, timestamp=at, request_id="contract-request-1"
            )
            return Delivery(body, headers, {"data.id": provider_payment_id, "type": "payment"})

        def lose_charge_answers(n: int) -> None:
            # Only the payment's POST matches before the faults are used up: the card read
            # and its token are other paths, and the search by key comes after.
            api.inject(Fault(drop=True, after_work=True), path="/v1/payments", times=n)

        def move_subscription(provider_id: str, status: str) -> None:
            charged = 1 if status == "active" else None  # active: past its first charge
            mp.move_preapproval(
                provider_id, status=_PREAPPROVAL_STATUSES[status], charged_quantity=charged
            )

        def subscription_delivery(provider_id: str, at: datetime) -> Delivery:
            body, query = mp.notification(provider_id)
            headers = provider.sign_webhook(
                data_id=provider_id, timestamp=at, request_id="contract-request-2"
            )
            return Delivery(body, headers, query)

        yield ProviderSetup(
            name="mercadopago",
            provider=provider,
            currency="BRL",
            secrets=(ACCESS_TOKEN, MERCADOPAGO_WEBHOOK_SECRET),
            unknown_charge_id="999999999",
            token=token,
            customers=lambda: len(mp.customers),
            charges=lambda: len(mp.payments),
            charge_made_with=charge_made_with,
            delivery=delivery,
            lose_charge_answers=lose_charge_answers,
            price_id=MERCADOPAGO_PLAN,
            subscriptions=lambda: len(mp.preapprovals),
            unknown_subscription_id="0" * 32,
            move_subscription=move_subscription,
            subscription_delivery=subscription_delivery,
        )


SETUPS: Mapping[str, Callable[[], AbstractContextManager[ProviderSetup]]] = {
    "fake": fake_setup,
    "stripe": stripe_setup,
    "mercadopago": mercadopago_setup,
}
"""Every provider the contract runs on, by the id pytest shows."""
