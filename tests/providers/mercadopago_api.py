"""A stateful fake of MercadoPago's HTTP API, for the real SDK over ``LoopbackAPI``.

Enough of MercadoPago for qzpay's flows, with its rules where they catch bugs: customers
(one per email: a second answers 400 with cause ``101``), saved cards, card tokens (single
use; a saved card is tokenized with ``card_id``), payments whose outcome follows
MercadoPago's test cardholder names (``APRO`` approved, ``FUND`` insufficient amount,
``SECU`` bad security code, ``EXPI`` bad date, ``CALL`` call for authorize, ``OTHE``
other reason, ``CONT`` pending), payment search by ``external_reference``, partial refunds
never beyond what is left (listed per payment), checkout preferences and preapprovals
(read, searched by ``external_reference``, and cancelled or paused by a ``PUT``; a
cancelled one cannot be changed: 400). A
``POST``/``PUT``/``DELETE`` with an ``X-Idempotency-Key`` it has seen replays the first
answer (whatever the body, as MercadoPago does); every answer carries an ``x-request-id``.
``move_preapproval`` stands in for the payer and MercadoPago's billing (authorizing it,
charging it, pausing it), and ``notification`` is the webhook body and query MercadoPago
sends about an object.

``LoopbackHttpClient`` is the SDK's ``HttpClient`` with MercadoPago's fixed base URL
rewritten to the fake's ``http://127.0.0.1:PORT`` (DESIGN §10).

>>> import mercadopago
>>> from tests.providers.loopback import LoopbackAPI
>>> fake = MercadoPagoAPI()
>>> with LoopbackAPI(fake) as api:
...     sdk = mercadopago.SDK(fake.access_token, http_client=LoopbackHttpClient(api.url))
...     answer = sdk.customer().create({"email": "ann@example.com"})
>>> answer["status"], answer["response"]["email"]
(201, 'ann@example.com')
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

from mercadopago.http import HttpClient

from qzpay import money
from tests.providers.loopback import Request, Response

BASE_URL: Final = "https://api.mercadopago.com"
ACCESS_TOKEN: Final = "TEST-5551234-fake-access-token-0000"
"""The fake's access token: a request with any other answers 401."""

HOLDER_OUTCOMES: Final[Mapping[str, tuple[str, str]]] = {
    "APRO": ("approved", "accredited"),
    "CONT": ("in_process", "pending_contingency"),
    "CALL": ("rejected", "cc_rejected_call_for_authorize"),
    "FUND": ("rejected", "cc_rejected_insufficient_amount"),
    "SECU": ("rejected", "cc_rejected_bad_filled_security_code"),
    "EXPI": ("rejected", "cc_rejected_bad_filled_date"),
    "FORM": ("rejected", "cc_rejected_bad_filled_other"),
    "OTHE": ("rejected", "cc_rejected_other_reason"),
}
"""MercadoPago's test cardholder names and what a payment with their card does."""

SITE_TIME: Final = timezone(timedelta(hours=-4))
"""The offset MercadoPago writes its times in (its servers' local time)."""


def mp_time(moment: datetime) -> str:
    """A time as MercadoPago writes one: ``2028-01-31T05:00:00.000-04:00``."""
    return moment.astimezone(SITE_TIME).isoformat(timespec="milliseconds")


