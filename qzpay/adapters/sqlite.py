"""SQLiteStorage: the embedded default, a single file, on aiosqlite (asyncio only).

How it stays fast and safe (DESIGN §11, docs/decisions/0004-sqlite-unit-of-work.md):

- Statements come from the shared SQLAlchemy schema, compiled once per shape, and run
  straight on the sqlite3 connection inside aiosqlite's worker thread.
- A transaction buffers its writes and sends them with the next read or the commit, in one
  hop to the worker thread: ``customers.create`` (customer + audit row) costs one hop where a
  hand-written aiosqlite call sequence costs four.
- Write transactions begin with ``BEGIN IMMEDIATE``: the write lock is taken when the
  transaction begins, so two processes never deadlock upgrading a read lock, and a busy
  database is waited for (``busy_timeout``) instead of failing with "database is locked".
- WAL journal, ``synchronous=NORMAL``, foreign keys on.

>>> import asyncio, tempfile, os
>>> from qzpay import create_billing
>>> from qzpay.adapters.fake import FakeProvider
>>> async def main(path: str) -> int:
...     async with create_billing(storage=SQLiteStorage(path), provider=FakeProvider()) as billing:
...         await billing.customers.create(email="ann@example.com")
...         return (await billing.customers.list()).items.__len__()
>>> asyncio.run(main(os.path.join(tempfile.mkdtemp(), "billing.db")))
1
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio
from sqlalchemy.dialects import sqlite as sqlite_dialect

from qzpay.adapters import storage_rules as rules
from qzpay.adapters.sql import migrations
from qzpay.adapters.sql.event_loop import require_asyncio
from qzpay.adapters.sql.rows import sqlite_converter
from qzpay.adapters.sql.schema import Schema
from qzpay.adapters.sql.statements import Compiled
from qzpay.adapters.sql.store import SqlStoreBase
from qzpay.adapters.sql.transaction import SqlSweep, SqlTransaction, Write
from qzpay.adapters.sql.write_groups import group_writes
from qzpay.contracts.storage import Scope, StorageTransaction, TenantSweep
from qzpay.domain.registry import BY_TABLE, EntitySpec
from qzpay.errors import (
    ConfigurationError,
    InvalidStateError,
    QZPayError,
    StorageError,
    ValidationError,
)

E = TypeVar("E")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
_UNIQUE = re.compile(r"UNIQUE constraint failed: (.+)")
_CHECK = re.compile(r"CHECK constraint failed: (\S+)")
_FAILED_COLUMN = re.compile(r"constraint failed: \S+\.(\w+)$")


def sqlite_path(path_or_url: str | Path) -> str:
    """A file path from a path or a ``sqlite:///`` (or ``sqlite+aiosqlite:///``) URL."""
    text = str(path_or_url)
    for scheme in ("sqlite+aiosqlite://", "sqlite://"):
        if text.startswith(scheme):
            rest = text[len(scheme) :]
            if not rest.startswith("/"):
                raise ValidationError(
                    "must look like sqlite:///relative/path or sqlite:////absolute/path",
                    field="path_or_url",
                    rule="sqlite_url",
                )
            return rest[1:] or ":memory:"
    if not text:
        raise ValidationError("must not be empty", field="path_or_url", rule="required")
    return text


