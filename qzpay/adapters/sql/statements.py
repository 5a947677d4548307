"""SQL for the generic storage operations, built with SQLAlchemy Core and compiled once.

Each statement shape (operation, entity kind, which filters, whether deleted rows count) is
built and compiled for the dialect the first time it is needed and then reused, so a call
costs a dictionary lookup, never a rebuild (DESIGN §11). Adapters run the compiled text
straight on their driver with parameters named as below:

- scope: ``s_livemode`` and ``s_tenant_id``; the row's id in a WHERE: ``k_id``;
- columns being written: the column's own name;
- filters: ``f_<column>`` (``f_<column>_lo``/``_hi`` for a range; for ``IN`` one parameter
  holding every value: an array on PostgreSQL, JSON text read by ``json_each`` on SQLite, so
  the statement is the same whatever the number of values); the page cursor: ``cursor``; the
  page size: ``limit`` (and ``offset``, always 0: SQLite's compiler renders one with any
  LIMIT);
- the version an update expects: ``expected_version``;
- claims: ``now``, ``claimant``, ``lease`` (PostgreSQL: an interval added to the server's
  clock) or ``until`` (SQLite: ``now + lease``, computed by the caller);
- increments: ``by``, ``bound`` (a literal bound), ``at``; sequences: ``s_name``.
"""

from __future__ import annotations

