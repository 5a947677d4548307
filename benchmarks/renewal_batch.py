"""A renewal-shaped batch through the storage port, next to the bare driver in the same run.

    python benchmarks/renewal_batch.py [--backend all|sqlite|postgres] [--runs R]
        [--renewals N] [--postgres-url URL] [--json] [--only CASE]

A script that prints figures, never a timed test (issue 13, DESIGN §11). One timed batch
is one transaction that writes, for each of N renewals (default 500): an invoice, an
invoice line, a payment, an invoice-payment link and an audit row (inserts), and moves the
subscription's period on (an update checked against the version it was read at): 6N writes,
3,000 at the default.

- **qzpay**: ``async with storage.transaction(scope) as tx``, then ``tx.insert(...)`` for
  each row and ``tx.update(renewed, expected_version=1)`` for each subscription, from domain
  objects made before the clock starts (building them is the caller's work, not storage's).
  PostgreSQL: ``PostgresStorage(pool_size=10)``; SQLite: ``SQLiteStorage`` on a fresh file.
- **raw asyncpg**: one connection from a pool configured as qzpay's, ``async with
  connection.transaction()``, one ``INSERT INTO t (...) SELECT ... FROM unnest($1::uuid[],
  ...)`` per table (jsonb sent as text[] and cast, the rest native) and one ``UPDATE
  subscriptions ... FROM unnest(...) WHERE id = u.id AND version = u.expected`` whose row
  count is checked (N); the arrays are built from row tuples in the timed section.
- **raw aiosqlite**: ``BEGIN IMMEDIATE``, one ``executemany`` per table and one for the
  checked update (its row count checked), ``COMMIT``; values encoded in the timed section as
  qzpay stores them (32-hex UUIDs, naive-UTC text timestamps, JSON text).

Both sides start from the same state, made untimed through qzpay before every run: empty
tables (PostgreSQL: truncated; SQLite: a fresh file) holding one customer, a plan, a price
and the N subscriptions at version 1. PostgreSQL times one batch on a long-lived store (an
untimed warm-up batch has compiled and prepared its statements). SQLite needs a new store
per fresh file, so each side writes two batches there and the second is timed (checked
against version 2), so that qzpay's statements are compiled, as in a long-lived store.
Before timing, each baseline's rows are compared with qzpay's, column by column (the same
ids: both write the same prepared entities). Each figure is the median of R runs (default
7). The backends are timed one after the other (each after an ``os.sync()``, PostgreSQL
after a ``CHECKPOINT``), so SQLite's file writes do not land in PostgreSQL's commits; within
a backend qzpay and its baseline alternate run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import aiosqlite
import asyncpg
import attrs

from qzpay.adapters.postgres import PostgresStorage, asyncpg_dsn
from qzpay.adapters.sqlite import BUSY_TIMEOUT_MS, SQLiteStorage
from qzpay.conformance.factories import drop_prefix
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer
from qzpay.domain.enums import Interval, InvoiceStatus, PaymentStatus, SubscriptionStatus
from qzpay.domain.invoices import Invoice, InvoiceLine, InvoicePayment
from qzpay.domain.payments import Payment
from qzpay.domain.records import AuditLog
from qzpay.domain.subscriptions import Subscription
from qzpay.ids import new_id

NOW: Final = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)
LATER: Final = NOW + timedelta(days=31)
SCOPE: Final = Scope(livemode=False)
DEFAULT_RENEWALS: Final = 500
DEFAULT_RUNS: Final = 7
POOL_SIZE: Final = 10
STATEMENT_CACHE: Final = 1024
TARGET_RATIO: Final = 0.5
SQLITE_BATCHES: Final = 2  # per fresh file: one untimed (statements compiled), one timed
DEFAULT_POSTGRES_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
INSERTED: Final = (
    (Invoice, "invoices"),
    (InvoiceLine, "invoice_lines"),
    (Payment, "payments"),
    (InvoicePayment, "invoice_payments"),
    (AuditLog, "audit_logs"),
)
CHECKED: Final = ("subscriptions", *(table for _, table in INSERTED))
UPDATED_COLUMNS: Final = ("current_period_start", "current_period_end", "due_at", "updated_at")


# -- the work ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Book:
    """What a run starts from: one customer's subscriptions, due now, at version 1."""

    customer: Customer
    plan: Plan
    price: Price
    subscriptions: list[Subscription]


