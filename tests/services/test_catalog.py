"""billing.plans and billing.prices: what is sold, and what it costs every how long."""

from __future__ import annotations

import uuid

import pytest

from qzpay import Billing, Event, NotFoundError, ValidationError
from qzpay.domain.catalog import Plan

pytestmark = pytest.mark.anyio


async def _plan(billing: Billing) -> Plan:
    return await billing.plans.create(name="Pro")


async def test_a_plan_keeps_its_entitlements_and_limits(billing: Billing) -> None:
    plan = await billing.plans.create(
        name="Pro",
        description="For teams",
        entitlements=["reports", "api", "reports"],
        limits={"seats": 5, "projects": 0},
    )

    stored = await billing.plans.get(plan.id)
    assert stored == plan
    assert stored.entitlements == ("reports", "api")
    assert dict(stored.limits) == {"seats": 5, "projects": 0}
    assert stored.active is True


async def test_a_plan_update_replaces_entitlements_and_limits(billing: Billing) -> None:
    plan = await billing.plans.create(name="Pro", entitlements=["reports"], limits={"seats": 5})

    updated = await billing.plans.update(plan.id, entitlements=["api"], limits={"seats": 10})

    assert updated.entitlements == ("api",)
    assert dict(updated.limits) == {"seats": 10}
    assert await billing.plans.get(plan.id) == updated
    audit = await billing.audit.list(entity_id=plan.id)
    assert [a.action for a in audit] == ["updated", "created"]


async def test_a_negative_limit_is_refused(billing: Billing) -> None:
    with pytest.raises(ValidationError) as error:
        await billing.plans.create(name="Pro", limits={"seats": -1})

    assert error.value.field == "limits.seats"
    assert len(await billing.plans.list()) == 0


async def test_a_price_keeps_amount_currency_interval_and_count(billing: Billing) -> None:
    plan = await _plan(billing)

    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="usd", interval="month"
    )
    yearly = await billing.prices.create(
        plan_id=plan.id, unit_amount=500, currency="JPY", interval="year", interval_count=2
    )

    assert (price.unit_amount, price.currency, price.interval, price.interval_count) == (
        2900,
        "USD",
        "month",
        1,
    )
    assert (yearly.unit_amount, yearly.currency, yearly.interval, yearly.interval_count) == (
        500,
        "JPY",
        "year",
        2,
    )
    assert price.active is True
    assert price.plan_id == plan.id
    assert await billing.prices.get(price.id) == price
    assert await billing.prices.get(yearly.id) == yearly


async def test_an_archived_price_keeps_its_amount_and_leaves_the_active_list(
    billing: Billing,
) -> None:
    plan = await _plan(billing)
    old = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    new = await billing.prices.create(
        plan_id=plan.id, unit_amount=3900, currency="USD", interval="month"
    )

    archived = await billing.prices.update(old.id, active=False)

    assert archived.active is False
    assert (archived.unit_amount, archived.currency, archived.interval) == (2900, "USD", "month")
    assert [p.id for p in await billing.prices.list(plan_id=plan.id, active=True)] == [new.id]
    assert [p.id for p in await billing.prices.list(plan_id=plan.id)] == [new.id, old.id]


async def test_a_price_amount_cannot_be_changed(billing: Billing) -> None:
    plan = await _plan(billing)
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )

    with pytest.raises(TypeError):
        await billing.prices.update(price.id, unit_amount=100)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        await billing.prices.update(price.id, currency="EUR")  # type: ignore[call-arg]

    assert await billing.prices.get(price.id) == price


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"interval": "fortnight"}, "interval"),
        ({"interval_count": 0}, "interval_count"),
        ({"interval_count": 1.0}, "interval_count"),
        ({"trial_days": -1}, "trial_days"),
        ({"currency": "US"}, "currency"),
    ],
)
async def test_a_malformed_price_is_refused_and_nothing_is_written(
    billing: Billing, changes: dict[str, object], field: str
) -> None:
    plan = await _plan(billing)
    arguments: dict[str, object] = {
        "plan_id": plan.id,
        "unit_amount": 2900,
        "currency": "USD",
        "interval": "month",
    }

    with pytest.raises(ValidationError) as error:
        await billing.prices.create(**{**arguments, **changes})  # type: ignore[arg-type]

    assert error.value.field == field
    assert len(await billing.prices.list()) == 0


async def test_a_price_for_an_unknown_plan_is_refused(billing: Billing) -> None:
    with pytest.raises(NotFoundError) as error:
        await billing.prices.create(
            plan_id=uuid.uuid4(), unit_amount=2900, currency="USD", interval="month"
        )

    assert error.value.field == "plan_id"
    assert len(await billing.prices.list()) == 0


async def test_catalog_changes_are_audited_and_announced(billing: Billing) -> None:
    events: list[Event] = []
    billing.on("*", events.append)

    plan = await _plan(billing)
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    await billing.prices.update(price.id, active=False)

    assert [e.type for e in events] == ["plan.created", "price.created", "price.updated"]
    assert [a.action for a in await billing.audit.list(entity_type="price")] == [
        "updated",
        "created",
    ]
    assert len(await billing.audit.list(entity_type="plan")) == 1
