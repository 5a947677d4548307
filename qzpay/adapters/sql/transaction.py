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
from typing import Any, Protocol, TypeVar
from uuid import UUID

import attrs

from qzpay.adapters import storage_rules as rules
from qzpay.adapters.sql.rows import RowCodec
from qzpay.adapters.sql.statements import Compiled, Statements, filter_shape
from qzpay.contracts.storage import Filters, Page, Scope
from qzpay.domain.registry import EntitySpec, spec_for
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConfigurationError, QZPayError
from qzpay.timestamps import aware_utc

E = TypeVar("E")


class SqlStore(Protocol):
    """What a transaction needs from its store."""

    @property
    def statements(self) -> Statements: ...

    def codec(self, kind: type[E]) -> RowCodec[E]: ...

    def encode(self, value: object) -> Any: ...


@attrs.frozen
class Write:
    """One buffered statement on the row ``entity_id``; ``checked`` ones (UPDATEs) must hit
    exactly one row."""

    spec: EntitySpec[Any]
    statement: Compiled
    params: dict[str, Any]
    checked: bool = False
    entity_id: UUID | None = None
    expected_version: int | None = None

    def no_row(self, found: bool) -> QZPayError:
        """The error for a checked write that hit no row: missing, or a stale version."""
        assert self.entity_id is not None
        if not found or self.expected_version is None:
            return rules.missing(self.spec, self.entity_id)
        return rules.stale(self.spec, self.entity_id, self.expected_version)


class SqlTransaction:
    """Generic reads and buffered writes over compiled statements."""

    # Claims skip rows another transaction holds (PostgreSQL); SQLite has one writer anyway.
    skip_locked = False

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

    def _filter_params(self, spec: EntitySpec[Any], filters: Filters | None) -> dict[str, Any]:
        rules.check_filters(spec, filters)
        params = dict(self._scope_params)
        for name, value in (filters or {}).items():
            if value is not None:
                params[f"f_{name}"] = self._store.encode(value)
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
            spec, filter_shape(dict(filters or {})), include_deleted, cursor is not None
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
        statement = self._store.statements.count(
            spec, filter_shape(dict(filters or {})), include_deleted
        )
        rows = await self._fetch(statement, self._filter_params(spec, filters))
        return int(rows[0][0])

    # -- writes (buffered) ---------------------------------------------------------------

    def _buffer(self, write: Write) -> None:
        self._check_writable()
        self._writes.append(write)

    async def insert(self, entity: E) -> None:
        spec = spec_for(type(entity))
        rules.check_entity_scope(entity, self._scope)
        rules.check_timestamps(entity)
        params = self._store.codec(type(entity)).params(entity)
        entity_id: UUID = entity.id  # type: ignore[attr-defined]
        self._buffer(Write(spec, self._store.statements.insert(spec), params, entity_id=entity_id))

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        kind = type(entity)
        spec = spec_for(kind)
        rules.refuse_append_only(spec, "updated")
        rules.check_entity_scope(entity, self._scope)
        rules.check_timestamps(entity)
        entity_id: UUID = entity.id  # type: ignore[attr-defined]
        params = self._store.codec(kind).params(entity)
        params.update(self._key(entity_id))
        expected: int | None = None
        if spec.versioned:
            expected = entity.version if expected_version is None else expected_version  # type: ignore[attr-defined]
            params["expected_version"] = expected
        statement = self._store.statements.update(spec)
        self._buffer(Write(spec, statement, params, True, entity_id, expected))
        return entity if expected is None else attrs.evolve(entity, version=expected + 1)  # type: ignore[misc]

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
            Write(spec, statement, params, True, id, expected_version if check_version else None)
        )

    # -- atomic operations whose SQL is the same on every dialect -----------------------

    async def next_invoice_number(self) -> int:
        """The scope's counter row, upserted: its lock queues concurrent allocations."""
        self._check_writable()
        rows = await self._fetch(self._store.statements.next_number(), self._scope_params)
        return int(rows[0][0])

    async def claim_due_subscriptions(
        self, *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[Subscription]:
        self._check_writable()
        spec = spec_for(Subscription)
        codec = self._store.codec(Subscription)
        statement = self._store.statements.due_subscriptions(spec, skip_locked=self.skip_locked)
        params = {
            **self._scope_params,
            "now": self._store.encode(aware_utc(now, field="now")),
            "limit": rules.claim_size(limit),
            "offset": 0,
        }
        claimed = []
        for row in await self._fetch(statement, params):
            due = codec.entity(row)
            claimed.append(
                await self.update(attrs.evolve(due, claimed_by=claimant, claimed_until=now + lease))
            )
        return claimed
