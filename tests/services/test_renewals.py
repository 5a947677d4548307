"""The job runner's lifecycle work: renewals, dunning, period-end cancels, expiries.

Time travels with the FrozenClock; the fake provider's ledger says what was charged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from qzpay import Billing, Scope, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.contracts.storage import StoragePort
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.enums import InvoiceStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.records import JobExecution
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import InvalidStateError
from qzpay.services.jobs import JobsService

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)
RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]


@pytest.fixture
async def runner(
    store_factory: Callable[..., StoragePort], fake: FakeProvider, clock: FrozenClock
) -> AsyncIterator[Billing]:
    """Billing whose job leases end almost at once: PostgreSQL measures leases on its own
    clock, and these tests run the job runner again days later by the FrozenClock but
    milliseconds later by the server's."""
    async with create_billing(
        storage=store_factory(), provider=fake, clock=clock, job_lease=timedelta(milliseconds=1)
    ) as billing:
        yield billing


async def _customer(billing: Billing, token: str = "pm_card_visa") -> Customer:
    ann = await billing.customers.create(email="ann@example.com")
    await billing.payment_methods.attach(ann.id, token=token, set_default=True)
    return ann


async def _price(billing: Billing, interval: str = "month") -> Price:
    plan = await billing.plans.create(name="Pro")
    return await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval=interval
    )


async def _switch_card(billing: Billing, customer: Customer, token: str) -> None:
    """The customer's cards detached and ``token`` attached as the only, default one."""
    for method in (await billing.payment_methods.list(customer.id)).items:
        await billing.payment_methods.detach(method.id)
    await billing.payment_methods.attach(customer.id, token=token, set_default=True)


async def _invoices(billing: Billing, subscription_id: object) -> list[Invoice]:
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        page = await tx.list(Invoice, filters={"subscription_id": subscription_id}, limit=100)
    return sorted(page.items, key=lambda invoice: invoice.number or "")


