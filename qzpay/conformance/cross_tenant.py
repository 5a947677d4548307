"""The cross-tenant sweep: ``StoragePort.across_tenants(livemode=...)``, two reads and no more.

``due(kind, now=, limit=)`` answers the rows of a claimable kind that are due by ``now``, not
held by a live lease and not deleted, in every tenant of the sweep's livemode (never the
other livemode), oldest due first, at most ``limit``, each carrying its ``tenant_id``.
``owners(kind, **key)`` answers the rows holding ``key`` in every tenant of the livemode, not
deleted. On a single-tenant store the same reads answer rows with ``tenant_id`` ``None``.
The sweep object offers no write method, and no other read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer
from qzpay.domain.payments import PaymentMethod
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError

pytestmark = pytest.mark.anyio

expect = Expectations("cross_tenant")
HOUR = timedelta(hours=1)
FIX = (
    "sweep with the transaction's livemode but no tenant condition: WHERE livemode = :livemode "
    "AND deleted_at IS NULL AND due_at <= :now AND (claimed_until IS NULL OR claimed_until <= "
    "<the clock>) ORDER BY due_at, id LIMIT :limit"
)
OWNERS_FIX = (
    "answer owners with WHERE livemode = :livemode AND deleted_at IS NULL AND <key columns> "
    "in every tenant (no tenant condition), ORDER BY id"
)


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


def _scopes(multi: bool, livemode: bool = False) -> tuple[Scope, Scope]:
    if not multi:
        return Scope(livemode=livemode), Scope(livemode=livemode)
    tag = entities.tag()
    return (
        Scope(livemode=livemode, tenant_id=f"x_{tag}"),
        Scope(livemode=livemode, tenant_id=f"y_{tag}"),
    )


async def _store(shared: Shared, multi: bool) -> StoragePort:
    return await shared.store(multi_tenant=multi, prefix="multi_" if multi else "single_")


async def _subscriptions(
    store: StoragePort, scope: Scope, due: list[datetime | None]
) -> list[Subscription]:
    customer = entities.customer(scope)
    plan = entities.plan(scope)
    price = entities.price(scope, plan.id)
    rows = [entities.subscription(scope, customer, price, due_at=at) for at in due]
    async with store.transaction(scope) as tx:
        for row in (customer, plan, price, *rows):
            await tx.insert(row)
    return rows


@attrs.frozen
class _Due:
    store: StoragePort
    window: datetime
    expected: list[Subscription]
    deleted: Subscription
    held: Subscription
    live: Subscription


async def _seed_due(shared: Shared, multi: bool) -> _Due:
    store = await _store(shared, multi)
    w = shared.window()
    x, y = _scopes(multi)
    x_rows = await _subscriptions(
        store, x, [w - 3 * HOUR, w - HOUR, w + timedelta(minutes=1), None, w - 2.5 * HOUR]
    )
    y_rows = await _subscriptions(store, y, [w - 4 * HOUR, w - 2 * HOUR])
    (live,) = await _subscriptions(store, _scopes(multi, livemode=True)[0], [w - 3.5 * HOUR])
    deleted, held = x_rows[4], y_rows[0]
    async with store.transaction(x) as tx:
        await tx.soft_delete(Subscription, deleted.id, at=w)
    async with store.transaction(y) as tx:
        (claimed,) = await tx.claim(
            Subscription, now=w, limit=1, claimant="job", lease=timedelta(minutes=10)
        )
    assert claimed.id == held.id
    return _Due(store, w, [x_rows[0], y_rows[1], x_rows[1]], deleted, held, live)


def _describe(rows: _Due, answer: list[Any]) -> str:
    names = {
        rows.deleted.id: "a deleted row",
        rows.held.id: "a row held by a live lease",
        rows.live.id: "a row of the other livemode",
    }
    wrong = [names[row.id] for row in answer if row.id in names]
    return ", ".join(wrong) if wrong else "not the due rows oldest first"


@pytest.mark.parametrize("tenancy", ["multi_tenant", "single_tenant"])
async def test_due_answers_every_tenants_due_rows_oldest_first(
    shared: Shared, tenancy: str
) -> None:
    rows = await _seed_due(shared, tenancy == "multi_tenant")
    async with rows.store.across_tenants(livemode=False) as sweep:
        answer = list(await sweep.due(Subscription, now=rows.window, limit=100))
        first = list(await sweep.due(Subscription, now=rows.window, limit=2))
    expected = [(s.id, s.tenant_id) for s in rows.expected]
    expect.that(
        [(s.id, s.tenant_id) for s in answer] == expected,
        f"due() on a {tenancy.replace('_', '-')} store answered {len(answer)} rows "
        f"({_describe(rows, answer)}) where 3 are due in test mode, of two tenants, oldest "
        "first, each with its tenant_id",
        FIX,
    )
    expect.that(
        [s.id for s in first] == [s.id for s in rows.expected[:2]],
        f"due(limit=2) answered {len(first)} rows, not the 2 oldest due",
        FIX,
    )


@asynccontextmanager
async def _seeding(name: str) -> AsyncIterator[None]:
    """Seeding the holders of one key on several sides: a refusal is another group's rule."""
    try:
        yield
    except ConflictError as error:
        pytest.skip(
            f"the {name} row could not hold the key another side holds ({error}): the unique "
            "keys of the tenancy, livemode and soft_deletes groups"
        )


