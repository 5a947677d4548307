"""Store factories for qzpay's own adapters, and examples for authors of new ones.

    qzpay conformance qzpay.conformance.factories:memory
    qzpay conformance qzpay.conformance.factories:sqlite
    QZPAY_TEST_POSTGRES_URL=postgresql://... qzpay conformance qzpay.conformance.factories:postgres

How each isolates tests (``StoreOptions.test_id``):

- ``memory``: one ``MemoryDatabase`` per ``test_id``, shared by every store of the test
  whatever its prefix (like one SQL database); dropped at cleanup. No raw view: there is no
  SQL database behind it.
- ``sqlite``: one file per ``test_id`` in a temporary directory; ``raw_url`` is
  ``sqlite:///<file>``; the file is deleted at cleanup.
- ``postgres``: one database for every test (``QZPAY_TEST_POSTGRES_URL``), isolated by
  prefix: the requested prefix gets a tag derived from ``test_id`` (``one_`` becomes
  ``one_3f9a2c71d0_``), so the same request in one test reaches the same tables and
  different tests never meet. The result stays a valid prefix (``^[a-z_][a-z0-9_]{0,30}$``);
  an invalid requested prefix is passed through unchanged, for the store to refuse. Cleanup
  drops the tables (and the trigger function) under the tagged prefix. A prefix rather than
  a schema per test keeps ``raw_url`` a plain URL and exercises prefixes on every test.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import anyio

from qzpay.adapters.memory import MemoryDatabase, MemoryStorage
from qzpay.conformance.contract import Capabilities, StoreHandle, StoreOptions

POSTGRES_URL_ENV = "QZPAY_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")
_MAX_PREFIX = 31


def memory(options: StoreOptions) -> StoreHandle:
    """A ``MemoryStorage`` on the test's own ``MemoryDatabase``."""
    database = _MEMORY.setdefault(options.test_id, MemoryDatabase())

    async def cleanup() -> None:
        _MEMORY.pop(options.test_id, None)

    return StoreHandle(
        storage=MemoryStorage(
            table_prefix=options.table_prefix,
            multi_tenant=options.multi_tenant,
            database=database,
        ),
        cleanup=cleanup,
        # Several MemoryStorage objects on one MemoryDatabase share its lock: safe.
        capabilities=Capabilities(multiple_connections=True),
    )


_MEMORY: dict[str, MemoryDatabase] = {}


def sqlite_file(test_id: str) -> Path:
    """The SQLite file of one test, in this process's temporary directory."""
    global _SQLITE_DIR
    if _SQLITE_DIR is None:
        _SQLITE_DIR = Path(tempfile.mkdtemp(prefix="qzpay-conformance-"))
        atexit.register(shutil.rmtree, _SQLITE_DIR, ignore_errors=True)
    return _SQLITE_DIR / f"{test_id}.db"


_SQLITE_DIR: Path | None = None


def sqlite(options: StoreOptions) -> StoreHandle:
    """A ``SQLiteStorage`` on the test's own file; the raw view reads the same file."""
    from qzpay.adapters.sqlite import SQLiteStorage

    path = sqlite_file(options.test_id)
    storage = SQLiteStorage(
        path, table_prefix=options.table_prefix, multi_tenant=options.multi_tenant
    )

    async def cleanup() -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            await anyio.Path(f"{path}{suffix}").unlink(missing_ok=True)

    return StoreHandle(
        storage=storage,
        raw_url=storage.url,
        cleanup=cleanup,
        # Each SQLiteStorage is its own connection; BEGIN IMMEDIATE serializes writers.
        capabilities=Capabilities(multiple_connections=True),
    )


def isolated_prefix(prefix: str, test_id: str) -> str:
    """``prefix`` tagged for one test (``one_`` → ``one_3f9a2c71d0_``), still a valid prefix.

    >>> isolated_prefix("one_", "t1") == isolated_prefix("one_", "t1") != isolated_prefix("two_", "t1")
    True
    >>> len(isolated_prefix("b" * 31, "t1"))
    31
    >>> isolated_prefix("Bad-", "t1")
    'Bad-'
    """
    if not _PREFIX.fullmatch(prefix):
        return prefix
    tag = hashlib.sha1(f"{test_id}/{prefix}".encode()).hexdigest()[:10]
    return f"{prefix[: _MAX_PREFIX - len(tag) - 1]}{tag}_"


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


async def postgres_unavailable(url: str | None = None, *, connect_timeout: float = 3) -> str | None:
    """Why no PostgreSQL can be used at ``url`` (default ``QZPAY_TEST_POSTGRES_URL``), or
    ``None`` when one answers: test runs skip (or, in CI, fail) with this reason."""
    url = postgres_url() if url is None else url
    try:
        import asyncpg

        from qzpay.adapters.postgres import asyncpg_dsn
    except ImportError as error:
        return f"cannot import the PostgreSQL adapter: {error}"
    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=connect_timeout)
    except Exception as error:
        return f"no PostgreSQL at {POSTGRES_URL_ENV}={url} ({type(error).__name__}: {error})"
    await connection.close()
    return None


def postgres(options: StoreOptions) -> StoreHandle:
    """A ``PostgresStorage`` on ``QZPAY_TEST_POSTGRES_URL`` under a prefix tagged per test."""
    from qzpay.adapters.postgres import PostgresStorage

    url = postgres_url()
    prefix = isolated_prefix(options.table_prefix, options.test_id)
    storage = PostgresStorage(
        url,
        table_prefix=prefix,
        multi_tenant=options.multi_tenant,
        auto_migrate=True,
        pool_size=5,
    )

    async def cleanup() -> None:
        await drop_prefix(url, prefix)

    return StoreHandle(
        storage=storage,
        raw_url=storage.url,
        cleanup=cleanup,
        capabilities=Capabilities(multiple_connections=True),
    )


async def drop_prefix(url: str, prefix: str) -> None:
    """Drop every table and function named with ``prefix`` in the current schema."""
    import asyncpg

    from qzpay.adapters.postgres import asyncpg_dsn

    if not _PREFIX.fullmatch(prefix):
        return
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND left(tablename, length($1)) = $1",
            prefix,
        )
        if tables:
            names = ", ".join(f'"{row["tablename"]}"' for row in tables)
            await connection.execute(f"DROP TABLE IF EXISTS {names} CASCADE")
        functions = await connection.fetch(
            "SELECT p.oid::regprocedure::text AS signature FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND left(p.proname, length($1)) = $1",
            prefix,
        )
        for row in functions:
            await connection.execute(f"DROP FUNCTION IF EXISTS {row['signature']} CASCADE")
    finally:
        await connection.close()
