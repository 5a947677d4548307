"""Every charge qzpay makes, intent first (DESIGN §7), and how its outcome is settled.

The one path for money taken from a customer (``payments.process``, a subscription's first
period, the end of a trial; invoices later):

1. ``open_attempt``: a ``pending`` payment row is committed, its provider idempotency key
   derived from its own id (``payment_key``), before the provider hears of it;
2. ``call_provider``: the charge, retried on a retryable error with that same key (so a
   retry can never charge twice, and ``pm_card_processingError`` succeeds on the retry);
3. ``settle``: the outcome written onto the row, and onto what the payment was for (an
   incomplete subscription becomes active, a trial that ended becomes active or past due).

A crash or a lost response between 2 and 3 leaves the row pending: ``reconcile`` (and the job
runner, once the row is ``reconcile_after`` old) asks the provider by the row's key and
settles it; nothing here ever charges an attempt twice. A new attempt (another card, a
dunning retry) is a new row with a new key, so no provider replays an earlier decline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import anyio
import attrs

from qzpay import periods
from qzpay.contracts.filters import one_of
from qzpay.contracts.provider import ChargeRequest, ChargeResult
from qzpay.contracts.storage import StorageTransaction
from qzpay.domain import schedule
from qzpay.domain.customers import CustomerProviderRef
from qzpay.domain.enums import PaymentStatus, SubscriptionStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError, ProviderError
from qzpay.ids import new_id
from qzpay.services import invoicing
from qzpay.services.context import ServiceContext, UnitOfWork, every, require
from qzpay.services.payment_methods import default_method
from qzpay.transitions import ENDED, transition

PROVIDER_ATTEMPTS = 3
"""Tries of one attempt's provider call on a retryable error, all with the attempt's key."""
BACKOFF_SECONDS = (0.05, 0.25)
"""Waits between those tries (short: the caller is waiting; reconciliation does the rest)."""
R = TypeVar("R")
SETTLE_ATTEMPTS = 5
"""How often settling is retried when a concurrent write moved the row's version."""

