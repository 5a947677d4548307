"""qzpay's overhead on the real provider SDKs: ``payments.process`` next to the bare SDK's
same calls, against the same local fake, in the same run.

    python benchmarks/providers.py [--provider all|stripe|mercadopago]
        [--storage memory,sqlite] [--n N] [--runs R] [--json]

A script that prints figures, never a timed test (issue 16, DESIGN §11). For each provider,
the fake of its HTTP API (``tests/providers/stripe_api.py``, ``mercadopago_api.py``) is
served by ``LoopbackAPI`` on 127.0.0.1 in a child process of its own, so its work is not on
the client's interpreter (one core serves, the other runs the client), and both sides of
each comparison talk to that one server:

- **Stripe.** qzpay: ``billing.payments.process(customer_id=..., amount=2900,
  currency="USD")`` through ``StripeProvider`` (defaults: ``max_network_retries=2``,
  ``timeout=30``, the pinned API version), one ``POST /v1/payment_intents`` with
  ``confirm=true`` per call. Baseline: a bare ``stripe.StripeClient`` with the same settings
  and its own ``HTTPXClient``, making the same ``payment_intents.create_async`` with the same
  form (amount, currency, customer, payment method, confirm, automatic payment methods
  without redirects, ``metadata[qzpay_key]``) and an idempotency key of the same shape.
- **MercadoPago.** qzpay: the same ``payments.process`` (2900 BRL) through
  ``MercadoPagoProvider`` (defaults: worker threads under a limiter of 8, ``timeout=30``),
  three requests per call: read the saved card, tokenize it, create the payment. Baseline:
  the bare ``mercadopago.SDK`` making the same three calls with the same ``RequestOptions``
  the adapter builds (token, timeout, the SDK's retries off, ``x-idempotency-key``) and
  checking each answer's status, called straight from the caller's thread (sequential) and
  from a pool of 8 threads (concurrent: the adapter's own bound), as a synchronous app would.

Each side charges its own 32 customers (made before timing, each with a chargeable card),
round robin; ``concurrent`` is 32 tasks (baseline MercadoPago: 8 threads) sharing the calls.
Before timing, one call each way is made and the requests the server received compared
(paths, form or JSON keys and values, ids and keys masked): a baseline that sends something
else is refused. qzpay's side runs on ``MemoryStorage`` (no disk: the figure is qzpay's
Python and the adapter), and on a fresh SQLite file per run with ``--storage
memory,sqlite``.

Timing pairs small blocks, not whole runs: on this VM the CPU time of the *same* code moves
±30% between neighbouring batches of hundreds of calls, more than the effect measured. Each
run times N calls per case as blocks (16 calls sequential; 64 at 32 tasks, two calls per
task), a qzpay block right beside its baseline's, in the order reversed every other block
(ABBA), so drift lasting longer than a block hits both sides of a pair alike. Overhead is
qzpay's time per call minus the SDK's, as a percentage of the SDK's (target ≤ 20%): the
median of the blocks' paired percentages, printed with their quartiles and beside the
percentage of the two sides' total times. ``--n`` is rounded up to whole blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fakes live in tests/

import mercadopago
import stripe
from mercadopago.config import RequestOptions

from qzpay import create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.memory import MemoryStorage
from qzpay.adapters.mercadopago import MercadoPagoProvider
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.adapters.stripe import DEFAULT_API_VERSION, StripeProvider
from qzpay.billing import Billing
from qzpay.contracts.provider import PaymentProvider
from tests.providers.loopback import LoopbackAPI, Request
from tests.providers.mercadopago_api import (
    ACCESS_TOKEN,
    LoopbackHttpClient,
    MercadoPagoAPI,
)
from tests.providers.stripe_api import API_KEY, StripeAPI

NOW: Final = datetime(2028, 1, 31, 9, tzinfo=UTC)
AMOUNT: Final = 2900
POOL: Final = 32
CONCURRENCY: Final = 32
MERCADOPAGO_THREADS: Final = 8  # MercadoPagoProvider's default max_concurrency
TIMEOUT: Final = 30.0
WARMUP: Final = 16
DEFAULT_N: Final = 512
DEFAULT_RUNS: Final = 8
BLOCK: Final = {"seq": 16, "c32": 64}
"""Calls per timed block, by mode (``c32`` also times the MercadoPago baseline's 8 threads):
at 32 tasks two calls per task, so every task is busy through most of the block;
sequential blocks of 16 are about as long."""
TARGET_OVERHEAD_PERCENT: Final = 20.0

Op = Callable[[int], Awaitable[object]]
"""One call to time; its argument is the call's index."""
Timer = Callable[[int], Awaitable[float]]
"""Time ``n`` calls of a prepared case; seconds."""


# -- the fake API, in a process of its own ------------------------------------------------


def _serve(kind: str, conn: Connection) -> None:
    """The child process: serve the fake until told to stop; answer test-control commands
    (``tokens``: new MercadoPago card tokens; ``last``: the newest requests; ``forget``)."""
    fake: StripeAPI | MercadoPagoAPI = (
        StripeAPI() if kind == "stripe" else MercadoPagoAPI(currency="BRL")
    )
    # The fake keeps every object it made: its collector's full passes grow with them and,
    # at 32 tasks, stall every request in flight at once (single runs 2-3x slower on
    # either side at random). Nothing of qzpay or the SDK runs here, so it is turned off.
    gc.disable()
    # TCP_NODELAY: without it each kept-alive answer waits ~40 ms for a delayed ACK.
    with LoopbackAPI(fake, nodelay=True) as api:
        conn.send(api.url)
        while True:
            command, argument = conn.recv()
            if command == "stop":
                break
            if command == "tokens" and isinstance(fake, MercadoPagoAPI):  # made in the browser
                conn.send([fake.card_token("APRO") for _ in range(argument)])
            elif command == "last":
                conn.send([_shown(r) for r in api.requests[-argument:]])
            elif command == "forget":
                api.requests.clear()
                conn.send(None)


def _shown(request: Request) -> dict[str, Any]:
    body = request.json if request.header("Content-Type") == "application/json" else request.form
    return {
        "method": request.method,
        "path": request.path,
        "body": body,
        "version": request.header("Stripe-Version"),
        "keyed": bool(request.header("Idempotency-Key") or request.header("X-Idempotency-Key")),
    }


class FakeServer:
    """A fake provider API in a child process (``kind``: ``stripe`` or ``mercadopago``)."""

    def __init__(self, kind: str) -> None:
        context = get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(kind, child), daemon=True)
        self._process.start()
        self.url: str = self._conn.recv()

    def ask(self, command: str, argument: int = 0) -> Any:
        self._conn.send((command, argument))
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send(("stop", 0))
        self._process.join(timeout=10)


