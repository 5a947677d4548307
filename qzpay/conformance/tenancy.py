"""Tenancy (DESIGN §5.2): in multi mode a store bound to one tenant never reaches another's rows.

Tenant A cannot read, list, count, find, update, delete or reference (as a foreign key) a
row of tenant B, even by its exact id; the same ``external_id`` may exist in both tenants;
sequences, redemptions, refunds and claims stay inside the tenant. Single mode has no tenant
column, and a scope that does not match the store's mode is refused.
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

expect = Expectations("tenancy")
A = Scope(livemode=False, tenant_id="a")
B = Scope(livemode=False, tenant_id="b")
FIX = "apply the transaction's scope (tenant_id) to every WHERE"
UNIQUE_FIX = "include tenant_id (and livemode) in every unique key"


async def _pair(conformance: Harness) -> isolation.Pair:
    store = await conformance.store(multi_tenant=True)
    return isolation.Pair(
        expect=expect,
        first=isolation.Side(store, A, "tenant 'a'"),
        second=isolation.Side(store, B, "tenant 'b'"),
        fix=FIX,
        unique_fix=UNIQUE_FIX,
    )


async def test_a_tenant_cannot_read_another_tenants_row_by_its_exact_id(
    conformance: Harness,
) -> None:
    pair = await _pair(conformance)
    await isolation.check_reads(pair, await isolation.seed(pair))


async def test_a_tenant_cannot_list_count_or_find_another_tenants_rows(
    conformance: Harness,
) -> None:
    pair = await _pair(conformance)
    await isolation.check_lists(pair, await isolation.seed(pair))


async def test_a_tenant_cannot_update_another_tenants_row(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_updates(pair, await isolation.seed(pair))


async def test_a_tenant_cannot_delete_another_tenants_row(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_deletes(pair, await isolation.seed(pair))


async def test_a_tenant_cannot_reference_another_tenants_row(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_references(pair, await isolation.seed(pair))


async def test_the_same_external_id_may_exist_in_both_tenants(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_unique_keys(pair, await isolation.seed(pair))


async def test_atomic_operations_stay_inside_the_tenant(conformance: Harness) -> None:
    pair = await _pair(conformance)
    await isolation.check_atomic_operations(pair, await isolation.seed(pair))


async def test_a_row_claiming_another_tenant_is_refused(conformance: Harness) -> None:
    store = await conformance.store(multi_tenant=True)
    forged = entities.customer(A)
    with expect.refusal(
        QZPayError,
        "inserting a row with tenant_id 'a' in a transaction of tenant 'b'",
        "refuse rows whose tenant_id or livemode differ from the transaction's scope "
        "(qzpay.adapters.storage_rules.check_entity_scope)",
    ):
        async with store.transaction(B) as tx:
            await tx.insert(forged)
    for scope in (A, B):
        async with store.transaction(scope, readonly=True) as tx:
            kept = await tx.get(Customer, forged.id)
        expect.that(kept is None, "a refused cross-tenant row was kept", FIX)


async def test_a_scope_must_match_the_tenancy_mode(conformance: Harness) -> None:
    multi = await conformance.store(multi_tenant=True)
    single = await conformance.store(prefix="single_")
    fix = (
        "a multi-tenant store needs a tenant_id in every scope and a single-tenant one takes "
        "none (qzpay.adapters.storage_rules.check_scope); refuse with ConfigurationError"
    )
    with expect.refusal(QZPayError, "a multi-tenant store opening a scope without tenant", fix):
        async with multi.transaction(Scope(livemode=False)) as tx:
            await tx.count(Customer)
    with expect.refusal(QZPayError, "a single-tenant store opening a scope of tenant 'a'", fix):
        async with single.transaction(A) as tx:
            await tx.count(Customer)
    expect.that(
        multi.multi_tenant and not single.multi_tenant,
        "the store's multi_tenant property does not say the mode it was made with",
        "report the tenancy mode the factory asked for",
    )


async def test_rows_carry_their_tenant_in_the_database(conformance: Harness) -> None:
    pair = await _pair(conformance)
    store = pair.first.store
    raw = conformance.require_raw(store)
    seeded = await isolation.seed(pair)
    table = f"{store.table_prefix}customers"
    for side in (pair.first, pair.second):
        customer = seeded[side.label].customer
        rows = await raw.rows(table, email=customer.email)
        expect.that(
            rows, f"{side.label}'s customer is not in {table}", "write rows under the prefix"
        )
        assert rows is not None
        expect.that(
            "tenant_id" in rows[0] and rows[0]["tenant_id"] == side.scope.tenant_id,
            f"{side.label}'s customer is stored with tenant_id {rows[0].get('tenant_id')!r}",
            "store the transaction's tenant_id in a tenant_id column of every tenant-owned table",
        )
        expect.that(
            bool(rows[0]["livemode"]) is False,
            f"{side.label}'s test-mode customer is stored with livemode {rows[0]['livemode']!r}",
            "store the transaction's livemode on every row",
        )
    single = await conformance.store(prefix="single_")
    columns = await raw.columns(f"{single.table_prefix}customers")
    expect.that(
        columns is not None and "tenant_id" not in columns,
        f"a single-tenant store's {single.table_prefix}customers has columns {columns}",
        "single mode has no tenant_id column (DESIGN §5.2); add it only in multi mode",
    )
