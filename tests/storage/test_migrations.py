"""Migrations do not drift: a schema upgraded step by step from version 1 is the new schema.

Version 1 is frozen DDL (``qzpay/adapters/sql/schema_v1.py``), and so is every later step.
Each test here builds one database the way a new user gets it (the current metadata, in one
go) and one the way an old user gets it (version 1 as it ran, then every step), and compares
what the databases themselves report: columns (type, nullability, default), indexes (unique,
columns, predicate), constraints (primary, foreign, unique, check: name and expression),
triggers and functions, on SQLite and on PostgreSQL, for both tenancies and for a prefix long
enough that names are shortened with a hash. A field added to a domain class without a step
makes the two differ, which ``test_a_field_added_without_a_step_is_reported`` shows.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, Index, Text
from sqlalchemy.dialects import postgresql, sqlite

from qzpay import ConfigurationError
from qzpay.adapters.sql import migrations
from qzpay.adapters.sql.migrations import Layout
from qzpay.adapters.sql.schema import Schema, build_schema, constraint_name
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.conformance.factories import postgres_unavailable, postgres_url
from qzpay.domain.customers import Customer

pytestmark = pytest.mark.anyio

LONG_PREFIX = "qz_" + "x" * 27 + "_"  # 31 characters: the longest a prefix may be
PREFIXES = ["billing_", LONG_PREFIX]
Shape = dict[str, Any]
ALL_VERSIONS = [step.version for step in migrations.MIGRATIONS]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- comparing two shapes ----------------------------------------------------------------


def differences(new: Mapping[str, Any], upgraded: Mapping[str, Any], path: str = "") -> list[str]:
    """Every place two shapes disagree, as ``tables.customers.columns.nickname: ...``."""
    found: list[str] = []
    for key in sorted(set(new) | set(upgraded), key=str):
        here = f"{path}.{key}" if path else str(key)
        if key not in upgraded:
            found.append(f"{here}: only in the new schema: {new[key]!r}")
        elif key not in new:
            found.append(f"{here}: only in the upgraded schema: {upgraded[key]!r}")
        elif isinstance(new[key], Mapping) and isinstance(upgraded[key], Mapping):
            found += differences(new[key], upgraded[key], here)
        elif new[key] != upgraded[key]:
            found.append(f"{here}: new {new[key]!r}, upgraded {upgraded[key]!r}")
    return found


def _normal(sql: str, *names: str) -> str:
    """SQL text without the prefix (or schema) names and with whitespace made uniform."""
    for name in names:
        sql = sql.replace(name, "<p>")
    sql = re.sub(r"\s+", " ", sql.replace("IF NOT EXISTS ", "")).strip()
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", sql))


# -- SQLite: pragmas, and the CHECK and named constraints parsed from sqlite_master ----


def _top_level_items(body: str) -> list[str]:
    items, depth, start = [], 0, 0
    for index, char in enumerate(body):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(body[start:index])
            start = index + 1
    items.append(body[start:])
    return [item.strip() for item in items if item.strip()]


_CONSTRAINT_START = re.compile(r"^(CONSTRAINT|PRIMARY KEY|UNIQUE|CHECK|FOREIGN KEY)\b", re.I)


def sqlite_shape(path: Path, prefix: str) -> Shape:
    with closing(sqlite3.connect(path)) as connection:
        master = connection.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name LIKE ? ESCAPE '!'",
            (prefix.replace("_", "!_") + "%",),
        ).fetchall()
        tables: Shape = {}
        for kind, name, _, sql in master:
            if kind != "table":
                continue
            body = sql[sql.index("(") + 1 : sql.rindex(")")]
            constraints = {}
            for item in _top_level_items(body):
                if not _CONSTRAINT_START.match(item):
                    continue
                text = _normal(item, prefix)
                key = text.split()[1] if text.upper().startswith("CONSTRAINT") else text
                constraints[key] = text
            foreign_keys: dict[int, list[Any]] = {}
            for row in connection.execute(f"PRAGMA foreign_key_list({name})"):
                foreign_keys.setdefault(row[0], []).append(row[2:])
            indexes = {}
            for _, index_name, unique, origin, partial in connection.execute(
                f"PRAGMA index_list({name})"
            ):
                columns = [row[2] for row in connection.execute(f"PRAGMA index_info({index_name})")]
                index_sql = next((s for k, n, _, s in master if n == index_name and s), "")
                where = _normal(index_sql.split(" WHERE ", 1)[1]) if partial else None
                indexes[_normal(index_name, prefix)] = (unique, origin, columns, where)
            tables[_normal(name, prefix)] = {
                "columns": {
                    row[1]: {"type": row[2], "notnull": row[3], "default": row[4], "pk": row[5]}
                    for row in connection.execute(f"PRAGMA table_xinfo({name})")
                },
                "constraints": constraints,
                "foreign_keys": {
                    _normal(str(sorted(rows)), prefix): True for rows in foreign_keys.values()
                },
                "indexes": indexes,
                "triggers": {
                    _normal(n, prefix): _normal(s, prefix)
                    for k, n, t, s in master
                    if k == "trigger" and t == name
                },
            }
        return tables


def sqlite_rows(path: Path, prefix: str) -> Shape:
    with closing(sqlite3.connect(path)) as connection:
        return _rows(connection.execute, prefix)


def _rows(execute: Any, prefix: str) -> Shape:
    """The rows a migration writes: the identity, the seeded currencies, the versions."""
    return {
        "schema_info": sorted(execute(f"SELECT prefix, tenancy FROM {prefix}schema_info")),
        "currencies": sorted(execute(f"SELECT code, exponent, name FROM {prefix}currencies")),
        "migrations": sorted(execute(f"SELECT version, name FROM {prefix}migrations")),
    }


def make_version_1_sqlite(path: Path, prefix: str, multi_tenant: bool) -> None:
    """A database as qzpay's version 1 left it: its frozen DDL, stamped version 1."""
    with closing(sqlite3.connect(path)) as connection:
        for statement in migrations.MIGRATIONS[0].statements(
            Layout(prefix, multi_tenant, "sqlite")
        ):
            connection.execute(statement)
        connection.execute(
            f"INSERT INTO {prefix}migrations (version, name, applied_at) "
            "VALUES (1, 'initial schema', '2027-01-01 00:00:00+00:00')"
        )
        connection.commit()


