"""The job runner renewing N due subscriptions, next to a raw-driver baseline in the same run.

    python benchmarks/renewal_run.py [--backend all|sqlite|postgres] [--n N] [--runs R]
        [--postgres-url URL] [--json] [--only CASE] [--memory-check]

A script that prints figures, never a timed test (issue 15). It seeds N due subscriptions
(default 10,000) directly through the storage port, in transactions of ``SEED_CHUNK`` rows:
one plan and price, and per subscription a customer, its provider ref and default card as a
``FakeProvider(namespace="")`` knows them (made with the fake's own ``create_customer`` and
``attach_payment_method``, so it can charge them), and an active monthly subscription whose
period ended at "now" (version 1). Then one timed ``billing.jobs.run_due()`` renews them all
(a ``FrozenClock`` at "now"; the report must say N renewals, N charged).

What a renewal writes (read from the rows of a run, and checked before timing): the
subscription's claim (``claimed_by``, ``claimed_until``), one number from the ``sequences``
row, an invoice (inserted finalized with its attempt counted, then paid: version 2), its
line, a payment (pending, then succeeded: version 2), the invoice-payment link, the
subscription moved into its next period, six audit rows (invoice created, finalized, paid;
subscription renewed; payment created, succeeded); and one ``job_executions`` row per run.

The raw baseline writes the same rows with the bare driver, batch by batch (``jobs.BATCH``
subscriptions), intent first as qzpay is: transaction A claims the batch (one UPDATE ...
RETURNING of the oldest due rows), takes the batch's invoice numbers (one upsert of the
sequence row), reads the cards and provider ids (one SELECT), inserts the invoices (open,
attempt counted), lines, pending payments and four audit rows each, and moves the
subscriptions on (one checked UPDATE); then each charge is sent to the same kind of
``FakeProvider`` with the same request qzpay sends (so its cost is in both figures);
transaction B settles the payments (one checked UPDATE), inserts the links and two audit
rows each, marks the invoices paid (one checked UPDATE). PostgreSQL (asyncpg): one
``INSERT ... SELECT FROM unnest(...)`` per table, UPDATE ... FROM unnest(...); SQLite
(aiosqlite): one ``executemany`` per table and update, values encoded as qzpay stores them.

Before timing, on a small book (``CHECK_N``: three batches, the last one partial), every row
the two write is compared (the ids each side makes masked by what they belong to: "the
invoice of subscription S", so references are checked too; PostgreSQL's lease end, on the
server's clock, masked; invoice numbers and charge ids, given in the order the runner's
items finish, masked in the rows and compared as a whole, 1..N). Each side starts every timed run from the same seeded state
(SQLite: a copy of one seeded file; PostgreSQL: one seeded prefix, the written tables
truncated and the subscriptions put back between runs, then ``VACUUM ANALYZE``). The
backends are timed one after the other (after an ``os.sync()``, PostgreSQL after a
``CHECKPOINT``); within a backend qzpay and its baseline alternate run by run; each figure
is the median of R runs (default 3). Peak memory (``--memory-check``): the ``tracemalloc``
peak of ``run_due`` in separate untimed runs at N and 10 x N (tracing is slow), with a fake
that forgets each charge once answered (``ForgetfulFake``: the fake's ledger grows with N by
design, and a real provider keeps it on its servers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import aiosqlite
import asyncpg

from qzpay import create_billing, periods
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.postgres import PostgresStorage, asyncpg_dsn
from qzpay.adapters.sqlite import BUSY_TIMEOUT_MS, SQLiteStorage
from qzpay.conformance.factories import drop_prefix
from qzpay.contracts.provider import ChargeRequest
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer, CustomerProviderRef
from qzpay.domain.enums import Interval, SubscriptionStatus
from qzpay.domain.payments import PaymentMethod
from qzpay.domain.subscriptions import Subscription
from qzpay.ids import new_id
from qzpay.money import format_amount
from qzpay.services import jobs
from qzpay.settings import Settings

ANCHOR: Final = datetime(2028, 1, 1, 9, 0, tzinfo=UTC)
NOW: Final = datetime(2028, 2, 1, 9, 0, tzinfo=UTC)  # the seeded periods end now
SCOPE: Final = Scope(livemode=False)
SETTINGS: Final = Settings()
BATCH: Final = jobs.BATCH
DEFAULT_N: Final = 10_000
DEFAULT_RUNS: Final = 3
CHECK_N: Final = 2 * BATCH + 50
SEED_CHUNK: Final = 5_000
MEMORY_FACTOR: Final = 10
TRACE_FRAMES: Final = 3
FAKE_SOURCE: Final = str(Path(sys.modules[FakeProvider.__module__].__file__ or "fake.py"))
POOL_SIZE: Final = 10
STATEMENT_CACHE: Final = 1024
TARGET_RATIO: Final = 0.5
PRICE: Final = 2900
CURRENCY: Final = "USD"
TOKEN: Final = "pm_card_visa"
DEFAULT_POSTGRES_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
WRITTEN: Final = (
    "invoices",
    "invoice_lines",
    "payments",
    "invoice_payments",
    "audit_logs",
    "sequences",
    "job_executions",
)
CHECKED: Final = ("subscriptions", *WRITTEN)


# -- the book: what every run starts from --------------------------------------------------


@dataclass(frozen=True)
class Book:
    plan: Plan
    price: Price
    customers: list[Customer]
    refs: list[CustomerProviderRef]
    methods: list[PaymentMethod]
    subscriptions: list[Subscription]

    def rows(self) -> list[Any]:
        return [self.plan, self.price, *self.customers, *self.refs, *self.methods,
                *self.subscriptions]  # fmt: skip


class ForgetfulFake(FakeProvider):
    """The fake, forgetting each charge once it has answered it: its ledger (every charge
    and key, kept to answer retries and reconciliation) grows with N by design, and keeps
    strings qzpay made (keys, descriptions) alive, which ``tracemalloc`` would count as
    qzpay's. A real provider keeps its ledger on its servers. For the memory check only:
    nothing in that run retries or reconciles."""

    async def charge(self, request: ChargeRequest) -> Any:
        result = await super().charge(request)
        self._charges.pop(result.provider_id, None)
        self._keys.pop(request.idempotency_key, None)
        return result


async def fake_provider(n: int, kind: type[FakeProvider] = FakeProvider) -> FakeProvider:
    """The fake as the book's customers left it: the same ids every time (no namespace)."""
    fake = kind(namespace="")
    for i in range(n):
        customer = await fake.create_customer(
            email=f"user{i}@example.com", name=None, idempotency_key=f"seed-{i}"
        )
        await fake.attach_payment_method(provider_customer_id=customer.provider_id, token=TOKEN)
    return fake


