"""qzpay.asgi.webhook_app through a real ASGI server (uvicorn) and HTTP client (httpx): the
answers a provider gets, that none holds internals, and that it answers before applying."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from qzpay import Billing, ProviderError
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.asgi import webhook_app
from qzpay.services import charging, webhooks

pytestmark = pytest.mark.anyio

LOST = ProviderError("read timeout after the request was sent", retryable=True)


@pytest.fixture
async def client(billing: Billing) -> AsyncIterator[httpx.AsyncClient]:
    config = uvicorn.Config(
        webhook_app(billing), host="127.0.0.1", port=0, log_level="critical", lifespan="off"
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 (uvicorn has no event for it)
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/hooks") as opened:
            yield opened
        server.should_exit = True


def _body(event_id: str, event_type: str = "customer.updated", **data: Any) -> bytes:
    return json.dumps({"id": event_id, "type": event_type, "data": data}).encode()


async def test_stored_duplicate_and_refused_deliveries_get_their_answers(
    client: httpx.AsyncClient, fake: FakeProvider, clock: FrozenClock
) -> None:
    body = _body("evt_1")
    signed = {key.upper(): value for key, value in fake.sign_webhook(body, clock.now()).items()}

    stored = await client.post("/fake", content=body, headers=signed)
    again = await client.post("/fake/", content=body, headers=signed)
    forged = await client.post("/fake", content=_body("evt_2"), headers=signed)
    unsigned = await client.post("/fake", content=body)
    not_an_event = await client.post(
        "/fake", content=b"[1]", headers=fake.sign_webhook(b"[1]", clock.now())
    )
    other = await client.post("/stripe", content=body, headers=signed)
    read = await client.get("/fake")
    huge = await client.post("/fake", content=b" " * (webhooks.MAX_BODY + 1), headers=signed)

    assert (stored.status_code, stored.json()) == (200, {"received": True, "status": "received"})
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert (forged.status_code, forged.json()) == (400, {"error": "invalid_signature"})
    assert (unsigned.status_code, unsigned.json()) == (400, {"error": "invalid_signature"})
    assert (not_an_event.status_code, not_an_event.json()) == (400, {"error": "invalid_payload"})
    assert (other.status_code, other.json()) == (404, {"error": "unknown_provider"})
    assert (read.status_code, read.headers["allow"]) == (405, "POST")
    assert huge.status_code == 413


async def test_a_storage_failure_is_a_500_without_internals(
    billing: Billing,
    client: httpx.AsyncClient,
    fake: FakeProvider,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("connection to postgres://admin:hunter2@db failed")

    monkeypatch.setattr(billing.webhooks, "receive", broken)
    body = _body("evt_1")

    failed = await client.post("/fake", content=body, headers=fake.sign_webhook(body, clock.now()))

    assert (failed.status_code, failed.json()) == (500, {"error": "internal"})
    assert "hunter2" not in failed.text


async def test_it_answers_before_applying_and_then_settles_the_payment(
    billing: Billing,
    client: httpx.AsyncClient,
    fake: FakeProvider,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
    fake.fail_next("charge", LOST, after=True)
    for _ in range(charging.PROVIDER_ATTEMPTS - 1):
        fake.fail_next("charge", LOST)
    payment = await billing.payments.process(customer_id=ann.id, amount=500, currency="USD")
    assert payment.status == "pending"

    answered = anyio.Event()
    applied = anyio.Event()
    apply = billing.webhooks.apply

    async def apply_after_the_answer(received: webhooks.WebhookResult) -> Any:
        await answered.wait()  # would hang the request if the answer waited for applying
        try:
            return await apply(received)
        finally:
            applied.set()

    monkeypatch.setattr(billing.webhooks, "apply", apply_after_the_answer)
    body = _body("evt_pay", "payment.succeeded", idempotency_key=payment.idempotency_key)

    with anyio.fail_after(30):
        response = await client.post(
            "/fake", content=body, headers=fake.sign_webhook(body, clock.now())
        )
        answered.set()
        await applied.wait()

    assert response.json() == {"received": True, "status": "received"}
    assert (await billing.payments.get(payment.id)).status == "succeeded"
