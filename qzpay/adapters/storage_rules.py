"""What every storage adapter checks and refuses the same way, kept in one place.

Table prefixes, scope checks on written entities, storable values, filters, cursors, list
and claim limits, and the wording of storage errors: the memory and SQL adapters call these
instead of each writing their own, so they refuse the same inputs with the same errors.
Business rules (a refund cap, a promo limit) are not here: they live in the domain, and the
services enforce them by composing the port's atomic primitives.
"""

from __future__ import annotations

import re
import typing
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType, MemberDescriptorType
from typing import Any, TypeVar

import attrs

from qzpay.adapters import generated
from qzpay.contracts.filters import Condition, Op
from qzpay.contracts.storage import Filters, Scope
from qzpay.domain.registry import LEASE_COLUMNS, EntitySpec, UniqueKey
from qzpay.errors import (
    ConfigurationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    ValidationError,
)
from qzpay.timestamps import aware_utc
from qzpay.validation import storable_text as storable_text  # one rule for services and stores

E = TypeVar("E")
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")
MAX_PAGE_SIZE = 100


def table_prefix(value: object) -> str:
    """A prefix that is safe to put in SQL unquoted; checked before any SQL is built."""
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise ValidationError(
            "must match ^[a-z_][a-z0-9_]{0,30}$ (lower-case letters, digits, underscores)",
            field="table_prefix",
            rule="sql_identifier",
        )
    return value


def check_scope(scope: Scope, multi_tenant: bool) -> None:
    """A transaction's scope must match the store's tenancy mode."""
    if multi_tenant and scope.tenant_id is None:
        raise ConfigurationError("a multi-tenant store needs a tenant_id in every scope")
    if not multi_tenant and scope.tenant_id is not None:
        raise ConfigurationError("a single-tenant store cannot take a tenant_id")


def check_entity_scope(entity: Any, scope: Scope) -> None:
    """Refuse to write a row that claims another livemode or tenant than the transaction's."""
    if entity.livemode is not scope.livemode:
        raise ValidationError(
            f"is {entity.livemode} but the transaction is for livemode={scope.livemode}",
            field="livemode",
            rule="scope",
        )
    if entity.tenant_id != scope.tenant_id:
        raise ValidationError(
            "does not match the transaction's tenant", field="tenant_id", rule="scope"
        )


@attrs.frozen
class _Columns:
    """The columns of one kind whose values storage checks before writing them."""

    timestamps: tuple[str, ...]
    texts: tuple[str, ...]
    mappings: tuple[str, ...]
    integers: frozenset[str]


_COLUMNS: dict[type[Any], _Columns] = {}


def _has(annotation: Any, wanted: type[Any]) -> bool:
    return annotation is wanted or wanted in typing.get_args(annotation)


def _columns(kind: type[Any]) -> _Columns:
    found = _COLUMNS.get(kind)
    if found is None:
        hints = typing.get_type_hints(kind)
        names = [field.name for field in attrs.fields(kind)]

        def typed(wanted: type[Any]) -> tuple[str, ...]:
            return tuple(name for name in names if _has(hints[name], wanted))

        mappings = tuple(
            name
            for name in names
            if any(
                (typing.get_origin(arg) or arg) in (Mapping, dict)
                for arg in (hints[name], *typing.get_args(hints[name]))
            )
        )
        texts = tuple(
            name for name in names if _has(hints[name], str) or "tuple[str" in str(hints[name])
        )
        integers = frozenset(name for name in typed(int) if not _has(hints[name], bool))
        found = _COLUMNS[kind] = _Columns(typed(datetime), texts, mappings, integers)
    return found


def _plain(text: str) -> bool:
    """Storable without looking closer: ASCII and no NUL (nearly all text)."""
    return text.isascii() and "\x00" not in text


def _inner(field: str, key: object) -> str:
    return f"{field}.{key!s}"[:200]


def _storable(value: Any) -> bool:
    """Whether ``value`` (text, or a mapping or sequence holding some) is plain text
    throughout: ASCII with no NUL. Nearly every written value is, so this answers without
    building a field name per item, which only a refusal needs (``_check_storable``)."""
    if isinstance(value, str):  # also a str enum (a status, a currency)
        return _plain(value)
    kind = type(value)
    if kind is tuple or kind is list:
        for item in value:
            if type(item) is str:
                if not item.isascii() or "\x00" in item:
                    return False
            elif not _storable(item):
                return False
        return True
    if kind is MappingProxyType or kind is dict or isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or "\x00" in key:
                return False
            kind = type(item)
            if kind is str:
                if not item.isascii() or "\x00" in item:
                    return False
            elif item is not None and kind is not int and kind is not bool and not _storable(item):
                return False
        return True
    return True


