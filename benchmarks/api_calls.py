"""Throughput of qzpay's API calls next to a raw-driver baseline timed in the same run.

    python benchmarks/api_calls.py [--backend all|sqlite|memory|postgres] [--n N] [--runs R]
        [--postgres-url URL] [--json] [--only CASE] [--no-memory]

A script that prints figures, never a timed test (issues 9, 10 and 14, DESIGN §11). It
times ``customers.create`` and ``subscriptions.create`` (with a trial: no provider charge),
and the charged calls (issue 14) ``payments.process``, ``payments.refund`` and
``subscriptions.create`` without a trial, sequentially and from 32 concurrent tasks, on each
backend, next to the same rows written by the bare driver with hand-written SQL in the same
run. Case keys are ``<backend>.<call>.<seq|c32>`` (``pgraw.<call>.<tx|cte>.<mode>`` and
``raw.<call>.<mode>`` for the baselines), with ``<call>`` one of ``customers``,
``subscriptions``, ``process``, ``refund``, ``subscriptions_paid``; ``--only`` takes them.

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

The charged calls are intent first (DESIGN §7): transaction 1 commits a pending row, the
``FakeProvider`` is called outside any transaction, transaction 2 settles. Their calls
cycle over 32 customers, each with a default card (``pm_card_visa``) attached through qzpay
before timing. The raw baselines (aiosqlite, and asyncpg ``tx`` only) are written once for
both drivers, one statement per row, in the same two transactions, and call the same
``FakeProvider`` instance with the same request as qzpay (so its cost is in both figures):

- ``process`` (``payments.process`` of 5000 USD): tx 1 reads the customer's default card
  and provider customer id (one SELECT joining customers, payment_methods and
  customer_provider_refs), INSERT the pending payment, INSERT its audit row; the charge;
  tx 2 UPDATE the payment to succeeded (checked against version 1), INSERT its audit row;
- ``refund`` (``payments.refund`` of 1500 of a succeeded 5000 payment, one made through
  qzpay before timing for every call, so each ends ``partially_refunded``): tx 1 the
  reservation, one UPDATE adding to ``refunded_amount`` bounded by ``amount`` (and only
  for a refundable status) RETURNING what the refund needs, INSERT the pending refund,
  UPDATE the payment's ``due_at`` (version checked), INSERT the refund's audit row; the
  refund at the fake; tx 2 holds the payment first, as qzpay does (UPDATE adding 0 to
  ``refunded_amount`` RETURNING its amount, status and version: the row stays locked to the
  end), UPDATE the refund to succeeded, INSERT its audit row, SELECT the payment's refunds
  summed by status, UPDATE the payment to partially_refunded (version checked), INSERT its
  audit row. The payment is written as often as qzpay writes it (two UPDATEs in tx 1, two
  in tx 2), so its version ends alike; if qzpay's writes change, the row check says so;
- ``subscriptions_paid`` (``subscriptions.create`` without a trial, a 2900 USD monthly
  price): tx 1 one SELECT of the price, the customer, its default card and provider id,
  INSERT the incomplete subscription, its audit row, the pending payment, its audit row; the
  charge; tx 2 UPDATE the payment to succeeded and the subscription to active (both
  version checked), and their audit rows.

Before timing, the script checks that every baseline writes the same rows as qzpay (ids
and the fake's random id namespace masked; for the charged calls the payments, refunds,
subscriptions and audit_logs tables). Each figure is the median of R runs. The backends are timed one after the other
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

from qzpay import create_billing, periods
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryStorage
from qzpay.adapters.postgres import PostgresStorage, asyncpg_dsn
from qzpay.adapters.sqlite import BUSY_TIMEOUT_MS, SQLiteStorage
from qzpay.billing import Billing
from qzpay.conformance.factories import drop_prefix
from qzpay.contracts.provider import ChargeRequest, ChargeResult, RefundRequest
from qzpay.domain import schedule
from qzpay.domain.enums import Interval
from qzpay.ids import new_id
from qzpay.settings import DEFAULTS

CONCURRENCY: Final = 32
CUSTOMER_POOL: Final = 32  # subscriptions.create cycles over this many customers
TRIAL_DAYS: Final = 14
TRIAL_REMINDER: Final = timedelta(days=DEFAULTS.trial_will_end_days)
"""A trialing subscription is due first for its trial-will-end reminder, this long before
its trial ends (qzpay.domain.schedule)."""
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
    ("pg.process.seq", 910.0),  # issue 14: the reference implementation's 455/s, twice
)
TARGET_RAW_RATIO: Final = 0.5  # DESIGN §11: at least half the raw-driver baseline
BACKENDS: Final = ("sqlite", "memory", "postgres")

Op = Callable[[int], Awaitable[object]]
"""One API call; its argument is the call's index (0..N-1; negative for warm-up calls)."""
Setup = Callable[[Path, range], AbstractAsyncContextManager[Op]]
"""Prepare a fresh store in the given directory (untimed) and yield the call to time; the
range is every index the call will be given (warm-up and timed), for setups that make one
row per call beforehand (a payment to refund)."""


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
    async def setup(directory: Path, calls: range) -> AsyncIterator[Op]:
        async with make(directory) as billing:
            create = billing.customers.create

            async def op(i: int) -> object:
                return await create(email=_email(i), external_id=_external_id(i))

            yield op

    return setup


