"""Throughput of qzpay's API calls next to a raw-driver baseline timed in the same run.

    python benchmarks/api_calls.py [--backend all|sqlite|memory|postgres] [--n N] [--runs R]
        [--postgres-url URL] [--json] [--only CASE] [--no-memory]

A script that prints figures, never a timed test (issues 9 and 10, DESIGN §11). It times
``customers.create`` and ``subscriptions.create`` (with a trial: no provider charge),
sequentially and from 32 concurrent tasks, on each backend, next to the same rows written
by the bare driver with hand-written SQL in the same run.

SQLite (a fresh temp file per timed run, WAL) against plain aiosqlite:

- customers: ``BEGIN IMMEDIATE``, INSERT customer, INSERT audit row, ``COMMIT``;
- subscriptions: ``BEGIN IMMEDIATE``, read the customer row, INSERT subscription, INSERT
  audit row, ``COMMIT``;

with parameters encoded as qzpay encodes them (32-hex UUIDs, naive-UTC text timestamps,
JSON text). The concurrent baseline serializes its transactions on its one connection
with an ``asyncio.Lock``, as any single-connection aiosqlite application must. A bare
aiosqlite round trip (``SELECT 1``) is timed too: the price of one hop to the driver's
thread, in which the other SQLite figures can be read.

PostgreSQL (``--postgres-url``, default ``$QZPAY_TEST_POSTGRES_URL`` or the local test
server; skipped with the reason printed when no server answers): qzpay on
``PostgresStorage(auto_migrate=True, pool_size=10)`` under a table prefix made for this run
and dropped at its end (every table but the migrations table is truncated before each timed
run, so each starts empty, like SQLite's fresh file), against plain asyncpg on the same
schema (created by qzpay's migration) writing the same rows, two ways each:

- ``tx``: an explicit transaction (``async with connection.transaction()``), one statement
  per row: customers ``BEGIN``, INSERT customer, INSERT audit row, ``COMMIT`` (4 round
  trips); subscriptions ``BEGIN``, SELECT the customer row, INSERT subscription, INSERT
  audit row, ``COMMIT`` (5);
- ``cte``: one statement, one round trip, atomic by itself: ``WITH c AS (INSERT ...
  RETURNING id) INSERT INTO audit_logs ... SELECT ... FROM c``; for subscriptions the
  customer is read in a first CTE and the insert selects from it (no customer, no row).

Sequential baselines run on one connection; concurrent ones on an asyncpg pool of 10
configured as qzpay's (no reset query on release, same statement cache), so the ratio
measures qzpay, not a pool setting. Postgres runs warm up with as many tasks as they time,
so every pooled connection has its statements prepared before the clock starts.

Before timing, the script checks that every baseline writes the same rows as qzpay (ids
masked). Each figure is the median of R runs. The backends are timed one after the other
(after an ``os.sync()``, and on Postgres a ``CHECKPOINT`` when the role may), so one's disk
writes do not land in another's timings; within a backend the cases are interleaved, run by
run, so drift hits them alike. qzpay's figures are printed as a ratio of the matching
baseline(s), since absolute figures from different runs are not comparable. Peak memory is
the ``tracemalloc`` peak of the timed section, measured in separate untimed runs of N and 2N
calls (tracing slows Python down several times).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import aiosqlite
import asyncpg

from qzpay import create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryStorage
from qzpay.adapters.postgres import PostgresStorage, asyncpg_dsn
from qzpay.adapters.sqlite import BUSY_TIMEOUT_MS, SQLiteStorage
from qzpay.billing import Billing
from qzpay.ids import new_id

CONCURRENCY: Final = 32
CUSTOMER_POOL: Final = 32  # subscriptions.create cycles over this many customers
TRIAL_DAYS: Final = 14
NOW: Final = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)
WARMUP: Final = 32  # untimed calls before each timed section (x4 on Postgres, see below)
DEFAULT_N: Final = 1000
DEFAULT_RUNS: Final = 5
TARGET_SQLITE_RATIO: Final = 0.5
TARGET_MEMORY_OPS: Final = 20_000.0
POSTGRES_URL_ENV: Final = "QZPAY_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
POOL_SIZE: Final = 10
STATEMENT_CACHE: Final = 1024  # asyncpg's prepared-statement cache, as PostgresStorage sets it
# Issue 10 / DESIGN §11, on a 2-core machine with the local server: 2x the reference
# implementation, (case key, ops/s).
TARGETS_POSTGRES: Final = (
    ("pg.customers.seq", 1_300.0),
    ("pg.customers.c32", 3_600.0),
    ("pg.subscriptions.seq", 1_000.0),
)
TARGET_RAW_RATIO: Final = 0.5  # DESIGN §11: at least half the raw-driver baseline
BACKENDS: Final = ("sqlite", "memory", "postgres")

Op = Callable[[int], Awaitable[object]]
"""One API call; its argument is the call's index (0..N-1; negative for warm-up calls)."""
Setup = Callable[[Path], AbstractAsyncContextManager[Op]]
"""Prepare a fresh store in the given directory (untimed) and yield the call to time."""


# -- the machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "packages": {
            name: _version(name)
            for name in ("qzpay", "aiosqlite", "asyncpg", "sqlalchemy", "anyio", "attrs", "cattrs")
        },
        "event_loop": "asyncio (default policy)",
    }


# -- encoding as qzpay stores values on SQLite ---------------------------------------------


