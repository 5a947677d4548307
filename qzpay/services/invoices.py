"""``billing.invoices``: bills with lines, numbered at finalize, paid intent first.

Draft → open (numbered) → paid | void | uncollectible, every move through one table
(``qzpay.domain.invoice_states``); an illegal one raises ``InvalidStateError`` and writes
nothing. The amounts follow ``qzpay.domain.invoice_totals``; the building blocks shared with
the subscription lifecycle live in ``qzpay.services.invoicing``. A draft is deleted, never
voided; a voided invoice keeps its number (docs/decisions/0014-invoices.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import attrs

from qzpay import money
from qzpay import validation as check
from qzpay.contracts.filters import one_of
from qzpay.contracts.storage import Page, StorageTransaction
from qzpay.domain.catalog import Plan
from qzpay.domain.customers import Customer
from qzpay.domain.enums import InvoiceStatus, SubscriptionStatus
from qzpay.domain.invoice_states import invoice_transition
from qzpay.domain.invoice_totals import check_tax_rate
from qzpay.domain.invoices import Invoice, InvoiceLine
from qzpay.domain.payments import Payment
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import InvalidStateError, ValidationError
from qzpay.services import charging, idempotency, invoicing
from qzpay.services.context import ServiceContext, every, require
from qzpay.services.invoicing import LineDraft

MAX_LINES = 250
"""Lines one ``create`` takes (Stripe's limit on an invoice's items per request)."""
MAX_QUANTITY = 1_000_000
MAX_TEXT = 500
LINE_FIELDS = frozenset({"description", "unit_amount", "quantity"})
NO_UPCOMING = frozenset(
    {SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED, SubscriptionStatus.PAUSED}
)
"""Statuses of a subscription that will not renew: it has no upcoming invoice."""


@attrs.frozen(kw_only=True)
class InvoicePreview:
    """What ``preview`` answers: the next renewal's invoice and its lines, never stored."""

    invoice: Invoice
    lines: Sequence[InvoiceLine]

    # The amounts read straight off the preview too: ``(await preview(id)).total``.
    @property
    def subtotal(self) -> int:
        return self.invoice.subtotal

    @property
    def discount(self) -> int:
        return self.invoice.discount

    @property
    def tax(self) -> int:
        return self.invoice.tax

    @property
    def total(self) -> int:
        return self.invoice.total

    @property
    def amount_due(self) -> int:
        return self.invoice.amount_due

    @property
    def currency(self) -> str:
        return self.invoice.currency

    @property
    def period_start(self) -> datetime | None:
        return self.invoice.period_start

    @property
    def period_end(self) -> datetime | None:
        return self.invoice.period_end