async def book(n: int) -> Book:
    fake = await fake_provider(n)
    plan = Plan(id=new_id(), livemode=False, name="Pro", created_at=ANCHOR, updated_at=ANCHOR)
    price = Price(
        id=new_id(), livemode=False, plan_id=plan.id, unit_amount=PRICE, currency=CURRENCY,
        interval=Interval.MONTH, created_at=ANCHOR, updated_at=ANCHOR,
    )  # fmt: skip
    customers, refs, methods, subscriptions = [], [], [], []
    cards = list(fake.payment_methods.values())
    for i, (provider_id, card) in enumerate(zip(fake.customers, cards, strict=True)):
        customer = Customer(
            id=new_id(), livemode=False, email=f"user{i}@example.com", created_at=ANCHOR,
            updated_at=ANCHOR,
        )  # fmt: skip
        method = PaymentMethod(
            id=new_id(), livemode=False, customer_id=customer.id, provider="fake",
            provider_id=card.method.provider_id, type="card", brand=card.method.brand,
            last4=card.method.last4, exp_month=card.method.exp_month,
            exp_year=card.method.exp_year, is_default=True, created_at=ANCHOR, updated_at=ANCHOR,
        )  # fmt: skip
        customers.append(customer)
        refs.append(
            CustomerProviderRef(
                id=new_id(),
                livemode=False,
                customer_id=customer.id,
                provider="fake",
                provider_customer_id=provider_id,
                created_at=ANCHOR,
            )
        )
        methods.append(method)
        subscriptions.append(
            Subscription(
                id=new_id(),
                livemode=False,
                customer_id=customer.id,
                plan_id=plan.id,
                price_id=price.id,
                status=SubscriptionStatus.ACTIVE,
                currency=CURRENCY,
                unit_amount=PRICE,
                interval=Interval.MONTH,
                billing_anchor=ANCHOR,
                current_period_start=ANCHOR,
                current_period_end=NOW,
                due_at=NOW,
                default_payment_method_id=method.id,
                created_at=ANCHOR,
                updated_at=ANCHOR,
            )
        )
    return Book(plan, price, customers, refs, methods, subscriptions)


async def seed(storage: StoragePort, start: Book) -> None:
    """Through the storage port, in big transactions."""
    rows = start.rows()
    for first in range(0, len(rows), SEED_CHUNK):
        async with storage.transaction(SCOPE) as tx:
            for row in rows[first : first + SEED_CHUNK]:
                await tx.insert(row)


async def qzpay_run(storage: StoragePort, fake: FakeProvider, n: int) -> float:
    """The timed qzpay side: seconds of one ``run_due`` (the store opened and closed
    outside the timing, as a long-lived worker has it open)."""
    billing = create_billing(storage=storage, provider=fake, clock=FrozenClock(NOW))
    async with billing:
        began = time.perf_counter()
        report = await billing.jobs.run_due()
        elapsed = time.perf_counter() - began
    if report.renewals != n or report.charged != n or report.errors:
        raise AssertionError(f"run_due did not renew all {n}: {report}")
    return elapsed


# -- the raw baseline's rows (one batch), shared by both drivers ----------------------------


@dataclass
class Claimed:
    """A claimed subscription's columns the baseline needs."""

    id: UUID
    customer_id: UUID
    price_id: UUID
    unit_amount: int
    quantity: int
    currency: str
    interval: str
    interval_count: int
    current_period_end: datetime
    method_id: UUID
    version: int


@dataclass
class BatchRows:
    """Transaction A's rows, the charges to send, and what transaction B needs."""

    inserts: dict[str, list[dict[str, Any]]]
    moved: list[tuple[Any, ...]]  # (id, expected version, start, end, due, updated)
    charges: list[tuple[UUID, UUID, ChargeRequest]]  # (payment, invoice, request)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _audit(entity_type: str, entity_id: UUID, action: str, changes: Any) -> dict[str, Any]:
    return {"id": new_id(), "livemode": False, "entity_type": entity_type,
            "entity_id": entity_id, "action": action, "actor": None, "changes": changes,
            "created_at": NOW}  # fmt: skip