def _ts(value: datetime) -> str:
    """Naive-UTC text, as SQLAlchemy's SQLite DateTime stores it."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _email(i: int) -> str:
    return f"user{i}@example.com"


def _external_id(i: int) -> str:
    return f"user_{i}"


# -- qzpay --------------------------------------------------------------------------------


def _billing_sqlite(directory: Path) -> Billing:
    return _billing_sqlite_on(directory / "qzpay.db")


def _billing_memory(directory: Path) -> Billing:
    return create_billing(storage=MemoryStorage(), provider=FakeProvider(), clock=FrozenClock(NOW))


async def _catalog(billing: Billing) -> tuple[str, list[str]]:
    """A monthly price and the customer pool, made through qzpay: (price id, customer ids)."""
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    customers = [
        await billing.customers.create(email=_email(i), external_id=f"pool_{i}")
        for i in range(CUSTOMER_POOL)
    ]
    return str(price.id), [str(customer.id) for customer in customers]


def qzpay_customers(make: Callable[[Path], Billing]) -> Setup:
    @asynccontextmanager
    async def setup(directory: Path) -> AsyncIterator[Op]:
        async with make(directory) as billing:
            create = billing.customers.create

            async def op(i: int) -> object:
                return await create(email=_email(i), external_id=_external_id(i))

            yield op

    return setup


def qzpay_subscriptions(make: Callable[[Path], Billing]) -> Setup:
    @asynccontextmanager
    async def setup(directory: Path) -> AsyncIterator[Op]:
        async with make(directory) as billing:
            price_id, customer_ids = await _catalog(billing)
            create = billing.subscriptions.create

            async def op(i: int) -> object:
                return await create(
                    customer_id=customer_ids[i % CUSTOMER_POOL],
                    price_id=price_id,
                    trial_days=TRIAL_DAYS,
                )

            yield op

    return setup


# -- the raw aiosqlite baseline -------------------------------------------------------------

_INSERT_CUSTOMER: Final = (
    "INSERT INTO billing_customers (id, livemode, email, name, external_id, phone, metadata,"
    " version, created_at, updated_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_AUDIT: Final = (
    "INSERT INTO billing_audit_logs (id, livemode, entity_type, entity_id, action, actor,"
    " changes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_CUSTOMER: Final = (
    "SELECT id, livemode, email, name, external_id, phone, metadata, version, created_at,"
    " updated_at, deleted_at FROM billing_customers"
    " WHERE id = ? AND livemode = ? AND deleted_at IS NULL"
)
_INSERT_SUBSCRIPTION: Final = (
    "INSERT INTO billing_subscriptions (id, livemode, customer_id, plan_id, price_id, status,"
    " quantity, currency, unit_amount, interval, interval_count, billing_anchor,"
    " current_period_start, current_period_end, trial_start, trial_end, cancel_at_period_end,"
    " canceled_at, ended_at, paused_at, default_payment_method_id, promo_code_id, due_at,"
    " claimed_by, claimed_until, metadata, version, created_at, updated_at, deleted_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def _raw_connect(path: Path) -> aiosqlite.Connection:
    """The same file settings qzpay uses: autocommit driver, explicit transactions."""
    connection = await aiosqlite.connect(path, isolation_level=None)
    await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await connection.execute("PRAGMA journal_mode = WAL")
    await connection.execute("PRAGMA synchronous = NORMAL")
    await connection.execute("PRAGMA foreign_keys = ON")
    return connection


async def _raw_schema(path: Path) -> None:
    """The schema qzpay creates, made by opening SQLiteStorage on the file and closing it."""
    storage = SQLiteStorage(path)
    await storage.open()
    await storage.close()


@asynccontextmanager
async def _raw_transaction(connection: aiosqlite.Connection) -> AsyncIterator[None]:
    await connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")


@asynccontextmanager
async def raw_customers(directory: Path) -> AsyncIterator[Op]:
    path = directory / "raw.db"
    await _raw_schema(path)
    connection = await _raw_connect(path)
    lock = asyncio.Lock()  # one connection: transactions must not interleave
    try:

        async def op(i: int) -> object:
            customer_id = new_id().hex
            created = _ts(NOW)
            email, external_id = _email(i), _external_id(i)
            async with lock, _raw_transaction(connection):
                await connection.execute(
                    _INSERT_CUSTOMER,
                    (
                        *(customer_id, False, email, None, external_id, None, "{}", 1),
                        *(created, created, None),
                    ),
                )
                await connection.execute(
                    _INSERT_AUDIT,
                    (
                        *(new_id().hex, False, "customer", customer_id, "created", None),
                        *(_json({"email": email, "external_id": external_id}), created),
                    ),
                )
            return customer_id

        yield op
    finally:
        await connection.close()


@asynccontextmanager
async def raw_subscriptions(directory: Path) -> AsyncIterator[Op]:
    path = directory / "raw.db"
    await _raw_schema(path)
    async with _billing_sqlite_on(path) as billing:  # untimed: the rows the calls need
        price_id, customer_ids = await _catalog(billing)
        price = await billing.prices.get(price_id)
    connection = await _raw_connect(path)
    lock = asyncio.Lock()
    plan_hex, price_hex = price.plan_id.hex, price.id.hex
    customer_hexes = [customer_id.replace("-", "") for customer_id in customer_ids]
    try:

        async def op(i: int) -> object:
            subscription_id = new_id().hex
            now = NOW
            trial_end = now + timedelta(days=TRIAL_DAYS)
            created, ends = _ts(now), _ts(trial_end)
            async with lock, _raw_transaction(connection):
                rows = await connection.execute_fetchall(
                    _SELECT_CUSTOMER, (customer_hexes[i % CUSTOMER_POOL], False)
                )
                if not rows:
                    raise LookupError("customer not found")
                customer_id = next(iter(rows))[0]
                await connection.execute(
                    _INSERT_SUBSCRIPTION,
                    (
                        *(subscription_id, False, customer_id, plan_hex, price_hex, "trialing"),
                        *(1, "USD", 2900, "month", 1, ends, created, ends, created, ends, False),
                        *(None, None, None, None, None, ends, None, None, "{}", 1),
                        *(created, created, None),
                    ),
                )
                await connection.execute(
                    _INSERT_AUDIT,
                    (
                        *(new_id().hex, False, "subscription", subscription_id, "created", None),
                        *(_json({"price_id": str(price.id), "status": "trialing"}), created),
                    ),
                )
            return subscription_id

        yield op
    finally:
        await connection.close()


def _billing_sqlite_on(path: Path) -> Billing:
    return create_billing(
        storage=SQLiteStorage(path), provider=FakeProvider(), clock=FrozenClock(NOW)
    )


@asynccontextmanager
async def raw_round_trip(directory: Path) -> AsyncIterator[Op]:
    """One aiosqlite call that does (almost) nothing: the price of one thread hop."""
    path = directory / "hop.db"
    await _raw_schema(path)
    connection = await _raw_connect(path)
    try:

        async def op(i: int) -> object:
            return await connection.execute("SELECT 1")

        yield op
    finally:
        await connection.close()


# -- the same rows, both ways --------------------------------------------------------------

_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _rows(path: Path, table: str, where: str = "") -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(f"SELECT * FROM {table} {where}").fetchall()
    finally:
        connection.close()
    masked = [
        tuple(_ID.sub("<id>", value) if isinstance(value, str) else value for value in row)
        for row in rows
    ]
    return sorted(masked, key=repr)


async def check_same_rows(root: Path) -> None:
    """Both ways write identical rows (ids masked), or the baseline would be unfair."""
    calls = 3
    for label, qzpay_setup, raw_setup, tables in (
        ("customers", qzpay_customers(_billing_sqlite), raw_customers, ("customers",)),
        (
            "subscriptions",
            qzpay_subscriptions(_billing_sqlite),
            raw_subscriptions,
            ("subscriptions",),
        ),
    ):
        directory = Path(tempfile.mkdtemp(dir=root))
        async with qzpay_setup(directory) as op:
            for i in range(calls):
                await op(i)
        async with raw_setup(directory) as op:
            for i in range(calls):
                await op(i)
        for table in (*tables, "audit_logs"):
            ours = _rows(directory / "qzpay.db", f"billing_{table}")
            theirs = _rows(directory / "raw.db", f"billing_{table}")
            if ours != theirs:
                raise AssertionError(
                    f"{label}: billing_{table} differs between qzpay and the baseline:\n"
                    f"qzpay: {ours[:2]}\nraw:   {theirs[:2]}"
                )


# -- PostgreSQL: the database of one run ---------------------------------------------------


@dataclass
class PostgresDatabase:
    """The server and the table prefix this run made (its tables dropped at the end)."""

    url: str
    prefix: str
    server: str = ""
    _tables: list[str] = field(default_factory=list)

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def storage(self) -> PostgresStorage:
        return PostgresStorage(
            self.url, table_prefix=self.prefix, auto_migrate=True, pool_size=POOL_SIZE
        )

    def billing(self, directory: Path | None = None) -> Billing:
        """qzpay on this database (``directory`` is unused: the SQLite maker's signature)."""
        return create_billing(
            storage=self.storage(), provider=FakeProvider(), clock=FrozenClock(NOW)
        )

    async def connect(self) -> Any:
        return await asyncpg.connect(asyncpg_dsn(self.url), statement_cache_size=STATEMENT_CACHE)

    async def pool(self) -> Any:
        return await asyncpg.create_pool(
            asyncpg_dsn(self.url),
            min_size=1,
            max_size=POOL_SIZE,
            reset=_no_reset,
            statement_cache_size=STATEMENT_CACHE,
        )

    async def create(self) -> None:
        """The schema, made by qzpay's own migration (``auto_migrate=True``)."""
        storage = self.storage()
        await storage.open()
        await storage.close()
        connection = await self.connect()
        try:
            rows = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND left(tablename, length($1)) = $1 ORDER BY tablename",
                self.prefix,
            )
        finally:
            await connection.close()
        migrations = self.table("migrations")
        self._tables = [row[0] for row in rows if row[0] != migrations]

    async def empty(self) -> None:
        """Every table but the migrations table emptied: each timed run starts alike."""
        connection = await self.connect()
        try:
            await connection.execute(f"TRUNCATE {', '.join(self._tables)}")
        finally:
            await connection.close()

    async def checkpoint(self) -> None:
        """A checkpoint now (best effort: it needs a privileged role), so the server's timed
        one (``checkpoint_timeout``) is unlikely to fall inside the next minutes of timing."""
        connection = await self.connect()
        try:
            await connection.execute("CHECKPOINT")
        except asyncpg.PostgresError:
            pass
        finally:
            await connection.close()

    async def drop(self) -> None:
        connection = await self.connect()
        try:
            tables = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND left(tablename, length($1)) = $1",
                self.prefix,
            )
            if tables:
                names = ", ".join(f'"{row[0]}"' for row in tables)
                await connection.execute(f"DROP TABLE IF EXISTS {names} CASCADE")
            functions = await connection.fetch(
                "SELECT p.oid::regprocedure::text FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = current_schema() AND left(p.proname, length($1)) = $1",
                self.prefix,
            )
            for row in functions:
                await connection.execute(f"DROP FUNCTION IF EXISTS {row[0]} CASCADE")
        finally:
            await connection.close()