class InvoicesService:
    """``billing.invoices``: create, finalize, pay, void, mark_uncollectible, delete, get,
    list, lines, preview.

    >>> import anyio
    >>> from decimal import Decimal
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> tuple[str | None, int, str]:
    ...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
    ...         ann = await billing.customers.create(email="ann@example.com")
    ...         await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    ...         draft = await billing.invoices.create(
    ...             customer_id=ann.id, currency="USD", tax_rate=Decimal("0.21"),
    ...             lines=[{"description": "Setup", "unit_amount": 5000, "quantity": 1}],
    ...         )
    ...         opened = await billing.invoices.finalize(draft.id)
    ...         paid = await billing.invoices.pay(opened.id)
    ...         return paid.number, paid.total, str(paid.status)
    >>> anyio.run(main)
    ('INV-000001', 6050, 'paid')
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def create(
        self,
        *,
        customer_id: UUID | str,
        currency: str,
        lines: Sequence[Mapping[str, Any]] | None = None,
        tax_rate: Decimal | None = None,
        subscription_id: UUID | str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Invoice:
        """A draft invoice with one-off ``lines`` (``description``, ``unit_amount``, which a
        credit has negative, and ``quantity``); no number until ``finalize``."""
        customer_key = check.identifier(customer_id, field="customer_id")
        code = money.currency(currency).code
        drafts = _lines(lines)
        rate = None if tax_rate is None else check_tax_rate(tax_rate)
        sub_key = (
            None
            if subscription_id is None
            else check.identifier(subscription_id, field="subscription_id")
        )
        meta = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context,
            "invoices.create",
            idempotency_key,
            customer_id=customer_key,
            currency=code,
            lines=[attrs.asdict(line) for line in drafts],
            tax_rate=rate,
            subscription_id=sub_key,
            metadata=meta,
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Invoice)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            await require(uow.tx, Customer, customer_key, field="customer_id")
            if sub_key is not None:
                subscription: Subscription = await require(
                    uow.tx, Subscription, sub_key, field="subscription_id"
                )
                if subscription.customer_id != customer_key:
                    raise ValidationError(
                        "belongs to another customer", field="subscription_id", rule="owner"
                    )
                if subscription.currency != code:
                    raise ValidationError(
                        f"must be the subscription's currency, {subscription.currency}",
                        field="currency",
                        rule="subscription_currency",
                    )
            invoice = await invoicing.new_draft(
                uow,
                customer_id=customer_key,
                currency=code,
                lines=drafts,
                subscription_id=sub_key,
                tax_rate=rate,
                metadata=meta,
            )
            await idempotency.complete(uow, keyed, invoice)
        return invoice

    async def finalize(
        self, invoice_id: UUID | str, *, idempotency_key: str | None = None
    ) -> Invoice:
        """Draft → open, with the next gapless number (``INV-000001``); paid at once when
        nothing is due."""
        key = check.identifier(invoice_id, field="invoice_id")
        keyed = idempotency.keyed(
            self._context, "invoices.finalize", idempotency_key, invoice_id=key
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Invoice)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            invoice: Invoice = await require(uow.tx, Invoice, key, field="invoice_id")
            finalized = await invoicing.finalize_in(uow, self._context, invoice)
            await idempotency.complete(uow, keyed, finalized)
        return finalized

    async def pay(self, invoice_id: UUID | str, *, idempotency_key: str | None = None) -> Invoice:
        """Charge the amount due to the customer's default payment method, intent first;
        the invoice as the outcome left it (``paid``, or still open after a decline).

        While one attempt's outcome is unknown, another ``pay`` is refused
        (``InvalidStateError``, rule ``one_attempt_in_flight``): ``payments.reconcile``
        settles it first. The same call again with the same key finishes that attempt.
        """
        key = check.identifier(invoice_id, field="invoice_id")
        keyed = idempotency.keyed(self._context, "invoices.pay", idempotency_key, invoice_id=key)
        return await invoicing.charge_invoice(self._context, key, keyed=keyed)

    async def void(self, invoice_id: UUID | str, *, idempotency_key: str | None = None) -> Invoice:
        """Open (or uncollectible) → void: nothing is due any more; the number stays.

        Refused while a payment attempt for it is in flight (its money may still come).
        """
        return await self._move(
            invoice_id, InvoiceStatus.VOID, "invoice.voided", "invoices.void", idempotency_key
        )

    async def mark_uncollectible(
        self, invoice_id: UUID | str, *, idempotency_key: str | None = None
    ) -> Invoice:
        """Open → uncollectible (written off); it may still be paid, or voided, later."""
        return await self._move(
            invoice_id,
            InvoiceStatus.UNCOLLECTIBLE,
            "invoice.marked_uncollectible",
            "invoices.mark_uncollectible",
            idempotency_key,
        )

    async def _move(
        self,
        invoice_id: UUID | str,
        target: InvoiceStatus,
        event: str,
        operation: str,
        idempotency_key: str | None,
    ) -> Invoice:
        key = check.identifier(invoice_id, field="invoice_id")
        keyed = idempotency.keyed(self._context, operation, idempotency_key, invoice_id=key)
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Invoice)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            invoice: Invoice = await require(uow.tx, Invoice, key, field="invoice_id")
            status = invoice_transition(invoice.status, target)
            if target == InvoiceStatus.VOID:
                in_flight = await uow.tx.count(
                    Payment,
                    filters={"invoice_id": invoice.id, "status": one_of(charging.OPEN)},
                )
                if in_flight:
                    raise InvalidStateError(
                        f"invoice {invoice.id} has a payment attempt in flight: settle it "
                        "(payments.reconcile) before voiding",
                        field="invoice_id",
                        rule="one_attempt_in_flight",
                    )
            changed = attrs.evolve(
                invoice,
                status=status,
                amount_due=0 if target == InvoiceStatus.VOID else invoice.amount_due,
                voided_at=uow.now if target == InvoiceStatus.VOID else invoice.voided_at,
                updated_at=uow.now,
            )
            updated = await uow.tx.update(changed)
            await uow.record(
                event, updated, changes={"status": [invoice.status.value, status.value]}
            )
            await idempotency.complete(uow, keyed, updated)
        return updated

    async def delete(
        self, invoice_id: UUID | str, *, idempotency_key: str | None = None
    ) -> Invoice:
        """Delete a draft (it never had a number, so the sequence keeps no gap); a finalized
        invoice is voided instead (``InvalidStateError``, rule ``draft_only``)."""
        key = check.identifier(invoice_id, field="invoice_id")
        keyed = idempotency.keyed(self._context, "invoices.delete", idempotency_key, invoice_id=key)
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Invoice)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            invoice: Invoice = await require(uow.tx, Invoice, key, field="invoice_id")
            if invoice.status != InvoiceStatus.DRAFT:
                raise InvalidStateError(
                    f"invoice {invoice.id} is {invoice.status.value}: only a draft is deleted "
                    "(void a finalized one)",
                    field="invoice_id",
                    rule="draft_only",
                )
            deleted = await invoicing.delete_draft(uow, invoice)
            await idempotency.complete(uow, keyed, deleted)
        return deleted

    async def get(self, invoice_id: UUID | str) -> Invoice:
        invoice: Invoice = await self._context.read(
            Invoice, check.identifier(invoice_id, field="invoice_id"), field="invoice_id"
        )
        return invoice

    async def list(
        self,
        *,
        customer_id: UUID | str | None = None,
        subscription_id: UUID | str | None = None,
        status: InvoiceStatus | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Invoice]:
        """Invoices, newest first, by customer, subscription and status."""
        filters = check.id_filters(customer_id=customer_id, subscription_id=subscription_id)
        if status is not None:
            filters["status"] = check.member(
                status, InvoiceStatus, field="status", what="an invoice status"
            )
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(Invoice, filters=filters, limit=limit, cursor=cursor)

    async def lines(
        self, invoice_id: UUID | str, *, limit: int = 100, cursor: str | None = None
    ) -> Page[InvoiceLine]:
        """The invoice's lines in the order they were added (as the invoice reads, and as
        Stripe lists them), ``limit`` (1 to 100) at a time."""
        key = check.identifier(invoice_id, field="invoice_id")
        size = check.integer(limit, field="limit", minimum=1, maximum=100)
        after = None if cursor is None else _line_cursor(cursor)
        async with self._context.unit_of_work(readonly=True) as uow:
            await require(uow.tx, Invoice, key, field="invoice_id")
            every = await _all_lines(uow.tx, key)
        rest = [line for line in every if after is None or line.id > after]
        page = rest[:size]
        more = len(rest) > size
        return Page(items=page, next_cursor=str(page[-1].id) if more else None)

    async def preview(self, subscription_id: UUID | str) -> InvoicePreview:
        """The subscription's next renewal invoice, computed and never stored (Stripe's
        upcoming invoice): its draft's pending proration lines, the next period at its price
        times its quantity, the promo discount by its duration.

        A subscription that will not renew (canceled, expired, paused, or ending at its
        period end), or one the provider bills, has none: ``InvalidStateError``, rule
        ``no_upcoming_invoice``.
        """
        key = check.identifier(subscription_id, field="subscription_id")
        async with self._context.unit_of_work(readonly=True) as uow:
            subscription: Subscription = await require(
                uow.tx, Subscription, key, field="subscription_id"
            )
            if subscription.provider is not None:
                raise InvalidStateError(
                    f"subscription {subscription.id} is billed by the "
                    f"{subscription.provider!r} provider: its upcoming invoice is the "
                    "provider's",
                    field="subscription_id",
                    rule="no_upcoming_invoice",
                )
            if subscription.status in NO_UPCOMING or subscription.cancel_at_period_end:
                raise InvalidStateError(
                    f"subscription {subscription.id} is {subscription.status.value}"
                    + (" and ends at its period end" if subscription.cancel_at_period_end else "")
                    + ": it has no upcoming invoice",
                    field="subscription_id",
                    rule="no_upcoming_invoice",
                )
            draft = await invoicing.find_upcoming(uow, subscription)
            pending = [] if draft is None else await _all_lines(uow.tx, draft.id)
            plan: Plan | None = await uow.tx.get(Plan, subscription.plan_id, include_deleted=True)
            start, end = invoicing.renewal_period(subscription)
            invoice = invoicing.draft_invoice(
                uow,
                customer_id=subscription.customer_id,
                currency=subscription.currency,
                subscription_id=subscription.id,
                tax_rate=None if draft is None else draft.tax_rate,
                period_start=start,
                period_end=end,
            )
            period_line = LineDraft(
                description=plan.name if plan is not None else "Subscription",
                unit_amount=subscription.unit_amount,
                quantity=subscription.quantity,
                price_id=subscription.price_id,
                period_start=start,
                period_end=end,
            )
            # As an invoice reads: the prorations, then the period.
            lines = [attrs.evolve(line, invoice_id=invoice.id) for line in pending]
            lines += invoicing.line_rows(uow, invoice, [period_line])
            promo, _ = await invoicing.invoice_promo(uow, invoice)
            totals = invoicing.totals_with(
                invoice, sum(line.amount for line in lines), promo, subscription
            )
        return InvoicePreview(invoice=invoicing.with_totals(invoice, totals), lines=lines)


async def _all_lines(tx: StorageTransaction, invoice_id: UUID) -> list[InvoiceLine]:
    """Every line of one invoice, oldest first (ids are time-ordered); an invoice holds
    few, so they are read whole."""
    lines = await every(tx, InvoiceLine, {"invoice_id": invoice_id})
    return sorted(lines, key=lambda line: line.id)


def _line_cursor(value: object) -> UUID:
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValidationError("must be a next_cursor this call returned", field="cursor", rule="cursor")


def _lines(value: object) -> list[LineDraft]:
    """``create``'s one-off lines, each checked, named by position (``lines[0].quantity``)."""
    if value is None:
        return []
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise ValidationError("must be a list of lines", field="lines", rule="line_list")
    if len(value) > MAX_LINES:
        raise ValidationError(
            f"must have at most {MAX_LINES} lines", field="lines", rule="max_lines"
        )
    drafts: list[LineDraft] = []
    for position, line in enumerate(value):
        field = f"lines[{position}]"
        if not isinstance(line, Mapping):
            raise ValidationError(
                "must be a mapping with description, unit_amount and quantity",
                field=field,
                rule="line",
            )
        unknown = sorted(str(name) for name in line if name not in LINE_FIELDS)
        if unknown:
            raise ValidationError(
                f"has unknown fields {', '.join(unknown)}: a line has description, "
                "unit_amount and quantity",
                field=field,
                rule="line_fields",
            )
        description = check.text(
            line.get("description"), field=f"{field}.description", max_length=MAX_TEXT
        )
        unit_amount = money.amount(
            line.get("unit_amount"), field=f"{field}.unit_amount", minimum=-money.MAX_AMOUNT
        )
        quantity = check.integer(
            line.get("quantity", 1), field=f"{field}.quantity", minimum=1, maximum=MAX_QUANTITY
        )
        money.amount(
            unit_amount * quantity, field=f"{field}.unit_amount", minimum=-money.MAX_AMOUNT
        )
        drafts.append(
            LineDraft(description=description, unit_amount=unit_amount, quantity=quantity)
        )
    total = sum(line.unit_amount * line.quantity for line in drafts)
    money.amount(total, field="lines", minimum=-money.MAX_AMOUNT)
    return drafts
