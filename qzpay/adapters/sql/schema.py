"""The one SQLAlchemy Core ``MetaData`` builder both SQL adapters use.

Tables, columns, unique indexes and references come from ``qzpay.domain.registry`` (columns
are the attrs fields of each domain type), shaped by the table prefix and the tenancy mode:

- every object the schema creates (tables, indexes, constraints, triggers) is named with the
  prefix, so two prefixes live in one database without a name clash;
- unique keys include ``livemode`` (and ``tenant_id`` in multi mode) and, for soft-deletable
  kinds, are partial on ``deleted_at IS NULL`` so a deleted row frees its key;
- references are composite ``(column, livemode[, tenant_id])`` foreign keys, so the database
  itself refuses a row that points into another livemode or tenant;
- ``CHECK`` constraints protect money: amounts are never negative, refunds never exceed the
  payment.
"""

from __future__ import annotations

import hashlib
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import attrs
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    and_,
    false,
    literal,
    literal_column,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from qzpay.adapters import storage_rules as rules
from qzpay.domain.registry import SPECS, EntitySpec

_MAX_IDENTIFIER = 63  # PostgreSQL's limit; SQLite has none

# Columns that hold money or counts and must never be negative, wherever they appear.
_SIGNED: dict[str, frozenset[str]] = {
    "invoice_lines": frozenset({"unit_amount", "amount"}),
    "invoices": frozenset({"subtotal", "tax", "total"}),
}
"""Money columns that may be negative in one table: a credit line (a proration's unused
time, Stripe's negative invoice items), and a draft whose credits exceed its charges so
far (nothing is due on it: ``amount_due`` stays at least 0)."""
_NON_NEGATIVE = frozenset(
    {
        "amount",
        "unit_amount",
        "subtotal",
        "discount",
        "tax",
        "total",
        "amount_paid",
        "amount_due",
        "amount_applied",
        "amount_off",
        "refunded_amount",
        "discount_amount",
        "times_redeemed",
        "quantity",
        "items_processed",
        "current_value",
        "max_value",
        "trial_days",
    }
)
_EXTRA_CHECKS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "payments": (("refunded_le_amount", "refunded_amount <= amount"),),
    "invoices": (("total_sum", "total = subtotal - discount + tax"),),
    "prices": (("interval_count_positive", "interval_count >= 1"),),
    "subscriptions": (("interval_count_positive", "interval_count >= 1"),),
}


def constraint_name(prefix: str, table: str, suffix: str) -> str:
    """``{prefix}{table}_{suffix}``, shortened with a hash where PostgreSQL would truncate it."""
    name = f"{prefix}{table}_{suffix}"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: _MAX_IDENTIFIER - 9]}_{digest}"


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        return rest[0], True
    return annotation, False


def _sql_type(annotation: Any) -> TypeEngine[Any]:
    origin = typing.get_origin(annotation) or annotation
    if origin is UUID:
        return Uuid(as_uuid=True)
    if origin is bool:
        return Boolean()
    if origin is int:
        return BigInteger()
    if origin is datetime:
        return DateTime(timezone=True)
    if origin is Decimal:
        # SQLite's NUMERIC affinity would store a float: keep the exact decimal text there.
        return Numeric(asdecimal=True).with_variant(Text(), "sqlite")
    if isinstance(origin, type) and issubclass(origin, Enum | str):
        return Text()
    if origin in (tuple, Mapping, dict, list, typing.Any) or (
        isinstance(origin, type) and issubclass(origin, Mapping)
    ):
        return JSON().with_variant(JSONB(), "postgresql")
    raise TypeError(f"no SQL type for {annotation!r}")


def _columns(spec: EntitySpec[Any], multi_tenant: bool) -> list[Column[Any]]:
    columns: list[Column[Any]] = []
    for field in attrs.fields(spec.kind):
        if field.name == "tenant_id":
            if multi_tenant:
                columns.append(Column("tenant_id", Text(), nullable=False))
            continue
        annotation, nullable = _unwrap_optional(field.type)
        default = spec.defaults.get(field.name)
        columns.append(
            Column(
                field.name,
                _sql_type(annotation),
                primary_key=field.name == "id",
                nullable=nullable,
                server_default=None if default is None else _default_sql(default),
            )
        )
    return columns


def _default_sql(value: str | bool | int) -> ColumnElement[Any]:
    if isinstance(value, bool):
        return true() if value else false()
    if isinstance(value, int):
        return literal_column(str(value))
    return literal(value, Text())


def _scope_columns(multi_tenant: bool) -> tuple[str, ...]:
    return ("livemode", "tenant_id") if multi_tenant else ("livemode",)


