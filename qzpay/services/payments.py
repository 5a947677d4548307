"""``billing.payments``: one-off charges, refunds, payments made elsewhere, reconciliation.

Money moves intent first (``qzpay.services.charging``, DESIGN §7): every charge and every
refund is a row committed ``pending`` before the provider hears of it, with the provider's
idempotency key derived from that row, then settled with the provider's answer. When the
answer never comes (a crash, a timeout after charging), the row stays pending and
``reconcile`` (or the job runner, after ``reconcile_after``) asks the provider what became
of it. A retry of a call with the same ``idempotency_key`` returns the first result, or
finishes the same attempt with the same provider key: never a second charge.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

import attrs

from qzpay import money
from qzpay import validation as check
from qzpay.contracts.storage import Page
from qzpay.domain.customers import Customer
from qzpay.domain.enums import PaymentStatus, RefundStatus
from qzpay.domain.payments import Payment, PaymentMethod, Refund
from qzpay.errors import InvalidStateError, ValidationError
from qzpay.ids import new_id
from qzpay.services import charging, idempotency, reconciliation, refunds
from qzpay.services.context import ServiceContext, UnitOfWork, missing, require

MAX_TEXT = 500
RECORDABLE = (PaymentStatus.SUCCEEDED, PaymentStatus.PROCESSING, PaymentStatus.FAILED)
"""The statuses a payment made elsewhere may be recorded with."""
REFUNDABLE = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED})


class PaymentsService:
    """``billing.payments``: process, confirm, record, refund, get, list, refunds, reconcile.

    >>> import anyio
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> tuple[str, str, int]:
    ...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
    ...         ann = await billing.customers.create(email="ann@example.com")
    ...         await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    ...         payment = await billing.payments.process(
    ...             customer_id=ann.id, amount=9900, currency="USD", idempotency_key="order-42"
    ...         )
    ...         refund = await billing.payments.refund(payment.id, amount=1500)
    ...         payment = await billing.payments.get(payment.id)
    ...         return str(refund.status), str(payment.status), payment.refunded_amount
    >>> anyio.run(main)
    ('succeeded', 'partially_refunded', 1500)
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    # -- charging ------------------------------------------------------------------------

    async def process(
        self,
        *,
        customer_id: UUID | str,
        amount: int,
        currency: str,
        payment_method_id: UUID | str | None = None,
        idempotency_key: str | None = None,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Payment:
        """Charge ``amount`` to the customer's payment method (``payment_method_id``, else
        their default) and return the payment as the provider left it.

        ``succeeded``, ``failed`` (a decline: ``failure_code`` neutral,
        ``provider_failure_code`` the provider's), ``requires_action`` (3-D Secure:
        ``next_action`` says where to send the customer; ``confirm`` finishes it),
        ``processing``, or ``pending`` when the provider's answer was lost: then
        ``reconcile`` settles it, and so does the same call again with the same key.
        """
        customer_key = check.identifier(customer_id, field="customer_id")
        code = money.currency(currency).code
        value = money.amount(amount, field="amount", minimum=1)
        method_key = (
            None
            if payment_method_id is None
            else check.identifier(payment_method_id, field="payment_method_id")
        )
        text = check.optional_text(description, field="description", max_length=MAX_TEXT)
        meta = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context,
            "payments.process",
            idempotency_key,
            customer_id=customer_key,
            amount=value,
            currency=code,
            payment_method_id=method_key,
            description=text,
            metadata=meta,
        )
        provider = self._context.provider.name
        # Read first, in a read-only transaction (no BEGIN on a server database), so the
        # pending row then goes alone: one statement, committed on its own.
        async with self._context.unit_of_work(readonly=True) as uow:
            early = await idempotency.peek(uow, keyed, Payment)
            if early.replay is not None:
                return early.replay
            payable = (
                None
                if early.in_progress
                else await _payable(uow, provider, customer_key, method_key)
            )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Payment)
            if claim.replay is not None:
                return claim.replay
            if claim.in_progress and claim.resource_id is not None:
                resumed: UUID | None = claim.resource_id
            else:
                claim.raise_if_in_progress()
                resumed = None
                if payable is None:
                    payable = await _payable(uow, provider, customer_key, method_key)
                method, provider_customer_id = payable
                payment = charging.pending_payment(
                    uow,
                    self._context,
                    customer_id=customer_key,
                    method=method,
                    amount=value,
                    currency=code,
                    description=text,
                    metadata=meta,
                )
                await charging.open_attempt(uow, payment)
                await idempotency.bind(uow, keyed, payment.id)
        if resumed is not None:
            return await charging.resume(self._context, resumed, then=_completing(keyed))
        result = await charging.call_provider(self._context, payment, method, provider_customer_id)
        return await charging.settle(
            self._context, payment.id, result, then=_completing(keyed), known=payment
        )

    async def confirm(
        self, payment_id: UUID | str, *, idempotency_key: str | None = None
    ) -> Payment:
        """Settle a ``requires_action`` payment after the customer finished 3-D Secure.

        Asks the provider how the payment stands now: ``succeeded`` (or ``failed`` when the
        customer did not authenticate); still ``requires_action`` while they have not.
        """
        key = check.identifier(payment_id, field="payment_id")
        keyed = idempotency.keyed(
            self._context, "payments.confirm", idempotency_key, payment_id=key
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Payment)
            if claim.replay is not None:
                return claim.replay
            payment: Payment = await require(uow.tx, Payment, key, field="payment_id")
            if payment.status != PaymentStatus.REQUIRES_ACTION:
                raise InvalidStateError(
                    f"is {payment.status.value}: only a payment that requires action can be "
                    "confirmed",
                    field="payment_id",
                    rule="requires_action",
                )
            await idempotency.bind(uow, keyed, payment.id)
        result = await charging.retrieve(self._context, payment)
        return await charging.settle(self._context, payment.id, result, then=_completing(keyed))

    async def record(
        self,
        *,
        customer_id: UUID | str,
        amount: int,
        currency: str,
        provider: str,
        provider_id: str,
        status: PaymentStatus | str = PaymentStatus.SUCCEEDED,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:
        """Store a payment made elsewhere (a bank transfer, the provider's dashboard).

        Stored once per ``(provider, provider_id)``: recording it again returns the stored
        payment (a webhook and an app recording one charge make one row), and recording
        another customer's or amount under the same provider id is a ``ConflictError``.
        """
        customer_key = check.identifier(customer_id, field="customer_id")
        code = money.currency(currency).code
        value = money.amount(amount, field="amount", minimum=1)
        provider_name = check.key(provider, field="provider")
        reference = check.key(provider_id, field="provider_id")
        try:
            state = PaymentStatus(status)
        except ValueError:
            state = None
        if state not in RECORDABLE:
            raise ValidationError(
                f"must be one of {', '.join(s.value for s in RECORDABLE)}",
                field="status",
                rule="recordable_status",
            )
        text = check.optional_text(description, field="description", max_length=MAX_TEXT)
        meta = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context,
            "payments.record",
            idempotency_key,
            customer_id=customer_key,
            amount=value,
            currency=code,
            provider=provider_name,
            provider_id=reference,
            status=state,
            description=text,
            metadata=meta,
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Payment)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            await require(uow.tx, Customer, customer_key, field="customer_id")
            payment = Payment(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                customer_id=customer_key,
                amount=value,
                currency=code,
                status=state,
                provider=provider_name,
                provider_id=reference,
                description=text,
                metadata=meta,
                created_at=uow.now,
                updated_at=uow.now,
            )
            stored, inserted = await uow.tx.insert_or_get(payment, on=("provider", "provider_id"))
            if inserted:
                await uow.record(
                    "payment.recorded",
                    stored,
                    changes={"amount": value, "currency": code, "provider_id": reference},
                )
            elif (stored.customer_id, stored.amount, stored.currency) != (
                customer_key,
                value,
                code,
            ):
                raise ValidationError(
                    f"is already recorded as payment {stored.id} of another customer or amount",
                    field="provider_id",
                    rule="recorded_once",
                )
            await idempotency.complete(uow, keyed, stored)
        return stored

    # -- refunds -------------------------------------------------------------------------

    async def refund(
        self,
        payment_id: UUID | str,
        amount: int | None = None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Refund:
        """Refund ``amount`` of a paid payment (``None``: all that is left), any number of
        times, never beyond what it took, however many refunds run at once.

        Returns the refund as the provider left it: ``succeeded``, ``failed`` (the provider
        refused: its amount is refundable again), or ``pending`` when the answer was lost
        (``reconcile`` settles it).
        """
        key = check.identifier(payment_id, field="payment_id")
        value = None if amount is None else money.amount(amount, field="amount", minimum=1)
        why = check.optional_text(reason, field="reason", max_length=MAX_TEXT)
        meta = check.metadata(metadata)
        self._context.require_capability("refunds")
        keyed = idempotency.keyed(
            self._context,
            "payments.refund",
            idempotency_key,
            payment_id=key,
            amount=value,
            reason=why,
            metadata=meta,
        )
        provider = self._context.provider
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Refund)
            if claim.replay is not None:
                return claim.replay
            if claim.in_progress and claim.resource_id is not None:
                resumed: UUID | None = claim.resource_id
            else:
                resumed = None
                payment: Payment = await require(uow.tx, Payment, key, field="payment_id")
                refund = _new_refund(uow, payment, value, why, meta, provider.name)
                reserved = await refunds.add_refund(uow.tx, refund, payment)
                await uow.tx.update(
                    attrs.evolve(
                        reserved,
                        due_at=reserved.due_at or uow.now + self._context.settings.reconcile_after,
                        updated_at=uow.now,
                    )
                )
                await uow.record(
                    "refund.created", refund, changes={"amount": refund.amount, "reason": why}
                )
                await idempotency.bind(uow, keyed, refund.id)
        if resumed is not None:
            return await self._resume_refund(resumed, keyed)
        result = await refunds.call_provider(self._context, payment, refund)
        return await refunds.settle(
            self._context, refund.id, result, then=_completing_refund(keyed)
        )

    async def _resume_refund(self, refund_id: UUID, keyed: idempotency.Keyed | None) -> Refund:
        async with self._context.unit_of_work(readonly=True) as uow:
            refund: Refund = await require(uow.tx, Refund, refund_id, field="refund_id")
            payment: Payment = await require(uow.tx, Payment, refund.payment_id, field="payment_id")
        result = None
        if refund.status == RefundStatus.PENDING:
            result = await refunds.at_provider(self._context, payment, refund)
            if result is None:
                result = await refunds.call_provider(self._context, payment, refund)
        return await refunds.settle(
            self._context, refund.id, result, then=_completing_refund(keyed)
        )

    # -- reading -------------------------------------------------------------------------

    async def get(self, payment_id: UUID | str) -> Payment:
        payment: Payment = await self._context.read(
            Payment, check.identifier(payment_id, field="payment_id"), field="payment_id"
        )
        return payment

    async def list(
        self,
        *,
        customer_id: UUID | str | None = None,
        subscription_id: UUID | str | None = None,
        status: PaymentStatus | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Payment]:
        """Payments, newest first, by customer, subscription and status."""
        filters = check.id_filters(customer_id=customer_id, subscription_id=subscription_id)
        if status is not None:
            filters["status"] = check.member(
                status, PaymentStatus, field="status", what="a payment status"
            )
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(Payment, filters=filters, limit=limit, cursor=cursor)

    async def refunds(
        self, payment_id: UUID | str, *, limit: int = 20, cursor: str | None = None
    ) -> Page[Refund]:
        """The payment's refunds, newest first."""
        key = check.identifier(payment_id, field="payment_id")
        async with self._context.unit_of_work(readonly=True) as uow:
            await require(uow.tx, Payment, key, field="payment_id")
            return await uow.tx.list(
                Refund, filters={"payment_id": key}, limit=limit, cursor=cursor
            )

    # -- reconciliation ------------------------------------------------------------------

    async def reconcile(self, payment_id: UUID | str) -> Payment:
        """Ask the provider what became of a payment (and its pending refunds) and settle it.

        Never charges: a payment the provider has never heard of stays pending until it is
        ``abandon_after`` old, and is then ``failed`` with ``abandoned``. Settled payments
        are returned as they are.
        """
        key = check.identifier(payment_id, field="payment_id")
        return await reconciliation.reconcile(self._context, key)


