"""The subscription lifecycle: cancel, uncancel, pause, resume, change_price, update_quantity,
list by plan, and a customer's deletion ending their subscriptions; on every adapter.

Every illegal move raises ``InvalidStateError`` and writes nothing (the rows are counted);
the halfway $10 -> $20 change is followed onto the draft invoice and the provider's ledger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import attrs
import pytest

from qzpay import Billing, Event, InvalidStateError, Scope, ValidationError
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.enums import InvoiceStatus, SubscriptionStatus
from qzpay.domain.invoices import Invoice, InvoiceLine
from qzpay.domain.payments import Payment
from qzpay.domain.proration import share
from qzpay.domain.records import AuditLog, IdempotencyKey
from qzpay.domain.subscriptions import Subscription

pytestmark = pytest.mark.anyio

CountRows = Callable[[Billing, type[Any]], Awaitable[int]]
WRITTEN = (Subscription, AuditLog, Invoice, InvoiceLine, Payment, IdempotencyKey)


@attrs.frozen
class Setup:
    customer: Customer
    monthly: Price
    """$10 a month."""
    subscription: Subscription
    """Active on ``monthly`` since the test's start, its first period paid."""


async def _setup(billing: Billing, *, trial_days: int | None = None) -> Setup:
    customer = await billing.customers.create(email="ann@example.com")
    await billing.payment_methods.attach(customer.id, token="pm_card_visa")
    plan = await billing.plans.create(name="Pro")
    monthly = await billing.prices.create(
        plan_id=plan.id, unit_amount=1000, currency="USD", interval="month"
    )
    subscription = await billing.subscriptions.create(
        customer_id=customer.id, price_id=monthly.id, trial_days=trial_days
    )
    return Setup(customer, monthly, subscription)


async def _only_a_declining_card(billing: Billing, customer: Customer) -> None:
    """The customer's card swapped for one every charge declines."""
    visa = (await billing.payment_methods.list(customer.id)).items[0]
    await billing.payment_methods.attach(
        customer.id, token="pm_card_chargeDeclined", set_default=True
    )
    await billing.payment_methods.detach(visa.id)


async def _price(billing: Billing, setup: Setup, amount: int, **kwargs: Any) -> Price:
    options: dict[str, Any] = {"currency": "USD", "interval": "month", **kwargs}
    return await billing.prices.create(plan_id=setup.monthly.plan_id, unit_amount=amount, **options)


async def _snapshot(billing: Billing, count_rows: CountRows) -> list[int]:
    return [await count_rows(billing, kind) for kind in WRITTEN]


async def _rows(billing: Billing, kind: type[Any], **filters: Any) -> list[Any]:
    scope = Scope(livemode=billing.livemode, tenant_id=billing.tenant_id)
    async with billing.storage.transaction(scope, readonly=True) as tx:
        page = await tx.list(kind, filters=filters, limit=100)
    return list(page.items)


def _halfway(subscription: Subscription) -> timedelta:
    start, end = subscription.current_period_start, subscription.current_period_end
    return (end - start) / 2


def _events(billing: Billing) -> list[str]:
    seen: list[str] = []

    def keep(event: Event) -> None:
        seen.append(event.type)

    billing.on("*", keep)
    return seen


# -- cancel / uncancel ---------------------------------------------------------------------


async def test_cancel_now_ends_it_at_once(billing: Billing, clock: FrozenClock) -> None:
    setup = await _setup(billing)
    events = _events(billing)
    clock.advance(timedelta(days=3))

    canceled = await billing.subscriptions.cancel(setup.subscription.id)

    assert canceled.status == SubscriptionStatus.CANCELED
    assert canceled.canceled_at == canceled.ended_at == clock.now()
    assert canceled.due_at is None
    assert await billing.subscriptions.get(canceled.id) == canceled
    assert events == ["subscription.canceled"]


