"""Operational records: the audit trail, received webhooks, job runs, idempotency keys.

Audit logs and webhook events are append-only: storage refuses to update or delete them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from qzpay.domain.enums import JobStatus
from qzpay.domain.frozen import frozen_mapping, optional_frozen_mapping


@attrs.frozen(kw_only=True)
class AuditLog:
    """Who changed what, written in the same transaction as the change itself."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    entity_type: str
    entity_id: UUID | None = None
    action: str
    actor: str | None = None
    changes: Mapping[str, Any] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """A provider webhook as received; stored once per (provider, provider_event_id)."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    provider: str
    provider_event_id: str
    type: str
    payload: Mapping[str, Any] = attrs.field(factory=dict, converter=frozen_mapping)
    received_at: datetime
    created_at: datetime


@attrs.frozen(kw_only=True)
class JobExecution:
    id: UUID
    livemode: bool
    tenant_id: str | None = None
    job_name: str
    status: JobStatus
    started_at: datetime
    finished_at: datetime | None = None
    items_processed: int = 0
    error: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=frozen_mapping)
    created_at: datetime
    updated_at: datetime


@attrs.frozen(kw_only=True)
class IdempotencyKey:
    """The first result of a keyed call, replayed for the same key and parameters."""

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    key: str
    operation: str
    request_hash: str
    resource_id: UUID | None = None
    response: Mapping[str, Any] | None = attrs.field(
        default=None, converter=optional_frozen_mapping
    )
    expires_at: datetime | None = None
    created_at: datetime
