"""Deliberately broken storage adapters: each breaks ONE rule the conformance suite checks.

Each ``make_<mutant>`` is a conformance factory (``--qzpay-store
tests.conformance.mutants:make_<mutant>``) that wraps a good adapter, MemoryStorage or
SQLiteStorage, usually by wrapping its transaction object or subclassing MemoryStorage's,
so that exactly one rule breaks. ``test_suite_catches_mutants.py`` asserts the suite fails
each in the right property group and in no other. ``make_single_connection`` is not broken:
it declares an optional capability unsupported, so the report must say "not supported" with
its reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import anyio
import anyio.lowlevel
import attrs

from qzpay.adapters import storage_rules as rules
from qzpay.adapters.memory import (
    MemoryStorage,
    _Entries,
    _MemorySweep,
    _MemoryTransaction,
    _Table,
)
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.conformance import Capabilities, StoreHandle, StoreOptions, factories
from qzpay.contracts.filters import Condition, Op, matches
from qzpay.contracts.storage import (
    Filters,
    Group,
    Page,
    Scope,
    StoragePort,
    StorageTransaction,
    TenantSweep,
)
from qzpay.domain.registry import EntitySpec
from qzpay.errors import StorageError

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

    async def aggregate(
        self,
        kind: type[E],
        *,
        group_by: Sequence[str] = (),
        sums: Sequence[str] = (),
        filters: Filters | None = None,
        include_deleted: bool = False,
    ) -> Sequence[Group]:
        return await self.inner.aggregate(
            kind, group_by=group_by, sums=sums, filters=filters, include_deleted=include_deleted
        )

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

    async def claim(
        self, kind: type[E], *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[E]:
        return await self.inner.claim(kind, now=now, limit=limit, claimant=claimant, lease=lease)

    async def increment(
        self,
        kind: type[E],
        id: UUID,
        column: str,
        by: int,
        *,
        at_most: int | str | None = None,
        at: datetime | None = None,
    ) -> E | None:
        return await self.inner.increment(kind, id, column, by, at_most=at_most, at=at)

    async def next_number(self, sequence: str, *, count: int = 1) -> int:
        return await self.inner.next_number(sequence, count=count)

    async def insert_or_get(self, entity: E, *, on: Sequence[str]) -> tuple[E, bool]:
        return await self.inner.insert_or_get(entity, on=on)


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

    @asynccontextmanager
    async def across_tenants(self, *, livemode: bool) -> AsyncIterator[TenantSweep]:
        async with self.inner.across_tenants(livemode=livemode) as sweep:
            yield sweep


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
    """MemoryStorage whose transactions are ``transaction_class`` and sweeps ``sweep_class``,
    optionally without the database lock (like a SQL database at READ COMMITTED without row
    locks)."""

    transaction_class: type[_MemoryTransaction] = _MemoryTransaction
    sweep_class: type[_MemorySweep] = _MemorySweep
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

    @asynccontextmanager
    async def across_tenants(self, *, livemode: bool) -> AsyncIterator[TenantSweep]:
        async with self.database.lock:
            yield self.sweep_class(self._tables, livemode)


def _memory_mutant(
    options: StoreOptions,
    transaction_class: type[_MemoryTransaction] = _MemoryTransaction,
    *,
    sweep_class: type[_MemorySweep] = _MemorySweep,
    locked: bool = True,
) -> StoreHandle:
    good = factories.memory(options)
    assert isinstance(good.storage, MemoryStorage)
    storage = MutantMemoryStorage(
        table_prefix=options.table_prefix,
        multi_tenant=options.multi_tenant,
        database=good.storage.database,
    )
    storage.transaction_class = transaction_class
    storage.sweep_class = sweep_class
    storage.locked = locked
    return attrs.evolve(good, storage=storage)


def _visible_ignoring_tenant(
    tx: _MemoryTransaction, table: _Table, row: Any, deleted: bool
) -> bool:
    return row.livemode is tx.scope.livemode and (
        deleted or not table.spec.soft_delete or row.deleted_at is None
    )


def _filtered(rows: Sequence[Any], filters: Filters | None, test: Callable[..., bool]) -> list[Any]:
    items = filters.items() if filters else ()
    return [row for row in rows if all(test(c, getattr(row, name)) for name, c in items)]


# -- soft deletes ---------------------------------------------------------------------------


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


class _AggregateCountsDeleted(_MemoryTransaction):
    """Aggregates include soft-deleted rows; every other read hides them."""

    async def aggregate(
        self,
        kind: type[E],
        *,
        group_by: Sequence[str] = (),
        sums: Sequence[str] = (),
        filters: Filters | None = None,
        include_deleted: bool = False,
    ) -> Sequence[Group]:
        return await super().aggregate(
            kind, group_by=group_by, sums=sums, filters=filters, include_deleted=True
        )


def make_aggregate_counts_deleted_rows(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _AggregateCountsDeleted)


class _HardDelete(_MemoryTransaction):
    """``soft_delete`` removes the row for real (a DELETE): it is gone, include_deleted or
    not."""

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        await super().soft_delete(kind, id, at=at, expected_version=expected_version)
        table = self._table(kind)
        row = table.rows.pop(id)
        for key, values in table.index_keys(row):
            table.indexes[key].pop(values, None)
        self._undo.append(lambda: table.rows.__setitem__(id, row))


def make_hard_deletes(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _HardDelete)


# -- tenancy, livemode, prefixes ------------------------------------------------------------


class _TenantBlindReads(_MemoryTransaction):
    """Reads (get, list, count, find by filter, aggregates, claims) forget the tenant; writes
    keep it."""

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        table = self._table(kind)
        row = table.rows.get(id)
        if row is None or not _visible_ignoring_tenant(self, table, row, include_deleted):
            return None
        return row  # type: ignore[no-any-return]

    def _matching(self, table: _Table, filters: Filters | None, include_deleted: bool) -> list[Any]:
        rules.check_filters(table.spec, filters)
        rows = [
            row
            for row in table.rows.values()
            if _visible_ignoring_tenant(self, table, row, include_deleted)
        ]
        return _filtered(rows, filters, matches)


def make_ignores_tenant_on_reads(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _TenantBlindReads)


class _TenantBlindWrites(_MemoryTransaction):
    """Updates, deletes and increments find their row by id and livemode alone."""

    def _current(self, table: _Table, entity_id: UUID) -> Any:
        row = table.rows.get(entity_id)
        if row is None or not _visible_ignoring_tenant(self, table, row, False):
            raise rules.missing(table.spec, entity_id)
        return row


def make_ignores_tenant_on_updates(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _TenantBlindWrites)


class _LivemodeBlindUnique(_MemoryTransaction):
    """Unique keys are checked across both livemodes, as if livemode were not in the index."""

    def _check_unique(self, table: _Table, row: Any) -> _Entries:
        entries = super()._check_unique(table, row)
        other_side = attrs.evolve(row, livemode=not row.livemode)
        for key, values in table.index_keys(other_side):
            holder = table.indexes[key].get(values)
            if holder is not None and holder != row.id:
                raise rules.unique_conflict(table.spec, key.columns)
        return entries


def make_ignores_livemode_in_unique_check(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _LivemodeBlindUnique)


class _AggregateBlindToLivemode(_MemoryTransaction):
    """Aggregates sum the rows of both livemodes; every other read keeps to the scope's."""

    async def aggregate(
        self,
        kind: type[E],
        *,
        group_by: Sequence[str] = (),
        sums: Sequence[str] = (),
        filters: Filters | None = None,
        include_deleted: bool = False,
    ) -> Sequence[Group]:
        table = self._table(kind)
        rules.check_aggregate(table.spec, group_by, sums)
        rules.check_filters(table.spec, filters)
        rows = _filtered(
            [
                row
                for row in table.rows.values()
                if row.tenant_id == self.scope.tenant_id
                and (include_deleted or not table.spec.soft_delete or row.deleted_at is None)
            ],
            filters,
            matches,
        )
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            groups.setdefault(tuple(getattr(row, name) for name in group_by), []).append(row)
        if not group_by and not groups:
            groups[()] = []
        return [
            Group(
                key=dict(zip(group_by, values, strict=True)),
                count=len(members),
                sums={name: sum(getattr(r, name) or 0 for r in members) for name in sums},
            )
            for values, members in sorted(
                groups.items(), key=lambda item: [(v is not None, v) for v in item[0]]
            )
        ]


