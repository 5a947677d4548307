"""Inbound provider webhooks: verified, stored once, routed to their tenant, applied.

``billing.webhooks.handle(provider, headers, body, query=None)`` does, in order:

1. **Verify.** The provider checks the signature, and its timestamp against the clock
   port's now (``PaymentProvider.verify_webhook``), and maps the event to a neutral type
   (``qzpay.contracts.provider.WEBHOOK_KINDS``). Nothing is stored for a bad signature.
2. **Route.** In multi-tenant mode the root billing finds the tenant that owns what the
   event is about (a payment or refund by qzpay's key or the provider's id, a customer by
   its provider reference) through the storage's cross-tenant ``owners`` read. An event no
   tenant owns is acknowledged and not stored (there is no tenant to store it in).
3. **Store once.** The event goes into ``webhook_events`` (append-only) with
   ``insert_or_get`` on ``(provider, provider_event_id)``, together with its
   ``webhook_processing`` row, in one transaction: a second delivery finds the first and
   is acknowledged as a ``duplicate``, never applied twice.
4. **Apply.** A payment or refund event is applied the way ``payments.reconcile`` settles
   a payment: qzpay asks the provider for the charge (and its pending refunds) as it stands
   now and settles from that. The event's own claim is never trusted, so an old
   ``payment.failed`` delivered after a ``payment.succeeded`` cannot move a payment back:
   it is recorded, and the payment stays as the provider has it.
5. **Record.** The processing row ends ``processed``, ``ignored`` (nothing of qzpay's to
   apply) or ``failed`` with the error, due again on ``RETRY_AFTER``'s schedule for the job
   runner (``billing.jobs.run_due``) to retry, at most ``MAX_ATTEMPTS`` tries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

import attrs

from qzpay.contracts.provider import ProviderEvent
from qzpay.domain.customers import CustomerProviderRef
from qzpay.domain.enums import WebhookEventStatus
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.records import WebhookEvent, WebhookProcessing
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ConflictError, ValidationError
from qzpay.ids import new_id
from qzpay.services import charging, provider_subscriptions, refunds
from qzpay.services.context import ServiceContext, require
from qzpay.services.reconciliation import reconcile

HandledStatus = Literal["received", "processed", "ignored", "failed", "duplicate"]

RECEIVED_GRACE = timedelta(minutes=2)
"""When a stored event not yet applied becomes due for the job runner: the delivery that
stored it is normally done long before (a process that died in between is not)."""
RETRY_AFTER = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=6),
    timedelta(hours=24),
)
"""How long after a failed try the next one is due; the last delay repeats."""
MAX_ATTEMPTS = 8
"""Tries before a failing event is left ``failed`` for good (visible, never due again)."""
MAX_BODY = 1_000_000
"""The largest body accepted, in bytes (Stripe's events are far below it)."""


@attrs.frozen(kw_only=True)
class WebhookResult:
    """What one delivery came to.

    ``status``: ``processed`` (applied), ``ignored`` (stored, nothing of qzpay's to apply,
    or owned by no tenant: then not stored, ``event_id`` ``None``), ``failed`` (stored;
    applying raised: ``error``, and the job runner retries), ``duplicate`` (stored by an
    earlier delivery: acknowledged, not applied again), or ``received`` (stored, not
    applied yet: ``receive``'s answer). Every one of them is a delivery the provider should
    stop retrying (answer it 2xx).
    """

    status: HandledStatus
    provider: str
    provider_event_id: str
    type: str
    event_id: UUID | None = None
    tenant_id: str | None = None
    error: str | None = None


class WebhooksService:
    """``billing.webhooks``.

    >>> import anyio, json
    >>> from datetime import UTC, datetime
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.clock import FrozenClock
    >>> from qzpay.adapters.fake import FakeProvider
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> async def main() -> tuple[str, str]:
    ...     now = datetime(2030, 1, 1, tzinfo=UTC)
    ...     fake = FakeProvider()
    ...     billing = create_billing(storage=MemoryStorage(), provider=fake,
    ...                              clock=FrozenClock(now))
    ...     body = json.dumps({"id": "evt_1", "type": "customer.updated", "data": {}}).encode()
    ...     async with billing:
    ...         first = await billing.webhooks.handle("fake", fake.sign_webhook(body, now), body)
    ...         again = await billing.webhooks.handle("fake", fake.sign_webhook(body, now), body)
    ...     return first.status, again.status
    >>> anyio.run(main)
    ('ignored', 'duplicate')
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def handle(
        self,
        provider: str,
        headers: Mapping[str, str],
        body: bytes,
        query: Mapping[str, str] | None = None,
    ) -> WebhookResult:
        """Verify, store once, route and apply one delivery (see the module docstring).

        Raises ``SignatureError`` for a delivery the provider did not sign (or signed too
        long ago or ahead of the clock), ``ValidationError`` for a provider this billing
        does not use or a body that is not an event; nothing is stored then.
        """
        received, stored, processing = await self._receive(provider, headers, body, query)
        if stored is None or processing is None:
            return received
        scoped = attrs.evolve(self._context, tenant_id=received.tenant_id)
        done = await process(scoped, processing, stored)
        return attrs.evolve(received, status=_handled(done.status), error=done.error)

    async def receive(
        self,
        provider: str,
        headers: Mapping[str, str],
        body: bytes,
        query: Mapping[str, str] | None = None,
    ) -> WebhookResult:
        """Verify, route and store one delivery, without applying it yet: status
        ``received`` (then ``apply`` it), ``duplicate``, or ``ignored`` (no tenant owns it).

        For an endpoint that must answer fast (MercadoPago retries after 22 s): answer
        once this returns, then ``apply``; an event never applied (the process died) is
        applied by the job runner. Raises as ``handle`` does.
        """
        received, _, _ = await self._receive(provider, headers, body, query)
        return received

    async def _receive(
        self,
        provider: str,
        headers: Mapping[str, str],
        body: bytes,
        query: Mapping[str, str] | None,
    ) -> tuple[WebhookResult, WebhookEvent | None, WebhookProcessing | None]:
        """``receive``'s result, with the rows it stored (``None``: it stored none), so
        ``handle`` applies the event without reading them back."""
        context = self._context
        event = self._verify(provider, headers, body, query)
        tenant = context.tenant_id
        if context.multi_tenant and tenant is None:
            tenant = await _owner(context, event)
            if tenant is None:
                return _result("ignored", event), None, None
        stored, processing = await _store(attrs.evolve(context, tenant_id=tenant), event, body)
        status: HandledStatus = "duplicate" if processing is None else "received"
        return _result(status, event, stored.id, tenant), stored, processing

    async def apply(self, received: WebhookResult) -> WebhookResult:
        """Apply an event ``receive`` stored; what that came to (``processed``,
        ``ignored`` or ``failed``). An event already applied is returned as it stands."""
        if received.event_id is None:
            raise ValidationError("was not stored (nothing to apply)", field="received")
        scoped = attrs.evolve(self._context, tenant_id=received.tenant_id)
        async with scoped.unit_of_work(readonly=True) as uow:
            rows = await uow.tx.list(
                WebhookProcessing, filters={"webhook_event_id": received.event_id}, limit=1
            )
        if not rows.items:
            raise ValidationError("names no stored webhook", field="received")
        processing = rows.items[0]
        if processing.status == WebhookEventStatus.RECEIVED:
            processing = await process(scoped, processing)
        return attrs.evolve(received, status=_handled(processing.status), error=processing.error)

    def _verify(
        self,
        provider: object,
        headers: object,
        body: object,
        query: object,
    ) -> ProviderEvent:
        context = self._context
        if provider != context.provider.name:
            raise ValidationError(
                f"is not this billing's provider ({context.provider.name!r})",
                field="provider",
                rule="known_provider",
            )
        context.require_capability("webhooks")
        if not isinstance(body, bytes | bytearray):
            raise ValidationError("must be the raw request body (bytes)", field="body")
        if len(body) > MAX_BODY:
            raise ValidationError(f"is larger than {MAX_BODY} bytes", field="body", rule="size")
        return context.provider.verify_webhook(
            payload=bytes(body),
            headers=_text_mapping(headers, field="headers"),
            now=context.now(),
            query=None if query is None else _text_mapping(query, field="query"),
        )


def _text_mapping(value: object, *, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValidationError("must be a mapping of strings to strings", field=field)
    return dict(value)


def _handled(status: WebhookEventStatus) -> HandledStatus:
    if status == WebhookEventStatus.PROCESSED:
        return "processed"
    return "failed" if status == WebhookEventStatus.FAILED else "ignored"


def _result(
    status: HandledStatus,
    event: ProviderEvent,
    event_id: UUID | None = None,
    tenant: str | None = None,
    error: str | None = None,
) -> WebhookResult:
    return WebhookResult(
        status=status,
        provider=event.provider,
        provider_event_id=event.provider_event_id,
        type=event.type,
        event_id=event_id,
        tenant_id=tenant,
        error=error,
    )


# -- routing --------------------------------------------------------------------------------


def lookups(event_type: str, provider: str, data: Mapping[str, Any]) -> list[Lookup]:
    """The rows an event may be about, most precise first: by the id in qzpay's own key
    (``qzpay-payment-<id>``), then by the provider's id, then the customer's reference."""
    kind = event_type.partition(".")[0]
    found: list[Lookup] = []
    key = _text(data, "idempotency_key")
    if kind == "refund":
        refund_id = charging.id_in_key(key, refunds.REFUND_KEY) if key else None
        if refund_id is not None:
            found.append((Refund, {"id": refund_id, "provider": provider}))
        if provider_id := _text(data, "provider_refund_id"):
            found.append((Refund, {"provider": provider, "provider_id": provider_id}))
    if kind in ("payment", "refund"):
        payment_id = charging.id_in_key(key, charging.PAYMENT_KEY) if key else None
        if payment_id is not None:
            found.append((Payment, {"id": payment_id, "provider": provider}))
        if provider_id := _text(data, "provider_payment_id"):
            found.append((Payment, {"provider": provider, "provider_id": provider_id}))
    if kind == "subscription":
        subscription_id = (
            charging.id_in_key(key, provider_subscriptions.SUBSCRIPTION_KEY) if key else None
        )
        if subscription_id is not None:
            found.append((Subscription, {"id": subscription_id, "provider": provider}))
        if provider_id := _text(data, "provider_subscription_id"):
            found.append((Subscription, {"provider": provider, "provider_id": provider_id}))
    if provider_id := _text(data, "provider_customer_id"):
        found.append(
            (CustomerProviderRef, {"provider": provider, "provider_customer_id": provider_id})
        )
    return found


Lookup = tuple[type[Any], dict[str, object]]


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


async def _owner(context: ServiceContext, event: ProviderEvent) -> str | None:
    """The tenant that holds what the event is about, by the cross-tenant ``owners`` read
    (for a charge known only by the provider's id, by the key the provider says it was
    made with)."""
    tenant = await _owner_by(context, lookups(event.type, event.provider, event.data))
    if tenant is None:
        tenant = await _owner_by(context, await _keyed_lookup(context, event.type, event.data))
    return tenant


async def _owner_by(context: ServiceContext, keys: Sequence[Lookup]) -> str | None:
    if not keys:
        return None
    async with context.storage.across_tenants(livemode=context.livemode) as sweep:
        for kind, key in keys:
            rows: Sequence[Any] = await sweep.owners(kind, **key)
            if rows:
                tenant: str | None = rows[0].tenant_id
                return tenant
    return None


async def _keyed_lookup(
    context: ServiceContext, event_type: str, data: Mapping[str, Any]
) -> list[Lookup]:
    """A payment event names only the provider's charge id, and no payment of qzpay's has
    it: the charge's answer was lost, so qzpay never learned the id (MercadoPago's
    notifications carry nothing else). The provider is asked for the charge and the key it
    was made with, which names the payment."""
    provider_id = _text(data, "provider_payment_id")
    if event_type.partition(".")[0] != "payment" or provider_id is None:
        return []
    found = await context.provider.retrieve_charge(idempotency_key="", provider_id=provider_id)
    if found is None or found.idempotency_key is None:
        return []
    return lookups(event_type, context.provider.name, {"idempotency_key": found.idempotency_key})


# -- storing --------------------------------------------------------------------------------


async def _store(
    context: ServiceContext, event: ProviderEvent, body: bytes
) -> tuple[WebhookEvent, WebhookProcessing | None]:
    """The event and its processing row, stored once; the row ``None`` when an earlier
    delivery stored the event."""
    async with context.unit_of_work() as uow:
        stored, inserted = await uow.tx.insert_or_get(
            WebhookEvent(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                provider=event.provider,
                provider_event_id=event.provider_event_id,
                type=event.type,
                payload={
                    "provider_type": event.provider_type,
                    "occurred_at": None
                    if event.occurred_at is None
                    else event.occurred_at.isoformat(),
                    "data": dict(event.data),
                    "body": _body(body),
                },
                received_at=uow.now,
                created_at=uow.now,
            ),
            on=("provider", "provider_event_id"),
        )
        if not inserted:
            return stored, None
        processing = WebhookProcessing(
            id=new_id(),
            livemode=uow.scope.livemode,
            tenant_id=uow.scope.tenant_id,
            webhook_event_id=stored.id,
            provider=event.provider,
            provider_event_id=event.provider_event_id,
            type=event.type,
            due_at=uow.now + RECEIVED_GRACE,
            created_at=uow.now,
            updated_at=uow.now,
        )
        await uow.tx.insert(processing)
    return stored, processing


def _body(body: bytes) -> Any:
    """The body as received: its JSON where it is JSON, else its text."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- applying -------------------------------------------------------------------------------


