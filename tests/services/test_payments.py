"""billing.payments: intent first, every outcome, reconciliation, refunds, recorded payments.

Each test runs on memory, SQLite and PostgreSQL. The fake provider's ledger says what was
really charged, so "never twice" is checked against the provider, not against qzpay's rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qzpay import (
    Billing,
    ConflictError,
    Event,
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
from qzpay.adapters.memory import MemoryStorage
from qzpay.conformance import entities
from qzpay.contracts.provider import ChargeResult, RefundResult
from qzpay.domain.customers import Customer
from qzpay.domain.enums import PaymentStatus
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.records import AuditLog
from qzpay.ids import new_id
from qzpay.services import charging

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)
RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]
LOST = ProviderError("read timeout after the request was sent", retryable=True)


async def _customer(billing: Billing, token: str | None = "pm_card_visa") -> Customer:
    ann = await billing.customers.create(email="ann@example.com")
    if token is not None:
        await billing.payment_methods.attach(ann.id, token=token, set_default=True)
    return ann


async def _process(billing: Billing, customer: Customer, **extra: Any) -> Payment:
    return await billing.payments.process(
        customer_id=customer.id, amount=9900, currency="USD", **extra
    )


async def _rows(billing: Billing, count_rows: RowCounter) -> tuple[int, int, int]:
    return (
        await count_rows(billing, Payment),
        await count_rows(billing, Refund),
        await count_rows(billing, AuditLog),
    )


# -- outcomes -------------------------------------------------------------------------


async def test_a_payment_is_committed_pending_before_the_provider_is_called(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    seen: list[Payment] = []
    charge = fake.charge

    async def charge_and_look(request: Any) -> Any:
        # What another connection sees while the provider is being called.
        seen.extend((await billing.payments.list(customer_id=ann.id)).items)
        return await charge(request)

    fake.charge = charge_and_look  # type: ignore[method-assign]
    payment = await _process(billing, ann, description="Order 42", metadata={"order": "42"})

    assert [(p.id, p.status) for p in seen] == [(payment.id, "pending")]
    assert payment.status == "succeeded"
    assert payment.idempotency_key == charging.payment_key(payment.id)
    [ledger] = fake.charges
    assert ledger.request.idempotency_key == payment.idempotency_key
    assert (ledger.request.amount, ledger.request.description) == (9900, "Order 42")
    assert payment.provider_id == ledger.result.provider_id
    assert (payment.due_at, payment.description) == (None, "Order 42")


async def test_success_is_audited_and_announced(billing: Billing) -> None:
    ann = await _customer(billing)
    events: list[Event] = []
    billing.on("*", events.append)

    payment = await _process(billing, ann)

    assert [e.type for e in events] == ["payment.created", "payment.succeeded"]
    assert events[-1].data == payment
    audits = (await billing.audit.list(entity_id=payment.id)).items
    assert sorted(a.action for a in audits) == ["created", "succeeded"]


async def test_a_decline_fails_with_a_neutral_code_and_keeps_the_providers(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token="pm_card_insufficientFunds")

    payment = await _process(billing, ann)

    assert payment.status == "failed"
    assert (payment.failure_code, payment.provider_failure_code) == (
        "insufficient_funds",
        "insufficient_funds",
    )
    assert payment.failure_message
    assert len(fake.charges) == 1
    assert await billing.payments.get(payment.id) == payment


async def test_3d_secure_requires_action_then_confirm_settles_it(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token="pm_card_authenticationRequired")

    payment = await _process(billing, ann)
    assert payment.status == "requires_action"
    assert payment.next_action is not None
    assert payment.next_action["type"] == "redirect_to_url"
    assert payment.next_action["url"].startswith("https://")
    assert payment.next_action["client_secret"]

    # Not finished yet: confirm says so and changes nothing.
    assert (await billing.payments.confirm(payment.id)).status == "requires_action"
    assert payment.provider_id is not None
    fake.complete_authentication(payment.provider_id)
    confirmed = await billing.payments.confirm(payment.id)
    assert (confirmed.status, confirmed.next_action) == ("succeeded", None)
    assert len(fake.charges) == 1

    with pytest.raises(InvalidStateError) as refused:
        await billing.payments.confirm(payment.id)
    assert (refused.value.field, refused.value.rule) == ("payment_id", "requires_action")


async def test_a_failed_authentication_fails_the_payment(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token="pm_card_authenticationRequired")
    payment = await _process(billing, ann)
    assert payment.provider_id is not None
    fake.complete_authentication(payment.provider_id, succeed=False)

    confirmed = await billing.payments.confirm(payment.id)

    assert (confirmed.status, confirmed.failure_code) == ("failed", "authentication_failed")


async def test_a_processing_error_succeeds_on_the_retry_with_the_same_key(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token="pm_card_processingError")

    payment = await _process(billing, ann)

    assert payment.status == "succeeded"
    [ledger] = fake.charges
    assert ledger.request.idempotency_key == payment.idempotency_key


async def test_a_transient_failure_then_success_charges_once(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    fake.fail_next("charge", ProviderError("502 from the gateway", retryable=True))

    payment = await _process(billing, ann)

    assert payment.status == "succeeded"
    assert len(fake.charges) == 1


async def test_a_refused_request_fails_the_payment_without_charging(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    fake.fail_next("charge", ProviderError("the API key was revoked", retryable=False))

    payment = await _process(billing, ann)

    assert (payment.status, payment.failure_code) == ("failed", "provider_rejected")
    assert payment.failure_message is not None
    assert "revoked" in payment.failure_message
    assert fake.charges == []


# -- lost responses and reconciliation ------------------------------------------------


async def test_a_timeout_after_charging_is_reconciled_without_a_second_charge(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    # The charge happens but its response is lost; every retry's response is lost too.
    fake.fail_next("charge", LOST, after=True)
    fake.fail_next("charge", LOST)
    fake.fail_next("charge", LOST)

    payment = await _process(billing, ann)
    assert payment.status == "pending"
    assert len(fake.charges) == 1

    settled = await billing.payments.reconcile(payment.id)

    assert settled.status == "succeeded"
    assert settled.provider_id == fake.charges[0].result.provider_id
    assert (settled.due_at, len(fake.charges)) == (None, 1)
    assert await billing.payments.reconcile(payment.id) == settled  # settled stays settled


async def test_a_charge_the_provider_never_saw_stays_pending_then_is_abandoned(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann = await _customer(billing)
    for _ in range(charging.PROVIDER_ATTEMPTS):
        fake.fail_next("charge", ProviderError("connection refused", retryable=True))

    payment = await _process(billing, ann)
    assert (payment.status, fake.charges) == ("pending", [])

    assert (await billing.payments.reconcile(payment.id)).status == "pending"
    clock.advance(timedelta(hours=24))
    given_up = await billing.payments.reconcile(payment.id)

    assert (given_up.status, given_up.failure_code) == ("failed", "abandoned")
    assert fake.charges == []  # reconciliation never charges


async def test_the_job_runner_reconciles_payments_left_pending(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    ann = await _customer(billing)
    fake.fail_next("charge", LOST, after=True)
    fake.fail_next("charge", LOST)
    fake.fail_next("charge", LOST)
    payment = await _process(billing, ann)
    assert payment.status == "pending"

    assert (await billing.jobs.run_due()).payments_reconciled == 0  # not due yet
    clock.advance(timedelta(minutes=11))
    report = await billing.jobs.run_due()

    assert report.payments_reconciled == 1
    assert (await billing.payments.get(payment.id)).status == "succeeded"
    assert len(fake.charges) == 1
    assert (await billing.jobs.run_due()).payments_reconciled == 0


async def test_a_retry_with_the_same_key_finishes_the_same_attempt(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    for _ in range(charging.PROVIDER_ATTEMPTS):
        fake.fail_next("charge", ProviderError("connection reset", retryable=True))
    first = await _process(billing, ann, idempotency_key="order-42")
    assert first.status == "pending"

    again = await _process(billing, ann, idempotency_key="order-42")

    assert (again.id, again.status) == (first.id, "succeeded")
    assert len(fake.charges) == 1
    assert fake.charges[0].request.idempotency_key == first.idempotency_key
    assert await count_rows(billing, Payment) == 1
    assert await _process(billing, ann, idempotency_key="order-42") == again


async def test_the_same_key_replays_and_other_parameters_are_refused(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    first = await _process(billing, ann, idempotency_key="order-7")

    assert await _process(billing, ann, idempotency_key="order-7") == first
    with pytest.raises(QZPayError) as refused:
        await billing.payments.process(
            customer_id=ann.id, amount=100, currency="USD", idempotency_key="order-7"
        )
    assert refused.value.field == "idempotency_key"
    assert "order-7" in str(refused.value)
    assert len(fake.charges) == 1


async def test_concurrent_calls_with_one_key_charge_once(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    results: list[Payment] = []
    errors: list[QZPayError] = []

    async def call() -> None:
        try:
            results.append(await _process(billing, ann, idempotency_key="signup-1"))
        except QZPayError as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(call)

    assert len(fake.charges) == 1
    assert {p.id for p in results} <= {fake_payment.id for fake_payment in results[:1]}
    assert all(e.field == "idempotency_key" for e in errors)


# -- bad input writes nothing -----------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": 99.5}, "amount"),
        ({"amount": True}, "amount"),
        ({"currency": "US"}, "currency"),
        ({"currency": "XXX"}, "currency"),
        ({"customer_id": "not-an-id"}, "customer_id"),
        ({"payment_method_id": "nope"}, "payment_method_id"),
        ({"description": "x" * 501}, "description"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    billing: Billing,
    fake: FakeProvider,
    count_rows: RowCounter,
    arguments: dict[str, Any],
    field: str,
) -> None:
    ann = await _customer(billing)
    before = await _rows(billing, count_rows)
    call: dict[str, Any] = {"customer_id": ann.id, "amount": 500, "currency": "USD"}

    with pytest.raises(ValidationError) as refused:
        await billing.payments.process(**{**call, **arguments})

    assert refused.value.field == field
    assert await _rows(billing, count_rows) == before
    assert fake.charges == []


async def test_a_customer_without_a_payment_method_is_refused(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    bob = await _customer(billing, token=None)
    before = await _rows(billing, count_rows)

    with pytest.raises(InvalidStateError) as refused:
        await _process(billing, bob)

    assert (refused.value.field, refused.value.rule) == (
        "payment_method_id",
        "payment_method_required",
    )
    assert await _rows(billing, count_rows) == before
    with pytest.raises(NotFoundError):
        await billing.payments.process(
            customer_id=entities.customer(TEST).id, amount=500, currency="USD"
        )


async def test_another_customers_payment_method_is_refused(billing: Billing) -> None:
    ann = await _customer(billing)
    bob = await _customer(billing)
    bobs = await billing.payment_methods.get_default(bob.id)
    assert bobs is not None

    with pytest.raises(ValidationError) as refused:
        await _process(billing, ann, payment_method_id=bobs.id)

    assert (refused.value.field, refused.value.rule) == ("payment_method_id", "owner")


# -- one attempt in flight per invoice --------------------------------------------------


async def test_a_second_attempt_for_an_invoice_waits_for_the_first(billing: Billing) -> None:
    ann = await _customer(billing)
    invoice = entities.invoice(TEST, ann)
    async with billing.storage.transaction(TEST) as tx:
        await tx.insert(invoice)
    context = billing._context

    async with context.unit_of_work() as uow:
        first = charging.pending_payment(
            uow, context, customer_id=ann.id, method=None, amount=900, currency="USD",
            invoice_id=invoice.id,
        )  # fmt: skip
        await charging.open_attempt(uow, first)

    async def second_attempt() -> Payment:
        async with context.unit_of_work() as uow:
            second = charging.pending_payment(
                uow, context, customer_id=ann.id, method=None, amount=900, currency="USD",
                invoice_id=invoice.id,
            )  # fmt: skip
            await charging.open_attempt(uow, second)
        return second

    with pytest.raises(InvalidStateError) as refused:
        await second_attempt()
    assert (refused.value.field, refused.value.rule) == ("invoice_id", "one_attempt_in_flight")

    # Once the first has an outcome, a new attempt (a new row, a new key) may start.
    async with billing.storage.transaction(TEST) as tx:
        await tx.update(attrs.evolve(first, status=PaymentStatus.FAILED))
    assert (await second_attempt()).status == "pending"


# -- recorded payments ------------------------------------------------------------------


async def test_a_payment_made_elsewhere_is_recorded_once(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann = await _customer(billing, token=None)
    events: list[Event] = []
    billing.on("payment.recorded", events.append)
    call: dict[str, Any] = {
        "customer_id": ann.id,
        "amount": 4200,
        "currency": "EUR",
        "provider": "stripe",
        "provider_id": "pi_123",
    }

    first = await billing.payments.record(**call)
    second = await billing.payments.record(**call)

    assert first == second
    assert (first.status, first.provider, first.provider_id) == ("succeeded", "stripe", "pi_123")
    assert await count_rows(billing, Payment) == 1
    assert len(events) == 1
    with pytest.raises(ValidationError) as refused:
        await billing.payments.record(**{**call, "amount": 1})
    assert (refused.value.field, refused.value.rule) == ("provider_id", "recorded_once")
    with pytest.raises(ValidationError) as bad:
        await billing.payments.record(**{**call, "provider_id": "pi_9", "status": "refunded"})
    assert bad.value.field == "status"


# -- refunds ---------------------------------------------------------------------------


async def test_partial_then_full_refunds_move_the_status(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    payment = await _process(billing, ann)
    events: list[Event] = []
    billing.on("*", events.append)

    part = await billing.payments.refund(payment.id, amount=1500, reason="requested")
    assert (part.status, part.amount, part.reason) == ("succeeded", 1500, "requested")
    after_part = await billing.payments.get(payment.id)
    assert (after_part.status, after_part.refunded_amount) == ("partially_refunded", 1500)

    rest = await billing.payments.refund(payment.id)
    assert rest.amount == 8400
    done = await billing.payments.get(payment.id)
    assert (done.status, done.refunded_amount, done.due_at) == ("refunded", 9900, None)
    assert [r.request.amount for r in fake.refunds] == [1500, 8400]
    assert [e.type for e in events] == [
        "refund.created",
        "refund.succeeded",
        "payment.partially_refunded",
        "refund.created",
        "refund.succeeded",
        "payment.refunded",
    ]
    page = await billing.payments.refunds(payment.id)
    assert sorted(r.amount for r in page.items) == [1500, 8400]

    with pytest.raises(InvalidStateError) as refused:
        await billing.payments.refund(payment.id, amount=1)
    assert (refused.value.field, refused.value.rule) == ("payment_id", "refundable_status")


async def test_concurrent_refunds_never_exceed_the_payment(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    payment = await billing.payments.process(customer_id=ann.id, amount=100, currency="USD")
    done: list[Refund] = []
    errors: list[QZPayError] = []

    async def refund() -> None:
        try:
            done.append(await billing.payments.refund(payment.id, amount=10))
        except QZPayError as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(refund)

    assert len(done) == 10
    assert all(r.status == "succeeded" for r in done)
    assert len(errors) == 10
    assert all(isinstance(e, (ValidationError, InvalidStateError)) for e in errors)
    assert all(e.field in ("amount", "payment_id") for e in errors)
    final = await billing.payments.get(payment.id)
    assert (final.refunded_amount, final.status) == (100, "refunded")
    assert sum(r.request.amount for r in fake.refunds) == 100


async def test_a_refund_the_provider_rejects_gives_its_amount_back(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    payment = await _process(billing, ann)
    fake.fail_next("refund", ProviderError("charge is disputed", retryable=False))

    rejected = await billing.payments.refund(payment.id, amount=5000)

    assert (rejected.status, rejected.failure_code) == ("failed", "provider_rejected")
    current = await billing.payments.get(payment.id)
    assert (current.refunded_amount, current.status) == (0, "succeeded")
    assert (await billing.payments.refund(payment.id)).amount == 9900  # all of it again


async def test_a_refund_whose_answer_was_lost_is_reconciled(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    payment = await _process(billing, ann)
    fake.fail_next("refund", LOST, after=True)
    fake.fail_next("refund", LOST)
    fake.fail_next("refund", LOST)

    pending = await billing.payments.refund(payment.id, amount=900)
    assert pending.status == "pending"
    reserved = await billing.payments.get(payment.id)
    assert (reserved.refunded_amount, reserved.status) == (900, "succeeded")
    assert reserved.due_at is not None

    settled = await billing.payments.reconcile(payment.id)

    assert (settled.status, settled.refunded_amount, settled.due_at) == (
        "partially_refunded",
        900,
        None,
    )
    [refund] = (await billing.payments.refunds(payment.id)).items
    assert refund.status == "succeeded"
    assert len(fake.refunds) == 1


class _KeylessRefunds(FakeProvider):
    """Lists a charge's refunds without the keys they were made with, as MercadoPago."""

    async def list_refunds(
        self, *, provider_payment_id: str, currency: str
    ) -> Sequence[RefundResult]:
        listed = await super().list_refunds(
            provider_payment_id=provider_payment_id, currency=currency
        )
        return [attrs.evolve(found, idempotency_key=None) for found in listed]