@dataclass(frozen=True)
class Renewals:
    """The batch: rows to insert per kind, and each subscription as renewed."""

    inserted: dict[type[Any], list[Any]]
    renewed: list[Subscription]


def book(renewals: int) -> Book:
    customer = Customer(
        id=new_id(), livemode=False, email="ann@example.com", created_at=NOW, updated_at=NOW
    )
    plan = Plan(id=new_id(), livemode=False, name="Pro", created_at=NOW, updated_at=NOW)
    price = Price(
        id=new_id(), livemode=False, plan_id=plan.id, unit_amount=2900, currency="USD",
        interval=Interval.MONTH, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    subscriptions = [
        Subscription(
            id=new_id(),
            livemode=False,
            customer_id=customer.id,
            plan_id=plan.id,
            price_id=price.id,
            status=SubscriptionStatus.ACTIVE,
            currency="USD",
            unit_amount=2900,
            interval=Interval.MONTH,
            billing_anchor=NOW,
            current_period_start=NOW - timedelta(days=31),
            current_period_end=NOW,
            due_at=NOW,
            metadata={"seat": str(i)},
            created_at=NOW,
            updated_at=NOW,
        )
        for i in range(renewals)
    ]
    return Book(customer, plan, price, subscriptions)


def renewals(start: Book, series: int = 0) -> Renewals:
    """Fresh ids every call; invoice numbers of their own ``series`` (they are unique)."""
    inserted: dict[type[Any], list[Any]] = {kind: [] for kind, _ in INSERTED}
    renewed = []
    for n, subscription in enumerate(start.subscriptions):
        invoice = Invoice(
            id=new_id(), livemode=False, customer_id=subscription.customer_id,
            subscription_id=subscription.id, number=f"INV-{series}-{n:06d}", status=InvoiceStatus.PAID,
            currency="USD", subtotal=2900, total=2900, amount_paid=2900, period_start=NOW,
            period_end=LATER, paid_at=NOW, created_at=NOW, updated_at=NOW,
        )  # fmt: skip
        payment = Payment(
            id=new_id(), livemode=False, customer_id=subscription.customer_id,
            subscription_id=subscription.id, invoice_id=invoice.id, amount=2900,
            currency="USD", status=PaymentStatus.SUCCEEDED, provider="fake",
            provider_id=f"ch_{n}", created_at=NOW, updated_at=NOW,
        )  # fmt: skip
        inserted[Invoice].append(invoice)
        inserted[InvoiceLine].append(
            InvoiceLine(
                id=new_id(),
                livemode=False,
                invoice_id=invoice.id,
                description="Pro, monthly",
                unit_amount=2900,
                amount=2900,
                currency="USD",
                price_id=subscription.price_id,
                period_start=NOW,
                period_end=LATER,
                created_at=NOW,
            )
        )
        inserted[Payment].append(payment)
        inserted[InvoicePayment].append(
            InvoicePayment(
                id=new_id(),
                livemode=False,
                invoice_id=invoice.id,
                payment_id=payment.id,
                amount_applied=2900,
                currency="USD",
                applied_at=NOW,
                created_at=NOW,
            )
        )
        inserted[AuditLog].append(
            AuditLog(
                id=new_id(),
                livemode=False,
                entity_type="subscription",
                entity_id=subscription.id,
                action="renewed",
                changes={"invoice_id": str(invoice.id), "period_end": LATER.isoformat()},
                created_at=NOW,
            )
        )
        renewed.append(
            attrs.evolve(
                subscription,
                current_period_start=NOW,
                current_period_end=LATER,
                due_at=LATER,
                updated_at=NOW,
            )
        )
    return Renewals(inserted, renewed)


async def seed(storage: StoragePort, start: Book) -> None:
    async with storage.transaction(SCOPE) as tx:
        for row in (start.customer, start.plan, start.price, *start.subscriptions):
            await tx.insert(row)


async def qzpay_batch(storage: StoragePort, batch: Renewals, expected: int = 1) -> None:
    """The timed qzpay side: per renewal five inserts and a checked update, one transaction."""
    invoices, lines, payments, links, audits = (batch.inserted[kind] for kind, _ in INSERTED)
    async with storage.transaction(SCOPE) as tx:
        for i, renewed in enumerate(batch.renewed):
            await tx.insert(invoices[i])
            await tx.insert(lines[i])
            await tx.insert(payments[i])
            await tx.insert(links[i])
            await tx.insert(audits[i])
            await tx.update(renewed, expected_version=expected)


def _plain(value: Any) -> Any:
    """A row value as an application holding its own data has it: no enums, dicts."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _rows(entities: Sequence[Any], columns: Sequence[str]) -> list[tuple[Any, ...]]:
    return [tuple(_plain(getattr(entity, c)) for c in columns) for entity in entities]


# -- PostgreSQL ----------------------------------------------------------------------------


async def _no_reset(connection: Any) -> None:
    """As PostgresStorage's pool: nothing to reset on release (no session state is left)."""


@dataclass
class PostgresSide:
    """One table prefix for the run (dropped at the end), its store and a raw pool."""

    url: str
    prefix: str
    storage: PostgresStorage
    pool: Any = None
    columns: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    async def open(self) -> None:
        await self.storage.open()
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(self.url), min_size=1, max_size=POOL_SIZE, reset=_no_reset,
            statement_cache_size=STATEMENT_CACHE,
        )  # fmt: skip
        async with self.pool.acquire() as connection:
            for table in CHECKED:
                rows = await connection.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = $1"
                    " ORDER BY ordinal_position",
                    self.prefix + table,
                )
                self.columns[table] = [(row[0], row[1]) for row in rows]

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.storage.close()
        await drop_prefix(self.url, self.prefix)

    async def fresh(self, start: Book) -> None:
        async with self.pool.acquire() as connection:
            tables = ", ".join(
                self.prefix + t
                for t in ("customers", "plans", "prices", *CHECKED)  # and what they reference
            )
            await connection.execute(f"TRUNCATE {tables} CASCADE")
        await seed(self.storage, start)

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        async with self.pool.acquire() as connection:
            return {
                table: [
                    tuple(row)
                    for row in await connection.fetch(
                        f"SELECT * FROM {self.prefix}{table} ORDER BY id"
                    )
                ]
                for table in CHECKED
            }


