"""Invoices inside another call's unit of work: drafts, lines, finalizing, charging, paying.

The building blocks ``billing.invoices`` and the lifecycle (proration, renewals) share:

- ``upcoming_draft``: a subscription's one draft for its next period (Stripe's pending
  invoice items): proration lines wait there until the renewal adds the period's line and
  finalizes it;
- ``add_lines``: lines appended to a draft, its totals recomputed
  (``qzpay.domain.invoice_totals``: the subscription's promo code by its duration, the
  invoice's tax rate, each rounded once);
- ``finalize_in``: draft → open, numbered from the gapless per-(tenant, livemode) sequence
  ``"invoice"`` at that moment (so a draft never holds a number, and a rolled-back finalize
  gives its number to the next one); an invoice with nothing due is paid at once;
- ``charge_invoice``: an intent-first charge (``qzpay.services.charging``) of the amount
  due; one attempt at a time per invoice (the storage refuses a second pending one);
- ``apply_payment``: what a settled charge means for its invoice, called by
  ``charging``'s settle in the settling transaction (so a payment and the invoice it paid
  commit together, however it was settled: at once, by ``reconcile``, by a webhook).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import attrs

from qzpay import money, periods
from qzpay.contracts.filters import not_null
from qzpay.domain.enums import Interval, InvoiceStatus, PaymentStatus
from qzpay.domain.invoice_states import PAYABLE, invoice_transition
from qzpay.domain.invoice_totals import InvoiceTotals, from_subtotal
from qzpay.domain.invoices import Invoice, InvoiceLine, InvoicePayment
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.promotions import PromoCode
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import InvalidStateError
from qzpay.ids import new_id
from qzpay.services import charging, idempotency
from qzpay.services.context import ServiceContext, UnitOfWork, require

NUMBER_SEQUENCE = "invoice"
"""The storage sequence invoice numbers come from (``StorageTransaction.next_number``)."""


@attrs.frozen(kw_only=True)
class LineDraft:
    """A line to add to a draft; ``unit_amount`` may be negative (a credit)."""

    description: str
    unit_amount: int
    quantity: int = 1
    price_id: UUID | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    proration: bool = False


def invoice_number(prefix: str, number: int) -> str:
    """The invoice's number as people read it: ``INV-000001``.

    >>> invoice_number("INV-", 42)
    'INV-000042'
    """
    return f"{prefix}{number:06d}"


# -- periods ---------------------------------------------------------------------------------

_APPROX_DAYS: Mapping[Interval, int] = {
    Interval.DAY: 1,
    Interval.WEEK: 7,
    Interval.MONTH: 28,
    Interval.YEAR: 365,
}
"""The shortest length of each interval, to guess a period's index before checking it."""


def period_index(subscription: Subscription, start: datetime) -> int:
    """Which of the subscription's billed periods (0-based from ``billing_anchor``) holds
    ``start``: what a promo code's duration counts (``once`` is period 0, the first paid
    one, whether or not it was invoiced)."""
    anchor = subscription.billing_anchor
    if start <= anchor:
        return 0
    every = subscription.interval_count

    def begins(index: int) -> datetime:
        return periods.period_bounds(anchor, subscription.interval, every, index)[0]

    shortest = timedelta(days=_APPROX_DAYS[subscription.interval] * every)
    index = (start - anchor) // shortest  # never fewer periods than this guess
    while index > 0 and begins(index) > start:
        index -= 1
    while begins(index + 1) <= start:
        index += 1
    return index


def renewal_period(subscription: Subscription) -> tuple[datetime, datetime]:
    """The period the subscription's next invoice bills: the one starting at the end of the
    current period (for a trial, its first paid period)."""
    start = subscription.current_period_end
    index = period_index(subscription, start)
    begin, end = periods.period_bounds(
        subscription.billing_anchor, subscription.interval, subscription.interval_count, index
    )
    if begin == start:
        return begin, end
    return start, periods.shift(start, subscription.interval, subscription.interval_count)


# -- drafts ----------------------------------------------------------------------------------