def _check_storable(value: Any, field: str) -> None:
    """Refuse text no database can store in ``value``, naming where it is (the slow path
    behind ``_storable``: also non-ASCII text that every database can store)."""
    kind = type(value)
    if isinstance(value, str):  # also a str enum
        if not _plain(value):
            storable_text(value, field=field)
    elif kind is MappingProxyType or kind is dict or isinstance(value, Mapping):
        for key, item in value.items():
            text = key if type(key) is str else str(key)
            if not _plain(text):
                storable_text(text, field=_inner(field, key))
            kind = type(item)
            if kind is str:
                if not _plain(item):
                    storable_text(item, field=_inner(field, key))
            elif item is not None and kind is not int and kind is not bool:
                _check_storable(item, _inner(field, key))
    elif kind is tuple or kind is list:
        for item in value:
            _check_storable(item, field)


def check_values(entity: Any) -> None:
    """What every written row must hold: timezone-aware datetimes, and text (also inside
    metadata) that every database can store."""
    checker = _CHECKERS.get(type(entity))
    if checker is None:
        checker = _CHECKERS[type(entity)] = _checker(type(entity))
    checker(entity)


_CHECKERS: dict[type[Any], Any] = {}


def _checker(kind: type[Any]) -> Any:
    """``check_values`` for one kind, as straight-line code (generated once): it runs on every
    row written, and a loop over the kind's columns costs more than the checks themselves."""
    columns = _columns(kind)
    lines = ["def check(entity):"]
    for name in columns.timestamps:
        lines += [
            f"    value = entity.{name}",
            "    if value is not None and value.tzinfo is not UTC:",
            f"        aware_utc(value, field={name!r})",
        ]
    for name in columns.texts:
        lines += [
            f"    value = entity.{name}",
            "    if isinstance(value, str):  # also a str enum (a status)",
            "        if not value.isascii() or '\\x00' in value:",
            f"            storable_text(value, field={name!r})",
            "    elif value is not None and not storable(value):",
            f"        check_storable(value, {name!r})",
        ]
    for name in columns.mappings:
        lines += [
            f"    value = entity.{name}",
            "    if value and not storable(value):",
            f"        check_storable(value, {name!r})",
        ]
    lines.append("    return None")
    names: dict[str, Any] = {
        "UTC": UTC,
        "aware_utc": aware_utc,
        "storable_text": storable_text,
        "check_storable": _check_storable,
        "storable": _storable,
    }
    return generated.function("check", lines, names, label=f"check_values {kind.__name__}")


def at_version(entity: E, version: int) -> E:
    """``entity`` as stored at ``version``: what an update returns.

    A copy of every field, not ``attrs.evolve``: the values were checked and converted when
    ``entity`` was made, and running its ``__init__`` again costs more than the update's SQL.
    """
    copier = _COPIERS.get(type(entity))
    if copier is None:
        copier = _COPIERS[type(entity)] = _copier(type(entity))
    return copier(entity, version)  # type: ignore[no-any-return]


_COPIERS: dict[type[Any], Any] = {}


def _copier(kind: type[Any]) -> Any:
    lines = ["def copy(entity, version):", "    made = new(kind)"]
    names: dict[str, Any] = {"new": object.__new__, "put": object.__setattr__, "kind": kind}
    for n, field in enumerate(attrs.fields(kind)):
        value = "version" if field.name == "version" else f"entity.{field.name}"
        slot = getattr(kind, field.name, None)
        if isinstance(slot, MemberDescriptorType):
            # The slot's own setter: the frozen class's __setattr__ refuses, and
            # object.__setattr__ looks the name up again for every field.
            names[f"set{n}"] = slot.__set__
            lines.append(f"    set{n}(made, {value})")
        else:
            lines.append(f"    put(made, {field.name!r}, {value})")
    lines.append("    return made")
    return generated.function("copy", lines, names, label=f"at_version {kind.__name__}")


def check_column(spec: EntitySpec[Any], name: str) -> None:
    if name not in spec.fields:
        raise ValidationError(f"is not a column of {spec.table}", field=name, rule="known_column")


def check_filters(spec: EntitySpec[Any], filters: Filters | None) -> None:
    """Known columns, and conditions from the closed set of ``qzpay.contracts.filters``."""
    for name, value in (filters or {}).items():
        check_column(spec, name)
        if isinstance(value, Condition):
            _check_condition(name, value)
        elif isinstance(value, list | set | frozenset | dict):
            raise ValidationError(
                "is a collection: use qzpay.contracts.filters.one_of(...) for IN",
                field=name,
                rule="filter",
            )


def _check_condition(name: str, condition: Condition) -> None:
    if not isinstance(condition.op, Op):
        raise ValidationError(
            f"{condition.op!r} is not a filter operator", field=name, rule="filter"
        )
    operand = condition.value
    if condition.op in (Op.IS_NULL, Op.NOT_NULL):
        return
    if condition.op is Op.WITHIN:
        ok = isinstance(operand, tuple) and len(operand) == 2 and None not in operand
    elif condition.op is Op.IN:
        ok = isinstance(operand, tuple) and None not in operand
    else:
        ok = operand is not None
    if not ok:
        raise ValidationError(
            f"{condition.op.value} needs {'two bounds' if condition.op is Op.WITHIN else 'a value'}"
            " that are not None",
            field=name,
            rule="filter",
        )