def batch_rows(
    claimed: Sequence[Claimed], last_number: int, cards: Mapping[UUID, Any]
) -> BatchRows:
    """What transaction A writes for ``claimed``, numbered up to ``last_number``; ``cards``:
    method id -> (provider payment method id, provider customer id)."""
    inserts: dict[str, list[dict[str, Any]]] = {
        "invoices": [], "invoice_lines": [], "payments": [], "audit_logs": [],
    }  # fmt: skip
    moved, charges = [], []
    first = last_number - len(claimed) + 1
    for offset, s in enumerate(claimed):
        start = s.current_period_end
        interval = Interval(s.interval)
        end = periods.shift(start, interval, s.interval_count)
        amount = s.unit_amount * s.quantity
        number = f"{SETTINGS.invoice_number_prefix}{first + offset:06d}"
        invoice_id, payment_id = new_id(), new_id()
        key = f"qzpay-payment-{payment_id}"
        inserts["invoices"].append(
            {"id": invoice_id, "livemode": False, "customer_id": s.customer_id,
             "subscription_id": s.id, "number": number, "status": "open",
             "currency": s.currency, "subtotal": amount, "discount": 0, "tax": 0,
             "total": amount, "amount_paid": 0, "amount_due": amount, "tax_rate": None,
             "attempt_count": 1, "finalized_at": NOW, "period_start": start, "period_end": end,
             "due_date": NOW, "paid_at": None, "voided_at": None, "metadata": {}, "version": 1,
             "created_at": NOW, "updated_at": NOW}
        )  # fmt: skip
        price = format_amount(s.unit_amount, s.currency)
        inserts["invoice_lines"].append(
            {"id": new_id(), "livemode": False, "invoice_id": invoice_id,
             "description": f"{s.quantity} × {price} per {interval}, "
             f"{start.date().isoformat()} to {end.date().isoformat()}",
             "quantity": s.quantity, "unit_amount": s.unit_amount, "amount": amount,
             "currency": s.currency, "price_id": s.price_id, "period_start": start,
             "period_end": end, "proration": False, "metadata": {}, "created_at": NOW}
        )  # fmt: skip
        inserts["payments"].append(
            {"id": payment_id, "livemode": False, "customer_id": s.customer_id,
             "subscription_id": s.id, "invoice_id": invoice_id, "payment_method_id": s.method_id,
             "amount": amount, "currency": s.currency, "status": "pending",
             "refunded_amount": 0, "provider": "fake", "provider_id": None,
             "failure_code": None, "failure_message": None, "provider_failure_code": None,
             "idempotency_key": key, "description": f"Invoice {number}", "next_action": None,
             "metadata": {}, "due_at": NOW + SETTINGS.reconcile_after, "claimed_by": None,
             "claimed_until": None, "version": 1, "created_at": NOW, "updated_at": NOW}
        )  # fmt: skip
        inserts["audit_logs"] += [
            _audit("invoice", invoice_id, "created",
                   {"lines": 1, "status": "draft", "total": amount}),
            _audit("invoice", invoice_id, "finalized",
                   {"number": number, "status": ["draft", "open"]}),
            _audit("subscription", s.id, "renewed",
                   {"invoice": number, "period": [start.isoformat(), end.isoformat()]}),
            _audit("payment", payment_id, "created", {"amount": amount, "currency": s.currency}),
        ]  # fmt: skip
        moved.append((s.id, s.version, start, end, end, NOW))
        card, customer = cards[s.method_id]
        request = ChargeRequest(
            amount=amount, currency=s.currency, provider_customer_id=customer,
            provider_payment_method_id=card, idempotency_key=key,
            description=f"Invoice {number}", metadata={},
        )  # fmt: skip
        charges.append((payment_id, invoice_id, request))
    return BatchRows(inserts, moved, charges)


