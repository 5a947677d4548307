"""Rules every storage adapter applies the same way, kept in one place.

Table prefixes, scope checks on written entities, cursors, list limits and the wording of
storage errors: the memory and SQL adapters call these instead of each writing their own,
so they refuse the same inputs with the same errors.
"""

from __future__ import annotations

import re
import typing
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from qzpay.contracts.storage import Filters, Scope
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode
from qzpay.domain.registry import EntitySpec
from qzpay.errors import (
    ConfigurationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    ValidationError,
)
from qzpay.timestamps import aware_utc

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


_TIMESTAMP_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _timestamp_fields(kind: type[Any]) -> tuple[str, ...]:
    found = _TIMESTAMP_FIELDS.get(kind)
    if found is None:
        hints = typing.get_type_hints(kind)
        found = _TIMESTAMP_FIELDS[kind] = tuple(
            field.name
            for field in attrs.fields(kind)
            if hints[field.name] is datetime or datetime in typing.get_args(hints[field.name])
        )
    return found


def check_timestamps(entity: Any) -> None:
    """Every datetime column of a written row must be timezone-aware."""
    for name in _timestamp_fields(type(entity)):
        value = getattr(entity, name)
        if value is not None:
            aware_utc(value, field=name)


def check_filters(spec: EntitySpec[Any], filters: Filters | None) -> None:
    for name in filters or ():
        if name not in spec.fields:
            raise ValidationError(
                f"is not a column of {spec.table}", field=name, rule="known_column"
            )


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
        f"a {spec.name} with this {names} already exists", field=names, rule="unique"
    )


def missing(spec: EntitySpec[Any], entity_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"no {spec.name} with id {entity_id}", field="id", rule="exists")


def stale(spec: EntitySpec[Any], entity_id: uuid.UUID, expected: int) -> ConflictError:
    return ConflictError(
        f"{spec.name} {entity_id} changed since version {expected} was read; read it again",
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


def check_redemption(code: PromoCode, customer_redemptions: int) -> None:
    """Refuse a redemption past the code's limits (checked under the code's lock)."""
    if code.max_redemptions is not None and code.times_redeemed >= code.max_redemptions:
        raise InvalidStateError(
            f"promo code {code.code!r} reached its {code.max_redemptions} redemptions",
            field="promo_code",
            rule="max_redemptions",
        )
    per_customer = code.max_redemptions_per_customer
    if per_customer is not None and customer_redemptions >= per_customer:
        raise InvalidStateError(
            f"this customer already redeemed {code.code!r} {per_customer} time(s)",
            field="promo_code",
            rule="max_redemptions_per_customer",
        )


def check_refund(payment: Payment, refund: Refund) -> None:
    """Refuse a refund that would take the refunded total past the payment's amount."""
    if refund.currency != payment.currency:
        raise ValidationError(
            f"must be the payment's currency {payment.currency}",
            field="currency",
            rule="same_currency",
        )
    if payment.refunded_amount + refund.amount > payment.amount:
        raise refund_too_large(payment)


def refund_too_large(payment: Payment) -> ValidationError:
    left = payment.amount - payment.refunded_amount
    return ValidationError(
        f"would refund more than the payment: at most {left} is left to refund",
        field="amount",
        rule="refund_within_payment",
    )


def dangling(spec: EntitySpec[Any], column: str) -> ValidationError:
    return ValidationError(
        f"does not point at an existing row of {spec.references[column]} in this scope",
        field=column,
        rule="reference",
    )