OPEN = frozenset({PaymentStatus.PENDING, PaymentStatus.PROCESSING, PaymentStatus.REQUIRES_ACTION})
"""Statuses whose outcome may still change at the provider."""
IN_FLIGHT = frozenset({PaymentStatus.PENDING, PaymentStatus.PROCESSING})
"""An attempt the provider has not decided yet: no other attempt on its invoice meanwhile
(``requires_action`` waits for the customer, who may never come: a new attempt may go)."""
PAID = frozenset(
    {PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)
"""Statuses of a payment that took money (refunds do not undo that it was paid)."""

_STATUS: Mapping[str, PaymentStatus] = {
    "succeeded": PaymentStatus.SUCCEEDED,
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    "processing": PaymentStatus.PROCESSING,
    "failed": PaymentStatus.FAILED,
}

AfterSettle = Callable[[UnitOfWork, "Settled"], Awaitable[None]]
"""More work in the settling transaction (an idempotency key completed with the result)."""


PAYMENT_KEY = "qzpay-payment-"


def payment_key(payment_id: UUID) -> str:
    """The provider idempotency key of one payment attempt: derived from the row's id."""
    return f"{PAYMENT_KEY}{payment_id}"


def id_in_key(key: str, prefix: str) -> UUID | None:
    """The row id a key derived with ``prefix`` (``PAYMENT_KEY``) names; ``None`` for any
    other key (one an app or another system chose)."""
    if not key.startswith(prefix):
        return None
    try:
        return UUID(key[len(prefix) :])
    except ValueError:
        return None


async def chargeable_method(
    tx: StorageTransaction, customer_id: UUID, preferred: UUID | None, provider: str
) -> tuple[PaymentMethod, str] | None:
    """The payment method to charge and the customer's id at the provider, if both exist:
    ``preferred`` when it is the customer's, otherwise the customer's default."""
    method = await tx.get(PaymentMethod, preferred) if preferred is not None else None
    if not _owned(method, customer_id):
        method = await default_method(tx, customer_id)
    if method is None or method.provider != provider:
        return None
    ref = await tx.find(CustomerProviderRef, customer_id=customer_id, provider=provider)
    return None if ref is None else (method, ref.provider_customer_id)


async def chargeable_methods(
    tx: StorageTransaction, wanted: Sequence[tuple[UUID, UUID | None]], provider: str
) -> dict[tuple[UUID, UUID | None], tuple[PaymentMethod, str]]:
    """``chargeable_method`` of many ``(customer_id, preferred)`` at once (a renewal
    batch): at most three reads whatever their number (the defaults only of customers
    whose preferred method is not theirs); the pairs with nothing to charge are absent."""
    preferred_ids = sorted({method for _, method in wanted if method is not None})
    found = await every(tx, PaymentMethod, {"id": one_of(preferred_ids)}) if preferred_ids else []
    preferred = {method.id: method for method in found}
    unmet = sorted(
        {
            customer
            for customer, method_id in wanted
            if method_id is None or not _owned(preferred.get(method_id), customer)
        }
    )
    defaults = {
        method.customer_id: method
        for method in (
            await every(tx, PaymentMethod, {"customer_id": one_of(unmet), "is_default": True})
            if unmet
            else ()
        )
    }
    customers = one_of(sorted({customer for customer, _ in wanted}))
    refs = {
        ref.customer_id: ref.provider_customer_id
        for ref in await every(
            tx, CustomerProviderRef, {"customer_id": customers, "provider": provider}
        )
    }
    chargeable: dict[tuple[UUID, UUID | None], tuple[PaymentMethod, str]] = {}
    for customer_id, method_id in wanted:
        method = preferred.get(method_id) if method_id is not None else None
        if not _owned(method, customer_id):
            method = defaults.get(customer_id)
        ref = refs.get(customer_id)
        if method is not None and method.provider == provider and ref is not None:
            chargeable[customer_id, method_id] = (method, ref)
    return chargeable


def _owned(method: PaymentMethod | None, customer_id: UUID) -> bool:
    return method is not None and method.customer_id == customer_id


def pending_payment(
    uow: UnitOfWork,
    context: ServiceContext,
    *,
    customer_id: UUID,
    method: PaymentMethod | None,
    amount: int,
    currency: str,
    subscription_id: UUID | None = None,
    invoice_id: UUID | None = None,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Payment:
    """The row of a new attempt, not yet stored: ``pending``, due for reconciliation at
    ``reconcile_after`` from now, its provider key derived from its id."""
    payment_id = new_id()
    return Payment(
        id=payment_id,
        livemode=uow.scope.livemode,
        tenant_id=uow.scope.tenant_id,
        customer_id=customer_id,
        subscription_id=subscription_id,
        invoice_id=invoice_id,
        payment_method_id=None if method is None else method.id,
        amount=amount,
        currency=currency,
        status=PaymentStatus.PENDING,
        provider=context.provider.name,
        idempotency_key=payment_key(payment_id),
        description=description,
        metadata=metadata or {},
        due_at=uow.now + context.settings.reconcile_after,
        created_at=uow.now,
        updated_at=uow.now,
    )


async def undecided_attempt(tx: StorageTransaction, **owner: UUID) -> Payment | None:
    """The attempt the provider has not decided yet (``IN_FLIGHT``) of ``owner``
    (``subscription_id=`` or ``invoice_id=``), if any: its outcome is asked for
    (reconciled), never charged again."""
    filters: dict[str, object] = {**owner, "status": one_of(IN_FLIGHT)}
    found = await tx.list(Payment, filters=filters, limit=1)
    return found.items[0] if found.items else None


async def open_attempt(uow: UnitOfWork, payment: Payment, *, new_invoice: bool = False) -> None:
    """Store the pending row (committed with ``uow``, before any provider call).

    An invoice has at most one pending attempt (a partial unique key): a second one while
    the first's outcome is unknown is refused, so it cannot charge twice. ``new_invoice``:
    the invoice was finalized in ``uow`` (a renewal), so no other attempt can exist and the
    row waits for the commit with the rest of the batch instead of being sent now.
    """
    if payment.invoice_id is None or new_invoice:
        await uow.tx.insert(payment)
    else:
        await _open_invoice_attempt(uow, payment)
    await uow.record(
        "payment.created",
        payment,
        changes={"amount": payment.amount, "currency": payment.currency},
    )


async def _open_invoice_attempt(uow: UnitOfWork, payment: Payment) -> None:
    # Sent now (not with the commit), so the partial unique key's refusal is this error.
    try:
        await uow.tx.insert(payment)
        await uow.tx.flush()
    except ConflictError:
        raise _in_flight(payment) from None
    # A processing attempt is past the key (it holds pending rows only). Looked for after
    # the insert: one still pending then would have conflicted above, so any attempt that
    # turned processing before this one was stored is seen here.
    filters = {"invoice_id": payment.invoice_id, "status": PaymentStatus.PROCESSING}
    if (await uow.tx.list(Payment, filters=filters, limit=1)).items:
        raise _in_flight(payment)


def _in_flight(payment: Payment) -> InvalidStateError:
    return InvalidStateError(
        f"invoice {payment.invoice_id} already has a payment attempt in flight: "
        "wait for its outcome (payments.reconcile) before trying again",
        field="invoice_id",
        rule="one_attempt_in_flight",
    )


async def call_provider(
    context: ServiceContext,
    payment: Payment,
    method: PaymentMethod,
    provider_customer_id: str,
    *,
    off_session: bool = False,
) -> ChargeResult | None:
    """Ask the provider to charge ``payment``; ``None`` when the outcome is unknown.

    ``off_session``: the job runner charges, with no customer there to authenticate.

    A retryable failure is tried again with the same key, at most ``PROVIDER_ATTEMPTS``
    times; if none answers, the payment stays pending for ``reconcile``. A refusal of the
    request itself is a failed charge (``provider_rejected``): nothing was taken.
    """
    assert payment.idempotency_key is not None
    request = ChargeRequest(
        amount=payment.amount,
        currency=payment.currency,
        provider_customer_id=provider_customer_id,
        provider_payment_method_id=method.provider_id,
        idempotency_key=payment.idempotency_key,
        description=payment.description,
        metadata=dict(payment.metadata),
        off_session=off_session,
    )
    return await with_retries(
        lambda: context.provider.charge(request),
        rejected=lambda error: ChargeResult(
            provider_id="",
            status="failed",
            failure_code="provider_rejected",
            failure_message=str(error)[:500],
        ),
    )


async def with_retries(
    call: Callable[[], Awaitable[R]], *, rejected: Callable[[ProviderError], R]
) -> R | None:
    """``call`` the provider with one attempt's request, again on a retryable error (the
    same request, so the same key), at most ``PROVIDER_ATTEMPTS`` times with a short
    backoff; a refusal of the request is ``rejected(error)``; ``None`` when no try answered
    (the outcome is unknown: reconciliation settles it)."""
    for attempt in range(PROVIDER_ATTEMPTS):
        try:
            return await call()
        except ProviderError as error:
            if not error.retryable:
                return rejected(error)
            if attempt + 1 < PROVIDER_ATTEMPTS:
                await anyio.sleep(BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)])
    return None


