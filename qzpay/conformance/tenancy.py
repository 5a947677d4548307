"""Tenancy (DESIGN §5.2): in multi mode a store bound to one tenant never reaches another's rows.

Tenant A cannot read, list, count, aggregate, find, claim, increment, update, delete or
reference (as a foreign key, on insert or on update) a row of tenant B, even by its exact id,
nor write a row that claims tenant B; the same unique keys (``external_id``, a promo code, an
idempotency key) may exist in both tenants; sequences stay inside the tenant. One test per
port method (``test_tenant_scope[<method>]``, see ``qzpay.conformance.isolation``). Single mode
has no tenant column, and a scope that does not match the store's mode is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from qzpay.conformance import isolation
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope
from qzpay.domain.customers import Customer
from qzpay.errors import QZPayError

pytestmark = pytest.mark.anyio

expect = Expectations("tenancy")
A = Scope(livemode=False, tenant_id="a")
B = Scope(livemode=False, tenant_id="b")
FIX = "apply the transaction's scope (tenant_id) to every WHERE"
UNIQUE_FIX = "include tenant_id (and livemode) in every unique key"


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


async def _pair(shared: Shared) -> isolation.Pair:
    store = await shared.store(multi_tenant=True)
    return isolation.make_pair(
        shared,
        expect,
        isolation.Side(store, A, "tenant 'a'"),
        isolation.Side(store, B, "tenant 'b'"),
        fix=FIX,
        unique_fix=UNIQUE_FIX,
    )


@pytest.mark.parametrize("method", isolation.METHODS + isolation.FORGED)
async def test_tenant_scope(shared: Shared, method: str) -> None:
    await isolation.check(await _pair(shared), method)


async def test_a_scope_must_match_the_tenancy_mode(shared: Shared) -> None:
    multi = await shared.store(multi_tenant=True)
    single = await shared.store(prefix="single_")
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


async def test_rows_carry_their_tenant_in_the_database(shared: Shared) -> None:
    pair = await _pair(shared)
    store = pair.first.store
    raw = shared.require_raw(store)
    seeded = await isolation.seed(pair)
    table = f"{store.table_prefix}customers"
    for side in (pair.first, pair.second):
        customer = seeded[side.label].customer
        rows = await raw.rows(table, email=customer.email)
        if not rows:
            pytest.skip(f"the customer is not in {table} at all: the prefixes group's rule")
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
    single = await shared.store(prefix="single_")
    columns = await raw.columns(f"{single.table_prefix}customers")
    expect.that(
        columns is not None and "tenant_id" not in columns,
        f"a single-tenant store's {single.table_prefix}customers has columns {columns}",
        "single mode has no tenant_id column (DESIGN §5.2); add it only in multi mode",
    )