def line_rows(uow: UnitOfWork, invoice: Invoice, lines: Sequence[LineDraft]) -> list[InvoiceLine]:
    """The rows of ``lines`` on ``invoice`` (not stored), each amount checked to fit."""
    return [
        InvoiceLine(
            id=new_id(),
            livemode=uow.scope.livemode,
            tenant_id=uow.scope.tenant_id,
            invoice_id=invoice.id,
            description=line.description,
            quantity=line.quantity,
            unit_amount=line.unit_amount,
            amount=money.amount(
                line.unit_amount * line.quantity,
                field=f"lines[{position}].unit_amount",
                minimum=-money.MAX_AMOUNT,
            ),
            currency=invoice.currency,
            price_id=line.price_id,
            period_start=line.period_start,
            period_end=line.period_end,
            proration=line.proration,
            created_at=uow.now,
        )
        for position, line in enumerate(lines)
    ]


async def invoice_promo(
    uow: UnitOfWork, invoice: Invoice
) -> tuple[PromoCode | None, Subscription | None]:
    """The promo code whose discount an invoice gets, and its subscription.

    Only a subscription's period invoices (those with ``period_start``) are discounted; a
    code deactivated since it was redeemed still applies (Stripe's rule: deactivating stops
    new redemptions only).
    """
    if invoice.subscription_id is None:
        return None, None
    subscription: Subscription | None = await uow.tx.get(
        Subscription, invoice.subscription_id, include_deleted=True
    )
    if subscription is None or subscription.promo_code_id is None:
        return None, subscription
    if invoice.period_start is None:
        return None, subscription
    promo: PromoCode | None = await uow.tx.get(
        PromoCode, subscription.promo_code_id, include_deleted=True
    )
    return promo, subscription


def totals_with(
    invoice: Invoice,
    subtotal: int,
    promo: PromoCode | None,
    subscription: Subscription | None,
) -> InvoiceTotals:
    """The invoice's amounts for ``subtotal`` with ``promo`` by the period it bills."""
    index = 0
    if promo is not None and subscription is not None and invoice.period_start is not None:
        index = period_index(subscription, invoice.period_start)
    return from_subtotal(
        subtotal,
        currency=invoice.currency,
        promo=promo,
        period_index=index,
        tax_rate=invoice.tax_rate,
        amount_paid=invoice.amount_paid,
    )


def with_totals(invoice: Invoice, totals: InvoiceTotals, **changes: Any) -> Invoice:
    """``invoice`` with ``totals`` (each amount checked to fit) and any other ``changes``,
    in one step."""
    return attrs.evolve(
        invoice,
        subtotal=money.amount(totals.subtotal, field="subtotal", minimum=-money.MAX_AMOUNT),
        discount=totals.discount,
        tax=totals.tax,
        total=money.amount(totals.total, field="total", minimum=-money.MAX_AMOUNT),
        amount_due=totals.amount_due,
        **changes,
    )


