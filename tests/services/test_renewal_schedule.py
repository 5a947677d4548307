"""Renewals over time, and several runners at once.

A year of monthly renewals from Jan 31 (periods clamp to month ends and return to the
31st), yearly from Feb 29, weekly, every 3 months, across a DST change (the UTC instant is
kept), and two runners over the same due subscriptions renewing each exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from qzpay import Billing, Scope, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.contracts.storage import StoragePort
from qzpay.domain.invoices import Invoice
from qzpay.domain.subscriptions import Subscription

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)


@pytest.fixture
async def runner(
    store_factory: Callable[..., StoragePort], fake: FakeProvider, clock: FrozenClock
) -> AsyncIterator[Billing]:
    """Short job leases: PostgreSQL measures them on its clock, not the FrozenClock."""
    async with create_billing(
        storage=store_factory(), provider=fake, clock=clock, job_lease=timedelta(milliseconds=1)
    ) as billing:
        yield billing


async def _subscribe(
    billing: Billing, interval: str, interval_count: int = 1, email: str = "ann@example.com"
) -> Subscription:
    ann = await billing.customers.create(email=email)
    await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id,
        unit_amount=1000,
        currency="USD",
        interval=interval,
        interval_count=interval_count,
    )
    return await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)


async def _period_ends(
    billing: Billing, clock: FrozenClock, sub: Subscription, steps: int
) -> list[str]:
    """Run the jobs at each period's end, ``steps`` times; the period ends seen."""
    ends = []
    current = sub
    for _ in range(steps):
        clock.set(current.current_period_end)
        await billing.jobs.run_due()
        current = await billing.subscriptions.get(sub.id)
        assert current.status == "active"
        ends.append(current.current_period_end.date().isoformat())
    return ends


async def test_a_year_of_monthly_renewals_from_the_31st(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    clock.set(datetime(2029, 1, 31, 12, tzinfo=UTC))
    sub = await _subscribe(runner, "month")

    ends = await _period_ends(runner, clock, sub, 11)

    assert ends == [
        "2029-03-31", "2029-04-30", "2029-05-31", "2029-06-30", "2029-07-31", "2029-08-31",
        "2029-09-30", "2029-10-31", "2029-11-30", "2029-12-31", "2030-01-31",
    ]  # fmt: skip
    assert len(fake.charges) == 12
    async with runner.storage.transaction(TEST, readonly=True) as tx:
        invoices = (await tx.list(Invoice, limit=100)).items
    numbers = sorted(int((i.number or "0")[4:]) for i in invoices)
    assert numbers == list(range(1, 12))  # gapless
    assert all(i.status == "paid" for i in invoices)


@pytest.mark.parametrize(
    ("interval", "count", "start", "ends"),
    [
        ("year", 1, datetime(2028, 2, 29, 9, tzinfo=UTC),
         ["2030-02-28", "2031-02-28", "2032-02-29", "2033-02-28"]),
        ("week", 1, datetime(2028, 2, 29, 9, tzinfo=UTC),
         ["2028-03-14", "2028-03-21", "2028-03-28", "2028-04-04"]),
        ("month", 3, datetime(2028, 2, 29, 9, tzinfo=UTC),
         ["2028-08-29", "2028-11-29", "2029-02-28", "2029-05-29"]),
    ],
    ids=["yearly-from-feb-29", "weekly", "every-3-months"],
)  # fmt: skip
async def test_other_schedules_renew_on_their_anchor(
    runner: Billing,
    fake: FakeProvider,
    clock: FrozenClock,
    interval: str,
    count: int,
    start: datetime,
    ends: list[str],
) -> None:
    clock.set(start)
    sub = await _subscribe(runner, interval, count)

    assert await _period_ends(runner, clock, sub, len(ends)) == ends
    assert len(fake.charges) == len(ends) + 1


async def test_renewals_keep_their_utc_instant_across_dst(
    runner: Billing, clock: FrozenClock
) -> None:
    # 2029-03-11 is the US spring-forward: a period anchored at 14:30 UTC stays 14:30 UTC.
    clock.set(datetime(2029, 2, 11, 14, 30, tzinfo=UTC))
    sub = await _subscribe(runner, "month")

    await _period_ends(runner, clock, sub, 2)

    current = await runner.subscriptions.get(sub.id)
    assert (current.current_period_start.hour, current.current_period_start.minute) == (14, 30)
    assert current.current_period_start.tzinfo is not None
    assert current.current_period_start.utcoffset() == timedelta(0)


async def test_two_runners_at_once_renew_each_subscription_exactly_once(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    clock.set(datetime(2029, 1, 15, tzinfo=UTC))
    subs = [await _subscribe(runner, "month", email=f"u{n}@example.com") for n in range(40)]
    first_charges = len(fake.charges)
    clock.advance(timedelta(days=32))

    async with anyio.create_task_group() as group:
        group.start_soon(runner.jobs.run_due)
        group.start_soon(runner.jobs.run_due)

    assert len(fake.charges) - first_charges == len(subs)
    invoices = [c.request.description for c in fake.charges[first_charges:]]
    assert len(set(invoices)) == len(subs)  # one charge per invoice, never two
    for sub in subs:
        assert (await runner.subscriptions.get(sub.id)).current_period_end > clock.now()
