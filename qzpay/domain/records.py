"""Operational records: the audit trail, received webhooks, job runs, idempotency keys.

Audit logs and webhook events are append-only: storage refuses to update or delete them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from qzpay.domain.enums import JobStatus, WebhookEventStatus
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
class WebhookProcessing:
    """Where applying one stored webhook stands (``webhook_events`` rows never change).

    ``received`` until applied; then ``processed``, ``ignored`` (nothing of qzpay's to
    apply), or ``failed`` with its ``error``, due again (``due_at``) for the job runner to
    retry, ``attempts`` counting the tries. A ``received`` row is due too, a little after
    it was stored: a process that died between storing and applying is finished by a run.
    """

    id: UUID
    livemode: bool
    tenant_id: str | None = None
    webhook_event_id: UUID
    provider: str
    provider_event_id: str
    type: str
    status: WebhookEventStatus = WebhookEventStatus.RECEIVED
    attempts: int = 0
    error: str | None = None
    processed_at: datetime | None = None
    due_at: datetime | None = None
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    version: int = 1
    created_at: datetime
    updated_at: datetime


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