@pytest.mark.parametrize("tenancy", ["multi_tenant", "single_tenant"])
async def test_owners_answers_the_holders_of_a_key_in_every_tenant(
    shared: Shared, tenancy: str
) -> None:
    multi = tenancy == "multi_tenant"
    store = await _store(shared, multi)
    tag = entities.tag()
    x, y = _scopes(multi)
    z, _ = _scopes(multi)
    live, _ = _scopes(multi, livemode=True)
    held: dict[str, PaymentMethod] = {}
    for name, scope, provider_id in (
        ("z_deleted", z, "pm_1"),  # first: on a single-tenant store it frees the key for x
        ("x", x, "pm_1"),
        ("x_other", x, "pm_2"),
        ("y", y, "pm_1" if multi else "pm_3"),
        ("live", live, "pm_1"),
    ):
        customer = entities.customer(scope)
        method = entities.payment_method(scope, customer.id, provider=tag, provider_id=provider_id)
        async with _seeding(name), store.transaction(scope) as tx:
            await tx.insert(customer)
            await tx.insert(method)
            if name == "z_deleted":
                await tx.soft_delete(PaymentMethod, method.id, at=entities.NOW)
        held[name] = method
    async with store.across_tenants(livemode=False) as sweep:
        answer = list(await sweep.owners(PaymentMethod, provider=tag, provider_id="pm_1"))
    names = {m.id: name for name, m in held.items()}
    wanted = ["x", "y"] if multi else ["x"]
    got = [names.get(m.id, "?") for m in answer]
    expect.that(
        got == wanted
        and [m.tenant_id for m in answer] == [held[name].tenant_id for name in wanted],
        f"owners(provider, provider_id) on a {tenancy.replace('_', '-')} store answered {got} "
        f"(with tenant_ids {[m.tenant_id for m in answer]}); expected {wanted}: the holders "
        "in test mode, not deleted, oldest first, each with its tenant_id",
        OWNERS_FIX,
    )


async def test_the_sweep_offers_no_write_and_no_other_read(shared: Shared) -> None:
    store = await _store(shared, True)
    forbidden = (
        "insert",
        "update",
        "soft_delete",
        "claim",
        "increment",
        "next_number",
        "insert_or_get",
        "flush",
        "get",
        "get_many",
        "find",
        "list",
        "count",
        "aggregate",
    )
    async with store.across_tenants(livemode=False) as sweep:
        offered = [name for name in forbidden if callable(getattr(sweep, name, None))]
        counted = await sweep.owners(Customer, email=f"{entities.tag()}@example.com")
    expect.that(
        not offered,
        f"the cross-tenant sweep offers {', '.join(offered)}",
        "hand out an object with due() and owners() only: work found by the sweep runs in "
        "the tenant's own transaction",
    )
    expect.that(not counted, "owners() of an email nobody has answered rows", OWNERS_FIX)
