"""What is sold: plans, their prices, and add-ons."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

import attrs

from qzpay.domain.enums import Interval
from qzpay.domain.frozen import frozen_mapping, frozen_tuple


@attrs.frozen(kw_only=True)
class Plan:
    """A product tier; grants ``entitlements`` (feature keys) and ``limits`` (key → max)."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    name: str
    description: str | None = None
    active: bool = True
    entitlements: tuple[str, ...] = attrs.field(default=(), converter=frozen_tuple)
    limits: Mapping[str, int] = attrs.field(factory=dict, converter=frozen_mapping)
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Price:
    """How much a plan costs, in what currency, every how long.

    Prices are never edited in place (only archived with ``active=False``), as in Stripe,
    so a subscription's price always means what it meant when it was sold.
    """

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    plan_id: UUID
    unit_amount: int
    currency: str
    interval: Interval
    interval_count: int = 1
    trial_days: int | None = None
    nickname: str | None = None
    active: bool = True
    provider: str | None = None
    """The provider that also has this price (``provider_id`` names it there), so a
    subscription to it may be provider-managed; ``None`` for a price only qzpay bills."""
    provider_id: str | None = None
    """The provider's id for the price (Stripe's ``price_...``, a MercadoPago preapproval
    plan id)."""
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime


@attrs.frozen(kw_only=True)
class Addon:
    """An extra that can be attached to subscriptions (more seats, a feature pack)."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    name: str
    description: str | None = None
    unit_amount: int
    currency: str
    interval: Interval
    interval_count: int = 1
    active: bool = True
    entitlements: tuple[str, ...] = attrs.field(default=(), converter=frozen_tuple)
    limits: Mapping[str, int] = attrs.field(factory=dict, converter=frozen_mapping)
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
