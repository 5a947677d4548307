"""billing.payment_methods: cards attached through the provider, one default per customer."""

from __future__ import annotations

import uuid

import pytest

from qzpay import Billing, Event, NotFoundError, ProviderError
from qzpay.adapters.fake import FakeProvider
from qzpay.domain.customers import Customer

pytestmark = pytest.mark.anyio


async def _ann(billing: Billing) -> Customer:
    return await billing.customers.create(email="ann@example.com", name="Ann")


async def test_attaching_goes_through_the_provider(billing: Billing, fake: FakeProvider) -> None:
    ann = await _ann(billing)

    card = await billing.payment_methods.attach(ann.id, token="pm_card_visa")

    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("visa", "4242", 12, 2034)
    assert card.provider == "fake"
    attached = fake.payment_methods[card.provider_id]
    assert attached.token == "pm_card_visa"
    assert fake.customers[attached.provider_customer_id or ""].email == "ann@example.com"
    assert await billing.payment_methods.get(card.id) == card


async def test_the_first_card_becomes_the_default(billing: Billing) -> None:
    ann = await _ann(billing)

    first = await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    second = await billing.payment_methods.attach(ann.id, token="pm_card_mastercard")

    assert first.is_default is True
    assert second.is_default is False
    assert await billing.payment_methods.get_default(ann.id) == first


async def test_one_provider_customer_serves_every_card(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _ann(billing)

    await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    await billing.payment_methods.attach(ann.id, token="pm_card_amex")

    assert len(fake.customers) == 1


async def test_set_default_moves_the_flag(billing: Billing) -> None:
    ann = await _ann(billing)
    first = await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    second = await billing.payment_methods.attach(ann.id, token="pm_card_mastercard")

    moved = await billing.payment_methods.set_default(second.id)

    assert moved.is_default is True
    assert (await billing.payment_methods.get(first.id)).is_default is False
    assert await billing.payment_methods.get_default(ann.id) == moved
    defaults = [m for m in await billing.payment_methods.list(ann.id) if m.is_default]
    assert [m.id for m in defaults] == [second.id]


async def test_attaching_with_set_default_takes_the_flag(billing: Billing) -> None:
    ann = await _ann(billing)
    first = await billing.payment_methods.attach(ann.id, token="pm_card_visa")

    second = await billing.payment_methods.attach(
        ann.id, token="pm_card_mastercard", set_default=True
    )

    assert second.is_default is True
    assert (await billing.payment_methods.get(first.id)).is_default is False


async def test_detach_removes_the_card_here_and_at_the_provider(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _ann(billing)
    card = await billing.payment_methods.attach(ann.id, token="pm_card_visa")

    detached = await billing.payment_methods.detach(card.id)

    assert detached.deleted_at is not None
    assert detached.is_default is False
    assert fake.payment_methods[card.provider_id].provider_customer_id is None
    assert len(await billing.payment_methods.list(ann.id)) == 0
    assert await billing.payment_methods.get_default(ann.id) is None
    with pytest.raises(NotFoundError) as error:
        await billing.payment_methods.get(card.id)
    assert error.value.field == "payment_method_id"


async def test_an_unknown_token_is_refused_and_no_card_is_stored(billing: Billing) -> None:
    ann = await _ann(billing)

    with pytest.raises(ProviderError) as error:
        await billing.payment_methods.attach(ann.id, token="pm_card_doesNotExist")

    assert error.value.field == "token"
    assert error.value.retryable is False
    assert len(await billing.payment_methods.list(ann.id)) == 0
    assert len(await billing.audit.list(entity_type="payment_method")) == 0


async def test_a_card_that_will_decline_still_attaches(billing: Billing) -> None:
    # As on Stripe, a decline happens when the card is charged, not when it is attached.
    ann = await _ann(billing)

    card = await billing.payment_methods.attach(ann.id, token="pm_card_chargeDeclined")

    assert (card.last4, card.is_default) == ("0002", True)


async def test_attaching_to_an_unknown_customer_is_refused(
    billing: Billing, fake: FakeProvider
) -> None:
    with pytest.raises(NotFoundError) as error:
        await billing.payment_methods.attach(uuid.uuid4(), token="pm_card_visa")

    assert error.value.field == "customer_id"
    assert fake.customers == {}
    assert fake.payment_methods == {}


async def test_card_changes_are_audited_and_announced(billing: Billing) -> None:
    ann = await _ann(billing)
    events: list[Event] = []
    billing.on("*", events.append)

    first = await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    second = await billing.payment_methods.attach(ann.id, token="pm_card_mastercard")
    await billing.payment_methods.set_default(second.id)
    await billing.payment_methods.detach(first.id)

    assert [e.type for e in events] == [
        "customer.provider_linked",
        "payment_method.attached",
        "payment_method.attached",
        "payment_method.updated",
        "payment_method.updated",
        "payment_method.detached",
    ]
    first_audit = await billing.audit.list(entity_id=first.id)
    assert [a.action for a in first_audit] == ["detached", "updated", "attached"]
