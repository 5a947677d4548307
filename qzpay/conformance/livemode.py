"""Livemode isolation (DESIGN §5.3): test-mode and live rows never meet.

A store working in test mode never sees live rows and vice versa, for every read, list,
count, aggregate, claim, increment, sequence and unique check: the same ``external_id``,
promo code or idempotency key may exist once on each side, and a row claiming the other
livemode is refused on insert, update and insert_or_get. One test per port method
(``test_livemode_scope[<method>]``, see ``qzpay.conformance.isolation``), on two
single-tenant stores of one database, as a test-mode and a live app would have them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from qzpay.conformance import isolation
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope

pytestmark = pytest.mark.anyio

expect = Expectations("livemode")
TEST = Scope(livemode=False)
LIVE = Scope(livemode=True)
FIX = "apply the transaction's scope (livemode) to every WHERE"
UNIQUE_FIX = "include livemode (and tenant_id in multi mode) in every unique key and index"


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


async def _pair(shared: Shared) -> isolation.Pair:
    test = await shared.store(livemode=False)
    live = await shared.store(livemode=True)
    return isolation.make_pair(
        shared,
        expect,
        isolation.Side(test, TEST, "test mode"),
        isolation.Side(live, LIVE, "live mode"),
        fix=FIX,
        unique_fix=UNIQUE_FIX,
    )


@pytest.mark.parametrize("method", isolation.METHODS + isolation.FORGED)
async def test_livemode_scope(shared: Shared, method: str) -> None:
    await isolation.check(await _pair(shared), method)


async def test_rows_carry_their_livemode_in_the_database(shared: Shared) -> None:
    pair = await _pair(shared)
    raw = shared.require_raw(pair.first.store)
    seeded = await isolation.seed(pair)
    table = f"{pair.first.store.table_prefix}customers"
    for side in (pair.first, pair.second):
        customer = seeded[side.label].customer
        rows = await raw.rows(table, email=customer.email)
        if not rows:
            pytest.skip(f"the customer is not in {table} at all: the prefixes group's rule")
        expect.that(
            "livemode" in rows[0] and bool(rows[0]["livemode"]) is side.scope.livemode,
            f"the {side.label} customer is stored with livemode {rows[0].get('livemode')!r}",
            "store the transaction's livemode in a livemode column of every row",
        )
