"""``find`` by the columns of a unique key answers what a scan would, on every adapter.

MemoryStorage answers such a lookup from its index, including a partial key whose condition
the lookup states (``customer_id=…, is_default=True``): these pin that the index and a
scan agree through every way a row enters or leaves the key.
"""

from __future__ import annotations

from uuid import UUID

import pytest

from qzpay import Billing, Scope
from qzpay.contracts.filters import is_null, one_of
from qzpay.domain.payments import PaymentMethod

pytestmark = pytest.mark.anyio

TEST = Scope(livemode=False)


async def _found(billing: Billing, include_deleted: bool = False, **key: object) -> UUID | None:
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        row = await tx.find(PaymentMethod, include_deleted=include_deleted, **key)
    return None if row is None else row.id


async def test_the_default_method_is_found_through_every_change_of_default(
    billing: Billing,
) -> None:
    customer = await billing.customers.create(email="ann@example.com")
    first = await billing.payment_methods.attach(customer.id, token="pm_card_visa")
    second = await billing.payment_methods.attach(customer.id, token="pm_card_mastercard")
    assert await _found(billing, customer_id=customer.id, is_default=True) == first.id
    assert await _found(billing, is_default=True, customer_id=customer.id) == first.id
    assert await _found(billing, customer_id=customer.id, is_default=False) == second.id

    await billing.payment_methods.set_default(second.id)
    assert await _found(billing, customer_id=customer.id, is_default=True) == second.id
    assert await _found(billing, customer_id=one_of([customer.id]), is_default=True) == second.id
    assert await _found(billing, customer_id=customer.id, is_default=False) == first.id

    await billing.payment_methods.detach(second.id)
    assert await _found(billing, customer_id=customer.id, is_default=True) is None
    assert await _found(billing, customer_id=customer.id, is_default=False) == first.id
    assert (  # the newest of the two, the detached one among them
        await _found(billing, include_deleted=True, customer_id=customer.id, is_default=False)
        == second.id
    )
    other = await billing.customers.create(email="bob@example.com")
    assert await _found(billing, customer_id=other.id, is_default=True) is None
    assert await _found(billing, customer_id=is_null(), is_default=True) is None
