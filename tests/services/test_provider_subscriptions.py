"""Provider-managed subscriptions: made at the provider intent first, mirrored from its
webhooks (never backwards), canceled through it, and never renewed or charged by qzpay.

Every test runs on memory, SQLite and PostgreSQL, with the fake provider standing in for
Stripe Billing or a MercadoPago preapproval.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from qzpay import (
    Billing,
    ConfigurationError,
    InvalidStateError,
    ProviderError,
    ValidationError,
)
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.contracts.provider import ProviderCapabilities
from qzpay.contracts.storage import Scope
from qzpay.domain.catalog import Price
from qzpay.domain.customers import Customer
from qzpay.domain.subscriptions import Subscription
from qzpay.services import provider_subscriptions
from qzpay.settings import DEFAULTS

pytestmark = pytest.mark.anyio

RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]
MakeBilling = Callable[..., Billing]
LOST = ProviderError("read timeout after the request was sent", retryable=True)


async def _customer(billing: Billing, token: str | None = "pm_card_visa") -> Customer:
    ann = await billing.customers.create(email="ann@example.com")
    if token is not None:
        await billing.payment_methods.attach(ann.id, token=token, set_default=True)
    return ann


async def _price(billing: Billing, provider_price_id: str | None = "price_pro") -> Price:
    plan = await billing.plans.create(name="Pro")
    return await billing.prices.create(
        plan_id=plan.id,
        unit_amount=2900,
        currency="USD",
        interval="month",
        provider_price_id=provider_price_id,
    )


async def _managed(billing: Billing, **arguments: Any) -> Subscription:
    ann = await _customer(billing)
    price = await _price(billing)
    return await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, managed_by="provider", **arguments
    )


async def _lost_create(billing: Billing, provider: FakeProvider) -> Subscription:
    """A managed creation whose answer was lost after the provider made it: the row it
    left ``incomplete``, with no provider id."""
    provider.fail_next("create_subscription", LOST, after=True)
    with pytest.raises(ProviderError):
        await _managed(billing)
    [left] = (await billing.subscriptions.list()).items
    return left


def _event(event_id: str, event_type: str = "subscription.updated", **data: str) -> bytes:
    return json.dumps({"id": event_id, "type": event_type, "data": data}).encode()


async def _deliver(billing: Billing, fake: FakeProvider, clock: FrozenClock, body: bytes) -> str:
    result = await billing.webhooks.handle("fake", fake.sign_webhook(body, clock.now()), body)
    return result.status


# -- creating one ---------------------------------------------------------------------------


async def test_a_managed_subscription_is_made_at_the_provider_and_mirrored(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    events: list[str] = []
    billing.on("*", lambda event: events.append(event.type))

    sub = await _managed(billing, trial_days=14)

    [made] = fake.subscriptions.values()
    assert (sub.status, sub.provider, sub.provider_id) == (
        "trialing",
        "fake",
        made.subscription.provider_id,
    )
    assert sub.trial_end == clock.now() + timedelta(days=14)
    assert sub.due_at is None  # the provider renews it, not qzpay's job runner
    request = made.request
    assert (request.provider_price_id, request.quantity, request.trial_end) == (
        "price_pro",
        1,
        sub.trial_end,
    )
    assert request.idempotency_key == provider_subscriptions.subscription_key(sub.id)
    method = await billing.payment_methods.get_default(sub.customer_id)
    assert method is not None
    assert request.provider_payment_method_id == method.provider_id
    assert events[-2:] == ["subscription.created", "subscription.synced"]
    assert fake.charges == []


async def test_without_a_trial_it_is_as_the_provider_answers_and_qzpay_charges_nothing(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _managed(billing, quantity=3)

    assert (sub.status, sub.quantity) == ("active", 3)
    assert [s.request.quantity for s in fake.subscriptions.values()] == [3]
    clock.advance(timedelta(days=400))
    report = await billing.jobs.run_due()
    assert report.renewals == 0
    assert fake.charges == []  # a year on: still only the provider bills it
    assert (await billing.invoices.list(subscription_id=sub.id)).items == []


async def test_a_price_the_provider_does_not_have_is_refused_and_nothing_is_written(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    local = await _price(billing, provider_price_id=None)

    with pytest.raises(ValidationError) as refused:
        await billing.subscriptions.create(
            customer_id=ann.id, price_id=local.id, managed_by="provider"
        )

    assert (refused.value.field, refused.value.rule) == ("price_id", "provider_price")
    assert await count_rows(billing, Subscription) == 0
    assert fake.subscriptions == {}


@pytest.mark.parametrize(
    ("arguments", "field", "rule"),
    [
        ({"managed_by": "stripe"}, "managed_by", "managed_by"),
        ({"managed_by": "provider", "promo_code": "SAVE20"}, "promo_code", "managed_by_provider"),
    ],
)
async def test_bad_managed_arguments_name_the_field_and_write_nothing(
    billing: Billing,
    fake: FakeProvider,
    count_rows: RowCounter,
    arguments: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)

    with pytest.raises(ValidationError) as refused:
        await billing.subscriptions.create(customer_id=ann.id, price_id=price.id, **arguments)

    assert (refused.value.field, refused.value.rule) == (field, rule)
    assert await count_rows(billing, Subscription) == 0


class _NoSubscriptions(FakeProvider):
    @property
    def capabilities(self) -> ProviderCapabilities:
        return ProviderCapabilities(subscriptions=False, webhooks=True)


async def test_a_provider_without_subscriptions_is_refused_naming_the_capability(
    store_factory: Any, clock: FrozenClock, count_rows: RowCounter
) -> None:
    from qzpay import create_billing

    async with create_billing(
        storage=store_factory(), provider=_NoSubscriptions(), clock=clock
    ) as billing:
        ann = await _customer(billing)
        price = await _price(billing)
        with pytest.raises(ConfigurationError) as refused:
            await billing.subscriptions.create(
                customer_id=ann.id, price_id=price.id, managed_by="provider"
            )
        assert refused.value.rule == "capability:subscriptions"
        assert await count_rows(billing, Subscription) == 0


async def test_a_refused_creation_leaves_it_incomplete_expired_and_a_keyed_retry_says_so(
    billing: Billing, fake: FakeProvider
) -> None:
    fake.fail_next(
        "create_subscription",
        ProviderError("no such price", retryable=False, field="price", rule="exists"),
    )
    ann = await _customer(billing)
    price = await _price(billing)

    with pytest.raises(ProviderError, match="no such price"):
        await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, managed_by="provider", idempotency_key="s"
        )

    [sub] = (await billing.subscriptions.list()).items
    assert (sub.status, sub.provider_id, sub.ended_at is not None) == (
        "incomplete_expired",
        None,
        True,
    )
    again = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, managed_by="provider", idempotency_key="s"
    )
    assert again == sub
    assert await billing.subscriptions.sync(sub.id) == sub  # nothing at the provider to ask
    assert fake.subscriptions == {}


async def test_a_lost_answer_is_finished_by_a_keyed_retry_with_one_subscription_made(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    fake.fail_next("create_subscription", LOST, after=True)

    with pytest.raises(ProviderError):
        await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, managed_by="provider", idempotency_key="s"
        )
    [left] = (await billing.subscriptions.list()).items
    assert (left.status, left.provider_id) == ("incomplete", None)
    assert left.due_at == left.created_at + DEFAULTS.reconcile_after  # the runner's, if no retry

    again = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, managed_by="provider", idempotency_key="s"
    )

    [made] = fake.subscriptions.values()
    assert (again.id, again.status, again.provider_id) == (
        left.id,
        "active",
        made.subscription.provider_id,
    )
    assert len((await billing.subscriptions.list()).items) == 1


async def test_sync_finishes_an_unkeyed_create_whose_answer_was_lost(
    billing: Billing, fake: FakeProvider
) -> None:
    left = await _lost_create(billing, fake)

    synced = await billing.subscriptions.sync(left.id)

    assert synced.status == "active"
    assert len(fake.subscriptions) == 1


async def test_a_lost_create_is_found_by_its_key_after_the_provider_forgot_the_key(
    billing: Billing, fake: FakeProvider
) -> None:
    # Stripe keeps a key 24 hours: a sync a day later that sent the same creation again
    # would make a second subscription, billed beside the first.
    left = await _lost_create(billing, fake)
    fake.forget_keys()

    synced = await billing.subscriptions.sync(left.id)

    [made] = fake.subscriptions.values()
    assert (synced.status, synced.provider_id) == ("active", made.subscription.provider_id)


async def test_a_keyed_retry_after_the_provider_forgot_the_key_makes_no_second_one(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    fake.fail_next("create_subscription", LOST, after=True)
    with pytest.raises(ProviderError):
        await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, managed_by="provider", idempotency_key="s"
        )
    fake.forget_keys()

    again = await billing.subscriptions.create(
        customer_id=ann.id, price_id=price.id, managed_by="provider", idempotency_key="s"
    )

    [made] = fake.subscriptions.values()
    assert (again.status, again.provider_id) == ("active", made.subscription.provider_id)


class _LookupFails(FakeProvider):
    """A provider whose lookup by key fails with ``error`` (a search it does not offer, or
    one that is down)."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__()
        self.error = error

    async def retrieve_subscription(
        self, *, provider_id: str | None = None, idempotency_key: str | None = None
    ) -> Any:
        if not provider_id:
            raise self.error
        return await super().retrieve_subscription(provider_id=provider_id)


