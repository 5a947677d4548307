"""Immutable containers for the mapping and sequence fields of domain values.

Domain values are frozen attrs classes, but a frozen class holding a ``dict`` is only
frozen on the surface: ``customer.metadata["tier"] = "gold"`` would change the object, and
in a store that hands out what it keeps (MemoryStorage) the stored row too, with no version
bump. Every mapping field is therefore converted, on construction, into a read-only copy
(nested dicts and lists too), so no caller can change a value another caller holds.

>>> from qzpay.domain.customers import Customer
>>> import uuid, datetime
>>> now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
>>> ann = Customer(id=uuid.uuid4(), livemode=False, email="ann@example.com",
...                metadata={"tier": "silver"}, created_at=now, updated_at=now)
>>> ann.metadata["tier"] = "gold"
Traceback (most recent call last):
...
TypeError: 'mappingproxy' object does not support item assignment
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_ATOMS = frozenset({str, int, bool, float, type(None)})
"""Types that are immutable already: checked by exact type first, as the abc checks below
are slow and every row read back from a database goes through here."""


def _freeze(value: Any) -> Any:
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is list or kind is tuple:  # before the abc check, which is slow for them
        atoms = _ATOMS
        return tuple(item if type(item) in atoms else _freeze(item) for item in value)
    if isinstance(value, Mapping):
        return frozen_mapping(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(value)
    return value


def frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only deep copy of ``value`` (the attrs converter of every mapping field)."""
    if not value:
        return _EMPTY
    atoms = _ATOMS
    return MappingProxyType(
        {key: item if type(item) in atoms else _freeze(item) for key, item in value.items()}
    )


def optional_frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else frozen_mapping(value)


def frozen_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    """A tuple of read-only items (the converter of every sequence field)."""
    return tuple(_freeze(item) for item in values)
