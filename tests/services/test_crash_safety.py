"""Crash safety (DESIGN §7), shown by killing real processes, and error paths that write
nothing.

Money moves intent first: the pending row is committed, then the provider is called, then
the row is settled. Here a child process (``crash_child.py``) is killed with SIGKILL in
between, on a SQLite file and on PostgreSQL, with the fake provider keeping its ledger in a
file so the parent sees what the dead process charged. A new process then settles what was
left pending, by ``payments.reconcile``, by the job runner, or by the app retrying its call
with the same idempotency key, and the provider's ledger shows the money moved exactly
once. A process killed before the provider heard of the charge leaves a payment that is
never charged, and is given up after ``abandon_after``.

The second half runs in process on every adapter: each refusal of ``payments.process``,
``payments.refund`` and ``subscriptions.create`` leaves every money table as it was.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import UUID

import anyio
import attrs
import pytest

from qzpay import (
    Billing,
    InvalidStateError,
    NotFoundError,
    ProviderError,
    QZPayError,
    Scope,
    ValidationError,
    create_billing,
)
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.conformance import entities
from qzpay.conformance.factories import isolated_prefix, postgres_url
from qzpay.contracts.storage import StoragePort
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCodeUsage
from qzpay.domain.records import AuditLog, IdempotencyKey
from qzpay.domain.subscriptions import Subscription
from qzpay.services import charging, provider_subscriptions, refunds
from qzpay.settings import DEFAULTS

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)
RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]

CHILD = Path(__file__).with_name("crash_child.py")
CHILD_TIMEOUT = 60
"""Seconds a child may take before the test fails (it normally dies within one)."""
SQL_ADAPTERS = pytest.mark.parametrize(
    "store_factory", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
"""Crashes need a database another process can open: a SQLite file, or PostgreSQL."""
SettleBy = Literal["reconcile", "jobs", "retry"]
SETTLE_BY: tuple[SettleBy, ...] = ("reconcile", "jobs", "retry")
KINDS: tuple[type[Any], ...] = (
    Payment,
    Refund,
    Subscription,
    AuditLog,
    IdempotencyKey,
    PromoCodeUsage,
)
"""Every table a money call may write."""
Refusal = tuple[Callable[[], Awaitable[object]], type[QZPayError], str, str | None]
"""A call to make, the error it must raise, the field and the rule (``None``: any) named."""


class Stores(Protocol):
    """What this file uses of the conftest's ``store_factory``."""

    kind: str
    path: Path
    test_id: str

    def __call__(self, *, table_prefix: str = ..., multi_tenant: bool = ...) -> StoragePort: ...


@attrs.define
class Site:
    """One database, one provider ledger file and one clock, shared by parent and child."""

    stores: Stores
    ledger: Path
    clock: FrozenClock

    def open(self) -> tuple[Billing, FakeProvider]:
        """A new billing, as a new process would open it: the ledger read from the file."""
        provider = FakeProvider(ledger=self.ledger, namespace="")
        billing = create_billing(storage=self.stores(), provider=provider, clock=self.clock)
        return billing, provider

    def where(self) -> dict[str, str]:
        if self.stores.kind == "sqlite":
            return {"storage": "sqlite", "path": str(self.stores.path)}
        prefix = isolated_prefix("billing_", self.stores.test_id)  # the one store_factory made
        return {"storage": "postgres", "url": postgres_url(), "prefix": prefix}

    async def crash(self, flow: str, *, kill: str = "after", **arguments: object) -> None:
        """Run ``flow`` in a child process that is SIGKILLed around the provider call."""
        config = {
            **self.where(),
            "ledger": str(self.ledger),
            "now": self.clock.now().isoformat(),
            "flow": flow,
            "kill": kill,
            **arguments,
        }
        with anyio.fail_after(CHILD_TIMEOUT):
            done = await anyio.run_process(
                [sys.executable, str(CHILD), json.dumps(config, default=str)], check=False
            )
        assert done.returncode == -signal.SIGKILL, (
            f"the child was to die by SIGKILL, it exited {done.returncode}: "
            + done.stderr.decode(errors="replace")[-2000:]
        )


@pytest.fixture
def site(store_factory: Stores, tmp_path: Path, clock: FrozenClock) -> Site:
    return Site(store_factory, tmp_path / "provider.ledger", clock)


