"""What a provider says it cannot do is refused before anything is written, naming the
capability (issue 16: the core never fakes a missing capability)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest

from qzpay import Billing, ConfigurationError, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.contracts.provider import ProviderCapabilities
from qzpay.domain.payments import PaymentMethod, Refund
from qzpay.domain.records import WebhookEvent

pytestmark = pytest.mark.anyio

RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]


class Limited(FakeProvider):
    """The fake, saying it lacks some capabilities."""

    def __init__(self, **missing: bool) -> None:
        super().__init__()
        self._limited = attrs.evolve(FakeProvider._CAPABILITIES, **missing)

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._limited


async def test_each_missing_capability_is_refused_by_name_and_nothing_is_written(
    store_factory: Callable[..., Any], clock: FrozenClock, count_rows: RowCounter
) -> None:
    provider = Limited(payment_methods=False, refunds=False, webhooks=False)
    limited = create_billing(storage=store_factory(), provider=provider, clock=clock)
    async with limited:
        ann = await limited.customers.create(email="ann@example.com")
        with pytest.raises(ConfigurationError) as attach:
            await limited.payment_methods.attach(ann.id, token="pm_card_visa")
        with pytest.raises(ConfigurationError) as refund:
            await limited.payments.refund(ann.id)
        body = b'{"id": "evt_1", "type": "payment.succeeded", "data": {}}'
        with pytest.raises(ConfigurationError) as webhook:
            await limited.webhooks.handle("fake", provider.sign_webhook(body, clock.now()), body)

        assert [error.value.rule for error in (attach, refund, webhook)] == [
            "capability:payment_methods",
            "capability:refunds",
            "capability:webhooks",
        ]
        assert "payment_methods=False" in str(attach.value)
        for kind in (PaymentMethod, Refund, WebhookEvent):
            assert await count_rows(limited, kind) == 0
        assert provider.payment_methods == {}
