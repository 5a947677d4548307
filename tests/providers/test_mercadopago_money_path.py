"""The whole money path once through MercadoPagoProvider, the real SDK and the local fake of
MercadoPago's API, on SQLite: customer → card → subscription with a trial → the trial's end
charged by the job runner → a renewal → a declined renewal → the dunning retry that pays →
a partial refund. What qzpay recorded is checked against what the fake MercadoPago holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from qzpay import Billing, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.mercadopago import MercadoPagoProvider
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.domain.customers import Customer
from qzpay.domain.payments import PaymentMethod
from tests.providers.loopback import LoopbackAPI
from tests.providers.mercadopago_api import ACCESS_TOKEN, LoopbackHttpClient, MercadoPagoAPI

pytestmark = pytest.mark.anyio

START = datetime(2028, 1, 31, 9, tzinfo=UTC)


@pytest.fixture
def mp() -> MercadoPagoAPI:
    return MercadoPagoAPI(currency="BRL")


@pytest.fixture
def api(mp: MercadoPagoAPI) -> Iterator[LoopbackAPI]:
    with LoopbackAPI(mp) as server:
        yield server


@pytest.fixture
def provider(api: LoopbackAPI) -> MercadoPagoProvider:
    return MercadoPagoProvider(
        access_token=ACCESS_TOKEN,
        webhook_secret="mp-webhook-secret-7f3a9c",
        http_client=LoopbackHttpClient(api.url),
        backoff=0.01,
    )


async def _ann_with_a_card(billing: Billing, mp: MercadoPagoAPI) -> tuple[Customer, PaymentMethod]:
    """A customer with a Mastercard that MercadoPago approves, as her default."""
    ann = await billing.customers.create(email="ann@example.com", name="Ann Lee")
    card = await billing.payment_methods.attach(
        ann.id, token=mp.card_token("APRO", brand="master", last4="0604"), set_default=True
    )
    return ann, card


async def test_trial_renewal_decline_dunning_and_refund_through_mercadopago(
    tmp_path: Path, mp: MercadoPagoAPI, api: LoopbackAPI, provider: MercadoPagoProvider
) -> None:
    clock = FrozenClock(START)
    storage = SQLiteStorage(tmp_path / "billing.db")
    async with create_billing(storage=storage, provider=provider, clock=clock) as billing:
        ann, card = await _ann_with_a_card(billing, mp)
        assert (card.provider, card.brand, card.last4) == ("mercadopago", "master", "0604")
        mp_customer, mp_card = card.provider_id.split(":")
        assert mp.customers[mp_customer]["email"] == "ann@example.com"

        plan = await billing.plans.create(name="Pro")
        price = await billing.prices.create(
            plan_id=plan.id, unit_amount=4990, currency="BRL", interval="month"
        )
        sub = await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, trial_days=14
        )
        assert sub.status == "trialing"
        assert mp.payments == {}

        clock.advance(timedelta(days=14))  # the trial ends: its first period is charged
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "active"
        (first,) = (await billing.payments.list(subscription_id=sub.id)).items
        assert (first.status, first.amount, first.provider) == ("succeeded", 4990, "mercadopago")
        assert first.provider_id is not None
        at_mp = mp.payments[first.provider_id]
        assert at_mp.amount == Decimal("49.90")
        assert at_mp.body["external_reference"] == first.idempotency_key

        clock.set(sub.current_period_end)  # a renewal
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "active"
        assert len(mp.payments) == 2

        mp.set_holder(mp_card, "FUND")  # the card starts to decline
        clock.set(sub.current_period_end)
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "past_due"
        declined = (await billing.payments.list(subscription_id=sub.id, status="failed")).items
        assert [(p.failure_code, p.provider_failure_code) for p in declined] == [
            ("insufficient_funds", "cc_rejected_insufficient_amount")
        ]

        mp.set_holder(mp_card, "APRO")  # funds again before the first dunning retry
        clock.advance(timedelta(days=1))
        await billing.jobs.run_due()
        sub = await billing.subscriptions.get(sub.id)
        assert sub.status == "active"
        assert sub.dunning_attempts == 0
        paid = (await billing.payments.list(subscription_id=sub.id, status="succeeded")).items
        assert len(paid) == 3
        assert len(mp.payments) == 4  # trial end, renewal, the decline, the retry

        retry = max(paid, key=lambda p: p.created_at)
        refund = await billing.payments.refund(retry.id, amount=1500)
        assert refund.status == "succeeded"
        refunded = await billing.payments.get(retry.id)
        assert (refunded.status, refunded.refunded_amount) == ("partially_refunded", 1500)
        assert retry.provider_id is not None
        at_mp = mp.payments[retry.provider_id]
        assert at_mp.refunded == Decimal("15.00")
        assert at_mp.body["status"] == "approved"

    payments = [r for r in api.sent("POST", "/v1/payments") if r.path == "/v1/payments"]
    keys = [r.header("X-Idempotency-Key") for r in payments]
    assert len(keys) == len(set(keys)) == 4  # one key per attempt, none reused


async def test_a_renewal_mercadopago_holds_for_review_is_charged_once(
    tmp_path: Path, mp: MercadoPagoAPI, api: LoopbackAPI, provider: MercadoPagoProvider
) -> None:
    """MercadoPago answers ``in_process`` (held for review, decided hours later): the
    subscription stays active, no dunning retry charges the invoice again meanwhile, and
    the approval, when it comes, pays it."""
    clock = FrozenClock(START)
    storage = SQLiteStorage(tmp_path / "billing.db")
    async with create_billing(storage=storage, provider=provider, clock=clock) as billing:
        ann, card = await _ann_with_a_card(billing, mp)
        plan = await billing.plans.create(name="Pro")
        price = await billing.prices.create(
            plan_id=plan.id, unit_amount=4990, currency="BRL", interval="month"
        )
        sub = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)
        mp.set_holder(card.provider_id.split(":")[1], "CONT")  # the next one goes to review
        clock.set(sub.current_period_end)
        await billing.jobs.run_due()
        held = (await billing.payments.list(subscription_id=sub.id, status="processing")).items
        assert len(held) == 1
        assert held[0].provider_id is not None
        assert mp.payments[held[0].provider_id].body["status"] == "in_process"

        for _ in range(3):  # the days dunning would have retried on
            clock.advance(timedelta(days=1))
            await billing.jobs.run_due()
            assert (await billing.subscriptions.get(sub.id)).status == "active"
        assert len(mp.payments) == 2  # the first period, the renewal: nothing more

        mp.settle(held[0].provider_id, "approved", "accredited")
        clock.advance(timedelta(days=1))
        await billing.jobs.run_due()
        renewal = await billing.payments.get(held[0].id)
        assert renewal.status == "succeeded"
        assert renewal.invoice_id is not None
        assert (await billing.invoices.get(renewal.invoice_id)).status == "paid"
    assert len([r for r in api.sent("POST", "/v1/payments") if r.path == "/v1/payments"]) == 2


async def test_a_preapproval_is_authorized_by_the_payer_mirrored_and_canceled(
    tmp_path: Path, mp: MercadoPagoAPI, provider: MercadoPagoProvider
) -> None:
    clock = FrozenClock(START)
    storage = SQLiteStorage(tmp_path / "billing.db")
    async with create_billing(storage=storage, provider=provider, clock=clock) as billing:
        ann = await billing.customers.create(email="ann@example.com", name="Ann Lee")
        plan = await billing.plans.create(name="Pro")
        price = await billing.prices.create(
            plan_id=plan.id,
            unit_amount=4990,
            currency="BRL",
            interval="month",
            provider_price_id="2c9380848f6d3a1f",  # the preapproval plan at MercadoPago
        )

        sub = await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, managed_by="provider"
        )

        assert (sub.status, sub.provider) == ("incomplete", "mercadopago")
        assert sub.provider_id is not None
        assert sub.next_action is not None  # where the payer authorizes it
        assert sub.next_action["url"].endswith(f"preapproval_id={sub.provider_id}")
        assert mp.preapprovals[sub.provider_id]["external_reference"] == (
            f"qzpay-subscription-{sub.id}"
        )

        mp.move_preapproval(sub.provider_id, status="authorized")
        body, query = mp.notification(sub.provider_id)
        headers = provider.sign_webhook(data_id=sub.provider_id, timestamp=clock.now())
        result = await billing.webhooks.handle("mercadopago", headers, body, query=query)

        assert result.status == "processed"
        active = await billing.subscriptions.get(sub.id)
        assert (active.status, active.next_action) == ("active", None)

        ended = await billing.subscriptions.cancel(sub.id)
        assert ended.status == "canceled"
        assert mp.preapprovals[sub.provider_id]["status"] == "cancelled"
        assert mp.payments == {}  # MercadoPago bills it, not qzpay