async def _customer(billing: Billing, token: str | None = "pm_card_visa", n: int = 0) -> Customer:
    ann = await billing.customers.create(email=f"ann{n}@example.com")
    if token is not None:
        await billing.payment_methods.attach(ann.id, token=token, set_default=True)
    return ann


async def _price(billing: Billing, unit_amount: int = 2900) -> Price:
    plan = await billing.plans.create(name="Pro")
    return await billing.prices.create(
        plan_id=plan.id, unit_amount=unit_amount, currency="USD", interval="month"
    )


async def _settle_by_jobs(billing: Billing, clock: FrozenClock) -> None:
    clock.advance(DEFAULTS.reconcile_after + timedelta(seconds=1))
    report = await billing.jobs.run_due()
    assert report.payments_reconciled == 1


# -- a real process killed between the provider call and the settle -------------------


@SQL_ADAPTERS
@pytest.mark.parametrize("settle_by", SETTLE_BY)
async def test_a_payment_killed_after_the_charge_is_settled_with_one_charge(
    site: Site, settle_by: SettleBy
) -> None:
    billing, _ = site.open()
    async with billing:
        ann = await _customer(billing)

    await site.crash("process", customer_id=ann.id, amount=9900, idempotency_key="order-42")

    billing, provider = site.open()
    async with billing:
        [left] = (await billing.payments.list(customer_id=ann.id)).items
        assert (left.status, left.provider_id) == ("pending", None)
        [charge] = provider.charges  # the dead process did charge
        assert charge.request.idempotency_key == charging.payment_key(left.id)
        assert (charge.request.amount, charge.result.status) == (9900, "succeeded")

        if settle_by == "reconcile":
            settled = await billing.payments.reconcile(left.id)
        elif settle_by == "jobs":
            await _settle_by_jobs(billing, site.clock)
            settled = await billing.payments.get(left.id)
        else:  # the app retries its call after the crash, with the same key
            settled = await billing.payments.process(
                customer_id=ann.id, amount=9900, currency="USD", idempotency_key="order-42"
            )

        assert settled.id == left.id
        assert (settled.status, settled.provider_id) == ("succeeded", charge.result.provider_id)
        assert settled.due_at is None
        assert await billing.payments.reconcile(left.id) == settled  # settled stays settled
        assert len((await billing.payments.list()).items) == 1
        assert len(provider.charges) == 1
    _, after = site.open()
    assert len(after.charges) == 1  # the ledger file itself: exactly one charge


@SQL_ADAPTERS
@pytest.mark.parametrize("settle_by", SETTLE_BY)
async def test_a_subscription_killed_after_its_first_charge_becomes_active_once(
    site: Site, settle_by: SettleBy
) -> None:
    billing, _ = site.open()
    async with billing:
        ann = await _customer(billing)
        price = await _price(billing)

    await site.crash(
        "subscribe", customer_id=ann.id, price_id=price.id, idempotency_key="signup-ann"
    )

    billing, provider = site.open()
    async with billing:
        [sub] = (await billing.subscriptions.list(customer_id=ann.id)).items
        assert sub.status == "incomplete"
        [left] = (await billing.payments.list(subscription_id=sub.id)).items
        assert (left.status, left.amount) == ("pending", 2900)
        [charge] = provider.charges
        assert charge.request.idempotency_key == charging.payment_key(left.id)

        if settle_by == "reconcile":
            paid = await billing.payments.reconcile(left.id)
            assert paid.status == "succeeded"
        elif settle_by == "jobs":
            await _settle_by_jobs(billing, site.clock)
        else:
            again = await billing.subscriptions.create(
                customer_id=ann.id, price_id=price.id, idempotency_key="signup-ann"
            )
            assert (again.id, again.status) == (sub.id, "active")

        assert (await billing.subscriptions.get(sub.id)).status == "active"
        payment = await billing.payments.get(left.id)
        assert (payment.status, payment.provider_id) == ("succeeded", charge.result.provider_id)
        assert len((await billing.subscriptions.list()).items) == 1
        assert len((await billing.payments.list()).items) == 1
    _, after = site.open()
    assert len(after.charges) == 1


