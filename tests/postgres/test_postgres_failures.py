"""PostgresStorage when the server drops a connection: retried where safe, honest elsewhere."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from qzpay import StorageError
from qzpay.adapters.postgres import PostgresStorage
from qzpay.contracts.storage import Scope
from qzpay.domain.customers import Customer
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio

SCOPE = Scope(livemode=False)
NOW = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)


def _customer() -> Customer:
    return Customer(
        id=new_id(), livemode=False, email="ann@example.com", created_at=NOW, updated_at=NOW
    )


async def _kill(url: str, pid: int) -> None:
    """What a failover, a restart or an idle-connection reaper does to a connection."""
    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await connection.close()


async def test_a_read_whose_connection_died_is_retried_on_a_fresh_one(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True, pool_size=2)
    await storage.open()
    try:
        ann = _customer()
        async with storage.transaction(SCOPE) as tx:
            await tx.insert(ann)
        async with storage.transaction(SCOPE, readonly=True) as tx:
            pid = await tx.connection.fetchval("SELECT pg_backend_pid()")  # type: ignore[attr-defined]
            await _kill(postgres_url, pid)
            assert await tx.get(Customer, ann.id) == ann
    finally:
        await storage.close()


async def test_a_write_whose_connection_died_is_a_retryable_error_and_the_pool_recovers(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True, pool_size=1)
    await storage.open()
    try:
        ann = _customer()

        async def write_while_the_connection_dies() -> None:
            async with storage.transaction(SCOPE) as tx:
                await tx.count(Customer)  # opens BEGIN on this connection
                pid = await tx.connection.fetchval("SELECT pg_backend_pid()")  # type: ignore[attr-defined]
                await _kill(postgres_url, pid)
                await tx.insert(ann)

        with pytest.raises(StorageError) as raised:
            await write_while_the_connection_dies()
        assert raised.value.retryable
        # Nothing of the failed transaction stands, and the next call works on a new connection.
        async with storage.transaction(SCOPE) as tx:
            assert await tx.get(Customer, ann.id) is None
            await tx.insert(ann)
        async with storage.transaction(SCOPE, readonly=True) as tx:
            assert await tx.get(Customer, ann.id) == ann
    finally:
        await storage.close()
