"""A stateful fake of the slice of Stripe's API that ``StripeProvider`` uses, on loopback.

The real stripe SDK talks to it over HTTP (``StripeAPI().serve()`` gives a running
``LoopbackAPI``), so the tests see exactly what the SDK sends: form-encoded bodies
(``metadata[qzpay_key]=...``), ``Idempotency-Key``, ``Stripe-Version``. It keeps the rules
of Stripe's test mode that the adapter depends on:

- test tokens (``pm_card_visa``, ``pm_card_chargeDeclined``, ...) attach fine, each attach
  making a new ``pm_...``; the decline happens when a PaymentIntent is confirmed: HTTP
  402, a ``card_error`` body with ``code``, ``decline_code`` and the whole
  ``payment_intent``, which stays ``requires_payment_method`` with its
  ``last_payment_error``;
- ``pm_card_authenticationRequired`` needs 3-D Secure on every charge: ``requires_action``
  on session, a 402 ``authentication_required`` decline off session;
  ``complete_authentication`` stands in for the customer finishing it;
- confirming with neither ``return_url`` nor ``allow_redirects=never`` (nor
  ``payment_method_types``) is refused, as Stripe refuses it;
- idempotency: the same key with the same parameters replays the first answer (with
  ``Idempotent-Replayed: true``), with other parameters or on another endpoint it is a 400
  ``idempotency_error``; answers to requests that failed validation are not kept; a key
  is forgotten 24 hours after its first use (by ``now``), as Stripe prunes them;
- refunds never exceed what is left of the payment (400 ``amount_too_large``); they are
  listed newest first, by ``payment_intent`` where asked, in pages (``limit``,
  ``starting_after``);
- subscriptions as API versions since 2025-03-31 shape them (the current period on the
  item; ``legacy_periods=True`` puts it on the subscription, as older versions did): a
  trial's period is the trial, else a calendar month. ``POST /v1/subscriptions/{id}``
  sets ``cancel_at_period_end`` (and ``canceled_at``, the time of the request); ``DELETE``
  cancels now. A canceled subscription can still be read, but a DELETE answers 404 "No such
  subscription" and an update 400, as Stripe answers;
- every answer carries a ``Request-Id``; a wrong API key is a 401 naming the key masked.

PaymentIntents and subscriptions are searched by one metadata value. With
``lagging_search=True``, a new one is not found by search until ``index_search()``: Stripe's search is eventually consistent. ``move_subscription`` moves a
subscription as Stripe's own billing would, and ``subscription_event`` is the webhook body
Stripe would send about it.
"""

from __future__ import annotations

import calendar
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from tests.providers.loopback import LoopbackAPI, Request, Response

API_KEY: Final = "sk_test_fake_0123456789abcdefSECRET"
"""The key the fake accepts (tests check that it never shows in an error)."""

Obj = dict[str, Any]


@dataclass(frozen=True)
class CardBehavior:
    brand: str
    last4: str
    behavior: str = "succeed"  # succeed | decline | authenticate
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None


