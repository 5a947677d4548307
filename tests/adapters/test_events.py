"""InProcessEventBus: ordered delivery, sync and async handlers, failures logged not raised."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest

from qzpay.adapters.events import InProcessEventBus
from qzpay.contracts.events import Event, EventBus
from qzpay.errors import ValidationError


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_event(event_type: str = "payment.succeeded") -> Event:
    return Event(
        id=uuid.uuid4(),
        type=event_type,
        data={"amount": 9900},
        livemode=False,
        tenant_id=None,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_the_bus_satisfies_the_event_bus_port() -> None:
    bus: EventBus = InProcessEventBus()
    assert isinstance(bus, EventBus)


@pytest.mark.anyio
async def test_publishing_with_no_subscribers_does_nothing() -> None:
    await InProcessEventBus().publish(make_event())


@pytest.mark.anyio
async def test_handlers_run_in_subscription_order_across_exact_and_wildcard() -> None:
    bus = InProcessEventBus()
    calls: list[str] = []
    bus.subscribe("*", lambda event: calls.append("star-1"))
    bus.subscribe("payment.succeeded", lambda event: calls.append("exact-1"))
    bus.subscribe("*", lambda event: calls.append("star-2"))
    bus.subscribe("payment.succeeded", lambda event: calls.append("exact-2"))

    await bus.publish(make_event("payment.succeeded"))

    assert calls == ["star-1", "exact-1", "star-2", "exact-2"]


@pytest.mark.anyio
async def test_exact_subscribers_only_see_their_type_and_wildcards_see_all() -> None:
    bus = InProcessEventBus()
    exact: list[str] = []
    everything: list[str] = []
    bus.subscribe("invoice.paid", lambda event: exact.append(event.type))
    bus.subscribe("*", lambda event: everything.append(event.type))

    await bus.publish(make_event("customer.created"))
    await bus.publish(make_event("invoice.paid"))

    assert exact == ["invoice.paid"]
    assert everything == ["customer.created", "invoice.paid"]


@pytest.mark.anyio
async def test_async_handlers_are_awaited_in_order_with_sync_ones() -> None:
    bus = InProcessEventBus()
    calls: list[str] = []

    async def slow(event: Event) -> None:
        await anyio.sleep(0.01)
        calls.append("async")

    bus.subscribe("payment.succeeded", slow)
    bus.subscribe("payment.succeeded", lambda event: calls.append("sync"))

    await bus.publish(make_event())

    assert calls == ["async", "sync"]


@pytest.mark.anyio
async def test_a_failing_handler_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = InProcessEventBus()
    calls: list[str] = []

    def broken_sync(event: Event) -> None:
        raise RuntimeError("sync boom")

    async def broken_async(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("async boom")

    bus.subscribe("payment.succeeded", broken_sync)
    bus.subscribe("*", broken_async)
    bus.subscribe("payment.succeeded", lambda event: calls.append("after"))
    event = make_event()

    with caplog.at_level(logging.ERROR, logger="qzpay.events"):
        await bus.publish(event)

    assert calls == ["after"]
    records = [r for r in caplog.records if r.name == "qzpay.events"]
    assert len(records) == 2
    first, second = (r.getMessage() for r in records)
    assert "broken_sync" in first
    assert "payment.succeeded" in first
    assert str(event.id) in first
    assert "broken_async" in second
    assert all(r.exc_info is not None for r in records)
    # The event's data may hold personal data: it stays out of the log line.
    assert "9900" not in first


@pytest.mark.anyio
async def test_cancellation_is_not_swallowed() -> None:
    bus = InProcessEventBus()
    calls: list[str] = []

    async def waits_forever(event: Event) -> None:
        await anyio.sleep(math.inf)

    bus.subscribe("payment.succeeded", waits_forever)
    bus.subscribe("payment.succeeded", lambda event: calls.append("after"))

    with anyio.move_on_after(0.01) as scope:
        await bus.publish(make_event())

    assert scope.cancelled_caught
    assert calls == []


@pytest.mark.anyio
async def test_subscribing_while_publishing_takes_effect_from_the_next_event() -> None:
    bus = InProcessEventBus()
    calls: list[str] = []

    def subscribes_another(event: Event) -> None:
        calls.append("first")
        bus.subscribe("*", lambda event: calls.append("late"))

    bus.subscribe("payment.succeeded", subscribes_another)

    await bus.publish(make_event())
    assert calls == ["first"]

    calls.clear()
    await bus.publish(make_event("customer.created"))
    assert calls == ["late"]


@pytest.mark.anyio
async def test_a_handler_subscribed_twice_is_called_twice() -> None:
    bus = InProcessEventBus()
    calls: list[str] = []

    def handler(event: Event) -> None:
        calls.append(event.type)

    bus.subscribe("payment.succeeded", handler)
    bus.subscribe("payment.succeeded", handler)
    await bus.publish(make_event())

    assert calls == ["payment.succeeded", "payment.succeeded"]


def test_an_empty_event_type_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        InProcessEventBus().subscribe("", lambda event: None)
    assert raised.value.field == "event_type"
