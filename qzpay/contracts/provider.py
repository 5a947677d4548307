"""The PaymentProvider port and the provider-neutral values it exchanges.

A provider adapter (Stripe, MercadoPago, the fake) turns these calls into its own API. Money
crosses the port as int minor units with an upper-case ISO 4217 code. Every call that can
move money takes qzpay's own idempotency key, which the adapter must pass through to the
provider, so an application-level retry never charges twice.

Failures: a refusal that is the customer's (a decline) comes back as a result with
``status == "failed"``, a provider-neutral ``failure_code`` (one of ``FAILURE_CODES``) and
the provider's own code in ``provider_failure_code``; a failure of the provider or the
network raises ``qzpay.errors.ProviderError`` with ``retryable`` set honestly. A call whose
outcome the adapter cannot know (a timeout after the request was sent) raises a retryable
``ProviderError``: qzpay then asks ``retrieve_charge`` / ``retrieve_refund`` by its own
key, never charges again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from qzpay.errors import ValidationError


@attrs.frozen(kw_only=True)
class ProviderCapabilities:
    """What a provider can do beyond charges and refunds; services check before calling."""

    payment_methods: bool = True
    refunds: bool = True
    three_d_secure: bool = False
    subscriptions: bool = False
    checkout: bool = False
    webhooks: bool = False


@attrs.frozen(kw_only=True)
class ProviderCustomer:
    provider_id: str


@attrs.frozen(kw_only=True)
class ProviderPaymentMethod:
    """A payment method as the provider stores it; never holds a full card number."""

    provider_id: str
    type: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


ChargeStatus = Literal["succeeded", "requires_action", "processing", "failed"]

FAILURE_CODES = frozenset(
    {
        "card_declined",
        "insufficient_funds",
        "expired_card",
        "incorrect_cvc",
        "incorrect_number",
        "card_not_supported",
        "currency_not_supported",
        "fraud_suspected",
        "authentication_failed",
        "processing_error",
        "provider_rejected",
        "abandoned",
    }
)
"""The provider-neutral failure codes a failed charge carries (``ChargeResult.failure_code``).

