"""Versioned schema changes, recorded in a ``{prefix}migrations`` table.

qzpay keeps a small ordered list of DDL steps instead of Alembic (see
docs/decisions/0003-migrations.md): the schema is built per prefix and tenancy mode at run
time, which Alembic's file-per-revision model does not fit, and an embedded SQLite user
should get a working schema on first open with no tool to run.

A database with no migrations table gets the current schema in one go and is stamped with
every version; an older one gets the steps after its version, in order, in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql import ClauseElement

from qzpay.adapters.sql.schema import (
    Schema,
    append_only_tables,
    constraint_name,
    due_index_name,
)
from qzpay.domain.registry import spec_for
from qzpay.domain.subscriptions import Subscription
from qzpay.money import CURRENCIES


@attrs.frozen
class Migration:
    version: int
    name: str
    statements: Callable[[Schema, Dialect], Sequence[str]]


def _append_only_triggers(schema: Schema, dialect: Dialect) -> list[str]:
    """Audit logs and webhook events refuse UPDATE and DELETE in the database itself."""
    tables: list[Table] = append_only_tables(schema)
    if dialect.name == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS "
            f"{constraint_name(schema.prefix, table.name[len(schema.prefix) :], op + '_refused')} "
            f"BEFORE {op.upper()} ON {table.name} "
            f"BEGIN SELECT RAISE(ABORT, '{table.name} is append-only'); END"
            for table in tables
            for op in ("update", "delete")
        ]
    function = f"{schema.prefix}refuse_change"
    statements = [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME "
        f"USING ERRCODE = 'restrict_violation'; END $$"
    ]
    statements += [
        f"CREATE OR REPLACE TRIGGER "
        f"{constraint_name(schema.prefix, table.name[len(schema.prefix) :], 'change_refused')} "
        f"BEFORE UPDATE OR DELETE ON {table.name} FOR EACH ROW EXECUTE FUNCTION {function}()"
        for table in tables
    ]
    return statements


def _seed_currencies(schema: Schema, dialect: Dialect) -> list[str]:
    rows = [{"code": c.code, "exponent": c.exponent, "name": c.name} for c in CURRENCIES.values()]
    statement: ClauseElement = (
        sqlite.insert(schema.currencies).values(rows).on_conflict_do_nothing()
        if dialect.name == "sqlite"
        else postgresql.insert(schema.currencies).values(rows).on_conflict_do_nothing()
    )
    return [str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))]


def create_statements(schema: Schema, dialect: Dialect) -> list[str]:
    """All DDL of the current schema, each statement safe to run again."""
    statements: list[str] = []
    for table in schema.metadata.sorted_tables:
        statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        statements.extend(
            str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
            for index in sorted(table.indexes, key=lambda index: str(index.name))
        )
    statements += _append_only_triggers(schema, dialect)
    statements += _seed_currencies(schema, dialect)
    return statements


def _due_index(schema: Schema, dialect: Dialect) -> list[str]:
    table = schema.tables[spec_for(Subscription).kind]
    index = next(i for i in table.indexes if i.name == due_index_name(schema.prefix))
    return [str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))]


# Version 1 was the schema before the job runner claimed subscriptions by ``due_at``.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", create_statements),
    Migration(2, "index subscriptions by due_at for job claims", _due_index),
)
LATEST_VERSION = MIGRATIONS[-1].version


def pending(current_version: int | None) -> list[Migration]:
    """The steps a database at ``current_version`` (``None``: no schema) still needs."""
    if current_version is None:
        return []
    return [migration for migration in MIGRATIONS if migration.version > current_version]