def settled_rows(
    charges: Sequence[tuple[UUID, UUID, ChargeRequest]], provider_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    links, audits = [], []
    for (payment_id, invoice_id, request), _ in zip(charges, provider_ids, strict=True):
        links.append(
            {"id": new_id(), "livemode": False, "invoice_id": invoice_id,
             "payment_id": payment_id, "amount_applied": request.amount,
             "currency": request.currency, "applied_at": NOW, "created_at": NOW}
        )  # fmt: skip
        audits += [
            _audit("payment", payment_id, "succeeded", {"status": ["pending", "succeeded"]}),
            _audit("invoice", invoice_id, "paid",
                   {"amount_paid": request.amount, "payment_id": str(payment_id),
                    "status": ["open", "paid"]}),
        ]  # fmt: skip
    return {"invoice_payments": links, "audit_logs": audits}


def run_row(run_id: UUID, n: int) -> dict[str, Any]:
    return {"id": run_id, "livemode": False, "job_name": "run_due", "status": "succeeded",
            "started_at": NOW, "finished_at": NOW, "items_processed": n, "error": None,
            "metadata": {"charged": str(n), "renewals": str(n)}, "created_at": NOW,
            "updated_at": NOW}  # fmt: skip


async def charge_all(fake: FakeProvider, rows: BatchRows) -> list[str]:
    """The batch's charges, one after the other as qzpay's runner sends them."""
    ids = []
    for _, _, request in rows.charges:
        result = await fake.charge(request)
        if result.status != "succeeded":
            raise AssertionError(f"raw charge {result.status}")
        ids.append(result.provider_id)
    return ids


# -- raw asyncpg ---------------------------------------------------------------------------


def _pg_type(data_type: str) -> str:
    return {"timestamp with time zone": "timestamptz", "jsonb": "text"}.get(data_type, data_type)


@dataclass
class RawPostgres:
    """The hand-written statements on one table prefix."""

    prefix: str
    types: dict[str, dict[str, str]]
    _inserts: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)

    def insert(self, table: str, columns: tuple[str, ...]) -> str:
        sql = self._inserts.get((table, columns))
        if sql is None:
            types = self.types[table]
            sources = ", ".join(f"${i + 1}::{_pg_type(types[c])}[]" for i, c in enumerate(columns))
            selects = ", ".join(
                f"c{i}::jsonb" if types[c] == "jsonb" else f"c{i}" for i, c in enumerate(columns)
            )
            alias = ", ".join(f"c{i}" for i in range(len(columns)))
            sql = (
                f"INSERT INTO {self.prefix}{table} ({', '.join(columns)}) SELECT {selects}"
                f" FROM unnest({sources}) AS u({alias})"
            )
            self._inserts[(table, columns)] = sql
        return sql

    async def write(self, connection: Any, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = tuple(rows[0])
        types = self.types[table]
        arrays = [
            [_json(r[c]) for r in rows] if types[c] == "jsonb" else [r[c] for r in rows]
            for c in columns
        ]
        await connection.execute(self.insert(table, columns), *arrays)

    def claim(self) -> str:
        t = f"{self.prefix}subscriptions"
        return (
            f"UPDATE {t} SET claimed_by = $1, claimed_until = clock_timestamp() + $2::interval"
            f" WHERE id IN (SELECT id FROM {t} WHERE livemode = false AND deleted_at IS NULL"
            " AND due_at <= $3 AND (claimed_until IS NULL OR claimed_until <= clock_timestamp())"
            " ORDER BY due_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)"
            " RETURNING id, customer_id, price_id, unit_amount, quantity, currency, interval,"
            " interval_count, current_period_end, default_payment_method_id, version"
        )

    def numbers(self) -> str:
        t = f"{self.prefix}sequences"
        return (
            f"INSERT INTO {t} (livemode, name, last_number) VALUES (false, 'invoice', $1)"
            f" ON CONFLICT (livemode, name) DO UPDATE SET last_number = {t}.last_number + $1"
            " RETURNING last_number"
        )

    def cards(self) -> str:
        return (
            f"SELECT m.id, m.provider_id, r.provider_customer_id FROM {self.prefix}payment_methods m"
            f" JOIN {self.prefix}customer_provider_refs r ON r.customer_id = m.customer_id"
            " AND r.provider = m.provider AND r.livemode = m.livemode"
            " WHERE m.id = ANY($1::uuid[]) AND m.livemode = false AND m.deleted_at IS NULL"
        )

    def move(self) -> str:
        return (
            f"UPDATE {self.prefix}subscriptions AS s SET current_period_start = u.cps,"
            " current_period_end = u.cpe, due_at = u.due, updated_at = u.upd,"
            " version = s.version + 1 FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[],"
            " $4::timestamptz[], $5::timestamptz[], $6::timestamptz[])"
            " AS u(id, expected, cps, cpe, due, upd)"
            " WHERE s.id = u.id AND s.livemode = false AND s.version = u.expected"
        )

    def settle(self) -> str:
        return (
            f"UPDATE {self.prefix}payments AS p SET status = 'succeeded', provider_id = u.pid,"
            " due_at = NULL, updated_at = $3, version = p.version + 1"
            " FROM unnest($1::uuid[], $2::text[]) AS u(id, pid)"
            " WHERE p.id = u.id AND p.livemode = false AND p.version = 1"
            " AND p.status = 'pending'"
        )

    def paid(self) -> str:
        return (
            f"UPDATE {self.prefix}invoices AS i SET status = 'paid',"
            " amount_paid = i.amount_paid + u.amount, amount_due = 0, paid_at = $3,"
            " updated_at = $3, version = i.version + 1"
            " FROM unnest($1::uuid[], $2::bigint[]) AS u(id, amount)"
            " WHERE i.id = u.id AND i.livemode = false AND i.status = 'open'"
        )


def _checked(status: str, expected: int, what: str) -> None:
    if status.split()[-1] != str(expected):
        raise AssertionError(f"raw: {what}: {status}, expected {expected} rows")


async def raw_postgres_run(raw: RawPostgres, pool: Any, fake: FakeProvider, n: int) -> None:
    """The timed raw asyncpg side: batch by batch, intent first, then the run's row."""
    run_id = new_id()
    done = 0
    async with pool.acquire() as connection:
        while True:
            async with connection.transaction():
                rows = await connection.fetch(
                    raw.claim(), str(run_id), SETTINGS.job_lease, NOW, BATCH
                )
                if not rows:
                    break
                claimed = sorted(
                    (Claimed(*row.values()) for row in rows),
                    key=lambda c: c.id,  # all due at NOW: (due_at, id) order is id order
                )
                last = await connection.fetchval(raw.numbers(), len(claimed))
                cards = {
                    row[0]: (row[1], row[2])
                    for row in await connection.fetch(raw.cards(), [c.method_id for c in claimed])
                }
                work = batch_rows(claimed, last, cards)
                for table, inserted in work.inserts.items():
                    await raw.write(connection, table, inserted)
                status = await connection.execute(
                    raw.move(), *(list(c) for c in zip(*work.moved, strict=True))
                )
                _checked(status, len(claimed), "subscriptions moved")
            provider_ids = await charge_all(fake, work)
            async with connection.transaction():
                payments = [p for p, _, _ in work.charges]
                status = await connection.execute(raw.settle(), payments, provider_ids, NOW)
                _checked(status, len(payments), "payments settled")
                for table, inserted in settled_rows(work.charges, provider_ids).items():
                    await raw.write(connection, table, inserted)
                status = await connection.execute(
                    raw.paid(),
                    [i for _, i, _ in work.charges],
                    [r.amount for _, _, r in work.charges],
                    NOW,
                )
                _checked(status, len(payments), "invoices paid")
            done += len(claimed)
        async with connection.transaction():
            await raw.write(connection, "job_executions", [run_row(run_id, done)])
    if done != n:
        raise AssertionError(f"raw asyncpg renewed {done} of {n}")


@dataclass
class PostgresSide:
    """One table prefix (dropped at the end), seeded once through qzpay's storage."""

    url: str
    start: Book
    prefix: str = field(default_factory=lambda: f"qzrun_{secrets.token_hex(4)}_")
    pool: Any = None
    raw: RawPostgres | None = None

    def storage(self) -> PostgresStorage:
        return PostgresStorage(
            self.url, table_prefix=self.prefix, auto_migrate=True, pool_size=POOL_SIZE
        )

    async def open(self) -> None:
        storage = self.storage()
        await storage.open()
        try:
            await seed(storage, self.start)
        finally:
            await storage.close()
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(self.url), min_size=1, max_size=POOL_SIZE, reset=_no_reset,
            statement_cache_size=STATEMENT_CACHE,
        )  # fmt: skip
        types: dict[str, dict[str, str]] = {}
        async with self.pool.acquire() as connection:
            for row in await connection.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND left(table_name, length($1)) = $1",
                self.prefix,
            ):
                types.setdefault(row[0][len(self.prefix) :], {})[row[1]] = row[2]
        self.raw = RawPostgres(self.prefix, types)

    async def restore(self) -> None:
        """Back to the seeded state: the written tables emptied, the subscriptions as seeded."""
        async with self.pool.acquire() as connection:
            await connection.execute(
                f"TRUNCATE {', '.join(self.prefix + t for t in WRITTEN)} CASCADE"
            )
            await connection.execute(
                f"UPDATE {self.prefix}subscriptions SET current_period_start = $1,"
                " current_period_end = $2, due_at = $2, claimed_by = NULL, claimed_until = NULL,"
                " version = 1, updated_at = $1",
                ANCHOR,
                NOW,
            )
            await connection.execute(f"VACUUM ANALYZE {self.prefix}subscriptions")

    async def dump(self) -> dict[str, list[dict[str, Any]]]:
        async with self.pool.acquire() as connection:
            return {
                table: [
                    dict(row)
                    for row in await connection.fetch(f"SELECT * FROM {self.prefix}{table}")
                ]
                for table in CHECKED
            }

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await drop_prefix(self.url, self.prefix)

    async def qzpay(self) -> float:
        await self.restore()
        fake = await fake_provider(len(self.start.subscriptions))
        return await qzpay_run(self.storage(), fake, len(self.start.subscriptions))

    async def baseline(self) -> float:
        await self.restore()
        fake = await fake_provider(len(self.start.subscriptions))
        assert self.raw is not None
        began = time.perf_counter()
        await raw_postgres_run(self.raw, self.pool, fake, len(self.start.subscriptions))
        return time.perf_counter() - began