class SQLiteStorage(SqlStoreBase):
    """Billing records in one SQLite file; see the module docstring for how."""

    def __init__(
        self,
        path_or_url: str | Path,
        *,
        table_prefix: str = "billing_",
        multi_tenant: bool = False,
    ) -> None:
        self._path = sqlite_path(path_or_url)
        super().__init__(
            table_prefix,
            multi_tenant,
            sqlite_dialect.dialect(paramstyle="named"),
            sqlite_converter(),
        )
        self._connection: aiosqlite.Connection | None = None
        self._raw: sqlite3.Connection | None = None
        # Every transaction awaits the worker thread, so a lock that skips the scheduler
        # when free costs nothing in fairness and saves a loop turn per call.
        self._lock = anyio.Lock(fast_acquire=True)

    @property
    def path(self) -> str:
        return self._path

    @property
    def url(self) -> str:
        """A SQLAlchemy URL for the same file, e.g. for a read-only view of the rows."""
        return f"sqlite:///{self._path}"

    async def _connect(self) -> None:
        """Connect, switch to WAL, and create or upgrade the schema (the first ``open``).

        A schema this store cannot use (the other tenancy, a newer version) is refused here,
        before any write, and the connection is closed again.
        """
        require_asyncio("SQLiteStorage")
        connection = await _open_connection(self._path)
        try:
            await _use_wal(connection)
            await connection.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.OperationalError as error:
            await connection.close()
            raise StorageError(f"cannot set up SQLite database {self._path!r}: {error}") from None
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._raw = connection._conn  # the sqlite3 connection aiosqlite's thread owns
        try:
            await self._call(self._migrate)
        except BaseException:
            await self._disconnect()
            raise

    async def _disconnect(self) -> None:
        if self._connection is not None:
            connection, self._connection, self._raw = self._connection, None, None
            await connection.close()

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in aiosqlite's worker thread: one hop, however many statements."""
        if self._connection is None or self._raw is None:
            raise ConfigurationError("SQLiteStorage is not open: use `async with billing:`")
        try:
            return await self._connection._execute(work, self._raw)  # type: ignore[no-untyped-call,no-any-return]
        except sqlite3.OperationalError as error:
            raise StorageError(f"SQLite failed: {error}", retryable=_retryable(error)) from None

    async def schema_version(self) -> int | None:
        """The applied schema version under this prefix, or ``None`` when there is none."""
        table = self._schema.migrations.name

        def read(connection: sqlite3.Connection) -> int | None:
            if not _table_exists(connection, table):
                return None
            version: int | None = connection.execute(
                f"SELECT max(version) FROM {table}"
            ).fetchone()[0]
            return version

        return await self._call(read)

    async def migrate(self) -> list[int]:
        """Create the schema, or apply the steps it lacks; returns the versions applied.

        Every version for a new schema, none when it is up to date. Done in one write
        transaction, so two processes opening one new file at once create the schema once.
        A closed store migrates on a connection of its own and then leaves the file in
        rollback-journal mode, with no ``-wal``/``-shm`` files beside it: ``qzpay migrate`` is
        a deploy step and should leave nothing behind (the next ``open`` returns to WAL).
        """
        require_asyncio("SQLiteStorage")
        async with self._opening:
            if self._connection is not None:
                async with self._lock:
                    return await self._call(self._migrate)
            connection = await _open_connection(self._path)
            try:
                applied: list[int] = await connection._execute(self._migrate, connection._conn)  # type: ignore[no-untyped-call]
                await connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                with contextlib.suppress(sqlite3.OperationalError):
                    # Refused while another connection holds the file in WAL: its last
                    # close removes the files, which are not ours to delete.
                    await connection.execute("PRAGMA journal_mode = DELETE")
            except sqlite3.OperationalError as error:
                raise StorageError(f"SQLite failed: {error}", retryable=_retryable(error)) from None
            finally:
                await connection.close()
            return applied

    def _migrate(self, connection: sqlite3.Connection) -> list[int]:
        """Check what is there, then create or upgrade it, in one ``BEGIN IMMEDIATE``."""
        schema = self._schema
        table = schema.migrations.name
        record_sql = f"INSERT INTO {table} (version, name, applied_at) VALUES (?, ?, ?)"
        connection.execute("BEGIN IMMEDIATE")
        try:
            found = _found(connection, schema)
            migrations.check(found, schema, self._path)
            steps, statements = migrations.plan(found, schema, self._statements.dialect)
            for statement in statements:
                connection.execute(statement)
            applied_at = datetime.now(UTC).isoformat(sep=" ")  # a record, not business time
            for step in steps:
                connection.execute(record_sql, (step.version, step.name, applied_at))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return [step.version for step in steps]

    async def create_schema(self) -> None:
        """Create or upgrade the schema (idempotent); the same as ``migrate``."""
        await self.migrate()

    @asynccontextmanager
    async def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AsyncIterator[StorageTransaction]:
        require_asyncio("SQLiteStorage")
        rules.check_scope(scope, self.multi_tenant)
        async with self._lock:
            transaction = _SQLiteTransaction(self, scope, readonly=readonly)
            try:
                yield transaction
                with anyio.CancelScope(shield=True):
                    await transaction.commit()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await transaction.rollback()
                raise

    @asynccontextmanager
    async def across_tenants(self, *, livemode: bool) -> AsyncIterator[TenantSweep]:
        """The cross-tenant reads, in a readonly transaction whose scope names no tenant."""
        require_asyncio("SQLiteStorage")
        async with self._lock:
            transaction = _SQLiteTransaction(self, Scope(livemode=livemode), readonly=True)
            try:
                yield SqlSweep(transaction)
            finally:
                with anyio.CancelScope(shield=True):
                    await transaction.rollback()