# -- qzpay ----------------------------------------------------------------------------------


@asynccontextmanager
async def qzpay_case(
    provider: PaymentProvider, storage: str, directory: Path, tokens: Sequence[str], currency: str
) -> AsyncIterator[Op]:
    """``payments.process`` round robin over a pool of customers with a card each."""
    store = MemoryStorage() if storage == "memory" else SQLiteStorage(directory / "qzpay.db")
    billing: Billing = create_billing(storage=store, provider=provider, clock=FrozenClock(NOW))
    async with billing:
        customers = []
        for n, token in enumerate(tokens):
            customer = await billing.customers.create(email=f"pool{n}@example.com")
            await billing.payment_methods.attach(customer.id, token=token, set_default=True)
            customers.append(customer.id)
        process = billing.payments.process

        async def op(i: int) -> object:
            payment = await process(
                customer_id=customers[i % len(customers)], amount=AMOUNT, currency=currency
            )
            if payment.status != "succeeded":
                raise RuntimeError(f"qzpay's payment is {payment.status}")
            return payment

        yield op


# -- the bare SDKs --------------------------------------------------------------------------


def _key() -> str:
    return f"qzpay-payment-{uuid.uuid4()}"  # the shape of qzpay's own keys


@asynccontextmanager
async def stripe_sdk_case(url: str) -> AsyncIterator[Op]:
    """The same PaymentIntent create+confirm, from a bare ``StripeClient``."""
    http = stripe.HTTPXClient(timeout=TIMEOUT)
    client = stripe.StripeClient(
        API_KEY,
        stripe_version=DEFAULT_API_VERSION,
        base_addresses={"api": url},
        max_network_retries=2,
        http_client=http,
    )
    pool = []
    for n in range(POOL):
        customer = await client.v1.customers.create_async(
            {"email": f"pool{n}@example.com"}, {"idempotency_key": _key()}
        )
        card = await client.v1.payment_methods.attach_async(
            "pm_card_visa", {"customer": customer.id}
        )
        pool.append((customer.id, card.id))

    async def op(i: int) -> object:
        customer, card = pool[i % len(pool)]
        key = _key()
        intent = await client.v1.payment_intents.create_async(
            {
                "amount": AMOUNT,
                "currency": "usd",
                "customer": customer,
                "payment_method": card,
                "confirm": True,
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                "metadata": {"qzpay_key": key},
            },
            {"idempotency_key": key},
        )
        if intent.status != "succeeded":
            raise RuntimeError(f"the bare SDK's PaymentIntent is {intent.status}")
        return intent

    try:
        yield op
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


