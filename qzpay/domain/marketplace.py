"""Marketplace vendors and what they are paid out."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import attrs

from qzpay.domain.enums import PayoutStatus
from qzpay.domain.frozen import frozen_mapping


@attrs.frozen(kw_only=True)
class Vendor:
    """A seller on a marketplace; ``commission_rate`` is the platform's percentage."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    name: str
    email: str | None = None
    external_id: str | None = None
    commission_rate: Decimal = Decimal(0)
    currency: str | None = None
    provider: str | None = None
    provider_account_id: str | None = None
    active: bool = True
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class VendorPayout:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    vendor_id: UUID
    amount: int
    currency: str
    status: PayoutStatus
    period_start: datetime | None = None
    period_end: datetime | None = None
    paid_at: datetime | None = None
    provider: str | None = None
    provider_id: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
