"""Transactions (DESIGN §5.7): ``async with storage.transaction(scope):`` is all or nothing.

Whatever the transaction did before it failed — plain writes, a read, a ``flush()``, an
``increment``, a ``claim``, a ``next_number``, an ``insert_or_get`` — a failure (an exception,
a cancellation, a refusal noticed at flush or commit: a taken unique key, a stale version)
keeps none of its writes, checked in a new transaction and, for SQL stores, in the database
itself (``test_a_failure_keeps_nothing[<after what>]``). A normal exit keeps every write, and
reads inside the transaction see its own writes. A transaction opened ``readonly=True``
refuses every write method with ``ConfigurationError`` and writes nothing
(``test_readonly_refuses[<method>]``). Opens and closes of a store are counted: only the last
close closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

import anyio
import anyio.lowlevel
import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort, StorageTransaction
from qzpay.domain.customers import Customer
from qzpay.domain.promotions import PromoCode
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConfigurationError, ConflictError

pytestmark = pytest.mark.anyio

expect = Expectations("transactions")
TEST = Scope(livemode=False)
FIX = (
    "run every statement of the transaction on one connection inside BEGIN … COMMIT and "
    "ROLLBACK on any exception (BaseException: cancellation too), whatever was read or "
    "flushed before; buffered writes must be dropped, never sent"
)
LEASE = timedelta(minutes=10)


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


class _Boom(Exception):
    """The application's failure, after the writes."""


@attrs.frozen
class _Before:
    """Rows that exist before the transaction under test, which it then tries to change."""

    store: StoragePort
    tag: str
    window: datetime
    updated: Customer
    deleted: Customer
    code: PromoCode
    subscription: Subscription

    @property
    def sequence(self) -> str:
        return f"invoice.{self.tag}"

    @property
    def email(self) -> str:
        return f"tx-{self.tag}@example.com"


async def _before(shared: Shared) -> _Before:
    store = await shared.store()
    tag = entities.tag()
    window = shared.window()
    updated = entities.customer(TEST, name="Ann")
    deleted = entities.customer(TEST, name="Bob")
    plan = entities.plan(TEST)
    price = entities.price(TEST, plan.id)
    code = entities.promo_code(TEST, code=f"k_{tag}")
    subscription = entities.subscription(TEST, updated, price, due_at=window - timedelta(hours=1))
    async with store.transaction(TEST) as tx:
        for row in (updated, deleted, plan, price, code, subscription):
            await tx.insert(row)
    return _Before(store, tag, window, updated, deleted, code, subscription)


async def _base_writes(tx: StorageTransaction, before: _Before, inserted: list[object]) -> None:
    """An insert of two rows, an update and a soft delete: what every failing case did first."""
    ann = entities.customer(TEST, email=before.email)
    plan = entities.plan(TEST, name=before.tag)
    inserted.extend((ann, plan))
    await tx.insert(ann)
    await tx.insert(plan)
    await tx.update(attrs.evolve(before.updated, name="Changed"))
    await tx.soft_delete(Customer, before.deleted.id, at=NOW)


async def _check_nothing_left(
    shared: Shared, before: _Before, inserted: list[object], how: str
) -> None:
    store = before.store
    async with store.transaction(TEST, readonly=True) as tx:
        kept = [
            row
            for row in inserted
            if await tx.get(type(row), row.id, include_deleted=True) is not None  # type: ignore[attr-defined]
        ]
        updated = await tx.get(Customer, before.updated.id)
        deleted = await tx.get(Customer, before.deleted.id)
        code = await tx.get(PromoCode, before.code.id)
        subscription = await tx.get(Subscription, before.subscription.id)
        key = await tx.find(IdempotencyKey, key=before.tag)
    expect.that(not kept, f"{how}, {len(kept)} of its inserted rows were kept", FIX)
    expect.that(
        updated is not None and updated.name == "Ann" and updated.version == 1,
        f"{how}, its update was kept",
        FIX,
    )
    expect.that(deleted is not None, f"{how}, its soft delete was kept", FIX)
    expect.that(
        code is not None and code.times_redeemed == 0 and code.version == 1,
        f"{how}, its increment was kept",
        FIX,
    )
    expect.that(
        subscription is not None and subscription.claimed_by is None,
        f"{how}, its claim was kept",
        FIX,
    )
    expect.that(key is None, f"{how}, its insert_or_get was kept", FIX)
    async with store.transaction(TEST) as tx:
        number = await tx.next_number(before.sequence)
    expect.that(number == 1, f"{how}, its sequence number was kept (next is {number})", FIX)
    raw = shared.raw(store)
    if raw is not None:
        rows = await raw.rows(f"{store.table_prefix}customers", email=before.email)
        plans = await raw.rows(f"{store.table_prefix}plans", name=before.tag)
        expect.that(
            not rows and not plans,
            f"{how}, its rows are still in the database (seen through the raw view)",
            FIX,
        )


