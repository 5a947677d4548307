"""Isolation checks written once, run as pairs: prefix one/two, tenant A/B, test/live.

A ``Pair`` is two sides that must never see each other's rows: two stores with different
prefixes on one database, two tenants of one multi-tenant store, the test and live side of
one store. Each check runs in both directions and covers one way a row could leak: read by
exact id, list, count, find by unique key, update, soft delete, use as a foreign key, a unique
key held on the other side, and the atomic operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import attrs

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.promotions import PromoCode
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, NotFoundError, QZPayError

SHARED_EXTERNAL_ID = "u_1"
LEASE = timedelta(minutes=5)


@attrs.frozen
class Side:
    """One side of a pair: a store, the scope its transactions use, and how to name it."""

    store: StoragePort
    scope: Scope
    label: str


@attrs.frozen
class Pair:
    """Two sides that must not see each other, and the fix to suggest when they do."""

    expect: Expectations
    first: Side
    second: Side
    fix: str
    unique_fix: str

    def directions(self) -> Iterator[tuple[Side, Side]]:
        """(reader, owner) both ways round."""
        yield self.first, self.second
        yield self.second, self.first


@attrs.frozen
class Seeded:
    """One side's rows: a customer holding the shared external_id, and billing around it."""

    customer: Customer
    promo_code: PromoCode
    payment: Payment
    subscription: Subscription


async def seed(pair: Pair) -> dict[str, Seeded]:
    """The same kinds of rows, with the same unique keys, on both sides."""
    seeded: dict[str, Seeded] = {}
    for side in (pair.first, pair.second):
        customer = entities.customer(side.scope, external_id=SHARED_EXTERNAL_ID, name="Ann")
        plan = entities.plan(side.scope)
        price = entities.price(side.scope, plan.id)
        code = entities.promo_code(side.scope, code="SAVE10")
        payment = entities.payment(side.scope, customer)
        subscription = entities.subscription(side.scope, customer, price, due_at=NOW)
        refused: ConflictError | None = None
        try:
            async with side.store.transaction(side.scope) as tx:
                await tx.insert(customer)
                await tx.insert(plan)
                await tx.insert(price)
                await tx.insert(code)
                await tx.insert(payment)
                await tx.insert(subscription)
        except ConflictError as error:
            refused = error
        if refused is not None:
            other = pair.first if side is pair.second else pair.second
            pair.expect.broke(
                f"{side.label} refused external_id {SHARED_EXTERNAL_ID!r} or promo code "
                f"'SAVE10' because {other.label} holds it ({refused})",
                pair.unique_fix,
            )
        seeded[side.label] = Seeded(customer, code, payment, subscription)
    return seeded


async def check_reads(pair: Pair, seeded: dict[str, Seeded]) -> None:
    """Get by exact id, with and without deleted rows, alone and with ``get_many``."""
    for reader, owner in pair.directions():
        theirs = seeded[owner.label].customer
        mine = seeded[reader.label].customer
        async with reader.store.transaction(reader.scope, readonly=True) as tx:
            found = await tx.get(Customer, theirs.id)
            also = await tx.get(Customer, theirs.id, include_deleted=True)
            many = list(await tx.get_many((Customer, theirs.id), (Customer, mine.id)))
        pair.expect.that(
            found is None and also is None,
            f"a store bound to {reader.label} read {owner.label}'s customer by its exact id",
            pair.fix,
        )
        pair.expect.that(
            many == [None, mine],
            f"get_many in a store bound to {reader.label} answered {many!r} for "
            f"({owner.label}'s customer, its own customer): expected [None, its own]",
            pair.fix,
        )


