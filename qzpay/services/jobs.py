"""Time-driven work: what is due "now" (by the Clock port) gets done by ``run_due``.

Subscriptions carry ``due_at``, when the runner next has work on them. A run claims due
subscriptions in batches through the storage's atomic ``claim`` (a lease: no other runner
gets them meanwhile; the claim does not move the version, so a user's edit during the run
still succeeds), does the work, and writes the outcome with an optimistic-lock update that
moves ``due_at`` on. If a user's edit moved the version meanwhile, the outcome is applied
again to the row as it now is. Charges go intent first (``qzpay.services.charging``): a
pending payment is committed before the provider is called, with a key derived from its
row, and a subscription whose attempt is still pending is reconciled, never charged again.
Payments left pending past ``reconcile_after`` are reconciled (``qzpay.services.reconciliation``).

In multi-tenant mode, ``billing.jobs.run_due()`` on the root billing sweeps every tenant:
the storage's one cross-tenant read (``across_tenants``) says which tenants have due rows,
and each tenant's work then runs in that tenant's own scope.

The work done today is the end of trials; renewals and dunning join in the lifecycle issue
(docs/decisions/0005-first-period.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal, TypeVar
from uuid import UUID

import attrs

from qzpay import periods
from qzpay import validation as check
from qzpay.domain.enums import JobStatus, PaymentStatus, SubscriptionStatus
from qzpay.domain.payments import Payment
from qzpay.domain.promotions import PromoCodeUsage
from qzpay.domain.records import JobExecution
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError
from qzpay.ids import new_id
from qzpay.services import charging
from qzpay.services.context import ServiceContext
from qzpay.services.reconciliation import reconcile
from qzpay.transitions import transition

BATCH = 100
Claimed = TypeVar("Claimed", Subscription, Payment)
Outcome = Literal["charged", "free", "failed", "skipped", "reconciled"]
"""What one due item came to: a trial paid, free (nothing to charge), unpaid, or left for
later; or a pending payment reconciled."""
LEASE = timedelta(minutes=5)
OUTCOME_ATTEMPTS = 3
"""How often an outcome is re-applied after a concurrent edit moved the row's version."""


@attrs.frozen(kw_only=True)
class JobRunReport:
    """What one ``run_due`` did."""

    trials_ended: int = 0
    charged: int = 0
    failed: int = 0
    skipped: int = 0
    payments_reconciled: int = 0

    @classmethod
    def of(cls, outcomes: Counter[Outcome]) -> JobRunReport:
        return cls(
            trials_ended=outcomes["charged"] + outcomes["free"] + outcomes["failed"],
            charged=outcomes["charged"],
            failed=outcomes["failed"],
            skipped=outcomes["skipped"],
            payments_reconciled=outcomes["reconciled"],
        )


