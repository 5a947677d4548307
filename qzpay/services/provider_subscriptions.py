"""Provider-managed subscriptions: the provider bills them, qzpay keeps a mirror.

``subscriptions.create(..., managed_by="provider")`` sells a price the provider also has
(``prices.create(..., provider_price_id=...)``) as a subscription the provider renews,
retries and dunns itself (Stripe Billing, a MercadoPago preapproval). Intent first, as a
payment: the row is committed ``incomplete`` with ``provider`` set before the provider is
asked, under a key derived from the row's id (``SUBSCRIPTION_KEY``), so a crash or a lost
answer is finished by asking again with the same key (the provider answers the one it
made), never by making a second one. From then on the row follows the provider
(``qzpay.domain.provider_mirror``): each ``subscription.*`` webhook, and
``subscriptions.sync``, asks the provider for it as it stands and writes that. qzpay never
renews it (it is due only while its creation has no answer: the job runner then asks
again) and refuses the lifecycle moves the provider owns; a cancel is forwarded to the
provider and mirrored back.
"""

from __future__ import annotations

from uuid import UUID

import attrs

from qzpay import validation as check
from qzpay.contracts.provider import ProviderSubscription, ProviderSubscriptionRequest
from qzpay.domain import provider_mirror
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.enums import SubscriptionStatus
from qzpay.domain.payments import PaymentMethod
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError, ProviderError, ValidationError
from qzpay.services import idempotency
from qzpay.services.context import ServiceContext, UnitOfWork, require
from qzpay.services.payment_methods import provider_customer_id
from qzpay.transitions import transition

SUBSCRIPTION_KEY = "qzpay-subscription-"
"""What the provider key of a provider-managed subscription's creation starts with; the
row's id follows, so a webhook echoing the key names the row (``charging.id_in_key``)."""

_MIRROR_TRIES = 3
"""Mirror writes retried on a concurrent write (two webhooks at once): each re-reads."""


def subscription_key(subscription_id: UUID) -> str:
    """The provider idempotency key of one subscription's creation."""
    return f"{SUBSCRIPTION_KEY}{subscription_id}"


class ManagedByProvider(InvalidStateError):
    """A lifecycle move qzpay makes itself, asked of a subscription the provider manages.

    ``subscription`` is the row as read, so a caller that can forward the move (``cancel``)
    does so instead."""

    def __init__(self, subscription: Subscription) -> None:
        super().__init__(
            f"is managed by the {subscription.provider!r} provider, which bills it: change it "
            "there (qzpay mirrors its webhooks); qzpay itself can only cancel it or sync it",
            field="subscription_id",
            rule="managed_by_provider",
        )
        self.subscription = subscription


def refuse_if_managed(subscription: Subscription) -> None:
    """Raise ``ManagedByProvider`` for a provider-managed subscription."""
    if subscription.provider is not None:
        raise ManagedByProvider(subscription)


def provider_price_id(context: ServiceContext, price: Price) -> str:
    """The provider's id for ``price``; a price the provider does not have cannot be sold
    as a provider-managed subscription."""
    if price.provider != context.provider.name or price.provider_id is None:
        raise ValidationError(
            f"has no price at the {context.provider.name!r} provider: create one with "
            "prices.create(..., provider_price_id=...) to sell it as a provider-managed "
            "subscription",
            field="price_id",
            rule="provider_price",
        )
    return price.provider_id


async def start(
    context: ServiceContext,
    subscription: Subscription,
    customer: Customer,
    price: Price,
    keyed: idempotency.Keyed | None,
    *,
    resent: bool = False,
) -> Subscription:
    """Ask the provider to create the committed ``incomplete`` row's subscription (again,
    after a crash or a lost answer: the same key), and mirror its answer.

    A creation sent again (``resent``) is first looked up by its key: the provider may have
    made it and forgotten the key since (Stripe keeps keys 24 hours), and the same request
    would then make a second subscription, billed beside the first.

    A refusal (``retryable=False``: an unknown price, a customer without a card where the
    provider needs one) leaves the row ``incomplete_expired`` and the key answered with
    it; a failure that may pass leaves it ``incomplete`` for a retry with the same
    ``idempotency_key`` or ``subscriptions.sync``. The request is made from the row alone
    (its card is its ``default_payment_method_id``), so asking again is the same request.
    """
    if resent:
        made = await _made_before(context, subscription)
        if made is not None:
            return await mirror(context, subscription.id, made, keyed=keyed)
    provider_payment_method_id = None
    if subscription.default_payment_method_id is not None:
        async with context.unit_of_work(readonly=True) as uow:
            # Detached since, it is still the card the first request named.
            method = await uow.tx.get(
                PaymentMethod, subscription.default_payment_method_id, include_deleted=True
            )
        if method is not None and method.provider == context.provider.name:
            provider_payment_method_id = method.provider_id
    request = ProviderSubscriptionRequest(
        provider_customer_id=await provider_customer_id(context, customer),
        provider_price_id=provider_price_id(context, price),
        quantity=subscription.quantity,
        idempotency_key=subscription_key(subscription.id),
        trial_end=subscription.trial_end,
        provider_payment_method_id=provider_payment_method_id,
    )
    try:
        found = await context.provider.create_subscription(request)
    except ProviderError as error:
        if error.retryable:
            raise
        async with context.unit_of_work() as uow:
            current: Subscription = await require(
                uow.tx, Subscription, subscription.id, field="subscription_id"
            )
            expired = await _store(
                uow,
                current,
                attrs.evolve(
                    current,
                    status=SubscriptionStatus.INCOMPLETE_EXPIRED,
                    ended_at=uow.now,
                    due_at=None,
                ),
            )
            await idempotency.complete(uow, keyed, expired)
        raise
    return await mirror(context, subscription.id, found, keyed=keyed)