def create_sqlite(path: Path, schema: Schema) -> None:
    """A new database from ``schema`` as given (the tests add a field to it)."""
    with closing(sqlite3.connect(path)) as connection:
        for statement in migrations.create_statements(schema, sqlite.dialect()):
            connection.execute(statement)
        connection.commit()


@pytest.mark.parametrize("multi_tenant", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["short_prefix", "long_prefix"])
async def test_sqlite_upgraded_from_version_1_is_the_new_schema(
    tmp_path: Path, prefix: str, multi_tenant: bool
) -> None:
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    assert await SQLiteStorage(new, table_prefix=prefix, multi_tenant=multi_tenant).migrate() == [
        *ALL_VERSIONS
    ]
    make_version_1_sqlite(old, prefix, multi_tenant)
    version_1 = sqlite_shape(old, prefix)
    storage = SQLiteStorage(old, table_prefix=prefix, multi_tenant=multi_tenant)
    assert await storage.migrate() == ALL_VERSIONS[1:]

    assert differences(sqlite_shape(new, prefix), sqlite_shape(old, prefix)) == []
    assert differences(sqlite_rows(new, prefix), sqlite_rows(old, prefix)) == []
    # The comparison sees something: version 1 itself differs from today's schema.
    assert differences(sqlite_shape(new, prefix), version_1) != []


