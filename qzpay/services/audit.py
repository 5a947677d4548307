"""The audit trail: every change qzpay made, written in the change's own transaction."""

from __future__ import annotations

from uuid import UUID

from qzpay import validation as check
from qzpay.contracts.storage import Page
from qzpay.domain.records import AuditLog
from qzpay.services.context import ServiceContext


class AuditService:
    """``billing.audit``: read the append-only audit log, newest first."""

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def list(
        self,
        *,
        entity_id: UUID | str | None = None,
        entity_type: str | None = None,
        action: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[AuditLog]:
        filters: dict[str, object] = {}
        if entity_id is not None:
            filters["entity_id"] = check.identifier(entity_id, field="entity_id")
        if entity_type is not None:
            filters["entity_type"] = check.key(entity_type, field="entity_type")
        if action is not None:
            filters["action"] = check.key(action, field="action")
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(AuditLog, filters=filters, limit=limit, cursor=cursor)