async def _payable(
    uow: UnitOfWork, provider: str, customer_id: UUID, method_id: UUID | None
) -> tuple[PaymentMethod, str]:
    """The method a new charge uses, checked: the customer's own, at this provider."""
    customer: Customer | None = await uow.tx.get(Customer, customer_id)
    if customer is None:
        raise missing(uow.tx, Customer, customer_id, field="customer_id")
    if method_id is not None:
        chosen: PaymentMethod | None = await uow.tx.get(PaymentMethod, method_id)
        if chosen is None:
            raise missing(uow.tx, PaymentMethod, method_id, field="payment_method_id")
        if chosen.customer_id != customer_id:
            raise ValidationError(
                "belongs to another customer", field="payment_method_id", rule="owner"
            )
    payable = await charging.chargeable_method(uow.tx, customer_id, method_id, provider)
    if payable is None:
        raise InvalidStateError(
            "the customer has no payment method to charge: attach one first "
            "(billing.payment_methods.attach)",
            field="payment_method_id",
            rule="payment_method_required",
        )
    return payable


def _new_refund(
    uow: UnitOfWork,
    payment: Payment,
    amount: int | None,
    reason: str | None,
    metadata: Mapping[str, str],
    provider: str,
) -> Refund:
    """The pending refund of ``amount`` (``None``: what is left), if the payment allows one."""
    if payment.status not in REFUNDABLE:
        raise InvalidStateError(
            f"is {payment.status.value}: only a succeeded payment can be refunded"
            + (" (nothing is left to refund)" if payment.status == PaymentStatus.REFUNDED else ""),
            field="payment_id",
            rule="refundable_status",
        )
    if payment.provider != provider or payment.provider_id is None:
        raise InvalidStateError(
            f"was taken through {payment.provider!r}, and this billing refunds through "
            f"{provider!r}: refund it there",
            field="payment_id",
            rule="refund_provider",
        )
    left = payment.amount - payment.refunded_amount
    value = left if amount is None else amount
    if value <= 0:
        raise ValidationError(
            "nothing is left to refund: pending and succeeded refunds took it all",
            field="amount",
            rule="refund_within_payment",
        )
    refund_id = new_id()
    return Refund(
        id=refund_id,
        livemode=uow.scope.livemode,
        tenant_id=uow.scope.tenant_id,
        payment_id=payment.id,
        amount=value,
        currency=payment.currency,
        status=RefundStatus.PENDING,
        reason=reason,
        provider=provider,
        idempotency_key=refunds.refund_key(refund_id),
        metadata=metadata,
        created_at=uow.now,
        updated_at=uow.now,
    )


def _completing(keyed: idempotency.Keyed | None) -> charging.AfterSettle:
    """Complete the call's idempotency key with its payment, once it is settled (a
    still-pending one stays in progress: the same call again finishes it)."""

    async def complete(uow: UnitOfWork, settled: charging.Settled) -> None:
        if keyed is not None and settled.payment.status != PaymentStatus.PENDING:
            await idempotency.complete(uow, keyed, settled.payment)

    return complete


def _completing_refund(keyed: idempotency.Keyed | None) -> refunds.AfterRefund:
    """The same for a refund: its key is completed once the refund is settled."""

    async def complete(uow: UnitOfWork, refund: Refund) -> None:
        if keyed is not None and refund.status != RefundStatus.PENDING:
            await idempotency.complete(uow, keyed, refund)

    return complete