_DECLINED = "Your card was declined."
TEST_CARDS: Final[Mapping[str, CardBehavior]] = {
    "pm_card_visa": CardBehavior("visa", "4242"),
    "pm_card_mastercard": CardBehavior("mastercard", "4444"),
    "pm_card_amex": CardBehavior("amex", "8431"),
    "pm_card_chargeDeclined": CardBehavior(
        "visa", "0002", "decline", "card_declined", "generic_decline", _DECLINED
    ),
    "pm_card_chargeDeclinedInsufficientFunds": CardBehavior(
        "visa",
        "9995",
        "decline",
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": CardBehavior(
        "visa", "0069", "decline", "expired_card", "expired_card", "Your card has expired."
    ),
    "pm_card_chargeDeclinedIncorrectCvc": CardBehavior(
        "visa",
        "0127",
        "decline",
        "incorrect_cvc",
        "incorrect_cvc",
        "Your card's security code is incorrect.",
    ),
    "pm_card_chargeDeclinedFraudulent": CardBehavior(
        "visa", "0019", "decline", "card_declined", "fraudulent", _DECLINED
    ),
    "pm_card_chargeDeclinedProcessingError": CardBehavior(
        "visa",
        "0119",
        "decline",
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "pm_card_authenticationRequired": CardBehavior("visa", "3184", "authenticate"),
}


class StripeError(Exception):
    """An error answer: raised inside a handler, turned into Stripe's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: Obj | None = None,
        keep: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: Obj = {"type": type, "message": message}
        if code:
            self.body["code"] = code
        if param:
            self.body["param"] = param
        self.body.update(extra or {})
        self.keep = keep
        """Keep the answer for its idempotency key (the request was executed: a decline)."""


KEY_LIFETIME: Final = 24 * 3600
"""Seconds Stripe remembers an idempotency key: a key sent again later is a new request."""


@dataclass
class _KeyUse:
    endpoint: str
    params: Mapping[str, str]
    response: Response
    at: int


@dataclass
class StripeAPI:
    """The fake's state and its request handler (``serve`` puts it on loopback)."""

    api_key: str = API_KEY
    lagging_search: bool = False
    legacy_periods: bool = False
    now: Callable[[], int] = field(default=lambda: int(time.time()))
    customers: dict[str, Obj] = field(default_factory=dict)
    payment_methods: dict[str, Obj] = field(default_factory=dict)
    payment_intents: dict[str, Obj] = field(default_factory=dict)
    refunds: dict[str, Obj] = field(default_factory=dict)
    checkout_sessions: dict[str, Obj] = field(default_factory=dict)
    subscriptions: dict[str, Obj] = field(default_factory=dict)
    setup_intents: dict[str, Obj] = field(default_factory=dict)
    prices: dict[str, Obj] = field(default_factory=dict)
    cards: dict[str, CardBehavior] = field(default_factory=dict)
    unindexed: set[str] = field(default_factory=set)
    keys: dict[str, _KeyUse] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    def serve(self) -> LoopbackAPI:
        """A started ``LoopbackAPI`` answering with this fake (stop it when done)."""
        return LoopbackAPI(self).start()

    # -- test controls ----------------------------------------------------------------------

    def add_price(self, price_id: str, *, unit_amount: int, currency: str = "usd") -> None:
        """A recurring monthly price that subscriptions can use."""
        with self._lock:
            self.prices[price_id] = {
                "id": price_id,
                "object": "price",
                "unit_amount": unit_amount,
                "currency": currency,
                "recurring": {"interval": "month", "interval_count": 1},
            }

    def swap_card(self, payment_method_id: str, token: str) -> None:
        """Make an attached payment method behave as another test card from now on (the
        customer's card was blocked, say): ``swap_card(pm, "pm_card_chargeDeclined")``."""
        with self._lock:
            self.cards[payment_method_id] = TEST_CARDS[token]

    def complete_authentication(self, intent_id: str, *, succeed: bool = True) -> Obj:
        """The customer finished (or failed) 3-D Secure on a ``requires_action`` intent."""
        with self._lock:
            intent = self.payment_intents[intent_id]
            assert intent["status"] == "requires_action", intent["status"]
            intent["next_action"] = None
            if succeed:
                self._succeed(intent)
            else:
                intent["status"] = "requires_payment_method"
                intent["last_payment_error"] = {
                    "type": "invalid_request_error",
                    "code": "payment_intent_authentication_failure",
                    "message": "The provided PaymentMethod has failed authentication.",
                }
            return dict(intent)

    def set_status(self, intent_id: str, status: str) -> None:
        """Move an intent to ``status`` as Stripe would later (``processing`` settling)."""
        with self._lock:
            self.payment_intents[intent_id]["status"] = status

    def refund_directly(self, intent_id: str, amount: int) -> Obj:
        """A refund made outside qzpay (from Stripe's Dashboard): it carries no qzpay key."""
        with self._lock:
            return self._create_refund(form={"payment_intent": intent_id, "amount": str(amount)})

    def move_subscription(
        self,
        subscription_id: str,
        *,
        status: str | None = None,
        current_period_start: int | None = None,
        current_period_end: int | None = None,
        **fields: Any,
    ) -> Obj:
        """Move a subscription as Stripe's billing would (a renewal, a failed invoice, the
        end of a trial): ``status`` and the period (unix seconds, on the item or, with
        ``legacy_periods``, on the subscription), and any other field as given. Send qzpay
        ``subscription_event`` about it afterwards."""
        with self._lock:
            subscription = self._find(self.subscriptions, subscription_id, noun="subscription")
            if status is not None:
                subscription["status"] = status
            holder = self._period_holder(subscription)
            if current_period_start is not None:
                holder["current_period_start"] = current_period_start
            if current_period_end is not None:
                holder["current_period_end"] = current_period_end
            subscription.update(fields)
            return _copy(subscription)

    def subscription_event(
        self,
        subscription_id: str,
        event_type: str = "customer.subscription.updated",
        *,
        created: int | None = None,
    ) -> bytes:
        """The webhook body Stripe sends about the subscription as it stands now."""
        with self._lock:
            subscription = _copy(
                self._find(self.subscriptions, subscription_id, noun="subscription")
            )
        return self.event(event_type, subscription, created=created)

    def index_search(self) -> None:
        """Search catches up: every PaymentIntent and subscription made so far is found."""
        with self._lock:
            self.unindexed.clear()

    def event(self, event_type: str, obj: Obj, *, created: int | None = None) -> bytes:
        """A webhook body for ``obj`` as Stripe sends it (``id``, ``type``, ``data``...)."""
        with self._lock:
            event_id = self._new_id("evt")
        return json.dumps(
            {
                "id": event_id,
                "object": "event",
                "api_version": "2026-10-28.endive",
                "created": self.now() if created is None else created,
                "livemode": False,
                "type": event_type,
                "data": {"object": obj},
            }
        ).encode()

    # -- the handler ------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response:
        with self._lock:
            self._counter += 1
            request_id = f"req_fake{self._counter:06d}"
            headers = {"Request-Id": request_id, "Stripe-Version": "2026-10-28.endive"}
            try:
                self._authenticate(request)
                response = self._idempotent(request)
            except StripeError as error:
                response = Response(error.status, {"error": error.body})
            return Response(response.status, response.body, {**response.headers, **headers})

    def _authenticate(self, request: Request) -> None:
        given = (request.header("Authorization") or "").removeprefix("Bearer ")
        if given != self.api_key:
            masked = f"{given[:8]}{'*' * max(0, len(given) - 12)}{given[-4:]}"
            raise StripeError(
                401, f"Invalid API Key provided: {masked}", type="invalid_request_error"
            )

    def _idempotent(self, request: Request) -> Response:
        key = request.header("Idempotency-Key")
        if request.method != "POST" or key is None:
            return self._route(request)
        endpoint = f"{request.method} {request.path}"
        params = request.form
        prior = self.keys.get(key)
        if prior is not None and self.now() - prior.at >= KEY_LIFETIME:
            prior = None  # forgotten: Stripe prunes keys after 24 hours
        if prior is not None:
            if prior.endpoint != endpoint or prior.params != params:
                raise StripeError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with. Try using a key other than "
                    f"'{key}' if you meant to execute a different request.",
                    type="idempotency_error",
                )
            return Response(
                prior.response.status,
                prior.response.body,
                {**prior.response.headers, "Idempotent-Replayed": "true"},
            )
        try:
            response = self._route(request)
        except StripeError as error:
            if not error.keep:
                raise
            response = Response(error.status, {"error": error.body})
        self.keys[key] = _KeyUse(endpoint, params, response, self.now())
        return response

    def _route(self, request: Request) -> Response:
        method, parts, form = request.method, request.path.strip("/").split("/"), request.form
        if parts[:1] != ["v1"]:
            raise StripeError(404, f"Unrecognized request URL ({method}: {request.path}).")
        route = parts[1:]
        for pattern, handler in self._routes():
            params = _match(pattern, method, route)
            if params is not None:
                return Response(200, handler(*params, form=form, query=request.query))
        raise StripeError(404, f"Unrecognized request URL ({method}: {request.path}).")

    def _routes(self) -> list[tuple[str, Callable[..., Obj]]]:
        return [
            ("POST customers", self._create_customer),
            ("POST payment_methods/* /attach", self._attach),
            ("POST payment_methods/* /detach", self._detach),
            ("GET payment_methods/*", lambda pm, **_: self._find(self.payment_methods, pm)),
            ("GET payment_intents/search", self._search_intents),
            ("POST payment_intents", self._create_intent),
            ("POST payment_intents/* /confirm", self._confirm_intent),
            ("GET payment_intents/*", lambda pi, **_: self._find(self.payment_intents, pi)),
            ("POST refunds", self._create_refund),
            ("GET refunds", self._list_refunds),
            ("GET refunds/*", lambda re, **_: self._find(self.refunds, re)),
            ("POST checkout/sessions", self._create_checkout),
            ("POST subscriptions", self._create_subscription),
            ("GET subscriptions/search", self._search_subscriptions),
            ("GET subscriptions/*", lambda sub, **_: _copy(self._subscription(sub))),
            ("POST subscriptions/*", self._update_subscription),
            ("DELETE subscriptions/*", self._cancel_subscription),
            ("POST setup_intents", self._create_setup_intent),
        ]

    # -- customers and payment methods ------------------------------------------------------

    def _create_customer(self, *, form: Mapping[str, str], **_: Any) -> Obj:
        customer: Obj = {
            "id": self._new_id("cus"),
            "object": "customer",
            "email": form.get("email"),
            "name": form.get("name"),
            "metadata": _metadata(form),
            "created": self.now(),
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        return customer

    def _attach(self, token: str, *, form: Mapping[str, str], **_: Any) -> Obj:
        customer = self._require(form, "customer")
        self._find(self.customers, customer)
        if token in TEST_CARDS:
            card = TEST_CARDS[token]
            method: Obj = {
                "id": self._new_id("pm"),
                "object": "payment_method",
                "type": "card",
                "card": {
                    "brand": card.brand,
                    "last4": card.last4,
                    "exp_month": 12,
                    "exp_year": 2034,
                    "funding": "credit",
                    "country": "US",
                },
                "customer": None,
                "created": self.now(),
                "livemode": False,
                "metadata": {},
            }
            self.payment_methods[method["id"]] = method
            self.cards[method["id"]] = card
        else:
            method = self._find(self.payment_methods, token, noun="PaymentMethod")
            if method["customer"] not in (None, customer):
                raise StripeError(
                    400,
                    "The payment method you provided has already been attached to a customer.",
                    code="payment_method_unexpected_state",
                )
        method["customer"] = customer
        return dict(method)

    def _detach(self, pm: str, **_: Any) -> Obj:
        method = self._find(self.payment_methods, pm, noun="PaymentMethod")
        if method["customer"] is None:
            raise StripeError(
                400,
                "The payment method you provided is not attached to a customer so "
                "detachment is impossible.",
                code="payment_method_unexpected_state",
            )
        method["customer"] = None
        return dict(method)

    # -- payment intents --------------------------------------------------------------------

    def _create_intent(self, *, form: Mapping[str, str], **_: Any) -> Obj:
        amount = _positive_int(form, "amount")
        currency = self._require(form, "currency")
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise StripeError(400, f"Invalid currency: {currency}.", param="currency")
        customer = form.get("customer")
        if customer is not None:
            self._find(self.customers, customer, noun="customer")
        if form.get("off_session") == "true" and form.get("confirm") != "true":
            raise StripeError(
                400, "off_session can only be used with confirm=true.", param="off_session"
            )
        intent_id = self._new_id("pi")
        intent: Obj = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "customer": customer,
            "description": form.get("description"),
            "metadata": _metadata(form),
            "payment_method": form.get("payment_method"),
            "status": "requires_payment_method",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(8)}",
            "next_action": None,
            "last_payment_error": None,
            "latest_charge": None,
            "cancellation_reason": None,
            "created": self.now(),
            "livemode": False,
            "amount_refunded": 0,
        }
        if form.get("payment_method"):
            self._check_method(intent, form["payment_method"])
            intent["status"] = "requires_confirmation"
        self.payment_intents[intent_id] = intent
        if self.lagging_search:
            self.unindexed.add(intent_id)
        if form.get("confirm") == "true":
            self._confirm(intent, form)
        return dict(intent)

    def _confirm_intent(self, pi: str, *, form: Mapping[str, str], **_: Any) -> Obj:
        intent = self._find(self.payment_intents, pi, noun="payment_intent")
        if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise StripeError(
                400,
                f"This PaymentIntent's status is {intent['status']}, so it cannot be confirmed.",
                code="payment_intent_unexpected_state",
            )
        if form.get("payment_method"):
            self._check_method(intent, form["payment_method"])
            intent["payment_method"] = form["payment_method"]
        self._confirm(intent, form)
        return dict(intent)

    def _check_method(self, intent: Obj, pm: str) -> None:
        method = self._find(self.payment_methods, pm, noun="PaymentMethod")
        if intent["customer"] is not None and method["customer"] != intent["customer"]:
            raise StripeError(
                400,
                f"The provided PaymentMethod {pm} does not belong to the Customer.",
                param="payment_method",
            )

    def _confirm(self, intent: Obj, form: Mapping[str, str]) -> None:
        if intent["payment_method"] is None:
            raise StripeError(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        redirects_allowed = form.get(
            "automatic_payment_methods[allow_redirects]"
        ) != "never" and not any(k.startswith("payment_method_types[") for k in form)
        if redirects_allowed and not form.get("return_url"):
            raise StripeError(
                400,
                "This PaymentIntent is configured to accept payment methods enabled in your "
                "Dashboard. Because some of these payment methods might redirect your "
                "customer off of your page, you must provide a `return_url`.",
                param="return_url",
            )
        card = self.cards[intent["payment_method"]]
        off_session = form.get("off_session") == "true"
        if card.behavior == "authenticate" and off_session:
            card = CardBehavior(
                card.brand,
                card.last4,
                "decline",
                "authentication_required",
                "authentication_required",
                "Your card was declined. This transaction requires authentication.",
            )
        if card.behavior == "succeed":
            self._succeed(intent)
        elif card.behavior == "authenticate":
            intent["status"] = "requires_action"
            if form.get("return_url"):
                intent["next_action"] = {
                    "type": "redirect_to_url",
                    "redirect_to_url": {
                        "url": f"https://hooks.stripe.com/3d_secure_2/authenticate/{intent['id']}",
                        "return_url": form["return_url"],
                    },
                }
            else:
                intent["next_action"] = {
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect"},
                }
        else:
            charge_id = self._new_id("ch")
            error = {
                "type": "card_error",
                "code": card.code,
                "decline_code": card.decline_code,
                "message": card.message,
                "charge": charge_id,
                "payment_method": dict(self.payment_methods[intent["payment_method"]]),
                "doc_url": f"https://stripe.com/docs/error-codes/{card.code}",
            }
            intent["status"] = "requires_payment_method"
            intent["latest_charge"] = charge_id
            intent["last_payment_error"] = dict(error)
            raise StripeError(
                402,
                card.message or _DECLINED,
                type="card_error",
                code=card.code,
                extra={**error, "payment_intent": dict(intent)},
                keep=True,
            )

    def _succeed(self, intent: Obj) -> None:
        intent["status"] = "succeeded"
        intent["amount_received"] = intent["amount"]
        intent["latest_charge"] = self._new_id("ch")
        intent["last_payment_error"] = None

    def _search_intents(self, *, query: Mapping[str, str], **_: Any) -> Obj:
        return self._search(self.payment_intents, query, "payment_intents")

    def _search_subscriptions(self, *, query: Mapping[str, str], **_: Any) -> Obj:
        return self._search(self.subscriptions, query, "subscriptions")

    def _search(self, objects: Mapping[str, Obj], query: Mapping[str, str], noun: str) -> Obj:
        """Stripe's search by one metadata value (the only query qzpay makes), newest first;
        what ``lagging_search`` keeps unindexed is not found yet."""
        wanted = re.fullmatch(r"metadata\['([^']+)'\]:'((?:[^'\\]|\\.)*)'", query.get("query", ""))
        if wanted is None:
            raise StripeError(400, "Invalid search query.", param="query")
        key, value = wanted.group(1), re.sub(r"\\(.)", r"\1", wanted.group(2))
        found = [
            _copy(o)
            for o in objects.values()
            if o["metadata"].get(key) == value and o["id"] not in self.unindexed
        ]
        return {
            "object": "search_result",
            "url": f"/v1/{noun}/search",
            "data": sorted(found, key=lambda o: -int(o["created"])),
            "has_more": False,
            "next_page": None,
        }

    # -- refunds ----------------------------------------------------------------------------

    def _create_refund(self, *, form: Mapping[str, str], **_: Any) -> Obj:
        pi = self._require(form, "payment_intent")
        intent = self._find(self.payment_intents, pi, noun="payment_intent")
        if intent["status"] != "succeeded":
            raise StripeError(
                400,
                f"This PaymentIntent ({pi}) does not have a successful charge to refund.",
                code="charge_not_refundable",
            )
        left = intent["amount"] - intent["amount_refunded"]
        if left == 0:
            raise StripeError(
                400,
                f"Charge {intent['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = _positive_int(form, "amount") if "amount" in form else left
        if amount > left:
            raise StripeError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                code="amount_too_large",
                param="amount",
            )
        reason = form.get("reason")
        if reason is not None and reason not in (
            "duplicate",
            "fraudulent",
            "requested_by_customer",
        ):
            raise StripeError(400, f"Invalid reason: {reason}", param="reason")
        intent["amount_refunded"] += amount
        refund = {
            "id": self._new_id("re"),
            "object": "refund",
            "amount": amount,
            "currency": intent["currency"],
            "payment_intent": pi,
            "charge": intent["latest_charge"],
            "status": "succeeded",
            "reason": reason,
            "failure_reason": None,
            "metadata": _metadata(form),
            "created": self.now(),
        }
        self.refunds[refund["id"]] = refund
        return dict(refund)

    def _list_refunds(self, *, query: Mapping[str, str], **_: Any) -> Obj:
        newest_first = sorted(self.refunds.values(), key=lambda r: r["id"], reverse=True)
        if "payment_intent" in query:
            newest_first = [
                r for r in newest_first if r["payment_intent"] == query["payment_intent"]
            ]
        if "starting_after" in query:
            ids = [r["id"] for r in newest_first]
            newest_first = newest_first[ids.index(query["starting_after"]) + 1 :]
        limit = int(query.get("limit", "10"))
        return {
            "object": "list",
            "url": "/v1/refunds",
            "data": [dict(r) for r in newest_first[:limit]],
            "has_more": len(newest_first) > limit,
        }

    # -- checkout, subscriptions, setup intents ---------------------------------------------

    def _create_checkout(self, *, form: Mapping[str, str], **_: Any) -> Obj:
        if form.get("mode") != "payment":
            raise StripeError(400, "This fake knows payment mode only.", param="mode")
        line = "line_items[0]"
        for name in (
            f"{line}[price_data][currency]",
            f"{line}[price_data][unit_amount]",
            f"{line}[price_data][product_data][name]",
            f"{line}[quantity]",
            "success_url",
        ):
            self._require(form, name)
        session_id = self._new_id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "status": "open",
            "payment_status": "unpaid",
            "customer": form.get("customer"),
            "amount_total": int(form[f"{line}[price_data][unit_amount]"])
            * int(form[f"{line}[quantity]"]),
            "currency": form[f"{line}[price_data][currency]"],
            "success_url": form["success_url"],
            "cancel_url": form.get("cancel_url"),
            "metadata": _metadata(form),
            "payment_intent": None,
        }
        self.checkout_sessions[session_id] = session
        return dict(session)

    def _create_subscription(self, *, form: Mapping[str, str], **_: Any) -> Obj:
        customer = self._find(self.customers, self._require(form, "customer"), noun="customer")
        price = self._find(self.prices, self._require(form, "items[0][price]"), noun="price")
        trial_end = int(form["trial_end"]) if "trial_end" in form else None
        card = form.get("default_payment_method")
        if (
            card is not None
            and self.payment_methods.get(card, {}).get("customer") != customer["id"]
        ):
            raise StripeError(
                400, f"No such PaymentMethod: '{card}'", param="default_payment_method"
            )
        has_card = any(m["customer"] == customer["id"] for m in self.payment_methods.values())
        now = self.now()
        trialing = trial_end is not None and trial_end > now
        status = "trialing" if trialing else "active" if has_card else "incomplete"
        period = {
            "current_period_start": now,
            "current_period_end": trial_end if trialing else _months_later(now, 1),
        }
        item: Obj = {
            "id": self._new_id("si"),
            "object": "subscription_item",
            "price": dict(price),
            "quantity": int(form.get("items[0][quantity]", "1")),
        }
        subscription: Obj = {
            "id": self._new_id("sub"),
            "object": "subscription",
            "customer": customer["id"],
            "status": status,
            "start_date": now,
            "trial_start": now if trialing else None,
            "trial_end": trial_end,
            "default_payment_method": card,
            "cancel_at_period_end": False,
            "cancel_at": None,
            "canceled_at": None,
            "ended_at": None,
            "items": {"object": "list", "data": [item]},
            "metadata": _metadata(form),
            "created": now,
            "livemode": False,
        }
        (subscription if self.legacy_periods else item).update(period)
        self.subscriptions[subscription["id"]] = subscription
        if self.lagging_search:
            self.unindexed.add(subscription["id"])
        return _copy(subscription)

    def _subscription(self, subscription_id: str) -> Obj:
        return self._find(self.subscriptions, subscription_id, noun="subscription")

    def _period_holder(self, subscription: Obj) -> Obj:
        if self.legacy_periods:
            return subscription
        item: Obj = subscription["items"]["data"][0]
        return item

    def _update_subscription(self, sub: str, *, form: Mapping[str, str], **_: Any) -> Obj:
        subscription = self._subscription(sub)
        if subscription["status"] in ("canceled", "incomplete_expired"):
            raise StripeError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        if "cancel_at_period_end" in form:
            flag = form["cancel_at_period_end"]
            if flag not in ("true", "false"):
                raise StripeError(400, f"Invalid boolean: {flag}", param="cancel_at_period_end")
            if flag == "true":
                end = self._period_holder(subscription)["current_period_end"]
                subscription.update(cancel_at_period_end=True, cancel_at=end,
                                    canceled_at=self.now())  # fmt: skip
            else:
                subscription.update(cancel_at_period_end=False, cancel_at=None, canceled_at=None)
        subscription["metadata"].update(_metadata(form))
        return _copy(subscription)

    def _cancel_subscription(self, sub: str, **_: Any) -> Obj:
        subscription = self._subscription(sub)
        if subscription["status"] in ("canceled", "incomplete_expired"):
            # What Stripe answers: an ended subscription can be read but not canceled again.
            raise StripeError(
                404, f"No such subscription: '{sub}'", code="resource_missing", param="id"
            )
        now = self.now()
        subscription.update(status="canceled", cancel_at_period_end=False, cancel_at=None,
                            canceled_at=now, ended_at=now)  # fmt: skip
        return _copy(subscription)

    def _create_setup_intent(self, *, form: Mapping[str, str], **_: Any) -> Obj:
        customer = form.get("customer")
        if customer is not None:
            self._find(self.customers, customer, noun="customer")
        setup_id = self._new_id("seti")
        setup = {
            "id": setup_id,
            "object": "setup_intent",
            "customer": customer,
            "usage": form.get("usage", "off_session"),
            "status": "requires_payment_method",
            "client_secret": f"{setup_id}_secret_{secrets.token_hex(8)}",
            "metadata": _metadata(form),
        }
        self.setup_intents[setup_id] = setup
        return dict(setup)

    # -- helpers ----------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_fake{self._counter:08d}"

    @staticmethod
    def _find(table: Mapping[str, Obj], object_id: str, *, noun: str = "object") -> Obj:
        found = table.get(object_id)
        if found is None:
            raise StripeError(
                404, f"No such {noun}: '{object_id}'", code="resource_missing", param="id"
            )
        return found

    @staticmethod
    def _require(form: Mapping[str, str], name: str) -> str:
        value = form.get(name)
        if not value:
            raise StripeError(
                400, f"Missing required param: {name}.", param=name, code="parameter_missing"
            )
        return value