@SQL_ADAPTERS
@pytest.mark.parametrize("settle_by", ["sync", "retry", "webhook"])
async def test_a_provider_managed_subscription_killed_after_the_provider_made_it_is_made_once(
    site: Site, settle_by: str
) -> None:
    billing, _ = site.open()
    async with billing:
        ann = await _customer(billing)
        plan = await billing.plans.create(name="Pro")
        price = await billing.prices.create(
            plan_id=plan.id,
            unit_amount=2900,
            currency="USD",
            interval="month",
            provider_price_id="price_pro",
        )

    await site.crash(
        "subscribe_managed", customer_id=ann.id, price_id=price.id, idempotency_key="signup-ann"
    )

    billing, provider = site.open()
    async with billing:
        [sub] = (await billing.subscriptions.list(customer_id=ann.id)).items
        assert (sub.status, sub.provider, sub.provider_id) == ("incomplete", "fake", None)
        [made] = provider.subscriptions.values()  # the dead process did make it
        assert made.request.idempotency_key == provider_subscriptions.subscription_key(sub.id)

        if settle_by == "sync":
            settled = await billing.subscriptions.sync(sub.id)
        elif settle_by == "retry":
            settled = await billing.subscriptions.create(
                customer_id=ann.id,
                price_id=price.id,
                idempotency_key="signup-ann",
                managed_by="provider",
            )
        else:  # the provider's own webhook about it arrives first
            body = json.dumps(
                {
                    "id": "evt_created",
                    "type": "subscription.created",
                    "data": {
                        "provider_subscription_id": made.subscription.provider_id,
                        "idempotency_key": made.request.idempotency_key,
                    },
                }
            ).encode()
            handled = await billing.webhooks.handle(
                "fake", provider.sign_webhook(body, site.clock.now()), body
            )
            assert handled.status == "processed"
            settled = await billing.subscriptions.get(sub.id)

        assert settled.id == sub.id
        assert (settled.status, settled.provider_id) == ("active", made.subscription.provider_id)
        assert settled.due_at is None
        assert len((await billing.subscriptions.list()).items) == 1
        assert len(provider.subscriptions) == 1
        assert provider.charges == []  # the provider bills it, qzpay never charged
    _, after = site.open()
    assert len(after.subscriptions) == 1  # the ledger file itself: exactly one subscription


@SQL_ADAPTERS
async def test_a_renewal_run_killed_after_the_charge_is_finished_by_the_next_run_once(
    site: Site,
) -> None:
    billing, _ = site.open()
    async with billing:
        ann = await _customer(billing)
        price = await _price(billing)
        sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
        assert sub.status == "active"
    site.clock.advance(timedelta(days=31))

    # The runner renews, finalizes the invoice, charges it, and dies before the settle.
    await site.crash("renew", lease_ms=1)

    billing, provider = site.open()
    billing = create_billing(
        storage=site.stores(), provider=provider, clock=site.clock,
        job_lease=timedelta(milliseconds=1),
    )  # fmt: skip
    async with billing:
        assert len(provider.charges) == 2  # the first period, and the dead run's renewal
        [invoice] = (await billing.invoices.list(subscription_id=sub.id)).items
        assert invoice.status == "open"
        await billing.jobs.run_due()  # the attempt is in flight: not charged again
        assert len(provider.charges) == 2
        site.clock.advance(DEFAULTS.reconcile_after + timedelta(seconds=1))
        report = await billing.jobs.run_due()
        assert report.payments_reconciled == 1
        paid = await billing.invoices.get(invoice.id)
        assert (paid.status, paid.amount_paid) == ("paid", 2900)
        renewed = await billing.subscriptions.get(sub.id)
        assert renewed.status == "active"
        assert renewed.current_period_start == sub.current_period_end  # renewed once
        assert len((await billing.invoices.list(subscription_id=sub.id)).items) == 1
    _, after = site.open()
    assert len(after.charges) == 2


@SQL_ADAPTERS
@pytest.mark.parametrize("settle_by", SETTLE_BY)
async def test_a_refund_killed_after_the_provider_refunded_is_settled_once(
    site: Site, settle_by: SettleBy
) -> None:
    billing, _ = site.open()
    async with billing:
        ann = await _customer(billing)
        paid = await billing.payments.process(customer_id=ann.id, amount=9900, currency="USD")
        assert paid.status == "succeeded"

    await site.crash("refund", payment_id=paid.id, amount=1500, idempotency_key="refund-1")

    billing, provider = site.open()
    async with billing:
        [left] = (await billing.payments.refunds(paid.id)).items
        assert (left.status, left.amount, left.provider_id) == ("pending", 1500, None)
        reserved = await billing.payments.get(paid.id)
        assert (reserved.status, reserved.refunded_amount) == ("succeeded", 1500)
        [granted] = provider.refunds
        assert granted.request.idempotency_key == refunds.refund_key(left.id)

        if settle_by == "reconcile":
            await billing.payments.reconcile(paid.id)
        elif settle_by == "jobs":
            await _settle_by_jobs(billing, site.clock)
        else:
            again = await billing.payments.refund(paid.id, amount=1500, idempotency_key="refund-1")
            assert (again.id, again.status) == (left.id, "succeeded")

        [refund] = (await billing.payments.refunds(paid.id)).items
        assert (refund.id, refund.status) == (left.id, "succeeded")
        assert refund.provider_id == granted.result.provider_id
        payment = await billing.payments.get(paid.id)
        assert (payment.status, payment.refunded_amount) == ("partially_refunded", 1500)
        assert payment.due_at is None
        assert len(provider.refunds) == 1
    _, after = site.open()
    assert (len(after.charges), len(after.refunds)) == (1, 1)
    assert after.charges[0].amount_refunded == 1500


