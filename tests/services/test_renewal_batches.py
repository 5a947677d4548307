"""Renewals as batches (``renewals.renew_round``): what one subscription does to the batch.

A claimed batch's renewals are opened in one transaction, charged side by side and settled in
one transaction. These tests make one member of a batch misbehave at each step (bad data in
the open, an edit of its row between claim and open, an edit while it is charged) and check
that the others renew once, the odd one ends right, and nothing is charged twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import anyio
import attrs
import pytest

from qzpay import Billing, Scope
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.contracts.storage import StoragePort
from qzpay.domain.catalog import Price
from qzpay.domain.customers import CustomerProviderRef
from qzpay.domain.enums import InvoiceStatus, PaymentStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment
from qzpay.domain.records import JobExecution
from qzpay.domain.subscriptions import Subscription
from qzpay.money import MAX_AMOUNT
from qzpay.services import renewals
from qzpay.services.jobs import JobsService

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)


async def _book(billing: Billing, count: int, token: str = "pm_card_visa") -> list[Subscription]:
    """``count`` customers, each with a card and an active monthly subscription."""
    plan = await billing.plans.create(name="Pro")
    price: Price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    subscriptions = []
    for i in range(count):
        customer = await billing.customers.create(email=f"user{i}@example.com")
        await billing.payment_methods.attach(customer.id, token=token, set_default=True)
        subscriptions.append(
            await billing.subscriptions.create(customer_id=customer.id, price_id=price.id)
        )
    return subscriptions


async def _declining(billing: Billing, subscriptions: list[Subscription]) -> list[Subscription]:
    """Each subscription's customer left with one card, which every charge declines."""
    for sub in subscriptions:
        for method in (await billing.payment_methods.list(sub.customer_id)).items:
            await billing.payment_methods.detach(method.id)
        await billing.payment_methods.attach(
            sub.customer_id, token="pm_card_chargeDeclined", set_default=True
        )
    return subscriptions


async def _rows(billing: Billing, kind: type[Any], **filters: object) -> list[Any]:
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        return list((await tx.list(kind, filters=filters, limit=100)).items)