def qzpay_subscriptions(make: Callable[[Path], Billing]) -> Setup:
    @asynccontextmanager
    async def setup(directory: Path, calls: range) -> AsyncIterator[Op]:
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
async def raw_customers(directory: Path, calls: range) -> AsyncIterator[Op]:
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
async def raw_subscriptions(directory: Path, calls: range) -> AsyncIterator[Op]:
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
            created, ends, due = _ts(now), _ts(trial_end), _ts(trial_end - TRIAL_REMINDER)
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
                        *(None, None, None, None, None, due, None, None, "{}", 1),
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


def _billing_sqlite_on(path: Path, provider: FakeProvider | None = None) -> Billing:
    return create_billing(
        storage=SQLiteStorage(path), provider=provider or FakeProvider(), clock=FrozenClock(NOW)
    )


@asynccontextmanager
async def raw_round_trip(directory: Path, calls: range) -> AsyncIterator[Op]:
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
_FAKE_NAMESPACE = re.compile(r"(?<=_fake_)[0-9a-f]{6}(?=_)")
"""Each FakeProvider names its ids in a random namespace (``ch_fake_<ns>_000001``); the
counter stays, so both ways must have made as many provider calls in the same order."""


def _mask_text(value: str) -> str:
    return _FAKE_NAMESPACE.sub("<ns>", _ID.sub("<id>", value))


def _rows(path: Path, table: str, where: str = "") -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(f"SELECT * FROM {table} {where}").fetchall()
    finally:
        connection.close()
    masked = [
        tuple(_mask_text(value) if isinstance(value, str) else value for value in row)
        for row in rows
    ]
    return sorted(masked, key=repr)