@dataclass(frozen=True)
class RawPostgres:
    """The hand-written unnest statements, and the rows as tuples, for one batch."""

    inserts: list[tuple[str, list[tuple[Any, ...]], list[int]]]
    update: str
    updated: list[tuple[Any, ...]]


def raw_postgres(side: PostgresSide, batch: Renewals) -> RawPostgres:
    inserts = []
    for kind, table in INSERTED:
        columns = side.columns[table]
        names = [name for name, _ in columns]
        types = ["text" if kind_ == "jsonb" else _pg_type(kind_) for _, kind_ in columns]
        selects = [
            f"c{i}::jsonb" if kind_ == "jsonb" else f"c{i}" for i, (_, kind_) in enumerate(columns)
        ]
        sources = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
        alias = ", ".join(f"c{i}" for i in range(len(columns)))
        sql = (
            f"INSERT INTO {side.prefix}{table} ({', '.join(names)}) SELECT {', '.join(selects)}"
            f" FROM unnest({sources}) AS u({alias})"
        )
        json_columns = [i for i, (_, kind_) in enumerate(columns) if kind_ == "jsonb"]
        inserts.append((sql, _rows(batch.inserted[kind], names), json_columns))
    table = f"{side.prefix}subscriptions"
    update = (
        f"UPDATE {table} AS s SET current_period_start = u.cps, current_period_end = u.cpe,"
        " due_at = u.due, updated_at = u.upd, version = s.version + 1"
        " FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::timestamptz[],"
        " $5::timestamptz[], $6::timestamptz[]) AS u(id, expected, cps, cpe, due, upd)"
        " WHERE s.id = u.id AND s.livemode = false AND s.deleted_at IS NULL"
        " AND s.version = u.expected"
    )
    updated = [
        (s.id, 1, s.current_period_start, s.current_period_end, s.due_at, s.updated_at)
        for s in batch.renewed
    ]
    return RawPostgres(inserts, update, updated)