async def _no_reset(connection: Any) -> None:
    """As PostgresStorage's pool: nothing to reset on release."""


# -- raw aiosqlite -------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_value(value: Any) -> Any:
    """As qzpay stores a value on SQLite."""
    if isinstance(value, UUID):
        return value.hex
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, dict | list):
        return _json(value)
    if isinstance(value, bool):
        return int(value)
    return value


_SQLITE_CLAIM: Final = (
    "UPDATE billing_subscriptions SET claimed_by = ?, claimed_until = ?"
    " WHERE id IN (SELECT id FROM billing_subscriptions WHERE livemode = 0"
    " AND deleted_at IS NULL AND due_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?)"
    " ORDER BY due_at, id LIMIT ?)"
    " RETURNING id, customer_id, price_id, unit_amount, quantity, currency, interval,"
    " interval_count, current_period_end, default_payment_method_id, version"
)
_SQLITE_NUMBERS: Final = (
    "INSERT INTO billing_sequences (livemode, name, last_number) VALUES (0, 'invoice', ?)"
    " ON CONFLICT (livemode, name) DO UPDATE SET last_number = last_number + excluded.last_number"
    " RETURNING last_number"
)
_SQLITE_MOVE: Final = (
    "UPDATE billing_subscriptions SET current_period_start = ?, current_period_end = ?,"
    " due_at = ?, updated_at = ?, version = version + 1"
    " WHERE id = ? AND livemode = 0 AND version = ?"
)
_SQLITE_SETTLE: Final = (
    "UPDATE billing_payments SET status = 'succeeded', provider_id = ?, due_at = NULL,"
    " updated_at = ?, version = version + 1"
    " WHERE id = ? AND livemode = 0 AND version = 1 AND status = 'pending'"
)
_SQLITE_PAID: Final = (
    "UPDATE billing_invoices SET status = 'paid', amount_paid = amount_paid + ?, amount_due = 0,"
    " paid_at = ?, updated_at = ?, version = version + 1"
    " WHERE id = ? AND livemode = 0 AND status = 'open'"
)


def _sqlite_cards(count: int) -> str:
    marks = ", ".join("?" for _ in range(count))
    return (
        "SELECT m.id, m.provider_id, r.provider_customer_id FROM billing_payment_methods m"
        " JOIN billing_customer_provider_refs r ON r.customer_id = m.customer_id"
        " AND r.provider = m.provider AND r.livemode = m.livemode"
        f" WHERE m.id IN ({marks}) AND m.livemode = 0 AND m.deleted_at IS NULL"
    )


async def _sqlite_write(
    connection: aiosqlite.Connection, table: str, rows: Sequence[dict[str, Any]]
) -> None:
    if not rows:
        return
    columns = tuple(rows[0])
    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO billing_{table} ({', '.join(columns)}) VALUES ({marks})"
    await connection.executemany(sql, [tuple(_sqlite_value(r[c]) for c in columns) for r in rows])


async def _sqlite_rowcount(
    connection: aiosqlite.Connection, sql: str, rows: list[tuple[Any, ...]], what: str
) -> None:
    cursor = await connection.executemany(sql, rows)
    if cursor.rowcount != len(rows):
        raise AssertionError(f"raw: {what}: {cursor.rowcount} of {len(rows)} rows")