async def test_a_lost_refund_is_found_among_its_payments_refunds_without_keys(
    store_factory: Any, clock: FrozenClock
) -> None:
    fake = _KeylessRefunds()
    async with create_billing(storage=store_factory(), provider=fake, clock=clock) as billing:
        ann = await _customer(billing)
        payment = await _process(billing, ann)
        known = await billing.payments.refund(payment.id, amount=100)  # its id is known
        fake.fail_next("refund", LOST, after=True)
        for _ in range(2):
            fake.fail_next("refund", LOST)
        lost = await billing.payments.refund(payment.id, amount=900)
        assert (known.status, lost.status, lost.provider_id) == ("succeeded", "pending", None)

        settled = await billing.payments.reconcile(payment.id)

        assert (settled.refunded_amount, settled.due_at) == (1000, None)
        found = await billing.payments.refunds(payment.id)
        assert sorted((r.amount, r.status) for r in found.items) == [
            (100, "succeeded"),
            (900, "succeeded"),
        ]
        assert {r.provider_id for r in found.items} == {r.result.provider_id for r in fake.refunds}


@pytest.mark.parametrize("status", ["pending", "failed"])
async def test_only_a_paid_payment_is_refunded(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter, status: str
) -> None:
    ann = await _customer(billing, token="pm_card_chargeDeclined")
    if status == "pending":
        for _ in range(charging.PROVIDER_ATTEMPTS):
            fake.fail_next("charge", ProviderError("timeout", retryable=True))
    payment = await _process(billing, ann)
    assert payment.status == status
    before = await _rows(billing, count_rows)

    with pytest.raises(InvalidStateError) as refused:
        await billing.payments.refund(payment.id)

    assert (refused.value.field, refused.value.rule) == ("payment_id", "refundable_status")
    assert await _rows(billing, count_rows) == before


