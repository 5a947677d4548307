"""``StripeProvider``: qzpay's payment port on Stripe's PaymentIntents API, fully async."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import attrs
import stripe
from stripe.params import (
    CustomerCreateParams,
    PaymentIntentCreateParams,
    RefundCreateParams,
    RefundListParams,
    SetupIntentCreateParams,
    SubscriptionCreateParams,
    SubscriptionUpdateParams,
)
from stripe.params.checkout import SessionCreateParams as CheckoutSessionCreateParams

from qzpay.adapters.stripe import errors, results, webhooks
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
from qzpay.errors import ValidationError

DEFAULT_API_VERSION: Final = "2026-10-28.endive"
"""The Stripe API version every request is pinned to (stripe 16.1's own): responses keep
the shape this adapter reads whichever SDK (15 or 16) is installed and whatever the
account's default version is."""

REFUND_SCAN_LIMIT: Final = 1000
"""How many of the newest refunds ``retrieve_refund`` reads to find one by key alone."""

_PAGE: Final = 100
"""Stripe's largest list page."""

_STRIPE_REFUND_REASONS: Final = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
_CHECKOUT_PRODUCT_NAME: Final = "Payment"

T = TypeVar("T")
Send = Callable[[stripe.StripeClient], Awaitable[T]]


@attrs.frozen(kw_only=True)
class StripeSetupIntent:
    """A SetupIntent to save a card for later: hand ``client_secret`` to Stripe.js."""

    provider_id: str
    client_secret: str
    status: str


class StripeProvider:
    """The ``PaymentProvider`` port on Stripe, through ``stripe.StripeClient``'s async API.

    Every call is a real Stripe API request made with the SDK's ``*_async`` methods over
    its ``HTTPXClient`` (so it never blocks the event loop, on asyncio or trio), pinned to
    ``api_version``. Configuration comes in through the constructor only: nothing is read
    from the environment or from the SDK's module globals (``stripe.api_key``).

    - Every request that can move money carries qzpay's idempotency key as Stripe's
      ``Idempotency-Key``; the SDK reuses it across its own retries (5xx, 409, connection
      errors and timeouts, ``max_network_retries`` of them) and the adapter across its
      retries of a 429 (``rate_limit_retries``, with backoff and jitter, honouring
      ``Retry-After`` and ``Stripe-Should-Retry``), which the SDK does not retry.
    - A decline is a result: ``ChargeResult(status="failed", failure_code=<neutral>,
      provider_failure_code=<Stripe's decline or error code>)``. Any other failure raises
      ``StripeProviderError`` (a ``ProviderError``) with ``retryable`` set by what is known
      of the outcome and Stripe's request id; no message holds a key or a secret.
    - Charges, refunds and subscriptions carry ``metadata[qzpay_key]``, so
      ``retrieve_charge`` and ``retrieve_refund`` find them by qzpay's key after a lost
      response, and ``list_refunds`` and ``retrieve_subscription`` say which key made them.

    The HTTP client is made on first use, on the running event loop (an ``HTTPXClient`` is
    bound to the loop it first ran on), and made again when called from another loop.
    Stripe's telemetry is switched off (``stripe.enable_telemetry = False``, the SDK's only
    switch for it, process-wide): with it on, the SDK sends request timings and platform
    details, and writes an id file under the home directory, blocking the loop.

    >>> from datetime import timedelta
    >>> provider = StripeProvider(api_key="sk_test_123", webhook_secret="whsec_123")
    >>> provider.name, provider.capabilities.three_d_secure
    ('stripe', True)
    >>> provider
    StripeProvider(api_base='https://api.stripe.com', api_version='2026-10-28.endive')
    >>> StripeProvider(api_key="", webhook_secret="whsec_123")
    Traceback (most recent call last):
    ...
    qzpay.errors.ValidationError: api_key: must be a non-empty string (a Stripe secret key)
    """

    _CAPABILITIES: Final = ProviderCapabilities(
        payment_methods=True,
        refunds=True,
        three_d_secure=True,
        subscriptions=True,
        checkout=True,
        webhooks=True,
    )

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str,
        api_version: str = DEFAULT_API_VERSION,
        max_network_retries: int = 2,
        timeout: float = 30.0,
        api_base: str | None = None,
        webhook_tolerance: timedelta = timedelta(minutes=5),
        rate_limit_retries: int = 2,
    ) -> None:
        _require_text(api_key, field="api_key", what="a Stripe secret key")
        _require_text(webhook_secret, field="webhook_secret", what="the endpoint's whsec_...")
        _require_text(api_version, field="api_version", what="such as '2026-10-28.endive'")
        _require_count(max_network_retries, field="max_network_retries")
        _require_count(rate_limit_retries, field="rate_limit_retries")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValidationError("must be a number of seconds above 0", field="timeout")
        if api_base is not None and (
            not isinstance(api_base, str) or not api_base.startswith(("http://", "https://"))
        ):
            raise ValidationError("must be an http(s) URL or None", field="api_base")
        if not isinstance(webhook_tolerance, timedelta) or webhook_tolerance < timedelta(0):
            raise ValidationError("must be a timedelta of zero or more", field="webhook_tolerance")
        self._api_key = api_key
        self._webhook_secret = webhook_secret.encode()
        self._secrets = (api_key, webhook_secret)
        self._api_version = api_version
        self._max_network_retries = max_network_retries
        self._rate_limit_retries = rate_limit_retries
        self._timeout = float(timeout)
        self._api_base = (api_base or stripe.DEFAULT_API_BASE).rstrip("/")
        self._webhook_tolerance = webhook_tolerance
        self._bound: tuple[object, stripe.StripeClient, stripe.HTTPXClient] | None = None
        stripe.enable_telemetry = False

    def __repr__(self) -> str:
        return f"StripeProvider(api_base={self._api_base!r}, api_version={self._api_version!r})"

    @property
    def name(self) -> str:
        """``"stripe"``: what lands in the ``provider`` column of records made through it."""
        return "stripe"

    @property
    def capabilities(self) -> ProviderCapabilities:
        """All of them: cards, refunds, 3-D Secure, subscriptions, Checkout, webhooks."""
        return self._CAPABILITIES

    async def aclose(self) -> None:
        """Close the HTTP client of the current event loop (idle connections), if any."""
        bound, self._bound = self._bound, None
        if bound is not None and bound[0] is _current_loop():
            await bound[2].close_async()  # type: ignore[no-untyped-call]

    # -- customers and payment methods ------------------------------------------------------

    async def create_customer(
        self, *, email: str, name: str | None, idempotency_key: str
    ) -> ProviderCustomer:
        """``POST /v1/customers`` with ``email`` and ``name``, under qzpay's key."""
        params: CustomerCreateParams = {"email": email}
        if name:
            params["name"] = name
        created = await self._send(
            lambda c: c.v1.customers.create_async(params, _keyed(idempotency_key)),
            action="create a customer",
        )
        return ProviderCustomer(provider_id=str(created["id"]))

    async def attach_payment_method(
        self, *, provider_customer_id: str, token: str
    ) -> ProviderPaymentMethod:
        """``POST /v1/payment_methods/{token}/attach``: a ``pm_...`` (or a test token such
        as ``pm_card_visa``, which Stripe turns into a new PaymentMethod) is attached to
        the customer; brand, last 4 and expiry come from its card.

        The port gives no key here: the SDK's own key covers its retries, and attaching
        again later must attach again, not replay an earlier attach.
        """
        attached = await self._send(
            lambda c: c.v1.payment_methods.attach_async(token, {"customer": provider_customer_id}),
            action="attach a payment method",
        )
        return results.payment_method(attached)

    async def detach_payment_method(self, *, provider_payment_method_id: str) -> None:
        """``POST /v1/payment_methods/{id}/detach``: it can no longer be charged."""
        await self._send(
            lambda c: c.v1.payment_methods.detach_async(provider_payment_method_id),
            action="detach a payment method",
        )

    async def create_setup_intent(
        self, *, provider_customer_id: str, idempotency_key: str
    ) -> StripeSetupIntent:
        """``POST /v1/setup_intents`` for the customer, for off-session use: a card saved
        through it (Stripe.js, with 3-D Secure done once) can be charged by renewals.

        Stripe-only, not part of the port; attach the resulting ``pm_...`` as usual.
        """
        params: SetupIntentCreateParams = {
            "customer": provider_customer_id,
            "usage": "off_session",
            "metadata": {results.KEY_METADATA: idempotency_key},
        }
        created = await self._send(
            lambda c: c.v1.setup_intents.create_async(params, _keyed(idempotency_key)),
            action="create a SetupIntent",
        )
        return StripeSetupIntent(
            provider_id=str(created["id"]),
            client_secret=str(created.get("client_secret") or ""),
            status=str(created.get("status") or ""),
        )

    # -- charges ----------------------------------------------------------------------------

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """A PaymentIntent created and confirmed at once (``POST /v1/payment_intents``,
        ``confirm=true``) on the customer's payment method.

        ``off_session=true`` when qzpay charges with no customer present (renewals): a card
        that would need 3-D Secure is then declined (``authentication_required``) rather
        than left waiting. Otherwise 3-D Secure gives ``requires_action``. Redirect-only
        payment methods are not offered (``allow_redirects=never``: no ``return_url``
        exists on the port), which Stripe requires for a confirmation without one.
        """
        if request.provider_payment_method_id is None:
            raise ValidationError(
                "is required: Stripe charges a PaymentMethod", field="provider_payment_method_id"
            )
        params: PaymentIntentCreateParams = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "customer": request.provider_customer_id,
            "payment_method": request.provider_payment_method_id,
            "confirm": True,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "metadata": {**request.metadata, results.KEY_METADATA: request.idempotency_key},
        }
        if request.description:
            params["description"] = request.description
        if request.off_session:
            params["off_session"] = True
        options = _keyed(request.idempotency_key)
        try:
            intent = await self._send(
                lambda c: c.v1.payment_intents.create_async(params, options),
                action="create a PaymentIntent",
                declines=True,
            )
        except stripe.CardError as decline:
            return results.declined(errors.error_body(decline))
        return results.charge(intent)

    async def retrieve_charge(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> ChargeResult | None:
        """The PaymentIntent by id, or else by ``metadata['qzpay_key']`` (Stripe's search).

        Stripe's search is eventually consistent (usually under a minute behind, up to an
        hour in an outage): a PaymentIntent made moments ago may not be found yet. That is
        safe here: qzpay then sends the same attempt again under the same key, and Stripe
        answers with the PaymentIntent it already made instead of charging again.
        """
        if provider_id:
            intent = await self._found(
                lambda c: c.v1.payment_intents.retrieve_async(provider_id),
                action="retrieve a PaymentIntent",
            )
            return None if intent is None else results.charge(intent)
        intents = await self._search_by_key(
            lambda c, query: c.v1.payment_intents.search_async(query),
            idempotency_key,
            action="search PaymentIntents",
        )
        best = results.best_intent(intents)
        return None if best is None else results.charge(best)

    # -- refunds ----------------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundResult:
        """``POST /v1/refunds`` of ``amount`` of the PaymentIntent, under qzpay's key.

        Stripe's own reasons (``duplicate``, ``fraudulent``, ``requested_by_customer``) go
        as ``reason``; any other text qzpay was given goes in ``metadata[qzpay_reason]``.
        """
        params: RefundCreateParams = {
            "payment_intent": request.provider_payment_id,
            "amount": request.amount,
            "metadata": {results.KEY_METADATA: request.idempotency_key},
        }
        if request.reason in _STRIPE_REFUND_REASONS:
            params["reason"] = request.reason
        elif request.reason:
            params["metadata"] = {
                results.KEY_METADATA: request.idempotency_key,
                "qzpay_reason": request.reason[:500],
            }
        created = await self._send(
            lambda c: c.v1.refunds.create_async(params, _keyed(request.idempotency_key)),
            action="create a refund",
        )
        return results.refund(created)

    async def retrieve_refund(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> RefundResult | None:
        """The refund by id, or else by ``metadata.qzpay_key`` among the newest
        ``REFUND_SCAN_LIMIT`` refunds (Stripe cannot search refunds, and the port does not
        say which payment the refund was of); ``None`` when none is found."""
        if provider_id:
            found = await self._found(
                lambda c: c.v1.refunds.retrieve_async(provider_id), action="retrieve a refund"
            )
            return None if found is None else results.refund(found)
        after: str | None = None
        for _ in range(REFUND_SCAN_LIMIT // _PAGE):
            listing: RefundListParams = {"limit": _PAGE}
            if after is not None:
                listing["starting_after"] = after
            page = await self._send(_refund_page(listing), action="list refunds")
            refunds = [r for r in page.get("data") or () if isinstance(r, Mapping)]
            for refund in refunds:
                if results.idempotency_key_of(refund) == idempotency_key:
                    return results.refund(refund)
            if not page.get("has_more") or not refunds:
                return None
            after = str(refunds[-1]["id"])
        return None

    async def list_refunds(
        self, *, provider_payment_id: str, currency: str
    ) -> Sequence[RefundResult]:
        """Every refund of the PaymentIntent (``GET /v1/refunds?payment_intent=``, every page
        of 100), oldest first, each with its amount and ``metadata.qzpay_key``; a refund
        made outside qzpay (the Dashboard) has no key.

        ``currency`` is not needed: Stripe's amounts are already the minor units qzpay
        charged in. An unknown PaymentIntent is an empty list, whether Stripe answers that
        or a 404.
        """
        newest_first: list[RefundResult] = []
        after: str | None = None
        while True:
            listing: RefundListParams = {"payment_intent": provider_payment_id, "limit": _PAGE}
            if after is not None:
                listing["starting_after"] = after
            page = await self._found(_refund_page(listing), action="list a payment's refunds")
            if page is None:
                return []
            refunds = [r for r in page.get("data") or () if isinstance(r, Mapping)]
            newest_first.extend(results.refund(r) for r in refunds)
            if not page.get("has_more") or not refunds:
                return newest_first[::-1]
            after = str(refunds[-1]["id"])

    # -- subscriptions and checkout ---------------------------------------------------------

    async def create_subscription(
        self, request: ProviderSubscriptionRequest
    ) -> ProviderSubscription:
        """``POST /v1/subscriptions``: one item (price, quantity), ``trial_end`` and the
        ``default_payment_method`` qzpay chose; Stripe then bills it itself
        (provider-managed mode).

        The same key answers the subscription made before for as long as Stripe keeps the
        key (24 hours), with the answer Stripe gave then: qzpay mirrors the state from
        ``retrieve_subscription`` and webhooks afterwards.
        """
        params: SubscriptionCreateParams = {
            "customer": request.provider_customer_id,
            "items": [{"price": request.provider_price_id, "quantity": request.quantity}],
            "metadata": {results.KEY_METADATA: request.idempotency_key},
        }
        if request.trial_end is not None:
            trial_end = webhooks.aware(request.trial_end, field="trial_end")
            params["trial_end"] = int(trial_end.timestamp())
        if request.provider_payment_method_id is not None:
            # The card qzpay chose; without it Stripe bills the customer's own default.
            params["default_payment_method"] = request.provider_payment_method_id
        created = await self._send(
            lambda c: c.v1.subscriptions.create_async(params, _keyed(request.idempotency_key)),
            action="create a subscription",
        )
        return results.subscription(created)

    async def retrieve_subscription(
        self, *, provider_id: str | None = None, idempotency_key: str | None = None
    ) -> ProviderSubscription | None:
        """``GET /v1/subscriptions/{id}``: what webhooks and ``subscriptions.sync`` mirror;
        ``None`` when Stripe has no such subscription (404). Without an id, the subscription
        whose ``metadata['qzpay_key']`` is ``idempotency_key`` (Stripe's search), the first
        made should there be more.

        Search is eventually consistent (under a minute behind, as a rule): a subscription
        made moments ago may not be found yet, and then Stripe still remembers the key, so
        the creation qzpay re-sends under it is replayed, not made again.
        """
        if provider_id:
            found = await self._found(
                lambda c: c.v1.subscriptions.retrieve_async(provider_id),
                action="retrieve a subscription",
            )
            return None if found is None else results.subscription(found)
        made = await self._search_by_key(
            lambda c, query: c.v1.subscriptions.search_async(query),
            require_lookup(provider_id, idempotency_key),
            action="search subscriptions",
        )
        first = results.first_made(made)
        return None if first is None else results.subscription(first)

    async def cancel_subscription(
        self, *, provider_id: str, at_period_end: bool, idempotency_key: str
    ) -> ProviderSubscription:
        """Now: ``DELETE /v1/subscriptions/{id}``; at period end: ``POST
        /v1/subscriptions/{id}`` with ``cancel_at_period_end=true``; both under qzpay's key
        (Stripe replays the POST; a DELETE is safe to repeat by what follows).

        Stripe refuses to cancel a subscription that has ended (a DELETE answers 404 "No
        such subscription", an update 400), so a refusal is followed by a read: an ended
        subscription is answered as it is, as the port asks; anything else re-raises the
        refusal. A retryable failure is raised at once (the cancel may have been done).
        """
        options = _keyed(idempotency_key)
        try:
            if at_period_end:
                update: SubscriptionUpdateParams = {"cancel_at_period_end": True}
                answer = await self._send(
                    lambda c: c.v1.subscriptions.update_async(provider_id, update, options),
                    action="cancel a subscription at its period end",
                )
            else:
                answer = await self._send(
                    lambda c: c.v1.subscriptions.cancel_async(provider_id, None, options),
                    action="cancel a subscription",
                )
        except errors.StripeProviderError as refused:
            if refused.retryable:
                raise
            found = await self.retrieve_subscription(provider_id=provider_id)
            if found is None or found.status not in results.ENDED_SUBSCRIPTION_STATUSES:
                raise
            return found
        return results.subscription(answer)

    async def create_checkout(self, request: CheckoutRequest) -> ProviderCheckout:
        """``POST /v1/checkout/sessions`` in payment mode, one line of ``amount`` (inline
        ``price_data``), for the customer where given."""
        params: CheckoutSessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": request.amount,
                        "product_data": {"name": _CHECKOUT_PRODUCT_NAME},
                    },
                }
            ],
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "metadata": {results.KEY_METADATA: request.idempotency_key},
        }
        if request.provider_customer_id:
            params["customer"] = request.provider_customer_id
        created = await self._send(
            lambda c: c.v1.checkout.sessions.create_async(params, _keyed(request.idempotency_key)),
            action="create a Checkout Session",
        )
        return ProviderCheckout(provider_id=str(created["id"]), url=str(created.get("url") or ""))

    # -- webhooks ---------------------------------------------------------------------------

    def sign_webhook(self, payload: bytes, timestamp: datetime) -> dict[str, str]:
        """The ``Stripe-Signature`` header Stripe would send ``payload`` with at
        ``timestamp`` (for tests: the SDK's own verifier accepts it too).

        >>> from datetime import UTC, datetime
        >>> provider = StripeProvider(api_key="sk_test_1", webhook_secret="whsec_1")
        >>> sent_at = datetime(2028, 1, 31, tzinfo=UTC)
        >>> body = b'{"id": "evt_1", "type": "payment_intent.succeeded", '
        >>> body += b'"data": {"object": {"id": "pi_1", "metadata": {"qzpay_key": "k"}}}}'
        >>> event = provider.verify_webhook(
        ...     payload=body, headers=provider.sign_webhook(body, sent_at), now=sent_at)
        >>> event.type, event.data["provider_payment_id"], event.data["idempotency_key"]
        ('payment.succeeded', 'pi_1', 'k')
        """
        return webhooks.sign(self._webhook_secret, payload, timestamp)

    def verify_webhook(
        self,
        *,
        payload: bytes,
        headers: Mapping[str, str],
        now: datetime,
        query: Mapping[str, str] | None = None,
    ) -> ProviderEvent:
        """Check ``Stripe-Signature`` (any ``v1`` may match) and ``|now - t| <=
        webhook_tolerance`` against the given ``now``; parse the event into its neutral
        form (``webhooks.parse_event`` lists the mapping). ``query`` is not used: Stripe
        signs the body."""
        return webhooks.verify(
            self._webhook_secret,
            payload=payload,
            headers=headers,
            now=now,
            tolerance=self._webhook_tolerance,
        )

    # -- the SDK ----------------------------------------------------------------------------

    async def _search_by_key(
        self,
        search: Callable[[stripe.StripeClient, Any], Awaitable[Any]],
        key: str,
        *,
        action: str,
    ) -> list[Mapping[str, Any]]:
        """The objects whose ``metadata['qzpay_key']`` is ``key`` (Stripe's search, one
        page: one key makes one object while Stripe remembers it)."""
        query = {"query": f"metadata['{results.KEY_METADATA}']:'{_quoted(key)}'", "limit": 10}
        found = await self._send(lambda c: search(c, query), action=action)
        data = found.get("data")
        return [o for o in data if isinstance(o, Mapping)] if isinstance(data, list) else []

    async def _found(self, send: Send[Any], *, action: str) -> dict[str, Any] | None:
        """``_send`` for a read of one object: ``None`` when Stripe has no such object."""
        try:
            return await self._send(send, action=action, missing_ok=True)
        except _Missing:
            return None

    async def _send(
        self,
        send: Send[Any],
        *,
        action: str,
        declines: bool = False,
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        """Make one request through the SDK and hand back the answer as a plain dict.

        A 429 is tried again here (the SDK does not), same request, same key; every other
        ``StripeError`` becomes a ``StripeProviderError``, except a ``CardError`` when
        ``declines`` (the caller reads it as a decline) and a 404 when ``missing_ok``
        (raised as ``_Missing``).
        """
        client = await self._client()
        for retry in range(self._rate_limit_retries + 1):
            try:
                answer = await send(client)
            except stripe.CardError as declined:
                if declines:
                    raise
                raise self._error(declined, action) from None
            except stripe.RateLimitError as limited:
                wait = errors.rate_limit_wait(limited, retry)
                if wait is None or retry == self._rate_limit_retries:
                    raise self._error(limited, action, stop=wait is None) from None
                await anyio.sleep(wait)
            except stripe.StripeError as error:
                if missing_ok and errors.is_missing(error):
                    raise _Missing from None
                raise self._error(error, action) from None
            else:
                return _plain(answer)
        raise AssertionError("unreachable: the last retry returns or raises")  # pragma: no cover

    def _error(
        self, error: stripe.StripeError, action: str, *, stop: bool = False
    ) -> errors.StripeProviderError:
        translated = errors.translate(error, action=action, secrets=self._secrets)
        if stop:  # Stripe said a retry will not help (Stripe-Should-Retry: false)
            translated.retryable = False
        return translated

    async def _client(self) -> stripe.StripeClient:
        """The client of the running event loop, made on first use there."""
        loop = _current_loop()
        bound = self._bound
        if bound is not None and bound[0] is loop:
            return bound[1]
        # Building the HTTP client reads the CA bundle from disk: not on the loop.
        made = await anyio.to_thread.run_sync(self._new_client)
        bound = self._bound
        if bound is not None and bound[0] is loop:  # another task got there first
            return bound[1]
        self._bound = (loop, *made)
        return made[0]

    def _new_client(self) -> tuple[stripe.StripeClient, stripe.HTTPXClient]:
        http = stripe.HTTPXClient(timeout=self._timeout)
        client = stripe.StripeClient(
            self._api_key,
            stripe_version=self._api_version,
            base_addresses={"api": self._api_base},
            max_network_retries=self._max_network_retries,
            http_client=http,
        )
        return client, http


class _Missing(Exception):
    """Stripe answered 404 where ``None`` is the port's answer."""


def _keyed(idempotency_key: str) -> stripe.RequestOptions:
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise ValidationError("must be a non-empty string", field="idempotency_key")
    return {"idempotency_key": idempotency_key}


def _refund_page(params: RefundListParams) -> Send[Any]:
    return lambda client: client.v1.refunds.list_async(params)


def _plain(answer: object) -> dict[str, Any]:
    """The answer as plain JSON: the body the SDK parsed, kept on its ``last_response``
    (every answer to a request has one), else the object's own recursive dump, which
    converts the whole object again and costs more than the rest of a charge's handling."""
    if isinstance(answer, stripe.StripeObject):
        data = getattr(answer.last_response, "data", None)
        return data if isinstance(data, dict) else answer.to_dict()
    raise TypeError(f"the stripe SDK answered {type(answer).__name__}, not a StripeObject")


def _quoted(value: str) -> str:
    """A value inside a single-quoted string of Stripe's search query language."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _current_loop() -> object:
    """The running event loop (asyncio's loop or trio's token), to bind the client to."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        import trio  # no asyncio loop, and anyio runs us: trio's

        return trio.lowlevel.current_trio_token()


def _require_text(value: object, *, field: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"must be a non-empty string ({what})", field=field)


def _require_count(value: object, *, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError("must be an int of 0 or more", field=field)
