"""One default payment method per customer, enforced by the store, whoever races."""

from __future__ import annotations

import anyio
import attrs
import pytest

from qzpay import Billing, ConflictError, Scope
from qzpay.domain.payments import PaymentMethod
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio


async def test_concurrent_attaches_with_set_default_leave_exactly_one_default(
    billing: Billing,
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    tokens = ["pm_card_visa", "pm_card_mastercard", "pm_card_amex", "pm_card_visa"]
    attached: list[PaymentMethod] = []

    async def attach(token: str) -> None:
        attached.append(await billing.payment_methods.attach(ann.id, token=token, set_default=True))

    async with anyio.create_task_group() as group:
        for token in tokens:
            group.start_soon(attach, token)

    cards = (await billing.payment_methods.list(ann.id)).items
    assert len(attached) == len(cards) == 4
    assert sum(card.is_default for card in cards) == 1
    default = await billing.payment_methods.get_default(ann.id)
    assert default is not None
    assert default.is_default


async def test_concurrent_set_default_leaves_exactly_one_default(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    cards = [
        await billing.payment_methods.attach(ann.id, token=token)
        for token in ("pm_card_visa", "pm_card_mastercard", "pm_card_amex")
    ]

    async with anyio.create_task_group() as group:
        for card in cards:
            group.start_soon(billing.payment_methods.set_default, card.id)

    stored = (await billing.payment_methods.list(ann.id)).items
    assert sum(card.is_default for card in stored) == 1


async def test_the_store_itself_refuses_a_second_default(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    first = await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    second = attrs.evolve(first, id=new_id(), provider_id="pm_other", is_default=True)
    scope = Scope(livemode=False)

    with pytest.raises(ConflictError) as refused:
        async with billing.storage.transaction(scope) as tx:
            await tx.insert(second)

    assert refused.value.field == "customer_id"
    not_default = attrs.evolve(second, is_default=False)
    async with billing.storage.transaction(scope) as tx:  # any number of non-defaults
        await tx.insert(not_default)
