"""Livemode isolation (DESIGN §5.3): test-mode and live rows never meet.

A store working in test mode never sees live rows and vice versa, for every read, list,
count, aggregate (invoice-number sequences, claims) and unique check: the same
``external_id``, promo code or idempotency key may exist once on each side.
"""

from __future__ import annotations

import pytest

from qzpay.conformance import entities, isolation
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.contracts.storage import Scope
from qzpay.domain.customers import Customer
from qzpay.errors import QZPayError

pytestmark = pytest.mark.anyio

expect = Expectations("livemode")
TEST = Scope(livemode=False)
LIVE = Scope(livemode=True)
FIX = "apply the transaction's scope (livemode) to every WHERE"
UNIQUE_FIX = "include livemode (and tenant_id in multi mode) in every unique key and index"


async def _pair(conformance: Harness) -> isolation.Pair:
    # Two stores on one database, as a test-mode and a live-mode app would have.
    test = await conformance.store(livemode=False)
    live = await conformance.store(livemode=True)
    return isolation.Pair(
        expect=expect,
        first=isolation.Side(test, TEST, "test mode"),
        second=isolation.Side(live, LIVE, "live mode"),
        fix=FIX,
        unique_fix=UNIQUE_FIX,
    )


async def test_test_mode_cannot_read_live_rows_by_their_exact_id(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_reads(pair, await isolation.seed(pair))


async def test_test_mode_cannot_list_count_or_find_live_rows(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_lists(pair, await isolation.seed(pair))


async def test_one_mode_cannot_update_or_delete_the_others_rows(conformance: Harness) -> None:
    pair = await _pair(conformance)
    seeded = await isolation.seed(pair)
    await isolation.check_updates(pair, seeded)
    await isolation.check_deletes(pair, seeded)


async def test_one_mode_cannot_reference_the_others_rows(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_references(pair, await isolation.seed(pair))


async def test_unique_keys_are_per_livemode(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_unique_keys(pair, await isolation.seed(pair))


async def test_sequences_and_claims_are_per_livemode(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_atomic_operations(pair, await isolation.seed(pair))


async def test_a_row_claiming_the_other_livemode_is_refused(conformance: Harness) -> None:
    store = await conformance.store()
    forged = entities.customer(LIVE)
    with expect.refusal(
        QZPayError,
        "inserting a live row in a test-mode transaction",
        "refuse rows whose livemode differs from the transaction's scope "
        "(qzpay.adapters.storage_rules.check_entity_scope)",
    ):
        async with store.transaction(TEST) as tx:
            await tx.insert(forged)
    for scope in (TEST, LIVE):
        async with store.transaction(scope, readonly=True) as tx:
            kept = await tx.get(Customer, forged.id)
        expect.that(kept is None, "a refused live row was kept", FIX)


async def test_rows_carry_their_livemode_in_the_database(conformance: Harness) -> None:
    pair = await _pair(conformance)
    raw = conformance.require_raw(pair.first.store)
    seeded = await isolation.seed(pair)
    table = f"{pair.first.store.table_prefix}customers"
    for side in (pair.first, pair.second):
        customer = seeded[side.label].customer
        rows = await raw.rows(table, email=customer.email)
        expect.that(rows, f"the {side.label} customer is not in {table}", "write under the prefix")
        assert rows is not None
        expect.that(
            "livemode" in rows[0] and bool(rows[0]["livemode"]) is side.scope.livemode,
            f"the {side.label} customer is stored with livemode {rows[0].get('livemode')!r}",
            "store the transaction's livemode in a livemode column of every row",
        )