class LoopbackHttpClient(HttpClient):  # type: ignore[misc]  # the SDK is untyped
    """The SDK's own HTTP client, sending to ``base_url`` instead of MercadoPago."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.startswith(BASE_URL):
            url = self.base_url + url[len(BASE_URL) :]
        return super().request(method, url, *args, **kwargs)


@dataclass
class Card:
    id: str
    customer_id: str
    holder: str
    brand: str
    last4: str
    exp_month: int = 11
    exp_year: int = 2030


@dataclass
class Token:
    id: str
    holder: str
    brand: str
    last4: str
    card_id: str | None = None
    used: bool = False


@dataclass
class Payment:
    body: dict[str, Any]
    amount: Decimal
    refunded: Decimal = Decimal(0)
    refunds: list[dict[str, Any]] = field(default_factory=list)


class _Answer(Exception):
    """Raised inside a handler to answer at once (an error)."""

    def __init__(self, status: int, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "message": message,
            "error": "bad_request" if status == 400 else "not_found" if status == 404 else "",
            "status": status,
            "cause": [] if cause is None else [{"code": cause, "description": message}],
        }


def _decimal(value: object, *, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise _Answer(400, f"{field} must be a number")
    return Decimal(value)


def _number(value: Decimal) -> float | int:
    """How MercadoPago writes an amount back: a JSON number."""
    return int(value) if value == value.to_integral_value() else float(value)


class MercadoPagoAPI:
    """The fake API: a ``LoopbackAPI`` app (call it with a ``Request``) and its state.

    ``currency`` is the account's site currency (every payment is in it). Tests make card
    tokens with ``card_token(holder)``, read ``customers``, ``cards``, ``payments`` and
    ``preapprovals``, and see every request in the ``LoopbackAPI``'s log.
    """

    def __init__(
        self,
        *,
        access_token: str = ACCESS_TOKEN,
        currency: str = "BRL",
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.access_token = access_token
        self.now = now
        self.currency = money.currency(currency)
        self._lock = threading.Lock()
        self._ids = itertools.count(1_000_000_001)
        self.customers: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, Card] = {}
        self.tokens: dict[str, Token] = {}
        self.payments: dict[str, Payment] = {}
        self.preferences: dict[str, dict[str, Any]] = {}
        self.preapprovals: dict[str, dict[str, Any]] = {}
        self._replays: dict[tuple[str, str, str], tuple[int, Any]] = {}
        self._routes: list[tuple[str, tuple[str, ...], Callable[..., tuple[int, Any]]]] = [
            ("POST", ("v1", "customers"), self._create_customer),
            ("GET", ("v1", "customers", "search"), self._search_customers),
            ("GET", ("v1", "customers", "*"), self._get_customer),
            ("POST", ("v1", "customers", "*", "cards"), self._create_card),
            ("GET", ("v1", "customers", "*", "cards", "*"), self._get_card),
            ("DELETE", ("v1", "customers", "*", "cards", "*"), self._delete_card),
            ("POST", ("v1", "card_tokens"), self._create_token),
            ("POST", ("v1", "payments"), self._create_payment),
            ("GET", ("v1", "payments", "search"), self._search_payments),
            ("GET", ("v1", "payments", "*"), self._get_payment),
            ("POST", ("v1", "payments", "*", "refunds"), self._create_refund),
            ("GET", ("v1", "payments", "*", "refunds"), self._list_refunds),
            ("GET", ("v1", "payments", "*", "refunds", "*"), self._get_refund),
            ("POST", ("checkout", "preferences"), self._create_preference),
            ("POST", ("preapproval",), self._create_preapproval),
            ("GET", ("preapproval", "search"), self._search_preapprovals),
            ("GET", ("preapproval", "*"), self._get_preapproval),
            ("PUT", ("preapproval", "*"), self._update_preapproval),
        ]

    # -- test controls ----------------------------------------------------------------------

    def card_token(self, holder: str = "APRO", *, brand: str = "visa", last4: str = "3704") -> str:
        """A new single-use card token, as MercadoPago.js would make in the browser; the
        cardholder name decides what a payment with it does (``HOLDER_OUTCOMES``)."""
        if holder not in HOLDER_OUTCOMES:
            raise ValueError(f"holder must be one of {sorted(HOLDER_OUTCOMES)}")
        with self._lock:
            token = Token(id=secrets.token_hex(16), holder=holder, brand=brand, last4=last4)
            self.tokens[token.id] = token
        return token.id

    def set_holder(self, card_id: str, holder: str) -> None:
        """Make a saved card behave as ``holder``'s from now on (a card that starts to
        decline: insufficient funds at renewal time)."""
        with self._lock:
            self.cards[card_id].holder = holder

    def settle(self, payment_id: str, status: str, status_detail: str) -> None:
        """Move a payment at MercadoPago (a pending one approved later)."""
        with self._lock:
            self.payments[payment_id].body.update(status=status, status_detail=status_detail)

    def payments_with(self, external_reference: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                p.body
                for p in self.payments.values()
                if p.body.get("external_reference") == external_reference
            ]

    def refund_directly(self, payment_id: str, amount: Decimal) -> dict[str, Any]:
        """A refund made outside qzpay (from MercadoPago's panel), of ``amount`` major units."""
        with self._lock:
            body = f'{{"amount": {amount}}}'.encode()  # a JSON number, exactly as given
            request = Request("POST", f"/v1/payments/{payment_id}/refunds", {}, {}, body)
            status, refund = self._create_refund(request, payment_id)
            assert status == 201, refund
            return dict(refund)

    def move_preapproval(
        self,
        preapproval_id: str,
        *,
        status: str | None = None,
        next_payment_date: datetime | None = None,
        charged_quantity: int | None = None,
    ) -> dict[str, Any]:
        """Move a preapproval as the payer and MercadoPago would: authorized at its
        ``init_point``, charged (``charged_quantity``, the next charge's date), paused or
        cancelled from the panel. Send qzpay a ``notification`` about it afterwards."""
        with self._lock:
            found = self._preapproval(preapproval_id)
            if status is not None:
                found["status"] = status
            if next_payment_date is not None:
                found["next_payment_date"] = mp_time(next_payment_date)
            if charged_quantity is not None:
                found["summarized"]["charged_quantity"] = charged_quantity
            found["last_modified"] = mp_time(self.now())
            moved: dict[str, Any] = json.loads(json.dumps(found))
            return moved

    def notification(
        self, data_id: str, kind: str = "subscription_preapproval"
    ) -> tuple[bytes, dict[str, str]]:
        """The body and the notification URL's query MercadoPago sends about ``data_id``
        (sign it with ``MercadoPagoProvider.sign_webhook(data_id=...)``)."""
        body = {
            "id": self._next_id(),
            "live_mode": False,
            "type": kind,
            "date_created": mp_time(self.now()),
            "action": "updated",
            "data": {"id": data_id},
        }
        return json.dumps(body).encode(), {"data.id": data_id, "type": kind}

    # -- the app ----------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        headers = {"x-request-id": request_id}
        with self._lock:
            status, body = self._serve(request)
        return Response(status, body, headers)

    def _serve(self, request: Request) -> tuple[int, Any]:
        if request.header("Authorization") != f"Bearer {self.access_token}":
            return 401, {"message": "invalid access token", "error": "unauthorized", "status": 401}
        key = request.header("X-Idempotency-Key")
        replay_key = None
        if request.method != "GET" and key:
            replay_key = (request.method, request.path, key)
            if replay_key in self._replays:
                return self._replays[replay_key]
        try:
            answer = self._route(request)
        except _Answer as error:
            answer = error.status, error.body
        if replay_key is not None:
            self._replays[replay_key] = answer
        return answer

    def _route(self, request: Request) -> tuple[int, Any]:
        """The first route whose method and path match (literal routes such as ``search``
        come before the ``*`` ones they would also match)."""
        parts = tuple(p for p in request.path.split("/") if p)
        for method, pattern, handler in self._routes:
            if method != request.method or len(pattern) != len(parts):
                continue
            pairs = list(zip(pattern, parts, strict=True))
            if all(want in ("*", got) for want, got in pairs):
                return handler(request, *[got for want, got in pairs if want == "*"])
        raise _Answer(404, f"no route for {request.method} {request.path}")

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.body or b"{}", parse_float=Decimal)
        except ValueError:
            raise _Answer(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _Answer(400, "the body must be an object")
        return body

    def _next_id(self) -> int:
        return next(self._ids)

    # -- customers and cards ----------------------------------------------------------------

    def _create_customer(self, request: Request) -> tuple[int, Any]:
        body = self._body(request)
        email = body.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise _Answer(400, "invalid email", "214")
        if any(c["email"] == email for c in self.customers.values()):
            raise _Answer(400, "the customer already exist", "101")
        customer_id = f"{self._next_id()}-{secrets.token_hex(7)}"
        customer: dict[str, Any] = {
            "id": customer_id,
            "email": email,
            "first_name": body.get("first_name"),
            "cards": [],
            "live_mode": False,
        }
        self.customers[customer_id] = customer
        return 201, customer

    def _search_customers(self, request: Request) -> tuple[int, Any]:
        email = request.query.get("email")
        found = [c for c in self.customers.values() if email is None or c["email"] == email]
        return 200, {"paging": {"limit": 10, "offset": 0, "total": len(found)}, "results": found}

    def _customer(self, customer_id: str) -> dict[str, Any]:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise _Answer(404, "Customer not found", "112")
        return customer

    def _get_customer(self, request: Request, customer_id: str) -> tuple[int, Any]:
        return 200, self._customer(customer_id)

    def _card_body(self, card: Card) -> dict[str, Any]:
        return {
            "id": card.id,
            "customer_id": card.customer_id,
            "payment_method": {"id": card.brand, "payment_type_id": "credit_card"},
            "first_six_digits": "450995",
            "last_four_digits": card.last4,
            "expiration_month": card.exp_month,
            "expiration_year": card.exp_year,
            "cardholder": {"name": card.holder},
        }

    def _use_token(self, token_id: object) -> Token:
        token = self.tokens.get(token_id) if isinstance(token_id, str) else None
        if token is None:
            raise _Answer(400, "invalid card token", "2006")
        if token.used:
            raise _Answer(400, "the card token was already used", "E216")
        token.used = True
        return token

    def _create_card(self, request: Request, customer_id: str) -> tuple[int, Any]:
        self._customer(customer_id)
        token = self._use_token(self._body(request).get("token"))
        card = Card(
            id=str(self._next_id()),
            customer_id=customer_id,
            holder=token.holder,
            brand=token.brand,
            last4=token.last4,
        )
        self.cards[card.id] = card
        return 200, self._card_body(card)

    def _card(self, customer_id: str, card_id: str) -> Card:
        card = self.cards.get(card_id)
        if card is None or card.customer_id != customer_id:
            raise _Answer(404, "card not found", "E301")
        return card

    def _get_card(self, request: Request, customer_id: str, card_id: str) -> tuple[int, Any]:
        return 200, self._card_body(self._card(customer_id, card_id))

    def _delete_card(self, request: Request, customer_id: str, card_id: str) -> tuple[int, Any]:
        card = self._card(customer_id, card_id)
        del self.cards[card_id]
        return 200, self._card_body(card)

    def _create_token(self, request: Request) -> tuple[int, Any]:
        body = self._body(request)
        card_id, customer_id = body.get("card_id"), body.get("customer_id")
        if not isinstance(card_id, str) or not isinstance(customer_id, str):
            raise _Answer(400, "card_id and customer_id are required", "E205")
        card = self._card(customer_id, card_id)
        token = Token(
            id=secrets.token_hex(16),
            holder=card.holder,
            brand=card.brand,
            last4=card.last4,
            card_id=card.id,
        )
        self.tokens[token.id] = token
        return 201, {"id": token.id, "card_id": card.id, "last_four_digits": card.last4}

    # -- payments and refunds ---------------------------------------------------------------

    def _amount(self, value: object, *, field: str) -> Decimal:
        amount = _decimal(value, field=field)
        minor = amount.scaleb(self.currency.exponent)
        if amount <= 0 or minor != minor.to_integral_value():
            raise _Answer(400, f"invalid {field}", "4037")
        return amount

    def _create_payment(self, request: Request) -> tuple[int, Any]:
        body = self._body(request)
        amount = self._amount(body.get("transaction_amount"), field="transaction_amount")
        if body.get("installments") != 1:
            raise _Answer(400, "installments attribute can't be null", "4001")
        token = self._use_token(body.get("token"))
        brand = body.get("payment_method_id")
        if brand is not None and brand != token.brand:
            raise _Answer(400, "payment_method_id does not match the card", "4012")
        payer = body.get("payer")
        if not isinstance(payer, dict) or payer.get("id") not in self.customers:
            raise _Answer(400, "payer.id is not a customer", "2034")
        if token.card_id is not None and self.cards[token.card_id].customer_id != payer["id"]:
            raise _Answer(400, "the card is not the payer's", "2034")
        status, detail = HOLDER_OUTCOMES[token.holder]
        payment_id = str(self._next_id())
        created = {
            "id": int(payment_id),
            "status": status,
            "status_detail": detail,
            "transaction_amount": _number(amount),
            "transaction_amount_refunded": 0,
            "currency_id": self.currency.code,
            "description": body.get("description"),
            "external_reference": body.get("external_reference"),
            "metadata": body.get("metadata") or {},
            "payment_method_id": token.brand,
            "payer": {"id": payer["id"], "type": payer.get("type")},
            "installments": 1,
            "date_created": "2028-01-31T05:00:00.000-04:00",
        }
        self.payments[payment_id] = Payment(body=created, amount=amount)
        return 201, created

    def _payment(self, payment_id: str) -> Payment:
        payment = self.payments.get(payment_id)
        if payment is None:
            raise _Answer(404, "Payment not found", "2000")
        return payment

    def _get_payment(self, request: Request, payment_id: str) -> tuple[int, Any]:
        return 200, self._payment(payment_id).body

    def _search_payments(self, request: Request) -> tuple[int, Any]:
        wanted = request.query.get("external_reference")
        found = [
            p.body
            for p in self.payments.values()
            if wanted is None or p.body.get("external_reference") == wanted
        ]
        if request.query.get("criteria") == "desc":
            found.reverse()
        return 200, {"paging": {"total": len(found), "limit": 30, "offset": 0}, "results": found}

    def _create_refund(self, request: Request, payment_id: str) -> tuple[int, Any]:
        payment = self._payment(payment_id)
        if payment.body["status"] not in ("approved", "refunded"):
            raise _Answer(400, "Payment not found or not refundable", "2063")
        left = payment.amount - payment.refunded
        body = self._body(request)
        amount = left if "amount" not in body else self._amount(body["amount"], field="amount")
        if amount > left or left <= 0:
            raise _Answer(400, "Invalid refund amount: exceeds the amount left to refund", "4040")
        payment.refunded += amount
        refund: dict[str, Any] = {
            "id": self._next_id(),
            "payment_id": int(payment_id),
            "amount": _number(amount),
            "status": "approved",
            "metadata": {},
            "date_created": "2028-01-31T05:00:00.000-04:00",
        }
        payment.refunds.append(refund)
        payment.body["transaction_amount_refunded"] = _number(payment.refunded)
        if payment.refunded == payment.amount:
            payment.body.update(status="refunded", status_detail="refunded")
        return 201, refund

    def _list_refunds(self, request: Request, payment_id: str) -> tuple[int, Any]:
        return 200, self._payment(payment_id).refunds

    def _get_refund(self, request: Request, payment_id: str, refund_id: str) -> tuple[int, Any]:
        for refund in self._payment(payment_id).refunds:
            if str(refund["id"]) == refund_id:
                return 200, refund
        raise _Answer(404, "Refund not found", "2000")

    # -- preferences and preapprovals -------------------------------------------------------

    def _create_preference(self, request: Request) -> tuple[int, Any]:
        body = self._body(request)
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise _Answer(400, "items needed", "items.invalid")
        for item in items:
            self._amount(item.get("unit_price"), field="unit_price")
            if item.get("currency_id") != self.currency.code:
                raise _Answer(400, "currency_id is not the site's", "currency_id.invalid")
        preference_id = f"5551234-{uuid.uuid4()}"
        created = {
            "id": preference_id,
            "init_point": f"https://www.mercadopago.com/checkout/v1/redirect?pref_id={preference_id}",
            "sandbox_init_point": (
                f"https://sandbox.mercadopago.com/checkout/v1/redirect?pref_id={preference_id}"
            ),
            "external_reference": body.get("external_reference"),
            "back_urls": body.get("back_urls"),
            "items": [{**i, "unit_price": _number(Decimal(i["unit_price"]))} for i in items],
            "payer": body.get("payer"),
        }
        self.preferences[preference_id] = created
        return 201, created

    def _create_preapproval(self, request: Request) -> tuple[int, Any]:
        body = self._body(request)
        if not body.get("preapproval_plan_id"):
            raise _Answer(400, "preapproval_plan_id is required", "preapproval_plan_id")
        if not isinstance(body.get("payer_email"), str):
            raise _Answer(400, "payer_email is required", "payer_email")
        preapproval_id = secrets.token_hex(16)
        now = mp_time(self.now())
        recurring = body.get("auto_recurring") or {}
        created = {
            "id": preapproval_id,
            "status": body.get("status") or "pending",
            "payer_email": body["payer_email"],
            "preapproval_plan_id": body["preapproval_plan_id"],
            "external_reference": body.get("external_reference"),
            "auto_recurring": {
                "frequency": 1,
                "frequency_type": "months",
                "transaction_amount": _number(Decimal("29.9")),  # as MercadoPago writes it
                "currency_id": self.currency.code,
                **recurring,
            },
            "summarized": {"charged_quantity": 0, "pending_charge_quantity": None},
            "next_payment_date": recurring.get("start_date") or now,
            "date_created": now,
            "last_modified": now,
            "init_point": f"https://www.mercadopago.com/subscriptions/checkout?preapproval_id={preapproval_id}",
        }
        self.preapprovals[preapproval_id] = created
        return 201, created

    def _preapproval(self, preapproval_id: str) -> dict[str, Any]:
        found = self.preapprovals.get(preapproval_id)
        if found is None:
            raise _Answer(404, "preapproval not found", "404")
        return found

    def _search_preapprovals(self, request: Request) -> tuple[int, Any]:
        wanted = request.query.get("external_reference")
        found = [
            p
            for p in self.preapprovals.values()
            if wanted is None or p.get("external_reference") == wanted
        ]
        if request.query.get("criteria") == "desc":
            found.reverse()
        return 200, {"paging": {"total": len(found), "limit": 30, "offset": 0}, "results": found}

    def _get_preapproval(self, request: Request, preapproval_id: str) -> tuple[int, Any]:
        return 200, self._preapproval(preapproval_id)

    def _update_preapproval(self, request: Request, preapproval_id: str) -> tuple[int, Any]:
        found = self._preapproval(preapproval_id)
        body = self._body(request)
        if found["status"] == "cancelled":
            raise _Answer(400, "You can not modify a cancelled preapproval", "cancelled")
        status = body.get("status", found["status"])
        if status not in ("pending", "authorized", "paused", "cancelled"):
            raise _Answer(400, f"invalid status: {status}", "status")
        found["status"] = status
        found["last_modified"] = mp_time(self.now())
        return 200, found