@SQL_ADAPTERS
async def test_a_payment_killed_before_the_provider_call_is_never_charged_and_is_abandoned(
    site: Site,
) -> None:
    billing, _ = site.open()
    async with billing:
        ann = await _customer(billing)

    await site.crash("process", kill="before", customer_id=ann.id, amount=9900)

    billing, provider = site.open()
    async with billing:
        [left] = (await billing.payments.list(customer_id=ann.id)).items
        assert left.status == "pending"

        still = await billing.payments.reconcile(left.id)  # the provider never heard of it
        assert still.status == "pending"
        site.clock.advance(DEFAULTS.reconcile_after + timedelta(seconds=1))
        assert (await billing.jobs.run_due()).payments_reconciled == 1
        assert (await billing.payments.get(left.id)).status == "pending"

        site.clock.advance(DEFAULTS.abandon_after)
        given_up = await billing.payments.reconcile(left.id)
        assert (given_up.status, given_up.failure_code) == ("failed", "abandoned")
        assert given_up.due_at is None
        assert provider.charges == []
    _, after = site.open()
    assert after.charges == []


@SQL_ADAPTERS
async def test_a_refund_killed_before_the_provider_call_gives_its_reservation_back(
    site: Site,
) -> None:
    billing, _ = site.open()
    async with billing:
        ann = await _customer(billing)
        paid = await billing.payments.process(customer_id=ann.id, amount=9900, currency="USD")

    await site.crash("refund", kill="before", payment_id=paid.id, amount=1500)

    billing, provider = site.open()
    async with billing:
        [left] = (await billing.payments.refunds(paid.id)).items
        assert left.status == "pending"
        assert (await billing.payments.reconcile(paid.id)).refunded_amount == 1500  # held

        site.clock.advance(DEFAULTS.abandon_after)
        payment = await billing.payments.reconcile(paid.id)
        [refund] = (await billing.payments.refunds(paid.id)).items
        assert (refund.status, refund.failure_code) == ("failed", "abandoned")
        assert (payment.status, payment.refunded_amount, payment.due_at) == ("succeeded", 0, None)
        assert provider.refunds == []
        again = await billing.payments.refund(paid.id)  # the whole amount is refundable again
        assert (again.status, again.amount) == ("succeeded", 9900)
    _, after = site.open()
    assert [r.request.amount for r in after.refunds] == [9900]


# -- every refusal leaves the database as it was ----------------------------------------


async def _counts(billing: Billing, count_rows: RowCounter) -> dict[str, int]:
    return {kind.__name__: await count_rows(billing, kind) for kind in KINDS}


async def _refused(
    billing: Billing,
    count_rows: RowCounter,
    refusal: Refusal,
) -> None:
    """The call raises its error naming its field (and rule), and no table changed."""
    call, error, field, rule = refusal
    before = await _counts(billing, count_rows)
    with pytest.raises(error) as refused:
        await call()
    assert refused.value.field == field, refused.value
    if rule is not None:
        assert refused.value.rule == rule, refused.value
    assert await _counts(billing, count_rows) == before, refused.value


