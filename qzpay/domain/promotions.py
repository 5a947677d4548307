"""Promo codes and their redemptions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import attrs

from qzpay.domain.enums import DiscountType, PromoDuration
from qzpay.domain.frozen import frozen_mapping, frozen_tuple


@attrs.frozen(kw_only=True)
class PromoCode:
    """A code customers type; redeemed atomically while under its limits."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    code: str
    discount_type: DiscountType
    percent_off: Decimal | None = None
    amount_off: int | None = None
    currency: str | None = None
    trial_days: int | None = None
    duration: PromoDuration = PromoDuration.ONCE
    duration_in_periods: int | None = None
    """For ``repeating``: how many billing periods the discount applies to."""
    minimum_amount: int | None = None
    """The smallest amount (in ``currency``) the code applies to."""
    first_time_only: bool = False
    """Only for customers who never paid before."""
    max_redemptions: int | None = None
    max_redemptions_per_customer: int | None = None
    times_redeemed: int = 0
    expires_at: datetime | None = None
    plan_ids: tuple[str, ...] = attrs.field(default=(), converter=frozen_tuple)
    active: bool = True
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class PromoCodeUsage:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    promo_code_id: UUID
    customer_id: UUID
    subscription_id: UUID | None = None
    discount_amount: int = 0
    currency: str | None = None
    created_at: datetime