Adapters map their provider's codes onto these (a code they cannot map is
``card_declined``) and keep the original in ``provider_failure_code``. ``provider_rejected``
means the provider refused the request itself (nothing was charged); ``abandoned``, that the
provider never saw the charge and qzpay gave the attempt up (``payments.reconcile``).
"""


@attrs.frozen(kw_only=True)
class ChargeRequest:
    amount: int
    currency: str
    provider_customer_id: str
    provider_payment_method_id: str | None
    idempotency_key: str
    description: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    off_session: bool = False
    """The customer is not there to authenticate (a renewal, a dunning retry): providers
    that tell the two apart (Stripe's ``off_session``) are told so."""


@attrs.frozen(kw_only=True)
class ChargeResult:
    """The outcome of a charge, or its state now when retrieved.

    While ``requires_action`` (3-D Secure), ``next_action_url`` is where to send the
    customer and/or ``client_secret`` what a client library needs to finish it.
    """

    provider_id: str
    status: ChargeStatus
    failure_code: str | None = None
    failure_message: str | None = None
    provider_failure_code: str | None = None
    next_action_url: str | None = None
    client_secret: str | None = None
    idempotency_key: str | None = None
    """The key the charge was made with, where a retrieved charge says it (Stripe's
    ``metadata.qzpay_key``, MercadoPago's ``external_reference``): a webhook that names a
    charge only by the provider's id is matched to the payment whose answer was lost."""


RefundStatusLiteral = Literal["succeeded", "pending", "failed"]


@attrs.frozen(kw_only=True)
class RefundRequest:
    provider_payment_id: str
    amount: int
    currency: str
    idempotency_key: str
    reason: str | None = None


@attrs.frozen(kw_only=True)
class RefundResult:
    """A refund's outcome, or its state now when retrieved or listed.

    ``amount`` (minor units) and ``idempotency_key`` (the key it was made with) are filled
    in where the provider says them; listing a payment's refunds fills ``amount`` always.
    """

    provider_id: str
    status: RefundStatusLiteral
    failure_code: str | None = None
    amount: int | None = None
    idempotency_key: str | None = None


@attrs.frozen(kw_only=True)
class ProviderSubscriptionRequest:
    """A subscription the provider bills itself (provider-managed mode): one item of the
    provider's own price, with a trial until ``trial_end`` where given."""

    provider_customer_id: str
    provider_price_id: str
    quantity: int
    idempotency_key: str
    trial_end: datetime | None = None
    provider_payment_method_id: str | None = None
    """The card the provider should bill (the subscription's or the customer's default in
    qzpay), where qzpay has one; else the provider's own default for the customer."""


SUBSCRIPTION_STATUSES = frozenset(
    {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "paused",
        "canceled",
        "unpaid",
    }
)
"""The neutral statuses a ``ProviderSubscription`` carries (Stripe Billing's vocabulary,
the same as qzpay's own subscriptions). Adapters map their provider's onto these:
MercadoPago's ``pending`` is ``incomplete``, ``authorized`` is ``active`` (``trialing``
before its first charge), ``cancelled`` is ``canceled``."""


@attrs.frozen(kw_only=True)
class ProviderSubscription:
    """A provider-managed subscription as the provider has it now.

    qzpay mirrors these fields onto its own row; a field the provider does not say is
    ``None`` and leaves qzpay's value as it is. Times are timezone-aware UTC.
    """

    provider_id: str
    status: str
    """One of ``SUBSCRIPTION_STATUSES``."""
    provider_status: str = ""
    """The provider's own word for it (``authorized``, ``past_due``...)."""
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    idempotency_key: str | None = None
    """The key it was created with, where the provider echoes it (Stripe's
    ``metadata.qzpay_key``, MercadoPago's ``external_reference``)."""
    next_action_url: str | None = None
    """While ``incomplete``: where the customer goes to authorize it (MercadoPago's
    ``init_point`` for a pending preapproval)."""


def require_lookup(provider_id: str | None, idempotency_key: str | None) -> str:
    """The key ``retrieve_subscription`` looks up when it has no ``provider_id``; neither
    given is a bug in the caller.

    >>> require_lookup(None, "qzpay-subscription-1")
    'qzpay-subscription-1'
    >>> require_lookup(None, None)
    Traceback (most recent call last):
    ...
    qzpay.errors.ValidationError: provider_id: give the provider's id or the idempotency_key
    """
    if not idempotency_key:
        raise ValidationError(
            "give the provider's id or the idempotency_key",
            field="provider_id",
            rule="lookup",
        )
    return idempotency_key


@attrs.frozen(kw_only=True)
class CheckoutRequest:
    amount: int
    currency: str
    success_url: str
    cancel_url: str
    idempotency_key: str
    provider_customer_id: str | None = None


@attrs.frozen(kw_only=True)
class ProviderCheckout:
    provider_id: str
    url: str


WEBHOOK_KINDS = ("payment", "refund", "subscription", "checkout")
"""What a neutral webhook ``type`` starts with, and what qzpay does with it.

- ``payment.<what>`` (``payment.succeeded``, ``payment.failed``, ``payment.updated``...): a
  charge changed at the provider. ``data`` has ``provider_payment_id`` and, where the
  provider echoes it, ``idempotency_key`` (qzpay's key, sent as metadata). qzpay asks the
  provider for the charge as it stands now (``retrieve_charge``) and settles the payment
  as ``reconcile`` would: a late or repeated event can never move it backwards.
- ``refund.<what>``: ``data`` has ``provider_refund_id``, and ``provider_payment_id`` and
  ``idempotency_key`` where known; settled from ``retrieve_refund`` the same way.
- ``subscription.<what>``: a provider-managed subscription changed; ``data`` has
  ``provider_subscription_id`` and, where the provider echoes it, ``idempotency_key``.
  qzpay asks ``retrieve_subscription`` and mirrors what it answers (``subscriptions.sync``).
- ``checkout.<what>``: ``data`` has ``provider_checkout_id``.

Any other type is stored and acknowledged, and nothing is applied. ``ProviderEvent.
provider_type`` keeps the provider's own name (``payment_intent.succeeded``).
"""


@attrs.frozen(kw_only=True)
class ProviderEvent:
    """A verified webhook, mapped to a provider-neutral ``type`` (``WEBHOOK_KINDS``).

    ``occurred_at`` is when the provider says the change happened (ordering evidence);
    ``data`` holds the neutral keys ``WEBHOOK_KINDS`` names (strings), never the raw body,
    which qzpay stores as received.
    """

    provider: str
    provider_event_id: str
    type: str
    provider_type: str
    occurred_at: datetime | None
    data: Mapping[str, Any]


@runtime_checkable
class PaymentProvider(Protocol):
    """The narrow port qzpay charges through.

    ``name`` is what lands in the ``provider`` column of payments, payment methods and
    customer provider references: a third-party provider needs no schema change.
    Methods a provider cannot serve (see ``capabilities``) raise
    ``ConfigurationError``.
    """

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> ProviderCapabilities: ...

    async def create_customer(
        self, *, email: str, name: str | None, idempotency_key: str
    ) -> ProviderCustomer: ...

    async def attach_payment_method(
        self, *, provider_customer_id: str, token: str
    ) -> ProviderPaymentMethod: ...

    async def detach_payment_method(self, *, provider_payment_method_id: str) -> None: ...

    async def charge(self, request: ChargeRequest) -> ChargeResult: ...

    async def retrieve_charge(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> ChargeResult | None:
        """The charge made with qzpay's ``idempotency_key`` (or, when known, the provider's
        ``provider_id``) as it stands now; ``None`` when the provider has no such charge.

        Reconciliation asks this after a crash or a lost response; it never charges.
        """
        ...

    async def refund(self, request: RefundRequest) -> RefundResult: ...

    async def retrieve_refund(
        self, *, idempotency_key: str, provider_id: str | None = None
    ) -> RefundResult | None:
        """The refund made with ``idempotency_key`` (or ``provider_id``) as it stands now;
        ``None`` when the provider has none."""
        ...

    async def list_refunds(
        self, *, provider_payment_id: str, currency: str
    ) -> Sequence[RefundResult]:
        """Every refund of the charge ``provider_payment_id`` (in ``currency``, the charge's),
        oldest first, each with its ``amount`` and, where the provider echoes it, the
        ``idempotency_key`` it was made with; empty when the charge has none or is unknown.

        Reconciliation asks this for a refund whose answer was lost before qzpay learned
        its id: the provider's refunds of that one payment are few, and one of them is it.
        """
        ...

    async def create_subscription(
        self, request: ProviderSubscriptionRequest
    ) -> ProviderSubscription:
        """Create it, or with the same ``idempotency_key`` answer the one made before
        (qzpay re-sends the same request after a crash or a lost answer)."""
        ...

    async def retrieve_subscription(
        self, *, provider_id: str | None = None, idempotency_key: str | None = None
    ) -> ProviderSubscription | None:
        """The provider-managed subscription as it stands now, by the provider's
        ``provider_id``, or else by qzpay's ``idempotency_key`` it was created with; ``None``
        when the provider has none. Webhooks and ``subscriptions.sync`` mirror from this.

        By key is how qzpay finds a subscription whose creation answer was lost before it
        sends the creation again: a provider forgets its keys (Stripe after 24 hours), and
        a re-sent creation it no longer recognizes would make a second subscription. A
        provider that cannot look one up by key answers ``None`` (qzpay then re-sends under
        the same key). One of the two must be given.
        """
        ...

    async def cancel_subscription(
        self, *, provider_id: str, at_period_end: bool, idempotency_key: str
    ) -> ProviderSubscription:
        """Cancel now (``at_period_end=False``) or at the end of the current period. A
        provider that cannot cancel at period end raises a non-retryable ``ProviderError``
        with ``rule="cancel_at_period_end"``. Cancelling a canceled one answers it as it is."""
        ...

    async def create_checkout(self, request: CheckoutRequest) -> ProviderCheckout: ...

    def verify_webhook(
        self,
        *,
        payload: bytes,
        headers: Mapping[str, str],
        now: datetime,
        query: Mapping[str, str] | None = None,
    ) -> ProviderEvent:
        """Check the signature (and its timestamp against ``now``) and parse the event.

        ``headers`` are matched case-insensitively; ``query`` holds the notification URL's
        query parameters (MercadoPago signs the ``data.id`` it puts there). Raises
        ``SignatureError`` when the payload was not sent by the provider, and
        ``ValidationError`` (field ``payload``) for a signed body that is not an event.
        """
        ...
