"""The StoragePort: a small, generic port that a third-party adapter can write in a day.

Every read and write happens inside a transaction opened for one ``Scope`` (a livemode and,
in multi-tenant mode, a tenant). The scope is given once, when the transaction opens, and
the adapter applies it to every statement: a transaction can neither see nor touch a row of
another livemode or tenant, even by its exact id. This is where tenancy and livemode
isolation live, so no service can forget them. The one way across tenants is
``StoragePort.across_tenants``: two reads, nothing else (see there).

Operations are generic per entity kind (a domain type registered in
``qzpay.domain.registry``). Business rules (a refund cap, a promo limit) are not here: the
services compose the atomic primitives (``claim``, ``increment``, ``next_number``,
``insert_or_get``) and enforce the rules in the domain. ``docs/adapter-authors.md`` says how
each method maps onto a key-value store with conditional writes.

The rules every adapter keeps, each checked by the conformance suite on every method it
applies to:

- **Scope.** Every read (``get``, ``get_many``, ``find``, ``list``, ``count``,
  ``aggregate``, ``claim``, ``increment``, ``insert_or_get``) sees only rows of the
  transaction's livemode and tenant; a row of another scope is reported exactly as a row that
  does not exist. Every write refuses a row whose ``livemode``/``tenant_id`` differ from the
  scope, and a reference (a ``*_id`` column the registry names) to a row outside the scope,
  on insert and on update alike.
- **Soft deletes.** A soft-deleted row is invisible to every read and to every write that
  finds a row by id (``update``, ``soft_delete``, ``increment``, ``claim``) unless the method
  takes ``include_deleted=True`` and it is given; it frees its unique keys. References may
  still point at it (the books keep it).
- **Readonly.** A transaction opened ``readonly=True`` refuses every write method
  (``insert``, ``update``, ``soft_delete``, ``claim``, ``increment``, ``next_number``,
  ``insert_or_get``) with ``ConfigurationError`` before anything reaches the database.
- **Storable values.** Every write (``insert``, ``update``, ``insert_or_get``) refuses a row
  with a naive datetime, or with text (metadata keys and values included) holding a NUL or a
  lone surrogate, with ``ValidationError`` naming the field (``name``, ``metadata.tier``) and
  rule ``storable_text``: what one database cannot keep, no adapter keeps.
- **Immutability.** A returned entity is the adapter's copy: nothing a caller does to it
  changes what is stored, and no two calls hand out one mutable object.
- **Atomicity.** Writes may be buffered and sent at the next read, at ``flush()`` or at
  commit, so a refusal (``ConflictError``, ``ValidationError``, ``NotFoundError``) may
  surface at any of those points; it always surfaces before the transaction reports
  success. Whatever was read or flushed before, a transaction that fails (an exception, a
  cancellation, a refusal at commit) keeps none of its writes, and one that commits keeps
  all of them, however many (thousands in one transaction are normal: a renewal batch).
- **Reads see the transaction's own writes**, buffered or not.
- **Failures.** Every error is a ``QZPayError``: a refusal as above, ``StorageError`` when
  the database failed (``retryable`` says whether nothing happened and trying again may
  help), or ``OutcomeUnknownError`` when a commit may or may not have happened (a lost
  connection at or after COMMIT): never retry that blindly. No driver exception escapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable
from uuid import UUID

import attrs

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
    """One page of a list, newest first; pass ``next_cursor`` back to get the next one.

    ``next_cursor`` is ``None`` exactly when no row comes after this page (at the time of
    the read): the last page says so itself, without an empty page after it.
    """

    items: Sequence[T]
    next_cursor: str | None = None

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


Filters = Mapping[str, object]
"""Column → a plain value (equality; ``None`` matches NULL) or a ``qzpay.contracts.filters``
``Condition`` (ranges, ``IN``, ``IS NULL``). A column the kind does not have is a
``ValidationError`` naming it."""


@attrs.frozen(kw_only=True)
class Group:
    """One group of an ``aggregate``: the grouped columns' values, the row count, the sums."""

    key: Mapping[str, Any]
    count: int
    sums: Mapping[str, int]