def draft_invoice(
    uow: UnitOfWork,
    *,
    customer_id: UUID,
    currency: str,
    subscription_id: UUID | None = None,
    tax_rate: Decimal | None = None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Invoice:
    """A new empty draft (not stored)."""
    return Invoice(
        id=new_id(),
        livemode=uow.scope.livemode,
        tenant_id=uow.scope.tenant_id,
        customer_id=customer_id,
        subscription_id=subscription_id,
        status=InvoiceStatus.DRAFT,
        currency=currency,
        tax_rate=tax_rate,
        period_start=period_start,
        period_end=period_end,
        metadata=metadata or {},
        created_at=uow.now,
        updated_at=uow.now,
    )


async def new_draft(
    uow: UnitOfWork,
    *,
    customer_id: UUID,
    currency: str,
    lines: Sequence[LineDraft] = (),
    subscription_id: UUID | None = None,
    tax_rate: Decimal | None = None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Invoice:
    """Store a new draft with ``lines`` and its totals; records ``invoice.created``.

    For an invoice of its own (``billing.invoices.create``, an ``always_invoice``
    proration charged now): a subscription's next-period draft is ``upcoming_draft``.
    """
    invoice = draft_invoice(
        uow,
        customer_id=customer_id,
        currency=currency,
        subscription_id=subscription_id,
        tax_rate=tax_rate,
        period_start=period_start,
        period_end=period_end,
        metadata=metadata,
    )
    rows = line_rows(uow, invoice, lines)
    promo, subscription = await invoice_promo(uow, invoice) if rows else (None, None)
    invoice = with_totals(
        invoice, totals_with(invoice, sum(row.amount for row in rows), promo, subscription)
    )
    await uow.tx.insert(invoice)
    for row in rows:
        await uow.tx.insert(row)
    await uow.record(
        "invoice.created",
        invoice,
        changes={"status": invoice.status.value, "lines": len(rows), "total": invoice.total},
    )
    return invoice


def period_invoices(subscription_ids: object, status: InvoiceStatus) -> dict[str, object]:
    """The filters of subscriptions' invoices in ``status`` that bill their periods (the
    upcoming draft, a renewal's open invoice). A one-off invoice an app made for a
    subscription with ``billing.invoices.create`` bills no period: it is the app's to
    finalize, charge or delete, never taken for a renewal's. ``subscription_ids``: one id,
    or ``one_of`` many."""
    return {"subscription_id": subscription_ids, "status": status, "period_start": not_null()}


async def find_upcoming(uow: UnitOfWork, subscription: Subscription) -> Invoice | None:
    """The subscription's upcoming draft, if it has one (newest first, should there be
    two: one per subscription is kept by the subscription's own version check, since
    every draft is written in a transaction that also updates its subscription)."""
    filters = period_invoices(subscription.id, InvoiceStatus.DRAFT)
    page = await uow.tx.list(Invoice, filters=filters, limit=1)
    return page.items[0] if page.items else None


async def upcoming_draft(uow: UnitOfWork, subscription: Subscription) -> Invoice:
    """The subscription's upcoming draft, created empty if it has none.

    The draft bills the subscription's next period (``renewal_period``); at most one per
    subscription, so proration lines gather there until the renewal finalizes it.
    """
    found = await find_upcoming(uow, subscription)
    if found is not None:
        return found
    start, end = renewal_period(subscription)
    return await new_draft(
        uow,
        customer_id=subscription.customer_id,
        currency=subscription.currency,
        subscription_id=subscription.id,
        period_start=start,
        period_end=end,
    )


async def delete_draft(uow: UnitOfWork, invoice: Invoice) -> Invoice:
    """Delete a draft (``deleted_at``; it never had a number, so the sequence keeps no
    gap), checked against the version it was read at; records ``invoice.deleted``."""
    await uow.tx.soft_delete(Invoice, invoice.id, at=uow.now, expected_version=invoice.version)
    deleted = attrs.evolve(
        invoice, deleted_at=uow.now, updated_at=uow.now, version=invoice.version + 1
    )
    await uow.record("invoice.deleted", deleted, changes={"status": invoice.status.value})
    return deleted


async def drop_upcoming(uow: UnitOfWork, subscription: Subscription) -> None:
    """A subscription that ended renews no more, so its draft of pending lines (prorations
    waiting for a renewal that will not come) is deleted: Stripe bills nothing more for a
    canceled subscription unless asked to invoice now."""
    draft = await find_upcoming(uow, subscription)
    if draft is not None:
        await delete_draft(uow, draft)


async def add_lines(uow: UnitOfWork, invoice: Invoice, lines: Sequence[LineDraft]) -> Invoice:
    """Append ``lines`` to a draft and recompute its totals; returns the invoice as now.

    Only a draft takes lines (``InvalidStateError``, rule ``draft_only``): a finalized
    invoice is what the customer was billed, never edited. ``invoice`` must be the row as
    last read (its version is checked); records ``invoice.updated``.
    """
    if invoice.status != InvoiceStatus.DRAFT:
        raise InvalidStateError(
            f"invoice {invoice.id} is {invoice.status.value}: only a draft takes lines",
            field="invoice_id",
            rule="draft_only",
        )
    if not lines:
        return invoice
    rows = line_rows(uow, invoice, lines)
    promo, subscription = await invoice_promo(uow, invoice)
    totals = totals_with(
        invoice, invoice.subtotal + sum(row.amount for row in rows), promo, subscription
    )
    updated = await uow.tx.update(with_totals(invoice, totals, updated_at=uow.now))
    for row in rows:
        await uow.tx.insert(row)
    await uow.record(
        "invoice.updated",
        updated,
        changes={"lines_added": len(rows), "total": [invoice.total, updated.total]},
    )
    return updated


async def finalize_in(uow: UnitOfWork, context: ServiceContext, invoice: Invoice) -> Invoice:
    """Draft → open, numbered now (gapless per tenant and livemode); an invoice with nothing
    due (a zero or credit total) becomes paid at once. Records ``invoice.finalized`` (and
    ``invoice.paid``)."""
    number = await uow.tx.next_number(NUMBER_SEQUENCE)
    opened = attrs.evolve(
        invoice,
        **finalizing(
            invoice.status, invoice.amount_due, invoice.due_date, number, context, uow.now
        ),
    )
    updated = await uow.tx.update(opened)
    await record_finalized(uow, invoice, updated)
    return updated


async def issue(
    uow: UnitOfWork,
    context: ServiceContext,
    draft: Invoice,
    lines: Sequence[LineDraft],
    *,
    stored: bool,
    number: int,
    promo: PromoCode | None,
    subscription: Subscription | None,
    attempt: bool = False,
) -> Invoice:
    """``lines`` added to ``draft`` and the draft finalized as ``number``, in one write of
    the invoice (a renewal batch: each row written once, so a batch's invoices go as one
    multi-row statement).

    ``stored``: whether the draft is a stored row (it is updated, ``invoice.updated``) or
    one made for this call (it is inserted, ``invoice.created``). ``promo`` and
    ``subscription`` are what ``invoice_promo`` would read; ``attempt``: a payment attempt
    is opened for it in this transaction, counted here when money is due
    (``charge_invoice`` counts its own).
    Records what ``add_lines`` and ``finalize_in`` record.
    """
    rows = line_rows(uow, draft, lines)
    totals = totals_with(
        draft, draft.subtotal + sum(row.amount for row in rows), promo, subscription
    )
    finalize = finalizing(draft.status, totals.amount_due, draft.due_date, number, context, uow.now)
    if attempt and finalize["status"] == InvoiceStatus.OPEN:
        finalize["attempt_count"] = draft.attempt_count + 1
    opened = with_totals(draft, totals, **finalize)
    if stored:
        written = await uow.tx.update(opened)
        await uow.record(
            "invoice.updated",
            written,
            changes={"lines_added": len(rows), "total": [draft.total, written.total]},
        )
    else:
        await uow.tx.insert(opened)
        written = opened
        await uow.record(
            "invoice.created",
            written,
            changes={"status": draft.status.value, "lines": len(rows), "total": written.total},
        )
    for row in rows:
        await uow.tx.insert(row)
    await record_finalized(uow, draft, written)
    return written


def finalizing(
    status: InvoiceStatus,
    amount_due: int,
    due_date: datetime | None,
    number: int,
    context: ServiceContext,
    now: datetime,
) -> dict[str, Any]:
    """What finalizing an invoice as ``number`` at ``now`` changes (a pure step): open, or
    paid at once when nothing is due."""
    opened = invoice_transition(status, InvoiceStatus.OPEN)
    changes: dict[str, Any] = {
        "status": opened,
        "number": invoice_number(context.settings.invoice_number_prefix, number),
        "finalized_at": now,
        "due_date": due_date or now,
        "updated_at": now,
    }
    if amount_due == 0:
        changes["status"] = invoice_transition(opened, InvoiceStatus.PAID)
        changes["paid_at"] = now
    return changes


async def record_finalized(uow: UnitOfWork, draft: Invoice, written: Invoice) -> None:
    """The audit rows of a finalize: ``invoice.finalized``, and ``invoice.paid`` when
    nothing was due."""
    await uow.record(
        "invoice.finalized",
        written,
        changes={
            "status": [draft.status.value, InvoiceStatus.OPEN.value],
            "number": written.number,
        },
    )
    if written.status == InvoiceStatus.PAID:
        await uow.record(
            "invoice.paid",
            written,
            changes={
                "status": [InvoiceStatus.OPEN.value, written.status.value],
                "amount_paid": 0,
            },
        )


# -- charging --------------------------------------------------------------------------------


def check_payable(invoice: Invoice) -> None:
    """Refuse a charge of an invoice that is not open (or uncollectible) with money due."""
    if invoice.status not in PAYABLE:
        hint = "finalize it first" if invoice.status == InvoiceStatus.DRAFT else "nothing to pay"
        raise InvalidStateError(
            f"invoice {invoice.id} is {invoice.status.value}: {hint}",
            field="invoice_id",
            rule="payable",
        )
    if invoice.amount_due <= 0:
        raise InvalidStateError(
            f"invoice {invoice.id} has nothing due", field="invoice_id", rule="payable"
        )


async def charge_invoice(
    context: ServiceContext,
    invoice_id: UUID,
    *,
    keyed: idempotency.Keyed | None = None,
    off_session: bool = False,
    attempts_seen: int | None = None,
) -> Invoice:
    """Charge the invoice's amount due to the customer's default payment method, intent
    first; returns the invoice as the outcome left it.

    Succeeded: ``paid`` (``amount_paid``, an ``invoice_payments`` link, ``invoice.paid``).
    Declined: still open, ``attempt_count`` one more, ``invoice.payment_failed``. Outcome
    unknown: still open with its attempt pending (``payments.reconcile`` settles it); until
    then another charge is refused (``InvalidStateError``, rule ``one_attempt_in_flight``).
    The subscription's default payment method is preferred for its invoices. No method the
    provider can charge: ``InvalidStateError`` (rule ``payment_method``), nothing written.
    ``keyed``: the caller's idempotency key (``billing.invoices.pay``), claimed with the
    attempt and completed with the invoice once it settles. ``off_session``: the job runner
    charges (a dunning retry), with no customer there to authenticate. ``attempts_seen``:
    the ``attempt_count`` the caller read when it decided to charge (a dunning retry); if
    another attempt was opened since, this one is refused (``InvalidStateError``, rule
    ``attempted_since``), nothing written, so one decision makes one charge.
    """
    provider = context.provider.name
    async with context.unit_of_work() as uow:
        claim = await idempotency.claim(uow, keyed, Invoice)
        if claim.replay is not None:
            return claim.replay
        resumed: UUID | None = None
        if claim.in_progress and claim.resource_id is not None:
            resumed = claim.resource_id
        else:
            claim.raise_if_in_progress()
            invoice: Invoice = await require(uow.tx, Invoice, invoice_id, field="invoice_id")
            check_payable(invoice)
            preferred = None
            if invoice.subscription_id is not None:
                subscription = await uow.tx.get(Subscription, invoice.subscription_id)
                preferred = None if subscription is None else subscription.default_payment_method_id
            payable = await charging.chargeable_method(
                uow.tx, invoice.customer_id, preferred, provider
            )
            if payable is None:
                raise InvalidStateError(
                    f"customer {invoice.customer_id} has no default payment method that "
                    f"{provider} can charge: attach one first",
                    field="payment_method",
                    rule="payment_method",
                )
            payment = attempt_row(uow, context, invoice, payable[0])
            await charging.open_attempt(uow, payment)
            # Counting the attempt holds the invoice row to the end of this transaction and
            # returns it as last committed: a concurrent attempt that settled (paid it)
            # between the read above and now is seen here, so it is never charged twice.
            # The attempt goes first: taking the row before the payment's unique key could
            # wait on a settle that waits on the row.
            counted = await uow.tx.increment(Invoice, invoice.id, "attempt_count", 1, at=uow.now)
            if counted is not None:
                check_payable(counted)
                if attempts_seen is not None and counted.attempt_count != attempts_seen + 1:
                    raise InvalidStateError(
                        f"invoice {invoice.id} was attempted since it was read "
                        f"({attempts_seen} attempts then, {counted.attempt_count - 1} now)",
                        field="attempt_count",
                        rule="attempted_since",
                    )
            await idempotency.bind(uow, keyed, payment.id)
    seen: list[Invoice] = []

    async def after(uow: UnitOfWork, settled: charging.Settled) -> None:
        current: Invoice = await require(uow.tx, Invoice, invoice_id, field="invoice_id")
        seen[:] = [current]
        if settled.payment.status != PaymentStatus.PENDING:
            await idempotency.complete(uow, keyed, current)

    if resumed is not None:
        await charging.resume(context, resumed, then=after)
    else:
        assert payable is not None  # refused above when there is none
        result = await charging.call_provider(context, payment, *payable, off_session=off_session)
        await charging.settle_attempt(context, payment.id, result, then=after, known=payment)
    return seen[0]


def attempt_row(
    uow: UnitOfWork, context: ServiceContext, invoice: Invoice, method: PaymentMethod
) -> Payment:
    """The pending payment of one attempt to charge ``invoice``'s amount due (not stored)."""
    return charging.pending_payment(
        uow,
        context,
        customer_id=invoice.customer_id,
        method=method,
        amount=invoice.amount_due,
        currency=invoice.currency,
        subscription_id=invoice.subscription_id,
        invoice_id=invoice.id,
        description=f"Invoice {invoice.number}",
    )


async def apply_payment(
    uow: UnitOfWork, payment: Payment, *, known: Invoice | None = None
) -> Invoice | None:
    """What a settled payment means for the invoice it was for (``payment.invoice_id``).

    Succeeded: its amount is applied (an ``InvoicePayment`` row), and the invoice is
    ``paid`` once nothing is due (``paid_at``, ``invoice.paid``). Failed:
    ``invoice.payment_failed`` (its attempt was counted when it opened). Still open at the
    provider: nothing yet. Money taken for an invoice that is no longer payable (voided
    meanwhile) is still linked to it, so the books show what to refund. ``known``: the
    invoice as the caller last wrote it (not read again; its version is checked).
    """
    if payment.invoice_id is None:
        return None
    invoice: Invoice | None = (
        known
        if known is not None and known.id == payment.invoice_id
        else await uow.tx.get(Invoice, payment.invoice_id, include_deleted=True)
    )
    if invoice is None:
        return None
    if payment.status == PaymentStatus.FAILED:
        await uow.record(
            "invoice.payment_failed",
            invoice,
            changes={
                "payment_id": str(payment.id),
                "failure_code": payment.failure_code,
                "attempt_count": invoice.attempt_count,
            },
        )
        return invoice
    if payment.status != PaymentStatus.SUCCEEDED:
        return invoice
    await uow.tx.insert(
        InvoicePayment(
            id=new_id(),
            livemode=uow.scope.livemode,
            tenant_id=uow.scope.tenant_id,
            invoice_id=invoice.id,
            payment_id=payment.id,
            amount_applied=payment.amount,
            currency=payment.currency,
            applied_at=uow.now,
            created_at=uow.now,
        )
    )
    paid = invoice.amount_paid + payment.amount
    due = max(invoice.total - paid, 0)
    changes: dict[str, Any] = {"amount_paid": paid, "payment_id": str(payment.id)}
    status = invoice.status
    if due == 0 and status in PAYABLE:
        status = invoice_transition(status, InvoiceStatus.PAID)
        changes["status"] = [invoice.status.value, status.value]
    updated = await uow.tx.update(
        attrs.evolve(
            invoice,
            status=status,
            amount_paid=paid,
            amount_due=due,
            paid_at=uow.now if status != invoice.status else invoice.paid_at,
            updated_at=uow.now,
        )
    )
    if status != invoice.status:
        await uow.record("invoice.paid", updated, changes=changes)
    return updated
