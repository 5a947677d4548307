"""A raw, read-only view of a SQL store's database, so the suite need not trust the adapter.

The factory hands the suite a SQLAlchemy URL (``StoreHandle.raw_url``); the suite opens it
with SQLAlchemy's asyncio engine on the async driver of the dialect (aiosqlite for
``sqlite:``, asyncpg for ``postgresql:``), reflects the tables it looks at, and reads rows by
a marker value the test wrote, never by anything the adapter reports.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def async_url(raw_url: str) -> sa.URL:
    """The URL with the async driver of its dialect, read-only where the URL can say so."""
    url = make_url(raw_url.replace("postgres://", "postgresql://", 1))
    backend = url.get_backend_name()
    driver = _ASYNC_DRIVERS.get(backend)
    if driver is not None:
        url = url.set(drivername=f"{backend}+{driver}")
    if backend == "sqlite" and url.database and url.database != ":memory:":
        # A read-only SQLite connection: the suite must not be able to change what it checks.
        url = url.set(database=f"file:{url.database}", query={"mode": "ro", "uri": "true"})
    return url


def same_id(value: object, expected: uuid.UUID) -> bool:
    """Whether a stored id (a UUID, or its text in any usual spelling) is ``expected``."""
    if isinstance(value, uuid.UUID):
        return value == expected
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value) == expected
    try:
        return uuid.UUID(str(value)) == expected
    except ValueError:
        return False


class RawView:
    """Read-only SQL access to the database behind one or more stores of a test."""

    def __init__(self, raw_url: str) -> None:
        self.raw_url = raw_url
        self._engine: AsyncEngine = create_async_engine(async_url(raw_url), poolclass=NullPool)
        self.dialect = self._engine.dialect.name

    async def close(self) -> None:
        await self._engine.dispose()

    async def _begin(self, connection: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            await connection.execute(sa.text("SET TRANSACTION READ ONLY"))

    async def table_names(self) -> list[str]:
        """Every table of the database's default schema."""
        async with self._engine.connect() as connection:
            await self._begin(connection)
            names: list[str] = await connection.run_sync(
                lambda sync: sa.inspect(sync).get_table_names()
            )
            return names

    async def reflect(self, name: str) -> sa.Table | None:
        """The table as the database describes it, or ``None`` if there is no such table."""
        async with self._engine.connect() as connection:
            await self._begin(connection)
            return await connection.run_sync(lambda sync: _reflect(sync, name))

    async def columns(self, name: str) -> list[str] | None:
        table = await self.reflect(name)
        return None if table is None else [column.name for column in table.columns]

    async def rows(self, name: str, /, **where: object) -> list[Mapping[str, Any]] | None:
        """Rows of table ``name`` whose columns equal ``where``; ``None`` if the table is missing
        or lacks one of the columns (or vanished meanwhile: other tests may share the server)."""
        table = await self.reflect(name)
        if table is None or any(column not in table.c for column in where):
            return None
        query = sa.select(table)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        try:
            async with self._engine.connect() as connection:
                await self._begin(connection)
                result = await connection.execute(query)
                return [dict(row) for row in result.mappings()]
        except sa.exc.DBAPIError:
            return None

    async def tables_holding(
        self, suffix: str, column: str, value: object, *, skip: Sequence[str] = ()
    ) -> list[str]:
        """Names of tables ending in ``suffix`` (other than ``skip``) with a row where
        ``column`` equals ``value``: where a row went if not where it belongs."""
        found = []
        for name in await self.table_names():
            if not name.endswith(suffix) or name in skip:
                continue
            rows = await self.rows(name, **{column: value})
            if rows:
                found.append(name)
        return found


def _reflect(connection: sa.Connection, name: str) -> sa.Table | None:
    metadata = sa.MetaData()
    try:
        metadata.reflect(connection, only=[name], resolve_fks=False)
    except sa.exc.InvalidRequestError:  # no such table
        return None
    except sa.exc.DBAPIError:  # dropped by someone else while we looked
        return None
    return metadata.tables.get(name)