def _difference(ours: Sequence[tuple[object, ...]], theirs: Sequence[tuple[object, ...]]) -> str:
    """The first row that differs, both ways (or the row counts)."""
    if len(ours) != len(theirs):
        return f"qzpay wrote {len(ours)} rows, the baseline {len(theirs)}"
    for mine, other in zip(ours, theirs, strict=True):
        if mine != other:
            return f"qzpay: {mine}\nraw:   {other}"
    return "(no difference)"


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
        *(
            (call, qzpay_charged(_billing_sqlite, call), raw_charged(call), CHARGED_TABLES[call])
            for call in CHARGED_CALLS
        ),
    ):
        directory = Path(tempfile.mkdtemp(dir=root))
        async with qzpay_setup(directory, range(calls)) as op:
            for i in range(calls):
                await op(i)
        async with raw_setup(directory, range(calls)) as op:
            for i in range(calls):
                await op(i)
        for table in (*tables, "audit_logs"):
            ours = _rows(directory / "qzpay.db", f"billing_{table}")
            theirs = _rows(directory / "raw.db", f"billing_{table}")
            if ours != theirs:
                raise AssertionError(
                    f"{label}: billing_{table} differs between qzpay and the baseline:\n"
                    f"{_difference(ours, theirs)}"
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

    def billing(
        self, directory: Path | None = None, provider: FakeProvider | None = None
    ) -> Billing:
        """qzpay on this database (``directory`` is unused: the SQLite maker's signature)."""
        return create_billing(
            storage=self.storage(), provider=provider or FakeProvider(), clock=FrozenClock(NOW)
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
        await drop_prefix(self.url, self.prefix)


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
    async def fresh(directory: Path, calls: range) -> AsyncIterator[Op]:
        await database.empty()
        async with setup(directory, calls) as op:
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
    due = ends - TRIAL_REMINDER
    return (
        *(plan_id, price_id, "trialing", 1, "USD", 2900, "month", 1, ends, NOW, ends, NOW),
        *(ends, False, None, None, None, None, None, due, None, None, "{}", 1, NOW, NOW, None),
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
    async def setup(directory: Path, calls: range) -> AsyncIterator[Op]:
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
    async def setup(directory: Path, calls: range) -> AsyncIterator[Op]:
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


# -- charged calls: payments.process, payments.refund, subscriptions.create without a trial --
#
# Intent first (DESIGN §7): transaction 1 commits a pending row, then the FakeProvider is
# called (outside any transaction), then transaction 2 settles. The raw baselines write the
# same rows in the same two transactions, one statement per row, on either driver, and call
# the same FakeProvider instance with the same request (its cost is in both figures).

CHARGE_AMOUNT: Final = 5000  # payments.process, and each payment refunded
REFUND_AMOUNT: Final = 1500  # part of it: the payment ends partially_refunded
RECONCILE_AFTER: Final = timedelta(minutes=10)  # Settings' default: a pending row's due_at
CARD: Final = "pm_card_visa"  # the fake's card that always succeeds
CHARGED_CALLS: Final = ("process", "refund", "subscriptions_paid")
"""The key segment of each charged case (``sqlite.process.seq``, ``pgraw.refund.tx.c32``...)."""
CHARGED_TABLES: Final = {
    "process": ("payments",),
    "refund": ("refunds", "payments"),
    "subscriptions_paid": ("subscriptions", "payments"),
}
"""The tables each charged case writes (audit_logs too), compared row by row before timing;
the first one has a row per call."""
CHARGED_LABELS: Final = {
    "process": "payments.process",
    "refund": "payments.refund (part)",
    "subscriptions_paid": "subscriptions.create (charged)",
}


@dataclass(frozen=True)
class Prepared:
    """What a charged case's calls need, made through qzpay before timing (untimed)."""

    price_id: UUID
    customers: list[UUID]  # CUSTOMER_POOL customers, each with a default card at the fake
    payments: dict[int, UUID]  # refund: a succeeded payment of its own for every call index


async def _prepare(billing: Billing, call: str, calls: range) -> Prepared:
    price_id, customer_ids = await _catalog(billing)
    for customer_id in customer_ids:
        await billing.payment_methods.attach(customer_id, token=CARD)
    customers = [UUID(customer_id) for customer_id in customer_ids]
    payments: dict[int, UUID] = {}
    if call == "refund":

        async def pay(i: int) -> object:
            payment = await billing.payments.process(
                customer_id=customers[i % CUSTOMER_POOL], amount=CHARGE_AMOUNT, currency="USD"
            )
            payments[i] = payment.id
            return payment

        # Many tasks when there are many (Postgres pools them); in order for a row check.
        tasks = CONCURRENCY if len(calls) > CONCURRENCY else 1
        await _drive(pay, calls.start, len(calls), tasks)
    return Prepared(UUID(price_id), customers, payments)


def _qzpay_charged_op(billing: Billing, call: str, ready: Prepared) -> Op:
    customers, price_id = ready.customers, ready.price_id
    if call == "process":
        process = billing.payments.process

        async def pay(i: int) -> object:
            return await process(
                customer_id=customers[i % CUSTOMER_POOL], amount=CHARGE_AMOUNT, currency="USD"
            )

        return pay
    if call == "refund":
        refund, payments = billing.payments.refund, ready.payments

        async def give_back(i: int) -> object:
            return await refund(payments[i], amount=REFUND_AMOUNT)

        return give_back
    create = billing.subscriptions.create

    async def subscribe(i: int) -> object:
        return await create(customer_id=customers[i % CUSTOMER_POOL], price_id=price_id)

    return subscribe


def qzpay_charged(make: Callable[[Path], Billing], call: str) -> Setup:
    @asynccontextmanager
    async def setup(directory: Path, calls: range) -> AsyncIterator[Op]:
        async with make(directory) as billing:
            ready = await _prepare(billing, call, calls)
            yield _qzpay_charged_op(billing, call, ready)

    return setup


class RawSession:
    """One open transaction of a raw driver: ``rows`` for what returns rows, ``run`` for
    the others (the row count)."""

    async def rows(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def run(self, sql: str, *args: Any) -> int:
        raise NotImplementedError


class _SQLiteSession(RawSession):
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def rows(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        return list(await self._connection.execute_fetchall(sql, args))

    async def run(self, sql: str, *args: Any) -> int:
        cursor = await self._connection.execute(sql, args)
        return cursor.rowcount


class _PostgresSession(RawSession):
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def rows(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await self._connection.fetch(sql, *args)
        return rows

    async def run(self, sql: str, *args: Any) -> int:
        status: str = await self._connection.execute(sql, *args)
        return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True)
class RawDriver:
    """A raw driver as the charged baselines use it: its transactions, its table prefix and
    how it binds values (SQLite: 32-hex ids and naive-UTC text timestamps, ``?``; asyncpg:
    native uuid and timestamptz, ``$n``). The flows below are written once for both."""

    prefix: str
    transaction: Callable[[], AbstractAsyncContextManager[RawSession]]
    key: Callable[[UUID], Any]
    time: Callable[[datetime], Any]
    numbered: bool

    def sql(self, text: str) -> str:
        text = text.replace("{t}", self.prefix)
        if not self.numbered:
            return text
        head, *rest = text.split("?")
        return head + "".join(f"${number}{part}" for number, part in enumerate(rest, 1))


def _sqlite_driver(connection: aiosqlite.Connection) -> RawDriver:
    session = _SQLiteSession(connection)
    lock = asyncio.Lock()  # one connection: transactions must not interleave

    @asynccontextmanager
    async def transaction() -> AsyncIterator[RawSession]:
        async with lock, _raw_transaction(connection):
            yield session

    return RawDriver("billing_", transaction, lambda value: value.hex, _ts, numbered=False)


def _postgres_driver(database: PostgresDatabase, acquire: Any) -> RawDriver:
    @asynccontextmanager
    async def transaction() -> AsyncIterator[RawSession]:
        async with acquire() as connection, connection.transaction():
            yield _PostgresSession(connection)

    return RawDriver(database.prefix, transaction, _same, _same, numbered=True)


def _same(value: Any) -> Any:
    return value


_PAYMENT_NAMES: Final = (
    "id", "livemode", "customer_id", "subscription_id", "invoice_id", "payment_method_id",
    "amount", "currency", "status", "refunded_amount", "provider", "provider_id",
    "failure_code", "failure_message", "provider_failure_code", "idempotency_key",
    "description", "next_action", "metadata", "due_at", "claimed_by", "claimed_until",
    "version", "created_at", "updated_at", "deleted_at",
)  # fmt: skip
_REFUND_NAMES: Final = (
    "id", "livemode", "payment_id", "amount", "currency", "status", "reason", "provider",
    "provider_id", "failure_code", "idempotency_key", "metadata", "created_at", "updated_at",
)  # fmt: skip


def _insert_text(table: str, names: Sequence[str]) -> str:
    marks = ", ".join("?" * len(names))
    return f"INSERT INTO {{t}}{table} ({', '.join(names)}) VALUES ({marks})"


_CARD_JOIN: Final = (
    " JOIN {t}payment_methods m ON m.livemode = c.livemode AND m.customer_id = c.id"
    " AND m.is_default AND m.deleted_at IS NULL AND m.provider = ?"
    " JOIN {t}customer_provider_refs r ON r.livemode = c.livemode AND r.customer_id = c.id"
    " AND r.provider = m.provider"
)
_CHARGED_SQL: Final = {
    "insert_payment": _insert_text("payments", _PAYMENT_NAMES),
    "insert_refund": _insert_text("refunds", _REFUND_NAMES),
    "insert_subscription": _insert_text(
        "subscriptions", [name for name, _ in _SUBSCRIPTION_COLUMNS]
    ),
    "insert_audit": _insert_text("audit_logs", [name for name, _ in _AUDIT_COLUMNS]),
    # The customer's default card at the provider and the customer's id there: one read.
    "payer": (
        "SELECT m.id, m.provider_id, r.provider_customer_id FROM {t}customers c"
        f"{_CARD_JOIN} WHERE c.id = ? AND c.livemode = ? AND c.deleted_at IS NULL"
    ),
    # The same, with the price the subscription is for: one read.
    "subscriber": (
        "SELECT p.plan_id, p.unit_amount, p.currency, p.interval, p.interval_count,"
        " m.id, m.provider_id, r.provider_customer_id FROM {t}prices p"
        " JOIN {t}customers c ON c.livemode = p.livemode AND c.id = ? AND c.deleted_at IS NULL"
        f"{_CARD_JOIN} WHERE p.id = ? AND p.livemode = ? AND p.active"
    ),
    "settle_payment": (
        "UPDATE {t}payments SET status = ?, provider_id = ?, due_at = NULL,"
        " version = version + 1, updated_at = ?"
        " WHERE id = ? AND livemode = ? AND deleted_at IS NULL AND version = ?"
    ),
    "activate": (
        "UPDATE {t}subscriptions SET status = ?, due_at = ?, version = version + 1,"
        " updated_at = ? WHERE id = ? AND livemode = ? AND deleted_at IS NULL AND version = ?"
    ),
    # The reservation: refundable, and never beyond the amount, in one statement.
    "reserve": (
        "UPDATE {t}payments SET refunded_amount = refunded_amount + ?,"
        " version = version + 1, updated_at = ?"
        " WHERE id = ? AND livemode = ? AND deleted_at IS NULL AND provider = ?"
        " AND provider_id IS NOT NULL AND status IN (?, ?) AND refunded_amount + ? <= amount"
        " RETURNING provider_id, currency, version"
    ),
    "due": (
        "UPDATE {t}payments SET due_at = coalesce(due_at, ?), version = version + 1,"
        " updated_at = ? WHERE id = ? AND livemode = ? AND deleted_at IS NULL AND version = ?"
    ),
    # Settling holds the payment first (qzpay: an increment of 0, its row locked until the
    # end of the transaction, so refunds of one payment settle one after the other).
    "hold": (
        "UPDATE {t}payments SET refunded_amount = refunded_amount + ?, version = version + 1,"
        " updated_at = ? WHERE id = ? AND livemode = ? AND deleted_at IS NULL"
        " RETURNING amount, status, version"
    ),
    "settle_refund": (
        "UPDATE {t}refunds SET status = ?, provider_id = ?, updated_at = ?"
        " WHERE id = ? AND livemode = ? AND status = ?"
    ),
    "refunded": (
        "SELECT status, sum(amount) FROM {t}refunds WHERE livemode = ? AND payment_id = ?"
        " GROUP BY status"
    ),
    "follow": (
        "UPDATE {t}payments SET status = ?, due_at = CASE WHEN ? THEN due_at END,"
        " version = version + 1, updated_at = ?"
        " WHERE id = ? AND livemode = ? AND deleted_at IS NULL AND version = ?"
    ),
}


class _RawCharged:
    """The charged flows on one raw driver and the FakeProvider qzpay's setup used."""

    def __init__(self, driver: RawDriver, fake: FakeProvider, ready: Prepared) -> None:
        self.driver, self.fake, self.ready = driver, fake, ready
        self.q = {name: driver.sql(text) for name, text in _CHARGED_SQL.items()}
        self.now, self.due = driver.time(NOW), driver.time(NOW + RECONCILE_AFTER)
        self.customers = [driver.key(customer_id) for customer_id in ready.customers]

    async def _audit(
        self, tx: RawSession, entity_type: str, entity: Any, action: str, changes: object
    ) -> None:
        await tx.run(
            self.q["insert_audit"],
            *(self.driver.key(new_id()), False, entity_type, entity, action, None),
            *(_json(changes), self.now),
        )

    async def _checked(self, tx: RawSession, name: str, *args: Any) -> None:
        if await tx.run(self.q[name], *args) != 1:
            raise LookupError(f"{name}: no row (missing, or a stale version)")

    def _pending_payment(
        self,
        payment_id: UUID,
        customer: Any,
        method: Any,
        amount: int,
        currency: str,
        subscription: Any = None,
        description: str | None = None,
    ) -> tuple[Any, ...]:
        key, now = f"qzpay-payment-{payment_id}", self.now
        return (
            *(self.driver.key(payment_id), False, customer, subscription, None, method),
            *(amount, currency, "pending", 0, "fake", None, None, None, None, key),
            *(description, None, "{}", self.due, None, None, 1, now, now, None),
        )

    async def _settle_payment(self, payment: Any, result: ChargeResult) -> None:
        if result.status != "succeeded":
            raise AssertionError(f"the fake answered {result.status}")
        async with self.driver.transaction() as tx:
            await self._checked(
                tx, "settle_payment", "succeeded", result.provider_id, self.now, payment, False, 1
            )
            await self._audit(
                tx, "payment", payment, "succeeded", {"status": ["pending", "succeeded"]}
            )

    async def process(self, i: int) -> object:
        payment_id = new_id()
        payment, customer = self.driver.key(payment_id), self.customers[i % CUSTOMER_POOL]
        async with self.driver.transaction() as tx:
            found = await tx.rows(self.q["payer"], "fake", customer, False)
            if not found:
                raise LookupError("the customer has no card to charge")
            method, card, provider_customer = found[0]
            await tx.run(
                self.q["insert_payment"],
                *self._pending_payment(payment_id, customer, method, CHARGE_AMOUNT, "USD"),
            )
            changes = {"amount": CHARGE_AMOUNT, "currency": "USD"}
            await self._audit(tx, "payment", payment, "created", changes)
        request = ChargeRequest(
            amount=CHARGE_AMOUNT,
            currency="USD",
            provider_customer_id=provider_customer,
            provider_payment_method_id=card,
            idempotency_key=f"qzpay-payment-{payment_id}",
            description=None,
            metadata={},
        )
        await self._settle_payment(payment, await self.fake.charge(request))
        return payment_id

    async def refund(self, i: int) -> object:
        refund_id, driver, now = new_id(), self.driver, self.now
        payment, refund = driver.key(self.ready.payments[i]), driver.key(refund_id)
        key = f"qzpay-refund-{refund_id}"
        async with driver.transaction() as tx:
            reserved = await tx.rows(
                self.q["reserve"],
                *(REFUND_AMOUNT, now, payment, False, "fake", "succeeded", "partially_refunded"),
                REFUND_AMOUNT,
            )
            if not reserved:
                raise LookupError("the payment is not refundable, or not by that much")
            charge, currency, version = reserved[0]
            await tx.run(
                self.q["insert_refund"],
                *(refund, False, payment, REFUND_AMOUNT, currency, "pending", None, "fake"),
                *(None, None, key, "{}", now, now),
            )
            await self._checked(tx, "due", self.due, now, payment, False, version)
            changes = {"amount": REFUND_AMOUNT, "reason": None}
            await self._audit(tx, "refund", refund, "created", changes)
        result = await self.fake.refund(
            RefundRequest(
                provider_payment_id=charge,
                amount=REFUND_AMOUNT,
                currency=currency,
                idempotency_key=key,
                reason=None,
            )
        )
        if result.status != "succeeded":
            raise AssertionError(f"the fake answered {result.status}")
        async with driver.transaction() as tx:
            held = await tx.rows(self.q["hold"], 0, now, payment, False)
            if not held:
                raise LookupError("the refund's payment is gone")
            amount, status, version = held[0]
            await self._checked(
                tx, "settle_refund", "succeeded", result.provider_id, now, refund, False, "pending"
            )
            await self._audit(tx, "refund", refund, "succeeded", {"amount": REFUND_AMOUNT})
            sums = {
                row[0]: int(row[1]) for row in await tx.rows(self.q["refunded"], False, payment)
            }
            total = sums.get("succeeded", 0)
            settled = (
                "refunded" if total >= amount else "partially_refunded" if total else "succeeded"
            )
            pending = "pending" in sums
            await self._checked(tx, "follow", settled, pending, now, payment, False, version)
            if settled != status:
                moved = {"refunded": total, "status": [status, settled]}
                await self._audit(tx, "payment", payment, settled, moved)
        return refund_id

    async def subscribe(self, i: int) -> object:
        subscription_id, payment_id, driver = new_id(), new_id(), self.driver
        subscription, payment = driver.key(subscription_id), driver.key(payment_id)
        customer, price_id = self.customers[i % CUSTOMER_POOL], self.ready.price_id
        description = f"Subscription {subscription_id}, first period"
        async with driver.transaction() as tx:
            found = await tx.rows(
                self.q["subscriber"], customer, "fake", driver.key(price_id), False
            )
            if not found:
                raise LookupError("no such price, customer or card")
            plan, unit_amount, currency, interval, every, method, card, provider_customer = found[0]
            start, end = periods.period_bounds(NOW, Interval(interval), every, 0)
            now, anchor, start_at, end_at = (
                self.now,
                driver.time(NOW),
                driver.time(start),
                driver.time(end),
            )
            # Due for its expiry while incomplete, for its renewal once active (schedule).
            expires = driver.time(NOW + schedule.INCOMPLETE_EXPIRES_AFTER)
            await tx.run(
                self.q["insert_subscription"],
                *(subscription, False, customer, plan, driver.key(price_id), "incomplete", 1),
                *(currency, unit_amount, interval, every, anchor, start_at, end_at, None, None),
                *(False, None, None, None, method, None, expires, None, None, "{}", 1, now, now),
                None,
            )
            created = {"price_id": str(price_id), "status": "incomplete"}
            await self._audit(tx, "subscription", subscription, "created", created)
            await tx.run(
                self.q["insert_payment"],
                *self._pending_payment(
                    payment_id, customer, method, unit_amount, currency, subscription, description
                ),
            )
            charged = {"amount": unit_amount, "currency": currency}
            await self._audit(tx, "payment", payment, "created", charged)
        request = ChargeRequest(
            amount=unit_amount,
            currency=currency,
            provider_customer_id=provider_customer,
            provider_payment_method_id=card,
            idempotency_key=f"qzpay-payment-{payment_id}",
            description=description,
            metadata={},
        )
        result = await self.fake.charge(request)
        if result.status != "succeeded":
            raise AssertionError(f"the fake answered {result.status}")
        async with driver.transaction() as tx:
            await self._checked(
                tx, "settle_payment", "succeeded", result.provider_id, now, payment, False, 1
            )
            await self._audit(
                tx, "payment", payment, "succeeded", {"status": ["pending", "succeeded"]}
            )
            await self._checked(tx, "activate", "active", end_at, now, subscription, False, 1)
            activated = {"status": ["incomplete", "active"]}
            await self._audit(tx, "subscription", subscription, "activated", activated)
        return subscription_id

    def op(self, call: str) -> Op:
        return {"process": self.process, "refund": self.refund}.get(call, self.subscribe)


def raw_charged(call: str) -> Setup:
    """The aiosqlite baseline of a charged case (its rows prepared through qzpay, untimed)."""

    @asynccontextmanager
    async def setup(directory: Path, calls: range) -> AsyncIterator[Op]:
        path, fake = directory / "raw.db", FakeProvider()
        async with _billing_sqlite_on(path, fake) as billing:
            ready = await _prepare(billing, call, calls)
        connection = await _raw_connect(path)
        try:
            yield _RawCharged(_sqlite_driver(connection), fake, ready).op(call)
        finally:
            await connection.close()

    return setup


def raw_pg_charged(call: str) -> Callable[[PostgresDatabase, str, bool], Setup]:
    """The asyncpg baseline of a charged case: ``tx`` only (one statement per row, in the
    call's two transactions)."""

    def for_database(database: PostgresDatabase, way: str, pooled: bool) -> Setup:
        assert way == "tx"

        @asynccontextmanager
        async def setup(directory: Path, calls: range) -> AsyncIterator[Op]:
            fake = FakeProvider()
            async with database.billing(provider=fake) as billing:
                ready = await _prepare(billing, call, calls)
            async with _raw_connection(database, pooled) as acquire:
                yield _RawCharged(_postgres_driver(database, acquire), fake, ready).op(call)

        return setup

    return for_database


# -- PostgreSQL: the same rows, every way ---------------------------------------------------


def _mask(value: object) -> object:
    if isinstance(value, UUID):
        return "<id>"
    if isinstance(value, str):
        return _mask_text(value)
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
    for label, ours, theirs, tables, ways in (
        (
            "customers",
            qzpay_customers(database.billing),
            raw_pg_customers,
            ("customers",),
            ("tx", "cte"),
        ),
        (
            "subscriptions",
            qzpay_subscriptions(database.billing),
            raw_pg_subscriptions,
            ("subscriptions",),
            ("tx", "cte"),
        ),
        *(
            (
                call,
                qzpay_charged(database.billing, call),
                raw_pg_charged(call),
                CHARGED_TABLES[call],
                ("tx",),
            )
            for call in CHARGED_CALLS
        ),
    ):
        expected: dict[str, list[tuple[object, ...]]] = {}
        for way in ("qzpay", *ways):
            await database.empty()
            setup = ours if way == "qzpay" else theirs(database, way, False)
            async with setup(Path(), range(calls)) as op:
                for i in range(calls):
                    await op(i)
            for table in (*tables, "audit_logs"):
                rows = await _pg_rows(database, table)
                if way == "qzpay":
                    expected[table] = rows
                elif rows != expected[table]:
                    raise AssertionError(
                        f"{label}: {table} differs between qzpay and the {way} baseline:\n"
                        f"{_difference(expected[table], rows)}"
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
    warmup = WARMUP * case.warmup_tasks if case.warmup_tasks > 1 else WARMUP
    async with case.setup(directory, range(-warmup, n)) as op:
        # First calls compile statements and fill caches (on every pooled connection).
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
    for call in CHARGED_CALLS:
        name = CHARGED_LABELS[call]
        for concurrency, mode, how in ((1, "seq", "sequential"), (c, "c32", f"{c} tasks")):
            sqlite_and_memory += [
                Case(f"sqlite.{call}.{mode}", f"SQLite {name}, {how}", "sqlite", qzpay_charged(s, call), concurrency, (f"raw.{call}.{mode}",)),
                Case(f"raw.{call}.{mode}", f"raw aiosqlite {name}, {how}", "sqlite", raw_charged(call), concurrency, trace=False, short="raw"),
                Case(f"memory.{call}.{mode}", f"Memory {name}, {how}", "memory", qzpay_charged(m, call), concurrency),
            ]  # fmt: skip
    postgres: list[Case] = []
    for call, label, ours, theirs, ways in (
        ("customers", "customers.create", qzpay_customers(database.billing), raw_pg_customers, ("tx", "cte")),
        ("subscriptions", "subscriptions.create", qzpay_subscriptions(database.billing), raw_pg_subscriptions, ("tx", "cte")),
        *(
            (call, CHARGED_LABELS[call], qzpay_charged(database.billing, call), raw_pg_charged(call), ("tx",))
            for call in CHARGED_CALLS
        ),
    ):  # fmt: skip
        for concurrency, mode, how in ((1, "seq", "sequential"), (c, "c32", f"{c} tasks")):
            where = "1 connection" if concurrency == 1 else f"pool of {POOL_SIZE}"
            raw = [
                Case(
                    f"pgraw.{call}.{way}.{mode}",
                    f"raw asyncpg {label.removesuffix('.create')}, {way}, {how} ({where})",
                    "postgres",
                    _on_empty_tables(database, theirs(database, way, concurrency > 1)),
                    concurrency,
                    trace=False,
                    short=way,
                    warmup_tasks=concurrency,
                )
                for way in ways
            ]
            postgres.append(
                Case(
                    f"pg.{call}.{mode}",
                    f"Postgres {label}, {how}",
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
        charged = result.key.split(".")[1] in CHARGED_CALLS
        local = next((b for b in result.baselines if b.startswith("raw.")), None)
        if charged and local is not None and local in result.ratios:  # issue 14, on SQLite
            ratio = result.ratios[local]
            found.append(
                _target(
                    f"{result.label} >= {TARGET_RAW_RATIO}x raw aiosqlite",
                    ratio,
                    TARGET_RAW_RATIO,
                    f"{ratio:.2f}x",
                )
            )
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
    width = max(54, *(len(r.label) for r in results))
    header = (
        f"{'case':<{width}} {'ops/s':>8} {'us/call':>8} {'runs min-max':>14} {'vs raw':>20}"
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
                f"{r.label:<{width}} {r.ops:>8,.0f} {r.us_per_call:>8,.0f} {spread:>14}"
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
