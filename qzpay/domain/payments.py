"""Payments, refunds and stored payment methods."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

import attrs

from qzpay.domain.enums import PaymentStatus, RefundStatus
from qzpay.domain.frozen import frozen_mapping


@attrs.frozen(kw_only=True)
class PaymentMethod:
    """A card or account stored at the provider; qzpay keeps only its reference and display data."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    provider: str
    provider_id: str
    type: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    is_default: bool = False
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Payment:
    """Money taken (or attempted) from a customer; ``refunded_amount`` never exceeds ``amount``."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    subscription_id: UUID | None = None
    invoice_id: UUID | None = None
    payment_method_id: UUID | None = None
    amount: int
    currency: str
    status: PaymentStatus
    refunded_amount: int = 0
    provider: str
    provider_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    idempotency_key: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Refund:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    payment_id: UUID
    amount: int
    currency: str
    status: RefundStatus
    reason: str | None = None
    provider: str
    provider_id: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
