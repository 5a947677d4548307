"""Scope isolation written once, run as pairs: prefix one/two, tenant A/B, test/live.

A ``Pair`` is two sides that must never see each other's rows: two stores with different
prefixes on one database, two tenants of one multi-tenant store, the test and live side of
one database. ``check(pair, method)`` is one cell of the scope matrix: it seeds the same
kinds of rows, holding the same unique keys, on both sides, and then checks, both ways round,
that one port method used on one side never reads, returns, changes, claims, counts or
references a row of the other. Every read (``get``, ``get_many``, ``find``, ``list``,
``count``, ``aggregate``, ``claim``, ``increment``, ``insert_or_get``) and every write
(``insert``, ``update`` — also one that points a reference at the other side's row —,
``soft_delete``, ``increment``, ``claim``, ``next_number``, ``insert_or_get``) has its cell;
``FORGED`` cells (a row carrying the other side's livemode or tenant) apply to tenancy and
livemode pairs, where the sides differ in scope rather than in tables.

The cells share their stores (``qzpay.conformance.shared``): each seeds rows of its own tag
and key, and claims within its own window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta

import attrs

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.promotions import PromoCode
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, NotFoundError, QZPayError

METHODS: tuple[str, ...] = (
    "get",
    "get_many",
    "find",
    "list",
    "count",
    "aggregate",
    "claim",
    "increment",
    "insert_or_get",
    "insert",
    "insert_reference",
    "update",
    "update_reference",
    "soft_delete",
    "next_number",
)
"""The cells every pair runs: one per way a row of the other side could be reached."""

FORGED: tuple[str, ...] = ("insert_forged", "update_forged", "insert_or_get_forged")
"""Cells for pairs whose sides differ in scope: a row claiming the other side's scope."""

AMOUNTS = {0: 1_000, 1: 2_000}
"""Each side's payment amount, so a sum that mixes them shows."""


@attrs.frozen
class Side:
    """One side of a pair: a store, the scope its transactions use, and how to name it."""

    store: StoragePort
    scope: Scope
    label: str


@attrs.frozen
class Pair:
    """Two sides that must not see each other, the fix to suggest when they do, and the
    tag, key and claim window of the cell."""

    expect: Expectations
    first: Side
    second: Side
    fix: str
    unique_fix: str
    tag: str = attrs.field(factory=entities.tag)
    window: datetime = NOW

    @property
    def key(self) -> str:
        """The unique-key value both sides hold (external_id, promo code, idempotency key)."""
        return f"k_{self.tag}"

    def directions(self) -> Iterator[tuple[Side, Side]]:
        """(reader, owner) both ways round."""
        yield self.first, self.second
        yield self.second, self.first


def make_pair(
    shared: Shared,
    expect: Expectations,
    first: Side,
    second: Side,
    *,
    fix: str,
    unique_fix: str,
) -> Pair:
    """A pair for one cell: a fresh tag and key, and a claim window of its own."""
    return Pair(expect, first, second, fix, unique_fix, window=shared.window())


@attrs.frozen
class Seeded:
    """One side's rows: a customer holding the shared key, and billing around it."""

    customer: Customer
    plan: Plan
    price: Price
    promo_code: PromoCode
    payment: Payment
    subscription: Subscription
    idempotency_key: IdempotencyKey


async def seed(pair: Pair) -> dict[str, Seeded]:
    """The same kinds of rows, with the same unique keys, on both sides."""
    seeded: dict[str, Seeded] = {}
    for index, side in enumerate((pair.first, pair.second)):
        scope = side.scope
        customer = entities.customer(scope, external_id=pair.key, name=pair.tag)
        plan = entities.plan(scope, name=pair.tag)
        price = entities.price(scope, plan.id)
        rows = Seeded(
            customer=customer,
            plan=plan,
            price=price,
            promo_code=entities.promo_code(scope, code=pair.key),
            payment=entities.payment(scope, customer, amount=AMOUNTS[index], provider=pair.tag),
            subscription=entities.subscription(
                scope, customer, price, due_at=pair.window - timedelta(hours=1)
            ),
            idempotency_key=entities.idempotency_key(scope, pair.key),
        )
        refused: ConflictError | None = None
        try:
            async with side.store.transaction(scope) as tx:
                for row in attrs.astuple(rows, recurse=False):
                    await tx.insert(row)
        except ConflictError as error:
            refused = error
        if refused is not None:
            other = pair.first if side is pair.second else pair.second
            pair.expect.broke(
                f"{side.label} refused external_id, promo code or idempotency key "
                f"{pair.key!r} because {other.label} holds it ({refused})",
                pair.unique_fix,
            )
        seeded[side.label] = rows
    return seeded