async def check_lists(pair: Pair, seeded: dict[str, Seeded]) -> None:
    """List, count and find (by unique key and by a plain column)."""
    for reader, owner in pair.directions():
        mine = seeded[reader.label].customer
        theirs = seeded[owner.label].customer
        async with reader.store.transaction(reader.scope, readonly=True) as tx:
            listed = [c.id for c in (await tx.list(Customer, limit=100)).items]
            listed_all = [
                c.id for c in (await tx.list(Customer, limit=100, include_deleted=True)).items
            ]
            filtered = (await tx.list(Customer, filters={"email": theirs.email})).items
            counted = await tx.count(Customer)
            counted_all = await tx.count(Customer, include_deleted=True)
            by_key = await tx.find(Customer, external_id=SHARED_EXTERNAL_ID)
            by_email = await tx.find(Customer, email=theirs.email)
        where = f"a store bound to {reader.label}"
        pair.expect.that(
            theirs.id not in listed and theirs.id not in listed_all and not filtered,
            f"{where} listed {owner.label}'s customer",
            pair.fix,
        )
        pair.expect.that(
            listed == [mine.id], f"{where} listed {listed} instead of its one customer", pair.fix
        )
        pair.expect.that(
            counted == 1 and counted_all == 1,
            f"{where} counted {counted} customers ({counted_all} with deleted ones) where it "
            f"has 1: the count included {owner.label}'s rows",
            pair.fix,
        )
        pair.expect.that(
            by_key is not None and by_key.id == mine.id,
            f"{where} found {owner.label}'s customer (or none) by external_id "
            f"{SHARED_EXTERNAL_ID!r} instead of its own",
            pair.fix,
        )
        pair.expect.that(
            by_email is None, f"{where} found {owner.label}'s customer by its email", pair.fix
        )


async def _unchanged(pair: Pair, owner: Side, before: Customer, after_what: str) -> None:
    async with owner.store.transaction(owner.scope, readonly=True) as tx:
        now = await tx.get(Customer, before.id)
    pair.expect.that(
        now is not None
        and now.name == before.name
        and now.deleted_at is None
        and now.version == before.version,
        f"{owner.label}'s customer was changed, moved or deleted {after_what}",
        pair.fix,
    )


async def check_updates(pair: Pair, seeded: dict[str, Seeded]) -> None:
    """An update by exact id from the other side finds no row and changes nothing."""
    for reader, owner in pair.directions():
        theirs = seeded[owner.label].customer
        forged = attrs.evolve(
            theirs,
            livemode=reader.scope.livemode,
            tenant_id=reader.scope.tenant_id,
            name="Mallory",
        )
        what = f"a store bound to {reader.label} updating {owner.label}'s customer by its id"
        with pair.expect.refusal(NotFoundError, what, pair.fix):
            async with reader.store.transaction(reader.scope) as tx:
                await tx.update(forged)
        await _unchanged(pair, owner, theirs, f"when a store bound to {reader.label} updated it")


async def check_deletes(pair: Pair, seeded: dict[str, Seeded]) -> None:
    """A soft delete by exact id from the other side finds no row and deletes nothing."""
    for reader, owner in pair.directions():
        theirs = seeded[owner.label].customer
        what = f"a store bound to {reader.label} deleting {owner.label}'s customer by its id"
        with pair.expect.refusal(NotFoundError, what, pair.fix):
            async with reader.store.transaction(reader.scope) as tx:
                await tx.soft_delete(Customer, theirs.id, at=NOW)
        await _unchanged(pair, owner, theirs, f"when a store bound to {reader.label} deleted it")


async def check_references(pair: Pair, seeded: dict[str, Seeded]) -> None:
    """A row on one side may not point at a row of the other (as a foreign key)."""
    for reader, owner in pair.directions():
        theirs = seeded[owner.label].customer
        method = entities.payment_method(reader.scope, theirs.id)
        what = (
            f"inserting a payment method in {reader.label} whose customer_id is "
            f"{owner.label}'s customer"
        )
        with pair.expect.refusal(
            QZPayError,
            what,
            "check every reference within the transaction's scope (a composite foreign key "
            "(column, livemode, tenant_id) in SQL) and raise ValidationError(rule='reference')",
        ):
            async with reader.store.transaction(reader.scope) as tx:
                await tx.insert(method)
        async with reader.store.transaction(reader.scope, readonly=True) as tx:
            kept = await tx.get(PaymentMethod, method.id)
        pair.expect.that(
            kept is None, f"{what} was refused but the row was kept", "roll the transaction back"
        )