async def test_cancel_at_period_end_schedules_it(billing: Billing, clock: FrozenClock) -> None:
    setup = await _setup(billing)
    events = _events(billing)

    scheduled = await billing.subscriptions.cancel(setup.subscription.id, at_period_end=True)

    assert scheduled.status == SubscriptionStatus.ACTIVE
    assert scheduled.cancel_at_period_end is True
    assert scheduled.canceled_at == clock.now()
    assert scheduled.ended_at is None
    assert scheduled.due_at == setup.subscription.current_period_end
    again = await billing.subscriptions.cancel(setup.subscription.id, at_period_end=True)
    assert again == scheduled  # already scheduled: nothing changed
    assert events == ["subscription.cancel_scheduled"]


async def test_uncancel_undoes_a_scheduled_cancel(billing: Billing) -> None:
    setup = await _setup(billing)
    await billing.subscriptions.cancel(setup.subscription.id, at_period_end=True)
    events = _events(billing)

    back = await billing.subscriptions.uncancel(setup.subscription.id)

    assert back.cancel_at_period_end is False
    assert back.canceled_at is None
    assert back.status == SubscriptionStatus.ACTIVE
    assert back.due_at == setup.subscription.current_period_end
    assert events == ["subscription.uncanceled"]


async def test_a_trial_can_be_canceled_at_its_end(billing: Billing) -> None:
    setup = await _setup(billing, trial_days=14)

    scheduled = await billing.subscriptions.cancel(setup.subscription.id, at_period_end=True)

    assert scheduled.status == SubscriptionStatus.TRIALING
    # Due no later than the trial's end (earlier work, a trial-will-end reminder, stays).
    assert scheduled.due_at == setup.subscription.due_at
    assert scheduled.due_at is not None
    assert setup.subscription.trial_end is not None
    assert scheduled.due_at <= setup.subscription.trial_end


async def test_illegal_cancels_write_nothing(billing: Billing, count_rows: CountRows) -> None:
    setup = await _setup(billing)
    sub_id = setup.subscription.id
    before = await _snapshot(billing, count_rows)
    with pytest.raises(InvalidStateError) as error:
        await billing.subscriptions.uncancel(sub_id, idempotency_key="u-1")
    assert error.value.rule == "cancel_scheduled"
    assert await _snapshot(billing, count_rows) == before

    await billing.subscriptions.cancel(sub_id)
    before = await _snapshot(billing, count_rows)
    for call in (
        billing.subscriptions.cancel(sub_id, idempotency_key="c-2"),
        billing.subscriptions.cancel(sub_id, at_period_end=True),
        billing.subscriptions.uncancel(sub_id),
        billing.subscriptions.pause(sub_id),
        billing.subscriptions.resume(sub_id),
        billing.subscriptions.change_price(sub_id, price_id=setup.monthly.id, quantity=2),
        billing.subscriptions.update_quantity(sub_id, 2),
    ):
        with pytest.raises(InvalidStateError):
            await call
    assert await _snapshot(billing, count_rows) == before


async def test_an_incomplete_subscription_cannot_wait_for_a_period_end(
    billing: Billing, fake: FakeProvider, count_rows: CountRows
) -> None:
    customer = await billing.customers.create(email="bob@example.com")
    await billing.payment_methods.attach(customer.id, token="pm_card_chargeDeclined")
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=1000, currency="USD", interval="month"
    )
    sub = await billing.subscriptions.create(customer_id=customer.id, price_id=price.id)
    assert sub.status == SubscriptionStatus.INCOMPLETE
    before = await _snapshot(billing, count_rows)

    with pytest.raises(InvalidStateError) as error:
        await billing.subscriptions.cancel(sub.id, at_period_end=True)

    assert error.value.rule == "period_to_run_out"
    assert await _snapshot(billing, count_rows) == before
    assert (await billing.subscriptions.cancel(sub.id)).status == SubscriptionStatus.CANCELED


# -- pause / resume -----------------------------------------------------------------------