async def _no_reset(connection: Any) -> None:
    """As PostgresStorage's pool: nothing to reset on release (no session state is left)."""


async def postgres_database(url: str) -> tuple[PostgresDatabase | None, str]:
    """The run's database, or ``None`` and why there is none."""
    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    except Exception as error:
        return None, f"no PostgreSQL answers at {url} ({type(error).__name__}: {error})"
    try:
        server = str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()
    database = PostgresDatabase(url=url, prefix=f"qzbench_{secrets.token_hex(4)}_", server=server)
    return database, ""


def _on_empty_tables(database: PostgresDatabase, setup: Setup) -> Setup:
    @asynccontextmanager
    async def fresh(directory: Path) -> AsyncIterator[Op]:
        await database.empty()
        async with setup(directory) as op:
            yield op

    return fresh


# -- PostgreSQL: the raw asyncpg baseline --------------------------------------------------

_CUSTOMER_COLUMNS: Final = (
    ("id", "uuid"), ("livemode", "boolean"), ("email", "text"), ("name", "text"),
    ("external_id", "text"), ("phone", "text"), ("metadata", "jsonb"), ("version", "bigint"),
    ("created_at", "timestamptz"), ("updated_at", "timestamptz"), ("deleted_at", "timestamptz"),
)  # fmt: skip
_AUDIT_COLUMNS: Final = (
    ("id", "uuid"), ("livemode", "boolean"), ("entity_type", "text"), ("entity_id", "uuid"),
    ("action", "text"), ("actor", "text"), ("changes", "jsonb"), ("created_at", "timestamptz"),
)  # fmt: skip
_SUBSCRIPTION_COLUMNS: Final = (
    ("id", "uuid"), ("livemode", "boolean"), ("customer_id", "uuid"), ("plan_id", "uuid"),
    ("price_id", "uuid"), ("status", "text"), ("quantity", "bigint"), ("currency", "text"),
    ("unit_amount", "bigint"), ("interval", "text"), ("interval_count", "bigint"),
    ("billing_anchor", "timestamptz"), ("current_period_start", "timestamptz"),
    ("current_period_end", "timestamptz"), ("trial_start", "timestamptz"),
    ("trial_end", "timestamptz"), ("cancel_at_period_end", "boolean"),
    ("canceled_at", "timestamptz"), ("ended_at", "timestamptz"), ("paused_at", "timestamptz"),
    ("default_payment_method_id", "uuid"), ("promo_code_id", "uuid"), ("due_at", "timestamptz"),
    ("claimed_by", "text"), ("claimed_until", "timestamptz"), ("metadata", "jsonb"),
    ("version", "bigint"), ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
    ("deleted_at", "timestamptz"),
)  # fmt: skip


