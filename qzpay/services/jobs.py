"""Time-driven work: what is due "now" (by the Clock port) gets done by ``run_due``.

Subscriptions carry ``due_at``, when the runner next has work on them. A run claims due
subscriptions in batches through the storage's atomic ``claim`` (a lease: no other runner
gets them meanwhile; the claim does not move the version, so a user's edit during the run
still succeeds), does the work, and writes the outcome with an optimistic-lock update that
moves ``due_at`` on. If a user's edit moved the version meanwhile, the outcome is applied
again to the row as it now is. Charges go intent first (``qzpay.services.charging``): a
pending payment is committed before the provider is called, with a key derived from its
row, and a subscription whose attempt is undecided (pending, or processing at the
provider) is reconciled, never charged again, and looked at again after ``reconcile_after``.
Payments left pending past ``reconcile_after`` are reconciled (``qzpay.services.reconciliation``),
and webhooks stored but not applied (a process died in between) or whose applying failed
are applied again (``qzpay.services.webhooks``).

In multi-tenant mode, ``billing.jobs.run_due()`` on the root billing sweeps every tenant:
the storage's one cross-tenant read (``across_tenants``) says which tenants have due rows,
and each tenant's work then runs in that tenant's own scope.

What is due on a subscription follows its status (``qzpay.domain.schedule`` sets ``due_at``,
``_work`` dispatches): the trial-will-end reminder and the trial's end, the renewal of every
period that ended (``qzpay.services.renewals``: a batch's renewals together, invoiced,
finalized, charged and settled in two transactions), dunning retries on the
``DunningPolicy``, a cancel at the period's end, a resume at ``resumes_at``, an incomplete
subscription's expiry. A run keeps ``LANES`` batches in flight, and a runner whose lease
ran out (another took its rows) finds the work done and leaves it: the work reads its rows
afresh, and a charge takes its subscription's row (a renewal, a trial's end) or its
invoice's (a dunning retry) with its attempt. What a charge comes to is applied where it
settles (``charging``), so a reconciliation or a webhook that learns it later moves the
subscription the same way. An item whose work raises is recorded (audit row, the run's
``job_executions`` row), backed off by ``BACK_OFF`` and never stops the others
(docs/decisions/0015-job-runner-lifecycle.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar
from uuid import UUID

import anyio
import attrs

from qzpay import periods
from qzpay import validation as check
from qzpay.domain import schedule
from qzpay.domain.enums import InvoiceStatus, JobStatus, PaymentStatus, SubscriptionStatus
from qzpay.domain.invoices import Invoice
from qzpay.domain.payments import Payment
from qzpay.domain.promotions import PromoCodeUsage
from qzpay.domain.records import JobExecution, WebhookProcessing
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, InvalidStateError
from qzpay.ids import new_id
from qzpay.services import charging, provider_subscriptions, renewals, webhooks
from qzpay.services.context import ServiceContext, UnitOfWork
from qzpay.services.reconciliation import reconcile
from qzpay.services.side_by_side import at_most
from qzpay.services.subscriptions import resume_now

BATCH = 100
CONCURRENCY = 8
"""Items of a batch worked at once (provider calls and transactions in flight)."""
LANES = 2
"""Batches in flight at once in one run: while one batch's statements run in the database,
the other's rows are built (a runner is as safe as two runners: claims are disjoint)."""
Claimed = TypeVar("Claimed", Subscription, Payment, WebhookProcessing)
Outcome = Literal[
    "trial_charged",
    "trial_free",
    "trial_failed",
    "reminded",
    "renewed",
    "renewal_failed",
    "retried",
    "retry_failed",
    "canceled",
    "resumed",
    "expired",
    "skipped",
    "errored",
    "reconciled",
    "synced",
    "webhook",
]
"""What one due item came to (``skipped``: nothing to do yet, or its outcome is not known
yet; ``errored``: it raised, was recorded and backed off)."""
OUTCOME_ATTEMPTS = 3
"""How often an outcome is re-applied after a concurrent edit moved the row's version."""
BACK_OFF = timedelta(hours=1)
"""How long a subscription whose work raised waits before the runner tries it again."""