def _options(key: str | None) -> Any:
    """The ``RequestOptions`` MercadoPagoProvider builds for each call."""
    return RequestOptions(
        access_token=ACCESS_TOKEN,
        connection_timeout=TIMEOUT,
        custom_headers={} if key is None else {"x-idempotency-key": key},
        max_retries=0,
        retry_on=[],
    )


def _ok(answer: Mapping[str, Any]) -> Any:
    status = answer.get("status")
    if not isinstance(status, int) or not 200 <= status < 300:
        raise RuntimeError(f"MercadoPago answered {status}")
    return answer["response"]


class MercadoPagoSDKCase:
    """The same three calls from a bare ``mercadopago.SDK``: read the card, tokenize it,
    create the payment."""

    def __init__(self, url: str, tokens: Sequence[str]) -> None:
        self._sdk: Any = mercadopago.SDK(ACCESS_TOKEN, http_client=LoopbackHttpClient(url))
        self._pool: list[tuple[str, str]] = []
        for n, token in enumerate(tokens):
            customer = _ok(
                self._sdk.customer().create(
                    {"email": f"pool{n}@example.com"}, request_options=_options(_key())
                )
            )
            card = _ok(
                self._sdk.card().create(
                    customer["id"], {"token": token}, request_options=_options(_key())
                )
            )
            self._pool.append((str(customer["id"]), str(card["id"])))

    def charge(self, i: int) -> object:
        customer, card_id = self._pool[i % len(self._pool)]
        key = _key()
        card = _ok(self._sdk.card().get(customer, card_id, request_options=_options(None)))
        token = _ok(
            self._sdk.card_token().create(
                {"card_id": card_id, "customer_id": customer},
                request_options=_options(f"{key}:card-token"),
            )
        )
        payment = _ok(
            self._sdk.payment().create(
                {
                    "transaction_amount": AMOUNT / 100,
                    "installments": 1,
                    "payer": {"type": "customer", "id": customer},
                    "external_reference": key,
                    "metadata": {"qzpay_idempotency_key": key},
                    "token": token["id"],
                    "payment_method_id": card["payment_method"]["id"],
                },
                request_options=_options(key),
            )
        )
        if payment["status"] != "approved":
            raise RuntimeError(f"the bare SDK's payment is {payment['status']}")
        return payment


# -- timing ---------------------------------------------------------------------------------