async def test_pause_and_resume(billing: Billing, clock: FrozenClock, fake: FakeProvider) -> None:
    setup = await _setup(billing)
    events = _events(billing)
    charges = len(fake.charges)
    clock.advance(timedelta(days=5))
    resumes = clock.now() + timedelta(days=30)

    paused = await billing.subscriptions.pause(setup.subscription.id, resumes_at=resumes)

    assert paused.status == SubscriptionStatus.PAUSED
    assert paused.paused_at == clock.now()
    assert paused.resumes_at == paused.due_at == resumes

    clock.advance(timedelta(days=10))
    resumed = await billing.subscriptions.resume(setup.subscription.id)

    assert resumed.status == SubscriptionStatus.ACTIVE
    assert resumed.billing_anchor == resumed.current_period_start == clock.now()
    assert resumed.current_period_end == clock.now().replace(month=3)  # Feb 15 -> Mar 15
    assert resumed.paused_at is None
    assert resumed.resumes_at is None
    assert resumed.due_at == resumed.current_period_end
    # The pause writes its credit for the unused paid time onto the upcoming draft, at
    # the amount paid; the resume invoice takes it up.
    assert events[:4] == [
        "subscription.paused",
        "invoice.created",
        "invoice.updated",
        "subscription.resumed",
    ]
    # Billed in advance, as a renewal: the period the resume starts is invoiced and charged,
    # less the paid period's time the pause left unused (from the pause to that period's
    # end), so no time is billed twice.
    first = setup.subscription
    unused = share(
        1000,
        int((first.current_period_end - paused.paused_at).total_seconds()),
        int((first.current_period_end - first.current_period_start).total_seconds()),
    )
    assert 0 < unused < 1000
    assert [charge.request.amount for charge in fake.charges[charges:]] == [1000 - unused]
    (invoice,) = await _rows(billing, Invoice, subscription_id=resumed.id)
    assert invoice.status == InvoiceStatus.PAID
    assert (invoice.period_start, invoice.period_end) == (
        resumed.current_period_start,
        resumed.current_period_end,
    )


async def test_a_resume_never_bills_paid_time_twice(billing: Billing, fake: FakeProvider) -> None:
    # Found by the lifecycle state machine: pausing and resuming at once charged the same
    # period again, in full, every time.
    setup = await _setup(billing)
    for _ in range(2):
        await billing.subscriptions.pause(setup.subscription.id)
        resumed = await billing.subscriptions.resume(setup.subscription.id)

    assert resumed.status == SubscriptionStatus.ACTIVE
    assert [charge.request.amount for charge in fake.charges] == [1000]
    invoices = await _rows(billing, Invoice, subscription_id=resumed.id)
    assert [(invoice.status, invoice.total) for invoice in invoices] == [
        (InvoiceStatus.PAID, 0),
        (InvoiceStatus.PAID, 0),
    ]


async def test_a_resume_credits_nothing_for_a_trial(billing: Billing, fake: FakeProvider) -> None:
    setup = await _setup(billing, trial_days=14)
    await billing.subscriptions.pause(setup.subscription.id)
    resumed = await billing.subscriptions.resume(setup.subscription.id)

    assert [charge.request.amount for charge in fake.charges] == [1000]  # nothing was paid
    (invoice,) = await _rows(billing, Invoice, subscription_id=resumed.id)
    assert invoice.total == 1000


