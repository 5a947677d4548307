"""A missing id is reported in words a user would say: "no payment method ... in test mode"."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qzpay import Billing, NotFoundError
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("livemode", "mode"), [(False, "test"), (True, "live")])
async def test_an_unknown_payment_method_is_named_in_words_and_its_mode(
    make_billing: Callable[..., Billing], livemode: bool, mode: str
) -> None:
    async with make_billing(livemode=livemode) as billing:
        ann = await billing.customers.create(email="ann@example.com")
        plan = await billing.plans.create(name="Pro")
        price = await billing.prices.create(
            plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
        )
        unknown = new_id()

        with pytest.raises(NotFoundError) as error:
            await billing.subscriptions.create(
                customer_id=ann.id, price_id=price.id, payment_method_id=unknown
            )

    assert error.value.field == "payment_method_id"
    assert f"no payment method with id {unknown} in {mode} mode" in str(error.value)


async def test_a_tenant_is_named_after_the_mode(make_billing: Callable[..., Billing]) -> None:
    async with make_billing(tenancy="multi") as root:
        acme = root.for_tenant("acme")
        unknown = new_id()

        with pytest.raises(NotFoundError) as error:
            await acme.subscriptions.create(customer_id=unknown, price_id=new_id())

    assert str(error.value).endswith(
        f"no customer with id {unknown} in test mode and tenant 'acme'"
    )
