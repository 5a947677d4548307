"""What every SQL store keeps: its schema, the statements compiled for it, row codecs, and
its count of openers.

SQLiteStorage and PostgresStorage differ in how they reach their driver; what they build
from the prefix, the tenancy mode, the dialect and the converter is the same, and lives here.
So does counting ``open``/``close``: one storage is often shared (an app's lifespan and a
worker, two facades), and the first user to leave must not close it under the others.
"""

from __future__ import annotations

from typing import Any, TypeVar

import anyio
import cattrs
from sqlalchemy.engine import Dialect

from qzpay.adapters.sql.rows import RowCodec
from qzpay.adapters.sql.schema import Schema, build_schema
from qzpay.adapters.sql.statements import Statements
from qzpay.domain.registry import SPECS, spec_for

E = TypeVar("E")


class SqlStoreBase:
    """The schema for one prefix and tenancy mode, its statement cache and its row codecs."""

    def __init__(
        self, table_prefix: str, multi_tenant: bool, dialect: Dialect, converter: cattrs.Converter
    ) -> None:
        self._schema: Schema = build_schema(table_prefix, multi_tenant=multi_tenant)
        self._statements = Statements(self._schema, dialect)
        self._converter = converter
        self._codecs: dict[type[Any], RowCodec[Any]] = {
            spec.kind: RowCodec(spec, converter, self._statements.columns(spec)) for spec in SPECS
        }
        self._opens = 0
        self._opening = anyio.Lock()

    async def open(self) -> None:
        """Connect on the first open; every later one only counts (pair each with ``close``).

        The lock makes concurrent first opens connect once.
        """
        async with self._opening:
            if self._opens == 0:
                await self._connect()
            self._opens += 1

    async def close(self) -> None:
        """Count one user out; the last one out disconnects. Closing a closed store is a no-op."""
        with anyio.CancelScope(shield=True):  # a half-done close would leak the connection
            async with self._opening:
                if self._opens == 0:
                    return
                self._opens -= 1
                if self._opens == 0:
                    await self._disconnect()

    @property
    def opened(self) -> int:
        """How many opens are not yet matched by a close (0: closed)."""
        return self._opens

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    @property
    def table_prefix(self) -> str:
        return self._schema.prefix

    @property
    def multi_tenant(self) -> bool:
        return self._schema.multi_tenant

    @property
    def statements(self) -> Statements:
        return self._statements

    def codec(self, kind: type[E]) -> RowCodec[E]:
        codec = self._codecs.get(kind)
        if codec is None:
            spec_for(kind)  # raises the clear TypeError for a type that is not stored
        return codec  # type: ignore[return-value]

    def encode(self, value: object) -> Any:
        """A parameter value in the form this dialect's columns hold it."""
        return self._converter.unstructure(value)
