"""The StoragePort: a small, generic port that a third-party adapter can write in a day.

Every read and write happens inside a transaction opened for one ``Scope`` (a livemode and,
in multi-tenant mode, a tenant). The scope is given once, when the transaction opens, and
the adapter applies it to every statement: a transaction can neither see nor touch a row of
another livemode or tenant, even by its exact id. This is where tenancy and livemode
isolation live, so no service can forget them.

Operations are generic per entity kind (a domain type registered in
``qzpay.domain.registry``): get, find by unique key, list with filters and a cursor, count,
insert, update with expected version, soft delete.

Writes may be buffered by the adapter and sent at the next read, at ``flush()`` or at
commit, so a constraint violation (``ConflictError``) may surface at any of those points;
it always surfaces before the transaction reports success, and nothing of a failed
transaction is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable
from uuid import UUID

import attrs

from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.subscriptions import Subscription

E = TypeVar("E")
T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Scope:
    """Which side of the livemode wall, and which tenant, a transaction works for.

    ``tenant_id`` is ``None`` exactly when the store is single-tenant.
    """

    livemode: bool
    tenant_id: str | None = None


@attrs.frozen(kw_only=True)
class Page(Generic[T]):
    """One page of a list, newest first; pass ``next_cursor`` back to get the next one."""

    items: Sequence[T]
    next_cursor: str | None = None

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


Filters = Mapping[str, object]
"""Equality filters on columns; a value of ``None`` matches SQL NULL."""


@runtime_checkable
class StorageTransaction(Protocol):
    """A unit of work bound to one scope; all or nothing."""

    @property
    def scope(self) -> Scope: ...

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        """The row with this id in scope, or ``None`` (also for another tenant's id)."""
        ...

    async def get_many(self, *keys: tuple[type[Any], UUID]) -> Sequence[Any | None]:
        """Several rows by ``(kind, id)`` at once, in order, ``None`` where one is missing.

        The same as a ``get`` per key, but a server database answers it in one round trip
        and one snapshot: a service that needs a customer, a price and a card asks once.
        """
        ...

    async def find(
        self, kind: type[E], *, include_deleted: bool = False, **key: object
    ) -> E | None:
        """The one row whose columns equal ``key`` (typically a unique key), or ``None``."""
        ...

    async def list(
        self,
        kind: type[E],
        *,
        filters: Filters | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_deleted: bool = False,
    ) -> Page[E]:
        """Rows newest first (by time-ordered id); stable under concurrent inserts."""
        ...

    async def count(
        self, kind: type[E], *, filters: Filters | None = None, include_deleted: bool = False
    ) -> int: ...

    async def insert(self, entity: E) -> None:
        """Store a new row; a taken unique key raises ``ConflictError`` naming the key."""
        ...

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        """Replace the stored row (found by ``entity.id`` in scope) with ``entity``.

        For optimistically locked kinds the row is written only if its stored version equals
        ``expected_version`` (default: ``entity.version``, the version that was read); the
        returned entity carries the incremented version. A stale version raises
        ``ConflictError`` and changes nothing; a missing or deleted row ``NotFoundError``.
        ``id``, ``livemode``, ``tenant_id`` and ``created_at`` never change. Append-only
        kinds refuse.
        """
        ...

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        """Set ``deleted_at`` to ``at`` (the row stays, its version moves on).

        ``at`` comes from the caller's clock: storage never asks the wall clock. Append-only
        and non-deletable kinds refuse; a missing row raises ``NotFoundError``.
        """
        ...

    async def flush(self) -> None:
        """Send buffered writes now, so their errors surface here."""
        ...

    # -- the named atomic operations (DESIGN §5.6) ------------------------------------
    # Each is correct under concurrency (many tasks; on a server database many
    # connections) and takes effect with the transaction: rolled back with it.

    async def next_invoice_number(self) -> int:
        """The next number of this scope's gapless sequence: 1, 2, 3... never twice, no gap."""
        ...

    async def redeem_promo_code(self, usage: PromoCodeUsage) -> PromoCode:
        """Count one redemption of ``usage.promo_code_id`` and store ``usage``, only while
        under the code's ``max_redemptions`` and ``max_redemptions_per_customer``.

        Returns the code with its new ``times_redeemed``; a limit reached raises
        ``InvalidStateError`` (rule ``max_redemptions`` or ``max_redemptions_per_customer``),
        a missing code ``NotFoundError``.
        """
        ...

    async def add_refund(self, refund: Refund) -> Payment:
        """Store ``refund`` and add its amount to the payment's ``refunded_amount``, only
        while the total stays within the payment's ``amount``.

        Returns the payment as updated (version moved on); going beyond raises
        ``ValidationError`` (field ``amount``, rule ``refund_within_payment``).
        """
        ...

    async def claim_due_subscriptions(
        self, *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[Subscription]:
        """Claim up to ``limit`` subscriptions with ``due_at <= now`` that no one holds.

        A claim sets ``claimed_by=claimant`` and ``claimed_until=now + lease`` (and moves
        the version on); until then no other claimant gets them, so two workers never
        work on one subscription. Oldest due first.
        """
        ...

    async def store_idempotency_key(self, record: IdempotencyKey) -> IdempotencyKey:
        """Store ``record`` unless its key is taken in this scope; return what is stored."""
        ...


@runtime_checkable
class StoragePort(Protocol):
    """A store of billing records under one table prefix and tenancy mode."""

    @property
    def table_prefix(self) -> str: ...

    @property
    def multi_tenant(self) -> bool: ...

    async def open(self) -> None:
        """Connect and make sure the schema is there (or say how to create it)."""
        ...

    async def close(self) -> None: ...

    def transaction(
        self, scope: Scope, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[StorageTransaction]:
        """A unit of work for ``scope``: commits on normal exit, rolls back on an exception."""
        ...