def make_aggregate_ignores_livemode(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _AggregateBlindToLivemode)


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


# -- optimistic locking and the atomic primitives -------------------------------------------


class _NoVersionCheck(WrappedTransaction):
    """Every update expects whatever version is stored now: a stale write always wins."""

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        current = await self.inner.get(type(entity), entity.id)  # type: ignore[attr-defined]
        if current is not None and hasattr(current, "version"):
            expected_version = current.version
        return await self.inner.update(entity, expected_version=expected_version)


def make_skips_the_version_check(options: StoreOptions) -> StoreHandle:
    return _wrapped(factories.memory(options), _NoVersionCheck)


class _OneNumberPerBlock(WrappedTransaction):
    """``next_number(count=n)`` takes one number whatever ``n``: a block overlaps the next."""

    async def next_number(self, sequence: str, *, count: int = 1) -> int:
        return await self.inner.next_number(sequence)


def make_numbers_a_block_as_one(options: StoreOptions) -> StoreHandle:
    return _wrapped(factories.memory(options), _OneNumberPerBlock)


class _RacyIncrement(_MemoryTransaction):
    """Checks the bound on a read, pauses, then writes what it read plus ``by``: concurrent
    increments all pass the bound (and overwrite each other)."""

    async def increment(
        self,
        kind: type[E],
        id: UUID,
        column: str,
        by: int,
        *,
        at_most: int | str | None = None,
        at: datetime | None = None,
    ) -> E | None:
        self._check_writable()
        table = self._table(kind)
        rules.check_increment(table.spec, column, by, at_most)
        current = self._current(table, id)
        value = getattr(current, column) + by
        bound = getattr(current, at_most) if isinstance(at_most, str) else at_most
        if bound is not None and value > bound:
            return None
        await anyio.lowlevel.checkpoint()  # another task increments here, from the same read
        changes: dict[str, Any] = {column: value}
        if table.spec.versioned:
            changes["version"] = current.version + 1
        if at is not None and "updated_at" in table.spec.fields:
            changes["updated_at"] = at
        updated = attrs.evolve(current, **changes)
        self._put(table, updated)
        return updated  # type: ignore[no-any-return]