def check_aggregate(spec: EntitySpec[Any], group_by: Iterable[str], sums: Iterable[str]) -> None:
    for name in group_by:
        check_column(spec, name)
    integers = _columns(spec.kind).integers
    for name in sums:
        check_column(spec, name)
        if name not in integers:
            raise ValidationError(
                f"is not an integer column of {spec.table}: only integers are summed",
                field=name,
                rule="summable",
            )


def check_claimable(spec: EntitySpec[Any]) -> None:
    if not spec.claimable:
        raise ValidationError(
            f"{spec.table} rows cannot be claimed (no due_at, claimed_by, claimed_until)",
            field="kind",
            rule="claimable",
        )


def check_increment(spec: EntitySpec[Any], column: str, by: object, at_most: object) -> None:
    """An integer column of the kind, an int step, and a bound that is an int or a column."""
    check_column(spec, column)
    integers = _columns(spec.kind).integers
    if column not in integers or column in ("version", *LEASE_COLUMNS):
        raise ValidationError(
            f"is not a counter column of {spec.table}", field=column, rule="counter"
        )
    if isinstance(by, bool) or not isinstance(by, int):
        raise ValidationError("must be an int", field="by", rule="integer")
    if isinstance(at_most, str):
        check_column(spec, at_most)
        if at_most not in integers:
            raise ValidationError(
                f"is not an integer column of {spec.table}", field="at_most", rule="bound"
            )
    elif at_most is not None and (isinstance(at_most, bool) or not isinstance(at_most, int)):
        raise ValidationError(
            "must be an int, a column name or None", field="at_most", rule="bound"
        )


_SEQUENCE = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")


def sequence_name(name: object) -> str:
    if not isinstance(name, str) or not _SEQUENCE.fullmatch(name):
        raise ValidationError(
            "must be 1 to 100 lower-case letters, digits, '_', '.' or '-', starting with a letter",
            field="sequence",
            rule="sequence_name",
        )
    return name


MAX_NUMBERS = 1000
"""Most numbers one ``next_number`` call takes (a batch's, at most)."""


def number_count(count: object) -> int:
    """How many numbers a ``next_number`` call takes: an int from 1 to ``MAX_NUMBERS``."""
    if type(count) is not int or not 1 <= count <= MAX_NUMBERS:
        raise ValidationError(
            f"must be an integer from 1 to {MAX_NUMBERS}", field="count", rule="number_count"
        )
    return count


def unique_key_on(spec: EntitySpec[Any], on: Iterable[str]) -> UniqueKey:
    columns = tuple(on)
    key = spec.unique_key(columns)
    if key is None:
        raise ValidationError(
            f"is not a unique key of {spec.table}",
            field=", ".join(columns) or "on",
            rule="unique_key",
        )
    return key


def page_size(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(
            f"must be an int from 1 to {MAX_PAGE_SIZE}", field="limit", rule="page_size"
        )
    return limit


def encode_cursor(last_id: uuid.UUID) -> str:
    return last_id.hex


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(hex=cursor)
    except (ValueError, TypeError):
        raise ValidationError(
            "is not a cursor returned by a previous page", field="cursor", rule="cursor"
        ) from None


def refuse_append_only(spec: EntitySpec[Any], operation: str) -> None:
    if spec.append_only:
        raise InvalidStateError(
            f"{spec.table} is append-only: rows cannot be {operation}",
            field=spec.table,
            rule="append_only",
        )


def refuse_not_deletable(spec: EntitySpec[Any]) -> None:
    refuse_append_only(spec, "deleted")
    if not spec.soft_delete:
        raise InvalidStateError(
            f"{spec.table} rows are not deletable", field=spec.table, rule="soft_delete"
        )


def unique_conflict(spec: EntitySpec[Any], columns: Iterable[str]) -> ConflictError:
    """The error for a taken unique key, the same whoever noticed it (us or the database)."""
    names = ", ".join(columns)
    return ConflictError(
        f"a {spec.label} with this {names} already exists", field=names, rule="unique"
    )


def missing(spec: EntitySpec[Any], entity_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"no {spec.label} with id {entity_id}", field="id", rule="exists")


def stale(spec: EntitySpec[Any], entity_id: uuid.UUID, expected: int) -> ConflictError:
    return ConflictError(
        f"{spec.label} {entity_id} changed since version {expected} was read; read it again",
        field="version",
        rule="optimistic_lock",
    )


MAX_CLAIM = 1000


def claim_size(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM:
        raise ValidationError(
            f"must be an int from 1 to {MAX_CLAIM}", field="limit", rule="claim_size"
        )
    return limit


def dangling(spec: EntitySpec[Any], column: str) -> ValidationError:
    return ValidationError(
        f"does not point at an existing row of {spec.references[column]} in this scope",
        field=column,
        rule="reference",
    )
