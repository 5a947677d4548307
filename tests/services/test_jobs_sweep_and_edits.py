"""The job runner: every tenant's due work from the root, and users editing meanwhile."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import attrs
import pytest

from qzpay import Billing, Scope, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.contracts.provider import ChargeRequest, ChargeResult
from qzpay.contracts.storage import StoragePort
from qzpay.domain.payments import Payment
from qzpay.domain.records import JobExecution
from qzpay.domain.subscriptions import Subscription

pytestmark = pytest.mark.anyio

StoreFactory = Callable[..., StoragePort]
MakeBilling = Callable[..., Billing]


async def _trial(billing: Billing, email: str) -> Subscription:
    customer = await billing.customers.create(email=email)
    await billing.payment_methods.attach(customer.id, token="pm_card_visa")
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    return await billing.subscriptions.create(
        customer_id=customer.id, price_id=price.id, trial_days=14
    )


async def test_the_root_billing_runs_every_tenants_due_work_in_that_tenants_scope(
    make_billing: MakeBilling, clock: FrozenClock, count_rows: Callable[..., Awaitable[int]]
) -> None:
    async with make_billing(tenancy="multi") as billing:
        acme, globex = billing.for_tenant("acme"), billing.for_tenant("globex")
        mine, theirs = await _trial(acme, "ann@acme.test"), await _trial(globex, "bob@globex.test")
        clock.advance(timedelta(days=15))

        report = await billing.jobs.run_due()

        assert (report.trials_ended, report.charged) == (2, 2)
        assert (await acme.subscriptions.get(mine.id)).status == "active"
        assert (await globex.subscriptions.get(theirs.id)).status == "active"
        for tenant in (acme, globex):
            assert await count_rows(tenant, Payment) == 1
            assert await count_rows(tenant, JobExecution) == 1
        assert (await billing.jobs.run_due()).trials_ended == 0


class _EditsDuringTheCharge(FakeProvider):
    """A provider during whose charge the application edits the subscription."""

    edit: Callable[[], Awaitable[None]] | None = None

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        if self.edit is not None:
            edit, self.edit = self.edit, None
            await edit()
        return await super().charge(request)


async def test_a_users_edit_during_a_job_run_succeeds_and_the_job_still_applies(
    store_factory: StoreFactory, clock: FrozenClock
) -> None:
    provider = _EditsDuringTheCharge()
    async with create_billing(storage=store_factory(), provider=provider, clock=clock) as billing:
        sub = await _trial(billing, "ann@example.com")
        clock.advance(timedelta(days=15))
        scope = Scope(livemode=False)

        async def edit() -> None:
            # The user reads and writes the row while the job's charge is at the provider
            # (the claim moved no version; the attempt took the row, as a renewal's period
            # move does): the edit writes, and the job's outcome is applied on top of it.
            async with billing.storage.transaction(scope) as tx:
                current = await tx.get(Subscription, sub.id)
                assert current is not None
                await tx.update(attrs.evolve(current, metadata={"note": "edited"}))

        provider.edit = edit
        report = await billing.jobs.run_due()

        assert provider.edit is None  # the edit ran, inside the charge
        assert (report.trials_ended, report.charged, report.skipped) == (1, 1, 0)
        after = await billing.subscriptions.get(sub.id)
        assert (after.status, after.metadata) == ("active", {"note": "edited"})
        assert after.due_at == after.current_period_end  # renewed when the period ends
        async with billing.storage.transaction(scope, readonly=True) as tx:
            payments = (await tx.list(Payment)).items
        assert [(p.status, p.amount) for p in payments] == [("succeeded", 2900)]
        assert len(provider.charges) == 1
