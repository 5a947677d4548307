"""Throughput of qzpay's API calls next to a raw-driver baseline timed in the same run.

    python benchmarks/api_calls.py [--n N] [--runs R] [--json] [--only CASE] [--no-memory]

A script that prints figures, never a timed test (issue 9, DESIGN §11). It times
``customers.create`` and ``subscriptions.create``, sequentially and from 32 concurrent
tasks, on a SQLite file (a fresh temp file per run, WAL) and on ``MemoryStorage``, and, in
the same run, plain aiosqlite writing the same rows with hand-written SQL:

- customers: ``BEGIN IMMEDIATE``, INSERT customer, INSERT audit row, ``COMMIT``;
- subscriptions: ``BEGIN IMMEDIATE``, read the customer row, INSERT subscription, INSERT
  audit row, ``COMMIT``;

with parameters encoded as qzpay encodes them (32-hex UUIDs, naive-UTC text timestamps,
JSON text). The concurrent baseline serializes its transactions on its one connection
with an ``asyncio.Lock``, as any single-connection aiosqlite application must. Before
timing, the script checks that both ways write the same rows (ids masked). A bare aiosqlite
round trip (``SELECT 1``) is timed too: the price of one hop to the driver's thread, in which
the other SQLite figures can be read.

Each figure is the median of R runs; qzpay's SQLite figures are printed as a ratio of the
matching baseline, since absolute figures from different runs are not comparable. Peak
memory is the ``tracemalloc`` peak of the timed section, measured in separate untimed runs
of N and 2N calls (tracing slows Python down several times).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import aiosqlite

from qzpay import create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryStorage
from qzpay.adapters.sqlite import BUSY_TIMEOUT_MS, SQLiteStorage
from qzpay.billing import Billing
from qzpay.ids import new_id

CONCURRENCY: Final = 32
CUSTOMER_POOL: Final = 32  # subscriptions.create cycles over this many customers
TRIAL_DAYS: Final = 14
NOW: Final = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)
WARMUP: Final = 32  # untimed calls before each timed section
DEFAULT_N: Final = 2000
DEFAULT_RUNS: Final = 5
TARGET_SQLITE_RATIO: Final = 0.5
TARGET_MEMORY_OPS: Final = 20_000.0

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
            for name in ("qzpay", "aiosqlite", "sqlalchemy", "anyio", "attrs", "cattrs")
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


# -- the raw-driver baseline ---------------------------------------------------------------

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


# -- timing --------------------------------------------------------------------------------


async def _drive(op: Op, n: int, concurrency: int) -> None:
    if concurrency == 1:
        for i in range(n):
            await op(i)
        return

    async def worker(first: int) -> None:
        for i in range(first, n, concurrency):
            await op(i)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))


async def measure(
    setup: Setup, root: Path, n: int, concurrency: int, *, trace: bool = False
) -> float:
    """Seconds for ``n`` calls (or, with ``trace``, the tracemalloc peak in bytes)."""
    directory = Path(tempfile.mkdtemp(dir=root))
    async with setup(directory) as op:
        for i in range(-WARMUP, 0):  # first calls compile statements and fill caches
            await op(i)
        gc.collect()
        if trace:
            tracemalloc.start()
        try:
            start = time.perf_counter()
            await _drive(op, n, concurrency)
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] if trace else 0
        finally:
            if trace:
                tracemalloc.stop()
    return float(peak) if trace else elapsed


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    setup: Setup
    concurrency: int
    baseline: str | None = None  # the key of the matching raw case
    trace: bool = True


@dataclass
class Result:
    key: str
    label: str
    concurrency: int
    n: int
    ops: float
    us_per_call: float
    runs_ops: list[float]
    baseline: str | None
    ratio: float | None = None
    peak_kib_n: float | None = None
    peak_kib_2n: float | None = None


def cases() -> list[Case]:
    s, m, c = _billing_sqlite, _billing_memory, CONCURRENCY
    return [
        Case("sqlite.customers.seq", "SQLite customers.create, sequential", qzpay_customers(s), 1, "raw.customers.seq"),
        Case("sqlite.customers.c32", f"SQLite customers.create, {c} tasks", qzpay_customers(s), c, "raw.customers.c32"),
        Case("sqlite.subscriptions.seq", "SQLite subscriptions.create, sequential", qzpay_subscriptions(s), 1, "raw.subscriptions.seq"),
        Case("sqlite.subscriptions.c32", f"SQLite subscriptions.create, {c} tasks", qzpay_subscriptions(s), c, "raw.subscriptions.c32"),
        Case("raw.customers.seq", "raw aiosqlite customers, sequential", raw_customers, 1, trace=False),
        Case("raw.customers.c32", f"raw aiosqlite customers, {c} tasks", raw_customers, c, trace=False),
        Case("raw.subscriptions.seq", "raw aiosqlite subscriptions, sequential", raw_subscriptions, 1, trace=False),
        Case("raw.subscriptions.c32", f"raw aiosqlite subscriptions, {c} tasks", raw_subscriptions, c, trace=False),
        Case("raw.hop", "raw aiosqlite round trip (SELECT 1)", raw_round_trip, 1, trace=False),
        Case("memory.customers.seq", "Memory customers.create, sequential", qzpay_customers(m), 1),
        Case("memory.customers.c32", f"Memory customers.create, {c} tasks", qzpay_customers(m), c),
        Case("memory.subscriptions.seq", "Memory subscriptions.create, sequential", qzpay_subscriptions(m), 1),
        Case("memory.subscriptions.c32", f"Memory subscriptions.create, {c} tasks", qzpay_subscriptions(m), c),
    ]  # fmt: skip


async def run(
    n: int, runs: int, selected: Sequence[Case], memory: bool, progress: Callable[[str], None]
) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="qzpay-bench-") as tmp:
        root = Path(tmp)
        await check_same_rows(root)
        progress("rows checked: qzpay and the baseline write the same rows")
        seconds: dict[str, list[float]] = {case.key: [] for case in selected}
        for index in range(runs):  # interleaved, so drift hits every case alike
            for case in selected:
                seconds[case.key].append(await measure(case.setup, root, n, case.concurrency))
            progress(f"run {index + 1}/{runs} done")
        results: dict[str, Result] = {}
        for case in selected:
            ops = [n / elapsed for elapsed in seconds[case.key]]
            median = statistics.median(ops)
            results[case.key] = Result(
                key=case.key,
                label=case.label,
                concurrency=case.concurrency,
                n=n,
                ops=round(median, 1),
                us_per_call=round(1e6 / median, 1),
                runs_ops=[round(x, 1) for x in ops],
                baseline=case.baseline,
            )
        for case in selected:
            result = results[case.key]
            if case.baseline is not None and case.baseline in results:
                result.ratio = round(result.ops / results[case.baseline].ops, 3)
            if memory and case.trace:
                peak_n = await measure(case.setup, root, n, case.concurrency, trace=True)
                peak_2n = await measure(case.setup, root, 2 * n, case.concurrency, trace=True)
                result.peak_kib_n = round(peak_n / 1024, 1)
                result.peak_kib_2n = round(peak_2n / 1024, 1)
        if memory:
            progress("peak memory traced")
        return list(results.values())


# -- report --------------------------------------------------------------------------------


def targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    by_key = {result.key: result for result in results}
    found: list[dict[str, Any]] = []
    sqlite = by_key.get("sqlite.customers.seq")
    if sqlite is not None and sqlite.ratio is not None:
        found.append(
            {
                "target": f"SQLite customers.create sequential >= {TARGET_SQLITE_RATIO}x raw",
                "value": sqlite.ratio,
                "met": sqlite.ratio >= TARGET_SQLITE_RATIO,
                "margin": f"{sqlite.ratio / TARGET_SQLITE_RATIO - 1:+.0%}",
            }
        )
    memory = by_key.get("memory.customers.seq")
    if memory is not None:
        found.append(
            {
                "target": f"Memory customers.create sequential >= {TARGET_MEMORY_OPS:,.0f}/s",
                "value": round(memory.ops),
                "met": memory.ops >= TARGET_MEMORY_OPS,
                "margin": f"{memory.ops / TARGET_MEMORY_OPS - 1:+.0%}",
            }
        )
    return found


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} KiB"


def print_text(info: dict[str, Any], n: int, runs: int, results: Sequence[Result]) -> None:
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    print(f"machine:  {info['platform']}")
    print(f"cpu:      {info['cpu']}, {info['cores']} cores")
    print(f"python:   {info['python']}, SQLite {info['sqlite']}, {info['event_loop']}")
    print(f"packages: {packages}")
    print(f"N={n:,} calls per run, median of {runs} runs (min-max of the runs shown);")
    print("peak = tracemalloc peak of the timed section, in separate untimed runs of N and 2N")
    print()
    header = (
        f"{'case':<42} {'ops/s':>8} {'us/call':>8} {'runs min-max':>14} {'vs raw':>7}"
        f" {'peak N':>10} {'peak 2N':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        spread = f"{min(r.runs_ops):,.0f}-{max(r.runs_ops):,.0f}"
        print(
            f"{r.label:<42} {r.ops:>8,.0f} {r.us_per_call:>8,.0f} {spread:>14} {ratio:>7}"
            f" {_kib(r.peak_kib_n):>10} {_kib(r.peak_kib_2n):>10}"
        )
    print()
    for target in targets(results):
        verdict = "met" if target["met"] else "MISSED"
        print(f"target: {target['target']}: {target['value']:,} -> {verdict} ({target['margin']})")


def main(argv: Sequence[str] | None = None) -> int:
    keys = [case.key for case in cases()]
    parser = argparse.ArgumentParser(
        description="Time qzpay's API calls next to a raw aiosqlite baseline (issue 9)."
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
    selected = [case for case in cases() if only is None or case.key in only]

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    started = time.perf_counter()
    results = asyncio.run(run(n, runs, selected, not args.no_memory, progress))
    elapsed = time.perf_counter() - started
    if args.json:
        document = {
            "command": " ".join(["python benchmarks/api_calls.py", *sys.argv[1:]]),
            "machine": info,
            "n": n,
            "runs": runs,
            "results": [asdict(result) for result in results],
            "targets": targets(results),
            "seconds": round(elapsed, 1),
        }
        print(json.dumps(document, indent=2))
    else:
        print_text(info, n, runs, results)
        print(f"\n(whole script: {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