WAL_ATTEMPTS = 100


async def _use_wal(connection: aiosqlite.Connection) -> None:
    """Switch the file to WAL, waiting out another process that is doing the same.

    Changing the journal mode needs the file to itself and does not go through the busy
    handler, so two processes opening one new file at once can see "database is locked"
    here; the mode is stored in the file, so the loser finds WAL already set on retry.
    """
    for attempt in range(WAL_ATTEMPTS):
        try:
            await connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == WAL_ATTEMPTS - 1:
                raise
            await anyio.sleep(0.05)


async def _open_connection(path: str) -> aiosqlite.Connection:
    """A connection in autocommit, waiting out other writers, with foreign keys on."""
    try:
        connection = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as error:
        raise StorageError(
            f"cannot open SQLite database {path!r}: {error}", retryable=False
        ) from None
    try:
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await connection.execute("PRAGMA foreign_keys = ON")
    except sqlite3.OperationalError as error:
        await connection.close()
        raise StorageError(f"cannot set up SQLite database {path!r}: {error}") from None
    except BaseException:
        await connection.close()
        raise
    return connection


def _found(connection: sqlite3.Connection, schema: Schema) -> migrations.Found:
    """The version, prefix and tenancy of the schema under ``schema.prefix``, if any."""
    if not _table_exists(connection, schema.migrations.name):
        return migrations.Found(None)
    version: int | None = connection.execute(
        f"SELECT max(version) FROM {schema.migrations.name}"
    ).fetchone()[0]
    info = schema.schema_info.name
    if _table_exists(connection, info):
        row = connection.execute(f"SELECT prefix, tenancy FROM {info}").fetchone()
        if row is not None:
            return migrations.Found(version, row[1] == "multi", row[0])
    # Before version 4 the tenancy is in the tables themselves.
    customers = migrations.identifier(schema.prefix, "customers")
    columns = {row[1] for row in connection.execute(f"PRAGMA table_info({customers})")}
    return migrations.Found(version, "tenant_id" in columns if columns else None)


def _table_exists(connection: sqlite3.Connection, name: str) -> bool:
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def _retryable(error: sqlite3.OperationalError) -> bool:
    message = str(error)
    return "locked" in message or "busy" in message


