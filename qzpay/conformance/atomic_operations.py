"""Atomic operations (DESIGN §5.6): correct with many concurrent transactions.

Each test starts at least 50 tasks at once (anyio task group), each in its own transaction;
with ``connections == "several_stores"`` the tasks are spread over several store instances
on one database (several connections), unless the adapter declares
``Capabilities(multiple_connections="<reason>")``, which is reported as not supported.

- ``next_number``: gapless 1..N per (sequence, tenant, livemode), no duplicate; a number
  allocated in a rolled-back transaction is given out again;
- ``increment`` with a bound (a column, or a number): concurrent increments never pass it
  (a promo code's ``max_redemptions``, a payment's ``amount`` capping ``refunded_amount``);
  and the row stays held until the transaction ends, so a count read after the increment
  cannot race (a promo code's per-customer limit);
- ``claim``: concurrent claimants never claim one row twice, and claim all that are due;
- ``insert_or_get`` and unique keys: stored once, whoever races.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from qzpay.conformance import entities
from qzpay.conformance.concurrency import describe, run_concurrently
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError, ValidationError

pytestmark = pytest.mark.anyio

expect = Expectations("atomic_operations")
TEST = Scope(livemode=False)
LEASE = timedelta(minutes=10)


class _Rollback(Exception):
    """Raised on purpose to roll a transaction back."""


def _pick(stores: list[StoragePort], index: int) -> StoragePort:
    return stores[index % len(stores)]


async def test_invoice_numbers_are_gapless_under_concurrency(
    conformance: Harness, connections: str
) -> None:
    stores = await conformance.stores(connections)

    async def allocate(index: int) -> int:
        async with _pick(stores, index).transaction(TEST) as tx:
            return await tx.next_number("invoice")

    outcomes = await run_concurrently(200, allocate)
    errors = [o.error for o in outcomes if o.error is not None]
    numbers = sorted(o.value for o in outcomes if o.value is not None)
    fix = (
        "allocate from one counter row per (tenant, livemode), locked and incremented in the "
        "transaction (UPDATE ... SET last = last + 1 RETURNING last), never max(number) + 1"
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
            allocated.append(await tx.next_number("invoice"))
            raise _Rollback

    with pytest.raises(_Rollback):
        await allocate_then_fail()
    lost = allocated[0]
    async with stores[-1].transaction(TEST) as tx:
        again = await tx.next_number("invoice")
    expect.that(
        lost == 201 and again == 201,
        f"a rolled-back transaction allocated {lost} and the next allocation gave {again}: "
        "the sequence has a gap",
        "allocate inside the transaction so a rollback returns the number",
    )


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
    conformance: Harness, connections: str
) -> None:
    stores = await conformance.stores(connections)
    code = entities.promo_code(TEST, max_redemptions=10)
    customers = await _customers(stores[0], 50)
    async with stores[0].transaction(TEST) as tx:
        await tx.insert(code)

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
    conformance: Harness, connections: str
) -> None:
    stores = await conformance.stores(connections)
    code = entities.promo_code(TEST, max_redemptions_per_customer=3)
    (customer,) = await _customers(stores[0], 1)
    async with stores[0].transaction(TEST) as tx:
        await tx.insert(code)

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
    conformance: Harness, connections: str
) -> None:
    stores = await conformance.stores(connections)
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


async def test_due_subscriptions_are_claimed_once(conformance: Harness, connections: str) -> None:
    stores = await conformance.stores(connections)
    (customer,) = await _customers(stores[0], 1)
    plan = entities.plan(TEST)
    price = entities.price(TEST, plan.id)
    due = [
        entities.subscription(TEST, customer, price, due_at=NOW - timedelta(minutes=i))
        for i in range(60)
    ]
    later = entities.subscription(TEST, customer, price, due_at=NOW + timedelta(days=1))
    async with stores[0].transaction(TEST) as tx:
        await tx.insert(plan)
        await tx.insert(price)
        for subscription in (*due, later):
            await tx.insert(subscription)

    async def claimant(index: int) -> list[Subscription]:
        mine: list[Subscription] = []
        for _ in range(30):  # bounded: a store that re-claims would otherwise loop forever
            async with _pick(stores, index).transaction(TEST) as tx:
                batch = await tx.claim(
                    Subscription, now=NOW, limit=4, claimant=f"worker-{index}", lease=LEASE
                )
            if not batch:
                break
            mine.extend(batch)
        return mine

    outcomes = await run_concurrently(8, claimant)
    errors = [o.error for o in outcomes if o.error is not None]
    claims = Counter(s.id for o in outcomes for s in o.value or ())
    twice = [sid for sid, count in claims.items() if count > 1]
    fix = (
        "claim with one statement that skips held rows (SELECT ... WHERE due_at <= :now AND "
        "(claimed_until IS NULL OR claimed_until <= :now) ... FOR UPDATE SKIP LOCKED, then set "
        "claimed_by and claimed_until in the same transaction)"
    )
    expect.that(
        not twice and not errors,
        f"8 concurrent claimants: {len(twice)} subscriptions were claimed more than once, "
        f"{describe(errors)}",
        fix,
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
    conformance: Harness, connections: str
) -> None:
    stores = await conformance.stores(connections)

    async def store_key(index: int) -> IdempotencyKey:
        async with _pick(stores, index).transaction(TEST) as tx:
            stored, _ = await tx.insert_or_get(
                entities.idempotency_key(TEST, "order-42"), on=("key",)
            )
            return stored

    outcomes = await run_concurrently(50, store_key)
    errors = [o.error for o in outcomes if o.error is not None]
    returned = {o.value.id for o in outcomes if o.value is not None}
    async with stores[0].transaction(TEST, readonly=True) as tx:
        rows = await tx.count(IdempotencyKey, filters={"key": "order-42"})
    expect.that(
        not errors and len(returned) == 1 and rows == 1,
        f"50 concurrent stores of one idempotency key: {rows} rows, {len(returned)} different "
        f"records returned, {describe(errors)}; expected one row returned to every caller",
        "insert with ON CONFLICT (livemode, tenant_id, key) DO NOTHING and return the stored "
        "row; a concurrent duplicate must not raise",
    )


async def test_concurrent_inserts_of_one_unique_key_let_exactly_one_win(
    conformance: Harness, connections: str
) -> None:
    stores = await conformance.stores(connections)

    async def insert(index: int) -> Customer:
        customer = entities.customer(TEST, external_id="u_race")
        async with _pick(stores, index).transaction(TEST) as tx:
            await tx.insert(customer)
        return customer

    outcomes = await run_concurrently(20, insert)
    won = [o.value for o in outcomes if o.value is not None]
    errors = [o.error for o in outcomes if o.error is not None]
    unexpected = [e for e in errors if not isinstance(e, ConflictError)]
    async with stores[0].transaction(TEST, readonly=True) as tx:
        rows = await tx.count(Customer, filters={"external_id": "u_race"})
    expect.that(
        len(won) == 1 and len(errors) == 19 and not unexpected and rows == 1,
        f"20 concurrent inserts of external_id 'u_race': {len(won)} succeeded, {rows} rows, "
        f"{len(errors) - len(unexpected)} ConflictError, unexpected {describe(unexpected)}; "
        "expected one row and 19 ConflictError",
        "enforce unique keys in the database (a unique index) and turn its violation into the "
        "same ConflictError a sequential duplicate gets",
    )