def _names(columns: Iterable[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in columns)


def _insert_values(table: str, columns: Sequence[tuple[str, str]]) -> str:
    """``INSERT ... VALUES ($1, ..., $n)``: one parameter per column, in order."""
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({_names(columns)}) VALUES ({marks})"


def _insert_select(
    table: str,
    columns: Sequence[tuple[str, str]],
    source: str,
    from_source: dict[str, str],
    first: int,
) -> tuple[str, int]:
    """``INSERT ... SELECT`` taking ``from_source`` columns from ``source`` and the others
    from parameters ``$first``... (typed: they sit in a SELECT list); returns the SQL and the
    next free parameter number."""
    values, number = [], first
    for name, kind in columns:
        if name in from_source:
            values.append(f"{source}.{from_source[name]}")
        else:
            values.append(f"${number}::{kind}")
            number += 1
    sql = f"INSERT INTO {table} ({_names(columns)}) SELECT {', '.join(values)} FROM {source}"
    return sql, number


@dataclass(frozen=True)
class RawPostgresSql:
    """The hand-written statements of the asyncpg baseline, for one table prefix."""

    insert_customer: str
    insert_audit: str
    select_customer: str
    insert_subscription: str
    customer_cte: str
    subscription_cte: str

    @classmethod
    def for_prefix(cls, database: PostgresDatabase) -> RawPostgresSql:
        customers, audit = database.table("customers"), database.table("audit_logs")
        subscriptions = database.table("subscriptions")
        customer_audit, _ = _insert_select(
            audit, _AUDIT_COLUMNS, "c", {"livemode": "livemode", "entity_id": "id"}, 12
        )
        subscription, after = _insert_select(
            subscriptions,
            _SUBSCRIPTION_COLUMNS,
            "c",
            {"livemode": "livemode", "customer_id": "id"},
            3,
        )
        subscription_audit, _ = _insert_select(
            audit, _AUDIT_COLUMNS, "s", {"livemode": "livemode", "entity_id": "id"}, after
        )
        return cls(
            insert_customer=_insert_values(customers, _CUSTOMER_COLUMNS),
            insert_audit=_insert_values(audit, _AUDIT_COLUMNS),
            select_customer=(
                f"SELECT {_names(_CUSTOMER_COLUMNS)} FROM {customers}"
                " WHERE id = $1 AND livemode = $2 AND deleted_at IS NULL"
            ),
            insert_subscription=_insert_values(subscriptions, _SUBSCRIPTION_COLUMNS),
            customer_cte=(
                f"WITH c AS ({_insert_values(customers, _CUSTOMER_COLUMNS)}"
                f" RETURNING id, livemode) {customer_audit}"
            ),
            subscription_cte=(
                f"WITH c AS (SELECT id, livemode FROM {customers}"
                " WHERE id = $1 AND livemode = $2 AND deleted_at IS NULL),"
                f" s AS ({subscription} RETURNING id, livemode)"
                f" {subscription_audit} RETURNING entity_id"
            ),
        )


def _customer_args(customer_id: UUID, i: int) -> tuple[Any, ...]:
    return (customer_id, False, _email(i), None, _external_id(i), None, "{}", 1, NOW, NOW, None)


def _customer_audit_args(i: int) -> tuple[Any, ...]:
    """The audit row's values but ``livemode`` and ``entity_id`` (they come from the row)."""
    changes = _json({"email": _email(i), "external_id": _external_id(i)})
    return (new_id(), "customer", "created", None, changes, NOW)


def _subscription_args(plan_id: UUID, price_id: UUID) -> tuple[Any, ...]:
    """The subscription's values but ``id``, ``livemode`` and ``customer_id``."""
    ends = NOW + timedelta(days=TRIAL_DAYS)
    return (
        *(plan_id, price_id, "trialing", 1, "USD", 2900, "month", 1, ends, NOW, ends, NOW),
        *(ends, False, None, None, None, None, None, ends, None, None, "{}", 1, NOW, NOW, None),
    )


@asynccontextmanager
async def _raw_connection(database: PostgresDatabase, pooled: bool) -> AsyncIterator[Any]:
    """An acquire() for each call: one connection (sequential) or a pool of 10."""
    if pooled:
        pool = await database.pool()
        try:
            yield pool.acquire
        finally:
            await pool.close()
        return
    connection = await database.connect()

    @asynccontextmanager
    async def acquire() -> AsyncIterator[Any]:
        yield connection

    try:
        yield acquire
    finally:
        await connection.close()


def raw_pg_customers(database: PostgresDatabase, way: str, pooled: bool) -> Setup:
    @asynccontextmanager
    async def setup(directory: Path) -> AsyncIterator[Op]:
        sql = RawPostgresSql.for_prefix(database)
        async with _raw_connection(database, pooled) as acquire:

            async def two_statements(i: int) -> object:
                customer_id = new_id()
                audit_id, entity_type, action, actor, changes, created = _customer_audit_args(i)
                async with acquire() as connection, connection.transaction():
                    await connection.execute(sql.insert_customer, *_customer_args(customer_id, i))
                    await connection.execute(
                        sql.insert_audit,
                        *(audit_id, False, entity_type, customer_id, action, actor, changes),
                        created,
                    )
                return customer_id

            async def one_statement(i: int) -> object:
                customer_id = new_id()
                async with acquire() as connection:
                    await connection.execute(
                        sql.customer_cte,
                        *_customer_args(customer_id, i),
                        *_customer_audit_args(i),
                    )
                return customer_id

            yield two_statements if way == "tx" else one_statement

    return setup


def raw_pg_subscriptions(database: PostgresDatabase, way: str, pooled: bool) -> Setup:
    @asynccontextmanager
    async def setup(directory: Path) -> AsyncIterator[Op]:
        sql = RawPostgresSql.for_prefix(database)
        async with database.billing() as billing:  # untimed: the rows the calls need
            price_id, customer_ids = await _catalog(billing)
            price = await billing.prices.get(price_id)
        plan, price_key = price.plan_id, price.id
        customers = [UUID(customer_id) for customer_id in customer_ids]
        changes = _json({"price_id": str(price_key), "status": "trialing"})
        async with _raw_connection(database, pooled) as acquire:

            async def two_statements(i: int) -> object:
                subscription_id = new_id()
                async with acquire() as connection, connection.transaction():
                    row = await connection.fetchrow(
                        sql.select_customer, customers[i % CUSTOMER_POOL], False
                    )
                    if row is None:
                        raise LookupError("customer not found")
                    await connection.execute(
                        sql.insert_subscription,
                        *(subscription_id, False, row[0]),
                        *_subscription_args(plan, price_key),
                    )
                    await connection.execute(
                        sql.insert_audit,
                        *(new_id(), False, "subscription", subscription_id, "created", None),
                        *(changes, NOW),
                    )
                return subscription_id

            async def one_statement(i: int) -> object:
                subscription_id = new_id()
                async with acquire() as connection:
                    found = await connection.fetchval(
                        sql.subscription_cte,
                        *(customers[i % CUSTOMER_POOL], False, subscription_id),
                        *_subscription_args(plan, price_key),
                        *(new_id(), "subscription", "created", None, changes, NOW),
                    )
                if found is None:
                    raise LookupError("customer not found")
                return subscription_id

            yield two_statements if way == "tx" else one_statement

    return setup


# -- PostgreSQL: the same rows, every way ---------------------------------------------------


def _mask(value: object) -> object:
    if isinstance(value, UUID):
        return "<id>"
    if isinstance(value, str):
        return _ID.sub("<id>", value)
    return value


async def _pg_rows(database: PostgresDatabase, table: str) -> list[tuple[object, ...]]:
    connection = await database.connect()
    try:
        rows = await connection.fetch(f"SELECT * FROM {database.table(table)}")
    finally:
        await connection.close()
    return sorted((tuple(_mask(value) for value in row) for row in rows), key=repr)


async def check_same_rows_postgres(database: PostgresDatabase) -> None:
    """Every baseline writes the rows qzpay writes (ids masked), or the ratio would be unfair."""
    calls = 3
    for label, ours, theirs, tables in (
        ("customers", qzpay_customers(database.billing), raw_pg_customers, ("customers",)),
        (
            "subscriptions",
            qzpay_subscriptions(database.billing),
            raw_pg_subscriptions,
            ("subscriptions",),
        ),
    ):
        expected: dict[str, list[tuple[object, ...]]] = {}
        for way in ("qzpay", "tx", "cte"):
            await database.empty()
            setup = ours if way == "qzpay" else theirs(database, way, False)
            async with setup(Path()) as op:
                for i in range(calls):
                    await op(i)
            for table in (*tables, "audit_logs"):
                rows = await _pg_rows(database, table)
                if way == "qzpay":
                    expected[table] = rows
                elif rows != expected[table]:
                    raise AssertionError(
                        f"{label}: {table} differs between qzpay and the {way} baseline:\n"
                        f"qzpay: {expected[table][:2]}\nraw:   {rows[:2]}"
                    )
        if len(expected[tables[0]]) != calls:
            raise AssertionError(f"{label}: qzpay wrote {len(expected[tables[0]])} rows")


# -- timing --------------------------------------------------------------------------------


async def _drive(op: Op, first: int, n: int, concurrency: int) -> None:
    """Calls ``first`` .. ``first + n - 1``, one at a time or spread over ``concurrency`` tasks."""
    if concurrency == 1:
        for i in range(first, first + n):
            await op(i)
        return

    async def worker(start: int) -> None:
        for i in range(start, first + n, concurrency):
            await op(i)

    await asyncio.gather(*(worker(first + w) for w in range(concurrency)))


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    backend: str
    setup: Setup
    concurrency: int
    baselines: tuple[str, ...] = ()  # the keys of the matching raw cases
    trace: bool = True
    short: str = ""  # this case's name in a ratio column, when it is a baseline
    warmup_tasks: int = 1  # how many tasks the untimed warm-up calls are spread over


async def measure(case: Case, root: Path, n: int, *, trace: bool = False) -> float:
    """Seconds for ``n`` calls (or, with ``trace``, the tracemalloc peak in bytes)."""
    directory = Path(tempfile.mkdtemp(dir=root))
    async with case.setup(directory) as op:
        # First calls compile statements and fill caches (on every pooled connection).
        warmup = WARMUP * case.warmup_tasks if case.warmup_tasks > 1 else WARMUP
        await _drive(op, -warmup, warmup, case.warmup_tasks)
        gc.collect()
        if trace:
            tracemalloc.start()
        try:
            start = time.perf_counter()
            await _drive(op, 0, n, case.concurrency)
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] if trace else 0
        finally:
            if trace:
                tracemalloc.stop()
    return float(peak) if trace else elapsed


