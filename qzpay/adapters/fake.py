"""FakeProvider: an in-memory, deterministic payment provider that speaks Stripe's test vocabulary.

It is a supported adapter, not a test hack (think httpx's ``MockTransport``): applications
test their billing flows against it, and ``qzpay demo`` runs on it. It keeps Stripe's rules
where they catch application bugs (idempotency keys bound to their parameters, refunds capped
by what is left, payment methods bound to their customer) and answers instantly, with ids that
count up, so test output is stable from run to run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import re
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args

import anyio.lowlevel
import attrs

from qzpay.contracts.provider import (
    SUBSCRIPTION_STATUSES,
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
from qzpay.errors import (
    IdempotencyError,
    ProviderError,
    SignatureError,
    ValidationError,
)

__all__ = [
    "FAKE_CHECKOUT_URL",
    "FAKE_TEST_TOKENS",
    "SIGNATURE_HEADER",
    "FakeCharge",
    "FakeCustomer",
    "FakePaymentMethod",
    "FakeProvider",
    "FakeRefund",
    "FakeSubscription",
    "Operation",
]

SIGNATURE_HEADER: Final = "fake-signature"
"""The webhook header ``sign_webhook`` writes and ``verify_webhook`` reads."""

FAKE_CHECKOUT_URL: Final = "https://fake.qzpay.local/checkout/"
_FAKE_3DS_URL: Final = "https://fake.qzpay.local/3ds/"

_Behavior = Literal["succeed", "decline", "authenticate", "processing_error", "processing"]

Operation = Literal[
    "create_customer",
    "attach_payment_method",
    "detach_payment_method",
    "charge",
    "refund",
    "create_checkout",
    "create_subscription",
    "cancel_subscription",
]
_OPERATIONS: Final[tuple[str, ...]] = get_args(Operation)

_CURRENCY = re.compile(r"[A-Z]{3}")
_CARD_NUMBER_FRAGMENT = re.compile(r"\d{6,}")
_TOKEN_ECHO_LIMIT: Final = 12

_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class _TestCard:
    brand: str
    last4: str
    behavior: _Behavior
    failure_code: str | None = None
    failure_message: str | None = None
    exp_month: int = 12
    exp_year: int = 2034


_VISA = _TestCard(brand="visa", last4="4242", behavior="succeed")
_INSUFFICIENT_FUNDS = _TestCard(
    brand="visa",
    last4="9995",
    behavior="decline",
    failure_code="insufficient_funds",
    failure_message="Your card has insufficient funds.",
)

_TEST_CARDS: Final[Mapping[str, _TestCard]] = {
    "pm_card_visa": _VISA,
    "pm_card_mastercard": _TestCard(brand="mastercard", last4="4444", behavior="succeed"),
    "pm_card_amex": _TestCard(brand="amex", last4="8431", behavior="succeed"),
    "pm_card_chargeDeclined": _TestCard(
        brand="visa",
        last4="0002",
        behavior="decline",
        failure_code="card_declined",
        failure_message="Your card was declined.",
    ),
    "pm_card_insufficientFunds": _INSUFFICIENT_FUNDS,
    # Stripe's own name for the same card, so a token copied from Stripe's docs works too.
    "pm_card_chargeDeclinedInsufficientFunds": _INSUFFICIENT_FUNDS,
    "pm_card_authenticationRequired": _TestCard(
        brand="visa", last4="3184", behavior="authenticate"
    ),
    "pm_card_processingError": _TestCard(brand="visa", last4="0119", behavior="processing_error"),
    "pm_card_processing": _TestCard(brand="visa", last4="0077", behavior="processing"),
}

FAKE_TEST_TOKENS: Final[tuple[str, ...]] = tuple(_TEST_CARDS)
"""Every payment method token ``FakeProvider.attach_payment_method`` accepts."""


@attrs.frozen(kw_only=True)
class FakeCustomer:
    """A customer as the fake provider stores it (see ``FakeProvider.customers``)."""

    provider_id: str
    email: str
    name: str | None


@attrs.frozen(kw_only=True)
class FakePaymentMethod:
    """A payment method the fake provider created, with the token it came from.

    ``provider_customer_id`` is ``None`` once it has been detached.
    """

    method: ProviderPaymentMethod
    token: str
    provider_customer_id: str | None


@attrs.frozen(kw_only=True)
class FakeCharge:
    """A charge as it stands now: the request, its result and how much was refunded."""

    request: ChargeRequest
    result: ChargeResult
    amount_refunded: int


@attrs.frozen(kw_only=True)
class FakeRefund:
    """A refund the fake provider granted."""

    request: RefundRequest
    result: RefundResult


@attrs.frozen(kw_only=True)
class FakeSubscription:
    """A provider-managed subscription as the fake provider has it now, with its request."""

    request: ProviderSubscriptionRequest
    subscription: ProviderSubscription


@attrs.define(kw_only=True)
class _ChargeState:
    request: ChargeRequest
    result: ChargeResult
    amount_refunded: int = 0


@attrs.define(kw_only=True)
class _KeyUse:
    """What an idempotency key was first used for.

    ``result`` is ``None`` when the first attempt failed transiently: nothing was saved, so
    a retry runs again, but only with the same parameters.
    """

    operation: str
    params: object
    result: object | None = None


def _show_token(token: str) -> str:
    """Render a bad token for an error message without leaking what may be card data."""
    # Six digits in a row (spaces and dashes ignored) may be a card number's prefix.
    if _CARD_NUMBER_FRAGMENT.search(token.replace(" ", "").replace("-", "")):
        return "a value that looks like a card number (not shown; pass a test token instead)"
    if len(token) > _TOKEN_ECHO_LIMIT:
        return f"{token[:_TOKEN_ECHO_LIMIT]!r}…"
    return repr(token)


def _check_amount(amount: object) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ProviderError("must be an int of minor units", field="amount", rule="type")
    if amount <= 0:
        raise ProviderError("must be greater than 0", field="amount", rule="positive")


def _check_currency(currency: object) -> None:
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise ProviderError(
            "must be an upper-case ISO 4217 code such as 'USD'", field="currency", rule="format"
        )


def _check_key(idempotency_key: object) -> None:
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise ProviderError("must be a non-empty string", field="idempotency_key")


def _require_aware(moment: object, *, field: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError("must be a timezone-aware datetime", field=field)
    return moment


class FakeProvider:
    """An in-memory ``PaymentProvider`` that understands Stripe's test payment methods.

    Tokens (``FAKE_TEST_TOKENS``) and what a charge on the card does:

    - ``pm_card_visa`` (4242), ``pm_card_mastercard`` (4444), ``pm_card_amex`` (8431):
      succeeds.
    - ``pm_card_chargeDeclined``: status ``failed``, failure code ``card_declined``.
    - ``pm_card_insufficientFunds`` (alias ``pm_card_chargeDeclinedInsufficientFunds``):
      status ``failed``, failure code ``insufficient_funds``.
    - ``pm_card_authenticationRequired``: status ``requires_action`` with a
      ``next_action_url`` (3-D Secure).
    - ``pm_card_processingError``: the first attempt per idempotency key raises
      ``ProviderError(retryable=True)``; a retry with the same key succeeds.
    - ``pm_card_processing``: status ``processing``, the outcome decided later (a payment
      held for review, as MercadoPago's ``in_process``, or a bank debit's days);
      ``finish_processing`` decides it. qzpay's own name: Stripe has no such card.

    All attach fine (declines happen at charge time) and expire 12/2034.

    Rules kept from Stripe because they catch real bugs: an idempotency key replays its
    first result for the same parameters and raises ``IdempotencyError`` for different ones
    (or for a different operation); a payment method charges only the customer it is
    attached to; refunds never exceed what is left of a succeeded charge. A refusal that is
    the customer's (a decline) is a ``ChargeResult`` with ``status == "failed"``; a request
    the provider rejects raises ``ProviderError(retryable=False)``.

    Ids count up per kind after a namespace (``pm_fake_3fa9c2_000001``): random per instance
    by default, so a new run against a saved database never reuses an id; pass
    ``namespace=""`` for bare, reproducible ids (``cus_fake_000001``, ``pm_fake_000001``,
    ``ch_fake_000001``, ``re_fake_000001``, ``cs_fake_000001``). Tests can inject
    faults with ``fail_next`` (also a response lost after the work was done), finish 3-D
    Secure with ``complete_authentication`` and a processing charge with
    ``finish_processing``, and inspect ``customers``,
    ``payment_methods``, ``charges`` and ``refunds``. With ``ledger=path`` the fake keeps
    its state in that file, so another process (a crash test's next run, the demo run
    again) sees what an earlier one charged.

    Every call yields to the event loop once, as a network round trip would, then applies
    its change without awaiting again: concurrent calls on one event loop (asyncio or trio)
    are serialized without a lock. It is not thread-safe.

    >>> import anyio
    >>> from qzpay.contracts.provider import ChargeRequest
    >>> async def checkout() -> str:
    ...     fake = FakeProvider(namespace="")
    ...     customer = await fake.create_customer(
    ...         email="ann@example.com", name="Ann", idempotency_key="customer-u_1")
    ...     card = await fake.attach_payment_method(
    ...         provider_customer_id=customer.provider_id, token="pm_card_visa")
    ...     result = await fake.charge(ChargeRequest(
    ...         amount=9900, currency="USD", provider_customer_id=customer.provider_id,
    ...         provider_payment_method_id=card.provider_id, idempotency_key="order-42"))
    ...     return f"{result.provider_id} {result.status}"
    >>> anyio.run(checkout)
    'ch_fake_000001 succeeded'
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
        webhook_secret: str = "whsec_fake",
        webhook_tolerance: timedelta = timedelta(minutes=5),
        namespace: str | None = None,
        ledger: str | Path | None = None,
    ) -> None:
        if not isinstance(webhook_secret, str) or not webhook_secret:
            raise ValidationError("must be a non-empty string", field="webhook_secret")
        if not isinstance(webhook_tolerance, timedelta) or webhook_tolerance < timedelta(0):
            raise ValidationError("must be a timedelta of zero or more", field="webhook_tolerance")
        self._webhook_secret = webhook_secret.encode()
        self._webhook_tolerance = webhook_tolerance
        if namespace is not None and not re.fullmatch(r"[a-z0-9]{0,12}", namespace):
            raise ValidationError("must be 0-12 lower-case letters or digits", field="namespace")
        # Ids must not repeat across runs against one saved database: a fresh provider
        # starts its counters again, so each instance gets a random namespace unless told.
        self._namespace = secrets.token_hex(3) if namespace is None else namespace
        self._counters: dict[str, int] = {}
        self._customers: dict[str, FakeCustomer] = {}
        self._payment_methods: dict[str, FakePaymentMethod] = {}
        self._cards: dict[str, _TestCard] = {}
        self._charges: dict[str, _ChargeState] = {}
        self._refunds: list[FakeRefund] = []
        self._subscriptions: dict[str, FakeSubscription] = {}
        self._keys: dict[str, _KeyUse] = {}
        self._forgotten: set[str] = set()
        self._faults: dict[str, deque[tuple[ProviderError, bool]]] = {}
        self._ledger = None if ledger is None else Path(ledger)
        if self._ledger is not None and self._ledger.exists():
            self._load(self._ledger)
            if namespace is not None:
                # Asked for: two processes started from one ledger must not hand out the
                # same ids (each keeps its own copy of the file).
                self._namespace = namespace

    # -- identity ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``"fake"``: what lands in the ``provider`` column of records made through it."""
        return "fake"

    @property
    def capabilities(self) -> ProviderCapabilities:
        """Everything the port names: payment methods, refunds, 3-D Secure, provider-managed
        subscriptions, checkout and webhooks."""
        return self._CAPABILITIES

    # -- test controls ----------------------------------------------------------------------

    def fail_next(self, operation: Operation, error: ProviderError, *, after: bool = False) -> None:
        """Make the next call of ``operation`` raise ``error``.

        Errors queue up per operation, first in first out, and each is raised once. By
        default the failing call changes nothing and binds no idempotency key, like a
        request that never reached the provider. With ``after=True`` the call does its work
        (charges, refunds, binds the key) and then raises, like a response lost on its way
        back (a timeout after charging): the fault reconciliation exists for. Operations:
        ``create_customer``, ``attach_payment_method``, ``detach_payment_method``, ``charge``,
        ``refund``, ``create_checkout``, ``create_subscription``, ``cancel_subscription``.

        >>> fake = FakeProvider()
        >>> fake.fail_next("charge", ProviderError("gateway timeout", retryable=True))
        >>> fake.fail_next("charge", ProviderError("read timeout", retryable=True), after=True)
        """
        if operation not in _OPERATIONS:
            raise ValidationError(f"must be one of: {', '.join(_OPERATIONS)}", field="operation")
        if not isinstance(error, ProviderError):
            raise ValidationError(
                "must be a ProviderError: the port promises callers nothing else",
                field="error",
            )
        self._faults.setdefault(operation, deque()).append((error, after))

    def forget_keys(self) -> None:
        """Forget every idempotency key seen so far, as a real provider prunes them (Stripe
        after 24 hours): a key sent again is then a new request, and makes a new object.
        What was made keeps its key, so lookups by key (``retrieve_charge``,
        ``retrieve_subscription``) still find it, as Stripe's search by metadata does.

        >>> fake = FakeProvider()
        >>> fake.forget_keys()
        """
        self._forgotten.update(self._keys)

    @property
    def customers(self) -> Mapping[str, FakeCustomer]:
        """Customers by provider id (a snapshot)."""
        return dict(self._customers)

    @property
    def payment_methods(self) -> Mapping[str, FakePaymentMethod]:
        """Payment methods by provider id, detached ones included (a snapshot)."""
        return dict(self._payment_methods)

    @property
    def charges(self) -> list[FakeCharge]:
        """Every charge that produced a result, oldest first (a snapshot).

        Declined and ``requires_action`` charges are here; calls that raised are not, and an
        idempotent replay does not add a second entry.
        """
        return [
            FakeCharge(request=s.request, result=s.result, amount_refunded=s.amount_refunded)
            for s in self._charges.values()
        ]

    @property
    def refunds(self) -> list[FakeRefund]:
        """Every refund granted, oldest first (a snapshot)."""
        return list(self._refunds)

    @property
    def subscriptions(self) -> Mapping[str, FakeSubscription]:
        """Provider-managed subscriptions by provider id, as they stand now (a snapshot)."""
        return dict(self._subscriptions)

    def update_subscription(
        self,
        provider_id: str,
        *,
        status: str | None = None,
        current_period_start: datetime | None = None,
        current_period_end: datetime | None = None,
        cancel_at_period_end: bool | None = None,
    ) -> ProviderSubscription:
        """Move a subscription at the provider, as the provider's own billing would (a renewal,
        a failed charge, a cancel from its dashboard); then send qzpay the webhook for it.

        >>> fake = FakeProvider(namespace="")
        >>> fake.update_subscription("sub_none", status="past_due")
        Traceback (most recent call last):
        ...
        qzpay.errors.ValidationError: provider_id: no such subscription at the fake provider
        """
        stored = self._subscriptions.get(provider_id)
        if stored is None:
            raise ValidationError("no such subscription at the fake provider", field="provider_id")
        if status is not None and status not in SUBSCRIPTION_STATUSES:
            raise ValidationError(
                f"must be one of: {', '.join(sorted(SUBSCRIPTION_STATUSES))}", field="status"
            )
        changes: dict[str, Any] = {}
        if status is not None:
            changes.update(status=status, provider_status=status)
        if current_period_start is not None:
            changes["current_period_start"] = _require_aware(
                current_period_start, field="current_period_start"
            )
        if current_period_end is not None:
            changes["current_period_end"] = _require_aware(
                current_period_end, field="current_period_end"
            )
        if cancel_at_period_end is not None:
            changes["cancel_at_period_end"] = bool(cancel_at_period_end)
        updated = attrs.evolve(stored.subscription, **changes)
        self._subscriptions[provider_id] = attrs.evolve(stored, subscription=updated)
        self._save()
        return updated

    # -- the port ---------------------------------------------------------------------------

    async def create_customer(
        self, *, email: str, name: str | None, idempotency_key: str
    ) -> ProviderCustomer:
        """Create a customer; the same key with the same email and name replays it."""
        lost = await self._enter("create_customer")
        _check_key(idempotency_key)
        params = (email, name)
        prior = self._key_use("create_customer", idempotency_key, params)
        if prior is not None and prior.result is not None:
            return self._leave(lost, self._replayed(prior, ProviderCustomer))
        if not isinstance(email, str) or not email:
            raise ProviderError("must be a non-empty string", field="email")
        customer = ProviderCustomer(provider_id=self._next_id("cus"))
        self._customers[customer.provider_id] = FakeCustomer(
            provider_id=customer.provider_id, email=email, name=name
        )
        self._remember("create_customer", idempotency_key, params, customer)
        return self._leave(lost, customer)

    async def attach_payment_method(
        self, *, provider_customer_id: str, token: str
    ) -> ProviderPaymentMethod:
        """Turn a test token into a new card payment method attached to the customer.

        Attaching the same token twice makes two payment methods, as on Stripe.
        """
        lost = await self._enter("attach_payment_method")
        self._require_customer(provider_customer_id)
        card = _TEST_CARDS.get(token) if isinstance(token, str) else None
        if card is None:
            shown = _show_token(token) if isinstance(token, str) else "a non-string value"
            raise ProviderError(
                f"{shown} is not a test payment method the fake provider knows; "
                f"use one of: {', '.join(FAKE_TEST_TOKENS)}",
                retryable=False,
                field="token",
                rule="known_test_token",
            )
        method = ProviderPaymentMethod(
            provider_id=self._next_id("pm"),
            type="card",
            brand=card.brand,
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
        )
        self._cards[method.provider_id] = card
        self._payment_methods[method.provider_id] = FakePaymentMethod(
            method=method, token=token, provider_customer_id=provider_customer_id
        )
        return self._leave(lost, method)

    async def detach_payment_method(self, *, provider_payment_method_id: str) -> None:
        """Detach a payment method; it can no longer be charged. Detaching twice fails."""
        lost = await self._enter("detach_payment_method")
        stored = self._payment_methods.get(provider_payment_method_id)
        if stored is None:
            raise ProviderError(
                "no such payment method", retryable=False, field="provider_payment_method_id"
            )
        if stored.provider_customer_id is None:
            raise ProviderError(
                "is not attached to a customer",
                retryable=False,
                field="provider_payment_method_id",
            )
        self._payment_methods[provider_payment_method_id] = attrs.evolve(
            stored, provider_customer_id=None
        )
        self._leave(lost, None)

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge an attached test card; the card's token decides the outcome."""
        lost = await self._enter("charge")
        _check_key(request.idempotency_key)
        # A copy, so a caller mutating its metadata dict afterwards cannot change the binding.
        params = attrs.evolve(request, metadata=dict(request.metadata))
        prior = self._key_use("charge", request.idempotency_key, params)
        if prior is not None and prior.result is not None:
            return self._leave(lost, self._replayed(prior, ChargeResult))
        _check_amount(request.amount)
        _check_currency(request.currency)
        self._require_customer(request.provider_customer_id)
        card = self._require_attached(request.provider_payment_method_id, request)

        if card.behavior == "processing_error" and prior is None:
            self._keys[request.idempotency_key] = _KeyUse(operation="charge", params=params)
            self._forgotten.discard(request.idempotency_key)
            self._save()
            raise ProviderError(
                "processing error at the card network (simulated); "
                "retry with the same idempotency key",
                retryable=True,
            )
        charge_id = self._next_id("ch")
        if card.behavior == "decline":
            result = ChargeResult(
                provider_id=charge_id,
                status="failed",
                failure_code=card.failure_code,
                failure_message=card.failure_message,
                provider_failure_code=card.failure_code,
            )
        elif card.behavior == "processing":
            result = ChargeResult(provider_id=charge_id, status="processing")
        elif card.behavior == "authenticate":
            result = ChargeResult(
                provider_id=charge_id,
                status="requires_action",
                next_action_url=f"{_FAKE_3DS_URL}{charge_id}",
                client_secret=f"{charge_id}_secret_fake",
            )
        else:
            result = ChargeResult(provider_id=charge_id, status="succeeded")
        self._charges[charge_id] = _ChargeState(request=params, result=result)
        self._remember("charge", request.idempotency_key, params, result)
        return self._leave(lost, result)

    async def retrieve_charge(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> ChargeResult | None:
        """The charge as it stands now, found by its provider id or by the key it was made
        with; ``None`` when no charge was made (never charges)."""
        await anyio.lowlevel.checkpoint()
        if provider_id is not None:
            state = self._charges.get(provider_id)
        else:
            use = self._keys.get(idempotency_key)
            if use is None or use.operation != "charge" or not isinstance(use.result, ChargeResult):
                return None
            state = self._charges[use.result.provider_id]
        if state is None:
            return None
        return attrs.evolve(state.result, idempotency_key=state.request.idempotency_key)

    def complete_authentication(self, provider_id: str, *, succeed: bool = True) -> ChargeResult:
        """The customer finished (or failed) 3-D Secure on a ``requires_action`` charge.

        Stands in for the customer's browser: the charge becomes ``succeeded``, or
        ``failed`` with ``authentication_failed``; ``payments.confirm`` then settles it.
        """
        return self._decide(
            provider_id,
            "requires_action",
            "is not a charge waiting for 3-D Secure",
            failure=None
            if succeed
            else ("authentication_failed", "The customer did not complete 3-D Secure."),
        )

    def finish_processing(self, provider_id: str, *, succeed: bool = True) -> ChargeResult:
        """The provider decided a ``processing`` charge: ``succeeded``, or ``failed`` with
        ``card_declined``; ``payments.reconcile`` (or the job runner) then settles it."""
        return self._decide(
            provider_id,
            "processing",
            "is not a processing charge",
            failure=None if succeed else ("card_declined", "Your card was declined."),
        )

    def _decide(
        self, provider_id: str, waiting: str, refusal: str, *, failure: tuple[str, str] | None
    ) -> ChargeResult:
        state = self._charges.get(provider_id)
        if state is None or state.result.status != waiting:
            raise ValidationError(refusal, field="provider_id")
        state.result = (
            ChargeResult(provider_id=provider_id, status="succeeded")
            if failure is None
            else ChargeResult(
                provider_id=provider_id,
                status="failed",
                failure_code=failure[0],
                failure_message=failure[1],
                provider_failure_code=failure[0],
            )
        )
        self._save()
        return state.result

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Refund part or all of a succeeded charge, never more than is left of it."""
        lost = await self._enter("refund")
        _check_key(request.idempotency_key)
        prior = self._key_use("refund", request.idempotency_key, request)
        if prior is not None and prior.result is not None:
            return self._leave(lost, self._replayed(prior, RefundResult))
        _check_amount(request.amount)
        charge = self._charges.get(request.provider_payment_id)
        if charge is None:
            raise ProviderError("no such charge", retryable=False, field="provider_payment_id")
        if charge.result.status != "succeeded":
            raise ProviderError(
                f"only a succeeded charge can be refunded; this one is {charge.result.status}",
                retryable=False,
                field="provider_payment_id",
                rule="refundable_status",
            )
        if request.currency != charge.request.currency:
            raise ProviderError(
                f"must match the charge's currency {charge.request.currency}",
                retryable=False,
                field="currency",
            )
        remaining = charge.request.amount - charge.amount_refunded
        if request.amount > remaining:
            raise ProviderError(
                f"{request.amount} exceeds the {remaining} left to refund on this charge",
                retryable=False,
                field="amount",
                rule="refund_within_charge",
            )
        charge.amount_refunded += request.amount
        result = RefundResult(provider_id=self._next_id("re"), status="succeeded")
        self._refunds.append(FakeRefund(request=request, result=result))
        self._remember("refund", request.idempotency_key, request, result)
        return self._leave(lost, result)

    async def retrieve_refund(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> RefundResult | None:
        """The refund found by its provider id or by the key it was made with, or ``None``."""
        await anyio.lowlevel.checkpoint()
        for granted in self._refunds:
            if granted.result.provider_id == provider_id or (
                provider_id is None and granted.request.idempotency_key == idempotency_key
            ):
                return granted.result
        return None

    async def list_refunds(
        self, *, provider_payment_id: str, currency: str
    ) -> Sequence[RefundResult]:
        """The charge's refunds, oldest first, with their amounts and keys."""
        await anyio.lowlevel.checkpoint()
        return [
            attrs.evolve(
                granted.result,
                amount=granted.request.amount,
                idempotency_key=granted.request.idempotency_key,
            )
            for granted in self._refunds
            if granted.request.provider_payment_id == provider_payment_id
        ]

    async def create_subscription(
        self, request: ProviderSubscriptionRequest
    ) -> ProviderSubscription:
        """Start a subscription on any price id: ``trialing`` with a ``trial_end``, else
        ``active``. The fake keeps no calendar: periods are left for qzpay to compute until
        ``update_subscription`` sets them."""
        lost = await self._enter("create_subscription")
        _check_key(request.idempotency_key)
        prior = self._key_use("create_subscription", request.idempotency_key, request)
        if prior is not None and prior.result is not None:
            return self._leave(lost, self._replayed(prior, ProviderSubscription))
        self._require_customer(request.provider_customer_id)
        if not isinstance(request.provider_price_id, str) or not request.provider_price_id:
            raise ProviderError(
                "must be a non-empty string", retryable=False, field="provider_price_id"
            )
        if isinstance(request.quantity, bool) or not isinstance(request.quantity, int):
            raise ProviderError("must be an integer", retryable=False, field="quantity")
        if request.quantity < 1:
            raise ProviderError("must be at least 1", retryable=False, field="quantity")
        trial_end = (
            None
            if request.trial_end is None
            else _require_aware(request.trial_end, field="trial_end")
        )
        status = "trialing" if trial_end is not None else "active"
        subscription = ProviderSubscription(
            provider_id=self._next_id("sub"),
            status=status,
            provider_status=status,
            trial_end=trial_end,
            idempotency_key=request.idempotency_key,
        )
        self._subscriptions[subscription.provider_id] = FakeSubscription(
            request=request, subscription=subscription
        )
        self._remember("create_subscription", request.idempotency_key, request, subscription)
        return self._leave(lost, subscription)

    async def retrieve_subscription(
        self, *, provider_id: str | None = None, idempotency_key: str | None = None
    ) -> ProviderSubscription | None:
        """The subscription as it stands now (by id, else the first made with the key), or
        ``None``."""
        await anyio.lowlevel.checkpoint()
        if provider_id:
            stored = self._subscriptions.get(provider_id)
            return None if stored is None else stored.subscription
        key = require_lookup(provider_id, idempotency_key)
        for made in self._subscriptions.values():  # oldest first
            if made.request.idempotency_key == key:
                return made.subscription
        return None

    async def cancel_subscription(
        self, *, provider_id: str, at_period_end: bool, idempotency_key: str
    ) -> ProviderSubscription:
        """Cancel now (``canceled``) or mark it to end with its period. The fake keeps no
        clock, so it says no ``canceled_at``: qzpay records when it saw the cancel."""
        lost = await self._enter("cancel_subscription")
        _check_key(idempotency_key)
        params = (provider_id, bool(at_period_end))
        prior = self._key_use("cancel_subscription", idempotency_key, params)
        if prior is not None and prior.result is not None:
            return self._leave(lost, self._replayed(prior, ProviderSubscription))
        stored = self._subscriptions.get(provider_id)
        if stored is None:
            raise ProviderError("no such subscription", retryable=False, field="provider_id")
        current = stored.subscription
        if current.status not in ("canceled", "incomplete_expired"):
            if at_period_end:
                current = attrs.evolve(current, cancel_at_period_end=True)
            else:
                current = attrs.evolve(current, status="canceled", provider_status="canceled")
            self._subscriptions[provider_id] = attrs.evolve(stored, subscription=current)
        self._remember("cancel_subscription", idempotency_key, params, current)
        return self._leave(lost, current)

    async def create_checkout(self, request: CheckoutRequest) -> ProviderCheckout:
        """Open a checkout session at ``https://fake.qzpay.local/checkout/<id>``."""
        lost = await self._enter("create_checkout")
        _check_key(request.idempotency_key)
        prior = self._key_use("create_checkout", request.idempotency_key, request)
        if prior is not None and prior.result is not None:
            return self._leave(lost, self._replayed(prior, ProviderCheckout))
        _check_amount(request.amount)
        _check_currency(request.currency)
        if request.provider_customer_id is not None:
            self._require_customer(request.provider_customer_id)
        session_id = self._next_id("cs")
        checkout = ProviderCheckout(provider_id=session_id, url=f"{FAKE_CHECKOUT_URL}{session_id}")
        self._remember("create_checkout", request.idempotency_key, request, checkout)
        return self._leave(lost, checkout)

    # -- webhooks ---------------------------------------------------------------------------

    def sign_webhook(self, payload: bytes, timestamp: datetime) -> dict[str, str]:
        """Return the headers the fake provider would send ``payload`` with at ``timestamp``.

        The scheme is Stripe's: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.payload">``
        keyed with ``webhook_secret``.

        >>> from datetime import UTC, datetime
        >>> fake = FakeProvider()
        >>> sent_at = datetime(2025, 1, 1, tzinfo=UTC)
        >>> body = b'{"id": "evt_1", "type": "payment.succeeded", "data": {}}'
        >>> headers = fake.sign_webhook(body, sent_at)
        >>> fake.verify_webhook(payload=body, headers=headers, now=sent_at).type
        'payment.succeeded'
        """
        moment = _require_aware(timestamp, field="timestamp")
        unix = int(moment.timestamp())
        return {SIGNATURE_HEADER: f"t={unix},v1={self._signature(unix, payload)}"}

    def verify_webhook(
        self,
        *,
        payload: bytes,
        headers: Mapping[str, str],
        now: datetime,
        query: Mapping[str, str] | None = None,
    ) -> ProviderEvent:
        """Check the signature and that ``|now - t|`` is within the tolerance; parse the event.

        The header name is matched case-insensitively; any ``v1`` entry may match (as when a
        secret is being rotated). A timestamp too far in the past or in the future is refused:
        unlike Stripe's SDK, a zero tolerance means "exactly now", not "no check". Raises
        ``SignatureError`` for anything not signed by this provider (messages never include
        the secret or the signatures), and ``ValidationError`` (field ``payload``) for a
        correctly signed body that is not a well-formed event.
        """
        current = _require_aware(now, field="now")
        header = next(
            (value for key, value in headers.items() if key.lower() == SIGNATURE_HEADER), None
        )
        if header is None:
            raise SignatureError(f"missing the {SIGNATURE_HEADER} header")
        timestamp: int | None = None
        candidates: list[str] = []
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key == "t":
                try:
                    timestamp = int(value)
                except ValueError:
                    raise SignatureError(
                        "the signature header's timestamp is not an integer"
                    ) from None
            elif key == "v1":
                candidates.append(value)
        if timestamp is None or not candidates:
            raise SignatureError("the signature header needs a t= timestamp and a v1= signature")
        expected = self._signature(timestamp, payload).encode()
        if not any(hmac.compare_digest(expected, c.encode()) for c in candidates):
            raise SignatureError("no v1 signature matches the payload")
        try:
            sent_at = datetime.fromtimestamp(timestamp, UTC)
        except (OverflowError, OSError, ValueError):
            raise SignatureError("the signature header's timestamp is out of range") from None
        if abs(current - sent_at) > self._webhook_tolerance:
            raise SignatureError(
                f"the timestamp is more than {self._webhook_tolerance} away from now "
                "(a replayed or delayed delivery, or a skewed clock)"
            )
        return _parse_event(payload)

    # -- internals --------------------------------------------------------------------------

    async def _enter(self, operation: str) -> ProviderError | None:
        """Yield once like a round trip would, then raise an injected fault if one is queued;
        a fault for after the work is handed back for ``_leave``."""
        await anyio.lowlevel.checkpoint()
        faults = self._faults.get(operation)
        if faults:
            error, after = faults.popleft()
            if not after:
                raise error
            return error
        return None

    def _leave(self, lost: ProviderError | None, result: _T) -> _T:
        """The call's work is done (and saved): return its result, or lose it on the way."""
        self._save()
        if lost is not None:
            raise lost
        return result

    _STATE = (
        "_namespace",
        "_counters",
        "_customers",
        "_payment_methods",
        "_cards",
        "_charges",
        "_refunds",
        "_subscriptions",
        "_keys",
    )

    def _save(self) -> None:
        """With a ``ledger`` file, write the whole state after each change (atomically), so
        a process killed right after a call leaves what the provider did behind it."""
        if self._ledger is None:
            return
        state = {name: getattr(self, name) for name in self._STATE}
        partial = self._ledger.with_name(self._ledger.name + ".partial")
        with partial.open("wb") as file:
            pickle.dump(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, self._ledger)

    def _load(self, ledger: Path) -> None:
        with ledger.open("rb") as file:
            state = pickle.load(file)  # the fake's own file: written by _save above
        for name in self._STATE:
            # A ledger written before a field existed keeps that field's fresh value.
            setattr(self, name, state.get(name, getattr(self, name)))

    def _next_id(self, prefix: str) -> str:
        count = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = count
        tag = f"{self._namespace}_" if self._namespace else ""
        return f"{prefix}_fake_{tag}{count:06d}"

    def _key_use(self, operation: str, key: str, params: object) -> _KeyUse | None:
        """Return the key's first use, raising if it was for other parameters or operation."""
        prior = self._keys.get(key)
        if prior is None or key in self._forgotten:
            return None
        if prior.operation != operation:
            raise IdempotencyError(
                f"this idempotency key was first used for {prior.operation}, not {operation}",
                field="idempotency_key",
                rule="same_parameters",
            )
        if prior.params != params:
            raise IdempotencyError(
                f"this idempotency key was first used for a {operation} with other parameters",
                field="idempotency_key",
                rule="same_parameters",
            )
        return prior

    @staticmethod
    def _replayed(prior: _KeyUse, result_type: type[_T]) -> _T:
        result = prior.result
        if not isinstance(result, result_type):  # pragma: no cover - guarded by operation
            raise TypeError(f"stored {type(result).__name__}, expected {result_type.__name__}")
        return result

    def _remember(self, operation: str, key: str, params: object, result: object) -> None:
        self._keys[key] = _KeyUse(operation=operation, params=params, result=result)
        self._forgotten.discard(key)

    def _require_customer(self, provider_customer_id: str) -> None:
        if provider_customer_id not in self._customers:
            raise ProviderError("no such customer", retryable=False, field="provider_customer_id")

    def _require_attached(
        self, provider_payment_method_id: str | None, request: ChargeRequest
    ) -> _TestCard:
        if provider_payment_method_id is None:
            raise ProviderError(
                "is required: the fake provider keeps no default payment method",
                retryable=False,
                field="provider_payment_method_id",
            )
        stored = self._payment_methods.get(provider_payment_method_id)
        if stored is None:
            raise ProviderError(
                "no such payment method", retryable=False, field="provider_payment_method_id"
            )
        if stored.provider_customer_id != request.provider_customer_id:
            raise ProviderError(
                "is not attached to this customer",
                retryable=False,
                field="provider_payment_method_id",
                rule="attached_to_customer",
            )
        return self._cards[provider_payment_method_id]

    def _signature(self, timestamp: int, payload: bytes) -> str:
        signed = f"{timestamp}.".encode() + payload
        return hmac.new(self._webhook_secret, signed, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return (
            f"FakeProvider(customers={len(self._customers)}, charges={len(self._charges)}, "
            f"refunds={len(self._refunds)})"
        )


def _parse_event(payload: bytes) -> ProviderEvent:
    """Read ``{"id", "type", "data", "created"}``; the fake already uses qzpay's names."""
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ValidationError("is not JSON", field="payload") from None
    if not isinstance(body, dict):
        raise ValidationError("must be a JSON object", field="payload")
    event_id, event_type, data = body.get("id"), body.get("type"), body.get("data")
    if not isinstance(event_id, str) or not event_id:
        raise ValidationError('needs a string "id"', field="payload")
    if not isinstance(event_type, str) or not event_type:
        raise ValidationError('needs a string "type"', field="payload")
    if not isinstance(data, dict):
        raise ValidationError('needs an object "data"', field="payload")
    created = body.get("created")
    occurred_at: datetime | None = None
    if created is not None:
        if isinstance(created, bool) or not isinstance(created, int):
            raise ValidationError('"created" must be unix seconds', field="payload")
        try:
            occurred_at = datetime.fromtimestamp(created, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValidationError('"created" is out of range', field="payload") from None
    return ProviderEvent(
        provider="fake",
        provider_event_id=event_id,
        type=event_type,
        provider_type=event_type,
        occurred_at=occurred_at,
        data=data,
    )
