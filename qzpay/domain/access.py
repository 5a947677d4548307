"""Entitlements (features a customer may use), limits (how much), and metered usage."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

import attrs

from qzpay.domain.enums import UsageAction
from qzpay.domain.frozen import frozen_mapping


@attrs.frozen(kw_only=True)
class Entitlement:
    """A feature key (``"reports"``) that plans and add-ons grant."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    key: str
    name: str
    description: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class CustomerEntitlement:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    entitlement_key: str
    source: str
    source_id: UUID | None = None
    granted_at: datetime
    expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Limit:
    """A countable allowance key (``"seats"``) with an optional default maximum."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    key: str
    name: str
    description: str | None = None
    default_value: int | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class CustomerLimit:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    limit_key: str
    max_value: int
    current_value: int = 0
    source: str
    source_id: UUID | None = None
    reset_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


@attrs.frozen(kw_only=True)
class UsageRecord:
    """One reported quantity of a metered key; ``idempotency_key`` makes reports safe to retry."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    subscription_id: UUID | None = None
    metric_key: str
    quantity: int
    action: UsageAction = UsageAction.INCREMENT
    occurred_at: datetime
    idempotency_key: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