_Step = Callable[[StorageTransaction, _Before, list[object]], Awaitable[object]]


async def _read(tx: StorageTransaction, before: _Before, inserted: list[object]) -> object:
    await tx.count(Customer)
    return await tx.get(Customer, before.updated.id)


async def _flush(tx: StorageTransaction, before: _Before, inserted: list[object]) -> object:
    await tx.flush()
    return await tx.count(Customer, filters={"email": before.email})


async def _increment(tx: StorageTransaction, before: _Before, inserted: list[object]) -> object:
    return await tx.increment(PromoCode, before.code.id, "times_redeemed", 1, at_most=5)


async def _claim(tx: StorageTransaction, before: _Before, inserted: list[object]) -> object:
    return await tx.claim(Subscription, now=before.window, limit=10, claimant="tx", lease=LEASE)


async def _next_number(tx: StorageTransaction, before: _Before, inserted: list[object]) -> object:
    return await tx.next_number(before.sequence)


async def _insert_or_get(tx: StorageTransaction, before: _Before, inserted: list[object]) -> object:
    record = entities.idempotency_key(TEST, before.tag)
    inserted.append(record)
    return await tx.insert_or_get(record, on=("operation", "key"))


async def _everything(tx: StorageTransaction, before: _Before, inserted: list[object]) -> object:
    for step in (_read, _flush, _increment, _claim, _next_number, _insert_or_get):
        await step(tx, before, inserted)
    return None


AFTER: dict[str, _Step] = {
    "writes": lambda tx, before, inserted: anyio.lowlevel.checkpoint(),
    "a_read": _read,
    "a_flush": _flush,
    "an_increment": _increment,
    "a_claim": _claim,
    "a_next_number": _next_number,
    "an_insert_or_get": _insert_or_get,
    "all_of_them": _everything,
}
"""What the transaction does after its first writes, before it raises."""


@pytest.mark.parametrize("after", list(AFTER))
async def test_a_failure_keeps_nothing(shared: Shared, after: str) -> None:
    before = await _before(shared)
    inserted: list[object] = []

    async def write_then_fail() -> None:
        async with before.store.transaction(TEST) as tx:
            await _base_writes(tx, before, inserted)
            await AFTER[after](tx, before, inserted)
            late = entities.plan(TEST, name=before.tag)
            inserted.append(late)
            await tx.insert(late)  # and a write after it, still buffered perhaps
            raise _Boom

    with pytest.raises(_Boom):
        await write_then_fail()
    await _check_nothing_left(
        shared, before, inserted, f"after a transaction raised after {after.replace('_', ' ')}"
    )


async def test_a_cancelled_transaction_keeps_nothing(shared: Shared) -> None:
    before = await _before(shared)
    inserted: list[object] = []
    with anyio.CancelScope() as scope:
        async with before.store.transaction(TEST) as tx:
            await _base_writes(tx, before, inserted)
            await _everything(tx, before, inserted)
            scope.cancel()
            await anyio.lowlevel.checkpoint()  # the cancellation is delivered here
    expect.that(scope.cancelled_caught, "the cancellation did not reach the transaction", FIX)
    await _check_nothing_left(shared, before, inserted, "after a transaction was cancelled")