def make_increments_non_atomically(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _RacyIncrement, locked=False)


class _DoubleClaim(_MemoryTransaction):
    """Claims every due row, including those another claimant's live lease holds."""

    async def claim(
        self, kind: type[E], *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[E]:
        self._check_writable()
        table = self._table(kind)
        rules.check_claimable(table.spec)
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
            held = attrs.evolve(row, claimed_by=claimant, claimed_until=now + lease)
            self._put(table, held)
            claimed.append(held)
        return claimed


def make_double_claims(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _DoubleClaim)


class _ClaimBumpsVersion(_MemoryTransaction):
    """A claim writes the lease as an update would: version + 1 and updated_at = now."""

    async def claim(
        self, kind: type[E], *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[E]:
        claimed = await super().claim(kind, now=now, limit=limit, claimant=claimant, lease=lease)
        table = self._table(kind)
        bumped = []
        for row in claimed:
            again = attrs.evolve(row, version=row.version + 1, updated_at=now)  # type: ignore[misc,attr-defined]
            self._put(table, again)
            bumped.append(again)
        return bumped


def make_claim_bumps_the_version(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _ClaimBumpsVersion)


class _UpdateWritesTheLease(_MemoryTransaction):
    """``update`` writes every column, the lease columns too (a user's edit drops the lease)."""

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        updated = await super().update(entity, expected_version=expected_version)
        table = self._table(type(entity))
        if table.spec.claimable:
            stored = table.rows[entity.id]  # type: ignore[attr-defined]
            self._put(
                table,
                attrs.evolve(
                    stored,
                    claimed_by=entity.claimed_by,  # type: ignore[attr-defined]
                    claimed_until=entity.claimed_until,  # type: ignore[attr-defined]
                ),
            )
        return updated


def make_update_overwrites_the_lease(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _UpdateWritesTheLease)


# -- transactions ---------------------------------------------------------------------------


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


PARTIAL_UP_TO = 100
"""``make_leaves_partial_writes`` replays failed transactions of up to this many writes (the
large ones are ``make_keeps_part_of_a_large_transaction``'s)."""


class _PartialWrites(WrappedStorage):
    """When a transaction of up to ``PARTIAL_UP_TO`` writes fails, writes what it had written
    so far anyway (one by one, each in its own transaction, skipping those the database
    refuses): a partial write."""

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
            if recording is not None and len(recording.writes) <= PARTIAL_UP_TO:
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
    good = factories.memory(options)
    return attrs.evolve(good, storage=_PartialWrites(good.storage))


class _ReadonlyWrites(WrappedStorage):
    """Opens every transaction writable: ``readonly=True`` is ignored."""

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        async with self.inner.transaction(scope) as tx:
            yield tx


def make_readonly_allows_writes(options: StoreOptions) -> StoreHandle:
    good = factories.memory(options)
    return attrs.evolve(good, storage=_ReadonlyWrites(good.storage))


# -- large transactions ---------------------------------------------------------------------

WRITE_LIMIT = 1_000


class _Counting(WrappedTransaction):
    """Counts the writes of a transaction and calls ``on_limit`` at every ``WRITE_LIMIT``."""

    on_limit: Callable[[], Awaitable[None]] | None = None

    def __init__(self, inner: StorageTransaction) -> None:
        super().__init__(inner)
        self.writes = 0

    async def _count(self) -> None:
        self.writes += 1
        if self.writes % WRITE_LIMIT == 0 and self.on_limit is not None:
            await self.on_limit()

    async def insert(self, entity: E) -> None:
        await self._count()
        await self.inner.insert(entity)

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        await self._count()
        return await self.inner.update(entity, expected_version=expected_version)

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        await self._count()
        await self.inner.soft_delete(kind, id, at=at, expected_version=expected_version)


class _TooManyWrites(WrappedStorage):
    """Fails a transaction at its 1,000th buffered write, as a batcher that builds one
    statement for everything hits a parameter or column limit."""

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        async with self.inner.transaction(scope, readonly=readonly) as tx:
            counting = _Counting(tx)

            async def refuse() -> None:
                raise StorageError(f"too many buffered writes ({WRITE_LIMIT})", retryable=False)

            counting.on_limit = refuse
            yield counting


def make_fails_above_1000_writes(options: StoreOptions) -> StoreHandle:
    good = factories.memory(options)
    return attrs.evolve(good, storage=_TooManyWrites(good.storage))


class _ChunkedCommits(WrappedStorage):
    """Commits every 1,000 writes and goes on in a new transaction: a failure later keeps the
    chunks already committed."""

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        chunk = AsyncExitStack()
        counting = _Counting(
            await chunk.enter_async_context(self.inner.transaction(scope, readonly=readonly))
        )

        async def commit_and_go_on() -> None:
            nonlocal chunk
            await chunk.aclose()  # commits the chunk so far
            chunk = AsyncExitStack()
            counting.inner = await chunk.enter_async_context(
                self.inner.transaction(scope, readonly=readonly)
            )

        counting.on_limit = commit_and_go_on
        try:
            yield counting
        except BaseException as error:
            await chunk.__aexit__(type(error), error, error.__traceback__)  # this chunk only
            raise
        await chunk.aclose()


def make_keeps_part_of_a_large_transaction(options: StoreOptions) -> StoreHandle:
    good = factories.memory(options)
    return attrs.evolve(good, storage=_ChunkedCommits(good.storage))


# -- filters and aggregates -----------------------------------------------------------------


def _within_inclusive(condition: object, value: object) -> bool:
    if isinstance(condition, Condition) and condition.op is Op.WITHIN and value is not None:
        lower, upper = condition.value
        return bool(lower <= value <= upper)
    return matches(condition, value)


def _one_of_anything(condition: object, value: object) -> bool:
    if isinstance(condition, Condition) and condition.op is Op.IN:
        return value is not None
    return matches(condition, value)


def _with_matcher(test: Callable[[object, object], bool]) -> type[_MemoryTransaction]:
    class _Matching(_MemoryTransaction):
        def _matching(
            self, table: _Table, filters: Filters | None, include_deleted: bool
        ) -> list[Any]:
            rules.check_filters(table.spec, filters)
            rows = [
                row for row in table.rows.values() if self._visible(table, row, include_deleted)
            ]
            return _filtered(rows, filters, test)

        async def find(
            self, kind: type[E], *, include_deleted: bool = False, **key: object
        ) -> E | None:
            rows = self._matching(self._table(kind), key, include_deleted)
            return max(rows, key=lambda row: row.id) if rows else None

    return _Matching


def make_within_includes_the_upper_bound(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _with_matcher(_within_inclusive))


def make_one_of_ignores_its_values(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _with_matcher(_one_of_anything))


class _NullLast(_MemoryTransaction):
    """Aggregate groups ordered with NULL last (PostgreSQL's default for ascending order)."""

    async def aggregate(
        self,
        kind: type[E],
        *,
        group_by: Sequence[str] = (),
        sums: Sequence[str] = (),
        filters: Filters | None = None,
        include_deleted: bool = False,
    ) -> Sequence[Group]:
        groups = await super().aggregate(
            kind, group_by=group_by, sums=sums, filters=filters, include_deleted=include_deleted
        )
        return sorted(
            groups, key=lambda g: [(g.key[name] is None, g.key[name] or "") for name in group_by]
        )


def make_aggregate_orders_null_last(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _NullLast)


# -- pagination and immutability ------------------------------------------------------------


class _EmptyLastPage(WrappedTransaction):
    """Hands out a cursor after every full page, so a list ending on a full page is followed
    by an empty one."""

    async def list(
        self,
        kind: type[E],
        *,
        filters: Filters | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> Page[E]:
        page = await self.inner.list(
            kind, filters=filters, limit=limit, cursor=cursor, include_deleted=include_deleted
        )
        if page.next_cursor is None and len(page.items) == limit:
            last: Any = page.items[-1]
            return Page(items=page.items, next_cursor=rules.encode_cursor(last.id))
        return page


def make_ends_with_an_empty_page(options: StoreOptions) -> StoreHandle:
    return _wrapped(factories.memory(options), _EmptyLastPage)


def _thaw(row: Any, spec: EntitySpec[Any]) -> Any:
    """The row with plain ``dict`` mappings, bypassing the frozen converters."""
    for name in spec.fields:
        value = getattr(row, name)
        if hasattr(value, "keys") and not isinstance(value, dict):
            object.__setattr__(row, name, dict(value))
    return row


class _HandsOutItsObjects(_MemoryTransaction):
    """Keeps rows with mutable ``dict`` mappings and hands out the very objects it keeps."""

    def _put(
        self, table: _Table, row: Any, entries: _Entries | None = None, *, new: bool = False
    ) -> None:
        super()._put(table, _thaw(row, table.spec), entries, new=new)


def make_returns_its_stored_objects(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, _HandsOutItsObjects)


# -- the cross-tenant sweep -----------------------------------------------------------------


class _SweepBothLivemodes(_MemorySweep):
    """The sweep answers rows of both livemodes."""

    def _live(self, kind: type[Any]) -> tuple[EntitySpec[Any], list[Any]]:
        table = self._tables[kind]
        rows = [
            row
            for row in table.rows.values()
            if not table.spec.soft_delete or row.deleted_at is None
        ]
        return table.spec, rows


def make_sweep_ignores_livemode(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, sweep_class=_SweepBothLivemodes)


class _SweepWithDeleted(_MemorySweep):
    """The sweep answers soft-deleted rows too."""

    def _live(self, kind: type[Any]) -> tuple[EntitySpec[Any], list[Any]]:
        table = self._tables[kind]
        return table.spec, [r for r in table.rows.values() if r.livemode is self._livemode]


def make_sweep_returns_deleted_rows(options: StoreOptions) -> StoreHandle:
    return _memory_mutant(options, sweep_class=_SweepWithDeleted)


class _ClosesOnTheFirstClose(WrappedStorage):
    """A SQLite store whose close disconnects at once, however many opens it had."""

    async def close(self) -> None:
        assert isinstance(self.inner, SQLiteStorage)
        await self.inner._disconnect()


def make_closes_on_the_first_close(options: StoreOptions) -> StoreHandle:
    good = factories.sqlite(options)
    return attrs.evolve(good, storage=_ClosesOnTheFirstClose(good.storage))


# -- capabilities ---------------------------------------------------------------------------


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