async def test_an_active_subscription_renews_every_period_that_ended(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    assert sub.status == "active"

    clock.advance(timedelta(days=90))
    report = await billing.jobs.run_due()

    renewed = await billing.subscriptions.get(sub.id)
    assert renewed.status == "active"
    assert renewed.current_period_end > clock.now()
    assert renewed.current_period_start <= clock.now()
    assert report.charged >= 1
    assert len(fake.charges) == 4  # the first period, then one per period that ended
    invoices = await _invoices(billing, sub.id)
    assert [i.status for i in invoices] == [InvoiceStatus.PAID] * 3
    assert [i.number for i in invoices] == ["INV-000001", "INV-000002", "INV-000003"]
    assert all(i.total == 2900 and i.amount_paid == 2900 for i in invoices)
    assert (await billing.jobs.run_due()).charged == 0  # nothing is due any more


async def _renewed_on(
    billing: Billing, clock: FrozenClock, token: str
) -> tuple[Customer, Subscription]:
    """A monthly subscription whose first renewal was charged to a ``token`` card, as the
    renewal left it."""
    ann = await _customer(billing)
    price = await _price(billing)
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    await _switch_card(billing, ann, token)
    clock.advance(timedelta(days=31))
    await billing.jobs.run_due()
    return ann, await billing.subscriptions.get(sub.id)


async def _declined_renewal(billing: Billing, clock: FrozenClock) -> tuple[Customer, Subscription]:
    """Past due: the first renewal was declined."""
    return await _renewed_on(billing, clock, "pm_card_chargeDeclined")


async def test_a_declined_renewal_goes_past_due_then_dunning_ends_it(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    _, past_due = await _declined_renewal(runner, clock)
    assert (past_due.status, past_due.dunning_attempts) == ("past_due", 0)
    assert past_due.past_due_at == clock.now()
    [invoice] = await _invoices(runner, past_due.id)
    assert invoice.status == "open"

    for day in (1, 3, 5, 7):
        clock.set(past_due.past_due_at + timedelta(days=day))
        await runner.jobs.run_due()
    ended = await runner.subscriptions.get(past_due.id)
    assert ended.status == "canceled"
    assert ended.ended_at is not None
    keys = [c.request.idempotency_key for c in fake.charges]
    assert len(keys) == len(set(keys)) == 6  # first period, renewal, four retries: new keys


async def test_a_retry_with_a_new_card_recovers_the_subscription(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann, sub = await _declined_renewal(runner, clock)
    assert sub.status == "past_due"

    await _switch_card(runner, ann, "pm_card_visa")
    clock.advance(timedelta(days=1))
    report = await runner.jobs.run_due()

    recovered = await runner.subscriptions.get(sub.id)
    assert (recovered.status, recovered.dunning_attempts, recovered.past_due_at) == (
        "active",
        0,
        None,
    )
    assert report.dunning_retries == 1
    [invoice] = await _invoices(runner, sub.id)
    assert invoice.status == "paid"


async def _trial_to_remind(billing: Billing) -> tuple[Subscription, list[str]]:
    """A 14-day trial, and the ``trial_will_end`` events it has had (due 3 days before)."""
    ann = await _customer(billing)
    price = await _price(billing)
    events: list[str] = []
    billing.on("subscription.trial_will_end", lambda event: events.append(event.type))
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id, trial_days=14)
    return sub, events


async def test_a_trial_reminder_is_sent_once_before_the_trial_ends(
    billing: Billing, clock: FrozenClock
) -> None:
    sub, events = await _trial_to_remind(billing)
    assert sub.trial_end is not None
    assert sub.due_at == sub.trial_end - timedelta(days=3)

    clock.advance(timedelta(days=11))
    assert (await billing.jobs.run_due()).trial_reminders == 1
    assert (await billing.jobs.run_due()).trial_reminders == 0
    assert events == ["subscription.trial_will_end"]
    reminded = await billing.subscriptions.get(sub.id)
    assert (reminded.status, reminded.due_at) == ("trialing", sub.trial_end)


async def test_an_incomplete_subscription_expires_after_23_hours(
    billing: Billing, clock: FrozenClock
) -> None:
    ann = await _customer(billing, token="pm_card_chargeDeclined")
    price = await _price(billing)
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    assert sub.status == "incomplete"

    clock.advance(timedelta(hours=22))
    assert (await billing.jobs.run_due()).expired == 0
    clock.advance(timedelta(hours=1))
    assert (await billing.jobs.run_due()).expired == 1
    assert (await billing.subscriptions.get(sub.id)).status == "incomplete_expired"


async def test_one_failing_subscription_never_stops_the_run(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann = await _customer(billing)
    bob = await billing.customers.create(email="bob@example.com")
    await billing.payment_methods.attach(bob.id, token="pm_card_visa", set_default=True)
    price = await _price(billing)
    good = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    bad = await billing.subscriptions.create(customer_id=bob.id, price_id=price.id)
    bobs = {c.request.provider_customer_id for c in fake.charges[1:]}
    charge = fake.charge

    async def broken_for_bob(request: Any) -> Any:
        if request.provider_customer_id in bobs:
            raise RuntimeError("a bug in a payment adapter")  # not even a QZPayError
        return await charge(request)

    fake.charge = broken_for_bob  # type: ignore[method-assign]
    clock.advance(timedelta(days=31))
    report = await billing.jobs.run_due()

    assert report.errors == 1
    assert (await billing.subscriptions.get(good.id)).current_period_end > clock.now()
    later = await billing.subscriptions.get(bad.id)
    assert later.due_at is not None
    assert later.due_at > clock.now()  # backed off, not first in line for the next run
    audits = (await billing.audit.list(entity_id=bad.id)).items
    assert any(a.action == "job_failed" for a in audits)
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        runs = (await tx.list(JobExecution)).items
    assert any(run.error and str(bad.id) in run.error for run in runs)
    assert (await billing.jobs.run_due()).errors == 0  # the next run is not stuck on it


async def test_a_run_that_finds_nothing_due_writes_nothing(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    before = await count_rows(billing, JobExecution)

    await billing.jobs.run_due()

    assert await count_rows(billing, JobExecution) == before


async def test_a_pause_ends_by_itself_at_resumes_at_and_bills_the_new_period(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann = await _customer(runner)
    price = await _price(runner)
    sub = await runner.subscriptions.create(customer_id=ann.id, price_id=price.id)
    await runner.subscriptions.pause(sub.id, resumes_at=clock.now() + timedelta(days=10))

    clock.advance(timedelta(days=9))
    assert (await runner.jobs.run_due()).resumed == 0
    clock.advance(timedelta(days=1))
    assert (await runner.jobs.run_due()).resumed == 1

    resumed = await runner.subscriptions.get(sub.id)
    assert (resumed.status, resumed.paused_at, resumed.resumes_at) == ("active", None, None)
    assert resumed.current_period_start == clock.now()
    [invoice] = await _invoices(runner, sub.id)
    assert invoice.status == "paid"
    # Paused the moment it started, the first period went wholly unused: the resume credits
    # it in full against the period it starts, which then costs nothing more.
    assert (invoice.subtotal, invoice.total) == (0, 0)
    assert len(fake.charges) == 1


async def _ending_now(billing: Billing, clock: FrozenClock) -> Subscription:
    """A paid monthly subscription canceled at its period's end, and the clock at that end."""
    ann = await _customer(billing)
    price = await _price(billing)
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    await billing.subscriptions.cancel(sub.id, at_period_end=True)
    clock.set(sub.current_period_end)
    return sub


async def test_a_cancel_at_period_end_ends_it_then_and_charges_nothing_more(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _ending_now(runner, clock)
    assert (await runner.jobs.run_due()).canceled == 1

    ended = await runner.subscriptions.get(sub.id)
    assert (ended.status, ended.ended_at, ended.due_at) == (
        "canceled",
        sub.current_period_end,
        None,
    )
    assert len(fake.charges) == 1


async def test_a_free_subscription_renews_without_a_charge(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann = await _customer(runner)
    plan = await runner.plans.create(name="Free")
    free = await runner.prices.create(
        plan_id=plan.id, unit_amount=0, currency="USD", interval="month"
    )
    sub = await runner.subscriptions.create(customer_id=ann.id, price_id=free.id)
    assert sub.status == "active"

    clock.set(sub.current_period_end)
    report = await runner.jobs.run_due()

    assert (report.errors, report.renewals) == (0, 1)
    [invoice] = await _invoices(runner, sub.id)
    assert (invoice.status, invoice.total, invoice.number) == ("paid", 0, "INV-000001")
    assert fake.charges == []
    assert (await runner.subscriptions.get(sub.id)).current_period_end > clock.now()


async def _trial_ended(billing: Billing, clock: FrozenClock, token: str) -> Subscription:
    """A 7-day trial on a ``token`` card, run at its end (the end charge made)."""
    ann = await _customer(billing, token=token)
    price = await _price(billing)
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id, trial_days=7)
    assert sub.trial_end is not None
    clock.set(sub.trial_end)
    await billing.jobs.run_due()
    return sub


async def test_a_trial_whose_end_charge_failed_is_retried_and_recovers_with_a_new_card(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _trial_ended(runner, clock, "pm_card_chargeDeclined")
    past_due = await runner.subscriptions.get(sub.id)
    assert past_due.status == "past_due"
    assert past_due.past_due_at is not None

    await _switch_card(runner, await runner.customers.get(sub.customer_id), "pm_card_visa")
    clock.set(past_due.past_due_at + timedelta(days=1))
    report = await runner.jobs.run_due()

    assert report.dunning_retries == 1
    assert (await runner.subscriptions.get(sub.id)).status == "active"
    [invoice] = await _invoices(runner, sub.id)  # the first paid period, invoiced once
    assert (invoice.status, invoice.period_start) == ("paid", past_due.current_period_start)
    assert [c.result.status for c in fake.charges] == ["failed", "succeeded"]


async def test_a_trial_that_ended_without_a_card_is_canceled_when_dunning_gives_up(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    bob = await runner.customers.create(email="bob@example.com")
    price = await _price(runner)
    sub = await runner.subscriptions.create(customer_id=bob.id, price_id=price.id, trial_days=7)
    assert sub.trial_end is not None
    clock.set(sub.trial_end)
    await runner.jobs.run_due()
    past_due = await runner.subscriptions.get(sub.id)
    assert past_due.status == "past_due"
    assert past_due.past_due_at is not None

    for day in (1, 3, 5, 7):
        clock.set(past_due.past_due_at + timedelta(days=day))
        assert (await runner.jobs.run_due()).errors == 0

    assert (await runner.subscriptions.get(sub.id)).status == "canceled"
    assert fake.charges == []
    [invoice] = await _invoices(runner, sub.id)
    assert invoice.status == "open"  # billed once, never paid


# A runner whose lease ran out works from the row as it claimed it, after another runner
# (or the app) changed it: the work it then does is decided again on the row as it now is.


async def test_a_trial_reminder_is_sent_once_by_two_runners_with_the_same_claim(
    billing: Billing, clock: FrozenClock
) -> None:
    sub, events = await _trial_to_remind(billing)
    clock.advance(timedelta(days=11))
    claimed = await billing.subscriptions.get(sub.id)
    jobs = JobsService(billing._context)

    assert await jobs._work(billing._context, claimed) == "reminded"
    assert await jobs._work(billing._context, claimed) == "skipped"  # the late runner
    assert events == ["subscription.trial_will_end"]


async def test_a_cancel_undone_after_the_claim_is_not_carried_out(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _ending_now(billing, clock)
    claimed = await billing.subscriptions.get(sub.id)
    await billing.subscriptions.uncancel(sub.id)

    jobs = JobsService(billing._context)
    assert await jobs._work(billing._context, claimed) == "skipped"
    kept = await billing.subscriptions.get(sub.id)
    assert (kept.status, kept.cancel_at_period_end, kept.ended_at) == ("active", False, None)
    assert (await billing.jobs.run_due()).renewals == 1  # it renews, as uncancel promised
    assert len(fake.charges) == 2


async def test_a_pause_moved_later_after_the_claim_is_not_resumed_early(
    billing: Billing, clock: FrozenClock
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
    await billing.subscriptions.pause(sub.id, resumes_at=clock.now() + timedelta(days=10))
    clock.advance(timedelta(days=10))
    claimed = await billing.subscriptions.get(sub.id)
    await billing.subscriptions.resume(sub.id)
    later = clock.now() + timedelta(days=5)
    await billing.subscriptions.pause(sub.id, resumes_at=later)

    jobs = JobsService(billing._context)
    assert await jobs._work(billing._context, claimed) == "skipped"
    paused = await billing.subscriptions.get(sub.id)
    assert (paused.status, paused.resumes_at) == ("paused", later)


async def test_dunning_goes_on_past_retries_that_wait_for_the_customer(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    """A retry the bank answers with 3-D Secure (``requires_action``: nobody is there to
    authenticate) counts as failed; the next step still retries, and dunning ends."""
    ann, past_due = await _declined_renewal(runner, clock)
    assert past_due.past_due_at is not None
    await _switch_card(runner, ann, "pm_card_authenticationRequired")

    for day in (1, 3, 5, 7):
        clock.set(past_due.past_due_at + timedelta(days=day))
        await runner.jobs.run_due()
    ended = await runner.subscriptions.get(past_due.id)
    assert ended.status == "canceled"
    assert [c.result.status for c in fake.charges[-4:]] == ["requires_action"] * 4


# A charge whose outcome the provider decides later (``processing``: a payment held for
# review, as MercadoPago's ``in_process``, or a bank debit) is an attempt in flight: no
# second charge while it lasts, and no failure counted before it fails.


async def _renewal_processing(billing: Billing, clock: FrozenClock) -> Subscription:
    """The first renewal is one the provider is still deciding."""
    _, sub = await _renewed_on(billing, clock, "pm_card_processing")
    return sub


async def test_a_renewal_still_processing_is_neither_failed_nor_charged_again(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _renewal_processing(runner, clock)
    renewing = await runner.subscriptions.get(sub.id)
    assert (renewing.status, renewing.past_due_at) == ("active", None)
    [invoice] = await _invoices(runner, sub.id)
    assert invoice.status == "open"
    charged = len(fake.charges)
    assert fake.charges[-1].result.status == "processing"

    for _ in range(3):  # days pass, reconciliation asks, dunning would have retried
        clock.advance(timedelta(days=1))
        await runner.jobs.run_due()
    assert len(fake.charges) == charged
    assert (await runner.subscriptions.get(sub.id)).status == "active"

    fake.finish_processing(fake.charges[-1].result.provider_id)
    clock.advance(timedelta(days=1))
    assert (await runner.jobs.run_due()).payments_reconciled == 1
    [invoice] = await _invoices(runner, sub.id)
    assert invoice.status == "paid"
    assert len(fake.charges) == charged


async def test_a_renewal_that_fails_after_processing_starts_dunning_then(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _renewal_processing(runner, clock)

    fake.finish_processing(fake.charges[-1].result.provider_id, succeed=False)
    clock.advance(timedelta(days=1))
    await runner.jobs.run_due()
    failed = await runner.subscriptions.get(sub.id)
    assert (failed.status, failed.dunning_attempts) == ("past_due", 0)
    assert failed.past_due_at is not None


async def test_an_invoice_with_a_processing_attempt_is_not_paid_again(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _renewal_processing(billing, clock)
    [invoice] = await _invoices(billing, sub.id)
    charged = len(fake.charges)

    with pytest.raises(InvalidStateError) as refused:
        await billing.invoices.pay(invoice.id)
    assert refused.value.rule == "one_attempt_in_flight"
    assert len(fake.charges) == charged
    assert (await billing.invoices.get(invoice.id)).attempt_count == 1


async def test_a_trial_end_charge_still_processing_is_not_charged_again(
    runner: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _trial_ended(runner, clock, "pm_card_processing")
    assert len(fake.charges) == 1
    for _ in range(3):
        clock.advance(timedelta(days=1))
        await runner.jobs.run_due()
    assert len(fake.charges) == 1
    assert (await runner.subscriptions.get(sub.id)).status == "trialing"

    fake.finish_processing(fake.charges[0].result.provider_id)
    clock.advance(timedelta(days=1))
    await runner.jobs.run_due()
    assert (await runner.subscriptions.get(sub.id)).status == "active"
    assert len(fake.charges) == 1


@pytest.mark.parametrize(("approved", "ends"), [(True, "active"), (False, "incomplete_expired")])
async def test_an_incomplete_subscription_waits_for_a_first_charge_still_processing(
    runner: Billing, fake: FakeProvider, clock: FrozenClock, approved: bool, ends: str
) -> None:
    """Its 23 hours pass while the provider decides: it does not expire meanwhile (the
    charge may yet pay); approved it starts, declined it expires."""
    ann = await _customer(runner, token="pm_card_processing")
    price = await _price(runner)
    sub = await runner.subscriptions.create(customer_id=ann.id, price_id=price.id)
    assert sub.status == "incomplete"
    clock.advance(timedelta(hours=30))
    assert (await runner.jobs.run_due()).expired == 0
    assert (await runner.subscriptions.get(sub.id)).status == "incomplete"

    fake.finish_processing(fake.charges[0].result.provider_id, succeed=approved)
    clock.advance(timedelta(hours=1))
    report = await runner.jobs.run_due()
    assert (report.errors, report.expired) == (0, 0 if approved else 1)
    assert (await runner.subscriptions.get(sub.id)).status == ends
    assert len(fake.charges) == 1
