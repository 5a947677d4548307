"""Text PostgreSQL cannot store (a NUL, a lone surrogate) is refused at the boundary.

SQLite and memory would keep it and PostgreSQL would fail late with a ``DataError`` (in
``subscriptions.create``, after the provider charged): the same input must get the same
``ValidationError``, naming the field, before anything is written or charged, on every
adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from qzpay import Billing, Scope, ValidationError
from qzpay.adapters.fake import FakeProvider
from qzpay.domain.catalog import Plan
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment
from qzpay.domain.records import AuditLog
from qzpay.domain.subscriptions import Subscription

pytestmark = pytest.mark.anyio

CountRows = Callable[[Billing, type[Any]], Awaitable[int]]

UNSTORABLE = ["Ann\x00", "Ann\ud800", "\udfffAnn"]
"""A NUL, a lone high and a lone low surrogate: PostgreSQL refuses each in text."""

Arguments = Callable[[str], dict[str, Any]]
CUSTOMER_FIELDS: list[tuple[str, Arguments]] = [
    ("name", lambda bad: {"name": bad}),
    ("email", lambda bad: {"email": f"{bad}@example.com"}),
    ("phone", lambda bad: {"phone": bad}),
    ("metadata.tier", lambda bad: {"metadata": {"tier": bad}}),
]


def _cases(fields: list[tuple[str, Arguments]]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every field with every unstorable text: one test per call, not one per case, since
    each test on PostgreSQL builds its own schema."""
    return [(field, bad, arguments(bad)) for field, arguments in fields for bad in UNSTORABLE]


def _assert_refused(error: pytest.ExceptionInfo[ValidationError], field: str, bad: str) -> None:
    assert (error.value.field, error.value.rule) == (field, "storable_text"), (bad, error.value)


async def test_customers_create_refuses_unstorable_text_and_writes_nothing(
    billing: Billing, count_rows: CountRows
) -> None:
    key_cases = [("metadata", bad, {"metadata": {f"tier{bad}": "gold"}}) for bad in UNSTORABLE]
    for field, bad, arguments in _cases(CUSTOMER_FIELDS) + key_cases:
        with pytest.raises(ValidationError) as error:
            await billing.customers.create(**{"email": "ann@example.com", **arguments})
        _assert_refused(error, field, bad)
    for bad in UNSTORABLE:
        with pytest.raises(ValidationError) as refused:
            await billing.customers.create(email="ann@example.com", external_id=f"u_{bad}")
        assert refused.value.field == "external_id"

    assert await count_rows(billing, Customer) == 0
    assert await count_rows(billing, AuditLog) == 0


async def test_customers_update_refuses_unstorable_text_and_changes_nothing(
    billing: Billing,
) -> None:
    ann = await billing.customers.create(email="ann@example.com", metadata={"tier": "gold"})

    for field, bad, arguments in _cases(CUSTOMER_FIELDS):
        with pytest.raises(ValidationError) as error:
            await billing.customers.update(ann.id, **arguments)
        _assert_refused(error, field, bad)

    assert await billing.customers.get(ann.id) == ann
    assert len(await billing.audit.list(entity_id=ann.id)) == 1


async def test_plans_create_refuses_unstorable_text_and_writes_nothing(
    billing: Billing, count_rows: CountRows
) -> None:
    fields: list[tuple[str, Arguments]] = [
        ("name", lambda bad: {"name": bad}),
        ("description", lambda bad: {"name": "Pro", "description": bad}),
        ("metadata.tier", lambda bad: {"name": "Pro", "metadata": {"tier": bad}}),
    ]
    for field, bad, arguments in _cases(fields):
        with pytest.raises(ValidationError) as error:
            await billing.plans.create(**arguments)
        _assert_refused(error, field, bad)

    assert await count_rows(billing, Plan) == 0


async def test_subscriptions_create_refuses_unstorable_metadata_before_charging(
    billing: Billing, fake: FakeProvider, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )

    for bad in UNSTORABLE:
        with pytest.raises(ValidationError) as error:
            await billing.subscriptions.create(
                customer_id=ann.id, price_id=price.id, metadata={"tier": bad}
            )
        _assert_refused(error, "metadata.tier", bad)

    assert fake.charges == []
    assert await count_rows(billing, Subscription) == 0
    async with billing.storage.transaction(Scope(livemode=False), readonly=True) as tx:
        assert (await tx.list(Payment)).items == []
