"""Conversion between domain objects and driver rows, through cattrs, per dialect.

SQL adapters run compiled SQL straight on their driver (DESIGN §11), so the values they bind
must already be in the form SQLAlchemy itself would have stored: on SQLite a UUID is 32 hex
digits, a timestamp is naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` (which sorts and
compares correctly as text), a Decimal is its exact text, JSON is text. A reader going
through SQLAlchemy (the conformance suite's raw view, an app's own queries) therefore reads
the same values back.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Generic, TypeVar
from uuid import UUID

import cattrs

from qzpay.domain.registry import EntitySpec

E = TypeVar("E")


def _is_json(annotation: Any) -> bool:
    args = typing.get_args(annotation)
    if type(None) in args:
        annotation = next(arg for arg in args if arg is not type(None))
    origin = typing.get_origin(annotation) or annotation
    return origin in (tuple, list, dict, Mapping) or (
        isinstance(origin, type) and issubclass(origin, Mapping)
    )


def _to_json(value: Any) -> str | None:
    if value is None:
        return None
    if not value:  # most metadata is empty: skip the encoder
        return "{}" if isinstance(value, Mapping) else "[]"
    if type(value) is MappingProxyType:
        # Domain values hold read-only mappings; the C encoder takes only real dicts, and
        # anything else sends the whole value down the pure-Python path.
        value = value.copy()
    return _ENCODER.encode(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, UUID | Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=_json_default)


def _from_json(annotation: Any) -> Callable[[Any, Any], Any]:
    args = typing.get_args(annotation)
    optional = type(None) in args
    inner = next(arg for arg in args if arg is not type(None)) if optional else annotation
    as_tuple = (typing.get_origin(inner) or inner) is tuple

    def structure(value: Any, _: Any) -> Any:
        if value is None:
            return None
        loaded = json.loads(value) if isinstance(value, str | bytes) else value
        return tuple(loaded) if as_tuple else loaded

    return structure


def _sqlite_timestamp() -> Callable[[datetime], str]:
    """Naive-UTC text; the last value is remembered, since a call's timestamps are one ``now``."""
    last: list[tuple[datetime, str]] = []

    def encode(value: datetime) -> str:
        if last and last[0][0] is value:
            return last[0][1]
        text = (
            value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        )
        last[:] = [(value, text)]
        return text

    return encode


def sqlite_converter() -> cattrs.Converter:
    """Rows as SQLite (through SQLAlchemy's own storage formats) holds them."""
    converter = cattrs.Converter()
    converter.register_unstructure_hook(UUID, lambda value: value.hex)
    converter.register_structure_hook(UUID, lambda value, _: UUID(hex=value))
    converter.register_unstructure_hook(datetime, _sqlite_timestamp())
    converter.register_structure_hook(
        datetime, lambda value, _: datetime.fromisoformat(value).replace(tzinfo=UTC)
    )
    converter.register_unstructure_hook(Decimal, str)
    converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))
    converter.register_structure_hook(bool, lambda value, _: bool(value))
    converter.register_unstructure_hook_func(_is_json, _to_json)
    converter.register_structure_hook_factory(_is_json, _from_json)
    return converter


def postgres_converter() -> cattrs.Converter:
    """Rows as asyncpg binds and returns them: native uuid, timestamptz, numeric; JSON as text.

    asyncpg hands back its own UUID subclass; domain objects get the standard ``uuid.UUID``.
    """
    converter = cattrs.Converter()
    converter.register_unstructure_hook(UUID, lambda value: value)
    converter.register_structure_hook(UUID, lambda value, _: UUID(bytes=value.bytes))
    converter.register_unstructure_hook(datetime, lambda value: value)
    converter.register_structure_hook(datetime, lambda value, _: value.astimezone(UTC))
    converter.register_unstructure_hook(Decimal, lambda value: value)
    converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))
    converter.register_unstructure_hook_func(_is_json, _to_json)
    converter.register_structure_hook_factory(_is_json, _from_json)
    return converter


class RowCodec(Generic[E]):
    """Turns one entity kind into bind parameters and driver rows back into the entity."""

    __slots__ = ("_columns", "_converter", "_kind", "_structure", "_types", "_unstructure")

    def __init__(
        self, spec: EntitySpec[E], converter: cattrs.Converter, columns: Sequence[str]
    ) -> None:
        self._kind = spec.kind
        self._columns = tuple(columns)
        self._converter = converter
        self._types = typing.get_type_hints(spec.kind)
        self._unstructure = converter.get_unstructure_hook(spec.kind)
        self._structure = converter.get_structure_hook(spec.kind)

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def params(self, entity: E) -> dict[str, Any]:
        return self._unstructure(entity)  # type: ignore[no-any-return]

    def value(self, column: str, stored: Any) -> Any:
        """One column's stored value as the domain holds it (an aggregate's group key)."""
        return None if stored is None else self._converter.structure(stored, self._types[column])

    def entity(self, row: Sequence[Any]) -> E:
        return self._structure(dict(zip(self._columns, row, strict=True)), self._kind)  # type: ignore[no-any-return]
