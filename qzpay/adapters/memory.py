"""MemoryStorage: the whole storage contract with no database.

A real, supported adapter (users test their apps with it, and it runs on trio as well as
asyncio), not a test double: it keeps prefixes, tenancy, livemode, soft deletes, unique keys,
references, optimistic locking and all-or-nothing transactions exactly as the SQL adapters
do. It is also the worked example of ``docs/adapter-authors.md``.

Transactions are serialized by one lock per ``MemoryDatabase`` and undone from a log on
failure, which gives the strongest isolation there is at the price of no parallelism; so
every atomic primitive is a plain read-check-write here. Stored rows are immutable domain
values (their mappings are read-only copies), so handing one out cannot let a caller
change what is stored.

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

from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar
from uuid import UUID

import anyio
import attrs

from qzpay.adapters import generated
from qzpay.adapters import storage_rules as rules
from qzpay.contracts.filters import matches
from qzpay.contracts.storage import Filters, Group, Page, Scope, StorageTransaction, TenantSweep
from qzpay.domain.registry import LEASE_COLUMNS, SPECS, EntitySpec, UniqueKey, spec_for
from qzpay.errors import ConfigurationError
from qzpay.timestamps import aware_utc

E = TypeVar("E")
_Key = tuple[object, ...]
_Entries = Sequence[tuple[UniqueKey, _Key]]
"""The unique-index entries of one row."""
_Sequence = tuple[bool, str | None, str]
_INDEXED: tuple[type[Any], ...] = (str, int, UUID)
"""The values an index lookup answers for (``bool`` and str enums among them); any other
goes through the filter checks."""


class _Table:
    """Rows of one kind under one prefix, with an index per unique key of live rows."""

    __slots__ = ("index_keys", "indexes", "lookups", "rows", "spec")

    def __init__(self, spec: EntitySpec[Any]) -> None:
        self.spec = spec
        self.rows: dict[UUID, Any] = {}
        self.indexes: dict[UniqueKey, dict[_Key, UUID]] = {key: {} for key in spec.unique}
        self.lookups: dict[tuple[str, ...], UniqueKey | None] = {}
        """Which unique key answers a lookup by these column names (None: a scan)."""
        self.index_keys: Callable[[Any], _Entries] = _index_keys(spec)
        """The unique-index entries a row occupies: none once soft-deleted, none for NULLs,
        none for a partial key whose condition the row does not meet."""

    def index_entry(self, key: Mapping[str, object]) -> tuple[UniqueKey, _Key] | None:
        """The unique index that answers an equality lookup on exactly ``key``'s columns,
        and the values to look up: a key on those columns, or a partial key on some of them
        whose condition the others state (``customer_id=…, is_default=True``). None when
        only a scan can answer (and check the filters): no such key, a NULL (the index holds
        none), a ``Condition`` or a value of another type in it."""
        names = tuple(key)
        try:
            unique = self.lookups[names]
        except KeyError:
            unique = self.lookups[names] = next(
                (
                    candidate
                    for candidate in self.spec.unique
                    if len(candidate.columns) + len(candidate.where) == len(names)
                    and {*candidate.columns, *candidate.where} == set(names)
                ),
                None,
            )
        if unique is None:
            return None
        for column, wanted in unique.where.items():
            if key[column] != wanted:
                return None
        values = tuple([key[column] for column in unique.columns])
        for value in values:
            if not isinstance(value, _INDEXED):
                return None
        return unique, values


def _index_keys(spec: EntitySpec[Any]) -> Callable[[Any], _Entries]:
    """``_Table.index_keys`` for one kind, as straight-line code (generated once): every
    write works out the entries of its row, and a loop over the keys and their columns
    costs more than the lookups themselves."""
    lines = ["def index_keys(row):"]
    if spec.soft_delete:
        lines += ["    if row.deleted_at is not None:", "        return ()"]
    lines.append("    entries = []")
    names: dict[str, Any] = {}
    for n, key in enumerate(spec.unique):
        names[f"key{n}"] = key
        values = [f"row.{column}" for column in key.columns]
        holds = [f"{value} is not None" for value in values]
        for m, (column, wanted) in enumerate(key.where.items()):
            names[f"wanted{n}_{m}"] = wanted
            holds.append(f"row.{column} == wanted{n}_{m}")
        lines += [
            f"    if {' and '.join(holds)}:",
            f"        entries.append((key{n}, (row.livemode, row.tenant_id, {', '.join(values)})))",
        ]
    lines.append("    return entries")
    return generated.function("index_keys", lines, names, label=f"index_keys {spec.table}")  # type: ignore[no-any-return]


class MemoryDatabase:
    """What several ``MemoryStorage`` instances can share, like one SQL database.

    Two stores on one ``MemoryDatabase`` with different prefixes never see each other's
    rows; with the same prefix they share them.
    """

    def __init__(self) -> None:
        self.tables: dict[str, _Table] = {}
        self.counters: dict[str, dict[_Sequence, int]] = {}
        # Uncontended (nearly always), taking it need not yield to the event loop first.
        self.lock = anyio.Lock(fast_acquire=True)

    def sequences(self, prefix: str) -> dict[_Sequence, int]:
        """Gapless counters per (livemode, tenant, name) under one prefix."""
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
        """Nothing to connect to (the tables exist from construction): only counted, as the
        SQL stores count their users, so every adapter pairs opens and closes alike."""
        self._opens: int = int(getattr(self, "_opens", 0)) + 1

    async def close(self) -> None:
        """Count one user out; rows stay in the ``MemoryDatabase`` until it is collected."""
        self._opens = max(int(getattr(self, "_opens", 0)) - 1, 0)

    def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[StorageTransaction]:
        return _Opening(self, scope, readonly)

    @asynccontextmanager
    async def across_tenants(self, *, livemode: bool) -> AsyncIterator[TenantSweep]:
        async with self._database.lock:
            yield _MemorySweep(self._tables, livemode)


class _Opening:
    """``MemoryStorage.transaction``: the lock held for the transaction, its writes undone
    when the body raises. A class, not a generator context manager: this is entered three
    times per charge, and an async generator costs several times more to enter and leave."""

    __slots__ = ("_readonly", "_scope", "_storage", "_transaction")

    def __init__(self, storage: MemoryStorage, scope: Scope, readonly: bool) -> None:
        self._storage = storage
        self._scope = scope
        self._readonly = readonly

    async def __aenter__(self) -> StorageTransaction:
        storage = self._storage
        rules.check_scope(self._scope, storage._multi_tenant)
        self._transaction = _MemoryTransaction(
            self._scope, storage._tables, storage._sequences, readonly=self._readonly
        )
        # The lock's fast path stops a cancelled caller here (on asyncio and trio) without
        # the round trip to the event loop an uncontended lock would otherwise cost; once
        # it is held, nothing can fail before the body runs and __aexit__ releases it.
        await storage._database.lock.acquire()
        return self._transaction

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if kind is not None:
                self._transaction.undo()
        finally:
            self._storage._database.lock.release()


class _MemoryTransaction:
    __slots__ = ("_readonly", "_scope", "_sequences", "_tables", "_undo")

    def __init__(
        self,
        scope: Scope,
        tables: dict[type[Any], _Table],
        sequences: dict[_Sequence, int],
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
            and all(matches(condition, getattr(row, name)) for name, condition in items)
        ]

    async def find(
        self, kind: type[E], *, include_deleted: bool = False, **key: object
    ) -> E | None:
        table = self._table(kind)
        entry = None if include_deleted else table.index_entry(key)
        if entry is not None:
            unique, values = entry
            found = table.indexes[unique].get(
                (self._scope.livemode, self._scope.tenant_id, *values)
            )
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
        groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
        for row in self._matching(table, filters, include_deleted):
            groups[tuple(getattr(row, name) for name in group_by)].append(row)
        if not group_by and not groups:
            groups[()] = []
        return [
            Group(
                key=dict(zip(group_by, values, strict=True)),
                count=len(rows),
                sums={name: sum(getattr(row, name) or 0 for row in rows) for name in sums},
            )
            for values, rows in sorted(groups.items(), key=lambda item: _null_first(item[0]))
        ]

    # -- writes ------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._readonly:
            raise ConfigurationError("this transaction was opened readonly")

    def _check_references(self, table: _Table, row: Any, current: Any = None) -> None:
        """Every reference names a row of this scope; on an update (``current``: the row as
        stored), only the references it changes, as a SQL database checks a foreign key."""
        for column, target in table.spec.references.items():
            value = getattr(row, column)
            if value is None or (current is not None and value == getattr(current, column)):
                continue
            target_table = self._tables[_KIND_BY_TABLE[target]]
            referenced = target_table.rows.get(value)
            if referenced is None or not self._visible(target_table, referenced, True):
                raise rules.dangling(table.spec, column)

    def _check_unique(self, table: _Table, row: Any) -> _Entries:
        """Refuse a row that takes another's unique key; its index entries (for ``_put``)."""
        entries = table.index_keys(row)
        for key, values in entries:
            holder = table.indexes[key].get(values)
            if holder is not None and holder != row.id:
                raise rules.unique_conflict(table.spec, key.columns)
        return entries

    def _put(
        self, table: _Table, row: Any, entries: _Entries | None = None, *, new: bool = False
    ) -> None:
        """Store ``row`` (new or replacing), keeping indexes and the undo log in step;
        ``entries``: its index entries, when ``_check_unique`` just worked them out; ``new``:
        ``_check_new`` just found no row with its id."""
        if entries is None:
            entries = table.index_keys(row)
        previous = None if new else table.rows.get(row.id)
        replaced = () if previous is None else table.index_keys(previous)
        indexes = table.indexes
        for key, values in replaced:
            del indexes[key][values]
        for key, values in entries:
            indexes[key][values] = row.id
        table.rows[row.id] = row

        def undo() -> None:
            for key, values in entries:
                del indexes[key][values]
            if previous is None:
                del table.rows[row.id]
            else:
                table.rows[row.id] = previous
                for key, values in replaced:
                    indexes[key][values] = previous.id

        self._undo.append(undo)

    async def insert(self, entity: E) -> None:
        self._check_writable()
        table = self._table(type(entity))
        self._put(table, entity, self._check_new(table, entity), new=True)

    def _check_new(self, table: _Table, entity: Any) -> _Entries:
        """Refuse what a new row may not be; its index entries (for ``_put``)."""
        rules.check_entity_scope(entity, self._scope)
        rules.check_values(entity)
        if entity.id in table.rows:
            raise rules.unique_conflict(table.spec, ("id",))
        entries = self._check_unique(table, entity)
        self._check_references(table, entity)
        return entries

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
        rules.check_values(entity)
        current = self._current(table, entity.id)  # type: ignore[attr-defined]
        version = 0  # at_version ignores it for a kind without a version column
        if table.spec.versioned:
            expected = entity.version if expected_version is None else expected_version  # type: ignore[attr-defined]
            self._check_version(table, current, expected)
            version = current.version + 1
        # A fresh copy (a field-by-field copy: the values were checked when ``entity`` was
        # made), then what an update never changes put back from the stored row.
        stored = rules.at_version(entity, version)
        kept = _KEPT_CLAIMABLE if table.spec.claimable else _KEPT
        same = True
        for name in kept:
            value = getattr(current, name)
            if value is not getattr(entity, name):
                same = False
                object.__setattr__(stored, name, value)
        entries = self._check_unique(table, stored)
        self._check_references(table, stored, current)
        self._put(table, stored, entries)
        # What the caller wrote, at its new version: the same answer the SQL adapters give
        # (the stored row itself when the caller wrote those columns as they were).
        if not table.spec.versioned:
            return entity
        return stored if same else rules.at_version(entity, version)

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

    # -- atomic primitives: the database lock makes each read-check-write atomic --------

    async def claim(
        self, kind: type[E], *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[E]:
        self._check_writable()
        table = self._table(kind)
        rules.check_claimable(table.spec)
        limit = rules.claim_size(limit)
        now = aware_utc(now, field="now")
        rules.storable_text(claimant, field="claimant")
        claimed = []
        for row in _due(self._matching(table, None, False), now, limit):
            held = attrs.evolve(row, claimed_by=claimant, claimed_until=now + lease)
            self._put(table, held)
            claimed.append(held)
        return claimed

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
        changes: dict[str, Any] = {column: value}
        if table.spec.versioned:
            changes["version"] = current.version + 1
        if at is not None and "updated_at" in table.spec.fields:
            changes["updated_at"] = aware_utc(at, field="at")
        updated = attrs.evolve(current, **changes)
        self._put(table, updated)
        return updated  # type: ignore[no-any-return]

    async def next_number(self, sequence: str, *, count: int = 1) -> int:
        self._check_writable()
        taken = rules.number_count(count)
        key = (self._scope.livemode, self._scope.tenant_id, rules.sequence_name(sequence))
        sequences = self._sequences
        previous = sequences.get(key, 0)
        sequences[key] = previous + taken

        def undo() -> None:
            if previous:
                sequences[key] = previous
            else:
                del sequences[key]

        self._undo.append(undo)
        return previous + 1

    async def insert_or_get(self, entity: E, *, on: Sequence[str]) -> tuple[E, bool]:
        self._check_writable()
        table = self._table(type(entity))
        key = rules.unique_key_on(table.spec, on)
        rules.check_entity_scope(entity, self._scope)
        values = (self._scope.livemode, self._scope.tenant_id)
        values += tuple(getattr(entity, column) for column in key.columns)
        holder = table.indexes[key].get(values) if key.holds(entity) else None
        if holder is not None:
            return table.rows[holder], False
        self._put(table, entity, self._check_new(table, entity), new=True)
        return entity, True


class _MemorySweep:
    """The two cross-tenant reads, under the database lock like a transaction."""

    __slots__ = ("_livemode", "_tables")

    def __init__(self, tables: dict[type[Any], _Table], livemode: bool) -> None:
        self._tables = tables
        self._livemode = livemode

    def _live(self, kind: type[Any]) -> tuple[EntitySpec[Any], list[Any]]:
        table = self._tables.get(kind)
        if table is None:
            spec_for(kind)
            raise AssertionError(kind)
        rows = [
            row
            for row in table.rows.values()
            if row.livemode is self._livemode
            and (not table.spec.soft_delete or row.deleted_at is None)
        ]
        return table.spec, rows

    async def due(self, kind: type[E], *, now: datetime, limit: int) -> Sequence[E]:
        spec, rows = self._live(kind)
        rules.check_claimable(spec)
        return _due(rows, aware_utc(now, field="now"), rules.claim_size(limit))

    async def owners(self, kind: type[E], **key: object) -> Sequence[E]:
        spec, rows = self._live(kind)
        rules.check_filters(spec, key)
        found = [
            row
            for row in rows
            if all(matches(condition, getattr(row, name)) for name, condition in key.items())
        ]
        return sorted(found, key=lambda row: row.id)[: rules.MAX_PAGE_SIZE]


def _due(rows: Sequence[Any], now: datetime, limit: int) -> list[Any]:
    """Rows due by ``now`` and free of a live lease, oldest due first."""
    return sorted(
        (
            row
            for row in rows
            if row.due_at is not None
            and row.due_at <= now
            and (row.claimed_until is None or row.claimed_until <= now)
        ),
        key=lambda row: (row.due_at, row.id),
    )[:limit]


def _null_first(values: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    return tuple((value is not None, value) for value in values)


_KIND_BY_TABLE: dict[str, type[Any]] = {spec.table: spec.kind for spec in SPECS}
_KEPT = ("created_at",)
_KEPT_CLAIMABLE = ("created_at", *LEASE_COLUMNS)
"""What an update never changes: put back from the stored row."""