async def test_every_refused_payment_leaves_the_database_as_it_was(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    bob = await _customer(billing, token=None, n=1)
    anns_card = await billing.payment_methods.get_default(ann.id)
    assert anns_card is not None
    gone = await _customer(billing, n=2)
    await billing.customers.delete(gone.id)

    def process(customer: UUID, **extra: Any) -> Awaitable[Payment]:
        # Keyed: a refused call must roll its idempotency key back with everything else.
        arguments: dict[str, Any] = {"amount": 9900, "currency": "USD", "idempotency_key": "k1"}
        return billing.payments.process(customer_id=customer, **{**arguments, **extra})

    refusals: list[Refusal] = [
        (lambda: process(entities.customer(TEST).id), NotFoundError, "customer_id", None),
        (lambda: process(gone.id), NotFoundError, "customer_id", None),
        (
            lambda: process(bob.id),
            InvalidStateError,
            "payment_method_id",
            "payment_method_required",
        ),
        (
            lambda: process(ann.id, payment_method_id=entities.customer(TEST).id),
            NotFoundError,
            "payment_method_id",
            None,
        ),
        (
            lambda: process(bob.id, payment_method_id=anns_card.id),
            ValidationError,
            "payment_method_id",
            "owner",
        ),
        (lambda: process(ann.id, amount=-5), ValidationError, "amount", None),
        (
            lambda: process(ann.id, idempotency_key="x" * 256),
            ValidationError,
            "idempotency_key",
            None,
        ),
    ]
    for refusal in refusals:
        await _refused(billing, count_rows, refusal)
    assert fake.charges == []

    # Nothing of the refused calls was kept: the same key now does the work, once.
    await billing.payment_methods.attach(bob.id, token="pm_card_visa", set_default=True)
    payment = await process(bob.id)
    assert payment.status == "succeeded"
    assert await process(bob.id) == payment
    assert len(fake.charges) == 1


async def test_every_refused_refund_leaves_the_database_as_it_was(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    paid = await billing.payments.process(customer_id=ann.id, amount=9900, currency="USD")
    declined = await _customer(billing, token="pm_card_chargeDeclined", n=1)
    failed = await billing.payments.process(customer_id=declined.id, amount=500, currency="USD")
    secure = await _customer(billing, token="pm_card_authenticationRequired", n=2)
    waiting = await billing.payments.process(customer_id=secure.id, amount=500, currency="USD")
    elsewhere = await billing.payments.record(
        customer_id=ann.id, amount=700, currency="USD", provider="stripe", provider_id="pi_1"
    )
    partly = await billing.payments.process(customer_id=ann.id, amount=1000, currency="USD")
    await billing.payments.refund(partly.id, amount=600)
    whole = await billing.payments.process(customer_id=ann.id, amount=800, currency="USD")
    await billing.payments.refund(whole.id)
    held = await billing.payments.process(customer_id=ann.id, amount=400, currency="USD")
    for _ in range(charging.PROVIDER_ATTEMPTS):  # the refund never reaches the provider
        fake.fail_next("refund", ProviderError("gateway timeout", retryable=True))
    pending = await billing.payments.refund(held.id, amount=300)
    assert (failed.status, waiting.status, pending.status) == (
        "failed",
        "requires_action",
        "pending",
    )
    refunded_before = len(fake.refunds)

    def refund(payment: Payment | UUID, **extra: Any) -> Awaitable[Refund]:
        key = payment.id if isinstance(payment, Payment) else payment
        return billing.payments.refund(key, idempotency_key="r1", **extra)

    refusals: list[Refusal] = [
        (lambda: refund(entities.customer(TEST).id), NotFoundError, "payment_id", None),
        (lambda: refund(failed), InvalidStateError, "payment_id", "refundable_status"),
        (lambda: refund(waiting), InvalidStateError, "payment_id", "refundable_status"),
        (lambda: refund(whole), InvalidStateError, "payment_id", "refundable_status"),
        (lambda: refund(elsewhere), InvalidStateError, "payment_id", "refund_provider"),
        (lambda: refund(partly, amount=401), ValidationError, "amount", "refund_within_payment"),
        (lambda: refund(held, amount=101), ValidationError, "amount", "refund_within_payment"),
        (lambda: refund(paid, amount=0), ValidationError, "amount", None),
        (lambda: refund(paid, reason="x" * 501), ValidationError, "reason", None),
        (lambda: refund(paid, metadata={"k": 1}), ValidationError, "metadata", None),
    ]
    for refusal in refusals:
        await _refused(billing, count_rows, refusal)
    assert len(fake.refunds) == refunded_before

    for payment, refunded in ((partly, 600), (whole, 800), (held, 300), (paid, 0)):
        assert (await billing.payments.get(payment.id)).refunded_amount == refunded
    # What is left of a partly refunded payment is still refundable, with the same key.
    rest = await refund(partly, amount=400)
    assert rest.status == "succeeded"
    assert (await billing.payments.get(partly.id)).status == "refunded"


async def test_every_refused_subscription_leaves_the_database_as_it_was(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    bob = await _customer(billing, token=None, n=1)
    anns_card = await billing.payment_methods.get_default(ann.id)
    assert anns_card is not None
    price = await _price(billing)
    cheap = await _price(billing, unit_amount=500)
    archived = await _price(billing)
    await billing.prices.update(archived.id, active=False)
    await billing.promo_codes.create(
        code="MIN10", amount_off=100, currency="USD", minimum_amount=1000
    )
    await billing.promo_codes.create(
        code="OTHERPLAN", percent_off=Decimal("10"), plan_ids=[cheap.plan_id]
    )
    await billing.promo_codes.create(code="ONCE", percent_off=Decimal("10"), max_redemptions=1)
    await billing.subscriptions.create(customer_id=bob.id, price_id=price.id, promo_code="ONCE")
    off = await billing.promo_codes.create(code="OFF", percent_off=Decimal("10"))
    await billing.promo_codes.deactivate(off.id)
    await billing.promo_codes.create(
        code="SOON", percent_off=Decimal("10"), expires_at=clock.now() + timedelta(hours=1)
    )
    clock.advance(timedelta(hours=2))
    charged_before = len(fake.charges)
    redeemed_before = {
        code: (await billing.promo_codes.get_by_code(code)).times_redeemed
        for code in ("MIN10", "OTHERPLAN", "ONCE", "SOON")
    }

    def create(customer: UUID, price_id: UUID, **extra: Any) -> Awaitable[Subscription]:
        return billing.subscriptions.create(
            customer_id=customer, price_id=price_id, idempotency_key="s1", **extra
        )

    unknown = entities.customer(TEST).id
    refusals: list[Refusal] = [
        (lambda: create(unknown, price.id), NotFoundError, "customer_id", None),
        (lambda: create(ann.id, unknown), NotFoundError, "price_id", None),
        (lambda: create(ann.id, archived.id), InvalidStateError, "price_id", "active_price"),
        (
            lambda: create(ann.id, price.id, payment_method_id=unknown),
            NotFoundError,
            "payment_method_id",
            None,
        ),
        (
            lambda: create(bob.id, price.id, payment_method_id=anns_card.id),
            ValidationError,
            "payment_method_id",
            "owner",
        ),
        (lambda: create(ann.id, price.id, quantity=0), ValidationError, "quantity", None),
        (lambda: create(ann.id, price.id, trial_days=-1), ValidationError, "trial_days", None),
        (lambda: create(ann.id, price.id, metadata={"k": 1}), ValidationError, "metadata", None),
        # A code refused after the subscription row was inserted in the same transaction.
        (
            lambda: create(ann.id, price.id, promo_code="NOPE"),
            ValidationError,
            "promo_code",
            "not_found",
        ),
        (
            lambda: create(ann.id, price.id, promo_code="OFF"),
            InvalidStateError,
            "promo_code",
            "inactive",
        ),
        (
            lambda: create(ann.id, price.id, promo_code="SOON"),
            InvalidStateError,
            "promo_code",
            "expired",
        ),
        (
            lambda: create(ann.id, price.id, promo_code="ONCE"),
            InvalidStateError,
            "promo_code",
            "exhausted",
        ),
        (
            lambda: create(ann.id, price.id, promo_code="OTHERPLAN"),
            ValidationError,
            "promo_code",
            "not_for_plan",
        ),
        (
            lambda: create(ann.id, cheap.id, promo_code="MIN10"),
            ValidationError,
            "promo_code",
            "below_minimum",
        ),
        (
            lambda: create(ann.id, price.id, trial_days=7, promo_code="NOPE"),
            ValidationError,
            "promo_code",
            "not_found",
        ),
    ]
    for refusal in refusals:
        await _refused(billing, count_rows, refusal)
    assert len(fake.charges) == charged_before
    for code, times in redeemed_before.items():
        assert (await billing.promo_codes.get_by_code(code)).times_redeemed == times, code

    # The refused calls kept nothing: the same key now subscribes, once.
    sub = await create(ann.id, price.id, promo_code="MIN10")
    assert sub.status == "active"
    assert await create(ann.id, price.id, promo_code="MIN10") == sub
    assert len(fake.charges) == charged_before + 1
    assert fake.charges[-1].request.amount == 2800
    assert (await billing.promo_codes.get_by_code("MIN10")).times_redeemed == 1
