"""Prefixes (DESIGN §5.1): every object lives under the store's table prefix.

Two stores with different prefixes on one database never see each other's rows; two with
the same prefix share them (``test_prefix_scope[<method>]``: every port method, see
``qzpay.conformance.isolation``); a hostile prefix is refused before any SQL runs; and in the
database itself (the raw view) rows land in ``{prefix}{table}`` and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from qzpay.conformance import entities, isolation
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.conformance.raw import same_id
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.catalog import Plan
from qzpay.domain.customers import Customer
from qzpay.domain.registry import SPECS
from qzpay.errors import ValidationError

pytestmark = pytest.mark.anyio

expect = Expectations("prefixes")
TEST = Scope(livemode=False)
FIX = (
    "name every table {prefix}{name} from the store's table_prefix, in every statement "
    "(reads and writes alike)"
)
VALIDATE = (
    "validate table_prefix against ^[a-z_][a-z0-9_]{0,30}$ and raise qzpay.ValidationError "
    "before building any SQL (qzpay.adapters.storage_rules.table_prefix does both)"
)


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


async def _pair(shared: Shared) -> isolation.Pair:
    one = await shared.store(prefix="one_")
    two = await shared.store(prefix="two_")
    return isolation.make_pair(
        shared,
        expect,
        isolation.Side(one, TEST, "prefix 'one_'"),
        isolation.Side(two, TEST, "prefix 'two_'"),
        fix=FIX,
        unique_fix=FIX,
    )


async def test_stores_of_one_test_share_one_database(conformance: Harness) -> None:
    first = await conformance.store()
    second = await conformance.store()
    ann = entities.customer(TEST)
    async with first.transaction(TEST) as tx:
        await tx.insert(ann)
    async with second.transaction(TEST, readonly=True) as tx:
        seen = await tx.get(Customer, ann.id)
    expect.that(
        seen is not None,
        "two stores made with the same test_id and prefix do not share their rows",
        "make the factory return stores on ONE database for one test_id (the isolation "
        "tests rely on it: a pair on separate databases would prove nothing)",
    )


@pytest.mark.parametrize("method", isolation.METHODS)
async def test_prefix_scope(shared: Shared, method: str) -> None:
    await isolation.check(await _pair(shared), method)


HOSTILE = (
    "Billing_",
    "billing-",
    "1billing_",
    "bill ing_",
    'bill"ing_',
    "b" * 32,
    "",
)


async def _refusal(conformance: Harness, prefix: str) -> Exception | None:
    """What refused ``prefix``: making the store, or opening it; ``None`` if nothing did."""
    try:
        made = await conformance.handle(prefix=prefix)
        await conformance.open(made.storage)
    except Exception as error:
        return error
    return None


async def test_a_hostile_prefix_is_refused_before_any_sql_runs(conformance: Harness) -> None:
    good = await conformance.store()
    ann = entities.customer(TEST)
    async with good.transaction(TEST) as tx:
        await tx.insert(ann)
    injection = f"x_customers; DROP TABLE {good.table_prefix}customers; --"
    for prefix in (*HOSTILE, injection):
        refusal = await _refusal(conformance, prefix)
        if refusal is None:
            expect.broke(f"prefix {prefix!r} was accepted", VALIDATE)
        expect.that(
            isinstance(refusal, ValidationError),
            f"prefix {prefix!r} was refused with {type(refusal).__name__} ({refusal}), "
            "not ValidationError: was SQL already built or run?",
            VALIDATE,
        )
    async with good.transaction(TEST, readonly=True) as tx:
        still = await tx.get(Customer, ann.id)
    expect.that(still is not None, "a hostile prefix reached the database", VALIDATE)
    raw = conformance.raw(good)
    if raw is not None:
        names = await raw.table_names()
        made_up = [
            name for name in names for prefix in HOSTILE if prefix and name.startswith(prefix)
        ]
        expect.that(not made_up, f"tables {made_up} were created for hostile prefixes", VALIDATE)


async def _landed(shared: Shared, store: StoragePort, customer: Customer) -> None:
    raw = shared.require_raw(store)
    prefix = store.table_prefix
    table = f"{prefix}customers"
    rows = await raw.rows(table, email=customer.email)
    elsewhere = await raw.tables_holding("customers", "email", customer.email, skip=[table])
    if not rows:
        where = f"it is in {', '.join(elsewhere)}" if elsewhere else "no customers table holds it"
        expect.broke(
            f"the customer written through a store with table_prefix {prefix!r} is not in "
            f"table {table} ({where})",
            FIX,
        )
    expect.that(
        len(rows) == 1 and same_id(rows[0]["id"], customer.id),
        f"table {table} holds {len(rows)} rows for one customer, or another id",
        FIX,
    )
    expect.that(
        not elsewhere,
        f"the customer written under prefix {prefix!r} also landed in {', '.join(elsewhere)}",
        FIX,
    )


async def test_rows_land_under_the_prefix_in_the_database(shared: Shared) -> None:
    pair = await _pair(shared)
    raw = shared.require_raw(pair.first.store)
    seeded = await isolation.seed(pair)
    for side in (pair.first, pair.second):
        await _landed(shared, side.store, seeded[side.label].customer)
        async with side.store.transaction(side.scope) as tx:
            plan = entities.plan(side.scope, name=f"plan-{pair.tag}")
            await tx.insert(plan)
        rows = await raw.rows(f"{side.store.table_prefix}plans", name=plan.name)
        expect.that(
            rows and same_id(rows[0]["id"], plan.id),
            f"the plan written under prefix {side.store.table_prefix!r} is not in "
            f"{side.store.table_prefix}plans",
            FIX,
        )
    names = set(await raw.table_names())
    for side in (pair.first, pair.second):
        prefix = side.store.table_prefix
        missing = [spec.table for spec in SPECS if f"{prefix}{spec.table}" not in names]
        expect.that(
            not missing,
            f"the database has no {', '.join(prefix + name for name in missing)}",
            "create every table of the data model (DESIGN §4) as {prefix}{name}",
        )
    await _no_plan_outside(pair)


async def _no_plan_outside(pair: isolation.Pair) -> None:
    """A plan is in its own prefix's table only (checked by id through the store as well)."""
    for reader, owner in pair.directions():
        async with owner.store.transaction(owner.scope, readonly=True) as tx:
            plans = (await tx.list(Plan, filters={"name": pair.tag}, limit=100)).items
        async with reader.store.transaction(reader.scope, readonly=True) as tx:
            leaked = [plan for plan in plans if await tx.get(Plan, plan.id) is not None]
        expect.that(
            not leaked,
            f"a store bound to {reader.label} read {owner.label}'s plans by their ids",
            FIX,
        )