async def test_a_field_added_without_a_step_is_reported(tmp_path: Path) -> None:
    """What the comparison says when someone adds a field to a domain class and no step."""
    prefix = "billing_"
    schema = build_schema(prefix, multi_tenant=False)
    customers = schema.tables[Customer]
    customers.append_column(Column("nickname", Text()))
    Index(constraint_name(prefix, "customers", "nickname_idx"), customers.c.nickname)
    create_sqlite(tmp_path / "new.db", schema)
    with closing(sqlite3.connect(tmp_path / "new.db")) as connection:
        connection.execute(f"INSERT INTO {prefix}migrations VALUES (1, 'initial schema', 'x')")
        connection.commit()
    make_version_1_sqlite(tmp_path / "old.db", prefix, multi_tenant=False)
    await SQLiteStorage(tmp_path / "old.db", table_prefix=prefix).migrate()
    reported = differences(
        sqlite_shape(tmp_path / "new.db", prefix), sqlite_shape(tmp_path / "old.db", prefix)
    )
    assert reported == [
        "<p>customers.columns.nickname: only in the new schema: "
        "{'type': 'TEXT', 'notnull': 0, 'default': None, 'pk': 0}",
        "<p>customers.indexes.<p>customers_nickname_idx: only in the new schema: "
        "(0, 'c', ['nickname'], None)",
    ]


# -- PostgreSQL: the catalog's own rendering of each object ------------------------------


