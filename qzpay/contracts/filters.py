"""The closed set of filter operators every storage adapter implements.

A filter maps a column to a plain value (equality; ``None`` means ``IS NULL``) or to one
``Condition`` built here. The set is deliberately small, so a third-party adapter (SQL or a
key-value store) implements it in an afternoon and the conformance suite checks each
operator on each way rows are read:

>>> from datetime import datetime, UTC
>>> filters = {
...     "status": one_of(["active", "past_due"]),
...     "amount": at_least(100),
...     "created_at": within(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC)),
...     "deleted_at": is_null(),
...     "currency": "USD",
... }
>>> filters["amount"]
Condition(op=<Op.GTE: 'gte'>, value=100)

Comparisons follow SQL: a row whose column is NULL matches no comparison and no ``one_of``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs


class Op(enum.StrEnum):
    """Every operator a filter may use; nothing else is accepted."""

    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    WITHIN = "within"  # lower <= column < upper
    IN = "in"
    IS_NULL = "is_null"
    NOT_NULL = "not_null"


@attrs.frozen
class Condition:
    """One operator and its operand (a tuple for ``WITHIN`` and ``IN``, ``None`` for the null
    tests)."""

    op: Op
    value: Any = None


def below(value: object) -> Condition:
    """``column < value``."""
    return Condition(Op.LT, value)


def at_most(value: object) -> Condition:
    """``column <= value``."""
    return Condition(Op.LTE, value)


def above(value: object) -> Condition:
    """``column > value``."""
    return Condition(Op.GT, value)


def at_least(value: object) -> Condition:
    """``column >= value``."""
    return Condition(Op.GTE, value)


def within(lower: object, upper: object) -> Condition:
    """``lower <= column < upper``: a half-open range, so consecutive ranges never overlap."""
    return Condition(Op.WITHIN, (lower, upper))


def one_of(values: Iterable[object]) -> Condition:
    """``column IN (values)``; an empty collection matches nothing."""
    return Condition(Op.IN, tuple(values))


def is_null() -> Condition:
    """``column IS NULL`` (the same as filtering on ``None``)."""
    return Condition(Op.IS_NULL)


def not_null() -> Condition:
    """``column IS NOT NULL``."""
    return Condition(Op.NOT_NULL)


def matches(condition: object, value: object) -> bool:
    """Whether a column holding ``value`` passes ``condition`` (a plain value: equality).

    The reference semantics, used by MemoryStorage and documented for adapter authors.
    """
    if not isinstance(condition, Condition):
        return value is None if condition is None else value == condition
    op, operand = condition.op, condition.value
    if op is Op.IS_NULL:
        return value is None
    if op is Op.NOT_NULL:
        return value is not None
    if value is None:
        return False
    if op is Op.IN:
        return value in operand
    compared: Any = value
    if op is Op.LT:
        return bool(compared < operand)
    if op is Op.LTE:
        return bool(compared <= operand)
    if op is Op.GT:
        return bool(compared > operand)
    if op is Op.GTE:
        return bool(compared >= operand)
    lower, upper = operand
    return bool(lower <= compared < upper)
