"""MercadoPagoProvider: qzpay's PaymentProvider port on the official MercadoPago SDK."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import mercadopago
from mercadopago.config import RequestOptions
from mercadopago.http import HttpClient

from qzpay.adapters.mercadopago import _amounts, _statuses, _webhooks
from qzpay.adapters.mercadopago._transport import Transport
from qzpay.contracts.provider import (
    ChargeRequest,
    ChargeResult,
    CheckoutRequest,
    ProviderCapabilities,
    ProviderCheckout,
    ProviderCustomer,
    ProviderEvent,
    ProviderPaymentMethod,
    ProviderSubscription,
    ProviderSubscriptionRequest,
    RefundRequest,
    RefundResult,
    require_lookup,
)
from qzpay.errors import ProviderError, ValidationError

KEY_LIMIT: Final = 64
"""The longest ``X-Idempotency-Key`` MercadoPago (and its SDK) accepts."""

CUSTOMER_EXISTS: Final = "101"
"""MercadoPago's cause code for a customer whose email the account already has."""

ID_SEPARATOR: Final = ":"
"""Between the parent and the child in qzpay's ids of cards and refunds: MercadoPago
addresses both only under their parent (``/v1/customers/{c}/cards/{id}``)."""


def idempotency_key(key: str, *parts: str) -> str:
    """The ``X-Idempotency-Key`` for qzpay's ``key`` (and a sub-request of it, ``parts``):
    the key itself when it fits MercadoPago's 64 characters, else a digest of it, so the
    same qzpay key always sends the same header.

    >>> idempotency_key("qzpay-payment-1")
    'qzpay-payment-1'
    >>> idempotency_key("qzpay-payment-1", "card-token")
    'qzpay-payment-1:card-token'
    >>> len(idempotency_key("k" * 80))
    64
    """
    if not isinstance(key, str) or not key:
        raise ProviderError("must be a non-empty string", field="idempotency_key")
    joined = ID_SEPARATOR.join((key, *parts))
    if len(joined) <= KEY_LIMIT:
        return joined
    return "qzpay-" + hashlib.sha256(joined.encode()).hexdigest()[: KEY_LIMIT - 6]


def _split(provider_id: str, *, field: str, what: str) -> tuple[str, str]:
    parent, separator, child = provider_id.rpartition(ID_SEPARATOR)
    if not separator or not parent or not child:
        raise ProviderError(
            f"is not a MercadoPago {what} id made by qzpay ('<parent>{ID_SEPARATOR}<id>')",
            retryable=False,
            field=field,
            rule="mercadopago_id",
        )
    return parent, child


def _text(body: object, key: str) -> str | None:
    value = body.get(key) if isinstance(body, Mapping) else None
    return None if value is None or isinstance(value, bool) or value == "" else str(value)


def _required(body: object, key: str, what: str) -> str:
    found = _text(body, key)
    if found is None:
        raise ProviderError(f"MercadoPago answered {what} without {key!r}", retryable=True)
    return found