class _SQLiteTransaction(SqlTransaction):
    """Everything reaches the database through ``_run``: one hop to the worker thread."""

    def __init__(self, store: SQLiteStorage, scope: Scope, *, readonly: bool) -> None:
        super().__init__(store, scope, readonly=readonly)
        self._sqlite = store
        self._begun = False

    async def _run(self, read: Callable[[sqlite3.Connection], T] | None, *, end: bool) -> T | None:
        """Send buffered writes (and ``read``, and the COMMIT if ``end``) in one hop."""
        writes, self._writes = self._writes, []
        begin = not self._begun and not self._readonly and (bool(writes) or not end)
        if begin:
            self._begun = True
        commit = end and self._begun
        if not (begin or writes or read or commit):
            return None
        store = self._sqlite

        def work(connection: sqlite3.Connection) -> T | None:
            if begin:
                connection.execute("BEGIN IMMEDIATE")
            _apply_all(store, connection, writes)
            result = read(connection) if read is not None else None
            if commit:
                connection.execute("COMMIT")
            return result

        return await store._call(work)

    async def _fetch(self, statement: Compiled, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        rows: list[Any] | None = await self._run(
            lambda connection: connection.execute(statement.sql, params).fetchall(), end=False
        )
        return rows or []

    async def commit(self) -> None:
        await self._run(None, end=True)

    async def rollback(self) -> None:
        self._writes = []
        if self._begun:

            def undo(connection: sqlite3.Connection) -> None:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")

            await self._sqlite._call(undo)

    async def flush(self) -> None:
        if self._writes:
            await self._run(lambda connection: None, end=False)

    async def _write_returning(
        self, spec: EntitySpec[Any], statement: Compiled, params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Run a returning write in the same hop as the buffered writes; refusals named."""
        store = self._sqlite
        write = Write(spec, statement, params)

        def run(connection: sqlite3.Connection) -> list[Any]:
            try:
                return connection.execute(statement.sql, params).fetchall()
            except sqlite3.IntegrityError as error:
                raise _integrity_error(store, connection, write, error) from None

        rows: list[Any] | None = await self._run(run, end=False)
        return rows or []


GROUP_FROM = 4
"""Fewer buffered writes than this go one by one: grouping them would save nothing."""


def _apply_all(store: SQLiteStorage, connection: sqlite3.Connection, writes: list[Write]) -> None:
    """Buffered writes in order; many alike (a renewal batch) as one ``executemany`` per
    group, in the order ``write_groups`` keeps safe: far fewer calls into sqlite3."""
    if len(writes) < GROUP_FROM:
        for write in writes:
            _apply(store, connection, write)
        return
    for run in group_writes(writes):
        for group in run:
            if len(group) == 1:
                _apply(store, connection, group[0])
            else:
                _apply_many(store, connection, group)


def _apply_many(store: SQLiteStorage, connection: sqlite3.Connection, group: list[Write]) -> None:
    """One statement for many rows, inside a savepoint.

    ``executemany`` reports neither which row was refused nor which checked UPDATE hit no
    row (only the total), so on either the group is undone and replayed a row at a time,
    which raises the same error, naming the same row, as writing them one by one.
    """
    connection.execute("SAVEPOINT qzpay_group")
    try:
        cursor = connection.executemany(group[0].statement.sql, [w.params for w in group])
        done = not group[0].checked or cursor.rowcount == len(group)
    except sqlite3.IntegrityError:
        done = False
    if not done:
        connection.execute("ROLLBACK TO qzpay_group")
        for write in group:
            _apply(store, connection, write)
    connection.execute("RELEASE qzpay_group")


def _apply(store: SQLiteStorage, connection: sqlite3.Connection, write: Write) -> None:
    """Execute one buffered write, turning the database's refusals into qzpay's errors."""
    try:
        cursor = connection.execute(write.statement.sql, write.params)
    except sqlite3.IntegrityError as error:
        raise _integrity_error(store, connection, write, error) from None
    if write.checked and cursor.rowcount != 1:
        assert write.entity_id is not None
        exists = store.statements.exists(write.spec, include_deleted=False)
        params = {**write.params, "k_id": store.encode(write.entity_id)}
        raise write.no_row(connection.execute(exists.sql, params).fetchone() is not None)


def _integrity_error(
    store: SQLiteStorage,
    connection: sqlite3.Connection,
    write: Write,
    error: sqlite3.IntegrityError,
) -> QZPayError:
    message = str(error)
    spec = write.spec
    if match := _UNIQUE.match(message):
        columns = [name.split(".", 1)[-1] for name in match.group(1).split(", ")]
        key = [name for name in columns if name not in ("livemode", "tenant_id")] or ["id"]
        return rules.unique_conflict(spec, key)
    if "FOREIGN KEY" in message:
        return _dangling_reference(store, connection, write)
    if match := _CHECK.match(message):
        return ValidationError(
            f"breaks the database rule {match.group(1)}", field=spec.table, rule="check"
        )
    if "append-only" in message:
        return InvalidStateError(message, field=spec.table, rule="append_only")
    # e.g. "NOT NULL constraint failed: billing_customers.email": name the column, keep the
    # message (SQLite's integrity messages name columns, never values).
    column = _FAILED_COLUMN.search(message)
    return ValidationError(
        f"SQLite refused the row for {spec.table}: {message}",
        field=column.group(1) if column else spec.table,
        rule="integrity",
    )


def _dangling_reference(
    store: SQLiteStorage, connection: sqlite3.Connection, write: Write
) -> QZPayError:
    """SQLite does not say which foreign key failed: look each one up in scope."""
    spec = write.spec
    for column, target in spec.references.items():
        value = write.params.get(column)
        if value is None:
            continue
        statement = store.statements.exists(BY_TABLE[target], include_deleted=True)
        params = {
            "k_id": value,
            "s_livemode": write.params["livemode"],
            "s_tenant_id": write.params.get("tenant_id"),
        }
        if connection.execute(statement.sql, params).fetchone() is None:
            return rules.dangling(spec, column)
    return ValidationError("points at a row outside this scope", field=spec.table, rule="reference")


__all__: Sequence[str] = ("SQLiteStorage",)