async def sequential(op: Op, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await op(i)
    return time.perf_counter() - started


async def concurrent(op: Op, n: int, tasks: int = CONCURRENCY) -> float:
    calls = iter(range(n))

    async def worker() -> None:
        for i in calls:
            await op(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - started


def threaded(charge: Callable[[int], object], n: int) -> float:
    """The synchronous SDK from a pool of threads, as a synchronous app would run it."""
    with ThreadPoolExecutor(max_workers=MERCADOPAGO_THREADS) as pool:
        started = time.perf_counter()
        for _ in pool.map(charge, range(n)):
            pass
        return time.perf_counter() - started


_MASKED: Final = frozenset(
    {
        "customer",
        "payment_method",
        "metadata[qzpay_key]",
        "card_id",
        "customer_id",
        "id",
        "external_reference",
        "qzpay_idempotency_key",
        "token",
    }
)
"""Body fields that differ between two equivalent calls: ids and keys."""
_ID_IN_PATH: Final = re.compile(r"[0-9a-f][0-9a-f-]{7,}")


def _masked(value: Any) -> Any:
    """A request as the server received it, with ids and keys masked."""
    if isinstance(value, Mapping):
        return {
            k: "<id>" if k in _MASKED else _ID_IN_PATH.sub("<id>", v) if k == "path" else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def check_same_requests(label: str, ours: list[Any], bare: list[Any]) -> None:
    """Refuse a baseline that sends something else than qzpay does."""
    if [_masked(r) for r in ours] != [_masked(r) for r in bare]:
        raise SystemExit(
            f"{label}: the baseline does not send what qzpay sends:\n"
            f"qzpay: {json.dumps(ours, indent=1, default=str)}\n"
            f"bare:  {json.dumps(bare, indent=1, default=str)}"
        )


# -- the run --------------------------------------------------------------------------------


async def measure_provider(
    kind: str, storages: Sequence[str], n: int, runs: int, progress: Callable[[str], None]
) -> dict[str, list[float]]:
    """Every case of one provider in paired blocks: seconds per call of each block, the
    blocks of a qzpay case and of its baseline aligned by index."""
    server = FakeServer(kind)
    try:
        with tempfile.TemporaryDirectory(prefix="qzbench-providers-") as tmp:
            async with _cases(kind, server, storages, Path(tmp)) as cases:
                samples: dict[str, list[float]] = {case: [] for case in cases}
                groups = [
                    (mode, [baseline, *(f"qzpay.{storage}.{mode}" for storage in storages)])
                    for mode, baseline in _baselines(cases)
                ]
                for run in range(runs):
                    for mode, group in groups:
                        size = BLOCK[mode]
                        for block in range(-(-n // size)):
                            # ABBA: a qzpay block right beside its baseline's, the order
                            # reversed every other block.
                            for case in group if block % 2 == 0 else reversed(group):
                                server.ask("forget")
                                samples[case].append(await cases[case](size) / size)
                    progress(f"{kind}: run {run + 1}/{runs} done")
    finally:
        server.stop()
    return samples


def _baselines(cases: Mapping[str, object]) -> list[tuple[str, str]]:
    """(mode, baseline case) of each mode a provider's qzpay cases are compared in."""
    concurrent_baseline = "sdk.c32" if "sdk.c32" in cases else "sdk.threads8"
    return [("seq", "sdk.seq"), ("c32", concurrent_baseline)]


@asynccontextmanager
async def _cases(
    kind: str, server: FakeServer, storages: Sequence[str], directory: Path
) -> AsyncIterator[dict[str, Timer]]:
    """Prepare every case of ``kind`` (customers, cards), check the baseline sends what
    qzpay sends, warm each up; the timers by case name."""
    timers: dict[str, Timer] = {}
    opened: list[AbstractAsyncContextManager[Op]] = []
    try:
        if kind == "stripe":
            bare_cm = stripe_sdk_case(server.url)
            opened.append(bare_cm)
            bare = await bare_cm.__aenter__()
            bare_sent = await _sent_by(server, bare)
            timers["sdk.seq"] = lambda n: sequential(bare, n)
            timers["sdk.c32"] = lambda n: concurrent(bare, n)
        else:
            sdk = MercadoPagoSDKCase(server.url, server.ask("tokens", POOL))

            async def sdk_op(i: int) -> object:
                return sdk.charge(i)

            bare_sent = await _sent_by(server, sdk_op)

            async def sdk_threads(n: int) -> float:
                return threaded(sdk.charge, n)

            timers["sdk.seq"] = lambda n: sequential(sdk_op, n)
            timers["sdk.threads8"] = sdk_threads
        for storage in storages:
            sub = directory / storage
            sub.mkdir()
            provider: PaymentProvider
            if kind == "stripe":
                provider = StripeProvider(
                    api_key=API_KEY, webhook_secret="whsec_bench", api_base=server.url
                )
                tokens: Sequence[str] = ["pm_card_visa"] * POOL
                currency = "USD"
            else:
                provider = MercadoPagoProvider(
                    access_token=ACCESS_TOKEN,
                    webhook_secret="mp-bench-secret",
                    http_client=LoopbackHttpClient(server.url),
                )
                tokens = server.ask("tokens", POOL)
                currency = "BRL"
            ours_cm = qzpay_case(provider, storage, sub, tokens, currency)
            opened.append(ours_cm)
            ours = await ours_cm.__aenter__()
            check_same_requests(f"{kind}/{storage}", await _sent_by(server, ours), bare_sent)
            timers[f"qzpay.{storage}.seq"] = _bind(sequential, ours)
            timers[f"qzpay.{storage}.c32"] = _bind(concurrent, ours)
        for timer in timers.values():
            await timer(WARMUP)
        yield timers
    finally:
        for cm in reversed(opened):
            await cm.__aexit__(None, None, None)


async def _sent_by(server: FakeServer, op: Op) -> list[Any]:
    """Every request the server received for one call of ``op``."""
    server.ask("forget")
    await op(0)
    sent: list[Any] = server.ask("last", 1000)
    return sent


def _bind(how: Callable[[Op, int], Awaitable[float]], op: Op) -> Timer:
    return lambda n: how(op, n)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": {
            name: _version(name)
            for name in ("stripe", "httpx", "mercadopago", "requests", "anyio", "qzpay")
        },
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def overheads(
    samples: Mapping[str, Mapping[str, Sequence[float]]], storages: Sequence[str]
) -> list[dict[str, Any]]:
    """qzpay's time per call beside the SDK's of the same mode, as a percentage of it:
    the median of the blocks' own percentages (each block paired with the baseline's block
    measured beside it) with their quartiles, and the percentage of the two total times."""
    rows = []
    for provider, cases in samples.items():
        for storage in storages:
            for mode, baseline in _baselines(cases):
                ours, bare = cases[f"qzpay.{storage}.{mode}"], cases[baseline]
                paired = [(q - b) / b * 100 for q, b in zip(ours, bare, strict=True)]
                # One block (a tiny --n) has no spread to show.
                low, _, high = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
                q_mean, b_mean = statistics.fmean(ours), statistics.fmean(bare)
                rows.append(
                    {
                        "provider": provider,
                        "storage": storage,
                        "mode": mode,
                        "baseline": baseline,
                        "blocks": len(paired),
                        "qzpay_ms": q_mean * 1000,
                        "sdk_ms": b_mean * 1000,
                        "overhead_percent": statistics.median(paired),
                        "overhead_of_totals_percent": (q_mean - b_mean) / b_mean * 100,
                        "overhead_quartiles_percent": [low, high],
                    }
                )
    return rows


def _print(document: Mapping[str, Any]) -> None:
    info = document["machine"]
    print(f"machine: {info['platform']}")
    print(f"cpu:     {info['cpu']}, {info['cores']} cores")
    print(f"load average before / after: {info['load_average_before']} / {document['load_after']}")
    print(f"python:  {info['python']}; {info['packages']}")
    print(f"N={document['n']} calls per case and run, {document['runs']} runs, in paired blocks")
    print(
        f"{'provider':<12} {'storage':<8} {'mode':<5} {'baseline':<13} {'blocks':>6} "
        f"{'qzpay ms':>9} {'SDK ms':>8} {'overhead':>9} {'of totals':>10} {'quartiles':>13}"
    )
    for row in document["overheads"]:
        met = "" if row["overhead_percent"] <= TARGET_OVERHEAD_PERCENT else "  (over target)"
        low, high = row["overhead_quartiles_percent"]
        print(
            f"{row['provider']:<12} {row['storage']:<8} {row['mode']:<5} {row['baseline']:<13} "
            f"{row['blocks']:>6} {row['qzpay_ms']:>9.3f} {row['sdk_ms']:>8.3f} "
            f"{row['overhead_percent']:>8.1f}% {row['overhead_of_totals_percent']:>9.1f}% "
            f"{low:>6.0f}..{high:.0f}%{met}"
        )
    print("overhead: median of the paired blocks' percentages (quartiles beside it);")
    print("of totals: from the two sides' total times per call")
    print(f"target: overhead <= {TARGET_OVERHEAD_PERCENT:.0f}% of the SDK's time per call")
    print(f"(whole script: {document['seconds']:.0f} s)")


async def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    info = machine()
    providers = ("stripe", "mercadopago") if args.provider == "all" else (args.provider,)
    storages = [s for s in args.storage.split(",") if s]
    figures: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    for kind in providers:
        samples[kind] = await measure_provider(kind, storages, args.n, args.runs, progress)
        figures[kind] = {case: statistics.fmean(blocks) for case, blocks in samples[kind].items()}
    return {
        "machine": info,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "n": args.n,
        "runs": args.runs,
        "block": BLOCK,
        "mean_s_per_call": figures,
        "blocks_s_per_call": samples,
        "overheads": overheads(samples, storages),
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--provider", choices=("all", "stripe", "mercadopago"), default="all")
    parser.add_argument("--storage", default="memory", help="memory, sqlite, or memory,sqlite")
    parser.add_argument("--n", type=int, default=DEFAULT_N)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if set(args.storage.split(",")) - {"memory", "sqlite"}:
        parser.error("--storage takes memory and/or sqlite")
    # stripe's HTTPXClient hands httpx the form body as ``data=``; httpx prefers ``content=``.
    warnings.filterwarnings("ignore", message="Use 'content=<...>'")
    stripe.enable_telemetry = False  # as StripeProvider sets it: the same client on both sides

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    document = asyncio.run(run(args, progress))
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        _print(document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