async def _made_before(
    context: ServiceContext, subscription: Subscription
) -> ProviderSubscription | None:
    """The provider's subscription made with the row's key, if it has one. A provider that
    refuses the lookup (a search it does not offer) is answered by the creation itself,
    under the same key, as before; a lookup that may pass later raises, the row stays
    ``incomplete``."""
    try:
        return await context.provider.retrieve_subscription(
            idempotency_key=subscription_key(subscription.id)
        )
    except ProviderError as error:
        if error.retryable:
            raise
        return None


async def sync(
    context: ServiceContext, subscription_id: UUID, *, provider_id: str | None = None
) -> Subscription:
    """Mirror a provider-managed subscription from what the provider says now.

    ``provider_id`` is the provider's id when a webhook names it: a row whose creation
    never got an answer learns it from there. Without it, such a row's creation is asked
    for again with the same key (the provider answers the one it made)."""
    async with context.unit_of_work(readonly=True) as uow:
        current: Subscription = await require(
            uow.tx, Subscription, subscription_id, field="subscription_id"
        )
        if current.provider is None:
            raise InvalidStateError(
                "is billed by qzpay, not by a provider: there is nothing to sync",
                field="subscription_id",
                rule="provider_managed",
            )
        _same_provider(context, current)
        provider_id = current.provider_id or provider_id
        unanswered = provider_id is None
        if unanswered and current.status in provider_mirror.ENDED:
            return current  # its creation was refused: there is nothing at the provider
        if unanswered:
            customer: Customer = await require(
                uow.tx, Customer, current.customer_id, field="customer_id"
            )
            price: Price = await require(uow.tx, Price, current.price_id, field="price_id")
    if unanswered:
        return await start(context, current, customer, price, None, resent=True)
    assert provider_id is not None
    found = await context.provider.retrieve_subscription(provider_id=provider_id)
    if found is None or (current.provider_id is None and not _made_by(found, current)):
        return current  # the provider lost it (or another account): keep what was last seen
    return await mirror(context, current.id, found)


async def cancel(
    context: ServiceContext,
    subscription: Subscription,
    *,
    at_period_end: bool,
    keyed: idempotency.Keyed | None,
) -> Subscription:
    """Forward a cancel to the provider (keyed by the row's version, so a retry of this
    very cancel is the same request), then mirror its answer."""
    _same_provider(context, subscription)
    transition(subscription.status, SubscriptionStatus.CANCELED)  # it must be able to end
    if subscription.provider_id is None:
        raise InvalidStateError(
            "has no answer from the provider yet: subscriptions.sync it first",
            field="subscription_id",
            rule="provider_answered",
        )
    when = "at_period_end" if at_period_end else "now"
    found = await context.provider.cancel_subscription(
        provider_id=subscription.provider_id,
        at_period_end=at_period_end,
        idempotency_key=(
            f"{subscription_key(subscription.id)}-cancel-{when}-v{subscription.version}"
        ),
    )
    return await mirror(context, subscription.id, found, keyed=keyed)


async def mirror(
    context: ServiceContext,
    subscription_id: UUID,
    found: ProviderSubscription | None,
    *,
    keyed: idempotency.Keyed | None = None,
) -> Subscription:
    """Write ``found`` onto the row (re-read each try: a concurrent mirror wins and this
    one writes on top); a keyed call's key is answered with the result in the same
    transaction. Nothing changed (or ``found`` is ``None``: a keyed create whose row a
    webhook already mirrored), nothing written but the key's answer."""
    for attempt in range(_MIRROR_TRIES):
        try:
            async with context.unit_of_work() as uow:
                claim = await idempotency.claim(uow, keyed, Subscription)
                if claim.replay is not None:
                    return claim.replay
                current: Subscription = await require(
                    uow.tx, Subscription, subscription_id, field="subscription_id"
                )
                result = (
                    current
                    if found is None
                    else await _store(
                        uow, current, provider_mirror.mirrored(current, found, uow.now)
                    )
                )
                await idempotency.complete(uow, keyed, result)
            return result
        except ConflictError:
            if attempt == _MIRROR_TRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _store(uow: UnitOfWork, current: Subscription, wanted: Subscription) -> Subscription:
    if wanted == current:
        return current
    updated = await uow.tx.update(attrs.evolve(wanted, updated_at=uow.now))
    names = [f.name for f in attrs.fields(Subscription) if f.name not in ("updated_at", "version")]
    await uow.record(
        provider_mirror.event_for(current, updated),
        updated,
        changes=check.audit_changes(current, updated, names),
    )
    return updated


def _made_by(found: ProviderSubscription, subscription: Subscription) -> bool:
    """Whether the provider's subscription is the one qzpay asked for on this row (its
    key echoed back); one that says no key is taken on the webhook's word, which found
    the row by that key."""
    return found.idempotency_key in (None, subscription_key(subscription.id))


def _same_provider(context: ServiceContext, subscription: Subscription) -> None:
    if subscription.provider != context.provider.name:
        raise InvalidStateError(
            f"is managed by the {subscription.provider!r} provider, and this billing "
            f"charges through {context.provider.name!r}",
            field="subscription_id",
            rule="same_provider",
        )