@dataclass
class Result:
    key: str
    label: str
    backend: str
    concurrency: int
    n: int
    ops: float
    us_per_call: float
    runs_ops: list[float]
    baselines: list[str]
    ratios: dict[str, float] = field(default_factory=dict)
    peak_kib_n: float | None = None
    peak_kib_2n: float | None = None


def cases(database: PostgresDatabase) -> list[Case]:
    s, m, c = _billing_sqlite, _billing_memory, CONCURRENCY
    sqlite_and_memory = [
        Case("sqlite.customers.seq", "SQLite customers.create, sequential", "sqlite", qzpay_customers(s), 1, ("raw.customers.seq",)),
        Case("sqlite.customers.c32", f"SQLite customers.create, {c} tasks", "sqlite", qzpay_customers(s), c, ("raw.customers.c32",)),
        Case("sqlite.subscriptions.seq", "SQLite subscriptions.create, sequential", "sqlite", qzpay_subscriptions(s), 1, ("raw.subscriptions.seq",)),
        Case("sqlite.subscriptions.c32", f"SQLite subscriptions.create, {c} tasks", "sqlite", qzpay_subscriptions(s), c, ("raw.subscriptions.c32",)),
        Case("raw.customers.seq", "raw aiosqlite customers, sequential", "sqlite", raw_customers, 1, trace=False, short="raw"),
        Case("raw.customers.c32", f"raw aiosqlite customers, {c} tasks", "sqlite", raw_customers, c, trace=False, short="raw"),
        Case("raw.subscriptions.seq", "raw aiosqlite subscriptions, sequential", "sqlite", raw_subscriptions, 1, trace=False, short="raw"),
        Case("raw.subscriptions.c32", f"raw aiosqlite subscriptions, {c} tasks", "sqlite", raw_subscriptions, c, trace=False, short="raw"),
        Case("raw.hop", "raw aiosqlite round trip (SELECT 1)", "sqlite", raw_round_trip, 1, trace=False),
        Case("memory.customers.seq", "Memory customers.create, sequential", "memory", qzpay_customers(m), 1),
        Case("memory.customers.c32", f"Memory customers.create, {c} tasks", "memory", qzpay_customers(m), c),
        Case("memory.subscriptions.seq", "Memory subscriptions.create, sequential", "memory", qzpay_subscriptions(m), 1),
        Case("memory.subscriptions.c32", f"Memory subscriptions.create, {c} tasks", "memory", qzpay_subscriptions(m), c),
    ]  # fmt: skip
    postgres: list[Case] = []
    for call, ours, theirs in (
        ("customers", qzpay_customers(database.billing), raw_pg_customers),
        ("subscriptions", qzpay_subscriptions(database.billing), raw_pg_subscriptions),
    ):
        for concurrency, mode, how in ((1, "seq", "sequential"), (c, "c32", f"{c} tasks")):
            where = "1 connection" if concurrency == 1 else f"pool of {POOL_SIZE}"
            raw = [
                Case(
                    f"pgraw.{call}.{way}.{mode}",
                    f"raw asyncpg {call}, {way}, {how} ({where})",
                    "postgres",
                    _on_empty_tables(database, theirs(database, way, concurrency > 1)),
                    concurrency,
                    trace=False,
                    short=way,
                    warmup_tasks=concurrency,
                )
                for way in ("tx", "cte")
            ]
            postgres.append(
                Case(
                    f"pg.{call}.{mode}",
                    f"Postgres {call}.create, {how}",
                    "postgres",
                    _on_empty_tables(database, ours),
                    concurrency,
                    tuple(case.key for case in raw),
                    warmup_tasks=concurrency,
                )
            )
            postgres.extend(raw)
    return [*sqlite_and_memory, *postgres]