async def retrieve(context: ServiceContext, payment: Payment) -> ChargeResult | None:
    """The payment's charge as the provider has it now, by its key or provider id; ``None``
    when the provider never saw it (or it is not a charge this provider made)."""
    if payment.provider != context.provider.name:
        return None
    if payment.idempotency_key is None and payment.provider_id is None:
        return None
    return await context.provider.retrieve_charge(
        idempotency_key=payment.idempotency_key or "", provider_id=payment.provider_id
    )


async def resume(
    context: ServiceContext, payment_id: UUID, *, then: AfterSettle | None = None
) -> Payment:
    """Finish an attempt whose first call never did (a keyed retry of the same call).

    The provider is asked about it first; where it never heard of it, the same request is
    sent again with the same key (the provider answers one key once), so the attempt is
    finished, never doubled. A settled attempt is returned as it is.
    """
    async with context.unit_of_work(readonly=True) as uow:
        payment: Payment = await require(uow.tx, Payment, payment_id, field="payment_id")
        payable = await _method_of(uow.tx, payment)
    result = None
    if payment.status in OPEN:
        result = await retrieve(context, payment)
        if result is None and payment.status == PaymentStatus.PENDING and payable is not None:
            result = await call_provider(context, payment, *payable)
    return await settle(context, payment.id, result, then=then)


async def _method_of(tx: StorageTransaction, payment: Payment) -> tuple[PaymentMethod, str] | None:
    """The method and provider customer an attempt was made with, to send it again."""
    if payment.payment_method_id is None:
        return None
    method = await tx.get(PaymentMethod, payment.payment_method_id, include_deleted=True)
    if method is None:
        return None
    ref = await tx.find(
        CustomerProviderRef, customer_id=payment.customer_id, provider=method.provider
    )
    return None if ref is None else (method, ref.provider_customer_id)


def _next_action(result: ChargeResult) -> dict[str, str] | None:
    if result.status != "requires_action":
        return None
    action: dict[str, str] = {}
    if result.next_action_url is not None:
        action["type"] = "redirect_to_url"
        action["url"] = result.next_action_url
    if result.client_secret is not None:
        action.setdefault("type", "use_client_secret")
        action["client_secret"] = result.client_secret
    return action or {"type": "unknown"}