def _pg_type(data_type: str) -> str:
    return {"timestamp with time zone": "timestamptz"}.get(data_type, data_type)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


async def raw_postgres_batch(side: PostgresSide, raw: RawPostgres) -> None:
    """The timed raw side: arrays built from the row tuples, one statement per table."""
    async with side.pool.acquire() as connection, connection.transaction():
        for sql, rows, json_columns in raw.inserts:
            columns = [list(column) for column in zip(*rows, strict=True)]
            for i in json_columns:
                columns[i] = [_json(value) for value in columns[i]]
            await connection.execute(sql, *columns)
        status = await connection.execute(
            raw.update, *(list(c) for c in zip(*raw.updated, strict=True))
        )
        if status != f"UPDATE {len(raw.updated)}":
            raise AssertionError(f"a renewed subscription was stale or missing: {status}")


# -- SQLite --------------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_value(value: Any) -> Any:
    """As qzpay stores a value on SQLite (through SQLAlchemy's formats)."""
    if isinstance(value, UUID):
        return value.hex
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, dict | list | tuple):
        return _json(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def _sqlite_columns(path: Path, table: str) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    finally:
        connection.close()


def _sqlite_dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    connection = sqlite3.connect(path)
    try:
        return {
            table: connection.execute(f"SELECT * FROM billing_{table} ORDER BY id").fetchall()
            for table in CHECKED
        }
    finally:
        connection.close()


async def _raw_sqlite(path: Path) -> aiosqlite.Connection:
    connection = await aiosqlite.connect(path, isolation_level=None)
    await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await connection.execute("PRAGMA journal_mode = WAL")
    await connection.execute("PRAGMA synchronous = NORMAL")
    await connection.execute("PRAGMA foreign_keys = ON")
    return connection


async def _fresh_sqlite(directory: Path, name: str, start: Book) -> Path:
    path = directory / f"{name}-{secrets.token_hex(4)}.db"
    storage = SQLiteStorage(path)
    await storage.open()
    try:
        await seed(storage, start)
    finally:
        await storage.close()
    return path


async def sqlite_qzpay_run(
    directory: Path, start: Book, batches: Sequence[Renewals]
) -> tuple[float, Path]:
    """On a fresh file: the last of ``batches`` timed (the first ones compile the store's
    statements, as a long-lived store has them)."""
    path = await _fresh_sqlite(directory, "qzpay", start)
    storage = SQLiteStorage(path)
    await storage.open()
    try:
        for series, work in enumerate(batches):
            began = time.perf_counter()
            await qzpay_batch(storage, work, expected=series + 1)
            elapsed = time.perf_counter() - began
        return elapsed, path
    finally:
        await storage.close()


async def sqlite_raw_run(
    directory: Path, start: Book, batches: Sequence[Renewals]
) -> tuple[float, Path]:
    """The same batches by hand; the last one timed."""
    path = await _fresh_sqlite(directory, "raw", start)
    columns = {table: _sqlite_columns(path, f"billing_{table}") for _, table in INSERTED}
    update = (
        "UPDATE billing_subscriptions SET current_period_start = ?, current_period_end = ?,"
        " due_at = ?, updated_at = ?, version = version + 1"
        " WHERE id = ? AND livemode = 0 AND deleted_at IS NULL AND version = ?"
    )
    connection = await _raw_sqlite(path)
    try:
        for series, batch in enumerate(batches):
            statements = []
            for kind, table in INSERTED:
                marks = ", ".join("?" for _ in columns[table])
                sql = f"INSERT INTO billing_{table} ({', '.join(columns[table])}) VALUES ({marks})"
                statements.append((sql, _rows(batch.inserted[kind], columns[table])))
            updated = [
                (s.current_period_start, s.current_period_end, s.due_at, s.updated_at, s.id)
                for s in batch.renewed
            ]
            began = time.perf_counter()
            await connection.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                await connection.executemany(
                    sql, [tuple(_sqlite_value(value) for value in row) for row in rows]
                )
            cursor = await connection.executemany(
                update,
                [(*(_sqlite_value(value) for value in row), series + 1) for row in updated],
            )
            if cursor.rowcount != len(updated):
                raise AssertionError("a renewed subscription was stale or missing")
            await connection.execute("COMMIT")
            elapsed = time.perf_counter() - began
        return elapsed, path
    finally:
        await connection.close()


# -- running -------------------------------------------------------------------------------


def _same(
    label: str, ours: Mapping[str, Any], theirs: Mapping[str, Any], renewals: int, batches: int
) -> None:
    for table in CHECKED:
        expected = renewals if table == "subscriptions" else renewals * batches
        if len(ours[table]) != expected:
            raise AssertionError(f"{label}: qzpay wrote {len(ours[table])} rows to {table}")
        if ours[table] != theirs[table]:
            pairs = zip(ours[table], theirs[table], strict=False)
            first = next((i for i, (a, b) in enumerate(pairs) if a != b), 0)
            raise AssertionError(
                f"{label}: {table} differs between qzpay and the baseline:\n"
                f"qzpay: {ours[table][first]}\nraw:   {theirs[table][first]}"
            )


Timed = Callable[[], Awaitable[float]]


async def _checkpoint(url: str) -> None:
    """A checkpoint now, so the server's timed one is unlikely to fall inside the timing."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        with contextlib.suppress(asyncpg.PostgresError):  # best effort: needs a privileged role
            await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


async def postgres_cases(
    url: str, start: Book, progress: Callable[[str], None]
) -> tuple[dict[str, Timed], Callable[[], Awaitable[None]], str]:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        server = str(await connection.fetchval("SHOW server_version"))
        with contextlib.suppress(asyncpg.PostgresError):  # best effort: needs a privileged role
            await connection.execute("CHECKPOINT")
    finally:
        await connection.close()
    prefix = f"qzrenew_{secrets.token_hex(4)}_"
    storage = PostgresStorage(url, table_prefix=prefix, auto_migrate=True, pool_size=POOL_SIZE)
    side = PostgresSide(url, prefix, storage)
    await side.open()
    # The same rows both ways, before any timing.
    batch = renewals(start)
    await side.fresh(start)
    await qzpay_batch(storage, batch)
    ours = await side.dump()
    await side.fresh(start)
    await raw_postgres_batch(side, raw_postgres(side, batch))
    _same("postgres", ours, await side.dump(), len(start.subscriptions), 1)
    progress(f"PostgreSQL {server}: qzpay and raw asyncpg write the same rows ({prefix})")

    async def qzpay_run() -> float:
        await side.fresh(start)
        work = renewals(start)
        began = time.perf_counter()
        await qzpay_batch(storage, work)
        return time.perf_counter() - began

    async def raw_run() -> float:
        await side.fresh(start)
        raw = raw_postgres(side, renewals(start))
        began = time.perf_counter()
        await raw_postgres_batch(side, raw)
        return time.perf_counter() - began

    return {"pg.renewal": qzpay_run, "pgraw.renewal": raw_run}, side.close, server


async def sqlite_cases(
    directory: Path, start: Book, progress: Callable[[str], None]
) -> dict[str, Timed]:
    # Two batches each way (the second checked against version 2), then every row compared.
    batches = [renewals(start, series) for series in range(SQLITE_BATCHES)]
    _, path = await sqlite_qzpay_run(directory, start, batches)
    _, raw_path = await sqlite_raw_run(directory, start, batches)
    _same(
        "sqlite",
        _sqlite_dump(path),
        _sqlite_dump(raw_path),
        len(start.subscriptions),
        SQLITE_BATCHES,
    )
    progress("SQLite: qzpay and raw aiosqlite write the same rows")

    async def qzpay_run() -> float:
        work = [renewals(start, series) for series in range(SQLITE_BATCHES)]
        return (await sqlite_qzpay_run(directory, start, work))[0]

    async def raw_run() -> float:
        work = [renewals(start, series) for series in range(SQLITE_BATCHES)]
        return (await sqlite_raw_run(directory, start, work))[0]

    return {"sqlite.renewal": qzpay_run, "raw.renewal": raw_run}


LABELS: Final = {
    "pg.renewal": ("Postgres renewal batch, qzpay", "pgraw.renewal"),
    "pgraw.renewal": ("raw asyncpg, unnest per table", None),
    "sqlite.renewal": ("SQLite renewal batch, qzpay", "raw.renewal"),
    "raw.renewal": ("raw aiosqlite, executemany per table", None),
}


async def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    start = book(args.renewals)
    cases: dict[str, Timed] = {}
    closers: list[Callable[[], Awaitable[None]]] = []
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="qzpay-renewal-") as tmp:
        try:
            if args.backend in ("all", "sqlite"):
                cases.update(await sqlite_cases(Path(tmp), start, progress))
            if args.backend in ("all", "postgres"):
                try:
                    pg, close, server = await postgres_cases(args.postgres_url, start, progress)
                except (OSError, asyncpg.PostgresError) as error:
                    progress(f"PostgreSQL skipped: {type(error).__name__}: {error}")
                else:
                    cases.update(pg)
                    closers.append(close)
                    info["postgresql"] = server
            if args.only:
                cases = {key: case for key, case in cases.items() if key in args.only}
            seconds: dict[str, list[float]] = {key: [] for key in cases}
            # One backend after the other, each after an os.sync() (and a CHECKPOINT): SQLite's
            # file writes must not land in PostgreSQL's commits (one file system).
            for prefix in ("sqlite.", "raw.", "pg"):
                block = {k: case for k, case in cases.items() if k.startswith(prefix)}
                if prefix == "sqlite.":
                    block.update({k: c for k, c in cases.items() if k.startswith("raw.")})
                elif prefix == "raw.":
                    continue
                if not block:
                    continue
                await asyncio.to_thread(os.sync)
                if prefix == "pg":
                    await _checkpoint(args.postgres_url)
                for case in block.values():  # warm-up: statements prepared, caches filled
                    await case()
                for index in range(args.runs):
                    for key, case in block.items():  # interleaved: drift hits both alike
                        seconds[key].append(await case())
                    progress(f"{prefix.rstrip('.')}: run {index + 1}/{args.runs} done")
        finally:
            for close in closers:
                await close()
    writes = 6 * args.renewals
    results = []
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    for key, values in seconds.items():
        label, baseline = LABELS[key]
        ratio = medians[baseline] / medians[key] if baseline in medians else None
        results.append(
            {
                "key": key,
                "label": label,
                "ms_per_batch": round(medians[key] * 1000, 1),
                "runs_ms": [round(v * 1000, 1) for v in values],
                "writes_per_s": round(writes / medians[key]),
                "baseline": baseline,
                "ratio": None if ratio is None else round(ratio, 3),
            }
        )
    return {"info": info, "results": results}


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "packages": {p: version(p) for p in ("qzpay", "aiosqlite", "asyncpg", "sqlalchemy")},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("all", "sqlite", "postgres"), default="all")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("QZPAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
    )
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--renewals", type=int, default=DEFAULT_RENEWALS)
    parser.add_argument("--only", action="append", choices=sorted(LABELS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    outcome = asyncio.run(run(args, progress))
    document = {
        "command": " ".join(["python benchmarks/renewal_batch.py", *sys.argv[1:]]),
        "machine": {**machine(), **outcome["info"]},
        "renewals": args.renewals,
        "writes_per_batch": 6 * args.renewals,
        "runs": args.runs,
        "results": outcome["results"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    info = document["machine"]
    print(f"machine: {info['platform']}, {info['cores']} cores, {info['python']}")
    if "postgresql" in info:
        print(f"server:  PostgreSQL {info['postgresql']}")
    print(
        f"{args.renewals} renewals = {6 * args.renewals:,} writes per batch, one transaction;"
        f" median of {args.runs} runs"
    )
    print(f"{'case':<40} {'ms/batch':>9} {'writes/s':>10} {'runs (ms)':>24} {'vs raw':>8}")
    for r in outcome["results"]:
        runs = f"{min(r['runs_ms']):,.0f}-{max(r['runs_ms']):,.0f}"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(
            f"{r['label']:<40} {r['ms_per_batch']:>9,.1f} {r['writes_per_s']:>10,}"
            f" {runs:>24} {ratio:>8}"
        )
    for r in outcome["results"]:
        if r["ratio"] is not None:
            verdict = "met" if r["ratio"] >= TARGET_RATIO else "MISSED"
            print(f"target: {r['label']} >= {TARGET_RATIO}x raw: {r['ratio']:.2f}x -> {verdict}")
    print(f"(whole script: {document['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