def _table(
    metadata: MetaData,
    prefix: str,
    spec: EntitySpec[Any],
    multi_tenant: bool,
    referenced: set[str],
) -> Table:
    scope = _scope_columns(multi_tenant)
    name = spec.table
    table = Table(prefix + name, metadata, *_columns(spec, multi_tenant))
    signed = _SIGNED.get(name, frozenset())
    for column in table.columns:
        if column.name in _NON_NEGATIVE and column.name not in signed:
            table.append_constraint(
                CheckConstraint(
                    f"{column.name} >= 0",
                    name=constraint_name(prefix, name, f"{column.name}_ck"),
                )
            )
    for suffix, condition in _EXTRA_CHECKS.get(name, ()):
        table.append_constraint(
            CheckConstraint(condition, name=constraint_name(prefix, name, f"{suffix}_ck"))
        )
    if spec.versioned:
        table.append_constraint(
            CheckConstraint("version >= 1", name=constraint_name(prefix, name, "version_ck"))
        )
    if name in referenced:
        # The target of composite foreign keys: (id, livemode[, tenant_id]) must be a key.
        table.append_constraint(
            UniqueConstraint("id", *scope, name=constraint_name(prefix, name, "scope_key"))
        )
    for column_name, target in spec.references.items():
        table.append_constraint(
            ForeignKeyConstraint(
                [column_name, *scope],
                [f"{prefix}{target}.id", *(f"{prefix}{target}.{c}" for c in scope)],
                name=constraint_name(prefix, name, f"{column_name}_fk"),
            )
        )
        Index(
            constraint_name(prefix, name, f"{column_name}_idx"),
            *(table.c[column] for column in (*scope, column_name)),
        )
    for key in spec.unique:
        conditions: list[ColumnElement[bool]] = [
            table.c[column] == literal(value, table.c[column].type)
            for column, value in key.where.items()
        ]
        if spec.soft_delete:
            conditions.insert(0, table.c.deleted_at.is_(None))
        where = and_(*conditions) if conditions else None
        Index(
            constraint_name(prefix, name, key.name + "_key"),
            *(table.c[column] for column in (*scope, *key.columns)),
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )
    if spec.claimable:
        Index(due_index_name(prefix, spec.table), *(table.c[c] for c in (*scope, "due_at")))
    return table


def due_index_name(prefix: str, table: str = "subscriptions") -> str:
    """The index job runners' claims read (``due_at <= now`` within a scope)."""
    return constraint_name(prefix, table, "due_at_idx")


@attrs.frozen(kw_only=True)
class Schema:
    """The built ``MetaData`` plus the handles adapters need by entity kind."""

    prefix: str
    multi_tenant: bool
    metadata: MetaData
    tables: Mapping[type[Any], Table]
    currencies: Table
    sequences: Table
    """Gapless counters, one row per (scope, name): ``next_number("invoice")``."""
    migrations: Table
    schema_info: Table
    """One row: the prefix and tenancy the schema was created for, checked on every open."""

    def table(self, spec: EntitySpec[Any]) -> Table:
        return self.tables[spec.kind]


def build_schema(prefix: str, *, multi_tenant: bool) -> Schema:
    """Build the whole schema for one prefix and tenancy mode (validated before any SQL)."""
    prefix = rules.table_prefix(prefix)
    metadata = MetaData()
    referenced = {target for spec in SPECS for target in spec.references.values()}
    tables = {spec.kind: _table(metadata, prefix, spec, multi_tenant, referenced) for spec in SPECS}
    currencies = Table(
        f"{prefix}currencies",
        metadata,
        Column("code", Text(), primary_key=True),
        Column("exponent", Integer(), nullable=False),
        Column("name", Text(), nullable=False),
    )
    scope = _scope_columns(multi_tenant)
    sequence_columns: list[Column[Any]] = [Column("livemode", Boolean(), nullable=False)]
    if multi_tenant:
        sequence_columns.insert(0, Column("tenant_id", Text(), nullable=False))
    sequences = Table(
        f"{prefix}sequences",
        metadata,
        *sequence_columns,
        Column("name", Text(), nullable=False),
        Column("last_number", BigInteger(), nullable=False),
        PrimaryKeyConstraint(*scope, "name", name=constraint_name(prefix, "sequences", "pk")),
    )
    migrations = Table(
        f"{prefix}migrations",
        metadata,
        Column("version", Integer(), primary_key=True),
        Column("name", Text(), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False),
    )
    schema_info = Table(
        f"{prefix}schema_info",
        metadata,
        Column("prefix", Text(), primary_key=True),
        Column("tenancy", Text(), nullable=False),
        CheckConstraint(
            "tenancy IN ('single', 'multi')",
            name=constraint_name(prefix, "schema_info", "tenancy_ck"),
        ),
    )
    return Schema(
        prefix=prefix,
        multi_tenant=multi_tenant,
        metadata=metadata,
        tables=tables,
        currencies=currencies,
        sequences=sequences,
        migrations=migrations,
        schema_info=schema_info,
    )


def append_only_tables(schema: Schema) -> list[Table]:
    return [schema.tables[spec.kind] for spec in SPECS if spec.append_only]


@attrs.frozen
class ConstraintOwner:
    """Which entity kind and columns a named constraint or index guards."""

    spec: EntitySpec[Any]
    columns: tuple[str, ...]


def constraint_owners(schema: Schema) -> dict[str, ConstraintOwner]:
    """Constraint and index names → what they protect, to name the field in an error.

    Scope columns (livemode, tenant_id) are left out: they are never the user's mistake.
    """
    owners: dict[str, ConstraintOwner] = {}
    scope = {"livemode", "tenant_id"}
    for spec in SPECS:
        table = schema.tables[spec.kind]
        for index in table.indexes:
            columns = tuple(c.name for c in index.columns if c.name not in scope)
            owners[str(index.name)] = ConstraintOwner(spec, columns)
        for constraint in table.constraints:
            if constraint.name is None:
                continue
            if isinstance(constraint, ForeignKeyConstraint):
                columns = tuple(c for c in constraint.column_keys if c not in scope)
            else:
                columns = tuple(
                    c.name for c in getattr(constraint, "columns", ()) if c.name not in scope
                )
            owners[str(constraint.name)] = ConstraintOwner(spec, columns)
        owners.setdefault(f"{table.name}_pkey", ConstraintOwner(spec, ("id",)))
    return owners