async def raw_sqlite_run(path: Path, fake: FakeProvider, n: int) -> float:
    """Seconds of the raw aiosqlite side (the connection opened outside the timing, with
    the file settings qzpay uses)."""
    connection = await aiosqlite.connect(path, isolation_level=None)
    try:
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await connection.execute("PRAGMA journal_mode = WAL")
        await connection.execute("PRAGMA synchronous = NORMAL")
        await connection.execute("PRAGMA foreign_keys = ON")
        began = time.perf_counter()
        run_id = new_id()
        now, until = _ts(NOW), _ts(NOW + SETTINGS.job_lease)
        done = 0
        while True:
            await connection.execute("BEGIN IMMEDIATE")
            cursor = await connection.execute(_SQLITE_CLAIM, (str(run_id), until, now, now, BATCH))
            rows = list(await cursor.fetchall())
            if not rows:
                await connection.execute("COMMIT")
                break
            claimed = sorted(
                (
                    Claimed(
                        UUID(r[0]),
                        UUID(r[1]),
                        UUID(r[2]),
                        r[3],
                        r[4],
                        r[5],
                        r[6],
                        r[7],
                        datetime.fromisoformat(r[8]).replace(tzinfo=UTC),
                        UUID(r[9]),
                        r[10],
                    )
                    for r in rows
                ),
                key=lambda c: c.id.hex,
            )
            cursor = await connection.execute(_SQLITE_NUMBERS, (len(claimed),))
            number = await cursor.fetchone()
            assert number is not None
            cursor = await connection.execute(
                _sqlite_cards(len(claimed)), [c.method_id.hex for c in claimed]
            )
            cards = {UUID(r[0]): (r[1], r[2]) for r in await cursor.fetchall()}
            work = batch_rows(claimed, int(number[0]), cards)
            for table, inserted in work.inserts.items():
                await _sqlite_write(connection, table, inserted)
            moved = [(_ts(a), _ts(b), _ts(c), _ts(d), i.hex, v) for i, v, a, b, c, d in work.moved]
            await _sqlite_rowcount(connection, _SQLITE_MOVE, moved, "subscriptions moved")
            await connection.execute("COMMIT")
            provider_ids = await charge_all(fake, work)
            await connection.execute("BEGIN IMMEDIATE")
            await _sqlite_rowcount(
                connection,
                _SQLITE_SETTLE,
                [
                    (pid, now, p.hex)
                    for (p, _, _), pid in zip(work.charges, provider_ids, strict=True)
                ],
                "payments settled",
            )
            for table, inserted in settled_rows(work.charges, provider_ids).items():
                await _sqlite_write(connection, table, inserted)
            await _sqlite_rowcount(
                connection,
                _SQLITE_PAID,
                [(r.amount, now, now, i.hex) for _, i, r in work.charges],
                "invoices paid",
            )
            await connection.execute("COMMIT")
            done += len(claimed)
        await connection.execute("BEGIN IMMEDIATE")
        await _sqlite_write(connection, "job_executions", [run_row(run_id, done)])
        await connection.execute("COMMIT")
        elapsed = time.perf_counter() - began
    finally:
        await connection.close()
    if done != n:
        raise AssertionError(f"raw aiosqlite renewed {done} of {n}")
    return elapsed


@dataclass
class SQLiteSide:
    """One seeded file (through qzpay's storage), copied for every run."""

    directory: Path
    start: Book
    template: Path = field(init=False)

    async def open(self) -> None:
        self.template = self.directory / f"seed-{secrets.token_hex(4)}.db"
        storage = SQLiteStorage(self.template)
        await storage.open()
        try:
            await seed(storage, self.start)
        finally:
            await storage.close()
        connection = sqlite3.connect(self.template)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()

    def copy(self, name: str) -> Path:
        path = self.directory / f"{name}-{secrets.token_hex(4)}.db"
        shutil.copyfile(self.template, path)
        return path

    async def qzpay(self, keep: list[Path] | None = None) -> float:
        path = self.copy("qzpay")
        fake = await fake_provider(len(self.start.subscriptions))
        elapsed = await qzpay_run(SQLiteStorage(path), fake, len(self.start.subscriptions))
        _done_with(path, keep)
        return elapsed

    async def baseline(self, keep: list[Path] | None = None) -> float:
        path = self.copy("raw")
        fake = await fake_provider(len(self.start.subscriptions))
        elapsed = await raw_sqlite_run(path, fake, len(self.start.subscriptions))
        _done_with(path, keep)
        return elapsed


def _done_with(path: Path, keep: list[Path] | None) -> None:
    if keep is not None:
        keep.append(path)
        return
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def sqlite_dump(path: Path) -> dict[str, list[dict[str, Any]]]:
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return {
            table: [dict(row) for row in connection.execute(f"SELECT * FROM billing_{table}")]
            for table in CHECKED
        }
    finally:
        connection.close()


# -- the rows compared, ids masked ----------------------------------------------------------

_UUID: Final = re.compile(
    r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.IGNORECASE
)


def _key(value: Any) -> str | None:
    if isinstance(value, UUID):
        return value.hex
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value.replace("-", "").lower()
    return None


def masked(dump: Mapping[str, list[dict[str, Any]]], postgres: bool) -> dict[str, list[str]]:
    """Each side's own ids named by what they belong to; rows as sorted text."""
    labels: dict[str, str] = {}

    def name(value: Any, label: str) -> None:
        key = _key(value)
        if key is not None:
            labels[key] = label

    for row in dump["invoices"]:
        name(row["id"], f"<invoice of {_key(row['subscription_id'])}>")
    for row in dump["payments"]:
        name(row["id"], f"<payment of {_key(row['subscription_id'])}>")
    for row in dump["invoice_lines"]:
        name(row["id"], f"<line of {labels.get(_key(row['invoice_id']) or '')}>")
    for row in dump["invoice_payments"]:
        name(row["id"], f"<link of {labels.get(_key(row['invoice_id']) or '')}>")
    for row in dump["job_executions"]:
        name(row["id"], "<run>")
    for row in dump["audit_logs"]:
        name(row["id"], "<audit row>")

    def mask(column: str, value: Any) -> Any:
        if postgres and column == "claimed_until" and value is not None:
            return "<lease on the server's clock>"
        key = _key(value)
        if key is not None:
            return labels.get(key, f"<kept {key}>")
        if isinstance(value, str):
            return _UUID.sub(lambda m: labels.get(_key(m.group()) or "", m.group()), value)
        return value

    rows = {
        table: sorted(
            _ORDERED.sub(_unordered, repr(sorted((c, mask(c, v)) for c, v in row.items())))
            for row in dump[table]
        )
        for table in dump
    }
    # Which subscription gets which number (and charge id) follows the order in which the
    # runner's items, worked side by side, finish: masked above, compared here as a whole.
    rows["numbers"] = sorted(str(row["number"]) for row in dump["invoices"])
    rows["charge ids"] = sorted(str(row["provider_id"]) for row in dump["payments"])
    return rows


