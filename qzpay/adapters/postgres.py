"""PostgresStorage: the production adapter, on asyncpg (asyncio only).

How it stays fast and safe (DESIGN §11, docs/decisions/0008-postgres-unit-of-work.md):

- Statements come from the shared SQLAlchemy schema, compiled once per shape for the
  asyncpg dialect, and run straight on asyncpg (which prepares and caches them).
- A transaction buffers its writes. A call that only writes (``customers.create``:
  customer + audit row) sends them as ONE statement of data-modifying CTEs in autocommit:
  one round trip, atomic by itself. A call that reads first opens ``BEGIN`` at its first read
  and sends its buffered writes as one statement before ``COMMIT``.
- Atomic operations use the database: a counter row upserted and locked for invoice numbers,
  ``SELECT ... FOR UPDATE`` before redeeming a promo code or adding a refund,
  ``FOR UPDATE SKIP LOCKED`` to claim due subscriptions, ``ON CONFLICT`` for idempotency keys.
- A unique key taken by a concurrent writer raises the same ``ConflictError`` as a
  sequential duplicate. A deadlock or serialization failure of a single-statement call is
  retried (a bounded number of times); elsewhere, and on a lost connection during a write, it
  surfaces as a retryable ``StorageError``; reads retry on a fresh connection.
- The schema is created or upgraded only by ``qzpay migrate`` or ``auto_migrate=True``;
  otherwise opening a missing or older schema raises ``ConfigurationError`` saying so.

>>> import asyncio, os
>>> from qzpay.adapters.postgres import PostgresStorage
>>> storage = PostgresStorage("postgresql://postgres@127.0.0.1:5432/test", table_prefix="doc_")
>>> storage.url
'postgresql+asyncpg://postgres@127.0.0.1:5432/test'
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import anyio
import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from qzpay.adapters import storage_rules as rules
from qzpay.adapters.serialized import add_refund, redeem_promo_code
from qzpay.adapters.sql import migrations
from qzpay.adapters.sql.event_loop import require_asyncio
from qzpay.adapters.sql.rows import postgres_converter
from qzpay.adapters.sql.schema import Schema, constraint_owners
from qzpay.adapters.sql.statements import Compiled
from qzpay.adapters.sql.store import SqlStoreBase
from qzpay.adapters.sql.transaction import SqlTransaction, Write
from qzpay.contracts.storage import Scope, StorageTransaction
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.registry import spec_for
from qzpay.errors import (
    ConfigurationError,
    ConflictError,
    InvalidStateError,
    QZPayError,
    StorageError,
    ValidationError,
)

E = TypeVar("E")

TRANSIENT_RETRIES = 3
_PLACEHOLDER = re.compile(r"\$(\d+)")
_CONNECTION_ERRORS = (
    # The connection is gone or unusable: the server ended it (class 08, an administrator's
    # or a failover's shutdown), the socket broke, or asyncpg lost track of its state.
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)
_TRANSIENT = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


def asyncpg_dsn(dsn: str) -> str:
    """What asyncpg accepts, from what a ``DATABASE_URL`` holds."""
    for scheme in ("postgresql+asyncpg://", "postgres://", "postgresql://"):
        if dsn.startswith(scheme):
            return "postgresql://" + dsn[len(scheme) :]
    raise ValidationError(
        "must be a postgresql://, postgres:// or postgresql+asyncpg:// URL",
        field="dsn",
        rule="postgres_url",
    )


async def _no_reset(connection: asyncpg.Connection) -> None:
    """qzpay leaves no session state behind, so a returned connection needs no reset query."""


class PostgresStorage(SqlStoreBase):
    """Billing records in PostgreSQL; see the module docstring for how."""

    def __init__(
        self,
        dsn: str,
        *,
        table_prefix: str = "billing_",
        multi_tenant: bool = False,
        auto_migrate: bool = False,
        pool_size: int = 10,
    ) -> None:
        self._dsn = asyncpg_dsn(dsn)
        super().__init__(
            table_prefix,
            multi_tenant,
            asyncpg_dialect.dialect(),  # type: ignore[no-untyped-call]
            postgres_converter(),
        )
        self._owners = constraint_owners(self._schema)
        self._auto_migrate = auto_migrate
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._batches: dict[tuple[Compiled, ...], str] = {}

    @property
    def url(self) -> str:
        """A SQLAlchemy URL for the same database (for a read-only view of the rows)."""
        return "postgresql+asyncpg://" + self._dsn[len("postgresql://") :]

    async def _connect(self) -> None:
        """Connect (a pool of ``pool_size``) and check, or with ``auto_migrate`` bring, the schema.

        The check comes before any write: a schema of the other tenancy, or a newer one, is
        refused with what is there and what was asked, and the pool is closed again.
        """
        require_asyncio("PostgresStorage")
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                reset=_no_reset,
                statement_cache_size=1024,
            )
        except (OSError, asyncpg.PostgresError) as error:
            raise StorageError(f"cannot connect to PostgreSQL: {error}") from None
        try:
            async with self._pool.acquire() as connection:
                found = await _found(connection, self._schema)
                migrations.check(found, self._schema, _where(self._dsn))
                if found.version == migrations.LATEST_VERSION:
                    return
                if not self._auto_migrate:
                    state = "missing" if found.version is None else f"at version {found.version}"
                    raise ConfigurationError(
                        f"the qzpay schema under prefix {self.table_prefix!r} is {state}, and "
                        f"this qzpay needs version {migrations.LATEST_VERSION}: run "
                        f"`qzpay migrate --url DATABASE_URL --prefix {self.table_prefix}"
                        f"{' --multi-tenant' if self.multi_tenant else ''}` "
                        "or open with auto_migrate=True"
                    )
                await self._migrate(connection)
        except BaseException:
            await self._disconnect()
            raise

    async def _disconnect(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ConfigurationError("PostgresStorage is not open: use `async with billing:`")
        return self._pool

    async def schema_version(self) -> int | None:
        """The applied schema version under this prefix, or ``None`` when there is none."""
        pool = self._require_pool()
        table = self._schema.migrations.name
        async with pool.acquire() as connection:
            exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            if not exists:
                return None
            version: int | None = await connection.fetchval(f"SELECT max(version) FROM {table}")
            return version

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema; returns the versions applied (idempotent).

        Every version for a new schema, none when it is up to date. A closed store migrates
        on a connection of its own (what ``qzpay migrate`` does). Concurrent migrators of one
        prefix queue on an advisory lock, so each step runs once.
        """
        require_asyncio("PostgresStorage")
        async with self._opening:
            if self._pool is not None:
                async with self._pool.acquire() as connection:
                    return await self._migrate(connection)
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as error:
                raise StorageError(f"cannot connect to PostgreSQL: {error}") from None
            try:
                return await self._migrate(connection)
            finally:
                await connection.close()

    async def _migrate(self, connection: asyncpg.Connection) -> list[int]:
        """Check what is there, then create or upgrade it, in one transaction."""
        table = self._schema.migrations.name
        try:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", table)
                found = await _found(connection, self._schema)
                migrations.check(found, self._schema, _where(self._dsn))
                steps, statements = migrations.plan(found, self._schema, self._statements.dialect)
                for statement in statements:
                    await connection.execute(statement)
                for step in steps:
                    await connection.execute(
                        f"INSERT INTO {table} (version, name, applied_at) VALUES ($1, $2, now())",
                        step.version,
                        step.name,
                    )
        except asyncpg.PostgresError as error:
            raise StorageError(
                f"migrating the qzpay schema under prefix {self.table_prefix!r} failed: "
                f"{type(error).__name__}: {error}",
                retryable=False,
            ) from None
        return [step.version for step in steps]

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        require_asyncio("PostgresStorage")
        rules.check_scope(scope, self.multi_tenant)
        pool = self._require_pool()
        connection = await pool.acquire()
        transaction = _PostgresTransaction(self, connection, scope, readonly=readonly)
        try:
            try:
                yield transaction
                with anyio.CancelScope(shield=True):
                    await transaction.commit()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await transaction.rollback()
                raise
        finally:
            with anyio.CancelScope(shield=True):
                await pool.release(transaction.connection)

    def batch_sql(self, statements: tuple[Compiled, ...]) -> str:
        """Several writes as one statement of data-modifying CTEs, built once per shape.

        Each CTE returns one row per row it wrote, and the final SELECT counts them, so an
        UPDATE that hit no row (stale version, missing row) is seen without another trip.
        """
        found = self._batches.get(statements)
        if found is not None:
            return found
        parts, counts, offset = [], [], 0
        for index, statement in enumerate(statements):
            sql = _renumber(statement.sql, offset)
            parts.append(f"w{index} AS ({sql} RETURNING 1)")
            counts.append(f"(SELECT count(*) FROM w{index})")
            offset += len(statement.names)
        found = f"WITH {', '.join(parts)} SELECT {', '.join(counts)}"
        self._batches[statements] = found
        return found

    def explain(self, error: asyncpg.PostgresError) -> QZPayError:
        """The database's refusal as qzpay's named error.

        Every constraint the schema creates is in ``constraint_owners``; one that is not
        (an application's own) is named as it is.
        """
        name = getattr(error, "constraint_name", None)
        owner = self._owners.get(name) if name else None
        if isinstance(error, asyncpg.exceptions.UniqueViolationError):
            if owner is not None:
                return rules.unique_conflict(owner.spec, owner.columns)
            return ConflictError(f"the unique constraint {name} refused the row", rule="unique")
        if isinstance(error, asyncpg.exceptions.ForeignKeyViolationError) and owner is not None:
            return rules.dangling(owner.spec, owner.columns[0])
        if isinstance(error, asyncpg.exceptions.CheckViolationError):
            return ValidationError(
                f"breaks the database rule {name}",
                field=owner.spec.table if owner else "row",
                rule="check",
            )
        if isinstance(error, asyncpg.exceptions.RestrictViolationError):
            return InvalidStateError(str(error), field="table", rule="append_only")
        if isinstance(error, _TRANSIENT):
            return StorageError(f"PostgreSQL asked to retry: {error}", retryable=True)
        return StorageError(f"PostgreSQL failed: {type(error).__name__}", retryable=False)


