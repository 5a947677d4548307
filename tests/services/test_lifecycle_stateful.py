"""A hypothesis state machine: random lifecycle calls, card changes and clock travel.

After every step the books must hold: every status is one the transition table can reach
and a canceled subscription never moves again, an invoice has one undecided attempt at most, renewal periods are contiguous, every paid
invoice is paid by exactly its payments, no invoice is charged twice, invoice numbers are
gapless. The model is small on purpose: which subscriptions exist, which ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qzpay import Billing, QZPayError, Scope, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryStorage
from qzpay.domain.enums import InvoiceStatus, PaymentStatus, SubscriptionStatus
from qzpay.domain.invoices import Invoice, InvoicePayment
from qzpay.domain.payments import Payment
from qzpay.domain.subscriptions import Subscription

T = TypeVar("T")
TEST = Scope(livemode=False)
ENDED = {SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED}


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.clock = FrozenClock(datetime(2029, 1, 31, 9, tzinfo=UTC))
        self.fake = FakeProvider(namespace="")
        self.billing: Billing = create_billing(
            storage=MemoryStorage(), provider=self.fake, clock=self.clock
        )
        self.call(self.billing.open)
        self.customer = self.call(lambda: self.billing.customers.create(email="a@example.com"))
        self.call(lambda: self._card("pm_card_visa"))
        plan = self.call(lambda: self.billing.plans.create(name="Pro"))
        self.monthly = self.call(
            lambda: self.billing.prices.create(
                plan_id=plan.id, unit_amount=1000, currency="USD", interval="month"
            )
        )
        self.double = self.call(
            lambda: self.billing.prices.create(
                plan_id=plan.id, unit_amount=2000, currency="USD", interval="month"
            )
        )
        self.subs: list[UUID] = []
        self.ended: set[UUID] = set()

    def call(self, work: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await work()

        return self.portal.call(run)

    async def _card(self, token: str) -> None:
        for method in (await self.billing.payment_methods.list(self.customer.id)).items:
            await self.billing.payment_methods.detach(method.id)
        await self.billing.payment_methods.attach(self.customer.id, token=token, set_default=True)

    def teardown(self) -> None:
        self.call(self.billing.close)
        self._portal_cm.__exit__(None, None, None)

    # -- rules -------------------------------------------------------------------------

    @rule(trial=st.sampled_from([None, 7]))
    def subscribe(self, trial: int | None) -> None:
        sub = self.call(
            lambda: self.billing.subscriptions.create(
                customer_id=self.customer.id, price_id=self.monthly.id, trial_days=trial
            )
        )
        self.subs.append(sub.id)

    @rule(token=st.sampled_from(["pm_card_visa", "pm_card_chargeDeclined", "pm_card_processing"]))
    def change_card(self, token: str) -> None:
        self.call(lambda: self._card(token))

    @rule(succeed=st.booleans())
    def provider_decides(self, succeed: bool) -> None:
        """Every charge left processing is decided at the provider (the runner learns it
        when it reconciles)."""
        for charge in self.fake.charges:
            if charge.result.status == "processing":
                self.fake.finish_processing(charge.result.provider_id, succeed=succeed)

    @rule(days=st.integers(min_value=1, max_value=40))
    def travel_and_run(self, days: int) -> None:
        self.clock.advance(timedelta(days=days))
        report = self.call(self.billing.jobs.run_due)
        assert report.errors == 0

    @precondition(lambda self: bool(self.subs))
    @rule(
        index=st.integers(min_value=0),
        action=st.sampled_from(
            ["cancel", "cancel_at_end", "uncancel", "pause", "resume", "upgrade", "downgrade"]
        ),
    )
    def lifecycle_call(self, index: int, action: str) -> None:
        sub_id = self.subs[index % len(self.subs)]
        subs = self.billing.subscriptions
        calls: dict[str, Callable[[], Awaitable[Subscription]]] = {
            "cancel": lambda: subs.cancel(sub_id),
            "cancel_at_end": lambda: subs.cancel(sub_id, at_period_end=True),
            "uncancel": lambda: subs.uncancel(sub_id),
            "pause": lambda: subs.pause(sub_id),
            "resume": lambda: subs.resume(sub_id),
            "upgrade": lambda: subs.change_price(sub_id, price_id=self.double.id),
            "downgrade": lambda: subs.change_price(
                sub_id, price_id=self.monthly.id, proration="always_invoice"
            ),
        }
        before = self.call(lambda: subs.get(sub_id))
        try:
            after = self.call(calls[action])
        except QZPayError:
            # Refused (an illegal move): nothing written.
            assert self.call(lambda: subs.get(sub_id)) == before
            return
        if action == "cancel":
            assert after.status == SubscriptionStatus.CANCELED

    # -- invariants --------------------------------------------------------------------

    def _rows(
        self,
    ) -> tuple[list[Subscription], list[Invoice], list[Payment], list[InvoicePayment]]:
        async def read() -> Any:
            async with self.billing.storage.transaction(TEST, readonly=True) as tx:
                found = []
                for kind in (Subscription, Invoice, Payment, InvoicePayment):
                    found.append(await _pages(tx, kind))
                return tuple(found)

        return self.call(read)  # type: ignore[no-any-return]

    @invariant()
    def the_books_hold(self) -> None:
        subs, invoices, payments, links = self._rows()
        for sub in subs:
            assert sub.status in SubscriptionStatus
            if sub.id in self.ended:
                assert sub.status in ENDED  # an ended subscription never moves again
            if sub.status in ENDED:
                self.ended.add(sub.id)
            assert sub.current_period_start < sub.current_period_end
        # Renewal invoices of one subscription: contiguous periods, never two for one.
        by_sub: dict[UUID | None, list[Invoice]] = {}
        for invoice in invoices:
            if invoice.status != InvoiceStatus.DRAFT and invoice.period_start is not None:
                by_sub.setdefault(invoice.subscription_id, []).append(invoice)
        for items in by_sub.values():
            # A resume at the instant of a pause restarts the same period, credited in full:
            # that invoice bills nothing, so only invoices that bill something count.
            starts = Counter((i.period_start, i.period_end) for i in items if i.total > 0)
            assert max(starts.values(), default=1) == 1
        # Every paid invoice is paid by exactly its payments; none charged twice.
        succeeded = Counter(
            p.invoice_id
            for p in payments
            if p.invoice_id is not None
            and p.status in (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)
        )
        applied = Counter[UUID]()
        for link in links:
            applied[link.invoice_id] += link.amount_applied
        undecided = Counter(
            p.invoice_id
            for p in payments
            if p.invoice_id is not None
            and p.status in (PaymentStatus.PENDING, PaymentStatus.PROCESSING)
        )
        for invoice in invoices:
            assert succeeded[invoice.id] <= 1
            assert undecided[invoice.id] <= 1  # one attempt in flight at a time
            if invoice.status == InvoiceStatus.PAID and invoice.total > 0:
                assert succeeded[invoice.id] == 1
                assert applied[invoice.id] == invoice.amount_paid == invoice.total
        numbers = sorted(int(i.number[4:]) for i in invoices if i.number)
        assert numbers == list(range(1, len(numbers) + 1))
        keys = [c.request.idempotency_key for c in self.fake.charges]
        assert len(keys) == len(set(keys))


async def _pages(tx: Any, kind: type[Any]) -> list[Any]:
    found: list[Any] = []
    cursor = None
    while True:
        page = await tx.list(kind, limit=100, cursor=cursor)
        found.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return found


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    max_examples=60,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