async def test_refund_input_is_checked(billing: Billing, count_rows: RowCounter) -> None:
    ann = await _customer(billing)
    payment = await _process(billing, ann)
    before = await _rows(billing, count_rows)

    for arguments, field in (
        ({"amount": 0}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": 9901}, "amount"),
        ({"reason": "x\x00"}, "reason"),
    ):
        with pytest.raises(ValidationError) as refused:
            await billing.payments.refund(payment.id, **arguments)
        assert refused.value.field == field
    with pytest.raises(NotFoundError):
        await billing.payments.refund(entities.customer(TEST).id)
    assert await _rows(billing, count_rows) == before


# -- listing ---------------------------------------------------------------------------


async def test_payments_are_listed_by_customer_and_status(billing: Billing) -> None:
    ann = await _customer(billing)
    bob = await _customer(billing, token="pm_card_chargeDeclined")
    paid = await _process(billing, ann)
    failed = await _process(billing, bob)

    assert [p.id for p in (await billing.payments.list(customer_id=ann.id)).items] == [paid.id]
    assert [p.id for p in (await billing.payments.list(status="failed")).items] == [failed.id]
    with pytest.raises(ValidationError):
        await billing.payments.list(status="lost")


# -- hypothesis: the refunded total ----------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=60), max_size=8))
def test_the_refunded_total_is_the_sum_of_accepted_refunds(amounts: list[int]) -> None:
    async def run() -> None:
        fake = FakeProvider()
        async with _memory_billing(fake) as billing:
            ann = await _customer(billing)
            payment = await billing.payments.process(customer_id=ann.id, amount=100, currency="USD")
            accepted = 0
            for amount in amounts:
                try:
                    await billing.payments.refund(payment.id, amount=amount)
                    accepted += amount
                except ValidationError:
                    assert accepted + amount > 100
                except InvalidStateError:
                    assert accepted == 100
            final = await billing.payments.get(payment.id)
            assert final.refunded_amount == accepted <= 100
            assert sum(r.request.amount for r in fake.refunds) == accepted

    anyio.run(run)


def _memory_billing(fake: FakeProvider) -> Billing:
    return create_billing(storage=MemoryStorage(), provider=fake)


async def test_settling_twice_keeps_the_first_outcome(billing: Billing) -> None:
    ann = await _customer(billing)
    payment = await _process(billing, ann)
    # A late, different answer (a stale webhook, a second settle) changes nothing.
    again = await charging.settle(
        billing._context,
        payment.id,
        ChargeResult(provider_id="x", status="failed", failure_code="card_declined"),
    )
    assert again == payment


async def test_a_refund_is_stored_once_per_provider_refund_id(billing: Billing) -> None:
    """What a webhook carrying an already-known refund will rely on (issue 16)."""
    ann = await _customer(billing)
    payment = await _process(billing, ann)
    refund = await billing.payments.refund(payment.id, amount=100)
    assert refund.provider_id is not None
    copy = attrs.evolve(refund, id=new_id())

    with pytest.raises(ConflictError) as refused:
        async with billing.storage.transaction(TEST) as tx:
            await tx.insert(copy)
    assert "provider" in str(refused.value)
    assert len((await billing.payments.refunds(payment.id)).items) == 1
