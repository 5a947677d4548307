"""PostgresStorage: the production adapter, on asyncpg (asyncio only).

How it stays fast and safe (DESIGN §11, docs/decisions/0008-postgres-unit-of-work.md):

- Statements come from the shared SQLAlchemy schema, compiled once per shape for the
  asyncpg dialect, and run straight on asyncpg (which prepares and caches them).
- A transaction buffers its writes. A call that only writes (``customers.create``:
  customer + audit row) sends them as ONE statement of data-modifying CTEs in autocommit:
  one round trip, atomic by itself. Otherwise (a read, a ``flush()``, more writes than one
  statement holds, a checked UPDATE) everything runs inside ``BEGIN ... COMMIT``. Many alike
  writes go as multi-row ``unnest`` statements of at most 1,000 rows
  (``qzpay.adapters.sql.postgres_batches``), so a renewal batch of thousands of writes is a
  handful of statements.
- Atomic operations use the database: a counter row upserted and locked for invoice numbers,
  ``SELECT ... FOR UPDATE`` before redeeming a promo code or adding a refund,
  ``FOR UPDATE SKIP LOCKED`` to claim due subscriptions, ``ON CONFLICT`` for idempotency keys.
- A unique key taken by a concurrent writer raises the same ``ConflictError`` as a
  sequential duplicate. A deadlock or serialization failure of a single-statement call is
  retried (a bounded number of times); inside ``BEGIN`` it surfaces as a retryable
  ``StorageError``. A connection lost at ``COMMIT`` (or under the one autocommit statement)
  raises ``OutcomeUnknownError``; lost before that, a retryable ``StorageError``; readonly
  reads retry on a fresh connection. No asyncpg exception escapes.
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
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from qzpay.adapters import storage_rules as rules
from qzpay.adapters.sql import migrations
from qzpay.adapters.sql.event_loop import require_asyncio
from qzpay.adapters.sql.postgres_batches import Batch, PostgresBatches
from qzpay.adapters.sql.rows import postgres_converter
from qzpay.adapters.sql.schema import Schema, constraint_owners
from qzpay.adapters.sql.statements import Compiled
from qzpay.adapters.sql.store import SqlStoreBase
from qzpay.adapters.sql.transaction import SqlSweep, SqlTransaction
from qzpay.contracts.storage import Scope, StorageTransaction, TenantSweep
from qzpay.errors import (
    ConfigurationError,
    ConflictError,
    InvalidStateError,
    OutcomeUnknownError,
    QZPayError,
    StorageError,
    ValidationError,
)

E = TypeVar("E")

TRANSIENT_RETRIES = 3
"""Attempts of a statement that failed whole (deadlock, serialization) before it surfaces."""
_CONNECTION_ERRORS = (
    # The connection is gone or unusable: the server ended it (class 08, an administrator's
    # or a failover's shutdown), the socket broke, a timeout, or asyncpg lost its state.
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,  # TimeoutError among them
)
# asyncpg refused to encode an argument: raised before anything is sent, the connection is
# fine. A subclass of InterfaceError, so it is told apart first.
_CLIENT_DATA_ERROR: type[Exception] = asyncpg.exceptions._base.DataError
KEYS_SAVEPOINT = "qzpay_keys"
"""The savepoint a multi-row UPDATE of a kind with unique keys is sent after."""
_TRANSIENT = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)
# PostgreSQL's SQLSTATE classes (Appendix A of its manual), for messages.
_SQLSTATE_CLASSES = {
    "08": "connection exception",
    "0A": "feature not supported",
    "21": "cardinality violation",
    "22": "data exception",
    "23": "integrity constraint violation",
    "25": "invalid transaction state",
    "40": "transaction rollback",
    "42": "syntax error or access rule violation",
    "53": "insufficient resources",
    "54": "program limit exceeded",
    "55": "object not in prerequisite state",
    "57": "operator intervention",
    "58": "system error",
    "P0": "PL/pgSQL error",
    "XX": "internal error",
}
# Messages that quote the value they refused ('invalid input syntax for type uuid: "..."',
# asyncpg's "invalid input for query argument $1: 'ann@...'"): the value is cut out, since
# parameters may hold personal data and messages are written to be logged.
_QUOTED_VALUE = re.compile(r"""(: |=)(?:"[^"]*"|'[^']*'|\([^)]*\))""")


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
        self._batches = PostgresBatches()

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
        try:
            connection = await pool.acquire()
        except Exception as error:
            raise _acquire_failed(error) from None
        transaction = _PostgresTransaction(self, connection, scope, readonly=readonly)
        # Commit or rollback and the release run under one shield each way: a cancelled
        # caller must not leave a transaction open on a pooled connection.
        try:
            yield transaction
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await transaction.rollback()
                finally:
                    await _release(pool, transaction.connection)
            raise
        with anyio.CancelScope(shield=True):
            try:
                await transaction.commit()
            except BaseException:
                await transaction.rollback()
                raise
            finally:
                await _release(pool, transaction.connection)

    async def _acquire(self, pool: asyncpg.Pool) -> asyncpg.Connection:
        try:
            return await pool.acquire()
        except Exception as error:
            raise _acquire_failed(error) from None

    @asynccontextmanager
    async def across_tenants(self, *, livemode: bool) -> AsyncIterator[TenantSweep]:
        """The cross-tenant reads, on a connection of their own, in no tenant's scope."""
        require_asyncio("PostgresStorage")
        pool = self._require_pool()
        connection = await self._acquire(pool)
        sweep = _PostgresTransaction(self, connection, Scope(livemode=livemode), readonly=True)
        try:
            yield SqlSweep(sweep)
        finally:
            with anyio.CancelScope(shield=True):
                await _release(pool, sweep.connection)

    @property
    def batches(self) -> PostgresBatches:
        """How buffered writes become statements (``qzpay.adapters.sql.postgres_batches``)."""
        return self._batches

    def explain(self, error: asyncpg.PostgresError, *, writing: Sequence[str] = ()) -> QZPayError:
        """The database's refusal as qzpay's named error, naming where it happened.

        Every constraint the schema creates is in ``constraint_owners``; one that is not
        (an application's own) is named as it is. Anything else keeps the server's message
        and says which table, column and constraint it concerns (``writing``: the tables the
        statement wrote, when the server names none), but never a parameter's value.
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
                f"breaks the database rule {name} ({describe(error)})",
                field=owner.spec.table if owner else "row",
                rule="check",
            )
        if isinstance(error, asyncpg.exceptions.RestrictViolationError):
            return InvalidStateError(str(error), field="table", rule="append_only")
        if isinstance(error, _TRANSIENT):
            return StorageError(f"PostgreSQL asked to retry: {describe(error)}", retryable=True)
        return StorageError(
            f"PostgreSQL refused the statement: {describe(error, writing)}", retryable=False
        )


class _PostgresTransaction(SqlTransaction):
    """Reads run at once; buffered writes go as few bounded statements at the next read,
    flush or commit (``PostgresBatches``)."""

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
        self._lost = False  # the connection broke: it is closed, never handed out again
        self._custom_plans = False

    async def _begin(self) -> None:
        """``BEGIN``, once; nothing of the transaction was sent before it, so a lost
        connection here is a plain retryable error."""
        if self._begun or self._readonly:
            return
        await self._replace_if_closed()
        try:
            await self.connection.execute("BEGIN")
        except Exception as error:
            raise self._failure(error, "at BEGIN", sent=False) from None
        self._begun = True

    async def _plan_each_time(self) -> None:
        """Multi-row statements are planned for their arrays each time, for this transaction.

        asyncpg prepares every statement; from its sixth execution PostgreSQL may switch to a
        generic plan, which does not know how many rows ``unnest`` of a parameter yields.
        Measured on a 500-row ``UPDATE ... FROM unnest``: 20 ms with the plan made for its
        arrays, 300-400 ms with the generic one. ``SET LOCAL`` ends with the transaction, so
        no session state is left on the pooled connection.
        """
        try:
            await self.connection.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        except Exception as error:
            raise self._failure(error, "while writing", sent=False) from None
        self._custom_plans = True

    async def _fetch(self, statement: Compiled, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """A read: opens BEGIN, sends buffered writes; readonly reads retry on a new connection."""
        await self._begin()
        await self._send_writes()
        args = statement.positional(params)
        for attempt in range(TRANSIENT_RETRIES):
            try:
                rows: list[Any] = await self.connection.fetch(statement.sql, *args)
                return rows
            except Exception as error:
                retry = not self._begun and attempt < TRANSIENT_RETRIES - 1
                if retry and _lost(error):
                    await self._reconnect()
                    continue
                raise self._failure(error, "while reading", sent=False) from None
        raise AssertionError("unreachable")

    async def _replace_if_closed(self) -> None:
        """Before the transaction's first statement: a connection the server ended while it
        sat in the pool (a restart, an idle reaper) is replaced, since nothing was sent."""
        try:
            closed = self.connection.is_closed()
        except asyncpg.exceptions.InterfaceError:
            closed = True  # the pool detached it when the server ended it
        if closed:
            await self._reconnect()

    async def _reconnect(self) -> None:
        pool = self._postgres._require_pool()
        broken, self.connection = self.connection, await self._postgres._acquire(pool)
        await _discard(pool, broken)

    def _failure(
        self,
        error: Exception,
        when: str,
        *,
        sent: bool,
        writing: Sequence[str] = (),
    ) -> QZPayError:
        """A driver exception as qzpay's error. ``sent``: whether what failed may have
        committed on its own (COMMIT, or the one statement of an autocommit write)."""
        if isinstance(error, QZPayError):
            return error
        if isinstance(error, _CLIENT_DATA_ERROR):
            where = f" for {', '.join(writing)}" if writing else ""
            return StorageError(
                f"the PostgreSQL driver refused a value{where} {when}: {_redact(str(error))}; "
                "nothing was sent",
                retryable=False,
            )
        if _lost(error):
            self._lost = True
            reason = f"{type(error).__name__}: {_redact(str(error))}"
            if sent:
                return OutcomeUnknownError(
                    f"lost the PostgreSQL connection {when} ({reason}): the transaction may or "
                    "may not have committed; read back what it wrote before trying again"
                )
            return StorageError(
                f"lost the PostgreSQL connection {when} ({reason}); nothing was committed",
                retryable=True,
            )
        if isinstance(error, asyncpg.PostgresError):
            return self._postgres.explain(error, writing=writing)
        return StorageError(
            f"PostgreSQL failed {when}: {type(error).__name__}: {_redact(str(error))}",
            retryable=False,
        )

    async def _send_writes(self, *, commit: bool = False) -> None:
        """Buffered writes as few bounded statements as ``PostgresBatches`` makes them.

        Every statement runs inside BEGIN, except the one fast path: at commit, a
        transaction that never began and whose writes all fit one statement without a
        checked UPDATE sends it in autocommit (one round trip; one statement is atomic).
        """
        writes = self._writes
        if not writes:
            return
        self._writes = []
        batches = self._postgres.batches.plan(writes)
        multi_row = any(batch.multi_row for batch in batches)
        autocommit = (
            commit
            and not self._begun
            and len(batches) == 1
            and not multi_row
            and not any(write.checked for write in writes)
        )
        if autocommit:
            await self._replace_if_closed()
        else:
            await self._begin()
        if multi_row and not self._custom_plans:
            await self._plan_each_time()
        for batch in batches:
            if batch.reorders_keys:
                await self._send_reordering(batch)
            else:
                await self._send_batch(batch, autocommit=autocommit)

    async def _send_reordering(self, batch: Batch) -> None:
        """A batch whose multi-row UPDATE may break a unique key that its rows one by one
        would not (``postgres_batches.reorders_keys``): sent after a savepoint; if it breaks
        one, the transaction rolls back to the savepoint and sends the writes in order, so
        a key handed from one row to another lands as written and a real duplicate is still
        refused (by the in-order statements)."""
        await self._command(f"SAVEPOINT {KEYS_SAVEPOINT}")
        try:
            results = await self._execute(batch)
        except asyncpg.exceptions.UniqueViolationError:
            await self._command(f"ROLLBACK TO SAVEPOINT {KEYS_SAVEPOINT}")
            for again in self._postgres.batches.plan(batch.writes(), in_order=True):
                await self._send_batch(again, autocommit=False)
            return
        except Exception as error:
            raise self._failure(
                error, "while writing", sent=False, writing=_tables(batch)
            ) from None
        await self._check_hits(batch, results)

    async def _command(self, sql: str) -> None:
        try:
            await self.connection.execute(sql)
        except Exception as error:
            raise self._failure(error, "while writing", sent=False) from None

    async def _send_batch(self, batch: Batch, *, autocommit: bool) -> None:
        for attempt in range(TRANSIENT_RETRIES):
            try:
                results = await self._execute(batch)
                break
            except _TRANSIENT as error:
                # A single autocommit statement failed whole: nothing happened, try again.
                if not autocommit or attempt == TRANSIENT_RETRIES - 1:
                    raise self._postgres.explain(error) from None
            except Exception as error:
                raise self._failure(
                    error, "while writing", sent=autocommit, writing=_tables(batch)
                ) from None
        await self._check_hits(batch, results)

    async def _check_hits(self, batch: Batch, results: Sequence[Any]) -> None:
        """A checked write that hit no row: ``ConflictError`` if the row is there (a stale
        version), ``NotFoundError`` if not."""
        missed = batch.missed(results)
        if missed is not None:
            assert missed.entity_id is not None
            exists = self._postgres.statements.exists(missed.spec, include_deleted=False)
            try:
                found = await self.connection.fetch(
                    exists.sql, *exists.positional(self._key(missed.entity_id))
                )
            except Exception as error:
                raise self._failure(error, "while reading", sent=False) from None
            raise missed.no_row(bool(found))

    async def _execute(self, batch: Batch) -> Sequence[Any]:
        if batch.plain:
            status: str = await self.connection.execute(batch.sql, *batch.args)
            return [int(status.rsplit(" ", 1)[-1])]
        row = await self.connection.fetchrow(batch.sql, *batch.args)
        return tuple(row)

    async def commit(self) -> None:
        await self._send_writes(commit=True)
        if self._begun:
            self._begun = False  # whatever COMMIT answers, the transaction is over
            try:
                await self.connection.execute("COMMIT")
            except Exception as error:
                raise self._failure(error, "at COMMIT", sent=True) from None

    async def rollback(self) -> None:
        self._writes = []
        if self._lost:
            await _discard(self._postgres._require_pool(), self.connection)
            return
        if self._begun:
            self._begun = False
            try:
                await self.connection.execute("ROLLBACK")
            except Exception:
                # The server rolls back a transaction whose connection is gone.
                await _discard(self._postgres._require_pool(), self.connection)

    async def flush(self) -> None:
        """Sends the buffered writes inside BEGIN (never in autocommit: more may follow)."""
        await self._send_writes()

    # -- atomic primitives: the statements lock what they touch --------------------------

    def _lease(self, now: datetime, lease: timedelta) -> dict[str, Any]:
        """Leases run on the server's clock: every worker compares against the same one."""
        return {"lease": lease}


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
    await _release(pool, connection)