@runtime_checkable
class StorageTransaction(Protocol):
    """A unit of work bound to one scope; all or nothing. Fifteen methods, no more."""

    @property
    def scope(self) -> Scope: ...

    # -- reads ---------------------------------------------------------------------------

    async def get(self, kind: type[E], id: UUID, *, include_deleted: bool = False) -> E | None:
        """The row with this id in scope, or ``None`` (also for another scope's id)."""
        ...

    async def get_many(self, *keys: tuple[type[Any], UUID]) -> Sequence[Any | None]:
        """Several rows by ``(kind, id)`` at once, in order, ``None`` where one is missing.

        The same as a ``get`` per key (deleted rows are missing), but a server database
        answers it in one round trip: a service that needs a customer, a price and a card
        asks once.
        """
        ...

    async def find(
        self, kind: type[E], *, include_deleted: bool = False, **key: object
    ) -> E | None:
        """The newest row whose columns equal ``key`` (typically a unique key), or ``None``."""
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
        """Rows matching ``filters``, newest first (by time-ordered id), at most ``limit``
        (1 to 100).

        Stable under concurrent inserts: following ``next_cursor`` never returns a row twice
        and never skips a row that existed at the first page. A cursor is opaque; one that
        this adapter did not hand out is a ``ValidationError`` (field ``cursor``).
        """
        ...

    async def count(
        self, kind: type[E], *, filters: Filters | None = None, include_deleted: bool = False
    ) -> int:
        """How many rows match ``filters``."""
        ...

    async def aggregate(
        self,
        kind: type[E],
        *,
        group_by: Sequence[str] = (),
        sums: Sequence[str] = (),
        filters: Filters | None = None,
        include_deleted: bool = False,
    ) -> Sequence[Group]:
        """Counts and integer sums of the rows matching ``filters``, computed by the store.

        One ``Group`` per distinct combination of the ``group_by`` columns that has rows,
        ordered by those values ascending (NULL first); with no ``group_by``, exactly one
        group (count 0 and sums 0 when nothing matches). A sum over no non-NULL value is 0.
        ``sums`` must name integer columns (money in minor units, counters).
        """
        ...

    # -- writes --------------------------------------------------------------------------

    async def insert(self, entity: E) -> None:
        """Store a new row; a taken unique key (or id) raises ``ConflictError`` naming it."""
        ...

    async def update(self, entity: E, *, expected_version: int | None = None) -> E:
        """Replace the stored row (found by ``entity.id`` in scope) with ``entity``.

        For optimistically locked kinds the row is written only if its stored version equals
        ``expected_version`` (default: ``entity.version``, the version that was read); the
        returned entity carries the incremented version. A stale version raises
        ``ConflictError`` and changes nothing; a missing or deleted row ``NotFoundError``.
        ``id``, ``livemode``, ``tenant_id`` and ``created_at`` never change, and neither do a
        claimable kind's lease columns (``claimed_by``, ``claimed_until``: only ``claim``
        writes them). Append-only kinds refuse with ``InvalidStateError``.
        """
        ...

    async def soft_delete(
        self, kind: type[E], id: UUID, *, at: datetime, expected_version: int | None = None
    ) -> None:
        """Set ``deleted_at`` (and ``updated_at``) to ``at``; the row stays, its version
        moves on.

        ``at`` comes from the caller's clock: storage never asks the wall clock for business
        time. Append-only and non-deletable kinds refuse with ``InvalidStateError``; a missing
        (or already deleted) row raises ``NotFoundError``; a stale ``expected_version``
        ``ConflictError``.
        """
        ...

    async def flush(self) -> None:
        """Send buffered writes now, so their refusals surface here; still all or nothing."""
        ...

    # -- atomic primitives: correct under concurrency (many tasks; on a server database
    # many connections), and taking effect with the transaction: rolled back with it. ----

    async def claim(
        self, kind: type[E], *, now: datetime, limit: int, claimant: str, lease: timedelta
    ) -> Sequence[E]:
        """Claim up to ``limit`` (1 to 1000) rows of a claimable kind (one with ``due_at``,
        ``claimed_by`` and ``claimed_until``) that are due (``due_at <= now``) and that no
        live lease holds.

        Returns them oldest due first (then by id), carrying ``claimed_by=claimant`` and
        ``claimed_until`` = the lease's end. Until then no other claim returns them, so two
        workers never work on one row at once; concurrent claimants get disjoint rows.
        A claim does not move the row's version or ``updated_at`` (a user's edit during a job
        run must not fail); ``update`` never touches the lease. Leases are measured on the
        database's clock where there is one (``claimed_until`` is then the server's time
        plus ``lease``), otherwise from ``now``; a lease of zero ends at once.
        """
        ...

    async def increment(
        self,
        kind: type[E],
        id: UUID,
        column: str,
        by: int,
        *,
        at_most: int | str | None = None,
        at: datetime | None = None,
    ) -> E | None:
        """Add ``by`` to the integer ``column`` of one row, only if the result stays
        ``<= at_most`` (a number, or the name of another column of the row, whose NULL means
        "no bound"); the check and the write are one atomic step.

        Returns the row as it now is (its version moved on for versioned kinds; ``updated_at``
        set to ``at`` when given), or ``None`` when the bound refused (nothing changed). A
        missing or deleted row raises ``NotFoundError``. Until the transaction ends no other
        transaction can change the row, so what the caller reads after ``increment`` (other
        rows included) is consistent with the increment: a promo code's per-customer count
        read after counting its redemption cannot race.
        """
        ...

    async def next_number(self, sequence: str, *, count: int = 1) -> int:
        """The next number of the gapless sequence ``sequence`` in this scope: 1, 2, 3...

        Never twice, never a gap: a number taken by a transaction that rolls back is given
        out again. Each (sequence, livemode, tenant) counts on its own. ``count`` (1 to
        1000) takes that many consecutive numbers at once and returns the first (a renewal
        batch numbers its invoices in one step); anything else is a ``ValidationError``
        (field ``count``).
        """
        ...

    async def insert_or_get(self, entity: E, *, on: Sequence[str]) -> tuple[E, bool]:
        """Insert ``entity`` unless a row in scope already holds its unique key ``on`` (one
        of the kind's unique keys); returns the stored row and whether it was inserted.

        Concurrent calls with one key insert exactly once and every caller gets that row
        back. A row holding another unique key of the entity raises ``ConflictError``.
        """
        ...