async def run(
    n: int,
    runs: int,
    selected: Sequence[Case],
    memory: bool,
    database: PostgresDatabase | None,
    progress: Callable[[str], None],
) -> list[Result]:
    backends = {case.backend for case in selected}
    with tempfile.TemporaryDirectory(prefix="qzpay-bench-") as tmp:
        root = Path(tmp)
        if "sqlite" in backends:
            await check_same_rows(root)
            progress("SQLite rows checked: qzpay and the baseline write the same rows")
        try:
            if "postgres" in backends:
                assert database is not None
                await database.create()
                progress(f"PostgreSQL {database.server}: tables under prefix {database.prefix}")
                await check_same_rows_postgres(database)
                progress("Postgres rows checked: qzpay and both baselines write the same rows")
            return await _timed(n, runs, selected, memory, root, database, progress)
        finally:
            if "postgres" in backends:
                assert database is not None
                await database.drop()
                progress(f"dropped the tables under prefix {database.prefix}")


async def _timed(
    n: int,
    runs: int,
    selected: Sequence[Case],
    memory: bool,
    root: Path,
    database: PostgresDatabase | None,
    progress: Callable[[str], None],
) -> list[Result]:
    seconds: dict[str, list[float]] = {case.key: [] for case in selected}
    for backend in BACKENDS:  # one at a time: one's disk writes stay out of another's timings
        block = [case for case in selected if case.backend == backend]
        if not block:
            continue
        await asyncio.to_thread(os.sync)
        if backend == "postgres" and database is not None:
            await database.checkpoint()
        for index in range(runs):  # interleaved, so drift hits every case alike
            for case in block:
                seconds[case.key].append(await measure(case, root, n))
            progress(f"{backend}: run {index + 1}/{runs} done")
    results: dict[str, Result] = {}
    for case in selected:
        ops = [n / elapsed for elapsed in seconds[case.key]]
        median = statistics.median(ops)
        results[case.key] = Result(
            key=case.key,
            label=case.label,
            backend=case.backend,
            concurrency=case.concurrency,
            n=n,
            ops=round(median, 1),
            us_per_call=round(1e6 / median, 1),
            runs_ops=[round(x, 1) for x in ops],
            baselines=list(case.baselines),
        )
    for case in selected:
        result = results[case.key]
        for baseline in case.baselines:
            if baseline in results:
                result.ratios[baseline] = round(result.ops / results[baseline].ops, 3)
        if memory and case.trace:
            peak_n = await measure(case, root, n, trace=True)
            peak_2n = await measure(case, root, 2 * n, trace=True)
            result.peak_kib_n = round(peak_n / 1024, 1)
            result.peak_kib_2n = round(peak_2n / 1024, 1)
    if memory:
        progress("peak memory traced")
    return list(results.values())


