"""PostgresStorage's write path: inside BEGIN, honest about lost connections, and batched.

Issue 13, defects 1, 2 and 9 (the wording) and the large transactions: every write of a
transaction is inside its BEGIN ... COMMIT (but for the one-statement autocommit fast path);
a connection lost where the outcome is unknown raises ``OutcomeUnknownError``, elsewhere a
retryable ``StorageError``, and never a driver exception; many writes go as ``unnest``
statements that land the same rows as one statement per write. The connections are really
ended on the server (``pg_terminate_backend``), never mocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import attrs
import pytest

from qzpay import ConflictError, NotFoundError, StorageError
from qzpay.adapters.postgres import PostgresStorage
from qzpay.adapters.sql import postgres_batches
from qzpay.adapters.sql.postgres_batches import Part, PostgresBatches
from qzpay.adapters.sql.transaction import Write
from qzpay.adapters.sql.write_groups import group_writes
from qzpay.conformance import entities
from qzpay.contracts.storage import Scope
from qzpay.domain.customers import Customer
from qzpay.domain.enums import InvoiceStatus, PaymentStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.records import AuditLog
from qzpay.domain.registry import spec_for
from qzpay.errors import OutcomeUnknownError, QZPayError
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio

SCOPE = Scope(livemode=False)
NOW = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)


class Boom(Exception):
    pass


def _customer(i: int = 0, **changes: Any) -> Customer:
    customer = Customer(
        id=new_id(),
        livemode=False,
        email=f"user{i}@example.com",
        external_id=f"user_{i}",
        metadata={"i": str(i)},
        created_at=NOW,
        updated_at=NOW,
    )
    return attrs.evolve(customer, **changes)


@pytest.fixture
async def storage(postgres_url: str, prefix: str) -> AsyncIterator[PostgresStorage]:
    store = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True, pool_size=2)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _count(storage: PostgresStorage, kind: type[Any]) -> int:
    async with storage.transaction(SCOPE, readonly=True) as tx:
        return await tx.count(kind, include_deleted=True)


async def _sql(url: str, sql: str, *args: Any) -> Any:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


# -- defect 1: flush() never commits outside the transaction -----------------------------


async def test_a_flushed_insert_is_rolled_back_when_the_transaction_fails(
    storage: PostgresStorage,
) -> None:
    async def insert_flush_fail() -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.insert(_customer())
            await tx.flush()
            raise Boom

    with pytest.raises(Boom):
        await insert_flush_fail()
    assert await _count(storage, Customer) == 0


async def test_a_stale_update_flushed_with_an_insert_keeps_neither(
    storage: PostgresStorage,
) -> None:
    ann = _customer()
    async with storage.transaction(SCOPE) as tx:
        await tx.insert(ann)
    bob = _customer(1)

    async def insert_then_stale_update() -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.insert(bob)
            await tx.update(attrs.evolve(ann, name="Ann"), expected_version=7)
            await tx.flush()

    with pytest.raises(ConflictError):
        await insert_then_stale_update()
    async with storage.transaction(SCOPE, readonly=True) as tx:
        assert await tx.get(Customer, bob.id) is None
        assert await tx.get(Customer, ann.id) == ann


async def test_writes_flushed_in_several_steps_stand_or_fall_together(
    storage: PostgresStorage,
) -> None:
    first, second = _customer(1), _customer(2)

    async def flush_twice_then_conflict() -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.insert(first)
            await tx.flush()
            await tx.insert(second)
            await tx.flush()
            await tx.insert(_customer(3, external_id=first.external_id))  # taken

    with pytest.raises(ConflictError):
        await flush_twice_then_conflict()
    assert await _count(storage, Customer) == 0


class _Recorder:
    """The connection's statements, as sent (a spy that forwards to the real connection)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.sent: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._connection, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return method

        async def record(sql: str, *args: Any) -> Any:
            self.sent.append(sql)
            return await method(sql, *args)

        return record


