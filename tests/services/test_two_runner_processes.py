"""Two job runner processes at once over the same due subscriptions renew each exactly once.

On one SQLite file and on one PostgreSQL database: the parent makes the subscriptions
(each charged for its first period) with a fake provider whose ledger is a file, gives
each child its own copy of that ledger (and its own id namespace), moves the clock past
the period's end and starts both children at once. Every renewal charge lands in exactly
one child's ledger, and every subscription has exactly one paid renewal invoice.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from qzpay import create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.conformance.factories import isolated_prefix, postgres_url
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.invoices import Invoice

pytestmark = pytest.mark.anyio
CHILD = Path(__file__).with_name("runner_child.py")
SUBSCRIPTIONS = 120
START = datetime(2029, 1, 10, 9, tzinfo=UTC)

SQL_ADAPTERS = pytest.mark.parametrize(
    "store_factory", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@SQL_ADAPTERS
async def test_two_runner_processes_renew_each_subscription_exactly_once(
    store_factory: Callable[..., StoragePort], tmp_path: Path
) -> None:
    ledger = tmp_path / "provider.ledger"
    clock = FrozenClock(START)
    provider = FakeProvider(ledger=ledger, namespace="parent")
    async with create_billing(storage=store_factory(), provider=provider, clock=clock) as billing:
        plan = await billing.plans.create(name="Pro")
        price = await billing.prices.create(
            plan_id=plan.id, unit_amount=1500, currency="USD", interval="month"
        )
        for n in range(SUBSCRIPTIONS):
            customer = await billing.customers.create(email=f"u{n}@example.com")
            await billing.payment_methods.attach(customer.id, token="pm_card_visa")
            await billing.subscriptions.create(customer_id=customer.id, price_id=price.id)
    assert len(provider.charges) == SUBSCRIPTIONS

    kind = getattr(store_factory, "kind", "sqlite")
    where: dict[str, str] = (
        {"storage": "sqlite", "path": str(store_factory.path)}  # type: ignore[attr-defined]
        if kind == "sqlite"
        else {
            "storage": "postgres",
            "url": postgres_url(),
            "prefix": isolated_prefix("billing_", store_factory.test_id),  # type: ignore[attr-defined]
        }
    )
    now = (START + timedelta(days=32)).isoformat()
    reports: list[dict[str, int]] = []

    async def runner(name: str) -> None:
        copy = tmp_path / f"{name}.ledger"
        shutil.copy(ledger, copy)
        config = {**where, "ledger": str(copy), "namespace": name, "now": now}
        with anyio.fail_after(120):
            done = await anyio.run_process(
                [sys.executable, str(CHILD), json.dumps(config)], check=False
            )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        reports.append(json.loads(done.stdout.decode().strip().splitlines()[-1]))

    async with anyio.create_task_group() as group:
        group.start_soon(runner, "one")
        group.start_soon(runner, "two")

    renewals = [
        charge
        for name in ("one", "two")
        for charge in FakeProvider(ledger=tmp_path / f"{name}.ledger").charges[SUBSCRIPTIONS:]
    ]
    assert len(renewals) == SUBSCRIPTIONS  # every subscription renewed, none twice
    assert sum(report["charged"] for report in reports) == SUBSCRIPTIONS
    async with (
        create_billing(
            storage=store_factory(), provider=FakeProvider(), clock=FrozenClock(START)
        ) as billing,
        billing.storage.transaction(Scope(livemode=False), readonly=True) as tx,
    ):
        paid = await tx.count(Invoice, filters={"status": "paid"})
        invoices = await tx.count(Invoice)
    assert (paid, invoices) == (SUBSCRIPTIONS, SUBSCRIPTIONS)