# -- report --------------------------------------------------------------------------------

# DESIGN §11's raw asyncpg figures (a machine of this kind): to read this machine's by.
DESIGN_RAW: Final = {
    "pgraw.customers.tx.seq": "1,370",
    "pgraw.customers.cte.seq": "2,500-2,700",
    "pgraw.customers.tx.c32": "3,900",
    "pgraw.subscriptions.tx.seq": "1,080",
    "pgraw.subscriptions.cte.seq": "2,240",
}


def _target(text: str, value: float, goal: float, shown: str) -> dict[str, Any]:
    return {
        "target": text,
        "value": shown,
        "met": value >= goal,
        "margin": f"{value / goal - 1:+.0%}",
    }


def targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    by_key = {result.key: result for result in results}
    found: list[dict[str, Any]] = []
    sqlite = by_key.get("sqlite.customers.seq")
    if sqlite is not None and "raw.customers.seq" in sqlite.ratios:
        ratio = sqlite.ratios["raw.customers.seq"]
        found.append(
            _target(
                f"SQLite customers.create sequential >= {TARGET_SQLITE_RATIO}x raw",
                ratio,
                TARGET_SQLITE_RATIO,
                f"{ratio:.2f}x",
            )
        )
    memory = by_key.get("memory.customers.seq")
    if memory is not None:
        found.append(
            _target(
                f"Memory customers.create sequential >= {TARGET_MEMORY_OPS:,.0f}/s",
                memory.ops,
                TARGET_MEMORY_OPS,
                f"{memory.ops:,.0f}/s",
            )
        )
    for key, goal in TARGETS_POSTGRES:
        result = by_key.get(key)
        if result is not None:
            found.append(
                _target(
                    f"{result.label} >= {goal:,.0f}/s", result.ops, goal, f"{result.ops:,.0f}/s"
                )
            )
    for result in results:
        raw = next((b for b in result.baselines if b.startswith("pgraw.") and ".tx." in b), None)
        if raw is not None and raw in result.ratios:
            ratio = result.ratios[raw]
            found.append(
                _target(
                    f"{result.label} >= {TARGET_RAW_RATIO}x raw asyncpg tx (DESIGN §11)",
                    ratio,
                    TARGET_RAW_RATIO,
                    f"{ratio:.2f}x",
                )
            )
    return found


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} KiB"