@attrs.frozen(kw_only=True)
class JobRunReport:
    """What one ``run_due`` did.

    ``charged`` and ``failed`` count the charges of trial ends, renewals and dunning retries
    that succeeded or failed; ``errors`` the items whose work raised (each recorded in the
    audit log and on the run's ``job_executions`` row, and backed off by ``BACK_OFF``).
    """

    trials_ended: int = 0
    charged: int = 0
    failed: int = 0
    skipped: int = 0
    payments_reconciled: int = 0
    trial_reminders: int = 0
    renewals: int = 0
    dunning_retries: int = 0
    canceled: int = 0
    resumed: int = 0
    expired: int = 0
    errors: int = 0
    webhooks_retried: int = 0
    subscriptions_synced: int = 0
    """Provider-managed subscriptions whose creation never got an answer, asked again."""

    @classmethod
    def of(cls, outcomes: Counter[Outcome]) -> JobRunReport:
        return cls(
            trials_ended=outcomes["trial_charged"]
            + outcomes["trial_free"]
            + outcomes["trial_failed"],
            charged=outcomes["trial_charged"] + outcomes["renewed"] + outcomes["retried"],
            failed=outcomes["trial_failed"] + outcomes["renewal_failed"] + outcomes["retry_failed"],
            skipped=outcomes["skipped"],
            payments_reconciled=outcomes["reconciled"],
            trial_reminders=outcomes["reminded"],
            renewals=outcomes["renewed"] + outcomes["renewal_failed"],
            dunning_retries=outcomes["retried"] + outcomes["retry_failed"],
            canceled=outcomes["canceled"],
            resumed=outcomes["resumed"],
            expired=outcomes["expired"],
            errors=outcomes["errored"],
            webhooks_retried=outcomes["webhook"],
            subscriptions_synced=outcomes["synced"],
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
                due: list[Subscription | Payment | WebhookProcessing] = [
                    *await sweep.due(Subscription, now=now, limit=BATCH),
                    *await sweep.due(Payment, now=now, limit=BATCH),
                    *await sweep.due(WebhookProcessing, now=now, limit=BATCH),
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
        """Everything due in one scope, batch by batch; one ``job_executions`` row when
        there was work (a run that finds nothing writes nothing)."""
        started = context.now()
        run_id = new_id()
        outcomes: Counter[Outcome] = Counter()
        failures: list[str] = []
        status = JobStatus.SUCCEEDED
        left = [limit]  # items this run may still claim (None: no limit), shared by lanes

        def size() -> int:
            return BATCH if left[0] is None else min(BATCH, left[0])

        async def claim(kind: type[Claimed]) -> Sequence[Claimed]:
            if size() <= 0:
                return ()
            claimed = await self._claim(context, run_id, size(), kind=kind)
            if left[0] is not None:
                left[0] -= len(claimed)
            return claimed

        async def lane() -> None:
            while batch := await claim(Subscription):
                await self._work_batch(context, batch, outcomes, failures)

        try:
            async with anyio.create_task_group() as lanes:
                for _ in range(LANES):
                    lanes.start_soon(lane)
            while payments := await claim(Payment):
                for payment in payments:
                    await reconcile(context, payment.id)
                    outcomes["reconciled"] += 1
            while deliveries := await claim(WebhookProcessing):
                for delivery in deliveries:  # stored but not applied yet, or failed: again
                    await webhooks.process(context, delivery)
                    outcomes["webhook"] += 1
        except BaseException as failure:
            status = JobStatus.FAILED
            failures.append(type(failure).__name__)
            raise
        finally:
            if outcomes or failures:
                await self._record_run(context, run_id, started, status, outcomes, failures)
        return outcomes

    async def _work_batch(
        self,
        context: ServiceContext,
        batch: Sequence[Subscription],
        outcomes: Counter[Outcome],
        failures: list[str],
    ) -> None:
        """The batch's renewals together (``renewals.renew_round``: one transaction to open
        them, the provider calls ``CONCURRENCY`` at once, one to settle them), and its other
        items side by side, at most ``CONCURRENCY`` at once: each is its own subscription
        (claimed by this run alone), so their provider calls and transactions overlap
        instead of queueing."""
        renewing = [item for item in batch if renewals.renewable(item, context)]
        others = [item for item in batch if not renewals.renewable(item, context)]

        async def one(subscription: Subscription) -> None:
            done = await self._attempt(context, subscription, failures)
            outcomes.update([done] if isinstance(done, str) else done)

        async with anyio.create_task_group() as group:
            group.start_soon(at_most, CONCURRENCY, others, one)
            if renewing:
                await self._renew(context, renewing, outcomes, failures)

    async def _renew(
        self,
        context: ServiceContext,
        subscriptions: Sequence[Subscription],
        outcomes: Counter[Outcome],
        failures: list[str],
    ) -> None:
        """Every ended period renewed, a round per period (a runner that was down catches up
        to ``renewals.CATCH_UP`` periods); a round that fails as a whole is done again one
        subscription at a time, so one bad subscription is recorded and backed off alone."""
        current = list(subscriptions)
        for _ in range(renewals.CATCH_UP):
            current = [item for item in current if renewals.renewable(item, context)]
            if not current:
                return
            try:
                done = await renewals.renew_round(context, current, concurrency=CONCURRENCY)
            except Exception as error:
                if len(current) == 1:
                    await self._fail(context, current[0], error, failures)
                    outcomes["errored"] += 1
                    return
                done = {}
                for item in current:
                    fresh = await self._reread(context, item.id)
                    if fresh is None:
                        continue
                    try:
                        done |= await renewals.renew_round(context, [fresh], concurrency=1)
                    except Exception as alone:
                        await self._fail(context, fresh, alone, failures)
                        outcomes["errored"] += 1
            following: list[Subscription] = []
            for item in current:
                renewed = done.get(item.id)
                if renewed is None:
                    continue
                if renewed.error is not None:
                    why = f"{item.id}: {renewed.error}"[:300]
                    failures.append(why)
                    await self._back_off(context, renewed.subscription or item, why)
                    outcomes["errored"] += 1
                elif renewed.charged == "nothing":
                    # No card to charge: past due, dunning from now.
                    outcomes[
                        await self._change(
                            context,
                            renewed.subscription or item,
                            SubscriptionStatus.PAST_DUE,
                            "past_due",
                            outcome="renewal_failed",
                            past_due_at=context.now(),
                            dunning_attempts=0,
                        )
                    ] += 1
                elif renewed.charged == "waiting":  # its open invoice's attempt: undecided
                    outcomes[await self._wait(context, renewed.subscription or item)] += 1
                else:
                    outcomes[_RENEWED.get(renewed.charged, "skipped")] += 1
                    if renewed.charged == "charged":
                        following.append(
                            renewed.subscription or await self._reread(context, item.id) or item
                        )
            current = following

    async def _record_run(
        self,
        context: ServiceContext,
        run_id: UUID,
        started: datetime,
        status: JobStatus,
        outcomes: Counter[Outcome],
        failures: list[str],
    ) -> None:
        report = JobRunReport.of(outcomes)
        counts = {name: str(value) for name, value in attrs.asdict(report).items() if value}
        async with context.unit_of_work() as uow:
            await uow.tx.insert(
                JobExecution(
                    id=run_id,
                    livemode=uow.scope.livemode,
                    tenant_id=uow.scope.tenant_id,
                    job_name="run_due",
                    status=status,
                    started_at=started,
                    finished_at=uow.now,
                    items_processed=outcomes.total() - outcomes["skipped"],
                    error="; ".join(failures)[:1000] or None,
                    metadata=counts,
                    created_at=uow.now,
                    updated_at=uow.now,
                )
            )

    async def _attempt(
        self, context: ServiceContext, subscription: Subscription, failures: list[str]
    ) -> Outcome | list[Outcome]:
        """One subscription's due work; a failure is recorded and backed off, never
        stopping the run for the others."""
        try:
            return await self._work(context, subscription)
        except Exception as error:  # qzpay's refusals, and a bug or a broken adapter too
            await self._fail(context, subscription, error, failures)
        return "errored"

    async def _fail(
        self,
        context: ServiceContext,
        subscription: Subscription,
        error: Exception,
        failures: list[str],
    ) -> None:
        """Record what raised for ``subscription`` and back it off."""
        failure = f"{subscription.id}: {type(error).__name__}: {error}"[:300]
        failures.append(failure)
        await self._back_off(context, subscription, failure)

    async def _back_off(
        self, context: ServiceContext, subscription: Subscription, why: str
    ) -> None:
        for _ in range(OUTCOME_ATTEMPTS):
            try:
                async with context.unit_of_work() as uow:
                    current = await uow.tx.get(Subscription, subscription.id)
                    if current is None:
                        return
                    later = await uow.tx.update(
                        attrs.evolve(current, due_at=uow.now + BACK_OFF, updated_at=uow.now)
                    )
                    await uow.record("subscription.job_failed", later, changes={"error": why})
                return
            except ConflictError:
                continue

    async def _work(
        self, context: ServiceContext, subscription: Subscription
    ) -> Outcome | list[Outcome]:
        """What is due on ``subscription`` now, by its status (``qzpay.domain.schedule``)."""
        if subscription.provider is not None:
            # Due only while its creation has no answer (schedule.next_due).
            await provider_subscriptions.sync(context, subscription.id)
            return "synced"
        now = context.now()
        status = subscription.status
        if status == SubscriptionStatus.TRIALING:
            end = subscription.trial_end
            if (
                subscription.trial_reminded_at is None
                and context.settings.trial_will_end_days
                and end is not None
                and now < end
            ):
                return await self._remind(context, subscription)
            return await self._end_trial(context, subscription)
        ending = subscription.cancel_at_period_end and now >= subscription.current_period_end
        if ending and status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
            return await self._end_period(context, subscription)
        if status == SubscriptionStatus.PAST_DUE:
            charged = await renewals.retry(context, subscription)
            if charged == "nothing":
                # Nothing to charge (no invoice, no card): the retry counts as failed, once
                # (a runner whose lease ran out finds the step counted and not due).
                done = await self._apply(
                    context,
                    subscription,
                    lambda uow, current: charging.count_failed_retry(uow, context, current),
                    still=lambda current: schedule.still_due(current, subscription, now),
                )
                return "retry_failed" if done else "skipped"
            if charged == "waiting":
                return await self._wait(context, subscription)
            return _RETRIED.get(charged, "skipped")
        if status == SubscriptionStatus.INCOMPLETE and now >= (
            subscription.created_at + schedule.INCOMPLETE_EXPIRES_AFTER
        ):
            async with context.unit_of_work(readonly=True) as uow:
                first = await charging.undecided_attempt(uow.tx, subscription_id=subscription.id)
            if first is not None:  # its first charge may still pay: asked before it expires
                if (await reconcile(context, first.id)).status in charging.IN_FLIGHT:
                    return await self._wait(context, subscription)
                fresh = await self._reread(context, subscription.id)
                if fresh is None or fresh.status != SubscriptionStatus.INCOMPLETE:
                    return "skipped"  # it paid: started by the settle
                subscription = fresh
            return await self._change(
                context, subscription, SubscriptionStatus.INCOMPLETE_EXPIRED, "incomplete_expired",
                outcome="expired",
            )  # fmt: skip
        if status == SubscriptionStatus.PAUSED and (
            subscription.resumes_at is not None and now >= subscription.resumes_at
        ):
            return await self._resume(context, subscription)
        return await self._reschedule(context, subscription)

    async def _remind(self, context: ServiceContext, subscription: Subscription) -> Outcome:
        async def remind(uow: UnitOfWork, current: Subscription) -> Subscription:
            reminded = attrs.evolve(current, trial_reminded_at=uow.now, updated_at=uow.now)
            updated = await uow.tx.update(schedule.scheduled(reminded, context.settings))
            await uow.record(
                "subscription.trial_will_end",
                updated,
                changes={"trial_end": str(current.trial_end)},
            )
            return updated

        done = await self._apply(context, subscription, remind, still=_to_remind)
        return "reminded" if done else "skipped"

    async def _end_period(self, context: ServiceContext, subscription: Subscription) -> Outcome:
        """A cancel scheduled for the period's end: the period ended, so does it (unless
        the cancel was undone since the claim: then it renews)."""
        now = context.now()
        return await self._change(
            context,
            subscription,
            SubscriptionStatus.CANCELED,
            "canceled",
            outcome="canceled",
            still=lambda current: (
                current.cancel_at_period_end and now >= current.current_period_end
            ),
            ended_at=subscription.current_period_end,
            canceled_at=subscription.canceled_at or now,
        )

    async def _resume(self, context: ServiceContext, subscription: Subscription) -> Outcome:
        """A pause that ends at ``resumes_at``: active again with a new period, billed in
        advance as ``subscriptions.resume`` bills it (``resume_now``), then charged."""
        invoices: list[Invoice] = []

        async def resume(uow: UnitOfWork, current: Subscription) -> Subscription:
            resumed, invoice = await resume_now(uow, context, current)
            invoices[:] = [invoice]
            return resumed

        now = context.now()
        done = await self._apply(
            context,
            subscription,
            resume,
            still=lambda current: (
                _paused(current) and current.resumes_at is not None and now >= current.resumes_at
            ),
        )
        if not done:
            return "skipped"
        if invoices and invoices[0].status == InvoiceStatus.OPEN:
            await renewals.charge(context, invoices[0])
        return "resumed"

    async def _change(
        self,
        context: ServiceContext,
        subscription: Subscription,
        target: SubscriptionStatus,
        event: str,
        *,
        outcome: Outcome,
        still: Callable[[Subscription], bool] = lambda current: True,
        **changes: Any,
    ) -> Outcome:
        """Move the subscription to ``target`` while it keeps the status it was claimed in
        and ``still`` holds on the row as it now is."""
        status = subscription.status

        async def move(uow: UnitOfWork, current: Subscription) -> Subscription:
            return await charging.move(uow, context, current, target, event, **changes)

        done = await self._apply(
            context,
            subscription,
            move,
            still=lambda current: current.status == status and still(current),
        )
        return outcome if done else "skipped"

    async def _wait(self, context: ServiceContext, subscription: Subscription) -> Outcome:
        """An attempt the provider has not decided holds the work (``charging.IN_FLIGHT``):
        looked at again after ``reconcile_after``, when reconciliation has asked about it,
        instead of at once (a run claiming it again and again while it lasts). Settling the
        attempt reschedules the subscription as its outcome says."""
        now = context.now()

        async def later(uow: UnitOfWork, current: Subscription) -> Subscription:
            due = uow.now + context.settings.reconcile_after
            return await uow.tx.update(attrs.evolve(current, due_at=due, updated_at=uow.now))

        await self._apply(
            context,
            subscription,
            later,
            still=lambda current: schedule.still_due(current, subscription, now),
        )
        return "skipped"

    async def _reschedule(self, context: ServiceContext, subscription: Subscription) -> Outcome:
        """Claimed but nothing due (a user's change moved it): ``due_at`` set right."""

        async def fix(uow: UnitOfWork, current: Subscription) -> Subscription:
            due = schedule.next_due(current, context.settings)
            if due == current.due_at:
                return current
            return await uow.tx.update(attrs.evolve(current, due_at=due, updated_at=uow.now))

        await self._apply(context, subscription, fix, still=lambda current: True)
        return "skipped"

    async def _apply(
        self,
        context: ServiceContext,
        subscription: Subscription,
        change: Callable[[UnitOfWork, Subscription], Awaitable[Subscription]],
        *,
        still: Callable[[Subscription], bool],
    ) -> bool:
        """Apply ``change`` to the subscription as it is, again after a concurrent edit,
        while ``still`` holds; whether it was applied."""
        current: Subscription | None = subscription
        for _ in range(OUTCOME_ATTEMPTS):
            if current is None or not still(current):
                return False
            try:
                async with context.unit_of_work() as uow:
                    await change(uow, current)
                return True
            except ConflictError:
                current = await self._reread(context, subscription.id)
        return False

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
                kind,
                now=uow.now,
                limit=size,
                claimant=str(run_id),
                lease=context.settings.job_lease,
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
            current = await uow.tx.get(Subscription, subscription.id)
            if current is None or not schedule.still_due(current, subscription, uow.now):
                return "skipped"  # another runner ended it since this one claimed it
            subscription = current
            payable = await charging.chargeable_method(
                uow.tx,
                subscription.customer_id,
                subscription.default_payment_method_id,
                context.provider.name,
            )
            earlier = await charging.undecided_attempt(uow.tx, subscription_id=subscription.id)
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
            try:
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
                    # The attempt takes the row at the version read: of two runners that
                    # both found no attempt (a lease ran out), one charges, the other stops.
                    subscription = await uow.tx.update(
                        attrs.evolve(subscription, updated_at=uow.now)
                    )
            except ConflictError:
                return "skipped"  # changed since it was read: due again, looked at afresh
            result = await charging.call_provider(context, payment, *payable, off_session=True)
            settled = await charging.settle(
                context, payment.id, result, known=payment, subscription=subscription
            )
        if settled.status in charging.IN_FLIGHT:
            return await self._wait(context, subscription)
        return "trial_charged" if settled.status == PaymentStatus.SUCCEEDED else "trial_failed"

    async def _end_unpaid_trial(
        self, context: ServiceContext, subscription: Subscription, *, paid: bool
    ) -> Outcome:
        """A trial that ends with nothing to charge (``free``) or nothing to charge it to
        (``past_due``: dunning counts from now)."""
        start, end = periods.period_bounds(
            subscription.billing_anchor, subscription.interval, subscription.interval_count, 0
        )
        unpaid: dict[str, Any] = (
            {} if paid else {"past_due_at": context.now(), "dunning_attempts": 0}
        )
        return await self._change(
            context,
            subscription,
            SubscriptionStatus.ACTIVE if paid else SubscriptionStatus.PAST_DUE,
            "trial_ended",
            outcome="trial_free" if paid else "trial_failed",
            current_period_start=start,
            current_period_end=end,
            **unpaid,
        )

    async def _reread(self, context: ServiceContext, subscription_id: UUID) -> Subscription | None:
        async with context.unit_of_work(readonly=True) as uow:
            return await uow.tx.get(Subscription, subscription_id)


_RENEWED: dict[str, Outcome] = {"charged": "renewed", "failed": "renewal_failed"}
_RETRIED: dict[str, Outcome] = {"charged": "retried", "failed": "retry_failed"}


def _trialing(subscription: Subscription) -> bool:
    return subscription.status == SubscriptionStatus.TRIALING


def _to_remind(subscription: Subscription) -> bool:
    """Still trialing and not reminded yet: a runner whose lease ran out finds it sent."""
    return _trialing(subscription) and subscription.trial_reminded_at is None


def _paused(subscription: Subscription) -> bool:
    return subscription.status == SubscriptionStatus.PAUSED
