"""Hosted checkout sessions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from qzpay.domain.enums import CheckoutStatus
from qzpay.domain.frozen import frozen_mapping, frozen_tuple


@attrs.frozen(kw_only=True)
class Checkout:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID | None = None
    status: CheckoutStatus
    mode: str
    line_items: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=frozen_tuple)
    amount: int = 0
    currency: str
    success_url: str
    cancel_url: str
    url: str | None = None
    provider: str | None = None
    provider_id: str | None = None
    expires_at: datetime
    completed_at: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
