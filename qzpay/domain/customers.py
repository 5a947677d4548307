"""Customers and their references at payment providers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

import attrs

from qzpay.domain.frozen import frozen_mapping


@attrs.frozen(kw_only=True)
class Customer:
    """Someone who pays; ``external_id`` links it to the application's own user."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    email: str
    name: str | None = None
    external_id: str | None = None
    phone: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@attrs.frozen(kw_only=True)
class CustomerProviderRef:
    """The customer's id at one provider: a row per (provider, provider_customer_id).

    Generic on purpose: a third-party provider needs no new column.
    """

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    customer_id: UUID
    provider: str
    provider_customer_id: str
    created_at: datetime
