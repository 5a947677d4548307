"""Invoices, their lines, and the payments applied to them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import attrs

from qzpay.domain.enums import InvoiceStatus
from qzpay.domain.frozen import frozen_mapping


@attrs.frozen(kw_only=True)
class Invoice:
    """A bill: ``total = subtotal - discount + tax``; ``number`` is gapless per tenant and livemode."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    subscription_id: UUID | None = None
    number: str | None = None
    status: InvoiceStatus
    currency: str
    subtotal: int = 0
    discount: int = 0
    tax: int = 0
    total: int = 0
    amount_paid: int = 0
    amount_due: int = 0
    tax_rate: Decimal | None = None
    """The rate ``tax`` was computed with (``Decimal("0.21")``), rounded once."""
    attempt_count: int = 0
    """Payment attempts made on it (a dunning retry is one more)."""
    finalized_at: datetime | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    due_date: datetime | None = None
    paid_at: datetime | None = None
    voided_at: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class InvoiceLine:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    invoice_id: UUID
    description: str
    quantity: int = 1
    unit_amount: int
    amount: int
    currency: str
    price_id: UUID | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    proration: bool = False
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime


@attrs.frozen(kw_only=True)
class InvoicePayment:
    """Links a payment to the invoice it paid (partly or wholly)."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    invoice_id: UUID
    payment_id: UUID
    amount_applied: int
    currency: str
    applied_at: datetime
    created_at: datetime
