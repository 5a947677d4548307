"""Atomic operations (DESIGN §5.6): the port's primitives, each rule of each, and under load.

``claim``: rows of a claimable kind due by ``now`` (``due_at <= now``), oldest due first and
then by id, at most ``limit``; never a row not yet due, with no ``due_at``, or held by a live
lease (soft-deleted rows: the soft_deletes group); the returned rows carry the lease; a lease
of zero ends at once; a claim moves neither ``version`` nor ``updated_at``, and ``update``
never writes the lease columns (a user's edit during a job run neither fails nor drops it).

``increment``: bound as a number or as a column (whose NULL means no bound); ``None`` and no
change when the bound refuses; ``NotFoundError`` for a missing row; the version moves and
``at`` stamps ``updated_at``.

``next_number``: per sequence name (per scope: the isolation groups), gapless, and a number
taken by a transaction that rolled back is given out again; ``count`` takes a block of
consecutive numbers at once (blocks taken concurrently never overlap), and a count that is
not an int from 1 to 1000 is refused.

``insert_or_get``: the stored row and ``False`` the second time; ``ConflictError`` when
another unique key of the entity is taken; ``ValidationError`` for an ``on`` that is not a
unique key.

Under concurrency (at least 50 tasks at once, each in its own transaction; with
``connections == "several_stores"`` spread over several store instances on one database,
unless the adapter declares ``Capabilities(multiple_connections="<reason>")``): sequences
stay gapless, bounded increments never pass their bound and hold the row until the
transaction ends, concurrent claimants get disjoint rows, and a unique key is stored once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.concurrency import describe, run_concurrently
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer, CustomerProviderRef
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError, NotFoundError, ValidationError

pytestmark = pytest.mark.anyio

expect = Expectations("atomic_operations")
TEST = Scope(livemode=False)
LEASE = timedelta(minutes=10)
CLAIM_FIX = (
    "claim with one statement: WHERE due_at <= :now AND (claimed_until IS NULL OR "
    "claimed_until <= <the clock>) AND deleted_at IS NULL ORDER BY due_at, id LIMIT :limit "
    "(FOR UPDATE SKIP LOCKED), setting claimed_by and claimed_until only"
)


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


class _Rollback(Exception):
    """Raised on purpose to roll a transaction back."""


def _pick(stores: list[StoragePort], index: int) -> StoragePort:
    return stores[index % len(stores)]


async def _subscriptions(
    store: StoragePort, due: Sequence[datetime | None], *, order: list[int] | None = None
) -> list[Subscription]:
    """Subscriptions due at ``due`` (ids in that order), inserted in ``order``."""
    customer = entities.customer(TEST)
    plan = entities.plan(TEST)
    price = entities.price(TEST, plan.id)
    rows = [entities.subscription(TEST, customer, price, due_at=at) for at in due]
    async with store.transaction(TEST) as tx:
        await tx.insert(customer)
        await tx.insert(plan)
        await tx.insert(price)
        for index in order if order is not None else range(len(rows)):
            await tx.insert(rows[index])
    return rows


async def _claim(
    store: StoragePort,
    now: datetime,
    *,
    limit: int = 100,
    claimant: str = "worker",
    lease: timedelta = LEASE,
) -> list[Subscription]:
    async with store.transaction(TEST) as tx:
        return list(
            await tx.claim(Subscription, now=now, limit=limit, claimant=claimant, lease=lease)
        )


# -- claim ----------------------------------------------------------------------------------


async def test_claim_returns_the_oldest_due_first_then_by_id_at_most_limit(
    shared: Shared,
) -> None:
    store = await shared.store()
    w = shared.window()
    hour = timedelta(hours=1)
    # Two rows share a due_at: the one with the lower id comes first, whatever the insert order.
    rows = await _subscriptions(
        store,
        [w - 5 * hour, w - 4 * hour, w - 3 * hour, w - 3 * hour, w - 2 * hour, w],
        order=[5, 3, 4, 2, 1, 0],
    )
    first = await _claim(store, w, limit=4, claimant="first")
    rest = await _claim(store, w, limit=10, claimant="rest")
    names = {row.id: f"#{index}" for index, row in enumerate(rows)}
    expect.that(
        [s.id for s in first] == [r.id for r in rows[:4]],
        f"claim(limit=4) of 6 due subscriptions returned {[names.get(s.id, '?') for s in first]}"
        ": expected the 4 oldest due, #0 #1 #2 #3 (#2 and #3 are due at once: lower id first)",
        CLAIM_FIX,
    )
    expect.that(
        [s.id for s in rest] == [r.id for r in rows[4:]],
        f"the next claim returned {[names.get(s.id, '?') for s in rest]}: expected #4 #5, the "
        "rest (a row due exactly at now is due)",
        CLAIM_FIX,
    )
    expect.that(
        all(s.claimed_by == "first" and s.claimed_until is not None for s in first),
        "claimed rows do not carry claimed_by = the claimant and claimed_until = the lease's end",
        "return the rows as the claim left them",
    )


async def test_claim_skips_rows_not_due_without_due_at_or_held(shared: Shared) -> None:
    store = await shared.store()
    w = shared.window()
    held, due, later, never = await _subscriptions(
        store, [w - timedelta(hours=2), w - timedelta(hours=1), w + timedelta(minutes=1), None]
    )
    first = await _claim(store, w, limit=1, claimant="first")
    second = await _claim(store, w, limit=100, claimant="second")
    third = await _claim(store, w, limit=100, claimant="third")
    ids = [s.id for s in second]
    expect.that(
        [s.id for s in first] == [held.id],
        f"the first claim returned {len(first)} rows, not the oldest due",
        CLAIM_FIX,
    )
    expect.that(
        later.id not in ids and never.id not in ids,
        "claim returned a subscription "
        + ("due after now" if later.id in ids else "with no due_at (NULL)"),
        CLAIM_FIX,
    )
    expect.that(
        held.id not in ids,
        "a second claimant got a subscription that a live lease (10 minutes) holds",
        CLAIM_FIX,
    )
    expect.that(ids == [due.id], f"the second claim returned {len(ids)} rows, not 1", CLAIM_FIX)
    expect.that(
        not third, f"a third claim re-claimed {len(third)} rows held by live leases", CLAIM_FIX
    )


async def test_a_zero_lease_ends_at_once(shared: Shared) -> None:
    store = await shared.store()
    w = shared.window()
    (row,) = await _subscriptions(store, [w - timedelta(hours=1)])
    first = await _claim(store, w, claimant="first", lease=timedelta(0))
    again = await _claim(store, w, claimant="again", lease=timedelta(0))
    expect.that(
        [s.id for s in first] == [row.id] == [s.id for s in again],
        f"after a claim with a lease of zero, the next claim returned {len(again)} rows: the "
        "lease did not end at once",
        "a lease is live while claimed_until > the clock; claimed_until = the clock + lease",
    )


async def test_a_claim_moves_neither_version_nor_updated_at(shared: Shared) -> None:
    store = await shared.store()
    w = shared.window()
    (row,) = await _subscriptions(store, [w - timedelta(hours=1)])
    returned = await _claim(store, w)
    claimed = returned[0] if returned else None
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(Subscription, row.id)
    fix = (
        "a claim writes claimed_by and claimed_until only: not version, not updated_at (a "
        "user's edit read before the claim must still succeed)"
    )
    for what, entity in (("the returned row", claimed), ("the stored row", stored)):
        expect.that(
            entity is not None
            and entity.version == row.version
            and entity.updated_at == row.updated_at,
            f"after a claim, {what} has version "
            f"{None if entity is None else entity.version} and updated_at "
            f"{None if entity is None else entity.updated_at} (was {row.version}, "
            f"{row.updated_at})",
            fix,
        )


async def test_update_never_changes_the_lease(shared: Shared) -> None:
    store = await shared.store()
    w = shared.window()
    (row,) = await _subscriptions(store, [w - timedelta(hours=1)])
    await _claim(store, w, claimant="job")
    fix = (
        "leave claimed_by and claimed_until out of update's SET (only claim writes them), "
        "and keep a claim from moving the version"
    )
    failure: Exception | None = None
    try:
        async with store.transaction(TEST) as tx:
            # A user's edit from a read made before the job claimed the row.
            edited = await tx.update(attrs.evolve(row, quantity=2))
            # And an edit that tries to drop the lease.
            await tx.update(attrs.evolve(edited, quantity=3, claimed_by=None, claimed_until=None))
    except Exception as error:
        failure = error
    if failure is not None:
        expect.broke(
            "an update from a read made before a claim (then one clearing the lease columns) "
            f"failed: {type(failure).__name__} ({failure})",
            fix,
        )
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(Subscription, row.id)
    expect.that(
        stored is not None
        and stored.quantity == 3
        and stored.claimed_by == "job"
        and stored.claimed_until is not None,
        "after updates during a claim, the row has claimed_by "
        f"{None if stored is None else stored.claimed_by!r}: update changed the lease",
        fix,
    )


# -- increment ------------------------------------------------------------------------------

INCREMENT_FIX = (
    "check the bound and add in one atomic step (UPDATE ... SET col = col + :by WHERE "
    "col + :by <= :bound (or the bound column, when not NULL) RETURNING ...), return None "
    "when the bound refuses"
)


async def _code(store: StoragePort, **limits: int | None) -> PromoCode:
    code = entities.promo_code(TEST, code=f"k_{entities.tag()}", **limits)
    async with store.transaction(TEST) as tx:
        await tx.insert(code)
    return code


async def _increments(
    store: StoragePort, code: PromoCode, times: int, at_most: int | str | None
) -> list[int | None]:
    seen: list[int | None] = []
    for _ in range(times):
        async with store.transaction(TEST) as tx:
            after = await tx.increment(PromoCode, code.id, "times_redeemed", 1, at_most=at_most)
        seen.append(None if after is None else after.times_redeemed)
    return seen


async def test_increment_bounded_by_a_number(shared: Shared) -> None:
    store = await shared.store()
    code = await _code(store)
    seen = await _increments(store, code, 4, 2)
    expect.that(
        seen == [1, 2, None, None],
        f"four increments by 1 with at_most=2 returned counts {seen}: expected 1, 2, None, None",
        INCREMENT_FIX,
    )


async def test_increment_bounded_by_a_column(shared: Shared) -> None:
    store = await shared.store()
    code = await _code(store, max_redemptions=2)
    seen = await _increments(store, code, 3, "max_redemptions")
    expect.that(
        seen == [1, 2, None],
        f"three increments with at_most='max_redemptions' (2) returned counts {seen}",
        INCREMENT_FIX,
    )


async def test_a_null_bound_column_means_no_bound(shared: Shared) -> None:
    store = await shared.store()
    code = await _code(store, max_redemptions=None)
    seen = await _increments(store, code, 3, "max_redemptions")
    expect.that(
        seen == [1, 2, 3],
        f"three increments bounded by a NULL max_redemptions returned {seen}: NULL means no bound",
        "compare with the bound column only when it is not NULL",
    )


async def test_a_refused_increment_returns_none_and_changes_nothing(shared: Shared) -> None:
    store = await shared.store()
    code = await _code(store, max_redemptions=0)
    async with store.transaction(TEST) as tx:
        refused = await tx.increment(
            PromoCode, code.id, "times_redeemed", 1, at_most="max_redemptions", at=NOW + LEASE
        )
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(PromoCode, code.id)
    expect.that(
        refused is None, "an increment the bound refused did not return None", INCREMENT_FIX
    )
    expect.that(
        stored is not None
        and stored.times_redeemed == 0
        and stored.version == code.version
        and stored.updated_at == code.updated_at,
        "an increment the bound refused changed the row (count, version or updated_at)",
        INCREMENT_FIX,
    )


async def test_increment_moves_the_version_and_stamps_updated_at(shared: Shared) -> None:
    store = await shared.store()
    code = await _code(store)
    at = NOW + timedelta(hours=3)
    async with store.transaction(TEST) as tx:
        after = await tx.increment(PromoCode, code.id, "times_redeemed", 5, at=at)
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(PromoCode, code.id)
    for what, row in (("the returned row", after), ("the stored row", stored)):
        expect.that(
            row is not None
            and row.times_redeemed == 5
            and row.version == code.version + 1
            and row.updated_at == at,
            f"after increment(by=5, at=...), {what} has count "
            f"{None if row is None else row.times_redeemed}, version "
            f"{None if row is None else row.version}, updated_at "
            f"{None if row is None else row.updated_at} (expected 5, {code.version + 1}, {at})",
            "set col = col + :by, version = version + 1 and updated_at = :at (when given) in "
            "the same statement, and return the row",
        )


async def test_increment_of_a_missing_row_is_not_found(shared: Shared) -> None:
    store = await shared.store()
    missing = entities.promo_code(TEST)
    with expect.refusal(
        NotFoundError,
        "incrementing a promo code id that does not exist",
        "tell a refused bound (None) from a missing row (NotFoundError)",
    ):
        async with store.transaction(TEST) as tx:
            await tx.increment(PromoCode, missing.id, "times_redeemed", 1, at_most=10)


# -- next_number ----------------------------------------------------------------------------


async def test_sequences_count_per_name(shared: Shared) -> None:
    store = await shared.store()
    tag = entities.tag()
    numbers = []
    for name in ("a", "a", "b", "a", "b"):
        async with store.transaction(TEST) as tx:
            numbers.append(await tx.next_number(f"{name}.{tag}"))
    expect.that(
        numbers == [1, 2, 1, 3, 2],
        f"next_number on sequences a, a, b, a, b gave {numbers}: expected 1, 2, 1, 3, 2",
        "keep one counter per sequence name (and scope)",
    )


async def test_a_block_of_numbers_is_taken_at_once(shared: Shared, connections: str) -> None:
    stores = await shared.stores(connections)
    sequence = f"block.{entities.tag()}"

    async def allocate(index: int) -> tuple[int, int]:
        size = 1 + index % 5
        async with _pick(stores, index).transaction(TEST) as tx:
            return await tx.next_number(sequence, count=size), size

    outcomes = await run_concurrently(40, allocate)
    errors = [o.error for o in outcomes if o.error is not None]
    blocks = sorted(o.value for o in outcomes if o.value is not None)
    numbers = sorted(first + offset for first, size in blocks for offset in range(size))
    async with stores[0].transaction(TEST) as tx:
        after = await tx.next_number(sequence)
    expect.that(
        not errors and numbers == list(range(1, len(numbers) + 1)) and after == len(numbers) + 1,
        f"40 concurrent next_number(count=1..5) gave blocks {blocks[:6]}... covering "
        f"{len(numbers)} numbers (distinct: {len(set(numbers))}), then next_number gave "
        f"{after}, with {describe(errors)}; expected disjoint blocks covering 1..{len(numbers)}, "
        f"then {len(numbers) + 1}",
        "add count to the counter in one step and return the first of the block (last - count + 1)",
    )
    async with stores[0].transaction(TEST) as tx:
        refused = [
            name
            for name, bad in (("zero", 0), ("too many", 1001), ("not an int", "2"))
            if not await _refuses_count(tx, sequence, bad)
        ]
    expect.that(
        not refused,
        f"next_number accepted count {refused}",
        "refuse a count that is not an int from 1 to 1000 with ValidationError(field='count')",
    )


async def _refuses_count(tx: Any, sequence: str, count: object) -> bool:
    try:
        await tx.next_number(sequence, count=count)
    except ValidationError as error:
        return error.field == "count"
    return False


async def test_invoice_numbers_are_gapless_under_concurrency(
    shared: Shared, connections: str
) -> None:
    stores = await shared.stores(connections)
    sequence = f"invoice.{entities.tag()}"

    async def allocate(index: int) -> int:
        async with _pick(stores, index).transaction(TEST) as tx:
            return await tx.next_number(sequence)

    outcomes = await run_concurrently(200, allocate)
    errors = [o.error for o in outcomes if o.error is not None]
    numbers = sorted(o.value for o in outcomes if o.value is not None)
    fix = (
        "allocate from one counter row per (sequence, tenant, livemode), locked and incremented "
        "in the transaction (UPDATE ... SET last = last + 1 RETURNING last), never max() + 1"
    )
    duplicates = sorted(n for n, c in Counter(numbers).items() if c > 1)
    expect.that(
        not errors and numbers == list(range(1, 201)),
        f"200 concurrent allocations gave {len(numbers)} numbers from {numbers[:1]} to "
        f"{numbers[-1:]} with duplicates {duplicates[:10]} and {describe(errors)}; expected "
        "exactly 1..200",
        fix,
    )
    allocated: list[int] = []

    async def allocate_then_fail() -> None:
        async with stores[0].transaction(TEST) as tx:
            allocated.append(await tx.next_number(sequence))
            raise _Rollback

    with pytest.raises(_Rollback):
        await allocate_then_fail()
    lost = allocated[0]
    async with stores[-1].transaction(TEST) as tx:
        again = await tx.next_number(sequence)
    expect.that(
        lost == 201 and again == 201,
        f"a rolled-back transaction allocated {lost} and the next allocation gave {again}: "
        "the sequence has a gap",
        "allocate inside the transaction so a rollback returns the number",
    )


# -- insert_or_get --------------------------------------------------------------------------


async def test_insert_or_get_returns_the_stored_row_the_second_time(shared: Shared) -> None:
    store = await shared.store()
    key = f"k_{entities.tag()}"
    first = entities.idempotency_key(TEST, key, request_hash="first")
    second = entities.idempotency_key(TEST, key, request_hash="second")
    async with store.transaction(TEST) as tx:
        stored, inserted = await tx.insert_or_get(first, on=("operation", "key"))
    async with store.transaction(TEST) as tx:
        again, inserted_again = await tx.insert_or_get(second, on=("operation", "key"))
    expect.that(
        inserted and stored == first,
        f"the first insert_or_get of a key returned inserted={inserted} and "
        + ("the row" if stored == first else "another row"),
        "insert when no row holds the key and return (entity, True)",
    )
    expect.that(
        not inserted_again and again == first,
        f"the second insert_or_get of key {key!r} returned inserted={inserted_again} and "
        + (
            "the stored row"
            if again == first
            else f"not the stored row (request_hash {again.request_hash!r})"
        ),
        "return (the stored row, False) when a row in scope holds the key",
    )
    async with store.transaction(TEST, readonly=True) as tx:
        rows = await tx.count(IdempotencyKey, filters={"key": key})
    expect.that(rows == 1, f"two insert_or_get of one key left {rows} rows", "insert once")


async def test_insert_or_get_conflicts_on_another_unique_key(shared: Shared) -> None:
    store = await shared.store()
    tag = entities.tag()
    customer = entities.customer(TEST)
    held = entities.provider_ref(TEST, customer, provider=tag, provider_customer_id="cus_1")
    async with store.transaction(TEST) as tx:
        await tx.insert(customer)
        await tx.insert(held)
    # Free on ("provider", "provider_customer_id"), taken on ("customer_id", "provider").
    other = entities.provider_ref(TEST, customer, provider=tag, provider_customer_id="cus_2")
    fix = (
        "when the row was not inserted and no row holds the `on` key, another unique key (or "
        "the id) is taken: raise ConflictError naming it, never return another row"
    )
    with expect.refusal(
        ConflictError, "insert_or_get of a row whose other unique key is taken", fix
    ):
        async with store.transaction(TEST) as tx:
            await tx.insert_or_get(other, on=("provider", "provider_customer_id"))
    same_id = attrs.evolve(held, provider_customer_id="cus_3", provider=f"{tag}_x")
    with expect.refusal(ConflictError, "insert_or_get of a row whose id is taken", fix):
        async with store.transaction(TEST) as tx:
            await tx.insert_or_get(same_id, on=("provider", "provider_customer_id"))
    async with store.transaction(TEST, readonly=True) as tx:
        rows = await tx.count(CustomerProviderRef, filters={"customer_id": customer.id})
    expect.that(rows == 1, f"refused insert_or_get calls left {rows} rows (expected 1)", fix)


async def test_insert_or_get_on_a_column_that_is_no_unique_key_is_refused(
    shared: Shared,
) -> None:
    store = await shared.store()
    for on in (("email",), ("external_id", "email"), ()):
        with expect.refusal(
            ValidationError,
            f"insert_or_get(on={on!r}) for customers, whose one unique key is external_id",
            "accept only `on` equal to one of the kind's unique keys (storage_rules."
            "unique_key_on) and raise ValidationError otherwise",
        ):
            async with store.transaction(TEST) as tx:
                await tx.insert_or_get(entities.customer(TEST), on=on)


# -- under concurrency ----------------------------------------------------------------------


async def _customers(store: StoragePort, count: int) -> list[Customer]:
    customers = [entities.customer(TEST) for _ in range(count)]
    async with store.transaction(TEST) as tx:
        for customer in customers:
            await tx.insert(customer)
    return customers


REDEEM_FIX = (
    "check the bound and add in one atomic step (UPDATE ... SET times_redeemed = "
    "times_redeemed + :by WHERE max_redemptions IS NULL OR times_redeemed + :by <= "
    "max_redemptions RETURNING ...), return None when the bound refuses, and hold the row "
    "until the transaction ends"
)


async def test_a_promo_code_is_redeemed_only_while_under_its_limit(
    shared: Shared, connections: str
) -> None:
    stores = await shared.stores(connections)
    code = await _code(stores[0], max_redemptions=10)
    customers = await _customers(stores[0], 50)

    async def redeem(index: int) -> PromoCode:
        async with _pick(stores, index).transaction(TEST) as tx:
            counted = await tx.increment(
                PromoCode, code.id, "times_redeemed", 1, at_most="max_redemptions"
            )
            if counted is None:
                raise InvalidStateError("max_redemptions", rule="max_redemptions")
            await tx.insert(entities.promo_code_usage(TEST, code, customers[index]))
            return counted

    outcomes = await run_concurrently(50, redeem)
    await _check_redemptions(
        stores[0],
        code,
        outcomes_ok=sum(o.ok for o in outcomes),
        errors=[o.error for o in outcomes if o.error is not None],
        limit=10,
        tries=50,
        what="max_redemptions=10",
    )


async def test_a_promo_code_is_redeemed_only_while_under_its_per_customer_limit(
    shared: Shared, connections: str
) -> None:
    stores = await shared.stores(connections)
    code = await _code(stores[0], max_redemptions_per_customer=3)
    (customer,) = await _customers(stores[0], 1)

    async def redeem(index: int) -> PromoCode:
        # The per-customer rule read after the increment: the increment holds the code.
        async with _pick(stores, index).transaction(TEST) as tx:
            counted = await tx.increment(PromoCode, code.id, "times_redeemed", 1)
            assert counted is not None
            earlier = await tx.count(
                PromoCodeUsage, filters={"promo_code_id": code.id, "customer_id": customer.id}
            )
            if earlier >= 3:
                raise InvalidStateError("per customer", rule="max_redemptions_per_customer")
            await tx.insert(entities.promo_code_usage(TEST, code, customer))
            return counted

    outcomes = await run_concurrently(50, redeem)
    await _check_redemptions(
        stores[0],
        code,
        outcomes_ok=sum(o.ok for o in outcomes),
        errors=[o.error for o in outcomes if o.error is not None],
        limit=3,
        tries=50,
        what="max_redemptions_per_customer=3 (one customer)",
    )


async def _check_redemptions(
    store: StoragePort,
    code: PromoCode,
    *,
    outcomes_ok: int,
    errors: list[Exception],
    limit: int,
    tries: int,
    what: str,
) -> None:
    unexpected = [e for e in errors if not isinstance(e, InvalidStateError)]
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(PromoCode, code.id)
        usages = await tx.count(PromoCodeUsage, filters={"promo_code_id": code.id})
    times = None if stored is None else stored.times_redeemed
    expect.that(
        outcomes_ok == limit and not unexpected and times == limit and usages == limit,
        f"{tries} concurrent redemptions of a code with {what}: {outcomes_ok} succeeded, "
        f"times_redeemed is {times}, {usages} usage rows, unexpected {describe(unexpected)}; "
        f"expected exactly {limit} of each and InvalidStateError for the rest",
        REDEEM_FIX,
    )


async def test_refunds_never_exceed_the_payment_under_concurrency(
    shared: Shared, connections: str
) -> None:
    stores = await shared.stores(connections)
    (customer,) = await _customers(stores[0], 1)
    payment = entities.payment(TEST, customer, amount=10_000)
    async with stores[0].transaction(TEST) as tx:
        await tx.insert(payment)

    async def refund(index: int) -> Payment:
        async with _pick(stores, index).transaction(TEST) as tx:
            updated = await tx.increment(
                Payment, payment.id, "refunded_amount", 300, at_most="amount"
            )
            if updated is None:
                raise ValidationError("refund_within_payment", rule="refund_within_payment")
            await tx.insert(entities.refund(TEST, payment, amount=300))
            return updated

    outcomes = await run_concurrently(50, refund)
    accepted = sum(o.ok for o in outcomes)
    unexpected = [
        o.error
        for o in outcomes
        if o.error is not None and not isinstance(o.error, ValidationError)
    ]
    async with stores[0].transaction(TEST, readonly=True) as tx:
        stored = await tx.get(Payment, payment.id)
        refunds = (await tx.list(Refund, filters={"payment_id": payment.id}, limit=100)).items
    refunded = None if stored is None else stored.refunded_amount
    total = sum(r.amount for r in refunds)
    expect.that(
        refunded is not None
        and refunded <= payment.amount
        and refunded == total == 300 * accepted
        and accepted == 33
        and not unexpected,
        f"50 concurrent refunds of 300 on a payment of 10000: {accepted} accepted, "
        f"refunded_amount {refunded}, refund rows sum to {total}, unexpected "
        f"{describe(unexpected)}; expected 33 accepted (9900) and ValidationError for the rest",
        "lock the payment (SELECT ... FOR UPDATE) or add conditionally (UPDATE ... SET "
        "refunded_amount = refunded_amount + :amount WHERE refunded_amount + :amount <= amount) "
        "and insert the refund in the same transaction",
    )


async def test_due_subscriptions_are_claimed_once(shared: Shared, connections: str) -> None:
    stores = await shared.stores(connections)
    w = shared.window()
    rows = await _subscriptions(
        stores[0], [w - timedelta(minutes=i) for i in range(60)] + [w + timedelta(minutes=1)]
    )
    due, later = rows[:60], rows[60]

    async def claimant(index: int) -> list[Subscription]:
        mine: list[Subscription] = []
        for _ in range(30):  # bounded: a store that re-claims would otherwise loop forever
            batch = await _claim(_pick(stores, index), w, limit=4, claimant=f"worker-{index}")
            if not batch:
                break
            mine.extend(batch)
        return mine

    outcomes = await run_concurrently(8, claimant)
    errors = [o.error for o in outcomes if o.error is not None]
    claims = Counter(s.id for o in outcomes for s in o.value or ())
    twice = [sid for sid, count in claims.items() if count > 1]
    expect.that(
        not twice and not errors,
        f"8 concurrent claimants: {len(twice)} subscriptions were claimed more than once, "
        f"{describe(errors)}",
        CLAIM_FIX,
    )
    expect.that(
        set(claims) == {s.id for s in due},
        f"{len(set(claims) & {s.id for s in due})} of 60 due subscriptions were claimed"
        + (" and one not yet due was claimed" if later.id in claims else ""),
        "claim every subscription with due_at <= now that no live lease holds, oldest first",
    )
    async with stores[0].transaction(TEST, readonly=True) as tx:
        held = await tx.get(Subscription, due[0].id)
    expect.that(
        held is not None and held.claimed_by is not None and held.claimed_until is not None,
        "a claimed subscription does not carry claimed_by and claimed_until",
        "store the claim on the row: claimed_by = claimant, claimed_until = the lease's end",
    )


async def test_an_idempotency_key_is_stored_once_under_concurrency(
    shared: Shared, connections: str
) -> None:
    stores = await shared.stores(connections)
    key = f"order-{entities.tag()}"

    async def store_key(index: int) -> IdempotencyKey:
        async with _pick(stores, index).transaction(TEST) as tx:
            stored, _ = await tx.insert_or_get(
                entities.idempotency_key(TEST, key), on=("operation", "key")
            )
            return stored

    outcomes = await run_concurrently(50, store_key)
    errors = [o.error for o in outcomes if o.error is not None]
    returned = {o.value.id for o in outcomes if o.value is not None}
    async with stores[0].transaction(TEST, readonly=True) as tx:
        rows = await tx.count(IdempotencyKey, filters={"key": key})
    expect.that(
        not errors and len(returned) == 1 and rows == 1,
        f"50 concurrent stores of one idempotency key: {rows} rows, {len(returned)} different "
        f"records returned, {describe(errors)}; expected one row returned to every caller",
        "insert with ON CONFLICT (livemode, tenant_id, key) DO NOTHING and return the stored "
        "row; a concurrent duplicate must not raise",
    )


async def test_concurrent_inserts_of_one_unique_key_let_exactly_one_win(
    shared: Shared, connections: str
) -> None:
    stores = await shared.stores(connections)
    key = f"u_{entities.tag()}"

    async def insert(index: int) -> Customer:
        customer = entities.customer(TEST, external_id=key)
        async with _pick(stores, index).transaction(TEST) as tx:
            await tx.insert(customer)
        return customer

    outcomes = await run_concurrently(20, insert)
    won = [o.value for o in outcomes if o.value is not None]
    errors = [o.error for o in outcomes if o.error is not None]
    unexpected = [e for e in errors if not isinstance(e, ConflictError)]
    async with stores[0].transaction(TEST, readonly=True) as tx:
        rows = await tx.count(Customer, filters={"external_id": key})
    expect.that(
        len(won) == 1 and len(errors) == 19 and not unexpected and rows == 1,
        f"20 concurrent inserts of one external_id: {len(won)} succeeded, {rows} rows, "
        f"{len(errors) - len(unexpected)} ConflictError, unexpected {describe(unexpected)}; "
        "expected one row and 19 ConflictError",
        "enforce unique keys in the database (a unique index) and turn its violation into the "
        "same ConflictError a sequential duplicate gets",
    )