def _ratios(result: Result, short: dict[str, str]) -> str:
    return ", ".join(f"{ratio:.2f}x {short[key]}" for key, ratio in result.ratios.items()) or "-"


def print_text(
    info: dict[str, Any],
    n: int,
    runs: int,
    results: Sequence[Result],
    selected: Sequence[Case],
    skipped: str,
) -> None:
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    print(f"machine:  {info['platform']}")
    print(f"cpu:      {info['cpu']}, {info['cores']} cores")
    print(f"python:   {info['python']}, SQLite {info['sqlite']}, {info['event_loop']}")
    if info.get("postgresql"):
        print(f"server:   PostgreSQL {info['postgresql']}")
    print(f"packages: {packages}")
    print(f"N={n:,} calls per run, median of {runs} runs (min-max of the runs shown);")
    print("peak = tracemalloc peak of the timed section, in separate untimed runs of N and 2N")
    if skipped:
        print(f"PostgreSQL skipped: {skipped}")
    short = {case.key: case.short for case in selected}
    header = (
        f"{'case':<54} {'ops/s':>8} {'us/call':>8} {'runs min-max':>14} {'vs raw':>20}"
        f" {'peak N':>10} {'peak 2N':>10}"
    )
    for backend in BACKENDS:
        rows = [r for r in results if r.backend == backend]
        if not rows:
            continue
        print()
        print(header)
        print("-" * len(header))
        for r in rows:
            spread = f"{min(r.runs_ops):,.0f}-{max(r.runs_ops):,.0f}"
            print(
                f"{r.label:<54} {r.ops:>8,.0f} {r.us_per_call:>8,.0f} {spread:>14}"
                f" {_ratios(r, short):>20} {_kib(r.peak_kib_n):>10} {_kib(r.peak_kib_2n):>10}"
            )
    design = [(r, DESIGN_RAW[r.key]) for r in results if r.key in DESIGN_RAW]
    if design:
        print()
        print("this machine's raw asyncpg figures next to DESIGN §11's (the targets' machine):")
        for r, figure in design:
            print(f"  {r.label:<54} {r.ops:>8,.0f}/s here, {figure}/s there")
    print()
    for target in targets(results):
        verdict = "met" if target["met"] else "MISSED"
        print(f"target: {target['target']}: {target['value']} -> {verdict} ({target['margin']})")


def main(argv: Sequence[str] | None = None) -> int:
    keys = [case.key for case in cases(PostgresDatabase(url="", prefix=""))]
    parser = argparse.ArgumentParser(
        description="Time qzpay's API calls next to raw aiosqlite and asyncpg baselines."
    )
    parser.add_argument(
        "--backend", choices=("all", *BACKENDS), default="all", help="which store (default all)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL),
        help=f"PostgreSQL to run on (default ${POSTGRES_URL_ENV} or {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="calls per timed run")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs per figure")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--only",
        action="append",
        choices=keys,
        metavar="CASE",
        help=f"time only this case (repeatable; e.g. under a profiler): {', '.join(keys)}",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the traced memory runs")
    args = parser.parse_args(argv)
    if args.n < CONCURRENCY or args.runs < 1:
        parser.error(f"--n must be at least {CONCURRENCY} and --runs at least 1")
    n: int = args.n
    runs: int = args.runs
    only: list[str] | None = args.only
    wanted = BACKENDS if args.backend == "all" else (args.backend,)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    database: PostgresDatabase | None = None
    skipped = ""
    if "postgres" in wanted:
        database, skipped = asyncio.run(postgres_database(args.postgres_url))
        if database is None:
            progress(f"PostgreSQL skipped: {skipped}")
        else:
            info["postgresql"] = database.server
    selected = [
        case
        for case in cases(database or PostgresDatabase(url="", prefix=""))
        if case.backend in wanted
        and (only is None or case.key in only)
        and (case.backend != "postgres" or database is not None)
    ]
    if not selected:
        print("nothing to time" + (f" (PostgreSQL skipped: {skipped})" if skipped else ""))
        return 0
    started = time.perf_counter()
    results = asyncio.run(run(n, runs, selected, not args.no_memory, database, progress))
    elapsed = time.perf_counter() - started
    if args.json:
        document = {
            "command": " ".join(["python benchmarks/api_calls.py", *sys.argv[1:]]),
            "machine": info,
            "n": n,
            "runs": runs,
            "postgres_skipped": skipped or None,
            "results": [asdict(result) for result in results],
            "targets": targets(results),
            "seconds": round(elapsed, 1),
        }
        print(json.dumps(document, indent=2))
    else:
        print_text(info, n, runs, results, selected, skipped)
        print(f"\n(whole script: {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
