"""billing.webhooks: verified, stored once, routed to their tenant, applied from what the
provider says now, never moving a payment backwards; failures retried by the job runner.

Every test runs on memory, SQLite and PostgreSQL, with the fake provider's signed webhooks.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from qzpay import Billing, ProviderError, SignatureError, ValidationError
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.contracts.storage import Scope
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment
from qzpay.domain.records import AuditLog, WebhookEvent, WebhookProcessing
from qzpay.services import charging, webhooks

pytestmark = pytest.mark.anyio

RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]
MakeBilling = Callable[..., Billing]
LOST = ProviderError("read timeout after the request was sent", retryable=True)


def _event(event_id: str, event_type: str, created: int = 1_800_000_000, **data: str) -> bytes:
    return json.dumps(
        {"id": event_id, "type": event_type, "created": created, "data": data}
    ).encode()


async def _deliver(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, body: bytes
) -> webhooks.WebhookResult:
    return await billing.webhooks.handle("fake", fake.sign_webhook(body, clock.now()), body)


async def _customer(billing: Billing) -> Customer:
    ann = await billing.customers.create(email="ann@example.com")
    await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
    return ann


async def _lost_charge(billing: Billing, fake: FakeProvider) -> Payment:
    """A payment the provider charged whose every answer was lost: pending in qzpay."""
    ann = await _customer(billing)
    fake.fail_next("charge", LOST, after=True)
    for _ in range(charging.PROVIDER_ATTEMPTS - 1):
        fake.fail_next("charge", LOST)
    payment = await billing.payments.process(customer_id=ann.id, amount=9900, currency="USD")
    assert payment.status == "pending"
    return payment


async def _audited(billing: Billing, action: str) -> int:
    page = await billing.audit.list(entity_type="payment", limit=100)
    return sum(1 for row in page.items if row.action == action)


async def test_a_payment_event_settles_a_pending_payment_from_the_provider(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    payment = await _lost_charge(billing, fake)
    charge = fake.charges[0].result.provider_id
    assert payment.idempotency_key is not None

    result = await _deliver(
        billing,
        fake,
        clock,
        _event(
            "evt_1",
            "payment.succeeded",
            provider_payment_id=charge,
            idempotency_key=payment.idempotency_key,
        ),
    )

    assert (result.status, result.provider_event_id, result.type) == (
        "processed",
        "evt_1",
        "payment.succeeded",
    )
    settled = await billing.payments.get(payment.id)
    assert (settled.status, settled.provider_id) == ("succeeded", charge)
    assert len(fake.charges) == 1  # settled from the provider's answer, never charged again


async def test_a_duplicate_delivery_is_acknowledged_and_applied_once(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, count_rows: RowCounter
) -> None:
    payment = await _lost_charge(billing, fake)
    body = _event("evt_dup", "payment.succeeded", idempotency_key=payment.idempotency_key or "")

    first = await _deliver(billing, fake, clock, body)
    again = await _deliver(billing, fake, clock, body)

    assert (first.status, again.status) == ("processed", "duplicate")
    assert first.event_id == again.event_id
    assert await count_rows(billing, WebhookEvent) == 1
    assert await count_rows(billing, WebhookProcessing) == 1
    assert await _audited(billing, "succeeded") == 1


async def test_a_bad_signature_stores_nothing(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, count_rows: RowCounter
) -> None:
    body = _event("evt_bad", "payment.succeeded", provider_payment_id="ch_1")
    headers = fake.sign_webhook(body, clock.now())

    with pytest.raises(SignatureError):
        await billing.webhooks.handle("fake", headers, body.replace(b"ch_1", b"ch_2"))
    with pytest.raises(SignatureError):  # signed too long ago for the clock port's now
        await billing.webhooks.handle(
            "fake", fake.sign_webhook(body, clock.now() - timedelta(hours=1)), body
        )
    with pytest.raises(SignatureError):
        await billing.webhooks.handle("fake", {}, body)

    assert await count_rows(billing, WebhookEvent) == 0


@pytest.mark.parametrize(
    ("provider", "body", "field"),
    [("stripe", b"{}", "provider"), ("fake", "text", "body"), ("fake", b"[]", "payload")],
)
async def test_bad_input_names_the_field_and_stores_nothing(
    billing: Billing,
    fake: FakeProvider,
    clock: FrozenClock,
    count_rows: RowCounter,
    provider: str,
    body: Any,
    field: str,
) -> None:
    signed = body if isinstance(body, bytes) else body.encode()
    with pytest.raises(ValidationError) as refused:
        await billing.webhooks.handle(provider, fake.sign_webhook(signed, clock.now()), body)
    assert refused.value.field == field
    assert await count_rows(billing, WebhookEvent) == 0


async def test_an_event_about_nothing_of_qzpays_is_stored_and_ignored(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, count_rows: RowCounter
) -> None:
    unknown = await _deliver(
        billing, fake, clock, _event("evt_x", "payment.succeeded", provider_payment_id="ch_x")
    )
    other = await _deliver(billing, fake, clock, _event("evt_y", "customer.updated"))

    assert (unknown.status, other.status) == ("ignored", "ignored")
    assert await count_rows(billing, WebhookEvent) == 2


EVENTS = ("payment.processing", "payment.failed", "payment.succeeded")


@pytest.mark.parametrize("order", list(itertools.permutations(EVENTS)), ids="-".join)
async def test_events_in_any_order_never_move_a_payment_backwards(
    billing: Billing, fake: FakeProvider, clock: FrozenClock, order: tuple[str, ...]
) -> None:
    payment = await _lost_charge(billing, fake)
    key = payment.idempotency_key or ""

    statuses = []
    for index, event_type in enumerate(order):
        body = _event(
            f"evt_{index}", event_type, created=1_800_000_000 + index, idempotency_key=key
        )
        result = await _deliver(billing, fake, clock, body)
        assert result.status == "processed"
        statuses.append((await billing.payments.get(payment.id)).status)

    assert statuses == ["succeeded"] * len(order)  # the provider's answer, whatever came first
    assert await _audited(billing, "succeeded") == 1
    assert await _audited(billing, "failed") == 0


async def test_a_failed_apply_is_recorded_and_retried_by_the_job_runner(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    payment = await _lost_charge(billing, fake)
    body = _event("evt_retry", "payment.succeeded", idempotency_key=payment.idempotency_key or "")
    # The first time it is applied, the provider cannot be asked about the charge.
    original = fake.retrieve_charge
    calls = {"n": 0}

    async def flaky(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ProviderError("the provider is down", retryable=True)
        return await original(**kwargs)

    fake.retrieve_charge = flaky  # type: ignore[method-assign]

    failed = await _deliver(billing, fake, clock, body)
    assert failed.status == "failed"
    assert failed.error is not None
    assert "the provider is down" in failed.error
    assert (await billing.payments.get(payment.id)).status == "pending"
    assert (await billing.jobs.run_due()).webhooks_retried == 0  # not due yet

    clock.advance(webhooks.RETRY_AFTER[0])
    report = await billing.jobs.run_due()

    assert report.webhooks_retried == 1
    assert (await billing.payments.get(payment.id)).status == "succeeded"
    assert (await billing.jobs.run_due()).webhooks_retried == 0  # applied: never due again


async def test_an_event_stored_but_never_applied_is_applied_by_the_job_runner(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    payment = await _lost_charge(billing, fake)
    body = _event("evt_died", "payment.succeeded", idempotency_key=payment.idempotency_key or "")

    received = await billing.webhooks.receive("fake", fake.sign_webhook(body, clock.now()), body)
    assert received.status == "received"  # the process dies here, before applying it

    clock.advance(webhooks.RECEIVED_GRACE)
    assert (await billing.jobs.run_due()).webhooks_retried == 1
    assert (await billing.payments.get(payment.id)).status == "succeeded"
    again = await billing.webhooks.apply(received)
    assert again.status == "processed"  # applied once, as it stands


async def test_the_root_billing_routes_an_event_to_the_tenant_that_owns_it(
    make_billing: MakeBilling, fake: FakeProvider, clock: FrozenClock
) -> None:
    async with make_billing(tenancy="multi") as root:
        acme, umbrella = root.for_tenant("acme"), root.for_tenant("umbrella")
        await _customer(umbrella)  # another tenant with a customer too
        payment = await _lost_charge(acme, fake)
        body = _event("evt_t", "payment.succeeded", idempotency_key=payment.idempotency_key or "")

        routed = await _deliver(root, fake, clock, body)
        stray = await _deliver(
            root, fake, clock, _event("evt_s", "payment.succeeded", provider_payment_id="ch_no")
        )

        assert (routed.status, routed.tenant_id) == ("processed", "acme")
        assert (await acme.payments.get(payment.id)).status == "succeeded"
        assert (stray.status, stray.event_id, stray.tenant_id) == ("ignored", None, None)
        for tenant, expected in (("acme", 1), ("umbrella", 0)):
            scope = Scope(livemode=False, tenant_id=tenant)
            async with root.storage.transaction(scope, readonly=True) as tx:
                assert await tx.count(WebhookEvent) == expected


async def test_stored_events_are_append_only(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    result = await _deliver(billing, fake, clock, _event("evt_a", "customer.updated"))
    scope = Scope(livemode=False, tenant_id=None)
    async with billing.storage.transaction(scope, readonly=True) as tx:
        stored = await tx.get(WebhookEvent, result.event_id)  # type: ignore[arg-type]
        rows = await tx.list(AuditLog, limit=5)
    assert stored is not None
    assert stored.payload["body"]["id"] == "evt_a"  # the body as received, kept
    assert stored.payload["provider_type"] == "customer.updated"
    assert rows.items == []  # storing an event changes no billing record


async def test_an_event_naming_only_the_providers_id_finds_a_payment_whose_answer_was_lost(
    make_billing: MakeBilling, fake: FakeProvider, clock: FrozenClock
) -> None:
    # MercadoPago's notifications carry only its own payment id, which qzpay never learned
    # when every answer was lost: the provider is asked which key the charge was made with.
    async with make_billing(tenancy="multi") as root:
        acme = root.for_tenant("acme")
        payment = await _lost_charge(acme, fake)
        charge = fake.charges[0].result.provider_id
        assert (await acme.payments.get(payment.id)).provider_id is None

        routed = await _deliver(
            root, fake, clock, _event("evt_id", "payment.updated", provider_payment_id=charge)
        )

        assert (routed.status, routed.tenant_id) == ("processed", "acme")
        settled = await acme.payments.get(payment.id)
        assert (settled.status, settled.provider_id) == ("succeeded", charge)
