"""SQL for the generic storage operations, built with SQLAlchemy Core and compiled once.

Each statement shape (operation, entity kind, which filters, whether deleted rows count) is
built and compiled for the dialect the first time it is needed and then reused, so a call
costs a dictionary lookup, never a rebuild (DESIGN §11). Adapters run the compiled text
straight on their driver with parameters named as below:

- scope: ``s_livemode`` and ``s_tenant_id``; the row's id in a WHERE: ``k_id``;
- columns being written: the column's own name;
- equality filters: ``f_<column>``; the page cursor: ``cursor``; the page size: ``limit``
  (and ``offset``, always 0: SQLite's compiler renders one with any LIMIT);
- the version an update expects: ``expected_version``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from sqlalchemy import (
    ColumnElement,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from qzpay.adapters.sql.schema import Schema
from qzpay.domain.registry import EntitySpec

_IMMUTABLE = frozenset({"id", "livemode", "tenant_id", "created_at"})


@attrs.frozen
class Compiled:
    """SQL text for one dialect and the bind names in the order a positional driver wants."""

    sql: str
    names: tuple[str, ...]

    def positional(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


FilterShape = tuple[tuple[str, bool], ...]
"""Filter columns in order, each with whether the value is NULL (``IS NULL`` vs ``=``)."""


def filter_shape(filters: dict[str, object] | None) -> FilterShape:
    return tuple((name, value is None) for name, value in (filters or {}).items())


class Statements:
    """The compiled-statement cache for one schema and one dialect."""

    def __init__(self, schema: Schema, dialect: Dialect) -> None:
        self._schema = schema
        self._dialect = dialect
        self._cache: dict[tuple[Any, ...], Compiled] = {}

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    def compile(self, statement: ClauseElement) -> Compiled:
        compiled = statement.compile(dialect=self._dialect)
        names = tuple(getattr(compiled, "positiontup", None) or compiled.params)
        return Compiled(str(compiled), names)

    def _cached(self, key: tuple[Any, ...], build: Callable[[], ClauseElement]) -> Compiled:
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self.compile(build())
        return found

    def _scoped(
        self, table: Table, spec: EntitySpec[Any], include_deleted: bool
    ) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [table.c.livemode == bindparam("s_livemode")]
        if self._schema.multi_tenant:
            where.append(table.c.tenant_id == bindparam("s_tenant_id"))
        if spec.soft_delete and not include_deleted:
            where.append(table.c.deleted_at.is_(None))
        return where

    def columns(self, spec: EntitySpec[Any]) -> Sequence[str]:
        return [column.name for column in self._schema.table(spec).columns]

    def insert(self, spec: EntitySpec[Any]) -> Compiled:
        table = self._schema.table(spec)
        return self._cached(
            ("insert", spec.kind),
            lambda: insert(table).values({c.name: bindparam(c.name) for c in table.columns}),
        )

    def get(self, spec: EntitySpec[Any], include_deleted: bool) -> Compiled:
        table = self._schema.table(spec)
        return self._cached(
            ("get", spec.kind, include_deleted),
            lambda: select(*table.columns).where(
                table.c.id == bindparam("k_id"), *self._scoped(table, spec, include_deleted)
            ),
        )

    def _filtered(
        self, table: Table, spec: EntitySpec[Any], shape: FilterShape, include_deleted: bool
    ) -> list[ColumnElement[bool]]:
        where = self._scoped(table, spec, include_deleted)
        for name, is_null in shape:
            column = table.c[name]
            where.append(column.is_(None) if is_null else column == bindparam(f"f_{name}"))
        return where

    def select(
        self, spec: EntitySpec[Any], shape: FilterShape, include_deleted: bool, after_cursor: bool
    ) -> Compiled:
        """Rows newest first (ids are time-ordered), at most ``limit``, before ``cursor``."""
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            where = self._filtered(table, spec, shape, include_deleted)
            if after_cursor:
                where.append(table.c.id < bindparam("cursor"))
            return (
                select(*table.columns)
                .where(*where)
                .order_by(table.c.id.desc())
                .limit(bindparam("limit"))
                .offset(bindparam("offset"))  # SQLite renders an OFFSET with any LIMIT
            )

        return self._cached(("select", spec.kind, shape, include_deleted, after_cursor), build)

    def count(self, spec: EntitySpec[Any], shape: FilterShape, include_deleted: bool) -> Compiled:
        table = self._schema.table(spec)
        return self._cached(
            ("count", spec.kind, shape, include_deleted),
            lambda: (
                select(func.count())
                .select_from(table)
                .where(*self._filtered(table, spec, shape, include_deleted))
            ),
        )

    def update(self, spec: EntitySpec[Any]) -> Compiled:
        """Write every mutable column; versioned kinds only at the expected version."""
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            values: dict[str, Any] = {
                c.name: bindparam(c.name) for c in table.columns if c.name not in _IMMUTABLE
            }
            where = [table.c.id == bindparam("k_id"), *self._scoped(table, spec, False)]
            if spec.versioned:
                values["version"] = table.c.version + literal_column("1")
                where.append(table.c.version == bindparam("expected_version"))
            return update(table).where(*where).values(values)

        return self._cached(("update", spec.kind), build)

    def soft_delete(self, spec: EntitySpec[Any], check_version: bool) -> Compiled:
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            values: dict[str, Any] = {"deleted_at": bindparam("deleted_at")}
            if "updated_at" in spec.fields:
                values["updated_at"] = bindparam("deleted_at")
            where = [table.c.id == bindparam("k_id"), *self._scoped(table, spec, False)]
            if spec.versioned:
                values["version"] = table.c.version + literal_column("1")
                if check_version:
                    where.append(table.c.version == bindparam("expected_version"))
            return update(table).where(*where).values(values)

        return self._cached(("soft_delete", spec.kind, check_version), build)

    def exists(self, spec: EntitySpec[Any], include_deleted: bool) -> Compiled:
        """One row (its id) if it exists in scope: tells a stale version from a missing row."""
        table = self._schema.table(spec)
        return self._cached(
            ("exists", spec.kind, include_deleted),
            lambda: select(table.c.id).where(
                table.c.id == bindparam("k_id"), *self._scoped(table, spec, include_deleted)
            ),
        )

    def next_number(self) -> Compiled:
        """Bump this scope's invoice counter (creating it at 1) and return the new value.

        The upsert holds the counter row's lock until the transaction ends, so concurrent
        allocations queue on it, and a rolled-back allocation is given out again: no gap.
        """
        table = self._schema.invoice_sequences
        scope = ["livemode", "tenant_id"] if self._schema.multi_tenant else ["livemode"]

        def build() -> ClauseElement:
            dialect_insert = (
                postgresql.insert if self._dialect.name == "postgresql" else sqlite.insert
            )
            values: dict[str, Any] = {name: bindparam(f"s_{name}") for name in scope}
            return (
                dialect_insert(table)
                .values(**values, last_number=literal_column("1"))
                .on_conflict_do_update(
                    index_elements=scope,
                    set_={"last_number": table.c.last_number + literal_column("1")},
                )
                .returning(table.c.last_number)
            )

        return self._cached(("next_number",), build)

    def due_subscriptions(self, spec: EntitySpec[Any], *, skip_locked: bool) -> Compiled:
        """Unclaimed subscriptions due by ``now``, oldest due first, at most ``limit``."""
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            statement = (
                select(*table.columns)
                .where(
                    *self._scoped(table, spec, False),
                    table.c.due_at <= bindparam("now"),
                    or_(table.c.claimed_until.is_(None), table.c.claimed_until <= bindparam("now")),
                )
                .order_by(table.c.due_at, table.c.id)
                .limit(bindparam("limit"))
                .offset(bindparam("offset"))
            )
            return statement.with_for_update(skip_locked=True) if skip_locked else statement

        return self._cached(("due", spec.kind, skip_locked), build)

    def lock(self, spec: EntitySpec[Any]) -> Compiled:
        """``SELECT id ... FOR UPDATE``: take the row's lock for the rest of the transaction."""
        table = self._schema.table(spec)
        return self._cached(
            ("lock", spec.kind),
            lambda: (
                select(table.c.id)
                .where(table.c.id == bindparam("k_id"), *self._scoped(table, spec, False))
                .with_for_update()
            ),
        )

    def insert_if_absent(self, spec: EntitySpec[Any]) -> Compiled:
        """INSERT that does nothing (and returns no row) when a unique key is taken."""
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            values: dict[str, Any] = {c.name: bindparam(c.name) for c in table.columns}
            return (
                postgresql.insert(table)
                .values(values)
                .on_conflict_do_nothing()
                .returning(table.c.id)
            )

        return self._cached(("insert_if_absent", spec.kind), build)

    def get_many(self, specs: tuple[EntitySpec[Any], ...]) -> Compiled:
        """One row per kind by id (``k0``, ``k1``...), side by side in one result row.

        Each lookup is a subquery LEFT JOINed to a one-row constant, so a missing row is a
        run of NULLs and the statement always returns exactly one row.
        """

        def build() -> ClauseElement:
            joined: Any = select(literal_column("1").label("one")).subquery("one")
            columns: list[Any] = []
            for index, spec in enumerate(specs):
                table = self._schema.table(spec)
                lookup = (
                    select(*table.columns)
                    .where(table.c.id == bindparam(f"k{index}"), *self._scoped(table, spec, False))
                    .subquery(f"r{index}")
                )
                joined = joined.outerjoin(lookup, true())
                columns.extend(lookup.c)
            return select(*columns).select_from(joined)

        return self._cached(("get_many", tuple(spec.kind for spec in specs)), build)