def _match(pattern: str, method: str, route: list[str]) -> tuple[str, ...] | None:
    """``"POST payment_methods/* /attach"`` against a request: the ``*`` parts, or None."""
    wanted_method, _, path = pattern.partition(" ")
    wanted = path.replace(" ", "").split("/")
    if method != wanted_method or len(wanted) != len(route):
        return None
    captured: list[str] = []
    for want, got in zip(wanted, route, strict=True):
        if want == "*":
            if got == "search":
                return None
            captured.append(got)
        elif want != got:
            return None
    return tuple(captured)


def _copy(obj: Obj) -> Obj:
    """A deep copy, so an answer never shares its nested objects with the fake's state."""
    copied: Obj = json.loads(json.dumps(obj))
    return copied


def _months_later(unix: int, months: int) -> int:
    """``unix`` seconds plus calendar months, on the same day or the month's last one."""
    moment = datetime.fromtimestamp(unix, UTC)
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def _metadata(form: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len("metadata[") : -1]: value
        for key, value in form.items()
        if key.startswith("metadata[") and key.endswith("]")
    }


def _positive_int(form: Mapping[str, str], name: str) -> int:
    raw = form.get(name)
    if raw is None or not raw.isdigit() or int(raw) <= 0:
        raise StripeError(
            400, f"Invalid positive integer: {name}", param=name, code="parameter_invalid_integer"
        )
    return int(raw)