_ORDERED: Final = re.compile(r"INV-\d+|ch_fake_\d+")


def _unordered(match: re.Match[str]) -> str:
    return "INV-<n>" if match.group().startswith("INV-") else "ch_fake_<n>"


def same_rows(label: str, ours: Mapping[str, list[str]], theirs: Mapping[str, list[str]],
              n: int) -> None:  # fmt: skip
    expected = {"subscriptions": n, "invoices": n, "invoice_lines": n, "payments": n,
                "invoice_payments": n, "audit_logs": 6 * n, "sequences": 1,
                "job_executions": 1}  # fmt: skip
    for table in (*CHECKED, "numbers", "charge ids"):
        if len(ours[table]) != expected.get(table, n):
            raise AssertionError(f"{label}: qzpay wrote {len(ours[table])} rows to {table}")
        if ours[table] != theirs[table]:
            diff = [(a, b) for a, b in zip(ours[table], theirs[table], strict=False) if a != b]
            first = diff[0] if diff else ("-", "-")
            raise AssertionError(
                f"{label}: {table} differs between qzpay and the baseline:\n"
                f"qzpay: {first[0]}\nraw:   {first[1]}"
            )


async def check_sqlite(directory: Path, progress: Callable[[str], None]) -> None:
    side = SQLiteSide(directory, await book(CHECK_N))
    await side.open()
    kept: list[Path] = []
    await side.qzpay(kept)
    await side.baseline(kept)
    ours, theirs = (masked(sqlite_dump(path), postgres=False) for path in kept)
    same_rows("sqlite", ours, theirs, CHECK_N)
    progress(f"SQLite: qzpay and raw aiosqlite write the same rows ({CHECK_N} renewals)")


async def check_postgres(url: str, progress: Callable[[str], None]) -> None:
    side = PostgresSide(url, await book(CHECK_N))
    try:
        await side.open()
        await side.qzpay()
        ours = masked(await side.dump(), postgres=True)
        await side.baseline()
        theirs = masked(await side.dump(), postgres=True)
    finally:
        await side.close()
    same_rows("postgres", ours, theirs, CHECK_N)
    progress(f"PostgreSQL: qzpay and raw asyncpg write the same rows ({CHECK_N} renewals)")


# -- memory ---------------------------------------------------------------------------------


async def traced(backend: str, n: int, directory: Path, url: str) -> tuple[int, int]:
    """The tracemalloc peak of one ``run_due`` over ``n`` due subscriptions (untimed), with
    a ``ForgetfulFake``, and what the fake still holds at the end (every allocation made
    inside a ``FakeProvider`` call and still alive: its bookkeeping, near nothing)."""
    start = await book(n)
    if backend == "sqlite":
        sqlite_side = SQLiteSide(directory, start)
        await sqlite_side.open()
        path = sqlite_side.copy("traced")
        storage: StoragePort = SQLiteStorage(path)
        closing: Callable[[], Awaitable[None]] | None = None
    else:
        pg_side = PostgresSide(url, start)
        await pg_side.open()
        storage = pg_side.storage()
        closing = pg_side.close
    try:
        fake = await fake_provider(n, ForgetfulFake)
        billing = create_billing(storage=storage, provider=fake, clock=FrozenClock(NOW))
        async with billing:
            tracemalloc.start(TRACE_FRAMES)
            try:
                report = await billing.jobs.run_due()
                peak = tracemalloc.get_traced_memory()[1]
                inside_fake = tracemalloc.Filter(True, FAKE_SOURCE, all_frames=True)
                ledger = tracemalloc.take_snapshot().filter_traces([inside_fake])
            finally:
                tracemalloc.stop()
        if report.renewals != n:
            raise AssertionError(f"traced run renewed {report.renewals} of {n}")
        return peak, sum(stat.size for stat in ledger.statistics("filename"))
    finally:
        if closing is not None:
            await closing()


# -- running --------------------------------------------------------------------------------

Timed = Callable[[], Awaitable[float]]
LABELS: Final = {
    "sqlite.qzpay": ("SQLite run_due, qzpay", "sqlite.raw"),
    "sqlite.raw": ("raw aiosqlite, executemany per batch", None),
    "pg.qzpay": ("Postgres run_due, qzpay", "pg.raw"),
    "pg.raw": ("raw asyncpg, unnest per batch", None),
}


async def _server(url: str) -> str:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        with contextlib.suppress(asyncpg.PostgresError):  # best effort: a privileged role
            await connection.execute("CHECKPOINT")
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