@pytest.mark.parametrize("refusal", ["unique_key", "stale_version"])
@pytest.mark.parametrize("after", ["writes", "all_of_them"])
async def test_a_refusal_at_flush_or_commit_keeps_nothing(
    shared: Shared, after: str, refusal: str
) -> None:
    before = await _before(shared)
    holder = entities.customer(TEST, external_id=f"u_{before.tag}")
    async with before.store.transaction(TEST) as tx:
        await tx.insert(holder)
    inserted: list[object] = []
    what = (
        "a transaction inserting a taken external_id"
        if refusal == "unique_key"
        else "a transaction updating from a stale version"
    )
    owner = "atomic_operations (unique keys)" if refusal == "unique_key" else "optimistic_locking"
    with expect.precondition(ConflictError, f"{what} (after {after.replace('_', ' ')})", owner):
        async with before.store.transaction(TEST) as tx:
            await _base_writes(tx, before, inserted)
            await AFTER[after](tx, before, inserted)
            if refusal == "unique_key":
                clash = entities.customer(TEST, external_id=f"u_{before.tag}")
                inserted.append(clash)
                await tx.insert(clash)  # refused here, at a flush or at commit
            else:
                await tx.update(attrs.evolve(holder, name="Changed"), expected_version=5)
    await _check_nothing_left(
        shared, before, inserted, f"after {what} was refused (after {after.replace('_', ' ')})"
    )


def _deleted(row: Customer | None) -> bool:
    """Whether a soft delete took effect, as far as this group cares: hidden, or carrying its
    deleted_at (how soft-deleted rows are hidden is the soft_deletes group's rule)."""
    return row is None or row.deleted_at is not None


async def test_a_committed_transaction_keeps_every_write(shared: Shared) -> None:
    before = await _before(shared)
    inserted: list[object] = []
    async with before.store.transaction(TEST) as tx:
        await _base_writes(tx, before, inserted)
        await _everything(tx, before, inserted)
    async with before.store.transaction(TEST, readonly=True) as tx:
        kept = [await tx.get(type(row), row.id) for row in inserted]  # type: ignore[attr-defined]
        updated = await tx.get(Customer, before.updated.id)
        deleted = await tx.get(Customer, before.deleted.id)
        code = await tx.get(PromoCode, before.code.id)
        subscription = await tx.get(Subscription, before.subscription.id)
    async with before.store.transaction(TEST) as tx:
        number = await tx.next_number(before.sequence)
    missing = [
        what
        for what, ok in (
            ("an insert", all(row is not None for row in kept)),
            ("the update", updated is not None and updated.name == "Changed"),
            ("the soft delete", _deleted(deleted)),
            ("the increment", code is not None and code.times_redeemed == 1),
            ("the claim", subscription is not None and subscription.claimed_by == "tx"),
            ("the sequence number", number == 2),
        )
        if not ok
    ]
    expect.that(
        not missing,
        f"a transaction that exited normally did not keep {', '.join(missing)}",
        "COMMIT on normal exit, after sending every buffered write",
    )


async def test_a_transaction_sees_its_own_writes(shared: Shared) -> None:
    store = await shared.store()
    tag = entities.tag()
    ann = entities.customer(TEST, name=tag)
    bob = entities.customer(TEST, name=tag)
    fix = (
        "make every read and write of a transaction see the transaction's earlier writes: "
        "send buffered writes before a statement that depends on them (a data-modifying CTE "
        "does not see rows inserted by its sibling CTEs)"
    )
    failure: Exception | None = None
    try:
        async with store.transaction(TEST) as tx:
            await tx.insert(ann)
            await tx.insert(bob)
            renamed = await tx.update(attrs.evolve(ann, name="Ann B."))
            await tx.soft_delete(Customer, bob.id, at=NOW)
            seen = await tx.get(Customer, ann.id)
            deleted = await tx.get(Customer, bob.id)
            found = await tx.find(Customer, name="Ann B.", email=ann.email)
            listed = (await tx.list(Customer, filters={"email": ann.email})).items
    except Exception as error:
        failure = error
    if failure is not None:
        expect.broke(
            "inserting two customers, then updating one and soft-deleting the other in the same "
            f"transaction failed: {type(failure).__name__} ({failure})",
            fix,
        )
    expect.that(
        seen is not None
        and seen.name == "Ann B."
        and renamed.version == 2
        and _deleted(deleted)
        and found is not None
        and [c.name for c in listed] == ["Ann B."],
        "a read inside the transaction (get, count, find or list) did not see the "
        "transaction's own update and delete",
        fix,
    )
    async with store.transaction(TEST, readonly=True) as tx:
        kept = await tx.get(Customer, ann.id)
        gone = await tx.get(Customer, bob.id)
    expect.that(
        kept is not None and kept.name == "Ann B." and _deleted(gone),
        "after commit, the insert-then-update or insert-then-delete of one transaction is "
        "not what is stored",
        fix,
    )


