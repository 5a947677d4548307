"""Isolation, in pairs: prefix one/two, tenant A/B, test/live never see each other's rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import attrs
import pytest

from qzpay import Billing, NotFoundError, Scope, ValidationError, create_billing
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.contracts.storage import StoragePort
from qzpay.domain.customers import Customer
from qzpay.domain.payments import PaymentMethod
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio

StoreFactory = Callable[..., StoragePort]
MakeBilling = Callable[..., Billing]


def _sqlite_names(storage: StoragePort) -> list[str]:
    """Every table, index and trigger in the SQLite file behind ``storage``."""
    assert isinstance(storage, SQLiteStorage)
    with closing(sqlite3.connect(storage.path)) as raw:
        rows = raw.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    return [name for (name,) in rows]


async def _assert_blind_to(billing: Billing, other: Customer) -> None:
    """``billing`` can neither read, find, list, change nor delete ``other``."""
    with pytest.raises(NotFoundError):
        await billing.customers.get(other.id)
    if other.external_id is not None:
        mine = await billing.customers.get_by_external_id(other.external_id)
        assert mine.id != other.id
    assert other.id not in {c.id for c in await billing.customers.list(limit=100)}
    assert other.id not in {c.id for c in await billing.customers.list(include_deleted=True)}
    with pytest.raises(NotFoundError):
        await billing.customers.update(other.id, name="Mallory")
    with pytest.raises(NotFoundError):
        await billing.customers.delete(other.id)
    with pytest.raises(NotFoundError):
        await billing.payment_methods.attach(other.id, token="pm_card_visa")


async def test_two_prefixes_on_one_database_never_see_each_other(
    store_factory: StoreFactory, make_billing: MakeBilling
) -> None:
    one_store = store_factory(table_prefix="one_")
    two_store = store_factory(table_prefix="two_")
    async with make_billing(one_store) as one, make_billing(two_store) as two:
        ann = await one.customers.create(email="ann@one.example", external_id="u_1")
        bob = await two.customers.create(email="bob@two.example", external_id="u_1")

        await _assert_blind_to(one, bob)
        await _assert_blind_to(two, ann)
        assert [c.id for c in await one.customers.list()] == [ann.id]
        assert [c.id for c in await two.customers.list()] == [bob.id]
        assert [a.entity_id for a in await one.audit.list()] == [ann.id]

    if isinstance(one_store, SQLiteStorage):
        names = _sqlite_names(one_store)
        assert names, "the schema should exist"
        assert all(name.startswith(("one_", "two_")) for name in names), names
        with closing(sqlite3.connect(one_store.path)) as raw:
            assert raw.execute("SELECT email FROM one_customers").fetchall() == [
                ("ann@one.example",)
            ]
            assert raw.execute("SELECT email FROM two_customers").fetchall() == [
                ("bob@two.example",)
            ]


async def test_two_tenants_never_see_each_others_customers(make_billing: MakeBilling) -> None:
    async with make_billing(tenancy="multi") as root:
        a, b = root.for_tenant("a"), root.for_tenant("b")
        ann = await a.customers.create(email="ann@a.example", external_id="u_1")
        bob = await b.customers.create(email="bob@b.example", external_id="u_1")

        await _assert_blind_to(a, bob)
        await _assert_blind_to(b, ann)
        assert await a.customers.get(ann.id) == ann
        assert await b.customers.get(bob.id) == bob
        assert [x.entity_id for x in await a.audit.list()] == [ann.id]

    if isinstance(root.storage, SQLiteStorage):
        with closing(sqlite3.connect(root.storage.path)) as raw:
            rows = raw.execute(
                "SELECT tenant_id, email, external_id FROM billing_customers ORDER BY tenant_id"
            ).fetchall()
        assert rows == [("a", "ann@a.example", "u_1"), ("b", "bob@b.example", "u_1")]


async def test_a_tenant_store_cannot_touch_another_tenants_row_by_exact_id(
    make_billing: MakeBilling,
) -> None:
    async with make_billing(tenancy="multi") as root:
        ann = await root.for_tenant("a").customers.create(email="ann@a.example")
        storage = root.storage
        as_b = Scope(livemode=False, tenant_id="b")
        hijacked = attrs.evolve(ann, tenant_id="b", name="Mallory")

        async with storage.transaction(as_b) as tx:
            assert await tx.get(Customer, ann.id) is None
            assert await tx.get(Customer, ann.id, include_deleted=True) is None
            assert await tx.find(Customer, email="ann@a.example") is None
            assert await tx.count(Customer) == 0
        with pytest.raises(NotFoundError):
            async with storage.transaction(as_b) as tx:
                await tx.update(hijacked)
        with pytest.raises(NotFoundError):
            async with storage.transaction(as_b) as tx:
                await tx.soft_delete(Customer, ann.id, at=ann.created_at)
        with pytest.raises(ValidationError) as error:
            async with storage.transaction(as_b) as tx:
                await tx.insert(
                    PaymentMethod(
                        id=new_id(),
                        livemode=False,
                        tenant_id="b",
                        customer_id=ann.id,
                        provider="fake",
                        provider_id="pm_x",
                        type="card",
                        created_at=ann.created_at,
                        updated_at=ann.created_at,
                    )
                )
        assert error.value.field == "customer_id"

        assert await root.for_tenant("a").customers.get(ann.id) == ann


async def test_test_and_live_mode_never_see_each_other(make_billing: MakeBilling) -> None:
    async with make_billing(livemode=False) as test, make_billing(livemode=True) as live:
        ann = await test.customers.create(email="ann@test.example", external_id="u_1")
        bob = await live.customers.create(email="bob@live.example", external_id="u_1")

        await _assert_blind_to(test, bob)
        await _assert_blind_to(live, ann)
        assert bob.livemode is True
        assert [a.entity_id for a in await live.audit.list()] == [bob.id]

        plan = await test.plans.create(name="Pro")
        price = await test.prices.create(
            plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
        )
        with pytest.raises(NotFoundError) as error:
            await live.subscriptions.create(customer_id=bob.id, price_id=price.id)
        assert error.value.field == "price_id"
        assert len(await live.plans.list()) == 0


async def test_leaving_a_tenant_view_does_not_close_the_shared_storage(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "tenants.db", multi_tenant=True)
    async with create_billing(storage=storage, provider=FakeProvider(), tenancy="multi") as root:
        async with root.for_tenant("acme") as acme:
            await acme.customers.create(email="a@acme.test")
        globex = root.for_tenant("globex")
        await globex.customers.create(email="g@globex.test")  # the storage is still open
        assert len(await root.for_tenant("acme").customers.list()) == 1
