"""Deliberately broken storage adapters: each breaks ONE rule the conformance suite checks.

Each ``make_<mutant>`` is a conformance factory (``--qzpay-store
tests.conformance.mutants:make_<mutant>``) that wraps a good adapter, MemoryStorage or
SQLiteStorage, usually by wrapping its transaction object, so that exactly one rule breaks.
``test_suite_catches_mutants.py`` asserts the suite fails each in the right property group.
``make_single_connection`` is not broken: it declares an optional capability unsupported, so
the report must say "not supported" with its reason.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, closing
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import anyio
import anyio.lowlevel
import attrs

from qzpay.adapters import storage_rules as rules
from qzpay.adapters.memory import MemoryStorage, _MemoryTransaction, _Table
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.conformance import Capabilities, StoreHandle, StoreOptions, factories
from qzpay.contracts.storage import Filters, Page, Scope, StoragePort, StorageTransaction
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.registry import spec_for
from qzpay.domain.subscriptions import Subscription

E = TypeVar("E")


# -- wrapping a good store and its transactions ---------------------------------------------


class WrappedTransaction:
    """Delegates every port method to a good transaction; a mutant overrides one."""

    def __init__(self, inner: StorageTransaction) -> None:
        self.inner = inner

    @property
    def scope(self) -> Scope:
        return self.inner.scope

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        return await self.inner.get(kind, id, include_deleted=include_deleted)

    async def get_many(self, *keys: tuple[type[Any], UUID]) -> Sequence[Any | None]:
        return await self.inner.get_many(*keys)

    async def find(
        self, kind: type[E], *, include_deleted: bool = False, **key: object
    ) -> E | None:
        return await self.inner.find(kind, include_deleted=include_deleted, **key)

    async def list(
        self,
        kind: type[E],
        *,
        filters: Filters | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> Page[E]:
        return await self.inner.list(
            kind, filters=filters, limit=limit, cursor=cursor, include_deleted=include_deleted
        )

    async def count(
        self, kind: type[E], *, filters: Filters | None = None, include_deleted: bool = False
    ) -> int:
        return await self.inner.count(kind, filters=filters, include_deleted=include_deleted)

    async def insert(self, entity: E) -> None:
        await self.inner.insert(entity)

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        return await self.inner.update(entity, expected_version=expected_version)

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        await self.inner.soft_delete(kind, id, at=at, expected_version=expected_version)

    async def flush(self) -> None:
        await self.inner.flush()

    async def next_invoice_number(self) -> int:
        return await self.inner.next_invoice_number()

    async def redeem_promo_code(self, usage: PromoCodeUsage) -> PromoCode:
        return await self.inner.redeem_promo_code(usage)

    async def add_refund(self, refund: Refund) -> Payment:
        return await self.inner.add_refund(refund)

    async def claim_due_subscriptions(
        self, *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[Subscription]:
        return await self.inner.claim_due_subscriptions(
            now=now, limit=limit, claimant=claimant, lease=lease
        )

    async def store_idempotency_key(self, record: IdempotencyKey) -> IdempotencyKey:
        return await self.inner.store_idempotency_key(record)


class WrappedStorage:
    """A good store whose transactions come wrapped in ``transaction_class``, and which may
    report another table prefix than the one it really uses."""

    def __init__(
        self,
        inner: StoragePort,
        transaction_class: type[WrappedTransaction] = WrappedTransaction,
        *,
        reported_prefix: str | None = None,
    ) -> None:
        self.inner = inner
        self.transaction_class = transaction_class
        self._reported_prefix = reported_prefix

    @property
    def table_prefix(self) -> str:
        return self._reported_prefix or self.inner.table_prefix

    @property
    def multi_tenant(self) -> bool:
        return self.inner.multi_tenant

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        async with self.inner.transaction(scope, readonly=readonly) as tx:
            yield self.transaction_class(tx)


def _wrapped(
    handle: StoreHandle,
    transaction_class: type[WrappedTransaction],
    *,
    reported_prefix: str | None = None,
) -> StoreHandle:
    storage = WrappedStorage(handle.storage, transaction_class, reported_prefix=reported_prefix)
    return attrs.evolve(handle, storage=storage)


# -- MemoryStorage with another transaction class (the rule lives in its internals) ---------


class MutantMemoryStorage(MemoryStorage):
    """MemoryStorage whose transactions are ``transaction_class``, optionally without the
    database lock (like a SQL database at READ COMMITTED without row locks)."""

    transaction_class: type[_MemoryTransaction] = _MemoryTransaction
    locked = True

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        rules.check_scope(scope, self.multi_tenant)
        lock = self.database.lock if self.locked else anyio.Lock()
        async with lock:
            tx = self.transaction_class(scope, self._tables, self._sequences, readonly=readonly)
            try:
                yield tx
            except BaseException:
                tx.undo()
                raise


def _memory_mutant(options: StoreOptions, storage_class: type[MutantMemoryStorage]) -> StoreHandle:
    good = factories.memory(options)
    assert isinstance(good.storage, MemoryStorage)
    storage = storage_class(
        table_prefix=options.table_prefix,
        multi_tenant=options.multi_tenant,
        database=good.storage.database,
    )
    return attrs.evolve(good, storage=storage)


def _visible_ignoring_tenant(
    tx: _MemoryTransaction, table: _Table, row: Any, deleted: bool
) -> bool:
    return row.livemode is tx.scope.livemode and (
        deleted or not table.spec.soft_delete or row.deleted_at is None
    )


# -- the mutants ---------------------------------------------------------------------------


class _ReturnsDeletedRows(WrappedTransaction):
    """Forgets ``deleted_at IS NULL``: every read includes soft-deleted rows."""

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        return await self.inner.get(kind, id, include_deleted=True)

    async def find(
        self, kind: type[E], *, include_deleted: bool = False, **key: object
    ) -> E | None:
        return await self.inner.find(kind, include_deleted=True, **key)

    async def list(
        self,
        kind: type[E],
        *,
        filters: Filters | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> Page[E]:
        return await self.inner.list(
            kind, filters=filters, limit=limit, cursor=cursor, include_deleted=True
        )

    async def count(
        self, kind: type[E], *, filters: Filters | None = None, include_deleted: bool = False
    ) -> int:
        return await self.inner.count(kind, filters=filters, include_deleted=True)


def make_returns_soft_deleted_rows(options: StoreOptions) -> StoreHandle:
    return _wrapped(factories.memory(options), _ReturnsDeletedRows)


class _TenantBlindReads(_MemoryTransaction):
    """Reads (get, list, count, find by filter, claims) forget the tenant; writes keep it."""

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        table = self._table(kind)
        row = table.rows.get(id)
        if row is None or not _visible_ignoring_tenant(self, table, row, include_deleted):
            return None
        return row  # type: ignore[no-any-return]

    def _matching(self, table: _Table, filters: Filters | None, include_deleted: bool) -> list[Any]:
        items = filters.items() if filters else ()
        return [
            row
            for row in table.rows.values()
            if _visible_ignoring_tenant(self, table, row, include_deleted)
            and all(getattr(row, name) == value for name, value in items)
        ]


class _TenantBlindReadsStorage(MutantMemoryStorage):
    transaction_class = _TenantBlindReads


def make_ignores_tenant_on_reads(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _TenantBlindReadsStorage)


class _TenantBlindWrites(_MemoryTransaction):
    """Updates and deletes find their row by id and livemode alone, whatever its tenant."""

    def _current(self, table: _Table, entity_id: UUID) -> Any:
        row = table.rows.get(entity_id)
        if row is None or not _visible_ignoring_tenant(self, table, row, False):
            raise rules.missing(table.spec, entity_id)
        return row


class _TenantBlindWritesStorage(MutantMemoryStorage):
    transaction_class = _TenantBlindWrites


def make_ignores_tenant_on_updates(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _TenantBlindWritesStorage)


class _LivemodeBlindUnique(_MemoryTransaction):
    """Unique keys are checked across both livemodes, as if livemode were not in the index."""

    def _check_unique(self, table: _Table, row: Any) -> None:
        super()._check_unique(table, row)
        other_side = attrs.evolve(row, livemode=not row.livemode)
        for columns, key in table.index_keys(other_side):
            holder = table.indexes[columns].get(key)
            if holder is not None and holder != row.id:
                raise rules.unique_conflict(table.spec, columns)


class _LivemodeBlindUniqueStorage(MutantMemoryStorage):
    transaction_class = _LivemodeBlindUnique


def make_ignores_livemode_in_unique_check(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _LivemodeBlindUniqueStorage)


def make_ignores_the_prefix(options: StoreOptions) -> StoreHandle:
    """MemoryStorage that always uses ``billing_`` (reads and writes) and reports the
    requested prefix: two prefixes share one set of tables."""
    good = factories.memory(options)
    assert isinstance(good.storage, MemoryStorage)
    rules.table_prefix(options.table_prefix)  # still refuses hostile prefixes
    storage = MemoryStorage(multi_tenant=options.multi_tenant, database=good.storage.database)
    return attrs.evolve(good, storage=WrappedStorage(storage, reported_prefix=options.table_prefix))


def make_writes_outside_the_prefix(options: StoreOptions) -> StoreHandle:
    """SQLiteStorage built with ``x<prefix>`` while reporting ``<prefix>``: it reads back from
    where it wrote, so only the raw view can tell."""
    good = factories.sqlite(options)
    storage = SQLiteStorage(
        factories.sqlite_file(options.test_id),
        table_prefix="x" + options.table_prefix,
        multi_tenant=options.multi_tenant,
    )
    return attrs.evolve(good, storage=WrappedStorage(storage, reported_prefix=options.table_prefix))


class _NoVersionCheck(WrappedTransaction):
    """Every update expects whatever version is stored now: a stale write always wins."""

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        current = await self.inner.get(type(entity), entity.id)  # type: ignore[attr-defined]
        if current is not None and hasattr(current, "version"):
            expected_version = current.version
        return await self.inner.update(entity, expected_version=expected_version)


def make_skips_the_version_check(options: StoreOptions) -> StoreHandle:
    return _wrapped(factories.sqlite(options), _NoVersionCheck)


class _RacyRedemption(_MemoryTransaction):
    """Redeems with a read, a pause, and a blind write: concurrent redemptions all pass."""

    async def redeem_promo_code(self, usage: PromoCodeUsage) -> PromoCode:
        code = await self.get(PromoCode, usage.promo_code_id)
        if code is None:
            raise rules.missing(spec_for(PromoCode), usage.promo_code_id)
        used = await self.count(
            PromoCodeUsage,
            filters={"promo_code_id": code.id, "customer_id": usage.customer_id},
        )
        rules.check_redemption(code, used)
        await anyio.lowlevel.checkpoint()  # another task redeems here, from the same stale read
        await self.insert(usage)
        redeemed = attrs.evolve(
            code, times_redeemed=code.times_redeemed + 1, version=code.version + 1
        )
        self._put(self._table(PromoCode), redeemed)
        return redeemed


class _RacyRedemptionStorage(MutantMemoryStorage):
    transaction_class = _RacyRedemption
    locked = False


def make_redeems_non_atomically(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _RacyRedemptionStorage)


class _DoubleClaim(_MemoryTransaction):
    """Claims every due subscription, including those another claimant holds."""

    async def claim_due_subscriptions(
        self, *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[Subscription]:
        table = self._table(Subscription)
        due = sorted(
            (
                row
                for row in self._matching(table, None, False)
                if row.due_at is not None and row.due_at <= now
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


class _DoubleClaimStorage(MutantMemoryStorage):
    transaction_class = _DoubleClaim


def make_double_claims(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _DoubleClaimStorage)


class _Recording(WrappedTransaction):
    """Remembers every write, so a failed transaction can be half-replayed."""

    def __init__(self, inner: StorageTransaction) -> None:
        super().__init__(inner)
        self.writes: list[Callable[[StorageTransaction], Awaitable[object]]] = []

    async def insert(self, entity: E) -> None:
        await self.inner.insert(entity)
        self.writes.append(lambda tx: tx.insert(entity))

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        updated = await self.inner.update(entity, expected_version=expected_version)
        self.writes.append(lambda tx: tx.update(entity, expected_version=expected_version))
        return updated

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        await self.inner.soft_delete(kind, id, at=at, expected_version=expected_version)
        self.writes.append(lambda tx: tx.soft_delete(kind, id, at=at))


class _PartialWrites(WrappedStorage):
    """When a transaction fails, writes what it had written so far anyway (one by one, each
    in its own transaction, skipping those the database refuses): a partial write."""

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        recording: _Recording | None = None
        try:
            async with self.inner.transaction(scope, readonly=readonly) as tx:
                recording = _Recording(tx)
                yield recording
        except BaseException:
            if recording is not None:
                with anyio.CancelScope(shield=True):
                    await self._replay(scope, recording.writes)
            raise

    async def _replay(
        self, scope: Scope, writes: list[Callable[[StorageTransaction], Awaitable[object]]]
    ) -> None:
        for write in writes:
            try:
                async with self.inner.transaction(scope) as again:
                    await write(again)
            except Exception:  # refused by the database: keep the rest
                continue


def make_leaves_partial_writes(options: StoreOptions) -> StoreHandle:
    good = factories.sqlite(options)
    return attrs.evolve(good, storage=_PartialWrites(good.storage))


class _HardDelete(WrappedTransaction):
    """``soft_delete`` removes the row for real (a DELETE once the transaction commits):
    it is gone, include_deleted or not."""

    def __init__(self, inner: StorageTransaction) -> None:
        super().__init__(inner)
        self.deleted: list[tuple[str, UUID]] = []

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        await self.inner.soft_delete(kind, id, at=at, expected_version=expected_version)
        self.deleted.append((spec_for(kind).table, id))


class _HardDeletes(WrappedStorage):
    def __init__(self, inner: SQLiteStorage) -> None:
        super().__init__(inner)
        self.sqlite = inner

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        async with self.inner.transaction(scope, readonly=readonly) as tx:
            wrapped = _HardDelete(tx)
            yield wrapped
        if wrapped.deleted:
            await anyio.to_thread.run_sync(self._delete, wrapped.deleted)

    def _delete(self, rows: list[tuple[str, UUID]]) -> None:
        with closing(sqlite3.connect(self.sqlite.path, timeout=30)) as connection, connection:
            for table, id in rows:
                connection.execute(
                    f"DELETE FROM {self.sqlite.table_prefix}{table} WHERE id = ?", (id.hex,)
                )


def make_hard_deletes(options: StoreOptions) -> StoreHandle:
    good = factories.sqlite(options)
    assert isinstance(good.storage, SQLiteStorage)
    return attrs.evolve(good, storage=_HardDeletes(good.storage))


def make_single_connection(options: StoreOptions) -> StoreHandle:
    """Not broken: a MemoryStorage that declares it cannot share a database across stores."""
    return attrs.evolve(
        factories.memory(options),
        capabilities=Capabilities(
            multiple_connections="this store keeps its rows in one process's memory"
        ),
    )


def make_declares_tenancy_unsupported(options: StoreOptions) -> StoreHandle:
    """Not allowed: tenancy is mandatory, so building the capabilities raises."""
    return attrs.evolve(
        factories.memory(options),
        capabilities=Capabilities(tenancy="we have only one customer"),
    )
