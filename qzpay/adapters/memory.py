"""MemoryStorage: the whole storage contract with no database.

A real, supported adapter (users test their apps with it, and it runs on trio as well as
asyncio), not a test double: it keeps prefixes, tenancy, livemode, soft deletes, unique keys,
references, optimistic locking and all-or-nothing transactions exactly as the SQL adapters
do. It is also the worked example of ``docs/adapter-authors.md``.

Transactions are serialized by one lock per ``MemoryDatabase`` and undone from a log on
failure, which gives the strongest isolation there is at the price of no parallelism.

>>> import anyio
>>> from qzpay import create_billing
>>> from qzpay.adapters.fake import FakeProvider
>>> async def main() -> str:
...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
...         customer = await billing.customers.create(email="ann@example.com")
...         return customer.email
>>> anyio.run(main)
'ann@example.com'
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import anyio
import attrs

from qzpay.adapters import serialized
from qzpay.adapters import storage_rules as rules
from qzpay.contracts.storage import Filters, Page, Scope, StorageTransaction
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.registry import SPECS, EntitySpec, spec_for
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConfigurationError
from qzpay.timestamps import aware_utc

E = TypeVar("E")
_Key = tuple[object, ...]


class _Table:
    """Rows of one kind under one prefix, with an index per unique key of live rows."""

    __slots__ = ("indexes", "rows", "spec")

    def __init__(self, spec: EntitySpec[Any]) -> None:
        self.spec = spec
        self.rows: dict[UUID, Any] = {}
        self.indexes: dict[tuple[str, ...], dict[_Key, UUID]] = {key: {} for key in spec.unique}

    def index_keys(self, row: Any) -> list[tuple[tuple[str, ...], _Key]]:
        """The unique-index entries a row occupies: none once soft-deleted, none for NULLs."""
        if self.spec.soft_delete and row.deleted_at is not None:
            return []
        entries = []
        for columns in self.spec.unique:
            values = tuple(getattr(row, column) for column in columns)
            if None not in values:
                entries.append((columns, (row.livemode, row.tenant_id, *values)))
        return entries


class MemoryDatabase:
    """What several ``MemoryStorage`` instances can share, like one SQL database.

    Two stores on one ``MemoryDatabase`` with different prefixes never see each other's
    rows; with the same prefix they share them.
    """

    def __init__(self) -> None:
        self.tables: dict[str, _Table] = {}
        self.counters: dict[str, dict[tuple[bool, str | None], int]] = {}
        self.lock = anyio.Lock()

    def sequences(self, prefix: str) -> dict[tuple[bool, str | None], int]:
        """Invoice number counters per (livemode, tenant) under one prefix."""
        return self.counters.setdefault(prefix, {})

    def table(self, prefix: str, spec: EntitySpec[Any]) -> _Table:
        name = prefix + spec.table
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = _Table(spec)
        return table


class MemoryStorage:
    """Storage in process memory; see the module docstring."""

    def __init__(
        self,
        *,
        table_prefix: str = "billing_",
        multi_tenant: bool = False,
        database: MemoryDatabase | None = None,
    ) -> None:
        self._prefix = rules.table_prefix(table_prefix)
        self._multi_tenant = multi_tenant
        self._database = database if database is not None else MemoryDatabase()
        self._tables: dict[type[Any], _Table] = {
            spec.kind: self._database.table(self._prefix, spec) for spec in SPECS
        }
        self._sequences = self._database.sequences(self._prefix)

    @property
    def table_prefix(self) -> str:
        return self._prefix

    @property
    def multi_tenant(self) -> bool:
        return self._multi_tenant

    @property
    def database(self) -> MemoryDatabase:
        return self._database

    async def open(self) -> None:
        """Nothing to connect to: the tables exist from construction."""

    async def close(self) -> None:
        """Rows stay in the ``MemoryDatabase`` until it is garbage-collected."""

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        rules.check_scope(scope, self._multi_tenant)
        async with self._database.lock:
            transaction = _MemoryTransaction(
                scope, self._tables, self._sequences, readonly=readonly
            )
            try:
                yield transaction
            except BaseException:
                transaction.undo()
                raise


class _MemoryTransaction:
    __slots__ = ("_readonly", "_scope", "_sequences", "_tables", "_undo")

    def __init__(
        self,
        scope: Scope,
        tables: dict[type[Any], _Table],
        sequences: dict[tuple[bool, str | None], int],
        *,
        readonly: bool,
    ) -> None:
        self._scope = scope
        self._tables = tables
        self._sequences = sequences
        self._readonly = readonly
        self._undo: list[Callable[[], None]] = []

    @property
    def scope(self) -> Scope:
        return self._scope

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    # -- reads -------------------------------------------------------------------------

    def _visible(self, table: _Table, row: Any, include_deleted: bool) -> bool:
        return (
            row.livemode is self._scope.livemode
            and row.tenant_id == self._scope.tenant_id
            and (include_deleted or not table.spec.soft_delete or row.deleted_at is None)
        )

    def _table(self, kind: type[Any]) -> _Table:
        table = self._tables.get(kind)
        if table is None:
            spec_for(kind)  # raises the clear TypeError
            raise AssertionError(kind)
        return table

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        table = self._table(kind)
        row = table.rows.get(id)
        if row is None or not self._visible(table, row, include_deleted):
            return None
        return row  # type: ignore[no-any-return]

    async def get_many(self, *keys: tuple[type[Any], UUID]) -> Sequence[Any | None]:
        return [await self.get(kind, entity_id) for kind, entity_id in keys]

    def _matching(self, table: _Table, filters: Filters | None, include_deleted: bool) -> list[Any]:
        rules.check_filters(table.spec, filters)
        items = filters.items() if filters else ()
        return [
            row
            for row in table.rows.values()
            if self._visible(table, row, include_deleted)
            and all(getattr(row, name) == value for name, value in items)
        ]

    async def find(
        self, kind: type[E], *, include_deleted: bool = False, **key: object
    ) -> E | None:
        table = self._table(kind)
        columns = tuple(key)
        index = table.indexes.get(columns)
        # The index holds no NULLs (they never collide), so a None in the key needs a scan.
        if index is not None and not include_deleted and None not in key.values():
            found = index.get((self._scope.livemode, self._scope.tenant_id, *key.values()))
            return None if found is None else table.rows[found]
        rows = self._matching(table, key, include_deleted)
        return max(rows, key=lambda row: row.id) if rows else None

    async def list(
        self,
        kind: type[E],
        *,
        filters: Filters | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> Page[E]:
        limit = rules.page_size(limit)
        before = rules.decode_cursor(cursor) if cursor is not None else None
        rows = sorted(
            (
                row
                for row in self._matching(self._table(kind), filters, include_deleted)
                if before is None or row.id < before
            ),
            key=lambda row: row.id,
            reverse=True,
        )
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items=items, next_cursor=rules.encode_cursor(items[-1].id) if more else None)

    async def count(
        self, kind: type[E], *, filters: Filters | None = None, include_deleted: bool = False
    ) -> int:
        return len(self._matching(self._table(kind), filters, include_deleted))

    # -- writes ------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._readonly:
            raise ConfigurationError("this transaction was opened readonly")

    def _check_references(self, table: _Table, row: Any) -> None:
        for column, target in table.spec.references.items():
            value = getattr(row, column)
            if value is None:
                continue
            target_table = self._tables[_KIND_BY_TABLE[target]]
            referenced = target_table.rows.get(value)
            if referenced is None or not self._visible(target_table, referenced, True):
                raise rules.dangling(table.spec, column)

    def _check_unique(self, table: _Table, row: Any) -> None:
        for columns, key in table.index_keys(row):
            holder = table.indexes[columns].get(key)
            if holder is not None and holder != row.id:
                raise rules.unique_conflict(table.spec, columns)

    def _put(self, table: _Table, row: Any) -> None:
        """Store ``row`` (new or replacing), keeping indexes and the undo log in step."""
        previous = table.rows.get(row.id)
        if previous is not None:
            for columns, key in table.index_keys(previous):
                del table.indexes[columns][key]
        for columns, key in table.index_keys(row):
            table.indexes[columns][key] = row.id
        table.rows[row.id] = row

        def undo() -> None:
            for columns, key in table.index_keys(row):
                del table.indexes[columns][key]
            if previous is None:
                del table.rows[row.id]
            else:
                table.rows[row.id] = previous
                for columns, key in table.index_keys(previous):
                    table.indexes[columns][key] = previous.id

        self._undo.append(undo)

    async def insert(self, entity: E) -> None:
        self._check_writable()
        table = self._table(type(entity))
        rules.check_entity_scope(entity, self._scope)
        rules.check_timestamps(entity)
        if entity.id in table.rows:  # type: ignore[attr-defined]
            raise rules.unique_conflict(table.spec, ("id",))
        self._check_unique(table, entity)
        self._check_references(table, entity)
        self._put(table, entity)

    def _current(self, table: _Table, entity_id: UUID) -> Any:
        row = table.rows.get(entity_id)
        if row is None or not self._visible(table, row, include_deleted=False):
            raise rules.missing(table.spec, entity_id)
        return row

    def _check_version(self, table: _Table, current: Any, expected: int | None) -> None:
        if table.spec.versioned and expected is not None and current.version != expected:
            raise rules.stale(table.spec, current.id, expected)

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        self._check_writable()
        table = self._table(type(entity))
        rules.refuse_append_only(table.spec, "updated")
        rules.check_entity_scope(entity, self._scope)
        rules.check_timestamps(entity)
        current = self._current(table, entity.id)  # type: ignore[attr-defined]
        changes: dict[str, Any] = {"created_at": current.created_at}
        if table.spec.versioned:
            expected = entity.version if expected_version is None else expected_version  # type: ignore[attr-defined]
            self._check_version(table, current, expected)
            changes["version"] = current.version + 1
        updated = attrs.evolve(entity, **changes)  # type: ignore[misc]
        self._check_unique(table, updated)
        self._check_references(table, updated)
        self._put(table, updated)
        return updated

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        self._check_writable()
        table = self._table(kind)
        rules.refuse_not_deletable(table.spec)
        at = aware_utc(at, field="at")
        current = self._current(table, id)
        changes: dict[str, Any] = {"deleted_at": at}
        if "updated_at" in table.spec.fields:
            changes["updated_at"] = at
        if table.spec.versioned:
            self._check_version(table, current, expected_version)
            changes["version"] = current.version + 1
        self._put(table, attrs.evolve(current, **changes))

    async def flush(self) -> None:
        """Writes are applied at once; nothing is buffered."""

    # -- atomic operations: the database lock makes each read-check-write atomic --------

    async def next_invoice_number(self) -> int:
        self._check_writable()
        key = (self._scope.livemode, self._scope.tenant_id)
        sequences = self._sequences
        previous = sequences.get(key, 0)
        sequences[key] = previous + 1

        def undo() -> None:
            if previous:
                sequences[key] = previous
            else:
                del sequences[key]

        self._undo.append(undo)
        return previous + 1

    async def redeem_promo_code(self, usage: PromoCodeUsage) -> PromoCode:
        return await serialized.redeem_promo_code(self, usage)

    async def add_refund(self, refund: Refund) -> Payment:
        return await serialized.add_refund(self, refund)

    async def claim_due_subscriptions(
        self, *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[Subscription]:
        self._check_writable()
        limit = rules.claim_size(limit)
        table = self._table(Subscription)
        due = sorted(
            (
                row
                for row in self._matching(table, None, False)
                if row.due_at is not None
                and row.due_at <= now
                and (row.claimed_until is None or row.claimed_until <= now)
            ),
            key=lambda row: (row.due_at, row.id),
        )[:limit]
        claimed = []
        for row in due:
            held = attrs.evolve(
                row, claimed_by=claimant, claimed_until=now + lease, version=row.version + 1
            )
            self._put(table, held)
            claimed.append(held)
        return claimed

    async def store_idempotency_key(self, record: IdempotencyKey) -> IdempotencyKey:
        return await serialized.store_idempotency_key(self, record)


_KIND_BY_TABLE: dict[str, type[Any]] = {spec.table: spec.kind for spec in SPECS}