import json
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from sqlalchemy import (
    ColumnElement,
    Interval,
    Table,
    any_,
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
from qzpay.contracts.filters import Condition, Op
from qzpay.domain.registry import LEASE_COLUMNS, EntitySpec

_IMMUTABLE = frozenset({"id", "livemode", "tenant_id", "created_at"})
MAX_CACHED = 512
"""Statement shapes kept compiled per store; the least recently used one goes past this."""


@attrs.frozen(cache_hash=True)
class Compiled:
    """SQL text for one dialect and the bind names in the order a positional driver wants.

    Its hash is cached: write plans key their caches by the statements of a transaction,
    once per call.
    """

    sql: str
    names: tuple[str, ...]
    _values: Callable[[Mapping[str, Any]], tuple[Any, ...]] = attrs.field(
        init=False, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_values", values_of(self.names))

    def positional(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The values of ``params`` in bind order (one C call: this runs per statement)."""
        return self._values(params)


def values_of(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The values of ``names`` from a parameter mapping, always as a tuple."""
    if not names:
        return lambda params: ()
    getter = operator.itemgetter(*names)
    if len(names) == 1:
        return lambda params: (getter(params),)
    return getter


FilterShape = tuple[tuple[str, str], ...]
"""Filter columns in order, each with its operator (``eq``, ``is_null``, ``gte``...)."""


def _op(value: object) -> str:
    if isinstance(value, Condition):
        return value.op.value
    return Op.IS_NULL.value if value is None else "eq"


def filter_shape(filters: Mapping[str, object] | None) -> FilterShape:
    return tuple((name, _op(value)) for name, value in (filters or {}).items())


class Statements:
    """The compiled-statement cache for one schema and one dialect."""

    def __init__(self, schema: Schema, dialect: Dialect) -> None:
        self._schema = schema
        self._dialect = dialect
        self._cache: OrderedDict[tuple[Any, ...], Compiled] = OrderedDict()
        self._postgres = dialect.name == "postgresql"

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    def compile(self, statement: ClauseElement) -> Compiled:
        compiled = statement.compile(dialect=self._dialect)
        names = tuple(getattr(compiled, "positiontup", None) or compiled.params)
        return Compiled(str(compiled), names)

    def _cached(self, key: tuple[Any, ...], build: Callable[[], ClauseElement]) -> Compiled:
        cache = self._cache
        found = cache.get(key)
        if found is None:
            found = cache[key] = self.compile(build())
            if len(cache) > MAX_CACHED:
                cache.popitem(last=False)
        elif len(cache) > MAX_CACHED // 2:
            cache.move_to_end(key)  # only once the cache could fill: free while it is small
        return found

    def _scoped(
        self,
        table: Table,
        spec: EntitySpec[Any],
        include_deleted: bool,
        *,
        every_tenant: bool = False,
    ) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [table.c.livemode == bindparam("s_livemode")]
        if self._schema.multi_tenant and not every_tenant:
            where.append(table.c.tenant_id == bindparam("s_tenant_id"))
        if spec.soft_delete and not include_deleted:
            where.append(table.c.deleted_at.is_(None))
        return where

    def in_values(self, values: Sequence[Any]) -> Any:
        """The one parameter an ``IN`` filter binds: an array, or JSON text on SQLite."""
        return list(values) if self._postgres else json.dumps(list(values))

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
        self,
        table: Table,
        spec: EntitySpec[Any],
        shape: FilterShape,
        include_deleted: bool,
        *,
        every_tenant: bool = False,
    ) -> list[ColumnElement[bool]]:
        where = self._scoped(table, spec, include_deleted, every_tenant=every_tenant)
        for name, op in shape:
            where.append(self._condition(table.c[name], name, op))
        return where

    def _condition(self, column: Any, name: str, op: str) -> ColumnElement[bool]:
        value: Any = bindparam(f"f_{name}")
        if op == "eq":
            return column == value  # type: ignore[no-any-return]
        if op == Op.IS_NULL:
            return column.is_(None)  # type: ignore[no-any-return]
        if op == Op.NOT_NULL:
            return column.is_not(None)  # type: ignore[no-any-return]
        if op == Op.LT:
            return column < value  # type: ignore[no-any-return]
        if op == Op.LTE:
            return column <= value  # type: ignore[no-any-return]
        if op == Op.GT:
            return column > value  # type: ignore[no-any-return]
        if op == Op.GTE:
            return column >= value  # type: ignore[no-any-return]
        if op == Op.WITHIN:
            lower: Any = bindparam(f"f_{name}_lo")
            upper: Any = bindparam(f"f_{name}_hi")
            return (column >= lower) & (column < upper)  # type: ignore[no-any-return]
        if op == Op.IN:
            if self._postgres:
                return column == any_(bindparam(f"f_{name}"))  # type: ignore[no-any-return]
            listed: Any = select(literal_column("value")).select_from(func.json_each(value))
            return column.in_(listed)  # type: ignore[no-any-return]
        raise AssertionError(op)

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

    def aggregate(
        self,
        spec: EntitySpec[Any],
        group_by: tuple[str, ...],
        sums: tuple[str, ...],
        shape: FilterShape,
        include_deleted: bool,
    ) -> Compiled:
        """Group values, ``count(*)`` and ``coalesce(sum(column), 0)`` per group, ordered by
        the group values ascending, NULL first."""
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            grouped = [table.c[name] for name in group_by]
            statement = select(
                *grouped,
                func.count(),
                *(func.coalesce(func.sum(table.c[name]), literal_column("0")) for name in sums),
            ).where(*self._filtered(table, spec, shape, include_deleted))
            if grouped:
                statement = statement.group_by(*grouped).order_by(
                    *(column.asc().nulls_first() for column in grouped)
                )
            return statement

        return self._cached(("aggregate", spec.kind, group_by, sums, shape, include_deleted), build)

    def update(self, spec: EntitySpec[Any]) -> Compiled:
        """Write every mutable column (not a claim's lease: only a claim writes that);
        versioned kinds only at the expected version."""
        table = self._schema.table(spec)
        fixed = _IMMUTABLE | set(LEASE_COLUMNS) if spec.claimable else _IMMUTABLE

        def build() -> ClauseElement:
            values: dict[str, Any] = {
                c.name: bindparam(c.name) for c in table.columns if c.name not in fixed
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
        """Bump one named counter of this scope by ``:s_count`` (creating it at that value)
        and return the new value: the last of the numbers taken.

        The upsert holds the counter row's lock until the transaction ends, so concurrent
        allocations queue on it, and a rolled-back allocation is given out again: no gap.
        """
        table = self._schema.sequences
        scope = ["livemode", "tenant_id"] if self._schema.multi_tenant else ["livemode"]

        def build() -> ClauseElement:
            dialect_insert = postgresql.insert if self._postgres else sqlite.insert
            values: dict[str, Any] = {name: bindparam(f"s_{name}") for name in (*scope, "name")}
            return (
                dialect_insert(table)
                .values(**values, last_number=bindparam("s_count", type_=table.c.last_number.type))
                .on_conflict_do_update(
                    index_elements=[*scope, "name"],
                    set_={
                        "last_number": table.c.last_number
                        + bindparam("s_count", type_=table.c.last_number.type)
                    },
                )
                .returning(table.c.last_number)
            )

        return self._cached(("next_number",), build)

    def _due(
        self, table: Table, spec: EntitySpec[Any], *, every_tenant: bool = False
    ) -> list[ColumnElement[bool]]:
        """Due by ``now`` and free of a live lease (on the server's clock on PostgreSQL)."""
        lease_clock: Any = func.clock_timestamp() if self._postgres else bindparam("now")
        return [
            *self._scoped(table, spec, False, every_tenant=every_tenant),
            table.c.due_at <= bindparam("now"),
            or_(table.c.claimed_until.is_(None), table.c.claimed_until <= lease_clock),
        ]

    def claim(self, spec: EntitySpec[Any]) -> Compiled:
        """Take the lease of the oldest due rows in one statement, returning them.

        The rows are chosen by a subquery that skips rows another transaction holds
        (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer at a time), so
        concurrent claimants get disjoint rows. Neither the version nor ``updated_at`` moves.
        """
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            chosen = (
                select(table.c.id)
                .where(*self._due(table, spec))
                .order_by(table.c.due_at, table.c.id)
                .limit(bindparam("limit"))
            )
            if self._postgres:
                chosen = chosen.with_for_update(skip_locked=True)
                until: Any = func.clock_timestamp() + bindparam("lease", type_=Interval())
            else:
                chosen = chosen.offset(bindparam("offset"))
                until = bindparam("until")
            return (
                update(table)
                .where(table.c.id.in_(chosen))
                .values(claimed_by=bindparam("claimant"), claimed_until=until)
                .returning(*table.columns)
            )

        return self._cached(("claim", spec.kind), build)

    def due_in_every_tenant(self, spec: EntitySpec[Any]) -> Compiled:
        """The cross-tenant read of a job runner: due rows of every tenant, oldest first."""
        table = self._schema.table(spec)
        return self._cached(
            ("due_everywhere", spec.kind),
            lambda: (
                select(*table.columns)
                .where(*self._due(table, spec, every_tenant=True))
                .order_by(table.c.due_at, table.c.id)
                .limit(bindparam("limit"))
                .offset(bindparam("offset"))
            ),
        )

    def owners(self, spec: EntitySpec[Any], shape: FilterShape) -> Compiled:
        """The cross-tenant read of a webhook: who holds this key, in every tenant."""
        table = self._schema.table(spec)
        return self._cached(
            ("owners", spec.kind, shape),
            lambda: (
                select(*table.columns)
                .where(*self._filtered(table, spec, shape, False, every_tenant=True))
                .order_by(table.c.id)
                .limit(bindparam("limit"))
                .offset(bindparam("offset"))
            ),
        )

    def increment(
        self, spec: EntitySpec[Any], column: str, bound: str | None, stamp: bool
    ) -> Compiled:
        """``column = column + :by`` where the result stays within the bound, returning the row.

        ``bound`` is ``None`` (no bound), ``"literal"`` (the ``bound`` parameter) or the name
        of the column holding it (NULL there: no bound). The UPDATE's row lock holds the row
        until the transaction ends.
        """
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            target = table.c[column]
            raised = target + bindparam("by")
            where = [table.c.id == bindparam("k_id"), *self._scoped(table, spec, False)]
            if bound == "literal":
                where.append(raised <= bindparam("bound"))
            elif bound is not None:
                where.append(or_(table.c[bound].is_(None), raised <= table.c[bound]))
            values: dict[str, Any] = {column: raised}
            if spec.versioned:
                values["version"] = table.c.version + literal_column("1")
            if stamp:
                values["updated_at"] = bindparam("at")
            return update(table).where(*where).values(values).returning(*table.columns)

        return self._cached(("increment", spec.kind, column, bound, stamp), build)

    def insert_if_absent(self, spec: EntitySpec[Any]) -> Compiled:
        """INSERT that does nothing (and returns no row) when a unique key is taken."""
        table = self._schema.table(spec)

        def build() -> ClauseElement:
            dialect_insert = postgresql.insert if self._postgres else sqlite.insert
            values: dict[str, Any] = {c.name: bindparam(c.name) for c in table.columns}
            return (
                dialect_insert(table).values(values).on_conflict_do_nothing().returning(table.c.id)
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