class JobsService:
    """``billing.jobs``: run what is due at the clock's "now".

    >>> import anyio
    >>> from datetime import datetime, timedelta, UTC
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.clock import FrozenClock
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> str:
    ...     clock = FrozenClock(datetime(2028, 1, 1, tzinfo=UTC))
    ...     billing = create_billing(storage=MemoryStorage(), provider=FakeProvider(), clock=clock)
    ...     async with billing:
    ...         ann = await billing.customers.create(email="ann@example.com")
    ...         await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    ...         plan = await billing.plans.create(name="Pro")
    ...         price = await billing.prices.create(
    ...             plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    ...         )
    ...         sub = await billing.subscriptions.create(
    ...             customer_id=ann.id, price_id=price.id, trial_days=14
    ...         )
    ...         clock.advance(timedelta(days=15))
    ...         await billing.jobs.run_due()
    ...         return str((await billing.subscriptions.get(sub.id)).status)
    >>> anyio.run(main)
    'active'
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def run_due(self, *, limit: int | None = None) -> JobRunReport:
        """Do everything due now, at most ``limit`` items (``None``: all); safe to run again
        (what was done is not due any more)."""
        most = None if limit is None else check.integer(limit, field="limit", minimum=1)
        context = self._context
        if context.multi_tenant and context.tenant_id is None:
            return JobRunReport.of(await self._sweep_tenants(most))
        return JobRunReport.of(await self._run_scope(context, most))

    async def _sweep_tenants(self, limit: int | None) -> Counter[Outcome]:
        """Each tenant with due rows, in its own scope, until no tenant has any left."""
        context = self._context
        outcomes: Counter[Outcome] = Counter()
        done: set[str] = set()
        while limit is None or outcomes.total() < limit:
            async with context.storage.across_tenants(livemode=context.livemode) as sweep:
                now = context.now()
                due: list[Subscription | Payment] = [
                    *await sweep.due(Subscription, now=now, limit=BATCH),
                    *await sweep.due(Payment, now=now, limit=BATCH),
                ]
            tenants = sorted({row.tenant_id or "" for row in due} - done)
            if not tenants:
                return outcomes
            for tenant in tenants:
                done.add(tenant)
                left = None if limit is None else limit - outcomes.total()
                if left is not None and left <= 0:
                    break
                outcomes += await self._run_scope(attrs.evolve(context, tenant_id=tenant), left)
        return outcomes

    async def _run_scope(self, context: ServiceContext, limit: int | None) -> Counter[Outcome]:
        started = context.now()
        async with context.unit_of_work() as uow:
            execution = JobExecution(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                job_name="run_due",
                status=JobStatus.RUNNING,
                started_at=started,
                created_at=uow.now,
                updated_at=uow.now,
            )
            await uow.tx.insert(execution)
        outcomes: Counter[Outcome] = Counter()
        status, error = JobStatus.SUCCEEDED, None
        try:
            while limit is None or outcomes.total() < limit:
                size = BATCH if limit is None else min(BATCH, limit - outcomes.total())
                batch = await self._claim(context, execution.id, size, kind=Subscription)
                if not batch:
                    break
                for subscription in batch:
                    outcomes[await self._end_trial(context, subscription)] += 1
            while limit is None or outcomes.total() < limit:
                size = BATCH if limit is None else min(BATCH, limit - outcomes.total())
                payments = await self._claim(context, execution.id, size, kind=Payment)
                if not payments:
                    break
                for payment in payments:
                    await reconcile(context, payment.id)
                    outcomes["reconciled"] += 1
        except BaseException as failure:
            status, error = JobStatus.FAILED, type(failure).__name__
            raise
        finally:
            async with context.unit_of_work() as uow:
                await uow.tx.update(
                    attrs.evolve(
                        execution,
                        status=status,
                        finished_at=uow.now,
                        items_processed=outcomes.total() - outcomes["skipped"],
                        error=error,
                        updated_at=uow.now,
                    )
                )
        return outcomes

    async def _claim(
        self,
        context: ServiceContext,
        run_id: UUID,
        size: int,
        *,
        kind: type[Claimed],
    ) -> Sequence[Claimed]:
        async with context.unit_of_work() as uow:
            return await uow.tx.claim(
                kind, now=uow.now, limit=size, claimant=str(run_id), lease=LEASE
            )

    async def _end_trial(self, context: ServiceContext, subscription: Subscription) -> Outcome:
        """Charge the first paid period, intent first; ``active`` if paid, ``past_due`` if not.

        An attempt left pending by an earlier run (a crash, a lost response) is reconciled,
        never charged again; until it settles the subscription stays trialing and due.
        """
        if subscription.status != SubscriptionStatus.TRIALING:
            raise InvalidStateError(
                f"subscription {subscription.id} is due but {subscription.status.value}: "
                "this version of the job runner only ends trials",
                field="due_at",
                rule="due_work",
            )
        async with context.unit_of_work(readonly=True) as uow:
            payable = await charging.chargeable_method(
                uow.tx,
                subscription.customer_id,
                subscription.default_payment_method_id,
                context.provider.name,
            )
            earlier = await uow.tx.find(
                Payment, subscription_id=subscription.id, status=PaymentStatus.PENDING
            )
            # A promo code redeemed at sign-up comes off the first charge (later periods:
            # the invoices of the lifecycle issue apply its duration).
            usage = (
                None
                if subscription.promo_code_id is None
                else await uow.tx.find(PromoCodeUsage, subscription_id=subscription.id)
            )
        full = subscription.unit_amount * subscription.quantity
        amount = full - min(full, usage.discount_amount) if usage is not None else full
        if earlier is not None:
            settled = await reconcile(context, earlier.id)
        elif amount == 0 or payable is None:
            return await self._end_unpaid_trial(context, subscription, paid=amount == 0)
        else:
            async with context.unit_of_work() as uow:
                payment = charging.pending_payment(
                    uow,
                    context,
                    customer_id=subscription.customer_id,
                    method=payable[0],
                    amount=amount,
                    currency=subscription.currency,
                    subscription_id=subscription.id,
                    description=f"Subscription {subscription.id}, first period after trial",
                )
                await charging.open_attempt(uow, payment)
            result = await charging.call_provider(context, payment, *payable)
            settled = await charging.settle(
                context, payment.id, result, known=payment, subscription=subscription
            )
        if settled.status in (PaymentStatus.PENDING, PaymentStatus.PROCESSING):
            return "skipped"  # left claimed: reconciled and moved on once its outcome is known
        return "charged" if settled.status == PaymentStatus.SUCCEEDED else "failed"

    async def _end_unpaid_trial(
        self, context: ServiceContext, subscription: Subscription, *, paid: bool
    ) -> Outcome:
        """A trial that ends with nothing to charge (``free``) or nothing to charge it to."""
        target = SubscriptionStatus.ACTIVE if paid else SubscriptionStatus.PAST_DUE
        start, end = periods.period_bounds(
            subscription.billing_anchor, subscription.interval, subscription.interval_count, 0
        )
        current: Subscription | None = subscription
        for _ in range(OUTCOME_ATTEMPTS):
            if current is None or current.status != SubscriptionStatus.TRIALING:
                break  # someone else ended or cancelled it meanwhile
            try:
                async with context.unit_of_work() as uow:
                    updated = await uow.tx.update(
                        attrs.evolve(
                            current,
                            status=transition(current.status, target),
                            current_period_start=start,
                            current_period_end=end,
                            due_at=None,  # renewals set it from the lifecycle issue on
                            updated_at=uow.now,
                        )
                    )
                    await uow.record(
                        "subscription.trial_ended",
                        updated,
                        changes={"status": [current.status.value, target.value]},
                    )
            except ConflictError:
                # A user's edit moved the version after the claim: apply to the row as it is.
                current = await self._reread(context, subscription.id)
                continue
            return "free" if paid else "failed"
        return "skipped"

    async def _reread(self, context: ServiceContext, subscription_id: UUID) -> Subscription | None:
        async with context.unit_of_work(readonly=True) as uow:
            return await uow.tx.get(Subscription, subscription_id)
