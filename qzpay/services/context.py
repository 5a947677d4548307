"""What every service call runs in: the ports, the scope, and the unit of work.

A service call opens one unit of work: one storage transaction for its scope. Each change it
makes is recorded with ``uow.record(...)``, which writes the audit row in the same
transaction and queues the event; events are published only after the commit, so a handler
never sees a change that was rolled back, and a failing handler never breaks the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from uuid import UUID

import attrs

from qzpay.contracts.clock import Clock
from qzpay.contracts.events import Event, EventBus
from qzpay.contracts.provider import PaymentProvider
from qzpay.contracts.storage import Scope, StoragePort, StorageTransaction
from qzpay.domain.records import AuditLog
from qzpay.domain.registry import spec_for
from qzpay.errors import ConfigurationError, NotFoundError
from qzpay.event_names import EVENTS
from qzpay.ids import new_id
from qzpay.settings import DEFAULTS, Settings
from qzpay.timestamps import aware_utc

E = TypeVar("E")


class UnitOfWork:
    """One transaction plus the audit rows and events of the changes made in it."""

    __slots__ = ("events", "now", "scope", "tx")

    def __init__(self, tx: StorageTransaction, scope: Scope, now: datetime) -> None:
        self.tx = tx
        self.scope = scope
        self.now = now
        self.events: list[Event] = []

    async def record(
        self,
        event_type: str,
        entity: Any,
        *,
        changes: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        """Audit ``entity``'s change (``customer.created``...) and queue its event.

        ``event_type`` must be a name of the event registry (``qzpay.event_names``), so every
        event emitted is one an app can subscribe to and ``docs/events.md`` describes; any
        other name is a bug in qzpay, refused with ``ValueError`` before anything is written.
        """
        if event_type not in EVENTS:
            raise ValueError(f"{event_type!r} is not in the event registry (qzpay.event_names)")
        entity_type, _, action = event_type.rpartition(".")
        # The event carries its audit row's id: a consumer can find the row it came from.
        record_id = new_id()
        await self.tx.insert(
            AuditLog(
                id=record_id,
                livemode=self.scope.livemode,
                tenant_id=self.scope.tenant_id,
                entity_type=entity_type,
                entity_id=entity.id,
                action=action,
                actor=actor,
                changes=changes or {},
                created_at=self.now,
            )
        )
        self.events.append(
            Event(
                id=record_id,
                type=event_type,
                data=entity,
                livemode=self.scope.livemode,
                tenant_id=self.scope.tenant_id,
                created_at=self.now,
            )
        )


@attrs.frozen(kw_only=True)
class ServiceContext:
    """The ports and the scope a service works with; built once by ``create_billing``."""

    storage: StoragePort
    provider: PaymentProvider
    clock: Clock
    events: EventBus
    livemode: bool
    tenant_id: str | None
    multi_tenant: bool
    settings: Settings = DEFAULTS
    _scope: Scope | None = attrs.field(init=False, default=None, eq=False, repr=False)
    """Made once: every unit of work asks for it."""

    def __attrs_post_init__(self) -> None:
        if not (self.multi_tenant and self.tenant_id is None):
            scope = Scope(livemode=self.livemode, tenant_id=self.tenant_id)
            object.__setattr__(self, "_scope", scope)

    def scope(self) -> Scope:
        if self._scope is None:
            raise ConfigurationError(
                "this billing instance is multi-tenant: call billing.for_tenant(tenant_id) first"
            )
        return self._scope

    def require_capability(self, name: str) -> None:
        """Refuse, before anything is written, what the provider says it cannot do
        (``ProviderCapabilities``), naming the capability, instead of faking it."""
        if not getattr(self.provider.capabilities, name):
            raise ConfigurationError(
                f"the {self.provider.name!r} provider cannot do this: its capabilities say "
                f"{name}=False",
                field="provider",
                rule=f"capability:{name}",
            )

    def now(self) -> datetime:
        """The clock's moment in UTC; a naive one (a third-party clock's bug) is refused."""
        return aware_utc(self.clock.now(), field="clock")

    def unit_of_work(self, *, readonly: bool = False) -> AbstractAsyncContextManager[UnitOfWork]:
        """One storage transaction in this context's scope, at one "now"; its events are
        published once it has committed."""
        return _Working(self, readonly)

    async def read(self, kind: type[Any], entity_id: UUID, *, field: str = "id") -> Any:
        """One entity by id in its own short read transaction, or ``NotFoundError``."""
        async with self.unit_of_work(readonly=True) as uow:
            return await require(uow.tx, kind, entity_id, field=field)


class _Working:
    """``ServiceContext.unit_of_work``. A class, not a generator context manager: every
    service call enters one to three of these, and an async generator costs several times
    more to enter and leave."""

    __slots__ = ("_context", "_opened", "_readonly", "_uow")

    def __init__(self, context: ServiceContext, readonly: bool) -> None:
        self._context = context
        self._readonly = readonly

    async def __aenter__(self) -> UnitOfWork:
        context = self._context
        scope = context.scope()
        now = context.now()
        self._opened = context.storage.transaction(scope, readonly=self._readonly)
        self._uow = UnitOfWork(await self._opened.__aenter__(), scope, now)
        return self._uow

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if await self._opened.__aexit__(kind, error, traceback):
            return True  # the storage swallowed the error: nothing was committed
        if kind is None:
            for event in self._uow.events:
                await self._context.events.publish(event)
        return False


async def every(
    tx: StorageTransaction,
    kind: type[E],
    filters: Mapping[str, Any],
    *,
    include_deleted: bool = False,
) -> list[E]:
    """All rows matching ``filters``, page by page (newest first): for sets known to be
    small or bounded by a batch (an invoice's lines, a claimed batch's cards). Rows by many
    ids are ``{"id": one_of(ids)}``: one indexed read, where ``get_many`` joins one lookup
    per key (for a few rows of different kinds)."""
    rows: list[E] = []
    cursor: str | None = None
    while True:
        page = await tx.list(
            kind, filters=dict(filters), limit=100, cursor=cursor, include_deleted=include_deleted
        )
        rows.extend(page.items)
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


async def require(tx: StorageTransaction, kind: type[Any], entity_id: UUID, *, field: str) -> Any:
    """The entity, or a ``NotFoundError`` that names the argument that pointed at it."""
    entity = await tx.get(kind, entity_id)
    if entity is None:
        raise missing(tx, kind, entity_id, field=field)
    return entity


def missing(
    tx: StorageTransaction, kind: type[Any], entity_id: UUID, *, field: str
) -> NotFoundError:
    """The error for an id that names nothing in this livemode and tenant.

    The kind is named in words (``payment method``), as a user reading the message says it.
    """
    return NotFoundError(
        f"no {spec_for(kind).label} with id {entity_id} in "
        f"{'live' if tx.scope.livemode else 'test'} mode"
        + (f" and tenant {tx.scope.tenant_id!r}" if tx.scope.tenant_id else ""),
        field=field,
        rule="exists",
    )