class _PostgresTransaction(SqlTransaction):
    """Reads run at once; writes go as one statement at the next read, flush or commit."""

    skip_locked = True

    def __init__(
        self,
        store: PostgresStorage,
        connection: asyncpg.Connection,
        scope: Scope,
        *,
        readonly: bool,
    ) -> None:
        super().__init__(store, scope, readonly=readonly)
        self._postgres = store
        self.connection = connection
        self._begun = False

    async def _begin(self) -> None:
        if not self._begun and not self._readonly:
            await self.connection.execute("BEGIN")
            self._begun = True

    async def _fetch(self, statement: Compiled, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """A read: opens BEGIN, sends buffered writes; readonly reads retry on a new connection."""
        await self._begin()
        await self._send_writes()
        args = statement.positional(params)
        for attempt in range(TRANSIENT_RETRIES):
            try:
                rows: list[Any] = await self.connection.fetch(statement.sql, *args)
                return rows
            except _CONNECTION_ERRORS as error:
                if self._begun or attempt == TRANSIENT_RETRIES - 1:
                    raise StorageError(f"lost the PostgreSQL connection: {error}") from None
                await self._reconnect()
            except asyncpg.PostgresError as error:
                raise self._postgres.explain(error) from None
        raise AssertionError("unreachable")

    async def _reconnect(self) -> None:
        pool = self._postgres._require_pool()
        broken, self.connection = self.connection, await pool.acquire()
        await _discard(pool, broken)

    async def _send_writes(self) -> None:
        """Buffered writes as few statements as possible; inside BEGIN when more than one."""
        writes, self._writes = self._writes, []
        if not writes:
            return
        batches = _batches(writes)
        if len(batches) > 1:
            await self._begin()
        for batch in batches:
            await self._send_batch(batch)

    async def _send_batch(self, writes: list[Write]) -> None:
        autocommit = not self._begun
        for attempt in range(TRANSIENT_RETRIES):
            try:
                counts = await self._execute(writes)
                break
            except _TRANSIENT as error:
                # A single autocommit statement failed whole: nothing happened, try again.
                if not autocommit or attempt == TRANSIENT_RETRIES - 1:
                    raise self._postgres.explain(error) from None
            except _CONNECTION_ERRORS as error:
                raise StorageError(
                    f"lost the PostgreSQL connection while writing: {error}; the write may or "
                    "may not have happened"
                ) from None
            except asyncpg.PostgresError as error:
                raise self._postgres.explain(error) from None
        for write, count in zip(writes, counts, strict=True):
            if write.checked and count != 1:
                assert write.entity_id is not None
                exists = self._postgres.statements.exists(write.spec, include_deleted=False)
                found = await self.connection.fetch(
                    exists.sql, *exists.positional(self._key(write.entity_id))
                )
                raise write.no_row(bool(found))

    async def _execute(self, writes: list[Write]) -> list[int]:
        if len(writes) == 1:
            write = writes[0]
            status: str = await self.connection.execute(
                write.statement.sql, *write.statement.positional(write.params)
            )
            return [int(status.rsplit(" ", 1)[-1])]
        sql = self._postgres.batch_sql(tuple(write.statement for write in writes))
        args = [arg for write in writes for arg in write.statement.positional(write.params)]
        row = await self.connection.fetchrow(sql, *args)
        return [int(count) for count in row]

    async def commit(self) -> None:
        if not self._begun and any(write.checked for write in self._writes):
            await self._begin()  # a checked UPDATE must be able to roll the others back
        await self._send_writes()
        if self._begun:
            await self.connection.execute("COMMIT")
            self._begun = False

    async def rollback(self) -> None:
        self._writes = []
        if self._begun:
            self._begun = False
            try:
                await self.connection.execute("ROLLBACK")
            except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
                # The server rolls back a transaction whose connection is gone.
                await _discard(self._postgres._require_pool(), self.connection)

    async def flush(self) -> None:
        await self._send_writes()

    # -- atomic operations: row locks in the database ------------------------------------

    async def _lock(self, kind: type[Any], entity_id: UUID) -> None:
        """Hold the row's lock until the transaction ends: the next read-check-write is atomic."""
        self._check_writable()
        await self._fetch(self._postgres.statements.lock(spec_for(kind)), self._key(entity_id))

    async def redeem_promo_code(self, usage: PromoCodeUsage) -> PromoCode:
        await self._lock(PromoCode, usage.promo_code_id)
        return await redeem_promo_code(self, usage)

    async def add_refund(self, refund: Refund) -> Payment:
        await self._lock(Payment, refund.payment_id)
        return await add_refund(self, refund)

    async def store_idempotency_key(self, record: IdempotencyKey) -> IdempotencyKey:
        """Insert unless taken (``ON CONFLICT DO NOTHING`` waits for a concurrent inserter)."""
        self._check_writable()
        rules.check_entity_scope(record, self._scope)
        rules.check_timestamps(record)
        statement = self._postgres.statements.insert_if_absent(spec_for(IdempotencyKey))
        params = self._postgres.codec(IdempotencyKey).params(record)
        if await self._fetch(statement, params):
            return record
        stored: IdempotencyKey | None = await self.find(IdempotencyKey, key=record.key)
        if stored is None:
            raise StorageError("the idempotency key vanished while being stored")
        return stored


async def _found(connection: asyncpg.Connection, schema: Schema) -> migrations.Found:
    """The version, prefix and tenancy of the schema under ``schema.prefix``, if any."""
    exists = "SELECT to_regclass($1) IS NOT NULL"
    if not await connection.fetchval(exists, schema.migrations.name):
        return migrations.Found(None)
    version: int | None = await connection.fetchval(
        f"SELECT max(version) FROM {schema.migrations.name}"
    )
    info = schema.schema_info.name
    if await connection.fetchval(exists, info):
        row = await connection.fetchrow(f"SELECT prefix, tenancy FROM {info}")
        if row is not None:
            return migrations.Found(version, row["tenancy"] == "multi", row["prefix"])
    # Before version 4 the tenancy is in the tables themselves.
    multi: bool = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) "
        "AND attname = 'tenant_id' AND NOT attisdropped)",
        migrations.identifier(schema.prefix, "customers"),
    )
    return migrations.Found(version, multi)


