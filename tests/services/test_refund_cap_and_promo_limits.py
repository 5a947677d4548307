"""The refund cap and the promo limits: domain rules, enforced through storage primitives.

``qzpay.services.refunds.add_refund`` and ``qzpay.services.redemptions.redeem`` are what the
payment and promo services build on; here they run under concurrency on every adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import attrs
import pytest

from qzpay import Billing, InvalidStateError, NotFoundError, QZPayError, Scope, ValidationError
from qzpay.conformance import entities
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.services.redemptions import redeem
from qzpay.services.refunds import add_refund

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)


async def _customers(billing: Billing, count: int) -> list[Customer]:
    customers = [entities.customer(TEST) for _ in range(count)]
    async with billing.storage.transaction(TEST) as tx:
        for customer in customers:
            await tx.insert(customer)
    return customers


async def _race(count: int, work: Callable[[int], Awaitable[None]]) -> tuple[int, list[QZPayError]]:
    """Start ``count`` calls of ``work`` at once: how many succeeded, and qzpay's refusals."""
    done, errors = 0, []

    async def one(index: int) -> None:
        nonlocal done
        try:
            await work(index)
            done += 1
        except QZPayError as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return done, errors


async def test_concurrent_refunds_never_exceed_the_payment(billing: Billing) -> None:
    (customer,) = await _customers(billing, 1)
    payment = entities.payment(TEST, customer, amount=1000)
    async with billing.storage.transaction(TEST) as tx:
        await tx.insert(payment)

    async def refund(index: int) -> None:
        async with billing.storage.transaction(TEST) as tx:
            await add_refund(tx, entities.refund(TEST, payment, amount=300))

    accepted, errors = await _race(10, refund)

    assert accepted == 3
    assert {(e.field, e.rule) for e in errors} == {("amount", "refund_within_payment")}
    assert all(isinstance(e, ValidationError) for e in errors)
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(Payment, payment.id)
        total = await tx.aggregate(Refund, sums=["amount"], filters={"payment_id": payment.id})
    assert stored is not None
    assert stored.refunded_amount == 900 == total[0].sums["amount"]
    assert total[0].count == 3


async def test_a_refund_in_another_currency_or_of_a_missing_payment_is_refused(
    billing: Billing,
) -> None:
    (customer,) = await _customers(billing, 1)
    payment = entities.payment(TEST, customer, amount=1000)
    async with billing.storage.transaction(TEST) as tx:
        await tx.insert(payment)
    euros = attrs.evolve(entities.refund(TEST, payment, amount=100), currency="EUR")
    orphan = entities.refund(TEST, entities.payment(TEST, customer), amount=100)

    for refund, error in ((euros, ValidationError), (orphan, NotFoundError)):
        with pytest.raises(error):
            async with billing.storage.transaction(TEST) as tx:
                await add_refund(tx, refund)
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        assert await tx.count(Refund) == 0


async def test_a_code_is_redeemed_only_while_under_both_limits(billing: Billing) -> None:
    customers = await _customers(billing, 6)
    code = entities.promo_code(TEST, code="FIVE", max_redemptions=5)
    per_customer = entities.promo_code(TEST, code="TWICE", max_redemptions_per_customer=2)
    async with billing.storage.transaction(TEST) as tx:
        await tx.insert(code)
        await tx.insert(per_customer)

    async def everyone(index: int) -> None:
        async with billing.storage.transaction(TEST) as tx:
            await redeem(tx, entities.promo_code_usage(TEST, code, customers[index % 6]))

    async def one_customer(index: int) -> None:
        async with billing.storage.transaction(TEST) as tx:
            await redeem(tx, entities.promo_code_usage(TEST, per_customer, customers[0]))

    assert (await _race(12, everyone))[0] == 5
    accepted, errors = await _race(8, one_customer)

    assert accepted == 2
    assert {e.rule for e in errors} == {"customer_limit"}
    assert all(isinstance(e, InvalidStateError) for e in errors)
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        stored = [await tx.get(PromoCode, c.id) for c in (code, per_customer)]
        usages = await tx.aggregate(PromoCodeUsage, group_by=["promo_code_id"])
    assert [c.times_redeemed for c in stored if c is not None] == [5, 2]
    assert {g.key["promo_code_id"]: g.count for g in usages} == {code.id: 5, per_customer.id: 2}