async def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    n: int = args.n
    info: dict[str, Any] = {}
    seconds: dict[str, list[float]] = {}
    memory: dict[str, dict[str, dict[str, float]]] = {}
    wanted = [k for k in LABELS if args.only is None or k in args.only]
    backends = [b for b in ("sqlite", "pg") if args.backend in ("all", b.replace("pg", "postgres"))]
    with tempfile.TemporaryDirectory(prefix="qzpay-renewal-run-") as tmp:
        directory = Path(tmp)
        for backend in backends:
            block = [k for k in wanted if k.startswith(backend + ".")]
            if not block:
                continue
            closers: list[Callable[[], Awaitable[None]]] = []
            try:
                if backend == "sqlite":
                    await check_sqlite(directory, progress)
                    sqlite_side = SQLiteSide(directory, await book(n))
                    await sqlite_side.open()
                    cases: dict[str, Timed] = {
                        "sqlite.qzpay": sqlite_side.qzpay,
                        "sqlite.raw": sqlite_side.baseline,
                    }
                else:
                    try:
                        info["postgresql"] = await _server(args.postgres_url)
                    except (OSError, asyncpg.PostgresError) as error:
                        progress(f"PostgreSQL skipped: {type(error).__name__}: {error}")
                        info["postgres_skipped"] = f"{type(error).__name__}: {error}"
                        continue
                    await check_postgres(args.postgres_url, progress)
                    pg_side = PostgresSide(args.postgres_url, await book(n))
                    closers.append(pg_side.close)
                    await pg_side.open()
                    cases = {"pg.qzpay": pg_side.qzpay, "pg.raw": pg_side.baseline}
                progress(f"{backend}: {n:,} due subscriptions seeded")
                await asyncio.to_thread(os.sync)
                if backend == "pg":
                    await _server(args.postgres_url)  # a checkpoint before timing
                for index in range(args.runs):
                    for key in block:
                        seconds.setdefault(key, []).append(await cases[key]())
                    progress(f"{backend}: run {index + 1}/{args.runs} done")
            finally:
                for close in closers:
                    await close()
            if args.memory_check and f"{backend}.qzpay" in block:
                name = "sqlite" if backend == "sqlite" else "postgres"
                peaks = {}
                for size in (n, MEMORY_FACTOR * n):
                    peak, ledger = await traced(name, size, directory, args.postgres_url)
                    peaks[str(size)] = {
                        "peak": round(peak / 2**20, 1),
                        "held_by_the_fake": round(ledger / 2**20, 1),
                    }
                    progress(
                        f"{backend}: traced peak at N={size:,}: {peak / 2**20:.1f} MiB, of which"
                        f" the fake holds {ledger / 2**20:.1f} MiB at the end"
                    )
                memory[f"{backend}.qzpay"] = peaks
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    results = []
    for key, values in seconds.items():
        label, baseline = LABELS[key]
        ratio = medians[baseline] / medians[key] if baseline in medians else None
        results.append(
            {
                "key": key,
                "label": label,
                "renewals_per_s": round(n / medians[key], 1),
                "seconds": round(medians[key], 2),
                "runs_s": [round(v, 2) for v in values],
                "baseline": baseline,
                "ratio": None if ratio is None else round(ratio, 3),
                "peak_mib": memory.get(key),
            }
        )
    return {"info": info, "results": results}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "packages": {p: version(p) for p in ("qzpay", "aiosqlite", "asyncpg", "sqlalchemy")},
    }


def _print(document: Mapping[str, Any]) -> None:
    info = document["machine"]
    print(f"machine: {info['platform']}")
    print(f"cpu:     {info['cpu']}, {info['cores']} cores, load average {info['load_average']}")
    print(f"python:  {info['python']}, SQLite {info['sqlite']}")
    if "postgresql" in info:
        print(f"server:  PostgreSQL {info['postgresql']}")
    if "postgres_skipped" in info:
        print(f"PostgreSQL skipped: {info['postgres_skipped']}")
    n, runs = document["n"], document["runs"]
    print(f"N={n:,} due subscriptions, one run_due (batches of {BATCH}); median of {runs} runs")
    print(f"{'case':<40} {'renewals/s':>11} {'s/run':>8} {'runs (s)':>18} {'vs raw':>8}")
    for r in document["results"]:
        spread = f"{min(r['runs_s']):,.1f}-{max(r['runs_s']):,.1f}"
        ratio = f"{r['ratio']:.3f}x" if r["ratio"] is not None else "-"
        print(
            f"{r['label']:<40} {r['renewals_per_s']:>11,.1f} {r['seconds']:>8,.1f}"
            f" {spread:>18} {ratio:>8}"
        )
    for r in document["results"]:
        if r["ratio"] is not None:
            verdict = "met" if r["ratio"] >= TARGET_RATIO else "MISSED"
            short = (
                ""
                if verdict == "met"
                else f", {TARGET_RATIO / r['ratio']:.2f}x short of the target"
            )
            print(
                f"target: {r['label']} >= {TARGET_RATIO}x raw: {r['ratio']:.3f}x"
                f" -> {verdict}{short}"
            )
        if r["peak_mib"]:
            peaks = "; ".join(
                f"N={int(k):,}: {v['peak']:,.1f} MiB ({v['held_by_the_fake']:,.1f} MiB of it"
                " held by the fake at the end)"
                for k, v in r["peak_mib"].items()
            )
            print(f"peak memory (tracemalloc, untimed runs), {r['label']}: {peaks}")
    if not any(r["peak_mib"] for r in document["results"]):
        print("peak memory: not measured (--memory-check; tracing is slow)")
    print(f"(whole script: {document['seconds']:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("all", "sqlite", "postgres"), default="all")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("QZPAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="due subscriptions")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed runs per figure")
    parser.add_argument("--only", action="append", choices=sorted(LABELS), metavar="CASE",
                        help=f"time only this case (repeatable): {', '.join(LABELS)}")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--memory-check", action="store_true", help="trace peak memory at N and 10 x N"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.runs < 1:
        parser.error("--n and --runs must be at least 1")

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    outcome = asyncio.run(run(args, progress))
    document = {
        "command": " ".join(["python benchmarks/renewal_run.py", *sys.argv[1:]]),
        "machine": {**machine(), **outcome["info"]},
        "n": args.n,
        "batch": BATCH,
        "runs": args.runs,
        "results": outcome["results"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        _print(document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
