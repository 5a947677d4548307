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


async def _fail_first_insert(url: str, prefix: str, sqlstate: str) -> None:
    """Make the server refuse the first insert into customers with ``sqlstate``, once.

    A sequence counts attempts because it is not rolled back with the failed statement.
    """
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"CREATE SEQUENCE {prefix}attempts")
        await connection.execute(
            f"CREATE FUNCTION {prefix}flaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF nextval('{prefix}attempts') = 1 THEN "
            f"RAISE EXCEPTION 'simulated' USING ERRCODE = '{sqlstate}'; END IF; "
            "RETURN NEW; END $$"
        )
        await connection.execute(
            f"CREATE TRIGGER {prefix}flaky BEFORE INSERT ON {prefix}customers "
            f"FOR EACH ROW EXECUTE FUNCTION {prefix}flaky()"
        )
    finally:
        await connection.close()


async def _attempts(url: str, prefix: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval(f"SELECT last_value FROM {prefix}attempts"))
    finally:
        await connection.close()


async def _drop_flaky(url: str, prefix: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"DROP FUNCTION IF EXISTS {prefix}flaky() CASCADE")
        await connection.execute(f"DROP SEQUENCE IF EXISTS {prefix}attempts")
    finally:
        await connection.close()


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])  # serialization failure, deadlock
async def test_a_single_statement_write_is_retried_after_a_serialization_failure_or_deadlock(
    postgres_url: str, prefix: str, sqlstate: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True)
    await storage.open()
    await _fail_first_insert(postgres_url, prefix, sqlstate)
    try:
        ann = _customer()
        async with storage.transaction(SCOPE) as tx:  # writes only: one autocommit statement
            await tx.insert(ann)
        async with storage.transaction(SCOPE, readonly=True) as tx:
            assert await tx.count(Customer) == 1
            assert await tx.get(Customer, ann.id) == ann
        assert await _attempts(postgres_url, prefix) == 2  # refused once, retried once
    finally:
        await storage.close()
        await _drop_flaky(postgres_url, prefix)


async def test_inside_a_transaction_the_same_failure_is_a_retryable_error_and_nothing_stays(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True)
    await storage.open()
    await _fail_first_insert(postgres_url, prefix, "40001")
    try:
        ann = _customer()

        async def read_then_write() -> None:
            async with storage.transaction(SCOPE) as tx:
                await tx.count(Customer)  # a read first: the writes go inside BEGIN
                await tx.insert(ann)

        with pytest.raises(StorageError) as raised:
            await read_then_write()
        assert raised.value.retryable
        await read_then_write()  # the caller's retry goes through
        async with storage.transaction(SCOPE, readonly=True) as tx:
            assert await tx.count(Customer) == 1
        assert await _attempts(postgres_url, prefix) == 2  # not retried inside BEGIN
    finally:
        await storage.close()
        await _drop_flaky(postgres_url, prefix)