async def process(
    context: ServiceContext, processing: WebhookProcessing, stored: WebhookEvent | None = None
) -> WebhookProcessing:
    """Apply one stored event and record how that went (on ``processing``, at its version);
    ``context`` is the event's tenant's, ``stored`` the event when the caller has it (else it
    is read). Raises nothing of the apply: a failure is recorded and the row is due again. A
    concurrent try that recorded first wins (its row is returned)."""
    if stored is None:
        async with context.unit_of_work(readonly=True) as uow:
            stored = await uow.tx.get(WebhookEvent, processing.webhook_event_id)
    error: str | None = None
    status = WebhookEventStatus.IGNORED
    if stored is not None:
        try:
            applied = await apply(context, stored.type, stored.payload.get("data") or {})
        except Exception as failure:  # recorded on the row; the job runner tries again
            error = f"{type(failure).__name__}: {failure}"[:500]
            status = WebhookEventStatus.FAILED
        else:
            status = WebhookEventStatus.PROCESSED if applied else WebhookEventStatus.IGNORED
    return await _record(context, processing, status, error)


async def _record(
    context: ServiceContext,
    processing: WebhookProcessing,
    status: WebhookEventStatus,
    error: str | None,
) -> WebhookProcessing:
    async with context.unit_of_work() as uow:
        attempts = processing.attempts + 1
        due_at = None
        if status == WebhookEventStatus.FAILED and attempts < MAX_ATTEMPTS:
            due_at = uow.now + RETRY_AFTER[min(attempts, len(RETRY_AFTER)) - 1]
        try:
            return await uow.tx.update(
                attrs.evolve(
                    processing,
                    status=status,
                    attempts=attempts,
                    error=error,
                    processed_at=uow.now if status != WebhookEventStatus.FAILED else None,
                    due_at=due_at,
                    updated_at=uow.now,
                )
            )
        except ConflictError:
            pass
    async with context.unit_of_work(readonly=True) as uow:
        current: WebhookProcessing = await require(
            uow.tx, WebhookProcessing, processing.id, field="webhook_processing_id"
        )
    return current