def outcome(
    payment: Payment, result: ChargeResult, now: datetime, context: ServiceContext
) -> Payment:
    """``payment`` as ``result`` says it now is (a pure step: nothing is written)."""
    status = _STATUS[result.status]
    return attrs.evolve(
        payment,
        status=status,
        provider_id=result.provider_id or payment.provider_id,
        failure_code=result.failure_code if status == PaymentStatus.FAILED else None,
        failure_message=result.failure_message if status == PaymentStatus.FAILED else None,
        provider_failure_code=(
            result.provider_failure_code if status == PaymentStatus.FAILED else None
        ),
        next_action=_next_action(result),
        # Still open at the provider (processing): ask again later. Otherwise settled, or
        # waiting for the customer (requires_action: payments.confirm settles it).
        due_at=now + context.settings.reconcile_after
        if status == PaymentStatus.PROCESSING
        else None,
        updated_at=now,
    )


@attrs.frozen
class Settled:
    """A settled attempt: the payment, and its subscription as the outcome left it (when
    the outcome moved one)."""

    payment: Payment
    subscription: Subscription | None = None


async def settle(
    context: ServiceContext,
    payment_id: UUID,
    result: ChargeResult | None,
    *,
    then: AfterSettle | None = None,
    known: Payment | None = None,
    subscription: Subscription | None = None,
) -> Payment:
    """Write the provider's answer onto the payment, and onto what it paid for.

    ``result`` ``None`` (the outcome is unknown) leaves the payment pending, as it is. A
    payment already settled (by ``reconcile``, a webhook, a concurrent settle) is returned
    as it is: the first settlement wins, and the provider said the same to both. Retried on
    a concurrent edit of the rows. ``then`` runs in the same transaction.
    """
    settled = await settle_attempt(
        context, payment_id, result, then=then, known=known, subscription=subscription
    )
    return settled.payment


async def settle_attempt(
    context: ServiceContext,
    payment_id: UUID,
    result: ChargeResult | None,
    *,
    then: AfterSettle | None = None,
    known: Payment | None = None,
    subscription: Subscription | None = None,
) -> Settled:
    """``settle``, also saying what became of the subscription.

    ``known`` and ``subscription`` are the rows as the caller last wrote them (a call that
    just committed the pending attempt): the first try writes against their versions
    without reading them again, and a try that finds them stale reads them afresh.
    """
    for _ in range(SETTLE_ATTEMPTS):
        try:
            async with context.unit_of_work() as uow:
                current: Payment = known or await require(
                    uow.tx, Payment, payment_id, field="payment_id"
                )
                if result is None or current.status not in OPEN:
                    settled = Settled(current)
                else:
                    settled = await write_outcome(uow, context, current, result, subscription)
                if then is not None:
                    await then(uow, settled)
            return settled
        except ConflictError:
            known = subscription = None  # stale: read both again
            continue
    raise ConflictError(
        f"payment {payment_id} kept changing while its outcome was written; "
        "payments.reconcile writes it again",
        field="payment_id",
        rule="concurrent_update",
    )


async def write_outcome(
    uow: UnitOfWork,
    context: ServiceContext,
    current: Payment,
    result: ChargeResult,
    subscription: Subscription | None,
    invoice: Invoice | None = None,
) -> Settled:
    """The provider's answer written onto an open attempt, its invoice and its subscription
    in ``uow`` (``subscription`` and ``invoice``: the rows as last written, not read
    again; ``None``: read)."""
    wanted = outcome(current, result, uow.now, context)
    if wanted.status == current.status and wanted.next_action == current.next_action:
        if wanted.due_at == current.due_at:
            return Settled(current)
        moved = await uow.tx.update(attrs.evolve(current, due_at=wanted.due_at, updated_at=uow.now))
        return Settled(moved)
    settled = await uow.tx.update(wanted)
    changes: dict[str, Any] = {"status": [current.status.value, settled.status.value]}
    if settled.failure_code is not None:
        changes["failure_code"] = settled.failure_code
    await uow.record(f"payment.{settled.status.value}", settled, changes=changes)
    if settled.invoice_id is not None:
        await invoicing.apply_payment(uow, settled, known=invoice)
    if settled.subscription_id is None:
        return Settled(settled)
    return Settled(settled, await _apply_to_subscription(uow, context, settled, subscription))


