"""The core and the memory/fake adapters run on trio as on asyncio; SQL adapters say they cannot."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from qzpay import ConfigurationError, ConflictError, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryStorage
from qzpay.adapters.sqlite import SQLiteStorage

pytestmark = pytest.mark.anyio

START = datetime(2028, 1, 31, 9, tzinfo=UTC)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_customer_reaches_a_first_subscription_on_memory_storage(
    anyio_backend: str,
) -> None:
    billing = create_billing(
        storage=MemoryStorage(), provider=FakeProvider(), clock=FrozenClock(START)
    )
    async with billing:
        ann = await billing.customers.create(email="ann@example.com", external_id="u_1")
        plan = await billing.plans.create(name="Pro", entitlements=["reports"])
        price = await billing.prices.create(
            plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
        )
        card = await billing.payment_methods.attach(ann.id, token="pm_card_visa")
        sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

        assert card.is_default is True
        assert sub.status == "active"
        assert sub.current_period_end == datetime(2028, 2, 29, 9, tzinfo=UTC)
        assert sub.default_payment_method_id == card.id
        assert len(await billing.audit.list(limit=100)) >= 5


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_memory_storage_keeps_unique_keys_under_concurrency(anyio_backend: str) -> None:
    conflicts: list[ConflictError] = []
    async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:

        async def create() -> None:
            try:
                await billing.customers.create(email="ann@example.com", external_id="u_1")
            except ConflictError as error:
                conflicts.append(error)

        async with anyio.create_task_group() as tasks:
            for _ in range(20):
                tasks.start_soon(create)

        assert len(conflicts) == 19
        assert len(await billing.customers.list()) == 1


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_sqlite_storage_says_it_needs_asyncio_under_trio(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "billing.db"
    billing = create_billing(storage=SQLiteStorage(path), provider=FakeProvider())

    with pytest.raises(ConfigurationError, match="asyncio"):
        async with billing:
            pass

    assert not path.exists()
