"""Payment methods: cards and accounts attached through the provider, one default per customer."""

from __future__ import annotations

from uuid import UUID

import attrs

from qzpay import validation as check
from qzpay.contracts.provider import ProviderPaymentMethod
from qzpay.contracts.storage import Page, StorageTransaction
from qzpay.domain.customers import Customer, CustomerProviderRef
from qzpay.domain.payments import PaymentMethod
from qzpay.errors import ConflictError, InvalidStateError
from qzpay.ids import new_id
from qzpay.services import idempotency
from qzpay.services.context import ServiceContext, UnitOfWork, require

DEFAULT_ATTEMPTS = 5
"""How often a write that makes a default is retried after losing the race to another."""
_LOST_THE_DEFAULT = ("customer_id", "version")
"""The fields of the conflicts a concurrent default-maker causes: the one-default key, and
the version of the old default this write meant to unset."""


class PaymentMethodsService:
    """``billing.payment_methods``: attach, list, set the default, detach.

    Provider calls happen outside any database transaction, so a slow provider never holds
    a lock; the local rows are written after the provider said yes. A customer has at most
    one default: the database enforces it (a partial unique key), and a write that loses the
    race to a concurrent one is retried on top of the winner's default.

    >>> import anyio
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> tuple[str | None, bool]:
    ...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
    ...         ann = await billing.customers.create(email="ann@example.com")
    ...         card = await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
    ...         return card.last4, card.is_default
    >>> anyio.run(main)
    ('4242', True)
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def attach(
        self,
        customer_id: UUID | str,
        *,
        token: str,
        set_default: bool = False,
        idempotency_key: str | None = None,
    ) -> PaymentMethod:
        """Attach the card behind ``token`` (``pm_card_visa`` with the fake provider).

        The first method a customer gets becomes the default whatever ``set_default`` says.
        With ``idempotency_key``, a retry after the first call finished returns its payment
        method without asking the provider again. The key is claimed in the transaction that
        stores the method, after the provider call: a duplicate made while the first call is
        still at the provider attaches the card there a second time, but only one method is
        stored and both calls return it (the provider keeps the spare, unused).
        """
        entity_id = check.identifier(customer_id, field="customer_id")
        card_token = check.text(token, field="token", max_length=255)
        make_default = check.boolean(set_default, field="set_default")
        self._context.require_capability("payment_methods")
        keyed = idempotency.keyed(
            self._context,
            "payment_methods.attach",
            idempotency_key,
            customer_id=entity_id,
            token=card_token,
            set_default=make_default,
        )
        async with self._context.unit_of_work(readonly=True) as uow:
            earlier = await idempotency.peek(uow, keyed, PaymentMethod)
            if earlier.replay is not None:
                return earlier.replay
            earlier.raise_if_in_progress()
            customer: Customer = await require(uow.tx, Customer, entity_id, field="customer_id")
        at_provider = await provider_customer_id(self._context, customer)
        attached = await self._context.provider.attach_payment_method(
            provider_customer_id=at_provider, token=card_token
        )
        method_id = new_id()
        for attempt in range(DEFAULT_ATTEMPTS):
            try:
                return await self._store_attached(
                    method_id, entity_id, attached, make_default, keyed
                )
            except ConflictError as error:
                # Another attach or set_default made a default first (the database allows
                # one per customer), or moved the default we unset: read it and take over.
                if error.field not in _LOST_THE_DEFAULT or attempt == DEFAULT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _store_attached(
        self,
        method_id: UUID,
        customer_id: UUID,
        attached: ProviderPaymentMethod,
        make_default: bool,
        keyed: idempotency.Keyed | None,
    ) -> PaymentMethod:
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, PaymentMethod)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            await require(uow.tx, Customer, customer_id, field="customer_id")
            current_default = await default_method(uow.tx, customer_id)
            method = PaymentMethod(
                id=method_id,
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                customer_id=customer_id,
                provider=self._context.provider.name,
                provider_id=attached.provider_id,
                type=attached.type,
                brand=attached.brand,
                last4=attached.last4,
                exp_month=attached.exp_month,
                exp_year=attached.exp_year,
                is_default=make_default or current_default is None,
                created_at=uow.now,
                updated_at=uow.now,
            )
            if method.is_default and current_default is not None:
                await self._unset_default(uow, current_default)
            await uow.tx.insert(method)
            await uow.record(
                "payment_method.attached",
                method,
                changes={
                    "brand": method.brand,
                    "last4": method.last4,
                    "is_default": method.is_default,
                },
            )
            await idempotency.complete(uow, keyed, method)
        return method

    async def _unset_default(self, uow: UnitOfWork, method: PaymentMethod) -> None:
        updated = await uow.tx.update(attrs.evolve(method, is_default=False, updated_at=uow.now))
        await uow.record("payment_method.updated", updated, changes={"is_default": [True, False]})

    async def get(self, payment_method_id: UUID | str) -> PaymentMethod:
        method: PaymentMethod = await self._context.read(
            PaymentMethod,
            check.identifier(payment_method_id, field="payment_method_id"),
            field="payment_method_id",
        )
        return method

    async def list(
        self, customer_id: UUID | str, *, limit: int = 20, cursor: str | None = None
    ) -> Page[PaymentMethod]:
        entity_id = check.identifier(customer_id, field="customer_id")
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(
                PaymentMethod, filters={"customer_id": entity_id}, limit=limit, cursor=cursor
            )

    async def get_default(self, customer_id: UUID | str) -> PaymentMethod | None:
        entity_id = check.identifier(customer_id, field="customer_id")
        async with self._context.unit_of_work(readonly=True) as uow:
            return await default_method(uow.tx, entity_id)

    async def set_default(
        self, payment_method_id: UUID | str, *, idempotency_key: str | None = None
    ) -> PaymentMethod:
        """Make this the customer's default; the previous default stops being one.

        With ``idempotency_key``, a retry returns the method as the first call left it.
        """
        entity_id = check.identifier(payment_method_id, field="payment_method_id")
        keyed = idempotency.keyed(
            self._context,
            "payment_methods.set_default",
            idempotency_key,
            payment_method_id=entity_id,
        )
        for attempt in range(DEFAULT_ATTEMPTS):
            try:
                return await self._make_default(entity_id, keyed)
            except ConflictError as error:
                if error.field not in _LOST_THE_DEFAULT or attempt == DEFAULT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _make_default(
        self, entity_id: UUID, keyed: idempotency.Keyed | None
    ) -> PaymentMethod:
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, PaymentMethod)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            method: PaymentMethod = await require(
                uow.tx, PaymentMethod, entity_id, field="payment_method_id"
            )
            if method.is_default:
                await idempotency.complete(uow, keyed, method)
                return method
            current_default = await default_method(uow.tx, method.customer_id)
            if current_default is not None:
                await self._unset_default(uow, current_default)
            updated = await uow.tx.update(attrs.evolve(method, is_default=True, updated_at=uow.now))
            await uow.record(
                "payment_method.updated", updated, changes={"is_default": [False, True]}
            )
            await idempotency.complete(uow, keyed, updated)
        return updated

    async def detach(
        self, payment_method_id: UUID | str, *, idempotency_key: str | None = None
    ) -> PaymentMethod:
        """Detach at the provider, then soft-delete here; a detached default leaves none.

        With ``idempotency_key``, a retry after the first call finished returns the detached
        method again (instead of ``NotFoundError``) without asking the provider. As with
        ``attach``, the key is claimed only in the writing transaction: a duplicate made
        while the first is still at the provider asks the provider a second time too.
        """
        entity_id = check.identifier(payment_method_id, field="payment_method_id")
        keyed = idempotency.keyed(
            self._context, "payment_methods.detach", idempotency_key, payment_method_id=entity_id
        )
        async with self._context.unit_of_work(readonly=True) as uow:
            earlier = await idempotency.peek(uow, keyed, PaymentMethod)
            if earlier.replay is not None:
                return earlier.replay
            earlier.raise_if_in_progress()
            method: PaymentMethod = await require(
                uow.tx, PaymentMethod, entity_id, field="payment_method_id"
            )
        if method.provider != self._context.provider.name:
            raise InvalidStateError(
                f"was attached through {method.provider!r}, not {self._context.provider.name!r}",
                field="payment_method_id",
                rule="same_provider",
            )
        await self._context.provider.detach_payment_method(
            provider_payment_method_id=method.provider_id
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, PaymentMethod)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            current: PaymentMethod = await require(
                uow.tx, PaymentMethod, entity_id, field="payment_method_id"
            )
            if current.is_default:
                current = await uow.tx.update(
                    attrs.evolve(current, is_default=False, updated_at=uow.now)
                )
            await uow.tx.soft_delete(PaymentMethod, entity_id, at=uow.now)
            detached = attrs.evolve(current, deleted_at=uow.now, updated_at=uow.now)
            await uow.record("payment_method.detached", detached)
            await idempotency.complete(uow, keyed, detached)
        return detached


async def default_method(tx: StorageTransaction, customer_id: UUID) -> PaymentMethod | None:
    return await tx.find(PaymentMethod, customer_id=customer_id, is_default=True)


async def provider_customer_id(context: ServiceContext, customer: Customer) -> str:
    """The customer's id at the provider, created there on first need."""
    provider = context.provider
    async with context.unit_of_work(readonly=True) as uow:
        ref = await uow.tx.find(
            CustomerProviderRef, customer_id=customer.id, provider=provider.name
        )
    if ref is not None:
        return ref.provider_customer_id
    # The key is derived from our customer id, so a concurrent or retried attach gets the
    # same provider customer back instead of a second one.
    created = await provider.create_customer(
        email=customer.email,
        name=customer.name,
        idempotency_key=f"qzpay-customer-{customer.id}",
    )
    try:
        async with context.unit_of_work() as uow:
            ref = CustomerProviderRef(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                customer_id=customer.id,
                provider=provider.name,
                provider_customer_id=created.provider_id,
                created_at=uow.now,
            )
            await uow.tx.insert(ref)
            await uow.record(
                "customer.provider_linked", customer, changes={"provider": provider.name}
            )
    except ConflictError:
        # A concurrent attach linked this customer first; anything else is a real clash
        # (the provider handed out an id another customer already holds).
        async with context.unit_of_work(readonly=True) as uow:
            ref = await uow.tx.find(
                CustomerProviderRef, customer_id=customer.id, provider=provider.name
            )
        if ref is None:
            raise
        return ref.provider_customer_id
    return created.provider_id