# -- readonly -------------------------------------------------------------------------------

READONLY_FIX = (
    "a transaction opened readonly=True refuses every write method (insert, update, "
    "soft_delete, claim, increment, next_number, insert_or_get) with ConfigurationError "
    "before anything reaches the database"
)

_Write = Callable[[StorageTransaction, _Before], Awaitable[object]]
READONLY: dict[str, _Write] = {
    "insert": lambda tx, before: tx.insert(entities.customer(TEST, email=before.email)),
    "update": lambda tx, before: tx.update(attrs.evolve(before.updated, name="Changed")),
    "soft_delete": lambda tx, before: tx.soft_delete(Customer, before.deleted.id, at=NOW),
    "claim": lambda tx, before: tx.claim(
        Subscription, now=before.window, limit=10, claimant="tx", lease=LEASE
    ),
    "increment": lambda tx, before: tx.increment(PromoCode, before.code.id, "times_redeemed", 1),
    "next_number": lambda tx, before: tx.next_number(before.sequence),
    "insert_or_get": lambda tx, before: tx.insert_or_get(
        entities.idempotency_key(TEST, before.tag), on=("operation", "key")
    ),
}


@pytest.mark.parametrize("method", list(READONLY))
async def test_readonly_refuses(shared: Shared, method: str) -> None:
    before = await _before(shared)
    with expect.refusal(
        ConfigurationError, f"{method} in a transaction opened readonly=True", READONLY_FIX
    ):
        async with before.store.transaction(TEST, readonly=True) as tx:
            await READONLY[method](tx, before)
    await _check_nothing_left(shared, before, [], f"after a readonly transaction's {method}")
    async with before.store.transaction(TEST, readonly=True) as tx:
        written = await tx.count(Customer, filters={"email": before.email})
    expect.that(not written, f"a readonly transaction's {method} wrote a row", READONLY_FIX)


async def test_readonly_still_reads(shared: Shared) -> None:
    before = await _before(shared)
    async with before.store.transaction(TEST, readonly=True) as tx:
        got = await tx.get(Customer, before.updated.id)
        page = await tx.list(Customer, filters={"email": before.updated.email})
        counted = await tx.count(Customer, filters={"email": before.updated.email})
        groups = await tx.aggregate(Customer, filters={"email": before.updated.email})
        await tx.flush()
    expect.that(
        got is not None and len(page) == 1 and counted == 1 and groups[0].count == 1,
        "a readonly transaction could not read (get, list, count, aggregate)",
        "readonly refuses writes only",
    )


async def test_opens_and_closes_are_counted(conformance: Harness) -> None:
    """An app's lifespan and a worker share one store: the first close must not close it."""
    store = await conformance.store()  # opened once by the harness, closed once at the end
    await store.open()
    await store.close()
    fix = (
        "count open() and close(): every open needs its close, and only the last close "
        "disconnects (an anyio.Lock around the count makes concurrent opens safe)"
    )
    failure: Exception | None = None
    try:
        async with store.transaction(TEST) as tx:
            await tx.insert(entities.customer(TEST))
    except Exception as error:
        failure = error
    expect.that(
        failure is None,
        f"after open(), open(), close() the store was closed: {failure!r}",
        fix,
    )