async def test_a_subscription_that_breaks_the_open_transaction_fails_alone(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    subscriptions = await _book(billing, 4)
    odd = subscriptions[2]
    # Data no invoice line can bill: the line's amount would not fit (money.MAX_AMOUNT).
    async with billing.storage.transaction(TEST) as tx:
        stored = await tx.get(Subscription, odd.id)
        assert stored is not None
        await tx.update(attrs.evolve(stored, unit_amount=MAX_AMOUNT, quantity=2))
    charged_before = len(fake.charges)

    clock.advance(timedelta(days=31))
    report = await billing.jobs.run_due()

    assert (report.renewals, report.charged, report.errors) == (3, 3, 1)
    assert len(fake.charges) == charged_before + 3
    for sub in subscriptions:
        now = await billing.subscriptions.get(sub.id)
        renewed = now.current_period_end > clock.now()
        assert renewed == (sub.id != odd.id)
    odd_now = await billing.subscriptions.get(odd.id)
    assert odd_now.due_at is not None
    assert odd_now.due_at > clock.now()  # backed off
    latest = (await billing.audit.list(entity_id=odd.id)).items[0]
    assert latest.action == "job_failed"
    numbers = sorted(i.number for i in await _rows(billing, Invoice) if i.number)
    assert numbers == [f"INV-{n:06d}" for n in range(1, 4)]  # gapless: the failed try gave its back


async def test_rows_edited_after_the_claim_are_renewed_as_they_now_are(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    subscriptions = await _book(billing, 3)
    clock.advance(timedelta(days=31))
    claimed = [await billing.subscriptions.get(sub.id) for sub in subscriptions]
    # A user's edit between the claim and the renewal: the claimed row is stale now.
    await billing.subscriptions.update_quantity(claimed[1].id, 3, proration="none")

    done = await renewals.renew_round(billing._context, claimed, concurrency=2)

    assert {key: renewed.charged for key, renewed in done.items()} == {
        sub.id: "charged" for sub in subscriptions
    }
    edited = await billing.subscriptions.get(claimed[1].id)
    assert edited.quantity == 3
    assert edited.current_period_end > clock.now()
    [invoice] = await _rows(billing, Invoice, subscription_id=edited.id)
    assert invoice.total == 3 * 2900  # billed at the edited quantity
    assert len(fake.charges) == 3 + 3


async def test_an_edit_while_the_batch_is_charged_lets_each_payment_settle_on_its_own(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    subscriptions = await _declining(billing, await _book(billing, 3))  # renewals decline
    charge = fake.charge
    edited = subscriptions[0].id

    done: list[bool] = []

    async def edit_while_charging(request: Any) -> Any:
        # The user edits one subscription while the renewals are at the provider (once: the
        # calls run side by side): the batch's settle, which moves each declined
        # subscription to past_due, finds it stale.
        if not done:
            done.append(True)
            await billing.subscriptions.update_quantity(edited, 2, proration="none")
        return await charge(request)

    fake.charge = edit_while_charging  # type: ignore[method-assign]
    clock.advance(timedelta(days=31))
    report = await billing.jobs.run_due()

    runs = await _rows(billing, JobExecution)
    assert (report.renewals, report.failed, report.errors) == (3, 3, 0), [r.error for r in runs]
    assert len(fake.charges) == 3 + 3  # one attempt each, none repeated
    for sub in subscriptions:
        now = await billing.subscriptions.get(sub.id)
        assert now.status == "past_due"
        [payment] = [
            p
            for p in await _rows(billing, Payment, subscription_id=sub.id)
            if p.invoice_id is not None
        ]
        assert payment.status == PaymentStatus.FAILED
        [invoice] = await _rows(billing, Invoice, subscription_id=sub.id)
        assert (invoice.status, invoice.attempt_count) == (InvoiceStatus.OPEN, 1)
    assert (await billing.subscriptions.get(edited)).quantity == 2  # the edit was kept


async def test_a_renewal_with_a_draft_of_prorations_bills_them_with_the_period(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    [sub, other] = await _book(billing, 2)
    clock.advance(timedelta(days=15))
    await billing.subscriptions.update_quantity(sub.id, 2, proration="create_prorations")
    [draft] = await _rows(billing, Invoice, subscription_id=sub.id, status=InvoiceStatus.DRAFT)
    assert draft.subtotal > 0

    clock.advance(timedelta(days=16))
    report = await billing.jobs.run_due()

    assert report.charged == 2
    [renewal] = await _rows(billing, Invoice, subscription_id=sub.id, status=InvoiceStatus.PAID)
    assert renewal.id == draft.id  # the draft itself finalized, not a second invoice
    assert renewal.total == draft.subtotal + 2 * 2900
    assert renewal.amount_paid == renewal.total
    assert fake.charges[-1].request.amount in (renewal.total, 2900)
    [plain] = await _rows(billing, Invoice, subscription_id=other.id)
    assert plain.total == 2900


async def test_an_apps_one_off_invoices_for_a_subscription_are_never_taken_for_its_renewal(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    [sub] = await _book(billing, 1)
    setup = await billing.invoices.create(
        customer_id=sub.customer_id,
        currency="USD",
        subscription_id=sub.id,
        lines=[{"description": "Setup fee", "unit_amount": 5000}],
    )
    kept = await billing.invoices.create(
        customer_id=sub.customer_id,
        currency="USD",
        subscription_id=sub.id,
        lines=[{"description": "Onboarding call", "unit_amount": 9000}],
    )
    opened = await billing.invoices.finalize(setup.id)  # open, unpaid: the app's to charge

    clock.advance(timedelta(days=31))
    report = await billing.jobs.run_due()

    assert (report.renewals, report.charged) == (1, 1)
    assert fake.charges[-1].request.amount == 2900  # the period, not the app's invoices
    assert (await billing.invoices.get(opened.id)).status == InvoiceStatus.OPEN
    assert (await billing.invoices.get(kept.id)).status == InvoiceStatus.DRAFT
    await billing.subscriptions.cancel(sub.id)
    assert (await billing.invoices.get(kept.id)).status == InvoiceStatus.DRAFT  # not deleted


class _Gate:
    """A store whose first call of one of ``calls`` on ``kind`` (any kind: ``None``) waits
    for ``release``. On reads (the default): a runner that read its subscriptions, then saw
    another runner's commit before its next read. On writes (``insert``, ``update``): a
    runner that read what it needed, then saw another runner's commit before it wrote."""

    def __init__(
        self,
        inner: StoragePort,
        kind: type[Any] | None = Invoice,
        calls: tuple[str, ...] = ("list", "find"),
    ) -> None:
        self.inner = inner
        self.kind = kind
        self.calls = calls
        self.reached = anyio.Event()
        self.release = anyio.Event()
        self.waited = False

    async def wait(self, call: str, kind: type[Any]) -> None:
        wanted = call in self.calls and (self.kind is None or kind is self.kind)
        if wanted and not self.waited:
            self.waited = True
            self.reached.set()
            await self.release.wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextlib.asynccontextmanager
    async def transaction(self, scope: Scope, *, readonly: bool = False) -> AsyncIterator[Any]:
        async with self.inner.transaction(scope, readonly=readonly) as tx:
            yield _GatedTransaction(tx, self)


class _GatedTransaction:
    def __init__(self, inner: Any, gate: _Gate) -> None:
        self._inner = inner
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, kind: type[Any], **options: Any) -> Any:
        await self._gate.wait("list", kind)
        return await self._inner.list(kind, **options)

    async def find(self, kind: type[Any], **options: Any) -> Any:
        await self._gate.wait("find", kind)
        return await self._inner.find(kind, **options)

    async def insert(self, row: Any) -> Any:
        await self._gate.wait("insert", type(row))
        return await self._inner.insert(row)

    async def update(self, row: Any, **options: Any) -> Any:
        await self._gate.wait("update", type(row))
        return await self._inner.update(row, **options)


async def test_a_runner_that_reads_its_rows_before_another_renews_them_charges_nothing(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, store_factory: Any
) -> None:
    """Two runners with the same rows (a lease ran out). One reads the subscriptions, the
    other renews them (a declined charge), then the first reads their invoices: it finds
    a renewal's open invoice on rows it read as not renewed yet, and must not charge it
    again (PostgreSQL's reads each see the latest commit)."""
    if store_factory.kind != "postgres":
        pytest.skip("one transaction at a time on this store: no commit lands between reads")
    subscriptions = await _declining(billing, await _book(billing, 3))
    clock.advance(timedelta(days=31))
    claimed = [await billing.subscriptions.get(sub.id) for sub in subscriptions]
    before = len(fake.charges)
    gate = _Gate(billing.storage)
    late = attrs.evolve(billing._context, storage=cast(StoragePort, gate))
    done: dict[Any, renewals.Renewed] = {}

    async def reads_then_waits() -> None:
        done.update(await renewals.renew_round(late, claimed, concurrency=2))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(reads_then_waits)
            await gate.reached.wait()
            await renewals.renew_round(billing._context, claimed, concurrency=2)
            gate.release.set()

    assert len(fake.charges) - before == 3  # one attempt per period, never a second
    assert done == {}  # the late runner found nothing left to renew or charge
    for sub in subscriptions:
        now = await billing.subscriptions.get(sub.id)
        assert (now.status, now.dunning_attempts) == ("past_due", 0)
        [invoice] = await _rows(billing, Invoice, subscription_id=sub.id)
        assert invoice.attempt_count == 1


async def test_two_rounds_on_the_same_claimed_rows_charge_each_period_once(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    """Two runners with the same rows (a lease ran out): one renews, the other finds the
    rows renewed, even when it read them before and their invoices after the first commit,
    and never charges the first one's declined invoice again."""
    subscriptions = await _declining(billing, await _book(billing, 6))
    clock.advance(timedelta(days=31))
    claimed = [await billing.subscriptions.get(sub.id) for sub in subscriptions]
    before = len(fake.charges)

    async def runner() -> None:
        await renewals.renew_round(billing._context, claimed, concurrency=4)

    async with anyio.create_task_group() as group:
        for _ in range(2):
            group.start_soon(runner)

    assert len(fake.charges) - before == 6  # one attempt per period, never a second
    for sub in subscriptions:
        now = await billing.subscriptions.get(sub.id)
        assert (now.status, now.dunning_attempts) == ("past_due", 0)
        [invoice] = await _rows(billing, Invoice, subscription_id=sub.id)
        assert invoice.attempt_count == 1


async def test_a_trial_end_read_before_another_runner_ended_it_is_not_charged_again(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, store_factory: Any
) -> None:
    """The trial's end, by two runners with the same row: the late one read the trialing
    row, the other ended the trial (a declined charge, settled), then the late one looks
    for an attempt in flight, finds none, and must not charge the period again."""
    if store_factory.kind != "postgres":
        pytest.skip("one transaction at a time on this store: no commit lands between reads")
    [customer] = [await billing.customers.create(email="ann@example.com")]
    await billing.payment_methods.attach(
        customer.id, token="pm_card_chargeDeclined", set_default=True
    )
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    sub = await billing.subscriptions.create(
        customer_id=customer.id, price_id=price.id, trial_days=7
    )
    assert sub.trial_end is not None
    clock.set(sub.trial_end)
    claimed = await billing.subscriptions.get(sub.id)
    gate = _Gate(billing.storage, kind=Payment)
    late = attrs.evolve(billing._context, storage=cast(StoragePort, gate))
    outcomes: list[str] = []

    async def reads_then_waits() -> None:
        outcomes.append(await JobsService(late)._end_trial(late, claimed))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(reads_then_waits)
            await gate.reached.wait()
            first = JobsService(billing._context)
            outcomes.append(await first._end_trial(billing._context, claimed))
            gate.release.set()

    assert sorted(outcomes) == ["skipped", "trial_failed"]
    assert [c.result.status for c in fake.charges] == ["failed"]  # one attempt, never two
    ended = await billing.subscriptions.get(sub.id)
    assert (ended.status, ended.dunning_attempts) == ("past_due", 0)


async def test_an_answer_that_cannot_be_stored_fails_its_own_renewal_only(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    """One provider answer no database can store (a NUL in its message): the batch's settle
    is refused, each payment is then settled on its own, and only that one is reported."""
    subscriptions = await _declining(billing, await _book(billing, 3))
    odd = subscriptions[1]
    charge = fake.charge
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        ref = await tx.find(CustomerProviderRef, customer_id=odd.customer_id, provider="fake")
    assert ref is not None

    async def garbled(request: Any) -> Any:
        result = await charge(request)
        if request.provider_customer_id == ref.provider_customer_id:
            return attrs.evolve(result, failure_message="declined\x00garbled")
        return result

    fake.charge = garbled  # type: ignore[method-assign]
    clock.advance(timedelta(days=31))
    report = await billing.jobs.run_due()

    assert (report.renewals, report.failed, report.errors) == (2, 2, 1)
    for sub in subscriptions:
        now = await billing.subscriptions.get(sub.id)
        assert now.status == ("active" if sub.id == odd.id else "past_due")
    [pending] = [p for p in await _rows(billing, Payment, subscription_id=odd.id) if p.invoice_id]
    assert pending.status == PaymentStatus.PENDING  # left for reconciliation, never lost


async def test_a_past_due_trial_invoiced_by_two_runners_at_once_is_invoiced_once(
    billing: Billing, clock: FrozenClock, store_factory: Any
) -> None:
    """A trial that ended with no card is past due with nothing invoiced; its first dunning
    retry invoices the period. Two runners with the same row (a lease ran out): the late one
    found nothing invoiced, the other invoiced it and committed, then the late one writes.
    Found with two runners and 1 ms leases: a second open invoice for the same period,
    which a card added later would have paid twice."""
    if store_factory.kind != "postgres":
        pytest.skip("one transaction at a time on this store: no commit lands between reads")
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    bob = await billing.customers.create(email="bob@example.com")
    sub = await billing.subscriptions.create(customer_id=bob.id, price_id=price.id, trial_days=7)
    assert sub.trial_end is not None
    clock.set(sub.trial_end)
    await billing.jobs.run_due()
    past_due = await billing.subscriptions.get(sub.id)
    assert past_due.status == "past_due"
    assert past_due.past_due_at is not None
    assert await _rows(billing, Invoice, subscription_id=sub.id) == []
    clock.set(past_due.past_due_at + timedelta(days=1))
    gate = _Gate(billing.storage, kind=None, calls=("insert", "update"))
    late = attrs.evolve(billing._context, storage=cast(StoragePort, gate))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(renewals.retry, late, past_due)
            await gate.reached.wait()
            await renewals.retry(billing._context, past_due)
            gate.release.set()

    [invoice] = await _rows(billing, Invoice, subscription_id=sub.id)
    assert (invoice.status, invoice.period_start) == ("open", past_due.current_period_start)


@pytest.mark.parametrize(
    ("stops_at", "kind", "calls"),
    [
        ("before reading the invoice", Invoice, ("list",)),
        ("before opening its attempt", Payment, ("insert",)),
    ],
)
async def test_a_dunning_step_retried_by_two_runners_at_once_charges_once(
    billing: Billing,
    fake: FakeProvider,
    clock: FrozenClock,
    store_factory: Any,
    stops_at: str,
    kind: type[Any],
    calls: tuple[str, ...],
) -> None:
    """Two runners hold the same dunning step (a lease ran out mid-retry). The late one
    stops, the other retries (declined) and commits, then the late one goes on: it must
    find the step done, not charge the invoice a second time. Found with two lanes and
    1 ms leases: seven charges where the policy makes six."""
    if store_factory.kind != "postgres":
        pytest.skip("one transaction at a time on this store: no commit lands between reads")
    [sub] = await _declining(billing, await _book(billing, 1))
    clock.advance(timedelta(days=31))
    await billing.jobs.run_due()
    past_due = await billing.subscriptions.get(sub.id)
    assert (past_due.status, past_due.dunning_attempts) == ("past_due", 0)
    assert past_due.past_due_at is not None
    clock.set(past_due.past_due_at + timedelta(days=1))
    before = len(fake.charges)
    gate = _Gate(billing.storage, kind=kind, calls=calls)
    late = attrs.evolve(billing._context, storage=cast(StoragePort, gate))
    outcome: list[renewals.Charged] = []

    async def late_retry() -> None:
        outcome.append(await renewals.retry(late, past_due))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(late_retry)
            await gate.reached.wait()
            assert await renewals.retry(billing._context, past_due) == "failed"
            gate.release.set()

    assert outcome == ["skipped"], stops_at
    assert len(fake.charges) - before == 1
    [invoice] = await _rows(billing, Invoice, subscription_id=sub.id)
    assert invoice.attempt_count == 2  # the renewal's and one retry's
    assert (await billing.subscriptions.get(sub.id)).dunning_attempts == 1


async def test_a_retry_with_no_card_counted_by_two_runners_at_once_counts_once(
    billing: Billing, clock: FrozenClock, store_factory: Any
) -> None:
    """No card to charge: the retry counts as failed with no payment row. Two runners with
    the same step (a lease ran out): the late one's count conflicts with the other's, and
    on the row as it now is the step is done, so it is not counted twice (a dunning policy
    ended a step early)."""
    if store_factory.kind != "postgres":
        pytest.skip("one transaction at a time on this store: no commit lands between reads")
    [sub] = await _declining(billing, await _book(billing, 1))
    clock.advance(timedelta(days=31))
    await billing.jobs.run_due()
    for method in (await billing.payment_methods.list(sub.customer_id)).items:
        await billing.payment_methods.detach(method.id)
    past_due = await billing.subscriptions.get(sub.id)
    assert past_due.past_due_at is not None
    clock.set(past_due.past_due_at + timedelta(days=1))
    gate = _Gate(billing.storage, kind=Subscription, calls=("update",))
    late = JobsService(attrs.evolve(billing._context, storage=cast(StoragePort, gate)))
    outcome: list[Any] = []

    async def late_retry() -> None:
        outcome.append(await late._work(late._context, past_due))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(late_retry)
            await gate.reached.wait()
            on_time = JobsService(billing._context)
            assert await on_time._work(billing._context, past_due) == "retry_failed"
            gate.release.set()

    assert outcome == ["skipped"]
    assert (await billing.subscriptions.get(sub.id)).dunning_attempts == 1