async def _apply_to_subscription(
    uow: UnitOfWork, context: ServiceContext, payment: Payment, known: Subscription | None
) -> Subscription | None:
    """What a settled payment means for its subscription (Stripe's rules).

    - ``incomplete`` becomes ``active`` when its first payment succeeds (a failed one leaves
      it incomplete: the app may retry with another card, until it expires);
    - a ``trialing`` subscription whose end-of-trial charge settles starts its first paid
      period: ``active`` if paid, else ``past_due``;
    - an invoice's payment (a renewal, a dunning retry): failing moves an active
      subscription to ``past_due`` and starts dunning, or counts one more retry, and the
      last retry's failure ends it as the dunning policy says (``canceled`` or ``unpaid``);
      succeeding brings a past-due or unpaid one back to ``active``;
    - ``processing`` (the provider decides later) moves nothing: it has neither paid nor
      failed, and the attempt holds its invoice until it does. ``requires_action`` off
      session, with nobody there to authenticate, counts as not paid.
    Whatever the path that settled it (the call itself, reconciliation, a webhook), the
    outcome is applied here, once, and ``due_at`` follows ``qzpay.domain.schedule``.
    """
    assert payment.subscription_id is not None
    subscription = (
        known
        if known is not None and known.id == payment.subscription_id
        else await uow.tx.get(Subscription, payment.subscription_id)
    )
    if subscription is None or payment.status == PaymentStatus.PROCESSING:
        return subscription
    paid = payment.status == PaymentStatus.SUCCEEDED
    status = subscription.status
    if status == SubscriptionStatus.INCOMPLETE:
        if not paid:
            return subscription
        return await move(uow, context, subscription, SubscriptionStatus.ACTIVE, "activated")
    if status == SubscriptionStatus.TRIALING and (
        subscription.trial_end is not None and payment.created_at >= subscription.trial_end
    ):
        target = SubscriptionStatus.ACTIVE if paid else SubscriptionStatus.PAST_DUE
        start, end = periods.period_bounds(
            subscription.billing_anchor, subscription.interval, subscription.interval_count, 0
        )
        return await move(
            uow,
            context,
            subscription,
            target,
            "trial_ended",
            current_period_start=start,
            current_period_end=end,
            **_dunning_start(uow, paid),
        )
    if payment.invoice_id is None:
        return subscription
    if paid and status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.UNPAID):
        return await move(
            uow,
            context,
            subscription,
            SubscriptionStatus.ACTIVE,
            "recovered",
            past_due_at=None,
            dunning_attempts=0,
        )
    if paid:
        return subscription
    if status == SubscriptionStatus.ACTIVE:
        return await move(
            uow, context, subscription, SubscriptionStatus.PAST_DUE, "past_due",
            **_dunning_start(uow, paid=False),
        )  # fmt: skip
    if status == SubscriptionStatus.PAST_DUE:
        return await count_failed_retry(uow, context, subscription)
    return subscription


async def count_failed_retry(
    uow: UnitOfWork, context: ServiceContext, subscription: Subscription
) -> Subscription:
    """One more dunning retry failed: due for the next, or ended as the policy says when it
    was the last (``canceled``, or ``unpaid``)."""
    retries = context.settings.dunning.retry_after
    attempts = subscription.dunning_attempts + 1
    if attempts < len(retries):
        retried = attrs.evolve(subscription, dunning_attempts=attempts, updated_at=uow.now)
        return await uow.tx.update(schedule.scheduled(retried, context.settings))
    final = SubscriptionStatus(context.settings.dunning.then)
    ended = (
        {"canceled_at": uow.now, "ended_at": uow.now}
        if final == SubscriptionStatus.CANCELED
        else {}
    )
    return await move(
        uow, context, subscription, final, "dunning_exhausted",
        dunning_attempts=attempts, **ended,
    )  # fmt: skip


def _dunning_start(uow: UnitOfWork, paid: bool) -> dict[str, Any]:
    """The fields a failed period charge sets: dunning counts from now."""
    return {} if paid else {"past_due_at": uow.now, "dunning_attempts": 0}


async def move(
    uow: UnitOfWork,
    context: ServiceContext,
    subscription: Subscription,
    target: SubscriptionStatus,
    event: str,
    **changes: Any,
) -> Subscription:
    """One status change of a subscription, through the transition table, audited, with
    ``due_at`` recomputed for where it now is."""
    moved = attrs.evolve(
        subscription,
        status=transition(subscription.status, target),
        updated_at=uow.now,
        **changes,
    )
    updated = await uow.tx.update(schedule.scheduled(moved, context.settings))
    await uow.record(
        f"subscription.{event}",
        updated,
        changes={"status": [subscription.status.value, target.value]},
    )
    if target in ENDED:
        await invoicing.drop_upcoming(uow, updated)
    return updated
