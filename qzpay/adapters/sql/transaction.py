"""The part of a SQL transaction that does not depend on the driver.

Reads turn the port's arguments into parameters for a compiled statement and rows back into
entities; writes are buffered as ``Write`` objects. A dialect's transaction supplies how a
statement reaches its driver (``_fetch``), how buffered writes are sent, and its atomic
operations. Parameter values go through the store's converter (``encode``), so the same code
binds a UUID as hex text on SQLite and as a native uuid on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar
from uuid import UUID

import attrs

from qzpay.adapters import storage_rules as rules
from qzpay.adapters.sql.rows import RowCodec
from qzpay.adapters.sql.statements import Compiled, Statements, filter_shape
from qzpay.contracts.filters import Condition, Op
from qzpay.contracts.storage import Filters, Group, Page, Scope
from qzpay.domain.registry import EntitySpec, UniqueKey, spec_for
from qzpay.errors import ConfigurationError, QZPayError
from qzpay.timestamps import aware_utc

E = TypeVar("E")


class SqlStore(Protocol):
    """What a transaction needs from its store."""

    @property
    def statements(self) -> Statements: ...

    def codec(self, kind: type[E]) -> RowCodec[E]: ...

    def encode(self, value: object) -> Any: ...


Operation = Literal["insert", "update", "soft_delete"]


@attrs.frozen
class Write:
    """One buffered statement on the row ``entity_id``; ``checked`` ones (UPDATEs) must hit
    exactly one row.

    ``operation`` says what ``statement`` does (the generic insert, update or soft delete of
    ``statements.Statements``), so a batch may send many writes of one statement as one
    multi-row statement; ``None`` (any other statement) is sent as it is, in its place.
    """

    spec: EntitySpec[Any]
    statement: Compiled
    params: dict[str, Any]
    checked: bool = False
    entity_id: UUID | None = None
    expected_version: int | None = None
    operation: Operation | None = None

    def no_row(self, found: bool) -> QZPayError:
        """The error for a checked write that hit no row: missing, or a stale version."""
        assert self.entity_id is not None
        if not found or self.expected_version is None:
            return rules.missing(self.spec, self.entity_id)
        return rules.stale(self.spec, self.entity_id, self.expected_version)


class SqlTransaction:
    """Generic reads and buffered writes over compiled statements."""

    def __init__(self, store: SqlStore, scope: Scope, *, readonly: bool) -> None:
        self._store = store
        self._scope = scope
        self._readonly = readonly
        self._scope_params: dict[str, Any] = {
            "s_livemode": scope.livemode,
            "s_tenant_id": scope.tenant_id,
        }
        self._writes: list[Write] = []

    @property
    def scope(self) -> Scope:
        return self._scope

    async def _fetch(self, statement: Compiled, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """Run a read (after sending buffered writes) and return its rows."""
        raise NotImplementedError

    async def _write_returning(
        self, spec: EntitySpec[Any], statement: Compiled, params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Run a write that returns rows (claim, increment, insert-if-absent) at once, after
        the buffered writes, turning the database's refusals into qzpay's errors."""
        return await self._fetch(statement, params)

    async def flush(self) -> None:
        raise NotImplementedError

    def _check_writable(self) -> None:
        if self._readonly:
            raise ConfigurationError("this transaction was opened readonly")

    def _key(self, entity_id: UUID) -> dict[str, Any]:
        return {**self._scope_params, "k_id": self._store.encode(entity_id)}

    # -- reads ---------------------------------------------------------------------------

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        statement = self._store.statements.get(spec_for(kind), include_deleted)
        rows = await self._fetch(statement, self._key(id))
        return self._store.codec(kind).entity(rows[0]) if rows else None

    async def get_many(self, *keys: tuple[type[Any], UUID]) -> Sequence[Any | None]:
        specs = tuple(spec_for(kind) for kind, _ in keys)
        params = dict(self._scope_params)
        for index, (_, entity_id) in enumerate(keys):
            params[f"k{index}"] = self._store.encode(entity_id)
        (row,) = await self._fetch(self._store.statements.get_many(specs), params)
        found: list[Any | None] = []
        start = 0
        for kind, _ in keys:
            codec = self._store.codec(kind)
            part = row[start : start + len(codec.columns)]
            start += len(codec.columns)
            found.append(None if part[0] is None else codec.entity(part))
        return found

    def _filter_params(
        self, spec: EntitySpec[Any], filters: Filters | None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        rules.check_filters(spec, filters)
        params = dict(self._scope_params) if params is None else params
        encode = self._store.encode
        for name, value in (filters or {}).items():
            if not isinstance(value, Condition):
                if value is not None:
                    params[f"f_{name}"] = encode(value)
            elif value.op is Op.WITHIN:
                params[f"f_{name}_lo"] = encode(value.value[0])
                params[f"f_{name}_hi"] = encode(value.value[1])
            elif value.op is Op.IN:
                params[f"f_{name}"] = self._store.statements.in_values(
                    [encode(item) for item in value.value]
                )
            elif value.value is not None:
                params[f"f_{name}"] = encode(value.value)
        return params

    async def find(
        self, kind: type[E], *, include_deleted: bool = False, **key: object
    ) -> E | None:
        page = await self.list(kind, filters=key, limit=1, include_deleted=include_deleted)
        return page.items[0] if page.items else None

    async def list(
        self,
        kind: type[E],
        *,
        filters: Filters | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> Page[E]:
        spec = spec_for(kind)
        codec = self._store.codec(kind)
        limit = rules.page_size(limit)
        params = self._filter_params(spec, filters)
        if cursor is not None:
            params["cursor"] = self._store.encode(rules.decode_cursor(cursor))
        params["limit"] = limit + 1
        params["offset"] = 0
        statement = self._store.statements.select(
            spec, filter_shape(filters), include_deleted, cursor is not None
        )
        rows = await self._fetch(statement, params)
        items = [codec.entity(row) for row in rows[:limit]]
        more = len(rows) > limit
        next_cursor = rules.encode_cursor(items[-1].id) if more else None  # type: ignore[attr-defined]
        return Page(items=items, next_cursor=next_cursor)

    async def count(
        self, kind: type[E], *, filters: Filters | None = None, include_deleted: bool = False
    ) -> int:
        spec = spec_for(kind)
        params = self._filter_params(spec, filters)  # refuses unknown columns first
        statement = self._store.statements.count(spec, filter_shape(filters), include_deleted)
        rows = await self._fetch(statement, params)
        return int(rows[0][0])

    async def aggregate(
        self,
        kind: type[E],
        *,
        group_by: Sequence[str] = (),
        sums: Sequence[str] = (),
        filters: Filters | None = None,
        include_deleted: bool = False,
    ) -> Sequence[Group]:
        spec = spec_for(kind)
        rules.check_aggregate(spec, group_by, sums)
        grouped, summed = tuple(group_by), tuple(sums)
        params = self._filter_params(spec, filters)  # refuses unknown columns first
        statement = self._store.statements.aggregate(
            spec, grouped, summed, filter_shape(filters), include_deleted
        )
        rows = await self._fetch(statement, params)
        codec = self._store.codec(kind)
        width = len(grouped)
        return [
            Group(
                key={
                    name: codec.value(name, value)
                    for name, value in zip(grouped, row[:width], strict=True)
                },
                count=int(row[width]),
                sums={
                    name: int(value) for name, value in zip(summed, row[width + 1 :], strict=True)
                },
            )
            for row in rows
        ]

    # -- writes (buffered) ---------------------------------------------------------------

    def _buffer(self, write: Write) -> None:
        self._check_writable()
        self._writes.append(write)

    async def insert(self, entity: E) -> None:
        spec = spec_for(type(entity))
        rules.check_entity_scope(entity, self._scope)
        rules.check_values(entity)
        params = self._store.codec(type(entity)).params(entity)
        entity_id: UUID = entity.id  # type: ignore[attr-defined]
        self._buffer(
            Write(
                spec,
                self._store.statements.insert(spec),
                params,
                entity_id=entity_id,
                operation="insert",
            )
        )

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        kind = type(entity)
        spec = spec_for(kind)
        rules.refuse_append_only(spec, "updated")
        rules.check_entity_scope(entity, self._scope)
        rules.check_values(entity)
        entity_id: UUID = entity.id  # type: ignore[attr-defined]
        params = self._store.codec(kind).params(entity)
        params.update(self._key(entity_id))
        expected: int | None = None
        if spec.versioned:
            expected = entity.version if expected_version is None else expected_version  # type: ignore[attr-defined]
            params["expected_version"] = expected
        statement = self._store.statements.update(spec)
        self._buffer(Write(spec, statement, params, True, entity_id, expected, "update"))
        return entity if expected is None else rules.at_version(entity, expected + 1)

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        spec = spec_for(kind)
        rules.refuse_not_deletable(spec)
        at = aware_utc(at, field="at")
        check_version = spec.versioned and expected_version is not None
        params = {**self._key(id), "deleted_at": self._store.encode(at)}
        if check_version:
            params["expected_version"] = expected_version
        statement = self._store.statements.soft_delete(spec, check_version)
        self._buffer(
            Write(
                spec,
                statement,
                params,
                True,
                id,
                expected_version if check_version else None,
                "soft_delete",
            )
        )

    # -- atomic primitives ---------------------------------------------------------------

    async def next_number(self, sequence: str, *, count: int = 1) -> int:
        """The scope's counter row, upserted: its lock queues concurrent allocations."""
        self._check_writable()
        taken = rules.number_count(count)
        params = {**self._scope_params, "s_name": rules.sequence_name(sequence), "s_count": taken}
        rows = await self._fetch(self._store.statements.next_number(), params)
        return int(rows[0][0]) - taken + 1

    def _lease(self, now: datetime, lease: timedelta) -> dict[str, Any]:
        """The lease parameters of a claim; the server's clock where there is one."""
        return {"until": self._store.encode(now + lease)}

    async def claim(
        self, kind: type[E], *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[E]:
        self._check_writable()
        spec = spec_for(kind)
        rules.check_claimable(spec)
        now = aware_utc(now, field="now")
        params = {
            **self._scope_params,
            "now": self._store.encode(now),
            "limit": rules.claim_size(limit),
            "offset": 0,
            "claimant": rules.storable_text(claimant, field="claimant"),
            **self._lease(now, lease),
        }
        rows = await self._write_returning(spec, self._store.statements.claim(spec), params)
        codec = self._store.codec(kind)
        claimed = [codec.entity(row) for row in rows]
        # RETURNING follows no ORDER BY: put them in the order the port promises.
        claimed.sort(key=lambda row: (row.due_at, row.id))  # type: ignore[attr-defined]
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
        spec = spec_for(kind)
        rules.check_increment(spec, column, by, at_most)
        bound = "literal" if isinstance(at_most, int) else at_most
        stamp = at is not None and "updated_at" in spec.fields
        params = {**self._key(id), "by": by}
        if isinstance(at_most, int):
            params["bound"] = at_most
        if stamp:
            params["at"] = self._store.encode(aware_utc(at, field="at"))
        statement = self._store.statements.increment(spec, column, bound, stamp)
        rows = await self._write_returning(spec, statement, params)
        if rows:
            return self._store.codec(kind).entity(rows[0])
        exists = self._store.statements.exists(spec, include_deleted=False)
        if not await self._fetch(exists, self._key(id)):
            raise rules.missing(spec, id)
        return None

    async def insert_or_get(self, entity: E, *, on: Sequence[str]) -> tuple[E, bool]:
        self._check_writable()
        kind = type(entity)
        spec = spec_for(kind)
        key = rules.unique_key_on(spec, on)
        rules.check_entity_scope(entity, self._scope)
        rules.check_values(entity)
        params = self._store.codec(kind).params(entity)
        statement = self._store.statements.insert_if_absent(spec)
        if await self._write_returning(spec, statement, params):
            return entity, True
        values: dict[str, Any] = {column: getattr(entity, column) for column in key.columns}
        values.update(key.where)
        stored = await self.find(kind, **values) if key.holds(entity) else None
        if stored is None:  # refused for another of its unique keys, or its id
            raise rules.unique_conflict(spec, _taken_key(spec, key))
        return stored, False


def _taken_key(spec: EntitySpec[Any], asked: UniqueKey) -> tuple[str, ...]:
    """The key to name when ``asked`` was free but the insert was refused: the kind's first
    other unique key, or its id when it has none."""
    others = [key.columns for key in spec.unique if key is not asked]
    return others[0] if others else ("id",)


class SqlSweep:
    """The two cross-tenant reads, through a transaction opened for the sweep's livemode."""

    def __init__(self, transaction: SqlTransaction) -> None:
        self._tx = transaction

    async def due(self, kind: type[E], *, now: datetime, limit: int) -> Sequence[E]:
        tx = self._tx
        spec = spec_for(kind)
        rules.check_claimable(spec)
        params = {
            **tx._scope_params,
            "now": tx._store.encode(aware_utc(now, field="now")),
            "limit": rules.claim_size(limit),
            "offset": 0,
        }
        rows = await tx._fetch(tx._store.statements.due_in_every_tenant(spec), params)
        codec = tx._store.codec(kind)
        return [codec.entity(row) for row in rows]

    async def owners(self, kind: type[E], **key: object) -> Sequence[E]:
        tx = self._tx
        spec = spec_for(kind)
        params = tx._filter_params(spec, key)
        params.update(limit=rules.MAX_PAGE_SIZE, offset=0)
        rows = await tx._fetch(tx._store.statements.owners(spec, filter_shape(key)), params)
        codec = tx._store.codec(kind)
        return [codec.entity(row) for row in rows]