async def test_a_resume_credits_nothing_for_a_period_left_unpaid(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    await _only_a_declining_card(billing, setup.customer)
    clock.set(setup.subscription.current_period_end)
    await billing.jobs.run_due()  # the renewal is declined
    past_due = await billing.subscriptions.get(setup.subscription.id)
    assert past_due.status == SubscriptionStatus.PAST_DUE

    await billing.subscriptions.pause(past_due.id)
    await billing.payment_methods.attach(setup.customer.id, token="pm_card_visa", set_default=True)
    resumed = await billing.subscriptions.resume(past_due.id)

    # The renewed period was never paid: the resume bills its own period in full.
    assert resumed.status == SubscriptionStatus.ACTIVE
    assert fake.charges[-1].request.amount == 1000
    assert fake.charges[-1].result.status == "succeeded"


async def test_a_price_change_during_a_pause_keeps_the_credit_at_the_price_paid(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    # The credit for the paid month's unused time is what that month cost, whatever price
    # the subscription is on when it resumes: credited at the yearly amount, it would pay
    # back more than was paid.
    setup = await _setup(billing)
    yearly = await _price(billing, setup, 100_000, interval="year")
    clock.advance(timedelta(days=10))
    paused = await billing.subscriptions.pause(setup.subscription.id)
    await billing.subscriptions.change_price(paused.id, price_id=yearly.id)
    clock.advance(timedelta(days=3))
    resumed = await billing.subscriptions.resume(paused.id)

    first = setup.subscription
    assert paused.paused_at is not None
    unused = share(
        1000,
        int((first.current_period_end - paused.paused_at).total_seconds()),
        int((first.current_period_end - first.current_period_start).total_seconds()),
    )
    assert 0 < unused < 1000
    assert resumed.unit_amount == 100_000
    assert fake.charges[-1].request.amount == 100_000 - unused
    (billed,) = [i for i in await _rows(billing, Invoice, subscription_id=resumed.id) if i.total]
    lines = await _rows(billing, InvoiceLine, invoice_id=billed.id)
    assert sorted(line.amount for line in lines) == [-unused, 100_000]


async def test_a_pause_then_cancel_bills_nothing_more(billing: Billing, fake: FakeProvider) -> None:
    setup = await _setup(billing)
    await billing.subscriptions.pause(setup.subscription.id)
    canceled = await billing.subscriptions.cancel(setup.subscription.id)

    assert canceled.status == SubscriptionStatus.CANCELED
    assert [charge.request.amount for charge in fake.charges] == [1000]
    drafts = await _rows(billing, Invoice, subscription_id=canceled.id, status="draft")
    assert drafts == []  # the pause's pending credit went with the draft


async def test_pause_without_a_date_waits_for_resume(billing: Billing) -> None:
    setup = await _setup(billing)

    paused = await billing.subscriptions.pause(setup.subscription.id)

    assert paused.resumes_at is None
    assert paused.due_at is None


async def test_bad_pauses_and_resumes_write_nothing(
    billing: Billing, clock: FrozenClock, count_rows: CountRows
) -> None:
    setup = await _setup(billing)
    sub_id = setup.subscription.id
    before = await _snapshot(billing, count_rows)

    with pytest.raises(ValidationError) as bad:
        await billing.subscriptions.pause(sub_id, resumes_at=clock.now(), idempotency_key="p-1")
    assert bad.value.field == "resumes_at"
    with pytest.raises(ValidationError):
        await billing.subscriptions.pause(sub_id, resumes_at=clock.now().replace(tzinfo=None))
    with pytest.raises(InvalidStateError) as error:
        await billing.subscriptions.resume(sub_id)  # active: not paused
    assert error.value.rule == "paused"
    assert await _snapshot(billing, count_rows) == before

    await billing.subscriptions.pause(sub_id)
    before = await _snapshot(billing, count_rows)
    with pytest.raises(InvalidStateError):
        await billing.subscriptions.pause(sub_id)  # paused -> paused
    with pytest.raises(InvalidStateError):
        await billing.subscriptions.cancel(sub_id, at_period_end=True)
    assert await _snapshot(billing, count_rows) == before


# -- change_price / update_quantity ---------------------------------------------------------


async def test_ten_to_twenty_dollars_halfway_creates_prorations_on_the_draft(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    twenty = await _price(billing, setup, 2000)
    clock.advance(_halfway(setup.subscription))
    events = _events(billing)
    charges = len(fake.charges)

    changed = await billing.subscriptions.change_price(setup.subscription.id, price_id=twenty.id)

    assert changed.price_id == twenty.id
    assert changed.unit_amount == 2000
    assert changed.current_period_end == setup.subscription.current_period_end
    drafts = await _rows(billing, Invoice, subscription_id=changed.id, status=InvoiceStatus.DRAFT)
    assert len(drafts) == 1
    lines = await _rows(billing, InvoiceLine, invoice_id=drafts[0].id)
    assert sorted(line.amount for line in lines) == [-500, 1000]
    assert all(line.proration for line in lines)
    assert {line.price_id for line in lines} == {setup.monthly.id, twenty.id}
    assert drafts[0].subtotal == 500
    assert len(fake.charges) == charges  # billed with the next renewal, not now
    assert "subscription.price_changed" in events


async def test_always_invoice_charges_the_difference_now(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    twenty = await _price(billing, setup, 2000)
    clock.advance(_halfway(setup.subscription))
    charges = len(fake.charges)

    changed = await billing.subscriptions.change_price(
        setup.subscription.id, price_id=twenty.id, proration="always_invoice"
    )

    assert changed.price_id == twenty.id
    assert [charge.request.amount for charge in fake.charges[charges:]] == [500]
    invoices = await _rows(billing, Invoice, subscription_id=changed.id)
    assert [(invoice.status, invoice.amount_paid) for invoice in invoices] == [
        (InvoiceStatus.PAID, 500)
    ]
    assert invoices[0].number is not None
    # The next renewal starts a new draft: nothing is left pending.
    assert not await _rows(billing, Invoice, subscription_id=changed.id, status="draft")


async def test_always_invoice_declined_keeps_the_change_and_an_open_invoice(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    await _only_a_declining_card(billing, setup.customer)
    twenty = await _price(billing, setup, 2000)
    clock.advance(_halfway(setup.subscription))

    changed = await billing.subscriptions.change_price(
        setup.subscription.id, price_id=twenty.id, proration="always_invoice"
    )

    assert changed.price_id == twenty.id
    assert fake.charges[-1].result.status == "failed"
    (invoice,) = await _rows(billing, Invoice, subscription_id=changed.id)
    assert (invoice.status, invoice.amount_due, invoice.attempt_count) == (
        InvoiceStatus.OPEN,
        500,
        1,
    )


async def test_proration_none_changes_the_price_and_no_invoice(
    billing: Billing, clock: FrozenClock, fake: FakeProvider, count_rows: CountRows
) -> None:
    setup = await _setup(billing)
    twenty = await _price(billing, setup, 2000)
    clock.advance(_halfway(setup.subscription))
    invoices, lines, charges = (
        await count_rows(billing, Invoice),
        await count_rows(billing, InvoiceLine),
        len(fake.charges),
    )

    changed = await billing.subscriptions.change_price(
        setup.subscription.id, price_id=twenty.id, proration="none"
    )

    assert (changed.price_id, changed.unit_amount) == (twenty.id, 2000)
    assert await count_rows(billing, Invoice) == invoices
    assert await count_rows(billing, InvoiceLine) == lines
    assert len(fake.charges) == charges


async def test_update_quantity_prorates_the_seats(billing: Billing, clock: FrozenClock) -> None:
    setup = await _setup(billing)
    clock.advance(_halfway(setup.subscription))
    events = _events(billing)

    changed = await billing.subscriptions.update_quantity(setup.subscription.id, 3)

    assert changed.quantity == 3
    assert changed.price_id == setup.monthly.id
    (draft,) = await _rows(billing, Invoice, subscription_id=changed.id, status="draft")
    lines = await _rows(billing, InvoiceLine, invoice_id=draft.id)
    assert sorted(line.amount for line in lines) == [-500, 1500]
    assert events.count("subscription.quantity_changed") == 1


async def test_a_change_to_the_yearly_price_starts_a_new_period_billed_now(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    yearly = await _price(billing, setup, 10_000, interval="year")
    clock.advance(_halfway(setup.subscription))
    charges = len(fake.charges)

    changed = await billing.subscriptions.change_price(setup.subscription.id, price_id=yearly.id)

    assert changed.interval == "year"
    assert changed.billing_anchor == changed.current_period_start == clock.now()
    assert changed.current_period_end == clock.now().replace(year=2029)
    assert changed.due_at == changed.current_period_end
    assert [charge.request.amount for charge in fake.charges[charges:]] == [10_000 - 500]


async def test_a_trialing_subscription_changes_price_without_proration(
    billing: Billing, clock: FrozenClock, count_rows: CountRows
) -> None:
    setup = await _setup(billing, trial_days=14)
    twenty = await _price(billing, setup, 2000)
    clock.advance(timedelta(days=7))

    changed = await billing.subscriptions.change_price(setup.subscription.id, price_id=twenty.id)

    assert changed.unit_amount == 2000
    assert changed.status == SubscriptionStatus.TRIALING
    assert await count_rows(billing, InvoiceLine) == 0


async def test_the_same_price_and_quantity_changes_nothing(
    billing: Billing, clock: FrozenClock, count_rows: CountRows
) -> None:
    setup = await _setup(billing)
    clock.advance(timedelta(days=3))
    before = await _snapshot(billing, count_rows)

    same = await billing.subscriptions.change_price(
        setup.subscription.id, price_id=setup.monthly.id, quantity=1
    )
    also = await billing.subscriptions.update_quantity(setup.subscription.id, 1)

    assert same == also == setup.subscription
    assert await _snapshot(billing, count_rows) == before


async def test_bad_price_changes_are_refused_and_write_nothing(
    billing: Billing, count_rows: CountRows
) -> None:
    setup = await _setup(billing)
    sub_id = setup.subscription.id
    euros = await _price(billing, setup, 2000, currency="EUR")
    weekly = await _price(billing, setup, 300, interval="week")
    archived = await _price(billing, setup, 2000)
    await billing.prices.update(archived.id, active=False)
    before = await _snapshot(billing, count_rows)

    refusals: list[tuple[Any, type[Exception], str]] = [
        (
            billing.subscriptions.change_price(sub_id, price_id=euros.id),
            ValidationError,
            "same_currency",
        ),
        (
            billing.subscriptions.change_price(sub_id, price_id=weekly.id),
            ValidationError,
            "interval_family",
        ),
        (
            billing.subscriptions.change_price(sub_id, price_id=archived.id),
            InvalidStateError,
            "active_price",
        ),
        (
            billing.subscriptions.change_price(
                sub_id, price_id=setup.monthly.id, proration="later"
            ),
            ValidationError,
            "proration",
        ),
        (
            billing.subscriptions.change_price(sub_id, price_id=setup.monthly.id, quantity=0),
            ValidationError,
            "int_range",
        ),
        (billing.subscriptions.update_quantity(sub_id, -1), ValidationError, "int_range"),
    ]
    for call, error_type, rule in refusals:
        with pytest.raises(error_type) as error:
            await call
        assert getattr(error.value, "rule", None) == rule
    assert await _snapshot(billing, count_rows) == before


# -- idempotent replays ---------------------------------------------------------------------


async def test_keyed_lifecycle_calls_replay_their_first_result(
    billing: Billing, clock: FrozenClock, count_rows: CountRows, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    sub_id = setup.subscription.id
    twenty = await _price(billing, setup, 2000)
    clock.advance(_halfway(setup.subscription))

    first = await billing.subscriptions.change_price(
        sub_id, price_id=twenty.id, proration="always_invoice", idempotency_key="up-1"
    )
    rows, charges = await _snapshot(billing, count_rows), len(fake.charges)
    again = await billing.subscriptions.change_price(
        sub_id, price_id=twenty.id, proration="always_invoice", idempotency_key="up-1"
    )
    assert again == first
    assert await _snapshot(billing, count_rows) == rows
    assert len(fake.charges) == charges

    paused = await billing.subscriptions.pause(sub_id, idempotency_key="pause-1")
    resumed = await billing.subscriptions.resume(sub_id, idempotency_key="resume-1")
    assert await billing.subscriptions.pause(sub_id, idempotency_key="pause-1") == paused
    assert await billing.subscriptions.resume(sub_id, idempotency_key="resume-1") == resumed
    scheduled = await billing.subscriptions.cancel(
        sub_id, at_period_end=True, idempotency_key="end-1"
    )
    undone = await billing.subscriptions.uncancel(sub_id, idempotency_key="undo-1")
    assert await billing.subscriptions.uncancel(sub_id, idempotency_key="undo-1") == undone
    assert (
        await billing.subscriptions.cancel(sub_id, at_period_end=True, idempotency_key="end-1")
        == scheduled
    )
    canceled = await billing.subscriptions.cancel(sub_id, idempotency_key="now-1")
    assert await billing.subscriptions.cancel(sub_id, idempotency_key="now-1") == canceled
    assert (await billing.subscriptions.get(sub_id)).status == SubscriptionStatus.CANCELED


# -- list, and a customer's deletion ---------------------------------------------------------


async def test_list_filters_by_plan(billing: Billing) -> None:
    setup = await _setup(billing)
    other_plan = await billing.plans.create(name="Team")
    other = await billing.prices.create(
        plan_id=other_plan.id, unit_amount=500, currency="USD", interval="month"
    )
    team = await billing.subscriptions.create(customer_id=setup.customer.id, price_id=other.id)

    by_plan = await billing.subscriptions.list(plan_id=other_plan.id)
    both = await billing.subscriptions.list(customer_id=setup.customer.id, status="active")

    assert [sub.id for sub in by_plan] == [team.id]
    assert {sub.id for sub in both} == {team.id, setup.subscription.id}
    with pytest.raises(ValidationError):
        await billing.subscriptions.list(plan_id="nope")


async def test_deleting_a_customer_in_a_trial_means_no_charge_at_its_end(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing, trial_days=14)
    events = _events(billing)
    charges = len(fake.charges)

    await billing.customers.delete(setup.customer.id)

    ended = await billing.subscriptions.get(setup.subscription.id)
    assert ended.status == SubscriptionStatus.CANCELED
    assert ended.ended_at == clock.now()
    assert events == ["subscription.canceled", "customer.deleted"]
    clock.advance(timedelta(days=20))
    await billing.jobs.run_due()
    assert len(fake.charges) == charges == 0
    assert (await billing.subscriptions.get(ended.id)).status == SubscriptionStatus.CANCELED


async def test_deleting_a_customer_cancels_every_live_subscription(billing: Billing) -> None:
    setup = await _setup(billing)
    paused = await billing.subscriptions.create(
        customer_id=setup.customer.id, price_id=setup.monthly.id
    )
    await billing.subscriptions.pause(paused.id)
    done = await billing.subscriptions.create(
        customer_id=setup.customer.id, price_id=setup.monthly.id
    )
    done = await billing.subscriptions.cancel(done.id)

    await billing.customers.delete(setup.customer.id)

    page = await billing.subscriptions.list(customer_id=setup.customer.id)
    assert {sub.status for sub in page} == {SubscriptionStatus.CANCELED}
    assert await billing.subscriptions.get(done.id) == done  # already ended: untouched


# -- with the job runner ---------------------------------------------------------------------


async def test_a_scheduled_cancel_ends_at_the_period_end_and_an_undone_one_renews(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    other = await billing.subscriptions.create(
        customer_id=setup.customer.id, price_id=setup.monthly.id
    )
    await billing.subscriptions.cancel(setup.subscription.id, at_period_end=True)
    await billing.subscriptions.cancel(other.id, at_period_end=True)
    await billing.subscriptions.uncancel(other.id)
    charges = len(fake.charges)

    clock.set(setup.subscription.current_period_end + timedelta(minutes=1))
    await billing.jobs.run_due()

    ended = await billing.subscriptions.get(setup.subscription.id)
    assert ended.status == SubscriptionStatus.CANCELED
    assert ended.ended_at == setup.subscription.current_period_end
    renewed = await billing.subscriptions.get(other.id)
    assert renewed.status == SubscriptionStatus.ACTIVE
    assert renewed.current_period_start == other.current_period_end
    assert [charge.request.amount for charge in fake.charges[charges:]] == [1000]


async def test_prorations_on_the_draft_are_billed_with_the_renewal(
    billing: Billing, clock: FrozenClock, fake: FakeProvider
) -> None:
    setup = await _setup(billing)
    twenty = await _price(billing, setup, 2000)
    clock.advance(_halfway(setup.subscription))
    await billing.subscriptions.change_price(setup.subscription.id, price_id=twenty.id)
    charges = len(fake.charges)

    clock.set(setup.subscription.current_period_end + timedelta(minutes=1))
    await billing.jobs.run_due()

    # The next month at $20, plus the -500 + 1000 of the change.
    assert [charge.request.amount for charge in fake.charges[charges:]] == [2000 + 500]


async def test_an_always_invoice_downgrade_carries_its_credit_to_the_next_invoice(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    customer = await billing.customers.create(email="down@example.com")
    await billing.payment_methods.attach(customer.id, token="pm_card_visa", set_default=True)
    plan = await billing.plans.create(name="Tiers")
    twenty = await billing.prices.create(
        plan_id=plan.id, unit_amount=2000, currency="USD", interval="month"
    )
    ten = await billing.prices.create(
        plan_id=plan.id, unit_amount=1000, currency="USD", interval="month"
    )
    sub = await billing.subscriptions.create(customer_id=customer.id, price_id=twenty.id)
    clock.set(sub.current_period_start + (sub.current_period_end - sub.current_period_start) / 2)

    await billing.subscriptions.change_price(sub.id, price_id=ten.id, proration="always_invoice")

    assert len(fake.charges) == 1  # nothing charged (and nothing refunded) for a net credit
    [draft] = (await billing.invoices.list(subscription_id=sub.id, status="draft")).items
    lines = (await billing.invoices.lines(draft.id)).items
    assert sorted(line.amount for line in lines) == [-1000, 500]


# -- a subscription that ends bills nothing more --------------------------------------------


async def test_canceling_now_deletes_the_draft_of_pending_prorations(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    setup = await _setup(billing)
    clock.advance(_halfway(setup.subscription))
    await billing.subscriptions.update_quantity(setup.subscription.id, 3)
    [draft] = await _rows(billing, Invoice, subscription_id=setup.subscription.id, status="draft")
    assert draft.total > 0  # the upgrade's prorations, waiting for the renewal
    charged = len(fake.charges)

    await billing.subscriptions.cancel(setup.subscription.id)

    assert (
        await _rows(billing, Invoice, subscription_id=setup.subscription.id, status="draft") == []
    )
    audits = (await billing.audit.list(entity_id=draft.id)).items
    assert audits[0].action == "deleted"
    clock.advance(timedelta(days=40))
    await billing.jobs.run_due()
    assert len(fake.charges) == charged  # nothing billed for a canceled subscription


async def test_a_cancel_at_period_end_deletes_the_draft_when_the_period_ends(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    setup = await _setup(billing)
    clock.advance(_halfway(setup.subscription))
    await billing.subscriptions.update_quantity(setup.subscription.id, 2)
    await billing.subscriptions.cancel(setup.subscription.id, at_period_end=True)
    [draft] = await _rows(billing, Invoice, subscription_id=setup.subscription.id, status="draft")
    charged = len(fake.charges)

    clock.set(setup.subscription.current_period_end + timedelta(minutes=1))
    report = await billing.jobs.run_due()

    assert report.canceled == 1
    ended = await billing.subscriptions.get(setup.subscription.id)
    assert ended.status == SubscriptionStatus.CANCELED
    assert await _rows(billing, Invoice, subscription_id=ended.id, status="draft") == []
    assert (await billing.audit.list(entity_id=draft.id)).items[0].action == "deleted"
    assert len(fake.charges) == charged