async def apply(context: ServiceContext, event_type: str, data: Mapping[str, Any]) -> bool:
    """Apply a neutral event in ``context``'s scope; whether it concerned a row of qzpay's.

    Payments and refunds are settled from what the provider says now (``reconcile``), and
    provider-managed subscriptions mirrored from it (``subscriptions.sync``), never from
    the event's own claim. Checkouts are stored and acknowledged: qzpay opens checkouts
    but keeps no row of them yet, so none of theirs is here.
    """
    kind = event_type.partition(".")[0]
    if kind == "subscription":
        return await _sync_subscription(context, event_type, data)
    if kind not in ("payment", "refund"):
        return False
    payment = await _payment_of(context, event_type, data)
    if payment is None:
        return False
    await reconcile(context, payment.id)
    return True


async def _payment_of(
    context: ServiceContext, event_type: str, data: Mapping[str, Any]
) -> Payment | None:
    """The payment an event is about (a refund's, for a refund event), if it is qzpay's."""
    found = await _payment_by(context, lookups(event_type, context.provider.name, data))
    if found is None:
        found = await _payment_by(context, await _keyed_lookup(context, event_type, data))
    return found


async def _payment_by(context: ServiceContext, keys: Sequence[Lookup]) -> Payment | None:
    if not keys:
        return None
    async with context.unit_of_work(readonly=True) as uow:
        for kind, key in keys:
            if kind is Refund:
                refunds_found = (await uow.tx.list(Refund, filters=key, limit=1)).items
                if refunds_found:
                    found: Payment | None = await uow.tx.get(Payment, refunds_found[0].payment_id)
                    return found
            elif kind is Payment:
                payments = (await uow.tx.list(Payment, filters=key, limit=1)).items
                if payments:
                    return payments[0]
    return None


async def _sync_subscription(
    context: ServiceContext, event_type: str, data: Mapping[str, Any]
) -> bool:
    """Mirror the provider-managed subscription the event names, if it is qzpay's."""
    found: Subscription | None = None
    async with context.unit_of_work(readonly=True) as uow:
        for kind, key in lookups(event_type, context.provider.name, data):
            if kind is Subscription:
                rows = (await uow.tx.list(Subscription, filters=key, limit=1)).items
                if rows:
                    found = rows[0]
                    break
    if found is None:
        return False
    await provider_subscriptions.sync(
        context, found.id, provider_id=_text(data, "provider_subscription_id")
    )
    return True