async def _release(pool: asyncpg.Pool, connection: asyncpg.Connection) -> None:
    """Give a connection back. The transaction's outcome is already known (or already
    raised), so a failure here must not replace it: the connection is closed instead."""
    try:
        await pool.release(connection)
    except Exception:
        with contextlib.suppress(Exception):
            connection.terminate()


def _acquire_failed(error: Exception) -> QZPayError:
    """The pool could not give a connection: nothing was sent, so it is retryable unless the
    server refused us for good (a wrong password, a missing database)."""
    if isinstance(error, asyncpg.PostgresError) and not _lost(error):
        return StorageError(
            f"PostgreSQL refused a new connection: {describe(error)}", retryable=False
        )
    if isinstance(error, _CONNECTION_ERRORS):
        return StorageError(
            f"cannot get a PostgreSQL connection ({type(error).__name__}: {error}); "
            "nothing was sent",
            retryable=True,
        )
    return StorageError(
        f"cannot get a PostgreSQL connection: {type(error).__name__}: {error}", retryable=False
    )


def _lost(error: BaseException) -> bool:
    """Whether ``error`` means the connection is gone (and not a refused value)."""
    return isinstance(error, _CONNECTION_ERRORS) and not isinstance(error, _CLIENT_DATA_ERROR)


def _tables(batch: Batch) -> list[str]:
    """The tables a statement writes, for a message."""
    return list(dict.fromkeys(part.writes[0].spec.table for part in batch.parts))


def _redact(message: str) -> str:
    return _QUOTED_VALUE.sub(r"\1<value>", message)


def describe(error: asyncpg.PostgresError, writing: Sequence[str] = ()) -> str:
    """The server's message with where it applies: table, column, constraint, SQLSTATE.

    The DETAIL line is left out: it quotes the row's values (``Key (email)=(ann@...)``).
    """
    message = _redact(str(getattr(error, "message", None) or error))
    where = []
    table = getattr(error, "table_name", None)
    column = getattr(error, "column_name", None)
    constraint = getattr(error, "constraint_name", None)
    if table:
        where.append(f"table {table}" + (f", column {column}" if column else ""))
    elif column:
        where.append(f"column {column}")
    elif writing:
        where.append(f"writing {', '.join(writing)}")
    if constraint:
        where.append(f"constraint {constraint}")
    sqlstate = str(getattr(error, "sqlstate", None) or "")
    if sqlstate:
        kind = _SQLSTATE_CLASSES.get(sqlstate[:2], f"class {sqlstate[:2]}")
        where.append(f"SQLSTATE {sqlstate}, {kind}, {type(error).__name__}")
    return f"{message} ({'; '.join(where)})" if where else message


__all__ = ["PostgresStorage", "asyncpg_dsn"]
