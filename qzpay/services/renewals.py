"""Renewals and dunning retries: a subscription whose period ended is invoiced for the next
one and charged, intent first; a past-due one's open invoice is charged again on the
dunning schedule.

Renewals go in rounds (``renew_round``), one period of every subscription of a claimed
batch at a time, in two transactions around the provider calls:

1. **Open.** One transaction reads what the batch needs (its drafts and open invoices,
   cards, provider customers, promo codes: a few reads, whatever the batch's size), takes
   an invoice number per renewal, and writes, per subscription, the period's invoice
   finalized (its draft, with any pending proration lines, plus the period's line at the
   subscription's price and quantity), its ``pending`` payment, and the subscription moved
   into its next period: each row written once, so each table is one multi-row statement.
2. **Charge.** The provider is called for each pending payment, ``concurrency`` at once,
   each with its own key (``charging.call_provider``).
3. **Settle.** One transaction writes every answer (``charging.write_outcome``): payment,
   invoice paid or its failure, the subscription moved by what the charge came to (a
   failure makes it ``past_due`` and starts dunning). If a concurrent edit makes the batch
   stale, each payment is settled on its own, reading its rows afresh.

A run killed between 1 and 3 leaves pending payments of open invoices: their outcome is
reconciled (``charging``), never charged again, and the period is never renewed twice. A
subscription that already has an open invoice (an earlier run renewed it and died before
the charge) gets that invoice charged instead of a new one. The job runner does a round
again for the subscriptions still behind (``CATCH_UP``), and a round that fails as a whole
item by item, so one bad subscription fails alone (``qzpay.services.jobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal
from uuid import UUID

import attrs

from qzpay.contracts.filters import one_of
from qzpay.contracts.provider import ChargeResult
from qzpay.domain import schedule
from qzpay.domain.enums import InvoiceStatus, PaymentStatus, SubscriptionStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.promotions import PromoCode
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError
from qzpay.money import format_amount
from qzpay.services import charging, invoicing
from qzpay.services.context import ServiceContext, UnitOfWork, every
from qzpay.services.side_by_side import at_most

Charged = Literal["charged", "failed", "skipped", "nothing", "waiting"]
"""What charging an invoice came to: paid, declined, skipped (another runner did the work),
nothing charged (no open invoice, or no card to charge it to), or waiting (an attempt the
provider has not decided, pending or processing, holds the invoice until it settles)."""
ATTEMPTS = 3
"""How often a round's first transaction is tried again after a concurrent edit of one of
its subscriptions (each time on the rows as they now are)."""


CATCH_UP = 100
"""Most periods renewed for one subscription in one run (a runner that was down for months
catches up period by period, each invoiced and charged)."""


@attrs.frozen
class Renewed:
    """What one subscription's renewal in a round came to.

    ``subscription``: the row as the round left it, where known (the next round renews
    from it); ``error``: what raised for this subscription alone (its payment, if any, is
    left pending for reconciliation).
    """

    charged: Charged
    subscription: Subscription | None = None
    error: str | None = None


@attrs.frozen
class _Opened:
    """One renewal as the open transaction wrote it."""

    subscription: Subscription
    invoice: Invoice
    payment: Payment | None
    payable: tuple[PaymentMethod, str] | None


async def renew_round(
    context: ServiceContext, subscriptions: Sequence[Subscription], *, concurrency: int
) -> dict[UUID, Renewed]:
    """Renew one period of each renewable subscription of ``subscriptions`` (see the module
    docstring); what each came to, by subscription id (absent: not renewable any more when
    read again after a concurrent edit).

    Raises only when the open transaction fails (nothing was written then); a failure
    after it is reported on the subscription it belongs to (``Renewed.error``).
    """
    opened, unpaid = await _open_round(context, subscriptions)
    done: dict[UUID, Renewed] = {}
    for invoice in unpaid:
        assert invoice.subscription_id is not None
        try:
            done[invoice.subscription_id] = Renewed(await charge(context, invoice))
        except Exception as error:  # this subscription's alone: the others go on
            done[invoice.subscription_id] = Renewed("skipped", error=_failure(error))
    answers, errors = await _charge_all(context, opened, concurrency)
    settled, late = await _settle_all(context, opened, answers)
    errors.update(late)
    for item in opened:
        sub_id = item.subscription.id
        if sub_id in errors:
            done[sub_id] = Renewed("skipped", error=errors[sub_id])
        elif item.payment is None:
            paid = item.invoice.status == InvoiceStatus.PAID  # nothing was due
            done[sub_id] = Renewed("charged" if paid else "nothing", item.subscription)
        elif sub_id in settled:
            outcome = settled[sub_id]
            status = outcome.payment.status
            charged: Charged = (
                "charged"
                if status == PaymentStatus.SUCCEEDED
                else "failed"
                if status == PaymentStatus.FAILED
                else "skipped"
            )
            done[sub_id] = Renewed(charged, outcome.subscription or item.subscription)
        else:
            done[sub_id] = Renewed("skipped")  # the outcome is unknown: reconciled later
    return done


async def _open_round(
    context: ServiceContext, subscriptions: Sequence[Subscription]
) -> tuple[list[_Opened], list[Invoice]]:
    """The open transaction, again after a concurrent edit (``_open`` reads the rows as
    they are then)."""
    for attempt in range(ATTEMPTS):
        try:
            return await _open(context, subscriptions)
        except ConflictError:
            if attempt + 1 == ATTEMPTS:
                raise
    return [], []


async def _open(
    context: ServiceContext, subscriptions: Sequence[Subscription]
) -> tuple[list[_Opened], list[Invoice]]:
    async with context.unit_of_work() as uow:
        ids = one_of([item.id for item in subscriptions])
        # The rows as they are now: a runner whose lease ran out may find another renewed
        # them since its claim, and an open invoice it would charge is then not its own.
        current = {item.id: item for item in await every(uow.tx, Subscription, {"id": ids})}
        subscriptions = [
            fresh
            for item in subscriptions
            if (fresh := current.get(item.id)) is not None and renewable(fresh, context)
        ]
        if not subscriptions:
            return [], []
        ids = one_of([item.id for item in subscriptions])
        drafts: dict[UUID, Invoice] = {}
        unpaid: dict[UUID, Invoice] = {}
        for kept, filters in (
            (drafts, invoicing.period_invoices(ids, InvoiceStatus.DRAFT)),
            (unpaid, invoicing.period_invoices(ids, InvoiceStatus.OPEN)),
        ):
            for invoice in await every(uow.tx, Invoice, filters):  # newest first: it wins
                assert invoice.subscription_id is not None
                kept.setdefault(invoice.subscription_id, invoice)
        payable = await charging.chargeable_methods(
            uow.tx,
            [(item.customer_id, item.default_payment_method_id) for item in subscriptions],
            context.provider.name,
        )
        promos = await _promo_codes(uow, subscriptions)
        renewing = [item for item in subscriptions if item.id not in unpaid]
        # Every read (the numbers too) before any write, so the writes go together.
        first = (
            await uow.tx.next_number(invoicing.NUMBER_SEQUENCE, count=len(renewing))
            if renewing
            else 0
        )
        numbers = range(first, first + len(renewing))
        opened = [
            await _open_one(
                uow,
                context,
                item,
                number,
                drafts.get(item.id),
                payable.get((item.customer_id, item.default_payment_method_id)),
                None if item.promo_code_id is None else promos.get(item.promo_code_id),
            )
            for item, number in zip(renewing, numbers, strict=True)
        ]
        for item in subscriptions:
            if item.id in unpaid:
                # Taking the open invoice to charge is checked against the row as read, as
                # a renewal is: on PostgreSQL each read sees the latest commit, so another
                # runner may have renewed it between the two reads above; then this
                # transaction conflicts and is tried again on the rows as they are.
                await uow.tx.update(attrs.evolve(item, updated_at=uow.now))
    return opened, [unpaid[item.id] for item in subscriptions if item.id in unpaid]


async def _promo_codes(
    uow: UnitOfWork, subscriptions: Sequence[Subscription]
) -> dict[UUID, PromoCode]:
    """The batch's promo codes, deleted ones too (a code applies for its duration once
    redeemed, whatever became of it since)."""
    wanted = sorted({item.promo_code_id for item in subscriptions if item.promo_code_id})
    if not wanted:
        return {}
    found = await every(uow.tx, PromoCode, {"id": one_of(wanted)}, include_deleted=True)
    return {code.id: code for code in found}


async def _open_one(
    uow: UnitOfWork,
    context: ServiceContext,
    subscription: Subscription,
    number: int,
    draft: Invoice | None,
    payable: tuple[PaymentMethod, str] | None,
    promo: PromoCode | None,
) -> _Opened:
    """One renewal's writes: the period's invoice finalized as ``number``, its pending
    payment (when money is due and there is a card), the subscription moved on."""
    start, end = invoicing.renewal_period(subscription)
    invoice = await invoicing.issue(
        uow,
        context,
        draft
        or invoicing.draft_invoice(
            uow,
            customer_id=subscription.customer_id,
            currency=subscription.currency,
            subscription_id=subscription.id,
            period_start=start,
            period_end=end,
        ),
        [_period_line(subscription, start, end)],
        stored=draft is not None,
        number=number,
        promo=promo,
        subscription=subscription,
        attempt=payable is not None,
    )
    payment = None
    if invoice.status == InvoiceStatus.OPEN and payable is not None:
        payment = invoicing.attempt_row(uow, context, invoice, payable[0])
        await charging.open_attempt(uow, payment, new_invoice=True)
    moved = attrs.evolve(
        subscription, current_period_start=start, current_period_end=end, updated_at=uow.now
    )
    renewed = await uow.tx.update(schedule.scheduled(moved, context.settings))
    await uow.record(
        "subscription.renewed",
        renewed,
        changes={
            "period": [start.isoformat(), end.isoformat()],
            "invoice": invoice.number or str(invoice.id),
        },
    )
    return _Opened(renewed, invoice, payment, payable)


async def _charge_all(
    context: ServiceContext, opened: Sequence[_Opened], concurrency: int
) -> tuple[dict[UUID, ChargeResult | None], dict[UUID, str]]:
    """The provider's answer to each pending payment (``None``: unknown), ``concurrency``
    calls at once; and what raised, by subscription."""
    answers: dict[UUID, ChargeResult | None] = {}
    errors: dict[UUID, str] = {}

    async def one(item: _Opened) -> None:
        assert item.payment is not None
        assert item.payable is not None
        try:
            answers[item.payment.id] = await charging.call_provider(
                context, item.payment, *item.payable, off_session=True
            )
        except Exception as error:  # the payment stays pending: reconciled later
            errors[item.subscription.id] = _failure(error)

    await at_most(concurrency, [item for item in opened if item.payment is not None], one)
    return answers, errors


async def _settle_all(
    context: ServiceContext,
    opened: Sequence[_Opened],
    answers: dict[UUID, ChargeResult | None],
) -> tuple[dict[UUID, charging.Settled], dict[UUID, str]]:
    """Every answer written in one transaction; each on its own (reading its rows) if that
    fails: a concurrent edit made the batch stale, or one row's outcome cannot be written
    (reported on its subscription, its payment left pending for reconciliation)."""
    answered = [
        (item, result)
        for item in opened
        if item.payment is not None and (result := answers.get(item.payment.id)) is not None
    ]
    settled: dict[UUID, charging.Settled] = {}
    errors: dict[UUID, str] = {}
    if not answered:
        return settled, errors
    try:
        async with context.unit_of_work() as uow:
            for item, result in answered:
                assert item.payment is not None
                settled[item.subscription.id] = await charging.write_outcome(
                    uow, context, item.payment, result, item.subscription, item.invoice
                )
        return settled, errors
    except Exception:  # one bad row, or a stale batch: each settled on its own below
        settled.clear()
    for item, result in answered:
        assert item.payment is not None
        try:
            settled[item.subscription.id] = await charging.settle_attempt(
                context, item.payment.id, result
            )
        except Exception as error:  # left pending: reconciled later
            errors[item.subscription.id] = _failure(error)
    return settled, errors


def _failure(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]


async def retry(context: ServiceContext, subscription: Subscription) -> Charged:
    """A dunning retry: charge the past-due subscription's open invoice again (a new
    attempt: a new payment row, a new provider key), once per step of the policy.

    Two runners may hold the same step (one's lease ran out mid-retry). The invoice is read
    before the subscription, so whichever commit lands between the reads is seen: an
    attempt opened before the invoice read is undecided (left to reconciliation) or has its
    outcome written (which moved the subscription on, seen by the later read); one opened
    after it moves ``attempt_count`` past what was read, and ``charge_invoice`` refuses to
    open a second. Each read sees the last commit, so no snapshot is needed.
    """
    async with context.unit_of_work(readonly=True) as uow:
        invoice = await open_invoice(uow, subscription)
        if invoice is not None and await _unsettled(uow, invoice):
            return "waiting"  # its outcome is reconciled, never charged again
        current = await uow.tx.get(Subscription, subscription.id)
        if current is None or not schedule.still_due(current, subscription, context.now()):
            return "skipped"  # another runner retried it since this one claimed it
    if invoice is None:
        # Past due with nothing invoiced: a trial whose end charge failed (or found no
        # card). Its first paid period is invoiced now, once, and charged like any retry.
        invoice = await _invoice_current_period(context, subscription)
        if invoice is None:
            return "skipped"
    return await charge(context, invoice, attempts_seen=invoice.attempt_count)


async def _unsettled(uow: UnitOfWork, invoice: Invoice) -> bool:
    """Whether an attempt on the invoice is undecided (``charging.IN_FLIGHT``): no outcome
    written yet, or ``processing``, which counts no step until the provider decides.

    Not ``requires_action``: that outcome was written and counted its step (nobody is there
    to authenticate), so the next step's retry goes ahead."""
    return await charging.undecided_attempt(uow.tx, invoice_id=invoice.id) is not None


async def _invoice_current_period(
    context: ServiceContext, subscription: Subscription
) -> Invoice | None:
    try:
        async with context.unit_of_work() as uow:
            current = await uow.tx.get(Subscription, subscription.id)
            if current is None or current.status != SubscriptionStatus.PAST_DUE:
                return None
            if await open_invoice(uow, current) is not None:
                return None  # another runner invoiced it meanwhile
            # Checked against the row as read, as a renewal is: two runners (one whose
            # lease ran out) may both have found nothing invoiced, and on PostgreSQL
            # neither sees the other's invoice before it commits. The second's update then
            # conflicts and its invoice is rolled back with it.
            await uow.tx.update(attrs.evolve(current, updated_at=uow.now))
            draft = await invoicing.new_draft(
                uow,
                customer_id=current.customer_id,
                currency=current.currency,
                lines=[
                    _period_line(current, current.current_period_start, current.current_period_end)
                ],
                subscription_id=current.id,
                period_start=current.current_period_start,
                period_end=current.current_period_end,
            )
            return await invoicing.finalize_in(uow, context, draft)
    except ConflictError:
        return None  # due again after the lease; charged then


async def charge(
    context: ServiceContext, invoice: Invoice, *, attempts_seen: int | None = None
) -> Charged:
    """Charge the invoice, unless nothing is due on it (finalized paid: a free period).
    ``attempts_seen``: its ``attempt_count`` when the charge was decided; ``skipped`` if
    another attempt was opened since. ``waiting``: an attempt the provider has not decided
    (this one or an earlier one) holds the invoice until reconciliation settles it."""
    if invoice.status == InvoiceStatus.PAID:
        return "charged"
    try:
        charged = await invoicing.charge_invoice(
            context, invoice.id, off_session=True, attempts_seen=attempts_seen
        )
    except InvalidStateError as refused:
        if refused.rule == "one_attempt_in_flight":
            return "waiting"  # reconciled, not charged again
        if refused.rule == "attempted_since":
            return "skipped"  # retried by another runner meanwhile
        if refused.rule == "payment_method":
            return "nothing"  # no card to charge: a failed charge, with no payment row
        raise
    if charged.status == InvoiceStatus.PAID:
        return "charged"
    async with context.unit_of_work(readonly=True) as uow:
        return "waiting" if await _unsettled(uow, charged) else "failed"


async def open_invoice(uow: UnitOfWork, subscription: Subscription) -> Invoice | None:
    """The subscription's finalized period invoice still to be paid, if any (newest
    first)."""
    filters = invoicing.period_invoices(subscription.id, InvoiceStatus.OPEN)
    page = await uow.tx.list(Invoice, filters=filters, limit=1)
    return page.items[0] if page.items else None


def renewable(subscription: Subscription, context: ServiceContext) -> bool:
    """Whether a period of ``subscription`` ended and is to be renewed now."""
    return (
        subscription.status == SubscriptionStatus.ACTIVE
        and not subscription.cancel_at_period_end
        and subscription.current_period_end <= context.now()
    )


def _period_line(subscription: Subscription, start: datetime, end: datetime) -> invoicing.LineDraft:
    """The line billing one period at the subscription's price and quantity."""
    price = format_amount(subscription.unit_amount, subscription.currency)
    return invoicing.LineDraft(
        description=(
            f"{subscription.quantity} × {price} per {subscription.interval}, "
            f"{start.date().isoformat()} to {end.date().isoformat()}"
        ),
        unit_amount=subscription.unit_amount,
        quantity=subscription.quantity,
        price_id=subscription.price_id,
        period_start=start,
        period_end=end,
    )