async def test_a_write_only_call_is_still_one_statement_in_autocommit(
    storage: PostgresStorage,
) -> None:
    """customers.create's shape: a customer and its audit row, one round trip, no BEGIN."""
    ann = _customer()
    audit = AuditLog(
        id=new_id(), livemode=False, entity_type="customer", entity_id=ann.id,
        action="created", changes={"email": ann.email}, created_at=NOW,
    )  # fmt: skip
    async with storage.transaction(SCOPE) as tx:
        recorder = _Recorder(tx.connection)  # type: ignore[attr-defined]
        tx.connection = recorder  # type: ignore[attr-defined]
        await tx.insert(ann)
        await tx.insert(audit)
    tx.connection = recorder._connection  # type: ignore[attr-defined]
    assert len(recorder.sent) == 1
    assert recorder.sent[0].startswith("WITH w0 AS (INSERT INTO")
    assert await _count(storage, AuditLog) == 1


async def test_a_checked_update_alone_runs_inside_begin(storage: PostgresStorage) -> None:
    ann = _customer()
    async with storage.transaction(SCOPE) as tx:
        await tx.insert(ann)
    async with storage.transaction(SCOPE) as tx:
        recorder = _Recorder(tx.connection)  # type: ignore[attr-defined]
        tx.connection = recorder  # type: ignore[attr-defined]
        await tx.update(attrs.evolve(ann, name="Ann"))
    tx.connection = recorder._connection  # type: ignore[attr-defined]
    assert recorder.sent[0] == "BEGIN"
    assert recorder.sent[-1] == "COMMIT"


async def _waiting_on_a_lock(url: str) -> None:
    """Until some backend waits for a row lock (the commit under test, blocked)."""
    connection = await asyncpg.connect(url)
    try:
        for _ in range(500):
            if await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no backend ever waited for the lock")
    finally:
        await connection.close()


async def test_a_caller_cancelled_during_commit_still_ends_the_transaction_and_frees_the_slot(
    postgres_url: str, prefix: str, storage: PostgresStorage
) -> None:
    """A cancelled caller (a request timeout) does not cut its COMMIT short: the commit ends
    and the connection goes back to the pool, so no transaction is left open on it."""
    ann = _customer()
    async with storage.transaction(SCOPE) as tx:
        await tx.insert(ann)
    locker = await asyncpg.connect(postgres_url)
    await locker.execute("BEGIN")
    await locker.execute(f"SELECT 1 FROM {prefix}customers WHERE id = $1 FOR UPDATE", ann.id)
    cancelled = anyio.CancelScope()

    async def rename_until_cancelled() -> None:
        with cancelled:
            async with storage.transaction(SCOPE) as tx:
                await tx.update(attrs.evolve(ann, name="Ann"))  # its commit waits on the lock

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(rename_until_cancelled)
        await _waiting_on_a_lock(postgres_url)
        cancelled.cancel()
        await asyncio.sleep(0.05)
        await locker.execute("COMMIT")  # the lock goes; the shielded commit goes on
    await locker.close()
    assert cancelled.cancel_called
    async with storage.transaction(SCOPE) as first, storage.transaction(SCOPE) as second:
        renamed = await first.get(Customer, ann.id)  # both pool slots are free again
        assert await second.count(Customer) == 1
    assert renamed is not None
    assert renamed.name == "Ann"
    assert renamed.version == ann.version + 1


# -- defect 2: lost connections --------------------------------------------------------


async def _backend_of(tx: Any) -> int:
    return int(await tx.connection.fetchval("SELECT pg_backend_pid()"))


async def _terminate(url: str, pid: int) -> None:
    """What a failover, a restart or an idle-connection reaper does to a connection."""
    assert await _sql(url, "SELECT pg_terminate_backend($1)", pid)


async def _terminate_when_waiting(url: str, pid: int) -> None:
    """End ``pid`` once it is running a statement (asleep in a trigger, see ``_slow``)."""
    connection = await asyncpg.connect(url)
    try:
        for _ in range(500):
            state = await connection.fetchval(
                "SELECT state FROM pg_stat_activity WHERE pid = $1", pid
            )
            if state == "active":
                assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"backend {pid} never ran a statement")
    finally:
        await connection.close()