@pytest.mark.parametrize("retryable", [False, True])
async def test_a_lookup_by_key_that_fails_never_makes_a_second_subscription(
    store_factory: Any, clock: FrozenClock, retryable: bool
) -> None:
    # Refused for good, the creation is re-sent under its key, as before; a lookup that
    # may pass later leaves the row incomplete for the next try, and sends nothing.
    from qzpay import create_billing

    provider = _LookupFails(ProviderError("search unavailable", retryable=retryable))
    async with create_billing(storage=store_factory(), provider=provider, clock=clock) as billing:
        left = await _lost_create(billing, provider)

        if retryable:
            with pytest.raises(ProviderError, match="search unavailable"):
                await billing.subscriptions.sync(left.id)
            assert (await billing.subscriptions.get(left.id)).status == "incomplete"
        else:
            synced = await billing.subscriptions.sync(left.id)
            assert synced.status == "active"
        assert len(provider.subscriptions) == 1


async def test_the_job_runner_finishes_a_create_whose_answer_was_lost(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    left = await _lost_create(billing, fake)
    assert (await billing.jobs.run_due()).subscriptions_synced == 0  # not due yet

    clock.advance(DEFAULTS.reconcile_after)
    report = await billing.jobs.run_due()

    synced = await billing.subscriptions.get(left.id)
    assert report.subscriptions_synced == 1
    assert (synced.status, synced.due_at) == ("active", None)
    assert len(fake.subscriptions) == 1
    assert (await billing.jobs.run_due()).subscriptions_synced == 0


# -- mirrored from the provider ------------------------------------------------------------


async def test_a_webhook_mirrors_what_the_provider_says_now(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _managed(billing)
    assert sub.provider_id is not None
    events: list[str] = []
    billing.on("*", lambda event: events.append(event.type))
    end = clock.now() + timedelta(days=31)
    fake.update_subscription(sub.provider_id, status="past_due", current_period_end=end)

    status = await _deliver(
        billing, fake, clock, _event("evt_1", provider_subscription_id=sub.provider_id)
    )

    mirrored = await billing.subscriptions.get(sub.id)
    assert status == "processed"
    assert (mirrored.status, mirrored.current_period_end) == ("past_due", end)
    assert mirrored.past_due_at == clock.now()
    assert mirrored.due_at is None  # the provider dunns it
    assert events == ["subscription.past_due"]
    # The same delivery again is a duplicate; the same state again writes nothing.
    again = await _deliver(
        billing, fake, clock, _event("evt_1", provider_subscription_id=sub.provider_id)
    )
    assert again == "duplicate"
    await _deliver(billing, fake, clock, _event("evt_2", provider_subscription_id=sub.provider_id))
    assert (await billing.subscriptions.get(sub.id)).version == mirrored.version
    assert fake.charges == []


async def test_shuffled_late_events_never_move_the_mirror_backwards(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _managed(billing)
    assert sub.provider_id is not None
    # The provider went active -> past_due -> active -> canceled, sending an event for
    # each; they arrive shuffled, after it is canceled.
    types = ["subscription.updated", "subscription.updated", "subscription.deleted"]
    for status in ("past_due", "active", "canceled"):
        fake.update_subscription(sub.provider_id, status=status)
    bodies = [
        _event(f"evt_{n}", kind, provider_subscription_id=sub.provider_id)
        for n, kind in enumerate(types)
    ]
    random.Random(7).shuffle(bodies)

    for body in bodies:
        assert await _deliver(billing, fake, clock, body) == "processed"
        current = await billing.subscriptions.get(sub.id)
        assert current.status == "canceled"  # from the first event on: what it is now
        assert current.ended_at == clock.now()


async def test_an_event_about_a_subscription_qzpay_does_not_have_is_ignored(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    body = _event("evt_x", provider_subscription_id="sub_elsewhere")
    assert await _deliver(billing, fake, clock, body) == "ignored"


async def test_the_root_billing_routes_a_subscription_event_to_its_tenant(
    make_billing: MakeBilling, fake: FakeProvider, clock: FrozenClock
) -> None:
    async with make_billing(tenancy="multi") as root:
        acme = root.for_tenant("acme")
        sub = await _managed(acme)
        assert sub.provider_id is not None
        fake.update_subscription(sub.provider_id, cancel_at_period_end=True)

        body = _event("evt_t", provider_subscription_id=sub.provider_id)
        result = await root.webhooks.handle("fake", fake.sign_webhook(body, clock.now()), body)

        assert (result.status, result.tenant_id) == ("processed", "acme")
        scheduled = await acme.subscriptions.get(sub.id)
        assert (scheduled.cancel_at_period_end, scheduled.canceled_at) == (True, clock.now())
        async with root.storage.transaction(
            Scope(livemode=False, tenant_id="umbrella"), readonly=True
        ) as tx:
            assert await tx.count(Subscription) == 0


# -- what qzpay does and refuses on it ---------------------------------------------------


async def test_cancel_goes_through_the_provider_at_period_end_then_now(
    billing: Billing, fake: FakeProvider, clock: FrozenClock
) -> None:
    sub = await _managed(billing)
    assert sub.provider_id is not None

    later = await billing.subscriptions.cancel(sub.id, at_period_end=True)
    assert (later.status, later.cancel_at_period_end) == ("active", True)
    assert fake.subscriptions[sub.provider_id].subscription.cancel_at_period_end

    clock.advance(timedelta(hours=1))
    now = await billing.subscriptions.cancel(sub.id, idempotency_key="end-it")
    assert (now.status, now.ended_at, now.canceled_at) == ("canceled", clock.now(), clock.now())
    assert fake.subscriptions[sub.provider_id].subscription.status == "canceled"
    assert await billing.subscriptions.cancel(sub.id, idempotency_key="end-it") == now
    with pytest.raises(InvalidStateError):
        await billing.subscriptions.cancel(sub.id)


@pytest.mark.parametrize(
    "move",
    ["pause", "resume", "uncancel", "change_price", "update_quantity", "preview"],
)
async def test_the_moves_the_provider_owns_are_refused_naming_the_rule(
    billing: Billing, fake: FakeProvider, move: str
) -> None:
    sub = await _managed(billing)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "pause": lambda: billing.subscriptions.pause(sub.id),
        "resume": lambda: billing.subscriptions.resume(sub.id),
        "uncancel": lambda: billing.subscriptions.uncancel(sub.id),
        "change_price": lambda: billing.subscriptions.change_price(sub.id, price_id=sub.price_id),
        "update_quantity": lambda: billing.subscriptions.update_quantity(sub.id, 2),
        "preview": lambda: billing.invoices.preview(sub.id),
    }

    with pytest.raises(InvalidStateError) as refused:
        await calls[move]()

    expected = "no_upcoming_invoice" if move == "preview" else "managed_by_provider"
    assert (refused.value.field, refused.value.rule) == ("subscription_id", expected)
    assert await billing.subscriptions.get(sub.id) == sub


async def test_sync_of_a_subscription_qzpay_bills_itself_is_refused(billing: Billing) -> None:
    ann = await _customer(billing)
    price = await _price(billing)
    own = await billing.subscriptions.create(customer_id=ann.id, price_id=price.id)

    with pytest.raises(InvalidStateError) as refused:
        await billing.subscriptions.sync(own.id)

    assert refused.value.rule == "provider_managed"


async def test_a_customer_with_a_live_managed_subscription_is_not_deleted(
    billing: Billing, fake: FakeProvider
) -> None:
    sub = await _managed(billing)

    with pytest.raises(InvalidStateError) as refused:
        await billing.customers.delete(sub.customer_id)

    assert refused.value.rule == "provider_subscriptions_live"
    assert (await billing.customers.get(sub.customer_id)).deleted_at is None
    await billing.subscriptions.cancel(sub.id)
    deleted = await billing.customers.delete(sub.customer_id)
    assert deleted.deleted_at is not None
