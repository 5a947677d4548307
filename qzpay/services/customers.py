"""Customers: the people and companies who pay."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs

from qzpay import validation as check
from qzpay.contracts.storage import Page
from qzpay.domain.customers import Customer
from qzpay.errors import NotFoundError
from qzpay.ids import new_id
from qzpay.services import idempotency
from qzpay.services.context import ServiceContext, require
from qzpay.services.subscriptions import cancel_customer_subscriptions
from qzpay.validation import UNSET, Unset


class CustomersService:
    """``billing.customers``: create, read, update, delete and list customers.

    >>> import anyio
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> str | None:
    ...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
    ...         ann = await billing.customers.create(email="ann@example.com", external_id="u_1")
    ...         ann = await billing.customers.update(ann.id, name="Ann")
    ...         return (await billing.customers.get_by_external_id("u_1")).name
    >>> anyio.run(main)
    'Ann'
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def create(
        self,
        *,
        email: str,
        name: str | None = None,
        external_id: str | None = None,
        phone: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Customer:
        """Create a customer; ``external_id`` (your user id) is unique among live customers.

        With ``idempotency_key``, a retry with the same arguments returns the first call's
        customer instead of making a second one.
        """
        customer_email = check.email(email)
        customer_name = check.optional_text(name, field="name")
        customer_external_id = (
            None if external_id is None else check.key(external_id, field="external_id")
        )
        customer_phone = check.optional_text(phone, field="phone", max_length=40)
        customer_metadata = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context,
            "customers.create",
            idempotency_key,
            email=customer_email,
            name=customer_name,
            external_id=customer_external_id,
            phone=customer_phone,
            metadata=customer_metadata,
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Customer)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            customer = Customer(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                email=customer_email,
                name=customer_name,
                external_id=customer_external_id,
                phone=customer_phone,
                metadata=customer_metadata,
                created_at=uow.now,
                updated_at=uow.now,
            )
            await uow.tx.insert(customer)
            await uow.record(
                "customer.created",
                customer,
                changes={"email": customer_email, "external_id": customer_external_id},
            )
            await idempotency.complete(uow, keyed, customer)
        return customer

    async def get(self, customer_id: UUID | str) -> Customer:
        """The customer, or ``NotFoundError`` (also once deleted)."""
        entity: Customer = await self._context.read(
            Customer, check.identifier(customer_id, field="customer_id"), field="customer_id"
        )
        return entity

    async def get_by_external_id(self, external_id: str) -> Customer:
        key = check.key(external_id, field="external_id")
        async with self._context.unit_of_work(readonly=True) as uow:
            customer = await uow.tx.find(Customer, external_id=key)
        if customer is None:
            raise NotFoundError(
                f"no customer with external_id {key!r}", field="external_id", rule="exists"
            )
        return customer

    async def update(
        self,
        customer_id: UUID | str,
        *,
        email: str | Unset = UNSET,
        name: str | Unset | None = UNSET,
        external_id: str | Unset | None = UNSET,
        phone: str | Unset | None = UNSET,
        metadata: dict[str, str] | Unset | None = UNSET,
        idempotency_key: str | None = None,
    ) -> Customer:
        """Change the given fields (``None`` clears an optional one); others stay.

        With ``idempotency_key``, a retry returns the customer as the first call left it.
        """
        entity_id = check.identifier(customer_id, field="customer_id")
        changes: dict[str, Any] = {}
        if check.given(email):
            changes["email"] = check.email(email)
        if check.given(name):
            changes["name"] = check.optional_text(name, field="name")
        if check.given(external_id):
            changes["external_id"] = (
                None if external_id is None else check.key(external_id, field="external_id")
            )
        if check.given(phone):
            changes["phone"] = check.optional_text(phone, field="phone", max_length=40)
        if check.given(metadata):
            changes["metadata"] = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context, "customers.update", idempotency_key, customer_id=entity_id, **changes
        )
        return await idempotency.change(
            self._context,
            Customer,
            entity_id,
            changes,
            field="customer_id",
            event="customer.updated",
            keyed=keyed,
        )

    async def delete(
        self, customer_id: UUID | str, *, idempotency_key: str | None = None
    ) -> Customer:
        """Soft-delete: the row stays for the books, and its ``external_id`` is free again.

        The customer's live subscriptions (trialing, active, past due, paused, incomplete,
        unpaid) are canceled in the same transaction, each with ``subscription.canceled``,
        so nothing bills a deleted customer (Stripe's rule).

        With ``idempotency_key``, a retry returns the deleted customer again instead of
        ``NotFoundError``.
        """
        entity_id = check.identifier(customer_id, field="customer_id")
        keyed = idempotency.keyed(
            self._context, "customers.delete", idempotency_key, customer_id=entity_id
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Customer)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            current: Customer = await require(uow.tx, Customer, entity_id, field="customer_id")
            # As Stripe: a deleted customer's live subscriptions end now, never billed again.
            await cancel_customer_subscriptions(uow, self._context, entity_id)
            await uow.tx.soft_delete(
                Customer, entity_id, at=uow.now, expected_version=current.version
            )
            deleted = attrs.evolve(
                current, deleted_at=uow.now, updated_at=uow.now, version=current.version + 1
            )
            await uow.record("customer.deleted", deleted)
            await idempotency.complete(uow, keyed, deleted)
        return deleted

    async def list(
        self,
        *,
        limit: int = 20,
        cursor: str | None = None,
        email: str | None = None,
        include_deleted: bool = False,
    ) -> Page[Customer]:
        """Customers newest first; filter by exact ``email``."""
        filters = {} if email is None else {"email": check.email(email)}
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(
                Customer,
                filters=filters,
                limit=limit,
                cursor=cursor,
                include_deleted=check.boolean(include_deleted, field="include_deleted"),
            )