async def _slow(url: str, prefix: str, *, deferred: bool) -> None:
    """Inserts into customers sleep: at the statement, or (``deferred``) at COMMIT."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"CREATE FUNCTION {prefix}slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM pg_sleep(5); RETURN NULL; END $$"
        )
        timing = "DEFERRABLE INITIALLY DEFERRED" if deferred else ""
        await connection.execute(
            f"CREATE CONSTRAINT TRIGGER {prefix}slow AFTER INSERT ON {prefix}customers "
            f"{timing} FOR EACH ROW EXECUTE FUNCTION {prefix}slow()"
        )
    finally:
        await connection.close()


async def _no_driver_error(work: Any) -> QZPayError:
    """Run ``work``; it must fail with a QZPayError (a driver exception fails the test)."""
    try:
        await work()
    except QZPayError as error:
        return error
    raise AssertionError("the transaction did not fail")


async def test_a_connection_lost_during_commit_is_an_unknown_outcome(
    postgres_url: str, prefix: str, storage: PostgresStorage
) -> None:
    await _slow(postgres_url, prefix, deferred=True)  # the sleep happens inside COMMIT

    async def commit_while_the_connection_dies() -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.count(Customer)  # BEGIN
            await tx.insert(_customer())
            await tx.flush()
            pid = await _backend_of(tx)
            killer = asyncio.ensure_future(_terminate_when_waiting(postgres_url, pid))
        await killer

    error = await _no_driver_error(commit_while_the_connection_dies)
    assert isinstance(error, OutcomeUnknownError), error
    assert not error.retryable
    assert "at COMMIT" in error.message
    assert await _count(storage, Customer) == 0  # here it did not commit; the client can't tell


async def test_a_connection_lost_during_the_one_autocommit_statement_is_an_unknown_outcome(
    postgres_url: str, prefix: str, storage: PostgresStorage
) -> None:
    await _slow(postgres_url, prefix, deferred=False)
    ann = _customer()

    async def write_while_the_connection_dies() -> None:
        async with storage.transaction(SCOPE) as tx:
            pid = await _backend_of(tx)
            killer = asyncio.ensure_future(_terminate_when_waiting(postgres_url, pid))
            await tx.insert(ann)  # writes only: sent in autocommit at the end
        await killer

    error = await _no_driver_error(write_while_the_connection_dies)
    assert isinstance(error, OutcomeUnknownError), error
    assert "while writing" in error.message


async def test_a_connection_lost_before_commit_inside_begin_is_retryable(
    postgres_url: str, storage: PostgresStorage
) -> None:
    """The server rolls back what the dead connection had sent: nothing happened."""
    ann = _customer()

    async def lose_it_after_a_flush() -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.insert(ann)
            await tx.flush()  # BEGIN, INSERT
            await _terminate(postgres_url, await _backend_of(tx))
            await tx.count(Customer)

    error = await _no_driver_error(lose_it_after_a_flush)
    assert type(error) is StorageError, error
    assert error.retryable
    assert await _count(storage, Customer) == 0


async def test_a_connection_ended_while_idle_is_replaced_before_begin(
    postgres_url: str, storage: PostgresStorage
) -> None:
    ann = _customer()
    async with storage.transaction(SCOPE) as tx:
        await _terminate(postgres_url, await _backend_of(tx))
        for _ in range(200):  # until asyncpg has read the server's goodbye
            if tx.connection._con is None or tx.connection.is_closed():  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        await tx.insert(ann)
        assert await tx.count(Customer) == 1  # BEGIN went to a fresh connection
    async with storage.transaction(SCOPE, readonly=True) as tx:
        assert await tx.get(Customer, ann.id) == ann


async def test_a_connection_lost_at_begin_is_retryable_and_names_no_driver_error(
    postgres_url: str, storage: PostgresStorage
) -> None:
    """The socket breaks just before BEGIN (a network partition): BEGIN finds it gone."""

    async def begin_on_a_dead_connection() -> None:
        async with storage.transaction(SCOPE) as tx:
            tx.connection._con._transport.abort()  # type: ignore[attr-defined]
            await tx.count(Customer)

    error = await _no_driver_error(begin_on_a_dead_connection)
    assert type(error) is StorageError, error
    assert error.retryable
    assert "at BEGIN" in error.message
    async with storage.transaction(SCOPE) as tx:  # the pool recovers
        await tx.insert(_customer())
    assert await _count(storage, Customer) == 1


async def test_a_closed_pool_is_a_storage_error(storage: PostgresStorage) -> None:
    storage._pool.terminate()  # type: ignore[union-attr]

    async def use_it() -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.count(Customer)

    error = await _no_driver_error(use_it)
    assert type(error) is StorageError, error
    assert "cannot get a PostgreSQL connection" in error.message
    storage._pool = None  # closed already


# -- defect 9 (wording): the server's refusal, where it happened, no values ------------------


async def test_an_unexpected_refusal_names_table_column_sqlstate_and_keeps_the_message(
    postgres_url: str, prefix: str, storage: PostgresStorage
) -> None:
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(
            f"CREATE FUNCTION {prefix}picky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'email is not acceptable here' USING ERRCODE = '22023', "
            "TABLE = TG_TABLE_NAME, COLUMN = 'email', DETAIL = 'Key (email)=(' || NEW.email || ')'; "
            "END $$"
        )
        await connection.execute(
            f"CREATE TRIGGER {prefix}picky BEFORE INSERT ON {prefix}customers "
            f"FOR EACH ROW EXECUTE FUNCTION {prefix}picky()"
        )
    finally:
        await connection.close()
    with pytest.raises(StorageError) as raised:
        async with storage.transaction(SCOPE) as tx:
            await tx.insert(_customer(7))
    message = raised.value.message
    assert not raised.value.retryable
    assert "email is not acceptable here" in message
    assert f"table {prefix}customers, column email" in message
    assert "SQLSTATE 22023, data exception" in message
    assert "user7@example.com" not in message


# -- many writes: unnest, chunks, the same rows as one statement per write -----------------


def _invoice(customer: Customer, i: int) -> Invoice:
    return Invoice(
        id=new_id(), livemode=False, customer_id=customer.id, number=f"INV-{i:05d}",
        status=InvoiceStatus.OPEN, currency="USD", subtotal=100 + i, total=100 + i, amount_due=100 + i,
        period_start=NOW, period_end=NOW + timedelta(days=30), metadata={"n": str(i)},
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip


async def _rows(url: str, table: str) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        await connection.close()


def _payment(customer: Customer, i: int) -> Payment:
    return Payment(
        id=new_id(), livemode=False, customer_id=customer.id, amount=100 + i, currency="USD",
        status=PaymentStatus.PENDING, provider="fake", metadata={"n": str(i)},
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip


async def _write_each(store: PostgresStorage, writes: list[tuple[str, Any]]) -> None:
    """Every write in a transaction of its own: one single-row statement each."""
    for how, row in writes:
        async with store.transaction(SCOPE) as tx:
            await _one(tx, how, row)


async def _read(store: PostgresStorage, kind: type[Any], entity_id: Any) -> Any:
    async with store.transaction(SCOPE, readonly=True) as tx:
        found = await tx.get(kind, entity_id)
    assert found is not None
    return found


async def _write_together(store: PostgresStorage, writes: list[tuple[str, Any]]) -> None:
    async with store.transaction(SCOPE) as tx:
        for how, row in writes:
            await _one(tx, how, row)


async def _one(tx: Any, how: str, row: Any) -> None:
    if how == "insert":
        await tx.insert(row)
    elif how == "update":
        await tx.update(row, expected_version=row.version)
    else:
        await tx.soft_delete(type(row), row.id, at=NOW, expected_version=row.version + 1)


async def test_multi_row_statements_land_the_same_rows_as_one_statement_per_write(
    postgres_url: str, prefix: str
) -> None:
    """The same entities, written in one transaction and one transaction per write."""
    customers = [_customer(i, name=None if i % 3 else f"N{i}") for i in range(1200)]
    invoices = [_invoice(customers[i % 7], i) for i in range(1100)]
    payments = [_payment(customers[i % 5], i) for i in range(1100)]
    paid = [
        attrs.evolve(invoice, status=InvoiceStatus.PAID, amount_due=0, paid_at=NOW)
        for invoice in invoices
    ]
    settled = [
        attrs.evolve(payment, status=PaymentStatus.SUCCEEDED, provider_id=f"ch_{n}")
        for n, payment in enumerate(payments)
    ]
    inserts = [("insert", row) for row in (*customers, *invoices, *payments)]
    updates = [("update", row) for row in (*paid, *settled)]
    deletes = [("delete", row) for row in (*invoices[:10], *payments[:10])]
    tables = ("customers", "invoices", "payments")
    results = []
    for name in ("bulk_", "single_"):
        store = PostgresStorage(postgres_url, table_prefix=prefix + name, auto_migrate=True)
        await store.open()
        try:
            for writes in (inserts, updates, deletes):
                if name == "bulk_":
                    await _write_together(store, writes)
                else:
                    await _write_each(store, writes)
            results.append([await _rows(postgres_url, f"{prefix}{name}{t}") for t in tables])
        finally:
            await store.close()
    bulk, single = results
    assert [len(rows) for rows in bulk] == [1200, 1100, 1100]
    assert bulk == single


async def test_a_stale_row_in_a_multi_row_update_is_named_and_nothing_stays(
    storage: PostgresStorage,
) -> None:
    ann = _customer()
    payments = [_payment(ann, i) for i in range(600)]
    await _write_together(storage, [("insert", ann), *(("insert", p) for p in payments)])
    stale = payments[444]
    async with storage.transaction(SCOPE) as tx:
        await tx.update(attrs.evolve(stale, amount=1))

    async def settle(everyone: list[Payment]) -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.insert(_payment(ann, 5000))
            for payment in everyone:
                await tx.update(attrs.evolve(payment, status=PaymentStatus.SUCCEEDED))

    with pytest.raises(ConflictError) as raised:
        await settle(payments)
    assert str(stale.id) in raised.value.message
    async with storage.transaction(SCOPE, readonly=True) as tx:
        assert await tx.count(Payment) == 600  # not the inserted one either
        assert (await tx.get(Payment, payments[0].id)) == payments[0]
    missing = _payment(ann, 2000)
    with pytest.raises(NotFoundError) as gone:
        await settle([*payments[:100], missing, *payments[100:200]])
    assert str(missing.id) in gone.value.message


async def test_two_updates_that_move_a_unique_key_run_in_their_order(
    storage: PostgresStorage,
) -> None:
    """set_default's writes: unset the old default, then set the new one (a partial index)."""
    ann = _customer()
    old = PaymentMethod(
        id=new_id(), livemode=False, customer_id=ann.id, provider="fake", provider_id="pm_1",
        type="card", is_default=True, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    others = [
        attrs.evolve(old, id=new_id(), provider_id=f"pm_{n}", is_default=False) for n in (2, 3)
    ]
    await _write_together(storage, [("insert", row) for row in (ann, old, *others)])
    for new in others:
        async with storage.transaction(SCOPE) as tx:
            current = await tx.find(PaymentMethod, customer_id=ann.id, is_default=True)
            assert current is not None
            await tx.update(attrs.evolve(current, is_default=False))
            await tx.update(attrs.evolve(new, is_default=True))
        async with storage.transaction(SCOPE, readonly=True) as tx:
            defaults = await tx.list(PaymentMethod, filters={"is_default": True})
        assert [method.id for method in defaults.items] == [new.id]


class _OtherOrder(PostgresBatches):
    """Sends every multi-row part with its rows reversed (the batch still knows them in
    their order): an order PostgreSQL may choose for one UPDATE, here on purpose, so that a
    key handed from one row to another breaks."""

    replanned = 0

    def plan(self, writes: Any, *, in_order: bool = False) -> list[postgres_batches.Batch]:
        self.replanned += in_order
        return super().plan(writes, in_order=in_order)

    def _batch(self, parts: list[Part]) -> postgres_batches.Batch:
        sent = super()._batch([Part(tuple(reversed(p.writes)), p.multi) for p in parts])
        return sent._replace(parts=parts)


async def test_a_multi_row_update_that_breaks_a_key_is_sent_again_in_order(
    storage: PostgresStorage,
) -> None:
    """Two customers' defaults handed from an old card to a new one in one transaction: sent
    as one multi-row UPDATE in the other order, a one-default key breaks; the transaction
    rolls back to its savepoint, writes them in order, and commits."""
    ann, bob = _customer(1), _customer(2)

    def card(customer: Customer, name: str, *, default: bool) -> PaymentMethod:
        return PaymentMethod(
            id=new_id(), livemode=False, customer_id=customer.id, provider="fake",
            provider_id=name, type="card", is_default=default, created_at=NOW, updated_at=NOW,
        )  # fmt: skip

    # Stored (and numbered) as new-before-old for ann and old-before-new for bob, sent
    # reversed: however PostgreSQL walks the rows (the table, the ids, the arrays), it sets
    # one customer's new default before it unsets the old one.
    ann_new = card(ann, "pm_1", default=False)
    ann_old = card(ann, "pm_2", default=True)
    bob_old = card(bob, "pm_3", default=True)
    bob_new = card(bob, "pm_4", default=False)
    for row in (ann, bob, ann_new, ann_old, bob_old, bob_new):
        await _write_together(storage, [("insert", row)])
    storage._batches = reversing = _OtherOrder()
    async with storage.transaction(SCOPE) as tx:
        for old, new in ((ann_old, ann_new), (bob_old, bob_new)):
            await tx.update(attrs.evolve(old, is_default=False))
            await tx.update(attrs.evolve(new, is_default=True))
        for i in range(3, 3 + postgres_batches.SMALL):  # more than a small call's writes
            await tx.insert(_customer(i))
    assert reversing.replanned == 1  # broke a key, and was sent again in order
    async with storage.transaction(SCOPE, readonly=True) as tx:
        defaults = await tx.list(PaymentMethod, filters={"is_default": True})
        assert await tx.count(Customer) == 2 + postgres_batches.SMALL
    assert {method.id for method in defaults.items} == {ann_new.id, bob_new.id}
    # A real duplicate is still refused, and nothing of its transaction is kept.
    current = await _read(storage, PaymentMethod, ann_old.id)

    async def two_defaults() -> None:
        async with storage.transaction(SCOPE) as tx:
            await tx.update(attrs.evolve(current, is_default=True))
            for i in range(20, 20 + postgres_batches.SMALL):
                await tx.insert(_customer(i))

    with pytest.raises(ConflictError):
        await two_defaults()
    async with storage.transaction(SCOPE, readonly=True) as tx:
        defaults = await tx.list(PaymentMethod, filters={"is_default": True})
        assert await tx.count(Customer) == 2 + postgres_batches.SMALL
    assert {method.id for method in defaults.items} == {ann_new.id, bob_new.id}


async def test_the_old_default_is_unset_before_the_new_default_is_inserted(
    storage: PostgresStorage,
) -> None:
    """The partial unique index on one default per customer, in one batch of writes."""
    ann = _customer()
    old = PaymentMethod(
        id=new_id(), livemode=False, customer_id=ann.id, provider="fake", provider_id="pm_1",
        type="card", is_default=True, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    async with storage.transaction(SCOPE) as tx:
        await tx.insert(ann)
        await tx.insert(old)
    new = attrs.evolve(old, id=new_id(), provider_id="pm_2")
    other = attrs.evolve(old, id=new_id(), provider_id="pm_3", is_default=False)
    async with storage.transaction(SCOPE) as tx:
        await tx.insert(other)  # an insert into the same table before the update
        await tx.update(attrs.evolve(old, is_default=False))
        await tx.insert(new)
    async with storage.transaction(SCOPE, readonly=True) as tx:
        defaults = await tx.list(PaymentMethod, filters={"is_default": True})
    assert [method.id for method in defaults.items] == [new.id]


def _write(storage: PostgresStorage, customer: Customer, kind: type[Any] = Customer) -> Write:
    spec = spec_for(kind)
    params = storage.codec(kind).params(customer)
    return Write(
        spec, storage.statements.insert(spec), params, entity_id=customer.id, operation="insert"
    )


def test_statements_stay_bounded_however_many_writes() -> None:
    """Rows and parts per statement are capped, and the combined texts are an LRU."""
    storage = PostgresStorage("postgresql://postgres@127.0.0.1:5432/test", table_prefix="b_")
    customers = [_customer(i) for i in range(2500)]
    batches = storage.batches.plan([_write(storage, customer) for customer in customers])
    assert [sum(len(part.writes) for part in batch.parts) for batch in batches] == [1000, 1000, 500]
    columns = len(storage.statements.insert(spec_for(Customer)).names)
    assert all(len(batch.args) == columns for batch in batches)  # one array per column
    assert len({batch.sql for batch in batches}) == 1  # the text does not depend on the count
    single = Part((_write(storage, customers[0]),), None)
    small = PostgresBatches(shape_cache=3)
    for size in range(1, 40):  # 39 shapes
        small.combined([single] * size)
        assert small.shapes <= 3
    many = storage.batches.plan(
        [_write(storage, customer, kind) for customer in customers[:100] for kind in (Customer,)]
        + [_write(storage, customer) for customer in customers[100:200]]
    )
    assert all(len(batch.parts) <= postgres_batches.MAX_PARTS for batch in many)


def test_grouping_keeps_the_orders_that_matter() -> None:
    """Alike writes are grouped, but never ahead of a row they point at, nor across another
    operation on the same table, nor past a write of unknown kind."""
    storage = PostgresStorage("postgresql://postgres@127.0.0.1:5432/test", table_prefix="g_")
    ann, bob = _customer(1), _customer(2)

    def insert(row: Any) -> Write:
        return _write(storage, row, type(row))

    def update(row: Any) -> Write:
        spec = spec_for(type(row))
        params = {**storage.codec(type(row)).params(row), "k_id": row.id, "s_livemode": False}
        if spec.versioned:
            params["expected_version"] = row.version
        return Write(spec, storage.statements.update(spec), params, True, row.id, None, "update")

    def shape(writes: list[Write]) -> list[list[list[str]]]:
        return [
            [[f"{w.operation} {w.spec.name}" for w in group] for group in run]
            for run in group_writes(writes)
        ]

    first, second = _invoice(ann, 1), _invoice(bob, 2)
    assert shape([insert(ann), insert(first), insert(bob), insert(second)]) == [
        [["insert customer", "insert customer"], ["insert invoice", "insert invoice"]]
    ]
    # The second invoice points at a customer inserted after the first invoice's group.
    assert shape([insert(first), insert(bob), insert(second)]) == [
        [["insert invoice"], ["insert customer"], ["insert invoice"]]
    ]
    old = PaymentMethod(
        id=new_id(), livemode=False, customer_id=ann.id, provider="fake", provider_id="pm_1",
        type="card", is_default=True, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    other, new = (attrs.evolve(old, id=new_id(), provider_id=p) for p in ("pm_2", "pm_3"))
    assert shape([insert(other), update(old), insert(new)]) == [
        [["insert payment_method"], ["update payment_method"], ["insert payment_method"]]
    ]
    barrier = attrs.evolve(insert(_customer(3)), operation=None)
    assert shape([insert(ann), barrier, insert(bob)]) == [
        [["insert customer"], ["None customer"], ["insert customer"]]
    ]
    # A row written twice starts a new run (one statement's CTEs share one snapshot).
    assert shape([insert(ann), update(ann), insert(bob)]) == [
        [["insert customer"]],
        [["update customer"], ["insert customer"]],
    ]
    # Updates group whatever their kind's unique keys (a renewal batch's subscriptions,
    # payments and invoices); a multi-row one of a kind with unique keys is planned to be
    # sent optimistically, and one row per part when asked for the order.
    plan = entities.plan(SCOPE)
    price = entities.price(SCOPE, plan.id)
    renewed = [entities.subscription(SCOPE, c, price) for c in (ann, bob)]
    assert shape([update(row) for row in renewed]) == [
        [["update subscription", "update subscription"]]
    ]
    paid = [entities.payment(SCOPE, ann), entities.payment(SCOPE, bob)]
    assert shape([update(row) for row in paid]) == [[["update payment", "update payment"]]]
    handed = [update(old), update(attrs.evolve(other, is_default=True))]
    assert shape(handed) == [[["update payment_method", "update payment_method"]]]
    [optimistic] = storage.batches.plan(handed)
    assert optimistic.reorders_keys
    [in_order] = storage.batches.plan(handed, in_order=True)
    assert not in_order.reorders_keys
    assert [len(part.writes) for part in in_order.parts] == [1, 1]
    [subscriptions] = storage.batches.plan([update(row) for row in renewed])
    assert subscriptions.reorders_keys  # (provider, provider_id) is unique: sent after a savepoint
    prices = [entities.price(SCOPE, plan.id) for _ in range(2)]
    [unkeyed] = storage.batches.plan([update(row) for row in prices])
    assert not unkeyed.reorders_keys  # no unique key: nothing to reorder
