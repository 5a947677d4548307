"""SQLiteStorage's write path: refusals name the column and keep SQLite's message."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from qzpay import ValidationError
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.contracts.storage import Scope
from qzpay.domain.customers import Customer
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio

NOW = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_generic_integrity_refusal_names_table_and_column(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "billing.db")
    await storage.open()
    ann = Customer(id=new_id(), livemode=False, email="a@x", created_at=NOW, updated_at=NOW)

    async def insert_without_an_email() -> None:
        async with storage.transaction(Scope(livemode=False)) as tx:
            await tx.insert(attrs.evolve(ann, email=None))  # type: ignore[arg-type]

    try:
        with pytest.raises(ValidationError) as raised:
            await insert_without_an_email()
    finally:
        await storage.close()
    assert raised.value.field == "email"
    assert "customers" in raised.value.message
    assert "NOT NULL constraint failed: billing_customers.email" in raised.value.message
