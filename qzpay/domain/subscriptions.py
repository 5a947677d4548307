"""Subscriptions and the add-ons attached to them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

import attrs

from qzpay.domain.enums import Interval, SubscriptionStatus
from qzpay.domain.frozen import frozen_mapping, optional_frozen_mapping


@attrs.frozen(kw_only=True)
class Subscription:
    """A customer's recurring purchase of a price.

    Periods are computed from ``billing_anchor`` (never from the previous period's end), so
    a subscription anchored on the 31st bills on the last day of short months and on the
    31st again afterwards.

    A provider-managed one (``provider`` set) is never due: the provider renews and dunns
    it, and qzpay keeps a mirror.

    ``due_at`` is when the job runner next has work on it (trial end, period end, a dunning
    retry); a runner claims it by setting ``claimed_by``/``claimed_until`` (a lease), so two
    runners never work on the same subscription at once.
    """

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    plan_id: UUID
    price_id: UUID
    status: SubscriptionStatus
    quantity: int = 1
    currency: str
    unit_amount: int
    interval: Interval
    interval_count: int = 1
    billing_anchor: datetime
    current_period_start: datetime
    current_period_end: datetime
    trial_start: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    paused_at: datetime | None = None
    resumes_at: datetime | None = None
    """When a paused subscription resumes by itself (``None``: only by ``resume``)."""
    past_due_at: datetime | None = None
    """When the renewal that made it past due failed: dunning retries count from here."""
    dunning_attempts: int = 0
    """Retries made since ``past_due_at`` (0 while not past due)."""
    trial_reminded_at: datetime | None = None
    """When ``subscription.trial_will_end`` was sent for the current trial."""
    default_payment_method_id: UUID | None = None
    promo_code_id: UUID | None = None
    provider: str | None = None
    """Set on a provider-managed subscription (``managed_by="provider"``): the provider bills
    it, and qzpay mirrors its state from the provider's webhooks; ``None`` when qzpay
    renews it itself."""
    provider_id: str | None = None
    """The provider's id for it, once the provider has answered its creation."""
    next_action: Mapping[str, str] | None = attrs.field(
        default=None, converter=optional_frozen_mapping
    )
    """While a provider-managed one is ``incomplete`` and waits for the customer:
    ``{"type": "redirect_to_url", "url": ...}`` (a MercadoPago preapproval to authorize)."""
    due_at: datetime | None = None
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class SubscriptionAddon:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    subscription_id: UUID
    addon_id: UUID
    quantity: int = 1
    unit_amount: int
    currency: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