def _month(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class MercadoPagoProvider:
    """A ``PaymentProvider`` on MercadoPago's API, through its official (synchronous) SDK.

    Every call runs in a worker thread under a limiter of ``max_concurrency`` (the event
    loop never blocks), is sent with qzpay's idempotency key as ``X-Idempotency-Key``, and
    is retried up to ``max_retries`` times with backoff (from ``backoff`` seconds, with
    jitter) on 429, 5xx and connection failures, with the same key; a read timeout is a
    retryable ``ProviderError`` at once (its outcome is unknown: qzpay asks
    ``retrieve_charge``). Every answer's status is checked; no MercadoPago or ``requests``
    exception escapes; no message holds the access token or the webhook secret.

    What each call sends (MercadoPago's API, paths under ``https://api.mercadopago.com``):

    - ``create_customer``: ``POST /v1/customers`` (``email``, ``first_name``); an email the
      account already has answers that customer (``GET /v1/customers/search``).
    - ``attach_payment_method``: ``POST /v1/customers/{id}/cards`` with the card ``token``;
      the method's ``provider_id`` is ``"{customer id}:{card id}"``.
    - ``detach_payment_method``: ``DELETE /v1/customers/{id}/cards/{card id}``.
    - ``charge``: a saved card is read (``GET .../cards/{card id}``, for its brand) and
      tokenized (``POST /v1/card_tokens`` with ``card_id``), then ``POST /v1/payments`` with
      ``transaction_amount`` (exact decimal), ``token``, ``payment_method_id``,
      ``installments: 1``, ``payer: {type: customer, id}``, ``description``,
      ``external_reference`` (qzpay's key) and ``metadata``.
    - ``retrieve_charge``: ``GET /v1/payments/{id}``, or by key
      ``GET /v1/payments/search?external_reference=<key>``.
    - ``refund``: ``POST /v1/payments/{id}/refunds`` with ``amount``; the refund's
      ``provider_id`` is ``"{payment id}:{refund id}"``. ``retrieve_refund`` reads it by that
      id; MercadoPago has no lookup of a refund by key, so by key alone it answers ``None``;
      ``list_refunds`` reads ``GET /v1/payments/{id}/refunds``
      (docs/decisions/0033-mercadopago-refund-lookup.md).
    - ``create_subscription``: ``POST /preapproval`` on the plan ``provider_price_id``;
      ``retrieve_subscription``: ``GET /preapproval/{id}``; ``cancel_subscription``: ``PUT
      /preapproval/{id}`` with ``status: cancelled`` (now only: MercadoPago cannot cancel
      at period end). Statuses: docs/decisions/0025-provider-managed-subscriptions-at-
      stripe-and-mercadopago.md.
    - ``create_checkout``: ``POST /checkout/preferences``; the url is its ``init_point``.

    ``http_client`` is the SDK's transport (a ``mercadopago.http.HttpClient``): tests pass
    one that sends to a local fake. Configuration is passed in, never read from the
    environment.

    >>> from qzpay.adapters.mercadopago import MercadoPagoProvider
    >>> provider = MercadoPagoProvider(access_token="TEST-123", webhook_secret="s3cret")
    >>> provider.name, provider.capabilities.three_d_secure, provider.capabilities.subscriptions
    ('mercadopago', False, True)
    >>> provider
    MercadoPagoProvider(max_concurrency=8, timeout=30.0)
    """

    _CAPABILITIES: Final = ProviderCapabilities(
        payment_methods=True,
        refunds=True,
        three_d_secure=False,
        subscriptions=True,
        checkout=True,
        webhooks=True,
    )

    def __init__(
        self,
        *,
        access_token: str,
        webhook_secret: str,
        http_client: HttpClient | None = None,
        max_concurrency: int = 8,
        timeout: float = 30.0,
        webhook_tolerance: timedelta = timedelta(minutes=5),
        max_retries: int = 2,
        backoff: float = 0.25,
    ) -> None:
        for name, value in (("access_token", access_token), ("webhook_secret", webhook_secret)):
            if not isinstance(value, str) or not value.strip():
                raise ValidationError("must be a non-empty string", field=name, rule="required")
        if http_client is not None and not isinstance(http_client, HttpClient):
            raise ValidationError(
                "must be a mercadopago.http.HttpClient", field="http_client", rule="type"
            )
        checks: tuple[tuple[str, object, bool], ...] = (
            ("max_concurrency", max_concurrency, _positive_int(max_concurrency)),
            ("max_retries", max_retries, _positive_int(max_retries) or max_retries == 0),
            ("timeout", timeout, _positive_number(timeout)),
            ("backoff", backoff, _positive_number(backoff) or backoff == 0),
        )
        for name, _, good in checks:
            if not good:
                raise ValidationError("must be a positive number", field=name, rule="positive")
        if isinstance(max_retries, bool):
            raise ValidationError("must be an int", field="max_retries", rule="type")
        if not isinstance(webhook_tolerance, timedelta) or webhook_tolerance < timedelta(0):
            raise ValidationError(
                "must be a timedelta of zero or more", field="webhook_tolerance", rule="positive"
            )
        self._sdk: Any = mercadopago.SDK(access_token, http_client=http_client)
        self._webhook_secret = webhook_secret.encode()
        self._webhook_tolerance = webhook_tolerance
        self._max_concurrency = max_concurrency
        self._timeout = float(timeout)
        self._transport = Transport(
            access_token=access_token,
            secrets=(access_token, webhook_secret),
            max_concurrency=max_concurrency,
            timeout=float(timeout),
            max_retries=max_retries,
            backoff=float(backoff),
        )

    def __repr__(self) -> str:
        return (
            f"MercadoPagoProvider(max_concurrency={self._max_concurrency}, timeout={self._timeout})"
        )

    @property
    def name(self) -> str:
        """``"mercadopago"``: what lands in the ``provider`` column."""
        return "mercadopago"

    @property
    def capabilities(self) -> ProviderCapabilities:
        """No 3-D Secure flow through this API; subscriptions as preapprovals, checkout as
        preferences, signed webhooks (docs/decisions/0030-mercadopago-capabilities.md)."""
        return self._CAPABILITIES

    # -- customers and cards ----------------------------------------------------------------

    async def create_customer(
        self, *, email: str, name: str | None, idempotency_key: str
    ) -> ProviderCustomer:
        """Create the customer; MercadoPago keeps one per email, so an email it already has
        answers that customer instead of an error."""
        body: dict[str, Any] = {"email": email}
        if name:
            body["first_name"] = name
        key = _key(idempotency_key)
        try:
            created = await self._transport.call(
                "create the customer",
                lambda o: self._sdk.customer().create(body, request_options=o),
                idempotency_key=key,
            )
        except ProviderError as error:
            if error.rule != CUSTOMER_EXISTS:
                raise
            return await self._existing_customer(email)
        return ProviderCustomer(provider_id=_required(created, "id", "the customer"))

    async def _existing_customer(self, email: str) -> ProviderCustomer:
        found = await self._transport.call(
            "find the customer by email",
            lambda o: self._sdk.customer().search({"email": email}, request_options=o),
        )
        results = found.get("results") if isinstance(found, Mapping) else None
        for customer in results if isinstance(results, list) else []:
            if isinstance(customer, Mapping) and customer.get("email") == email:
                return ProviderCustomer(provider_id=_required(customer, "id", "the customer"))
        raise ProviderError(
            "MercadoPago says the customer exists but its search does not find it",
            retryable=True,
        )

    async def attach_payment_method(
        self, *, provider_customer_id: str, token: str
    ) -> ProviderPaymentMethod:
        """Save the card behind ``token`` on the customer. The port gives no key, so the
        ``X-Idempotency-Key`` is derived from the customer and the (single-use) token:
        sending the same token again is the same attach."""
        digest = hashlib.sha256(f"{provider_customer_id}\n{token}".encode()).hexdigest()
        card = await self._transport.call(
            "save the card",
            lambda o: self._sdk.card().create(
                provider_customer_id, {"token": token}, request_options=o
            ),
            idempotency_key=f"qzpay-card-{digest[:48]}",
        )
        method = card.get("payment_method") if isinstance(card, Mapping) else None
        last4 = _text(card, "last_four_digits")
        return ProviderPaymentMethod(
            provider_id=f"{provider_customer_id}{ID_SEPARATOR}{_required(card, 'id', 'the card')}",
            type="card",
            brand=_text(method, "id"),
            last4=last4[-4:] if last4 else None,
            exp_month=_month(card.get("expiration_month")),
            exp_year=_month(card.get("expiration_year")),
        )

    async def detach_payment_method(self, *, provider_payment_method_id: str) -> None:
        """Delete the saved card (MercadoPago has no detached state)."""
        customer, card = _split(
            provider_payment_method_id, field="provider_payment_method_id", what="card"
        )
        digest = hashlib.sha256(provider_payment_method_id.encode()).hexdigest()
        await self._transport.call(
            "delete the card",
            lambda o: self._sdk.card().delete(customer, card, request_options=o),
            idempotency_key=f"qzpay-detach-{digest[:48]}",
        )

    # -- charges ----------------------------------------------------------------------------

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Create a payment on the saved card (or a one-time card token); a rejection is a
        ``failed`` result with the neutral code, MercadoPago's ``status_detail`` kept."""
        currency = _amounts.check_currency(request.currency)
        amount = _amounts.to_major(request.amount, currency.code)
        key = _key(request.idempotency_key)
        method = request.provider_payment_method_id
        if method is None:
            raise ProviderError(
                "is required: MercadoPago charges a saved card or a card token",
                retryable=False,
                field="provider_payment_method_id",
                rule="required",
            )
        body: dict[str, Any] = {
            "transaction_amount": amount,
            "installments": 1,
            "payer": {"type": "customer", "id": request.provider_customer_id},
            "external_reference": request.idempotency_key,
            "metadata": {**request.metadata, "qzpay_idempotency_key": request.idempotency_key},
        }
        if request.description:
            body["description"] = request.description
        saved = ID_SEPARATOR in method
        if saved:
            self._check_owner(request, method)
        else:
            body["token"] = method

        def steps() -> Any:
            if saved:
                body.update(self._saved_card(method, key))
            return self._transport.call_here(
                "create the payment",
                lambda o: self._sdk.payment().create(body, request_options=o),
                idempotency_key=key,
            )

        created = await self._transport.in_thread(steps)
        return _statuses.charge_result(created)

    @staticmethod
    def _check_owner(request: ChargeRequest, method: str) -> None:
        customer, _ = _split(method, field="provider_payment_method_id", what="card")
        if customer != request.provider_customer_id:
            raise ProviderError(
                "is not a card of this customer",
                retryable=False,
                field="provider_payment_method_id",
                rule="attached_to_customer",
            )

    def _saved_card(self, method: str, key: str) -> dict[str, str]:
        """A one-time token of a saved card, and its brand: what a payment needs. Runs in
        the charge's worker thread (``Transport.in_thread``), with the payment after it."""
        customer, card_id = _split(method, field="provider_payment_method_id", what="card")
        card = self._transport.call_here(
            "read the card",
            lambda o: self._sdk.card().get(customer, card_id, request_options=o),
            missing_ok=True,
        )
        if card is None:
            raise ProviderError(
                "MercadoPago has no such card (deleted?)",
                retryable=False,
                field="provider_payment_method_id",
                rule="exists",
            )
        token = self._transport.call_here(
            "make a token of the saved card",
            lambda o: self._sdk.card_token().create(
                {"card_id": card_id, "customer_id": customer}, request_options=o
            ),
            idempotency_key=idempotency_key(key, "card-token"),
        )
        tokenized = {"token": _required(token, "id", "the card token")}
        brand = _text(card.get("payment_method"), "id")
        if brand is not None:
            tokenized["payment_method_id"] = brand
        return tokenized

    async def retrieve_charge(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> ChargeResult | None:
        """The payment by id, or by qzpay's key (its ``external_reference``); ``None`` when
        MercadoPago has none. Of several with the key (never made by qzpay: one key, one
        payment), an approved one wins, else the newest."""
        if provider_id:
            found = await self._transport.call(
                "read the payment",
                lambda o: self._sdk.payment().get(provider_id, request_options=o),
                missing_ok=True,
            )
            return None if found is None else _statuses.charge_result(found)
        matching = await self._by_reference(
            "payments",
            lambda filters, o: self._sdk.payment().search(filters, request_options=o),
            idempotency_key,
            newest_first=True,
        )
        if not matching:
            return None
        approved = [p for p in matching if p.get("status") == "approved"]
        return _statuses.charge_result((approved or matching)[0])

    # -- refunds ----------------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Refund ``amount`` of the payment (partial or whole); MercadoPago refuses more than
        is left (a non-retryable ``ProviderError``)."""
        currency = _amounts.check_currency(request.currency)
        amount = _amounts.to_major(request.amount, currency.code)
        payment = request.provider_payment_id
        created = await self._transport.call(
            "refund the payment",
            lambda o: self._sdk.refund().create(payment, {"amount": amount}, request_options=o),
            idempotency_key=_key(request.idempotency_key),
        )
        refund_id = _required(created, "id", "the refund")
        return _statuses.refund_result(created, f"{payment}{ID_SEPARATOR}{refund_id}")

    async def retrieve_refund(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> RefundResult | None:
        """The refund by qzpay's id for it (``"{payment}:{refund}"``); ``None`` when
        MercadoPago has none, and ``None`` by key alone: MercadoPago offers no lookup of a
        refund by key (replaying the POST would refund if the first never arrived)."""
        if not provider_id:
            return None
        payment, refund_id = _split(provider_id, field="provider_id", what="refund")
        found = await self._transport.call(
            "read the refund",
            lambda o: self._sdk.refund().get(payment, refund_id, request_options=o),
            missing_ok=True,
        )
        return None if found is None else _statuses.refund_result(found, provider_id)

    async def list_refunds(
        self, *, provider_payment_id: str, currency: str
    ) -> Sequence[RefundResult]:
        """Every refund of the payment (``GET /v1/payments/{id}/refunds``), oldest first,
        amounts turned exactly into minor units of ``currency``; ``[]`` for a payment
        MercadoPago does not have.

        ``idempotency_key`` is ``None`` on each: a MercadoPago refund carries nothing of the
        caller's (docs/decisions/0033), so a refund whose answer was lost can be told from
        the others by its amount only.
        """
        code = _amounts.check_currency(currency).code
        found = await self._transport.call(
            "list the payment's refunds",
            lambda o: self._sdk.refund().list_all(provider_payment_id, request_options=o),
            missing_ok=True,
        )
        if found is None:
            return []
        if not isinstance(found, list):
            raise ProviderError(
                "MercadoPago answered the payment's refunds with something not a list",
                retryable=True,
            )
        listed: list[tuple[datetime, int, RefundResult]] = []
        for refund in found:
            if not isinstance(refund, Mapping):
                continue
            refund_id = _required(refund, "id", "a refund")
            result = _statuses.refund_result(
                refund, f"{provider_payment_id}{ID_SEPARATOR}{refund_id}"
            )
            amount = _amounts.from_major(refund.get("amount"), code)
            made = _statuses.moment(refund.get("date_created"), field="date_created")
            order = int(refund_id) if refund_id.isdigit() else 0
            listed.append((made or _EPOCH, order, attrs.evolve(result, amount=amount)))
        listed.sort(key=lambda entry: entry[:2])
        return [result for _, _, result in listed]

    # -- subscriptions and checkout ---------------------------------------------------------

    async def _customer_email(self, provider_customer_id: str) -> str:
        customer = await self._transport.call(
            "read the customer",
            lambda o: self._sdk.customer().get(provider_customer_id, request_options=o),
            missing_ok=True,
        )
        email = _text(customer, "email")
        if email is None:
            raise ProviderError(
                "MercadoPago has no such customer (or it has no email)",
                retryable=False,
                field="provider_customer_id",
                rule="exists",
            )
        return email

    async def create_subscription(
        self, request: ProviderSubscriptionRequest
    ) -> ProviderSubscription:
        """A preapproval on the MercadoPago plan ``provider_price_id`` for the customer's
        email, ``pending`` (``incomplete``) until the payer authorizes it.

        A preapproval bills one unit: a ``quantity`` other than 1 is refused. ``trial_end``
        becomes ``auto_recurring.start_date`` (the first charge's date). The same key
        answers the preapproval made before through MercadoPago's replay of the same
        ``X-Idempotency-Key``, with the answer it gave then.
        """
        if request.quantity != 1:
            raise ProviderError(
                "must be 1: a MercadoPago preapproval bills one unit of its plan",
                retryable=False,
                field="quantity",
                rule="quantity_one",
            )
        email = await self._customer_email(request.provider_customer_id)
        body: dict[str, Any] = {
            "preapproval_plan_id": request.provider_price_id,
            "payer_email": email,
            "external_reference": request.idempotency_key,
            "status": "pending",
        }
        if request.trial_end is not None:
            start = request.trial_end.astimezone(UTC).isoformat(timespec="milliseconds")
            body["auto_recurring"] = {"start_date": start}
        created = await self._transport.call(
            "create the preapproval",
            lambda o: self._sdk.preapproval().create(body, request_options=o),
            idempotency_key=_key(request.idempotency_key),
        )
        if not isinstance(created, Mapping):
            raise ProviderError(
                "MercadoPago answered the preapproval without a body", retryable=True
            )
        return _statuses.subscription(created)

    async def retrieve_subscription(
        self, *, provider_id: str | None = None, idempotency_key: str | None = None
    ) -> ProviderSubscription | None:
        """The preapproval as MercadoPago has it now (``GET /preapproval/{id}``); ``None``
        when it has none with that id. Without an id, the preapproval whose
        ``external_reference`` is ``idempotency_key`` (``GET /preapproval/search``; the
        answer is filtered here too, so a search that ignored the filter finds nothing
        wrong), the oldest should there be more."""
        if not provider_id:
            return await self._preapproval_by_key(require_lookup(provider_id, idempotency_key))
        found = await self._transport.call(
            "read the preapproval",
            lambda o: self._sdk.preapproval().get(provider_id, request_options=o),
            missing_ok=True,
        )
        if found is None:
            return None
        if not isinstance(found, Mapping):
            raise ProviderError(
                "MercadoPago answered the preapproval without a body", retryable=True
            )
        return _statuses.subscription(found)

    async def _preapproval_by_key(self, key: str) -> ProviderSubscription | None:
        matching = await self._by_reference(
            "preapprovals",
            lambda filters, o: self._sdk.preapproval().search(filters, request_options=o),
            key,
            newest_first=False,
        )
        return _statuses.subscription(matching[0]) if matching else None

    async def _by_reference(
        self,
        what: str,
        search: Callable[[dict[str, str], RequestOptions], Mapping[str, Any]],
        key: str,
        *,
        newest_first: bool,
    ) -> list[Mapping[str, Any]]:
        """The objects whose ``external_reference`` is qzpay's ``key``, by creation date;
        filtered here too, so a search that ignored the filter finds nothing wrong."""
        filters = {
            "external_reference": key,
            "sort": "date_created",
            "criteria": "desc" if newest_first else "asc",
        }
        page = await self._transport.call(
            f"search the {what} by external_reference", lambda o: search(filters, o)
        )
        results = page.get("results") if isinstance(page, Mapping) else None
        return [
            found
            for found in (results if isinstance(results, list) else [])
            if isinstance(found, Mapping) and found.get("external_reference") == key
        ]

    async def cancel_subscription(
        self, *, provider_id: str, at_period_end: bool, idempotency_key: str
    ) -> ProviderSubscription:
        """Cancel the preapproval now (``PUT /preapproval/{id}`` with ``status:
        cancelled``, under qzpay's key); MercadoPago stops charging it at once.

        ``at_period_end`` is refused before any request (``rule="cancel_at_period_end"``,
        not retryable): a preapproval has no cancel-later, and cancelling now instead would
        cut off a period the customer paid for. A preapproval that is already cancelled
        cannot be changed, so a refusal is followed by a read, and a cancelled one is
        answered as it is; anything else re-raises the refusal.
        """
        if at_period_end:
            raise ProviderError(
                "MercadoPago cannot cancel a preapproval at the end of its period, only now",
                retryable=False,
                field="at_period_end",
                rule="cancel_at_period_end",
            )
        key = _key(idempotency_key)
        try:
            updated = await self._transport.call(
                "cancel the preapproval",
                lambda o: self._sdk.preapproval().update(
                    provider_id, {"status": "cancelled"}, request_options=o
                ),
                idempotency_key=key,
            )
        except ProviderError as refused:
            if refused.retryable:
                raise
            found = await self.retrieve_subscription(provider_id=provider_id)
            if found is None or found.status != "canceled":
                raise
            return found
        if not isinstance(updated, Mapping):
            raise ProviderError(
                "MercadoPago answered the preapproval without a body", retryable=True
            )
        return _statuses.subscription(updated)

    async def create_checkout(self, request: CheckoutRequest) -> ProviderCheckout:
        """A Checkout Pro preference for one item of ``amount``; its url is ``init_point``
        (``failure`` goes back to ``cancel_url``, ``success`` and ``pending`` to
        ``success_url``)."""
        currency = _amounts.check_currency(request.currency)
        body: dict[str, Any] = {
            "items": [
                {
                    "title": "Payment",
                    "quantity": 1,
                    "unit_price": _amounts.to_major(request.amount, currency.code),
                    "currency_id": currency.code,
                }
            ],
            "back_urls": {
                "success": request.success_url,
                "pending": request.success_url,
                "failure": request.cancel_url,
            },
            "auto_return": "approved",
            "external_reference": request.idempotency_key,
            "metadata": {"qzpay_idempotency_key": request.idempotency_key},
        }
        if request.provider_customer_id is not None:
            body["payer"] = {"email": await self._customer_email(request.provider_customer_id)}
        created = await self._transport.call(
            "create the checkout preference",
            lambda o: self._sdk.preference().create(body, request_options=o),
            idempotency_key=_key(request.idempotency_key),
        )
        return ProviderCheckout(
            provider_id=_required(created, "id", "the preference"),
            url=_required(created, "init_point", "the preference"),
        )

    # -- webhooks ---------------------------------------------------------------------------

    def sign_webhook(
        self, *, data_id: str | None, timestamp: datetime, request_id: str | None = None
    ) -> dict[str, str]:
        """The headers MercadoPago would send a notification about ``data_id`` with, signed
        at ``timestamp`` (``ts`` in seconds, as MercadoPago sends it): for tests and demos.

        >>> from datetime import UTC, datetime
        >>> provider = MercadoPagoProvider(access_token="TEST-1", webhook_secret="s3cret")
        >>> at = datetime(2028, 1, 31, 9, tzinfo=UTC)
        >>> headers = provider.sign_webhook(data_id="123", timestamp=at, request_id="req-1")
        >>> body = b'{"id": 9, "type": "payment", "action": "payment.updated", "data": {"id": "123"}}'
        >>> event = provider.verify_webhook(payload=body, headers=headers, now=at,
        ...                                 query={"data.id": "123", "type": "payment"})
        >>> event.type, dict(event.data)
        ('payment.updated', {'provider_payment_id': '123'})
        """
        moment = _aware(timestamp, field="timestamp")
        ts = str(int(moment.timestamp()))
        headers = {
            _webhooks.SIGNATURE_HEADER: (
                f"ts={ts},v1={_webhooks.signature(self._webhook_secret, data_id, request_id, ts)}"
            )
        }
        if request_id is not None:
            headers[_webhooks.REQUEST_ID_HEADER] = request_id
        return headers

    def verify_webhook(
        self,
        *,
        payload: bytes,
        headers: Mapping[str, str],
        now: datetime,
        query: Mapping[str, str] | None = None,
    ) -> ProviderEvent:
        """Check ``x-signature`` over MercadoPago's manifest (``data.id`` from ``query``,
        else the body) in constant time, and ``|now - ts|`` within ``webhook_tolerance``;
        map the notification: ``payment`` → ``payment.updated`` with
        ``provider_payment_id``, ``subscription_preapproval``/``preapproval`` →
        ``subscription.updated`` with ``provider_subscription_id``, any other type →
        ``mercadopago.<type>`` (acknowledged, not applied)."""
        if not isinstance(payload, bytes):
            raise ValidationError("must be the raw body as bytes", field="payload", rule="type")
        return _webhooks.verify(
            secret=self._webhook_secret,
            tolerance=self._webhook_tolerance,
            payload=payload,
            headers=headers,
            now=_aware(now, field="now"),
            query=query,
        )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""Where a refund without a ``date_created`` sorts (then by its id, which grows)."""


def _key(key: str) -> str:
    return idempotency_key(key)


def _aware(moment: object, *, field: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValidationError("must be a timezone-aware datetime", field=field, rule="aware")
    return moment


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