async def check(pair: Pair, method: str) -> None:
    """Seed both sides, then run the cell ``method`` both ways round."""
    seeded = await seed(pair)
    cell = _CELLS[method]
    for reader, owner in pair.directions():
        await cell(pair, reader, owner, seeded[reader.label], seeded[owner.label])


_Cell = Callable[[Pair, Side, Side, Seeded, Seeded], Awaitable[None]]
_CELLS: dict[str, _Cell] = {}


def _cell(name: str) -> Callable[[_Cell], _Cell]:
    def register(function: _Cell) -> _Cell:
        _CELLS[name] = function
        return function

    return register


def _where(reader: Side) -> str:
    return f"a store bound to {reader.label}"


async def _unchanged(pair: Pair, owner: Side, theirs: Seeded, after_what: str) -> None:
    """The owner's rows are as seeded: not renamed, deleted, re-versioned, claimed or counted."""
    async with owner.store.transaction(owner.scope, readonly=True) as tx:
        customer = await tx.get(Customer, theirs.customer.id)
        code = await tx.get(PromoCode, theirs.promo_code.id)
        payment = await tx.get(Payment, theirs.payment.id)
        subscription = await tx.get(Subscription, theirs.subscription.id)
    problems = []
    if customer is None or customer.deleted_at is not None:
        problems.append("its customer was deleted (or moved)")
    elif customer.name != theirs.customer.name or customer.version != 1:
        problems.append(f"its customer was changed (name {customer.name!r}, v{customer.version})")
    if code is None or code.times_redeemed != 0 or code.version != 1:
        problems.append("its promo code was redeemed")
    if payment is None or payment.refunded_amount != 0:
        problems.append("its payment was refunded")
    if subscription is None or subscription.claimed_by is not None:
        problems.append("its subscription was claimed")
    elif subscription.customer_id != theirs.customer.id:
        problems.append("its subscription was re-pointed")
    pair.expect.that(
        not problems, f"{'; '.join(problems)} {after_what} ({owner.label}'s rows)", pair.fix
    )


# -- reads ----------------------------------------------------------------------------------


