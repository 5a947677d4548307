"""Input checks at the boundary: each names the field and the rule, before anything is written.

Money has its own module (``qzpay.money``), time its own (``qzpay.timestamps``); these are
the remaining shapes a service argument can take.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, Final, TypeVar

from qzpay.errors import ValidationError

T = TypeVar("T")
S = TypeVar("S", bound=StrEnum)

_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+$")
_KEY: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_TENANT: Final = _KEY
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
MAX_METADATA_KEYS: Final = 50


class Unset:
    """The "argument not given" marker of update calls, where ``None`` means "clear it"."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset()


def storable_text(value: str, *, field: str) -> str:
    """``value`` if every adapter can store it: no NUL and no lone surrogate.

    PostgreSQL refuses both in text (SQLite and memory keep them), so without this check the
    same input would be stored on one adapter and fail on another, late and opaquely, after
    a provider was charged. Refusing it here makes every adapter answer alike, before any
    write or charge.

    >>> storable_text("Ann", field="name")
    'Ann'
    >>> storable_text("A\\x00nn", field="name")
    Traceback (most recent call last):
    ...
    qzpay.errors.ValidationError: name: must not contain U+0000 (NUL), found at position 1; PostgreSQL cannot store it in text
    """
    if value.isascii() and "\x00" not in value:  # nearly all text: no regex needed
        return value
    problem = _unstorable(value)
    if problem is not None:
        raise ValidationError(f"must not contain {problem}", field=field, rule="storable_text")
    return value


def _unstorable(value: str) -> str | None:
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    char = found.group()
    what = "U+0000 (NUL)" if char == "\x00" else f"U+{ord(char):04X} (a lone surrogate)"
    return f"{what}, found at position {found.start()}; PostgreSQL cannot store it in text"


def text(value: object, *, field: str, max_length: int = 500) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("must be a non-empty string", field=field, rule="required_text")
    if len(value) > max_length:
        raise ValidationError(
            f"must be at most {max_length} characters", field=field, rule="max_length"
        )
    return storable_text(value, field=field)


def optional_text(value: object, *, field: str, max_length: int = 500) -> str | None:
    return None if value is None else text(value, field=field, max_length=max_length)


def email(value: object, *, field: str = "email") -> str:
    value = text(value, field=field, max_length=320)
    if not _EMAIL.fullmatch(value):
        raise ValidationError(
            "must be an email address like ann@example.com", field=field, rule="email"
        )
    return value


def key(value: object, *, field: str) -> str:
    """An identifier-like key: entitlement and limit keys, external ids."""
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise ValidationError(
            "must be 1-64 characters of letters, digits, '_', '.', ':' or '-'",
            field=field,
            rule="key_format",
        )
    return value


def tenant_id(value: object) -> str:
    if not isinstance(value, str) or not _TENANT.fullmatch(value):
        raise ValidationError(
            "must be 1-64 characters of letters, digits, '_', '.', ':' or '-'",
            field="tenant_id",
            rule="tenant_id_format",
        )
    return value


def integer(value: object, *, field: str, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationError(
            f"must be an int from {minimum} to {maximum}", field=field, rule="int_range"
        )
    return value


def boolean(value: object, *, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError("must be True or False", field=field, rule="bool")
    return value


def identifier(value: object, *, field: str) -> uuid.UUID:
    """An id as returned by qzpay: a UUID, or its text."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValidationError("must be a qzpay id (a UUID)", field=field, rule="id_format")


def id_filters(**ids: object) -> dict[str, object]:
    """The list filters of the ids given (``None``: not filtered), each checked as an id.

    >>> id_filters(customer_id=None)
    {}
    """
    return {name: identifier(value, field=name) for name, value in ids.items() if value is not None}


def member(value: object, kind: type[S], *, field: str, what: str) -> S:
    """``value`` as one of the closed set ``kind`` (``"paid"`` -> ``InvoiceStatus.PAID``).

    ``what`` names the set in the message: ``status: is not a payment status``.
    """
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ValidationError(f"is not {what}", field=field, rule=field)


def metadata(value: object, *, field: str = "metadata") -> dict[str, str]:
    """Stripe-style metadata: up to 50 string keys with string values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("must be a mapping of str to str", field=field, rule="metadata")
    if len(value) > MAX_METADATA_KEYS:
        raise ValidationError(
            f"must have at most {MAX_METADATA_KEYS} keys", field=field, rule="metadata_size"
        )
    checked: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= 40:
            raise ValidationError(
                "keys must be strings of 1-40 characters", field=field, rule="metadata"
            )
        problem = _unstorable(name)
        if problem is not None:  # such a key cannot name the field: it is the bad text
            raise ValidationError(
                f"key {name!r} must not contain {problem}", field=field, rule="storable_text"
            )
        if not isinstance(item, str) or len(item) > 500:
            raise ValidationError(
                f"value of {name!r} must be a string of at most 500 characters",
                field=field,
                rule="metadata",
            )
        checked[name] = storable_text(item, field=f"{field}.{name}")
    return checked


def keys(value: object, *, field: str) -> tuple[str, ...]:
    """A list of distinct keys (entitlements), order kept."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValidationError("must be a list of keys", field=field, rule="key_list")
    seen: dict[str, None] = {}
    for item in value:
        seen[key(item, field=field)] = None
    return tuple(seen)


def limits(value: object, *, field: str = "limits") -> dict[str, int]:
    """Limit key → maximum (an int ≥ 0; -1 is not a thing: leave the key out for unlimited)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("must be a mapping of key to int", field=field, rule="limits")
    return {
        key(name, field=field): integer(item, field=f"{field}.{name}")
        for name, item in value.items()
    }


def given(value: T | Unset) -> bool:
    return value is not UNSET


def changed(before: Any, after: Any, names: Iterable[str]) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for the fields that differ: the audit log's ``changes``."""
    return {
        name: [getattr(before, name), getattr(after, name)]
        for name in names
        if getattr(before, name) != getattr(after, name)
    }


def audit_changes(before: Any, after: Any, names: Iterable[str]) -> dict[str, Any]:
    """``changed`` in JSON values (the audit row is JSON): moments in ISO 8601, enums by
    value, ids as text."""
    return {
        name: [_plain(old), _plain(new)]
        for name, (old, new) in changed(before, after, names).items()
    }


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