async def check_unique_keys(pair: Pair, seeded: dict[str, Seeded]) -> None:
    """Unique keys are per side: taken on one side, still free on the other, and still
    unique within each side."""
    for reader, _owner in pair.directions():
        again = entities.customer(reader.scope, external_id=SHARED_EXTERNAL_ID)
        with pair.expect.refusal(
            ConflictError,
            f"a second customer with external_id {SHARED_EXTERNAL_ID!r} in {reader.label}",
            "keep unique keys unique within each livemode and tenant",
        ):
            async with reader.store.transaction(reader.scope) as tx:
                await tx.insert(again)
    for side in (pair.first, pair.second):
        record = entities.idempotency_key(side.scope, "order-42")
        async with side.store.transaction(side.scope) as tx:
            kept, _ = await tx.insert_or_get(record, on=("key",))
        pair.expect.that(
            kept.id == record.id,
            f"storing idempotency key 'order-42' in {side.label} returned the record of the "
            "other side",
            pair.unique_fix,
        )


async def check_atomic_operations(pair: Pair, seeded: dict[str, Seeded]) -> None:
    """Sequences, redemptions, refunds and claims never cross to the other side."""
    first, second = pair.first, pair.second
    numbers = []
    for side in (first, first, second):
        async with side.store.transaction(side.scope) as tx:
            numbers.append(await tx.next_number("invoice"))
    pair.expect.that(
        numbers == [1, 2, 1],
        f"invoice numbers {numbers[:2]} in {first.label} then {numbers[2]} in {second.label}: "
        "each side has its own gapless sequence starting at 1",
        "keep one invoice-number counter per (prefix, tenant, livemode)",
    )
    for reader, owner in pair.directions():
        theirs = seeded[owner.label]
        mine = seeded[reader.label]
        where = f"a store bound to {reader.label}"
        usage = entities.promo_code_usage(reader.scope, theirs.promo_code, mine.customer)
        with pair.expect.refusal(
            QZPayError, f"{where} redeeming {owner.label}'s promo code by its id", pair.fix
        ):
            async with reader.store.transaction(reader.scope) as tx:
                await tx.increment(PromoCode, usage.promo_code_id, "times_redeemed", 1)
        refund = entities.refund(reader.scope, theirs.payment, amount=100)
        with pair.expect.refusal(
            QZPayError, f"{where} refunding {owner.label}'s payment by its id", pair.fix
        ):
            async with reader.store.transaction(reader.scope) as tx:
                await tx.increment(Payment, refund.payment_id, "refunded_amount", refund.amount)
        async with owner.store.transaction(owner.scope, readonly=True) as tx:
            code = await tx.get(PromoCode, theirs.promo_code.id)
            payment = await tx.get(Payment, theirs.payment.id)
        pair.expect.that(
            code is not None and code.times_redeemed == 0,
            f"{owner.label}'s promo code was redeemed by {where}",
            pair.fix,
        )
        pair.expect.that(
            payment is not None and payment.refunded_amount == 0,
            f"{owner.label}'s payment was refunded by {where}",
            pair.fix,
        )
    # Leases of zero end at once (on any clock), so a leak either way shows.
    for round, (reader, owner) in enumerate(pair.directions()):
        held = seeded[owner.label].subscription
        async with reader.store.transaction(reader.scope) as tx:
            claimed = await tx.claim(
                Subscription,
                now=NOW,
                limit=100,
                claimant=f"worker-{round}",
                lease=timedelta(0),
            )
        pair.expect.that(
            held.id not in {s.id for s in claimed},
            f"a store bound to {reader.label} claimed {owner.label}'s due subscription",
            pair.fix,
        )