@_cell("get")
async def _get(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        found = await tx.get(Customer, theirs.customer.id)
        also = await tx.get(Customer, theirs.customer.id, include_deleted=True)
        own = await tx.get(Customer, mine.customer.id)
    pair.expect.that(
        found is None and also is None,
        f"{_where(reader)} read {owner.label}'s customer by its exact id (get)",
        pair.fix,
    )
    pair.expect.that(own is not None, f"{_where(reader)} could not read its own customer", pair.fix)


@_cell("get_many")
async def _get_many(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        many = list(
            await tx.get_many(
                (Customer, theirs.customer.id),
                (Customer, mine.customer.id),
                (Payment, theirs.payment.id),
            )
        )
    pair.expect.that(
        [None if row is None else row.id for row in many] == [None, mine.customer.id, None],
        f"get_many in {_where(reader)} answered {many!r} for ({owner.label}'s customer, its "
        f"own customer, {owner.label}'s payment): expected [None, its own, None]",
        pair.fix,
    )


@_cell("find")
async def _find(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        by_key = await tx.find(Customer, external_id=pair.key)
        by_key_all = await tx.find(Customer, include_deleted=True, external_id=pair.key)
        by_email = await tx.find(Customer, email=theirs.customer.email)
        by_code = await tx.find(PromoCode, code=pair.key)
    pair.expect.that(
        by_key is not None
        and by_key.id == mine.customer.id
        and by_key_all is not None
        and by_key_all.id == mine.customer.id,
        f"{_where(reader)} found {owner.label}'s customer (or none) by external_id "
        f"{pair.key!r} instead of its own (find)",
        pair.fix,
    )
    pair.expect.that(
        by_email is None, f"{_where(reader)} found {owner.label}'s customer by email", pair.fix
    )
    pair.expect.that(
        by_code is not None and by_code.id == mine.promo_code.id,
        f"{_where(reader)} found {owner.label}'s promo code (or none) by its code",
        pair.fix,
    )


@_cell("list")
async def _list(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        listed = [c.id for c in (await tx.list(Customer, filters={"name": pair.tag})).items]
        everything = [
            c.id
            for c in (
                await tx.list(Customer, filters={"name": pair.tag}, include_deleted=True)
            ).items
        ]
        by_email = (await tx.list(Customer, filters={"email": theirs.customer.email})).items
    pair.expect.that(
        listed == [mine.customer.id] == everything and not by_email,
        f"{_where(reader)} listed {len(listed)} customers ({len(everything)} with "
        f"include_deleted, {len(by_email)} by {owner.label}'s email) where it has 1: the list "
        f"included {owner.label}'s rows",
        pair.fix,
    )


@_cell("count")
async def _count(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        counted = await tx.count(Customer, filters={"name": pair.tag})
        counted_all = await tx.count(Customer, filters={"name": pair.tag}, include_deleted=True)
        payments = await tx.count(Payment, filters={"provider": pair.tag})
    pair.expect.that(
        counted == counted_all == payments == 1,
        f"{_where(reader)} counted {counted} customers ({counted_all} with deleted ones) and "
        f"{payments} payments where it has 1 of each: the count included {owner.label}'s rows",
        pair.fix,
    )


@_cell("aggregate")
async def _aggregate(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    filters = {"provider": pair.tag}
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        total = await tx.aggregate(Payment, sums=("amount",), filters=filters)
        everything = await tx.aggregate(
            Payment, sums=("amount",), filters=filters, include_deleted=True
        )
        grouped = await tx.aggregate(
            Payment, group_by=("currency",), sums=("amount",), filters=filters
        )
    seen = [(g.count, dict(g.sums)) for g in (*total, *everything, *grouped)]
    expected = (1, {"amount": mine.payment.amount})
    pair.expect.that(
        seen == [expected] * 3,
        f"{_where(reader)} aggregated its one payment of {mine.payment.amount} as {seen} "
        f"(no group_by, include_deleted, group_by currency): {owner.label}'s payment of "
        f"{theirs.payment.amount} was counted",
        pair.fix,
    )


@_cell("claim")
async def _claim(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    async with reader.store.transaction(reader.scope) as tx:
        claimed = await tx.claim(
            Subscription,
            now=pair.window,
            limit=1000,
            claimant=f"worker-{reader.label}",
            lease=timedelta(0),  # ends at once, on any clock: the other direction can claim
        )
    ids = {s.id for s in claimed}
    pair.expect.that(
        theirs.subscription.id not in ids,
        f"{_where(reader)} claimed {owner.label}'s due subscription",
        pair.fix,
    )
    pair.expect.that(
        mine.subscription.id in ids,
        f"{_where(reader)} did not claim its own due subscription",
        pair.fix,
    )
    async with owner.store.transaction(owner.scope, readonly=True) as tx:
        held = await tx.get(Subscription, theirs.subscription.id)
    pair.expect.that(
        held is not None and held.claimed_by != f"worker-{reader.label}",
        f"{owner.label}'s subscription carries the lease of {_where(reader)}",
        pair.fix,
    )


@_cell("increment")
async def _increment(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    what = f"{_where(reader)} incrementing {owner.label}'s"
    with pair.expect.refusal(NotFoundError, f"{what} promo code by its id", pair.fix):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.increment(PromoCode, theirs.promo_code.id, "times_redeemed", 1)
    with pair.expect.refusal(NotFoundError, f"{what} payment's refunded_amount", pair.fix):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.increment(Payment, theirs.payment.id, "refunded_amount", 100, at_most="amount")
    await _unchanged(pair, owner, theirs, f"after {what} rows")


@_cell("insert_or_get")
async def _insert_or_get(
    pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded
) -> None:
    async with reader.store.transaction(reader.scope) as tx:
        stored, inserted = await tx.insert_or_get(
            entities.idempotency_key(reader.scope, pair.key), on=("operation", "key")
        )
    pair.expect.that(
        stored.id == mine.idempotency_key.id and not inserted,
        f"insert_or_get of idempotency key {pair.key!r} in {_where(reader)} returned "
        f"{'the record of ' + owner.label if stored.id == theirs.idempotency_key.id else 'a new record'}"
        f" (inserted={inserted}) where its own is stored",
        pair.unique_fix,
    )


# -- writes ---------------------------------------------------------------------------------


@_cell("insert")
async def _insert(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    """The key is free on each side (seeding took it on both) and still unique within each."""
    again = entities.customer(reader.scope, external_id=pair.key)
    with pair.expect.refusal(
        ConflictError,
        f"a second customer with external_id {pair.key!r} in {reader.label}",
        "keep unique keys unique within each prefix, livemode and tenant",
    ):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.insert(again)


@_cell("insert_reference")
async def _insert_reference(
    pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded
) -> None:
    method = entities.payment_method(reader.scope, theirs.customer.id)
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


@_cell("update")
async def _update(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    forged = attrs.evolve(
        theirs.customer,
        livemode=reader.scope.livemode,
        tenant_id=reader.scope.tenant_id,
        name="Mallory",
    )
    what = f"{_where(reader)} updating {owner.label}'s customer by its id"
    with pair.expect.refusal(NotFoundError, what, pair.fix):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.update(forged)
    await _unchanged(pair, owner, theirs, f"after {what}")


@_cell("update_reference")
async def _update_reference(
    pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded
) -> None:
    repointed = attrs.evolve(mine.subscription, customer_id=theirs.customer.id)
    what = (
        f"{_where(reader)} updating its own subscription to point (customer_id) at "
        f"{owner.label}'s customer"
    )
    with pair.expect.refusal(
        QZPayError,
        what,
        "check references on update as on insert: within the transaction's scope (a "
        "composite foreign key in SQL), ValidationError(rule='reference')",
    ):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.update(repointed)
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        stored = await tx.get(Subscription, mine.subscription.id)
    pair.expect.that(
        stored is not None and stored.customer_id == mine.customer.id,
        f"{what} was refused but the subscription now points elsewhere",
        "roll the transaction back",
    )


@_cell("soft_delete")
async def _soft_delete(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    what = f"{_where(reader)} deleting {owner.label}'s customer by its id"
    with pair.expect.refusal(NotFoundError, what, pair.fix):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.soft_delete(Customer, theirs.customer.id, at=NOW)
    await _unchanged(pair, owner, theirs, f"after {what}")


@_cell("next_number")
async def _next_number(pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded) -> None:
    sequence = f"invoice.{pair.tag}.{'ab'[reader is pair.second]}"
    numbers = []
    for side in (reader, reader, owner):
        async with side.store.transaction(side.scope) as tx:
            numbers.append(await tx.next_number(sequence))
    pair.expect.that(
        numbers == [1, 2, 1],
        f"sequence {sequence!r}: {numbers[:2]} in {reader.label} then {numbers[2]} in "
        f"{owner.label}; each side has its own gapless sequence starting at 1",
        "keep one counter per (prefix, sequence, livemode, tenant)",
    )


# -- rows claiming the other side's scope ---------------------------------------------------


def _refuse_scope_fix() -> str:
    return (
        "refuse rows whose tenant_id or livemode differ from the transaction's scope "
        "(qzpay.adapters.storage_rules.check_entity_scope), on insert, update and insert_or_get"
    )


async def _absent(pair: Pair, kind: type[object], row_id: object, what: str) -> None:
    for side in (pair.first, pair.second):
        async with side.store.transaction(side.scope, readonly=True) as tx:
            kept = await tx.get(kind, row_id, include_deleted=True)  # type: ignore[arg-type]
        pair.expect.that(kept is None, f"{what} was kept ({side.label})", _refuse_scope_fix())


@_cell("insert_forged")
async def _insert_forged(
    pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded
) -> None:
    forged = entities.customer(owner.scope)
    what = f"inserting a row of {owner.label} in a transaction of {reader.label}"
    with pair.expect.refusal(QZPayError, what, _refuse_scope_fix()):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.insert(forged)
    await _absent(pair, Customer, forged.id, what)


@_cell("insert_or_get_forged")
async def _insert_or_get_forged(
    pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded
) -> None:
    forged = entities.idempotency_key(owner.scope, f"forged_{pair.key}")
    what = f"insert_or_get of a row of {owner.label} in a transaction of {reader.label}"
    with pair.expect.refusal(QZPayError, what, _refuse_scope_fix()):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.insert_or_get(forged, on=("operation", "key"))
    await _absent(pair, IdempotencyKey, forged.id, what)


@_cell("update_forged")
async def _update_forged(
    pair: Pair, reader: Side, owner: Side, mine: Seeded, theirs: Seeded
) -> None:
    moved = attrs.evolve(
        mine.customer, livemode=owner.scope.livemode, tenant_id=owner.scope.tenant_id
    )
    what = f"updating {reader.label}'s customer to carry the scope of {owner.label}"
    with pair.expect.refusal(QZPayError, what, _refuse_scope_fix()):
        async with reader.store.transaction(reader.scope) as tx:
            await tx.update(moved)
    async with reader.store.transaction(reader.scope, readonly=True) as tx:
        stored = await tx.get(Customer, mine.customer.id)
    pair.expect.that(
        stored is not None and stored.version == 1,
        f"{what} was refused but the customer changed or left {reader.label}",
        _refuse_scope_fix(),
    )