@pytest.fixture
async def pg_url() -> str:
    """A real PostgreSQL: skipped without one, failed when CI requires one."""
    reason = await postgres_unavailable()
    if reason is not None:
        if os.environ.get("QZPAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"QZPAY_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return postgres_url()


@pytest.fixture
async def pg_schemas(pg_url: str) -> AsyncIterator[tuple[str, str]]:
    """Two PostgreSQL schemas of this test's own, so both databases can use one prefix
    (a hashed long name depends on the whole name) and be dropped whole afterwards."""
    tag = secrets.token_hex(4)
    names = (f"qzmig_{tag}_new", f"qzmig_{tag}_old")
    connection = await asyncpg.connect(pg_url)
    try:
        for name in names:
            await connection.execute(f"CREATE SCHEMA {name}")
        yield names
    finally:
        for name in names:
            await connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await connection.close()


def in_schema(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set (asyncpg passes unknown parameters as settings)."""
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def postgres_shape(url: str, schema: str, prefix: str) -> Shape:
    connection = await asyncpg.connect(in_schema(url, schema))
    try:

        def normal(sql: str) -> str:
            return _normal(sql.replace(f"{schema}.", ""), prefix)

        tables: Shape = {}
        for oid, name in await connection.fetch(
            "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        ):
            columns = await connection.fetch(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d "
                "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                oid,
            )
            constraints = await connection.fetch(
                "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = $1",
                oid,
            )
            indexes = await connection.fetch(
                "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1",
                oid,
            )
            triggers = await connection.fetch(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                "WHERE tgrelid = $1 AND NOT tgisinternal",
                oid,
            )
            tables[normal(name)] = {
                "columns": {
                    column: {"type": kind, "notnull": notnull, "default": default}
                    for column, kind, notnull, default in columns
                },
                "constraints": {
                    normal(n): (kind, normal(definition)) for n, kind, definition in constraints
                },
                "indexes": {normal(n): normal(definition) for n, definition in indexes},
                "triggers": {normal(n): normal(definition) for n, definition in triggers},
            }
        functions = await connection.fetch(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
            schema,
        )

        async def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(tuple(row) for row in await connection.fetch(sql))

        return {
            "tables": tables,
            "functions": {normal(n): normal(definition) for n, definition in functions},
            "rows": {
                "schema_info": await rows(f"SELECT prefix, tenancy FROM {prefix}schema_info"),
                "currencies": await rows(f"SELECT code, exponent, name FROM {prefix}currencies"),
                "migrations": await rows(f"SELECT version, name FROM {prefix}migrations"),
            },
        }
    finally:
        await connection.close()


async def make_version_1_postgres(url: str, prefix: str, multi_tenant: bool) -> None:
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            for statement in migrations.MIGRATIONS[0].statements(
                Layout(prefix, multi_tenant, "postgresql")
            ):
                await connection.execute(statement)
            await connection.execute(
                f"INSERT INTO {prefix}migrations (version, name, applied_at) "
                "VALUES (1, 'initial schema', now())"
            )
    finally:
        await connection.close()


@pytest.mark.postgres
@pytest.mark.parametrize("multi_tenant", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["short_prefix", "long_prefix"])
async def test_postgres_upgraded_from_version_1_is_the_new_schema(
    pg_url: str, pg_schemas: tuple[str, str], prefix: str, multi_tenant: bool
) -> None:
    from qzpay.adapters.postgres import PostgresStorage

    new, old = pg_schemas
    new_url, old_url = in_schema(pg_url, new), in_schema(pg_url, old)
    fresh = PostgresStorage(new_url, table_prefix=prefix, multi_tenant=multi_tenant)
    assert await fresh.migrate() == ALL_VERSIONS
    await make_version_1_postgres(old_url, prefix, multi_tenant)
    upgraded = PostgresStorage(old_url, table_prefix=prefix, multi_tenant=multi_tenant)
    assert await upgraded.migrate() == ALL_VERSIONS[1:]

    new_shape = await postgres_shape(pg_url, new, prefix)
    assert differences(new_shape, await postgres_shape(pg_url, old, prefix)) == []
    assert len(new_shape["tables"]) == 32
    assert new_shape["functions"]  # the append-only trigger function is compared too


@pytest.mark.postgres
async def test_postgres_reports_a_field_added_without_a_step(
    pg_url: str, pg_schemas: tuple[str, str]
) -> None:
    from qzpay.adapters.postgres import PostgresStorage

    prefix = "billing_"
    new, old = pg_schemas
    schema = build_schema(prefix, multi_tenant=False)
    customers = schema.tables[Customer]
    customers.append_column(Column("nickname", Text()))
    connection = await asyncpg.connect(in_schema(pg_url, new))
    try:
        for statement in migrations.create_statements(schema, postgresql.dialect()):  # type: ignore[no-untyped-call]
            await connection.execute(statement)
    finally:
        await connection.close()
    await make_version_1_postgres(in_schema(pg_url, old), prefix, multi_tenant=False)
    await PostgresStorage(in_schema(pg_url, old), table_prefix=prefix).migrate()

    reported = differences(
        (await postgres_shape(pg_url, new, prefix))["tables"],
        (await postgres_shape(pg_url, old, prefix))["tables"],
    )
    assert reported == [
        "<p>customers.columns.nickname: only in the new schema: "
        "{'type': 'text', 'notnull': False, 'default': None}"
    ]


# -- step 3 on data: counters keep their numbers, one default method stays -------------


def _version_1_rows(prefix: str, multi_tenant: bool, dialect: str) -> list[str]:
    """Version 1 rows: invoice counters, and a customer with two live default methods."""
    true, false = ("1", "0") if dialect == "sqlite" else ("true", "false")

    def uuid(n: int) -> str:
        text = f"{n:032x}"
        return (
            text
            if dialect == "sqlite"
            else f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
        )

    tenant_column = "tenant_id, " if multi_tenant else ""
    statements = []
    for tenant in ["acme", "globex"] if multi_tenant else [None]:
        t = f"'{tenant}', " if tenant else ""
        base = 100 if tenant == "globex" else 0
        statements += [
            f"INSERT INTO {prefix}invoice_sequences ({tenant_column}livemode, last_number) "
            f"VALUES ({t}{false}, {41 + base}), ({t}{true}, {7 + base})",
            f"INSERT INTO {prefix}customers ({tenant_column}id, livemode, email, metadata, "
            f"version, created_at, updated_at) VALUES ({t}'{uuid(base + 1)}', {false}, "
            "'ann@example.com', '{}', 1, '2027-01-01 00:00:00+00:00', '2027-01-01 00:00:00+00:00')",
        ]
        methods = [  # (id, created day, default, deleted)
            (base + 11, 1, True, False),
            (base + 12, 2, True, False),  # the newest live default: stays the default
            (base + 13, 3, True, True),  # deleted: neither kept nor unset
            (base + 14, 4, False, False),
        ]
        for number, day, default, deleted in methods:
            deleted_at = "'2027-02-01 00:00:00+00:00'" if deleted else "NULL"
            statements.append(
                f"INSERT INTO {prefix}payment_methods ({tenant_column}id, livemode, customer_id, "
                "provider, provider_id, type, is_default, metadata, created_at, updated_at, "
                f"deleted_at) VALUES ({t}'{uuid(number)}', {false}, '{uuid(base + 1)}', 'fake', "
                f"'pm_{number}', 'card', {true if default else false}, '{{}}', "
                f"'2027-01-0{day} 00:00:00+00:00', '2027-01-0{day} 00:00:00+00:00', "
                f"{deleted_at})"
            )
    return statements


EXPECTED_DEFAULTS = {11: False, 12: True, 13: True, 14: False}


@pytest.mark.parametrize("multi_tenant", [False, True], ids=["single", "multi"])
async def test_sqlite_step_3_keeps_invoice_numbers_and_the_newest_default(
    tmp_path: Path, multi_tenant: bool
) -> None:
    path, prefix = tmp_path / "old.db", "billing_"
    make_version_1_sqlite(path, prefix, multi_tenant)
    with closing(sqlite3.connect(path)) as connection:
        for statement in _version_1_rows(prefix, multi_tenant, "sqlite"):
            connection.execute(statement)
        connection.commit()
    assert (
        await SQLiteStorage(path, table_prefix=prefix, multi_tenant=multi_tenant).migrate()
        == ALL_VERSIONS[1:]
    )
    with closing(sqlite3.connect(path)) as connection:
        tenant = "tenant_id" if multi_tenant else "NULL"
        sequences = connection.execute(
            f"SELECT {tenant}, livemode, name, last_number FROM {prefix}sequences"
        ).fetchall()
        defaults = {
            int(id_, 16): bool(default)
            for id_, default in connection.execute(
                f"SELECT id, is_default FROM {prefix}payment_methods"
            )
        }
        assert not connection.execute(
            "SELECT 1 FROM sqlite_master WHERE name = ?", (f"{prefix}invoice_sequences",)
        ).fetchall()
        tenancy = connection.execute(f"SELECT tenancy FROM {prefix}schema_info").fetchall()
    tenants = [("acme", 0), ("globex", 100)] if multi_tenant else [(None, 0)]
    assert sorted(sequences, key=repr) == sorted(
        [
            row
            for tenant, base in tenants
            for row in ((tenant, 0, "invoice", 41 + base), (tenant, 1, "invoice", 7 + base))
        ],
        key=repr,
    )
    assert defaults == {
        base + number: default
        for _, base in tenants
        for number, default in EXPECTED_DEFAULTS.items()
    }
    assert tenancy == [("multi" if multi_tenant else "single",)]


@pytest.mark.postgres
@pytest.mark.parametrize("multi_tenant", [False, True], ids=["single", "multi"])
async def test_postgres_step_3_keeps_invoice_numbers_and_the_newest_default(
    pg_url: str, pg_schemas: tuple[str, str], multi_tenant: bool
) -> None:
    from qzpay.adapters.postgres import PostgresStorage

    url, prefix = in_schema(pg_url, pg_schemas[1]), "billing_"
    await make_version_1_postgres(url, prefix, multi_tenant)
    connection = await asyncpg.connect(url)
    try:
        for statement in _version_1_rows(prefix, multi_tenant, "postgresql"):
            await connection.execute(statement)
    finally:
        await connection.close()
    storage = PostgresStorage(url, table_prefix=prefix, multi_tenant=multi_tenant)
    assert await storage.migrate() == ALL_VERSIONS[1:]
    connection = await asyncpg.connect(url)
    try:
        tenant = "tenant_id" if multi_tenant else "NULL"
        sequences = await connection.fetch(
            f"SELECT {tenant}, livemode, name, last_number FROM {prefix}sequences"
        )
        defaults = {
            row["id"].int: row["is_default"]
            for row in await connection.fetch(f"SELECT id, is_default FROM {prefix}payment_methods")
        }
        tenancy = await connection.fetchval(f"SELECT tenancy FROM {prefix}schema_info")
    finally:
        await connection.close()
    tenants = [("acme", 0), ("globex", 100)] if multi_tenant else [(None, 0)]
    assert sorted((tuple(row) for row in sequences), key=repr) == sorted(
        [
            row
            for tenant, base in tenants
            for row in ((tenant, False, "invoice", 41 + base), (tenant, True, "invoice", 7 + base))
        ],
        key=repr,
    )
    assert defaults == {
        base + number: default
        for _, base in tenants
        for number, default in EXPECTED_DEFAULTS.items()
    }
    assert tenancy == ("multi" if multi_tenant else "single")


# -- tenancy, prefix and version are recorded, and checked on open ----------------------


@pytest.mark.parametrize(("there", "asked"), [(False, True), (True, False)])
async def test_sqlite_refuses_to_open_a_schema_of_the_other_tenancy(
    tmp_path: Path, there: bool, asked: bool
) -> None:
    path = tmp_path / "billing.db"
    await SQLiteStorage(path, multi_tenant=there).migrate()
    storage = SQLiteStorage(path, multi_tenant=asked)
    with pytest.raises(ConfigurationError) as raised:
        await storage.open()
    kind = "multi" if there else "single"
    assert str(raised.value) == (
        f"the qzpay schema under prefix 'billing_' in {path} is {kind}-tenant "
        f"(version {migrations.LATEST_VERSION}), but this store was asked for "
        f"multi_tenant={asked}: open it with multi_tenant={there}, or use another prefix"
    )
    assert storage.opened == 0
    with pytest.raises(ConfigurationError, match="not open"):
        await storage.schema_version()


@pytest.mark.parametrize("there", [False, True], ids=["single", "multi"])
async def test_an_older_schema_of_the_other_tenancy_is_refused_and_left_as_it_was(
    tmp_path: Path, there: bool
) -> None:
    """Before version 4 the tenancy is read from the tables; no step runs on a mismatch."""
    path = tmp_path / "billing.db"
    make_version_1_sqlite(path, "billing_", there)
    with pytest.raises(ConfigurationError, match=r"tenant \(version 1\), but this store"):
        await SQLiteStorage(path, multi_tenant=not there).open()
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT max(version) FROM billing_migrations").fetchone() == (1,)
    storage = SQLiteStorage(path, multi_tenant=there)
    await storage.open()
    try:
        assert await storage.schema_version() == migrations.LATEST_VERSION
    finally:
        await storage.close()


async def test_a_schema_newer_than_this_qzpay_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "billing.db"
    await SQLiteStorage(path).migrate()
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("INSERT INTO billing_migrations VALUES (99, 'from the future', 'x')")
        connection.commit()
    with pytest.raises(ConfigurationError, match="version 99, newer than this qzpay"):
        await SQLiteStorage(path).open()


def test_frozen_identifiers_are_shortened_like_the_schema_names_them() -> None:
    """The frozen copy of the naming rule agrees with the schema's, hash included."""
    for prefix in PREFIXES:
        for table, suffix in [("customers", "pk"), ("customer_entitlements", "entitlement_id_fk")]:
            assert migrations.identifier(prefix, f"{table}_{suffix}") == constraint_name(
                prefix, table, suffix
            )
    assert len(migrations.identifier(LONG_PREFIX, "customer_entitlements_entitlement_id_fk")) == 63