def _where(dsn: str) -> str:
    """The database, for a message: its name and server, never the password."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or parts.username or "postgres"
    return f"database {name} at {parts.hostname or 'localhost'}:{parts.port or 5432}"


async def _discard(pool: asyncpg.Pool, connection: asyncpg.Connection) -> None:
    """Close a broken connection and give its slot back; the pool opens a new one on demand.

    When the server dropped it, asyncpg may already have detached it from the pool: then
    there is nothing left to close or release.
    """
    with contextlib.suppress(asyncpg.exceptions.InterfaceError):
        connection.terminate()
    await pool.release(connection)


def _batches(writes: list[Write]) -> list[list[Write]]:
    """Consecutive runs of writes that may share one statement.

    The CTEs of one statement all see the snapshot from before it, not each other's rows:
    a write to a row that an earlier write of the run touched (insert then update, update
    then soft delete) starts the next run.
    """
    batches: list[list[Write]] = [[]]
    touched: set[tuple[str, UUID | None]] = set()
    for write in writes:
        row = (write.spec.table, write.entity_id)
        if row in touched:
            batches.append([])
            touched = set()
        batches[-1].append(write)
        touched.add(row)
    return batches


def _renumber(sql: str, offset: int) -> str:
    """Move ``$n`` placeholders up by ``offset``, to append one statement's args to another's."""
    return _PLACEHOLDER.sub(lambda match: f"${int(match.group(1)) + offset}", sql)


__all__ = ["PostgresStorage", "asyncpg_dsn"]
