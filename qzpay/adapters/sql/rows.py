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
from types import MappingProxyType, UnionType
from typing import Any, Generic, TypeVar, Union
from uuid import UUID

import attrs
import cattrs
from cattrs.fns import identity

from qzpay.adapters import generated
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
        if value == "{}" or value == "[]":  # most metadata is empty: skip the decoder
            return () if as_tuple else ({} if value == "{}" else [])
        loaded = json.loads(value) if isinstance(value, str | bytes) else value
        return tuple(loaded) if as_tuple else loaded

    return structure


_REMEMBERED = 1024
"""Distinct values a converter remembers the form of before it starts afresh. A batch's rows
share a few timestamps (its ``now``, its periods' bounds) and ids (a plan, a price, rows read
again), and formatting or parsing them is most of what converting a row costs."""


def _remembering(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert`` (a pure function of an immutable, hashable value), remembering its answers."""
    known: dict[Any, Any] = {}

    def remembered(value: Any) -> Any:
        found = known.get(value)
        if found is None:
            if len(known) >= _REMEMBERED:
                known.clear()
            found = known[value] = convert(value)
        return found

    return remembered


def _sqlite_text(value: datetime) -> str:
    """Naive-UTC text, which sorts and compares as the moments do."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_moment(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _optional_hooks(converter: cattrs.Converter) -> None:
    """``X | None`` converted by X's own hook in one call.

    cattrs' default looks X's hook up again on every structured value; and a hook that is
    the identity (text, numbers, PostgreSQL's native types) is left out of the generated
    code altogether, so a row's optional columns cost nothing to unstructure.
    """

    def unstructure(union: Any) -> Callable[[Any], Any]:
        inner = converter.get_unstructure_hook(_inner(union))
        if inner is identity:
            return identity

        def optional(value: Any) -> Any:
            return None if value is None else inner(value)

        return optional

    def structure(union: Any) -> Callable[[Any, Any], Any]:
        kind = _inner(union)
        inner = converter.get_structure_hook(kind)

        def optional(value: Any, _: Any) -> Any:
            return None if value is None else inner(value, kind)

        return optional

    converter.register_unstructure_hook_factory(_simple_optional, unstructure)
    converter.register_structure_hook_factory(_simple_optional, structure)


def _inner(union: Any) -> Any:
    return next(arg for arg in typing.get_args(union) if arg is not type(None))


def _simple_optional(annotation: Any) -> bool:
    """``X | None`` of one X that is not JSON (JSON columns have their own hooks)."""
    args = typing.get_args(annotation)
    return (
        typing.get_origin(annotation) in (Union, UnionType)
        and len(args) == 2
        and type(None) in args
        and not _is_json(annotation)
    )


def sqlite_converter() -> cattrs.Converter:
    """Rows as SQLite (through SQLAlchemy's own storage formats) holds them."""
    converter = cattrs.Converter(detailed_validation=False)  # rows come from our own tables
    converter.register_unstructure_hook(UUID, lambda value: value.hex)
    uuid = _remembering(lambda value: UUID(hex=value))
    converter.register_structure_hook(UUID, lambda value, _: uuid(value))
    converter.register_unstructure_hook(datetime, _remembering(_sqlite_text))
    moment = _remembering(_sqlite_moment)
    converter.register_structure_hook(datetime, lambda value, _: moment(value))
    converter.register_unstructure_hook(Decimal, str)
    converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))
    converter.register_structure_hook(bool, lambda value, _: bool(value))
    converter.register_unstructure_hook_func(_is_json, _to_json)
    converter.register_structure_hook_factory(_is_json, _from_json)
    _optional_hooks(converter)
    return converter


def postgres_converter() -> cattrs.Converter:
    """Rows as asyncpg binds and returns them: native uuid, timestamptz, numeric; JSON as text.

    asyncpg hands back its own UUID subclass; domain objects get the standard ``uuid.UUID``.
    """
    converter = cattrs.Converter(detailed_validation=False)  # rows come from our own tables
    converter.register_unstructure_hook(UUID, identity)
    converter.register_structure_hook(UUID, lambda value, _: UUID(bytes=value.bytes))
    converter.register_unstructure_hook(datetime, identity)
    converter.register_structure_hook(datetime, _utc)
    converter.register_unstructure_hook(Decimal, identity)
    converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))
    converter.register_unstructure_hook_func(_is_json, _to_json)
    converter.register_structure_hook_factory(_is_json, _from_json)
    _optional_hooks(converter)
    return converter


def _utc(value: datetime, _: Any) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


_AS_STORED = (str, int, str | None, int | None)
"""Column types whose driver value is already the domain's: read as they come."""


def _row_reader(kind: type[E], converter: cattrs.Converter, columns: Sequence[str]) -> Any:
    """A function from one driver row (its values in ``columns`` order) to the entity.

    Each column goes through the converter's hook for its type, as cattrs' own dict
    structuring would do, but by position: no dict per row, no per-key membership tests, and
    the columns that need no conversion are passed as they are. Generated once per kind.
    """
    hints = typing.get_type_hints(kind)
    aliases = {field.name: field.alias for field in attrs.fields(kind)}  # type: ignore[arg-type]
    names: dict[str, Any] = {"__kind": kind}
    arguments = []
    for index, column in enumerate(columns):
        annotation = hints[column]
        if annotation in _AS_STORED:
            value = f"row[{index}]"
        else:
            names[f"__h{index}"] = converter.get_structure_hook(annotation)
            names[f"__t{index}"] = annotation
            value = f"__h{index}(row[{index}], __t{index})"
        arguments.append(f"{aliases[column]}={value}")
    lines = ["def read(row):", f"    return __kind({', '.join(arguments)})"]
    return generated.function("read", lines, names, label=f"row reader {kind.__name__}")


class RowCodec(Generic[E]):
    """Turns one entity kind into bind parameters and driver rows back into the entity."""

    __slots__ = ("_columns", "_converter", "_read", "_types", "_unstructure")

    def __init__(
        self, spec: EntitySpec[E], converter: cattrs.Converter, columns: Sequence[str]
    ) -> None:
        self._columns = tuple(columns)
        self._converter = converter
        self._types = typing.get_type_hints(spec.kind)
        self._unstructure = converter.get_unstructure_hook(spec.kind)
        self._read = _row_reader(spec.kind, converter, self._columns)

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def params(self, entity: E) -> dict[str, Any]:
        return self._unstructure(entity)  # type: ignore[no-any-return]

    def value(self, column: str, stored: Any) -> Any:
        """One column's stored value as the domain holds it (an aggregate's group key)."""
        return None if stored is None else self._converter.structure(stored, self._types[column])

    def entity(self, row: Sequence[Any]) -> E:
        return self._read(row)  # type: ignore[no-any-return]
