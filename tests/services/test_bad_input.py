"""Bad input: each is a specific error naming the field, raised before anything is written."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from qzpay import (
    Billing,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    Scope,
    ValidationError,
    create_billing,
)
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryStorage
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.contracts.storage import StoragePort
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer
from qzpay.domain.records import AuditLog
from qzpay.domain.subscriptions import Subscription

pytestmark = pytest.mark.anyio

CountRows = Callable[[Billing, type[Any]], Awaitable[int]]
NAIVE = datetime(2028, 1, 31, 9)


async def _plan(billing: Billing) -> Plan:
    return await billing.plans.create(name="Pro")


@pytest.mark.parametrize(
    ("unit_amount", "currency", "field"),
    [
        (2900, "XYZ", "currency"),
        (-100, "USD", "unit_amount"),
        (29.0, "USD", "unit_amount"),
        ("2900", "USD", "unit_amount"),
        (True, "USD", "unit_amount"),
    ],
    ids=["unknown-currency", "negative-amount", "float-amount", "text-amount", "bool-amount"],
)
async def test_a_price_with_bad_money_is_refused_and_not_written(
    billing: Billing, count_rows: CountRows, unit_amount: object, currency: str, field: str
) -> None:
    plan = await _plan(billing)

    with pytest.raises(ValidationError) as error:
        await billing.prices.create(
            plan_id=plan.id,
            unit_amount=unit_amount,  # type: ignore[arg-type]
            currency=currency,
            interval="month",
        )

    assert error.value.field == field
    assert await count_rows(billing, Price) == 0
    assert len(await billing.audit.list(entity_type="price")) == 0


def test_a_frozen_clock_refuses_a_naive_start() -> None:
    with pytest.raises(ValidationError) as error:
        FrozenClock(NAIVE)

    assert error.value.field == "start"


def test_a_frozen_clock_refuses_to_be_set_to_a_naive_moment() -> None:
    clock = FrozenClock(datetime(2028, 1, 31, tzinfo=UTC))

    with pytest.raises(ValidationError) as error:
        clock.set(NAIVE)

    assert error.value.field == "moment"
    assert clock.now() == datetime(2028, 1, 31, tzinfo=UTC)


class _NaiveClock:
    """A third-party clock that forgot the time zone."""

    def now(self) -> datetime:
        return NAIVE


async def test_a_clock_that_returns_naive_datetimes_is_refused_before_writing(
    store_factory: Callable[..., StoragePort], count_rows: CountRows
) -> None:
    storage = store_factory()
    async with create_billing(
        storage=storage, provider=FakeProvider(), clock=_NaiveClock()
    ) as billing:
        with pytest.raises(ValidationError) as error:
            await billing.customers.create(email="ann@example.com")

        assert error.value.field == "clock"
        assert await count_rows(billing, Customer) == 0
        assert await count_rows(billing, AuditLog) == 0


async def test_storage_refuses_a_naive_datetime_on_insert_and_on_delete(
    billing: Billing, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    naive_row = attrs.evolve(ann, id=uuid.uuid4(), created_at=NAIVE)

    async with billing.storage.transaction(Scope(livemode=False)) as tx:
        with pytest.raises(ValidationError) as on_insert:
            await tx.insert(naive_row)
        with pytest.raises(ValidationError) as on_delete:
            await tx.soft_delete(Customer, ann.id, at=NAIVE)

    assert on_insert.value.field == "created_at"
    assert on_delete.value.field == "at"
    assert await count_rows(billing, Customer) == 1
    assert (await billing.customers.get(ann.id)).deleted_at is None


async def test_an_unknown_price_is_refused_and_nothing_is_charged(
    billing: Billing, fake: FakeProvider, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    await billing.payment_methods.attach(ann.id, token="pm_card_visa")

    with pytest.raises(NotFoundError) as error:
        await billing.subscriptions.create(customer_id=ann.id, price_id=uuid.uuid4())

    assert error.value.field == "price_id"
    assert await count_rows(billing, Subscription) == 0
    assert fake.charges == []


async def test_an_unknown_customer_is_refused_and_nothing_is_charged(
    billing: Billing, fake: FakeProvider, count_rows: CountRows
) -> None:
    plan = await _plan(billing)
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )

    with pytest.raises(NotFoundError) as error:
        await billing.subscriptions.create(customer_id=uuid.uuid4(), price_id=price.id)

    assert error.value.field == "customer_id"
    assert await count_rows(billing, Subscription) == 0
    assert fake.charges == []


async def test_a_malformed_id_names_its_field(billing: Billing) -> None:
    with pytest.raises(ValidationError) as error:
        await billing.customers.get("not-an-id")

    assert error.value.field == "customer_id"


HOSTILE = "x; drop table"


def test_sqlite_refuses_a_hostile_prefix_before_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "billing.db"

    with pytest.raises(ValidationError) as error:
        SQLiteStorage(path, table_prefix=HOSTILE)

    assert error.value.field == "table_prefix"
    assert not path.exists()


async def test_sqlite_refuses_a_hostile_prefix_and_leaves_an_existing_file_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "billing.db"
    sqlite3.connect(path).close()  # an empty database file, as an app might already have

    with pytest.raises(ValidationError) as error:
        SQLiteStorage(path, table_prefix=HOSTILE)

    assert error.value.field == "table_prefix"
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


@pytest.mark.parametrize("prefix", [HOSTILE, "Billing_", "1billing_", "", "a" * 32])
def test_memory_storage_refuses_a_prefix_that_is_not_an_sql_identifier(prefix: str) -> None:
    with pytest.raises(ValidationError) as error:
        MemoryStorage(table_prefix=prefix)

    assert error.value.field == "table_prefix"


async def test_a_duplicate_external_id_is_a_conflict_and_writes_nothing(
    billing: Billing, count_rows: CountRows
) -> None:
    await billing.customers.create(email="ann@example.com", external_id="u_1")

    with pytest.raises(ConflictError) as error:
        await billing.customers.create(email="impostor@example.com", external_id="u_1")

    assert error.value.field == "external_id"
    assert await count_rows(billing, Customer) == 1
    assert await count_rows(billing, AuditLog) == 1


async def test_updating_to_a_taken_external_id_is_a_conflict_and_changes_nothing(
    billing: Billing,
) -> None:
    await billing.customers.create(email="ann@example.com", external_id="u_1")
    bob = await billing.customers.create(email="bob@example.com", external_id="u_2")

    with pytest.raises(ConflictError) as error:
        await billing.customers.update(bob.id, external_id="u_1")

    assert error.value.field == "external_id"
    assert await billing.customers.get(bob.id) == bob
    assert len(await billing.audit.list(entity_id=bob.id)) == 1


@pytest.mark.parametrize(("multi_tenant", "tenancy"), [(True, "single"), (False, "multi")])
def test_tenancy_that_disagrees_with_the_storage_is_refused(
    store_factory: Callable[..., StoragePort], multi_tenant: bool, tenancy: Any
) -> None:
    with pytest.raises(ConfigurationError):
        create_billing(
            storage=store_factory(multi_tenant=multi_tenant),
            provider=FakeProvider(),
            tenancy=tenancy,
        )


async def test_a_multi_tenant_billing_needs_a_tenant_for_every_call(
    make_billing: Callable[..., Billing], count_rows: CountRows
) -> None:
    async with make_billing(tenancy="multi") as billing:
        with pytest.raises(ConfigurationError):
            await billing.customers.create(email="ann@example.com")
        with pytest.raises(ConfigurationError):
            await billing.customers.list()

        acme = billing.for_tenant("acme")
        assert await count_rows(acme, Customer) == 0
        assert await count_rows(acme, AuditLog) == 0


async def test_for_tenant_on_a_single_tenant_billing_is_refused(billing: Billing) -> None:
    with pytest.raises(ConfigurationError):
        billing.for_tenant("acme")


async def test_a_deleted_customer_can_neither_subscribe_nor_attach_a_card(
    billing: Billing, fake: FakeProvider, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    plan = await _plan(billing)
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    await billing.customers.delete(ann.id)

    with pytest.raises(NotFoundError) as on_subscribe:
        await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    with pytest.raises(NotFoundError) as on_attach:
        await billing.payment_methods.attach(ann.id, token="pm_card_visa")

    assert on_subscribe.value.field == on_attach.value.field == "customer_id"
    assert await count_rows(billing, Subscription) == 0
    assert fake.payment_methods == {}


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"cursor": "garbage"}, "cursor")],
)
async def test_a_bad_page_request_names_its_field(
    billing: Billing, arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as error:
        await billing.customers.list(**arguments)

    assert error.value.field == field