@runtime_checkable
class TenantSweep(Protocol):
    """The reads that must cross tenants, and nothing else (multi-tenant stores).

    A job runner asks which rows are due in every tenant, a webhook which tenant owns a
    provider reference; both get rows back with their ``tenant_id`` and then do the work in
    that tenant's own transaction. There is no write here, and no other read.
    """

    async def due(self, kind: type[E], *, now: datetime, limit: int) -> Sequence[E]:
        """Rows of a claimable kind due by ``now`` and not held by a live lease, in every
        tenant of the sweep's livemode, oldest due first, at most ``limit``; deleted rows
        never."""
        ...

    async def owners(self, kind: type[E], **key: object) -> Sequence[E]:
        """Rows (not deleted) whose columns equal ``key``, in every tenant of the sweep's
        livemode, oldest first, at most 100: who holds ``(provider, provider_id)``."""
        ...


@runtime_checkable
class StoragePort(Protocol):
    """A store of billing records under one table prefix and tenancy mode.

    ``open`` and ``close`` are counted: every ``open`` needs its ``close``, and only the last
    ``close`` closes (an app's lifespan and a worker may share one store). Opening checks the
    schema it finds against the prefix and tenancy asked for, and says what is there.
    """

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

    def across_tenants(self, *, livemode: bool) -> AbstractAsyncContextManager[TenantSweep]:
        """The two cross-tenant reads (``TenantSweep``), in one livemode; on a single-tenant
        store the same reads, with ``tenant_id`` ``None``."""
        ...
