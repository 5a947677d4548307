"""Payments, refunds and stored payment methods."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

import attrs

from qzpay.domain.enums import PaymentStatus, RefundStatus
from qzpay.domain.frozen import frozen_mapping, optional_frozen_mapping


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
    """Money taken (or attempted) from a customer; ``refunded_amount`` never exceeds ``amount``.

    One row is one attempt (DESIGN §7): committed ``pending`` before the provider is called,
    with ``idempotency_key`` (the provider's key) derived from the row's own id, then settled.
    ``failure_code`` is provider-neutral (``card_declined``...); ``provider_failure_code`` is
    what the provider said. ``next_action`` is set while ``requires_action``: ``{"type":
    "redirect_to_url", "url": ...}`` and/or a ``client_secret``. ``refunded_amount`` counts
    pending refunds too (as Stripe's ``amount_refunded``): a refund reserves its amount
    before the provider is asked, and a rejected one gives it back. ``due_at`` is when the job
    runner next has work on the payment (reconciling a pending charge or refund).
    """

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
    provider_failure_code: str | None = None
    idempotency_key: str | None = None
    description: str | None = None
    next_action: Mapping[str, str] | None = attrs.field(
        default=None, converter=optional_frozen_mapping
    )
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    due_at: datetime | None = None
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Refund:
    """Money given back on a payment: committed ``pending`` (its amount reserved on the
    payment) before the provider is asked, with the provider key derived from its id."""

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
    failure_code: str | None = None
    idempotency_key: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
